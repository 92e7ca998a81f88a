"""DSparkObjective.acceptance_lengths: per-anchor greedy acceptance lengths that core's trajectory replay turns
into exactly the τ of real greedy speculative decoding with the DSpark drafter (on target-greedy data)."""

from __future__ import annotations

import pytest
import torch

from draftsmith.decode.engine import SpeculativeDecoder
from draftsmith.decode.estimate import replay_greedy
from draftsmith.decode.plain import generate_plain
from draftsmith.method import TargetFeatures
from draftsmith.target import run_target, target_heads
from draftsmith_dspark.draft_qwen3 import Qwen3DSparkModel
from draftsmith_dspark.drafting import DSparkDrafter, markov_decode
from draftsmith_dspark.objective import DSparkObjective

PROMPT, NEW, GAMMA = 4, 24, 4


def _greedy_data(target, rows: int = 6):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 120, (rows, PROMPT), generator=g)
    with torch.no_grad():  # prompt + NEW greedily generated target tokens (EOS ignored)
        for _ in range(NEW):
            ids = torch.cat([ids, target(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    loss_mask = torch.zeros_like(ids)
    loss_mask[:, PROMPT:] = 1
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "loss_mask": loss_mask}


def _train(tiny, tc, heads, batch, feats_for, kind="vanilla"):
    torch.manual_seed(0)
    draft = Qwen3DSparkModel(Qwen3DSparkModel.build_draft_config(
        tc, mask_token_id=tiny.MASK_ID, block_size=GAMMA, num_draft_layers=1, markov_rank=16,
        markov_head_type=kind))
    objective = DSparkObjective(draft, heads, num_anchors=12)  # < T: acceptance_lengths runs in chunks
    feats = feats_for(objective)
    optim = torch.optim.AdamW([p for p in draft.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(25):
        out = objective(batch, feats)
        optim.zero_grad()
        out.loss.backward()
        optim.step()
    draft.eval()
    assert float(torch.count_nonzero(draft.markov_head.markov_w2.weight)) > 0  # the Markov head matters
    return draft, objective, feats


@pytest.fixture(scope="module")
def trained(tiny):
    torch.set_num_threads(1)
    tc = tiny.target_config()
    target = tiny.make_target(tc)
    heads = target_heads(target)
    batch = _greedy_data(target)
    assert generate_plain(target, batch["input_ids"][0, :PROMPT], NEW, eos_token_ids=()).tokens == \
        batch["input_ids"][0, PROMPT:].tolist()

    def feats_for(objective):
        return run_target(target, objective.target_request(), batch["input_ids"])[0]

    draft, objective, feats = _train(tiny, tc, heads, batch, feats_for)
    return target, heads, draft, objective, batch, feats, (tc, feats_for)


def _engine_taus(target, heads, draft, batch, rows):
    taus = []
    for row in rows:
        prompt = batch["input_ids"][row, :PROMPT]
        decoder = SpeculativeDecoder(target, DSparkDrafter(draft, heads), num_draft_tokens=GAMMA, eos_token_ids=())
        result = decoder.generate(prompt, NEW)
        assert result.tokens == batch["input_ids"][row, PROMPT:].tolist()  # lossless
        taus.append(result.taus)
    return taus


def test_replayed_acceptance_equals_real_greedy_decoding(trained):
    target, heads, draft, objective, batch, feats, _ = trained
    lengths = objective.acceptance_lengths(batch, feats)  # (B, T)
    assert lengths.dtype == torch.long and lengths.shape == batch["input_ids"].shape
    assert (lengths[:, :-1] >= 0).all() and (lengths[:, -1] == -1).all() and lengths.max() <= GAMMA
    rows = range(3)  # decoding is the slow part: three requests are enough
    replay = [replay_greedy(lengths[r:r + 1], batch["loss_mask"][r:r + 1], num_draft_tokens=GAMMA).taus
              for r in rows]
    engine = _engine_taus(target, heads, draft, batch, rows)
    assert replay == engine
    assert max(max(t) for t in engine) > 1  # the trained draft really gets drafts accepted


def test_lengths_equal_sequential_markov_decoding_and_respect_row_ends(trained):
    """Chunked batched lengths (num_anchors < T) == per-anchor sequential greedy Markov decoding of the drafter;
    padding and the row end cut the count; positions without a next real token are −1."""
    target, heads, draft, objective, batch, feats, _ = trained
    ids = batch["input_ids"][:2].clone()
    attn = torch.ones_like(ids)
    attn[1, -5:] = 0
    ids[1, -5:] = 0
    padded = {"input_ids": ids, "attention_mask": attn, "loss_mask": batch["loss_mask"][:2] * attn}
    feats2, _ = run_target(target, objective.target_request(), ids, attention_mask=attn)
    lengths = objective.acceptance_lengths(padded, feats2)
    t = ids.shape[1]
    assert (lengths[1, t - 6:] == -1).all() and (lengths[1, :t - 6] >= 0).all()
    for row in range(2):
        n = int(attn[row].sum())
        for a in range(1, n - 1, 2):
            drafter = DSparkDrafter(draft, heads)
            drafter.start(ids[row, :a], TargetFeatures({k: v[row:row + 1, :a] for k, v in feats2.hidden_states.items()}))
            drafts = markov_decode(draft, drafter.block_hidden(int(ids[row, a])), int(ids[row, a])).tokens.tolist()
            expect = 0
            for k, tok in enumerate(drafts):
                if a + 1 + k >= n or tok != int(ids[row, a + 1 + k]):
                    break
                expect += 1
            assert int(lengths[row, a]) == expect, (row, a)


@pytest.mark.parametrize("kind", ["gated", "rnn"])
def test_markov_variants_replay_equals_engine(tiny, trained, kind):
    """Markov heads that see the drafted prefix through a gate / a recurrent state: still exact."""
    target, heads, _, _, batch, _, (tc, feats_for) = trained
    draft, objective, feats = _train(tiny, tc, heads, batch, feats_for, kind)
    lengths = objective.acceptance_lengths(batch, feats)
    assert (lengths[:, :-1] >= 0).all() and lengths.max() <= GAMMA
    rows = range(2)
    replay = [replay_greedy(lengths[r:r + 1], batch["loss_mask"][r:r + 1], num_draft_tokens=GAMMA).taus
              for r in rows]
    engine = _engine_taus(target, heads, draft, batch, rows)
    assert replay == engine
    assert max(max(t) for t in engine) > 1
