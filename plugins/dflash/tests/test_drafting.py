"""DFlashDrafter: methods.md §6 item 5 (batched multi-anchor training forward == per-anchor incremental
drafting with the cache, fp32) and item 6 (cache length after a round), plus the real decoding engine."""

from __future__ import annotations

import pytest
import torch

from draftsmith.decode.engine import SpeculativeDecoder
from draftsmith.decode.plain import generate_plain
from draftsmith.decode.sampling import SamplingConfig
from draftsmith.errors import ConfigError
from draftsmith.method import TargetFeatures
from draftsmith.target import run_target
from draftsmith_dflash.drafting import DFlashDrafter
from draftsmith_dflash.objective import DFlashObjective


def _slice(features: TargetFeatures, lo: int, hi: int) -> TargetFeatures:
    return TargetFeatures({i: h[:, lo:hi] for i, h in features.hidden_states.items()})


def _batched_logits(s, ids, anchors):
    """Training path: every block in one forward with the dense block mask → (N, B, V) logits."""
    objective = DFlashObjective(s.draft, s.heads, num_anchors=8)
    feats, _ = run_target(s.target, objective.target_request(), ids)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "loss_mask": torch.ones_like(ids)}
    a = torch.tensor([anchors])
    with torch.no_grad():
        hidden = objective._forward_blocks(batch, feats, a, torch.ones_like(a, dtype=torch.bool), None)
        return s.draft.compute_logits(hidden)[0], feats


@pytest.mark.parametrize("arch, options", [
    ("Qwen3ForCausalLM", {}),
    ("Qwen3ForCausalLM", {"causal": True}),
    ("Qwen3ForCausalLM", {"sliding_window": 3, "block_size": 5}),
    ("LlamaForCausalLM", {"num_draft_layers": 3}),
])
def test_item5_batched_training_forward_equals_incremental_drafting(dflash, arch, options):
    s = dflash.make_setup(arch, **options)
    s.draft.eval()
    bs = s.draft.block_size
    ids = torch.randint(0, 120, (1, 24), generator=torch.Generator().manual_seed(5))
    anchors = [3, 7, 8, 13, 19]  # consecutive anchors (7, 8) commit a single token
    logits, feats = _batched_logits(s, ids, anchors)

    drafter = DFlashDrafter(s.draft, s.heads)
    drafter.start(ids[0, :anchors[0]], _slice(feats, 0, anchors[0]))
    for n, a in enumerate(anchors):
        prop = drafter.propose(int(ids[0, a]), bs - 1, temperature=1.0, generator=torch.Generator().manual_seed(n))
        assert drafter.cache.length == a == drafter.committed  # item 6: the draft cache holds only the context
        torch.testing.assert_close(prop.probs, torch.softmax(logits[n, 1:], -1), rtol=1e-5, atol=1e-6)
        greedy = drafter.propose(int(ids[0, a]), bs - 1)
        assert greedy.probs is None and torch.equal(greedy.tokens, logits[n, 1:].argmax(-1))
        if n + 1 < len(anchors):
            nxt = anchors[n + 1]
            drafter.commit(ids[0, a:nxt], _slice(feats, a, nxt))


def test_propose_caps_at_block_and_validates(dflash):
    s = dflash.make_setup(block_size=4)
    ids = torch.randint(0, 120, (1, 6))
    drafter = DFlashDrafter(s.draft, s.heads)
    with pytest.raises(ConfigError, match="before start"):
        drafter.propose(1, 3)
    feats, _ = run_target(s.target, drafter.target_request(), ids)
    drafter.start(ids[0], feats)
    assert drafter.propose(int(ids[0, -1]), 10).tokens.shape == (3,)  # B - 1 drafts at most
    assert drafter.propose(int(ids[0, -1]), 2).tokens.shape == (2,)
    with pytest.raises(ConfigError, match="num_tokens"):
        drafter.propose(1, 0)
    with pytest.raises(ConfigError, match="features for"):
        drafter.commit(ids[0, :2], _slice(feats, 0, 3))
    with pytest.raises(ConfigError, match="unknown DFlash option"):
        DFlashDrafter(s.draft, s.heads, temprature=1.0)
    with pytest.raises(ConfigError, match="disagrees with the draft"):
        DFlashDrafter(s.draft, s.heads, block_size=16)


def test_sampled_drafts_are_drawn_from_their_probs(dflash):
    s = dflash.make_setup(block_size=5)
    ids = torch.randint(0, 120, (1, 5))
    drafter = DFlashDrafter(s.draft, s.heads)
    feats, _ = run_target(s.target, drafter.target_request(), ids)
    drafter.start(ids[0], feats)
    prop = drafter.propose(7, 4, temperature=2.0, generator=torch.Generator().manual_seed(11))
    greedy_logits_order = drafter.propose(7, 4).tokens
    assert torch.allclose(prop.probs.sum(-1), torch.ones(4))
    assert torch.equal(prop.probs.argmax(-1), greedy_logits_order)  # softmax(logits / T) keeps the argmax
    again = torch.multinomial(prop.probs, 1, generator=torch.Generator().manual_seed(11)).flatten()
    assert torch.equal(prop.tokens, again)  # one draw per slot from its own distribution
    flatter = drafter.propose(7, 4, temperature=4.0).probs
    assert (flatter.max(-1).values < prop.probs.max(-1).values).all()


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_greedy_speculative_decoding_matches_plain_greedy(dflash, arch):
    from draftsmith.decode.testing import tiny_target
    from draftsmith.target import target_heads

    target = tiny_target(arch)
    draft = dflash.make_draft(target.config, mask_token_id=127, block_size=5)
    drafter = DFlashDrafter(draft.eval(), target_heads(target))
    prompt = torch.tensor([5, 9, 17, 33, 4, 61])
    spec = SpeculativeDecoder(target, drafter).generate(prompt, 30)
    plain = generate_plain(target, prompt, 30)
    assert spec.tokens == plain.tokens
    assert all(1 <= t <= 5 for t in spec.taus) and sum(spec.taus) == len(spec.tokens) - 1


def test_sampled_speculative_decoding_runs_with_rejection_sampling(dflash):
    from draftsmith.decode.testing import tiny_target
    from draftsmith.target import target_heads

    target = tiny_target("qwen3")
    drafter = DFlashDrafter(dflash.make_draft(target.config, block_size=4).eval(), target_heads(target))
    out = SpeculativeDecoder(target, drafter, sampling=SamplingConfig(temperature=1.0), seed=3).generate(
        torch.tensor([5, 9, 17]), 20)
    assert len(out.tokens) == 20 and all(1 <= t <= 4 for t in out.taus)
