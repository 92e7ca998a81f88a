"""End to end on a tiny target: the objective learns the target's greedy continuations, and the per-anchor
acceptance lengths replayed as decoding would visit them equal the real speculative-decoding τ (T = 0)."""

from __future__ import annotations

import pytest
import torch

from draftsmith.decode.engine import SpeculativeDecoder
from draftsmith.decode.estimate import replay_greedy
from draftsmith.decode.plain import generate_plain
from draftsmith.decode.testing import tiny_target
from draftsmith.target import run_target, target_heads
from draftsmith_dflash.drafting import DFlashDrafter
from draftsmith_dflash.objective import DFlashObjective

PROMPT, NEW, BLOCK = 4, 24, 4


@pytest.fixture(scope="module")
def trained():
    from draftsmith_dflash.draft_qwen3 import Qwen3DFlashDraftModel

    target = tiny_target("qwen3", num_layers=4)
    heads = target_heads(target)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 120, (8, PROMPT), generator=g)
    with torch.no_grad():  # target-greedy data: prompt + NEW greedily generated tokens (EOS ignored)
        for _ in range(NEW):
            ids = torch.cat([ids, target(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert generate_plain(target, ids[0, :PROMPT], NEW).tokens == ids[0, PROMPT:].tolist()
    loss_mask = torch.zeros_like(ids)
    loss_mask[:, PROMPT:] = 1
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "loss_mask": loss_mask}
    torch.manual_seed(0)
    draft = Qwen3DFlashDraftModel(Qwen3DFlashDraftModel.build_draft_config(
        target.config, mask_token_id=127, block_size=BLOCK, num_draft_layers=2))
    objective = DFlashObjective(draft, heads, num_anchors=12, loss_decay_gamma=4.0)
    feats, _ = run_target(target, objective.target_request(), ids)
    opt = torch.optim.AdamW(draft.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.0)
    history = []
    for _ in range(20):
        out = objective(batch, feats)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        history.append({k: float(v) for k, v in out.metrics.items()})
    return target, heads, draft.eval(), objective, batch, feats, history


def test_objective_learns(trained):
    *_, history = trained
    first, last = history[0], history[-1]
    assert last["loss"] < 0.5 * first["loss"]
    assert last["accept_len"] > first["accept_len"] + 0.5 and last["accuracy"] > 0.4


def test_replayed_acceptance_equals_real_greedy_decoding(trained):
    target, heads, draft, objective, batch, feats, _ = trained
    lengths = objective.acceptance_lengths(batch, feats)  # (B, T)
    assert (lengths[:, :-1] >= 0).all() and (lengths[:, -1] == -1).all() and lengths.max() <= BLOCK - 1
    replay_taus, engine_taus = [], []
    for row in range(3):  # decoding is the slow part: three requests are enough
        stats = replay_greedy(lengths[row:row + 1], batch["loss_mask"][row:row + 1], num_draft_tokens=BLOCK - 1)
        replay_taus.append(stats.taus)
        prompt = batch["input_ids"][row, :PROMPT]
        decoder = SpeculativeDecoder(target, DFlashDrafter(draft, heads), num_draft_tokens=BLOCK - 1, eos_token_ids=())
        result = decoder.generate(prompt, NEW)
        assert result.tokens == batch["input_ids"][row, PROMPT:].tolist()  # lossless
        engine_taus.append(result.taus)
    assert replay_taus == engine_taus
    assert max(max(t) for t in engine_taus) > 1  # the trained draft really gets drafts accepted
