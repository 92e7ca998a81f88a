"""DSparkDrafter: batched training forward == incremental drafting with the cache (methods.md §6 items 5–6),
exact q distributions from the Markov loop, the static confidence threshold, and end-to-end greedy
speculative decoding through core's engine reproducing plain greedy decoding (item 4)."""

from __future__ import annotations

import pytest
import torch

from draftsmith.decode.engine import SpeculativeDecoder
from draftsmith.decode.plain import generate_plain
from draftsmith.errors import DraftsmithError
from draftsmith.method import SuggestsNumTokens, TargetFeatures, TargetRequest
from draftsmith.target import run_target, target_heads
from draftsmith_dspark.drafting import DSparkDrafter, markov_decode


def _slice(feats: TargetFeatures, lo: int, hi: int) -> TargetFeatures:
    return TargetFeatures(hidden_states={i: h[:, lo:hi] for i, h in feats.hidden_states.items()})


@pytest.fixture(scope="module")
def setup(tiny):
    tc = tiny.target_config()
    target = tiny.make_target(tc)
    heads = target_heads(target)
    return tc, target, heads


@pytest.mark.parametrize("kind", ["vanilla", "rnn"])
def test_item5_training_forward_equals_incremental_drafting(tiny, setup, kind):
    tc, target, heads = setup
    draft = tiny.make_draft(tc, markov_head_type=kind, block_size=5).eval()
    draft.copy_embeddings_from_target(heads.embed_tokens, heads.lm_head)
    ids = tiny.make_batch(batch=1, length=30)["input_ids"]
    layers = tuple(draft.config.target_layer_ids)
    feats, _ = run_target(target, TargetRequest(layer_ids=layers), ids)
    anchors = torch.tensor([[6, 7, 13, 20, 26]])
    with torch.no_grad():
        train = draft(ids, feats.stacked(layers), torch.ones_like(ids), anchors=anchors)
    drafter = DSparkDrafter(draft, heads)
    a0 = int(anchors[0, 0])
    drafter.start(ids[:, :a0], _slice(feats, 0, a0))
    seq = ids[0].tolist()
    for i, a in enumerate(anchors[0].tolist()):
        if i:
            prev_a = int(anchors[0, i - 1])
            drafter.commit(ids[0, prev_a:a], _slice(feats, prev_a, a))
        assert drafter.committed_length == a
        hidden = drafter.block_hidden(seq[a])
        assert drafter.cache.length == a  # item 6: the draft cache holds exactly the committed context
        forced = (seq[a + 1:a + 6] + [0] * 5)[:5]
        out = markov_decode(draft, hidden, seq[a], forced=forced)
        valid = int(train.eval_mask[0, i].sum())
        assert valid == min(5, len(seq) - a - 1)
        torch.testing.assert_close(out.logits[:valid], train.draft_logits[0, i, :valid], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out.confidence[:valid], train.confidence_pred[0, i, :valid], rtol=1e-4, atol=1e-5)


def test_item6_cache_lengths_over_rounds(tiny, setup):
    tc, target, heads = setup
    draft = tiny.make_draft(tc).eval()
    draft.copy_embeddings_from_target(heads.embed_tokens, heads.lm_head)
    ids = tiny.make_batch(batch=1, length=20)["input_ids"]
    layers = tuple(draft.config.target_layer_ids)
    feats, _ = run_target(target, TargetRequest(layer_ids=layers), ids)
    drafter = DSparkDrafter(draft, heads)
    drafter.start(ids[:, :8], _slice(feats, 0, 8))
    assert drafter.cache.length == 0  # context rows enter the cache with the first block pass
    drafter.propose(int(ids[0, 8]), 7)
    assert drafter.cache.length == 8  # = start (the block's own K/V were never cached)
    drafter.commit(ids[0, 8:11], _slice(feats, 8, 11))  # anchor + 2 accepted
    assert drafter.cache.length == 8 and drafter.committed_length == 11
    drafter.propose(int(ids[0, 11]), 7)
    assert drafter.cache.length == 11


def test_proposal_probs_are_the_exact_markov_distributions(tiny, setup):
    tc, target, heads = setup
    draft = tiny.make_draft(tc, scale=0.4).eval()
    draft.copy_embeddings_from_target(heads.embed_tokens, heads.lm_head)
    ids = tiny.make_batch(batch=1, length=12)["input_ids"]
    layers = tuple(draft.config.target_layer_ids)
    feats, _ = run_target(target, TargetRequest(layer_ids=layers), ids)
    drafter = DSparkDrafter(draft, heads)
    drafter.start(ids, feats)
    prop = drafter.propose(5, 7, temperature=0.7, generator=torch.Generator().manual_seed(0))
    assert prop.tokens.shape == (7,) and prop.probs.shape == (7, 128) and prop.parents is None
    torch.testing.assert_close(prop.probs.sum(-1), torch.ones(7))
    assert (prop.probs[torch.arange(7), prop.tokens] > 0).all()
    # re-run the same block teacher-forced on the sampled tokens: q_k = softmax((U_k + B(x_{k-1}))/T)
    drafter.start(ids, feats)
    replay = markov_decode(draft, drafter.block_hidden(5), 5, forced=prop.tokens.tolist())
    torch.testing.assert_close(prop.probs, torch.softmax(replay.logits / 0.7, -1))
    # the Markov bias changes q, so the previous draft matters
    base = torch.softmax(draft.lm_head(drafter.block_hidden(5)) / 0.7, -1)
    assert not torch.allclose(prop.probs[1:], base[1:], atol=1e-4)
    # greedy: argmax of the adjusted logits, no probs
    drafter.start(ids, feats)
    greedy = drafter.propose(5, 3)
    assert greedy.probs is None and greedy.tokens.shape == (3,)
    drafter.start(ids, feats)
    full = markov_decode(draft, drafter.block_hidden(5), 5)
    assert greedy.tokens.tolist() == full.tokens[:3].tolist() == full.logits[:3].argmax(-1).tolist()


def test_static_confidence_threshold_and_sts(tiny, setup):
    tc, target, heads = setup
    draft = tiny.make_draft(tc).eval()
    draft.copy_embeddings_from_target(heads.embed_tokens, heads.lm_head)
    ids = tiny.make_batch(batch=1, length=12)["input_ids"]
    feats, _ = run_target(target, TargetRequest(layer_ids=tuple(draft.config.target_layer_ids)), ids)

    def run(**opts):
        drafter = DSparkDrafter(draft, heads, **opts)
        drafter.start(ids, feats)
        return drafter.propose(5, 7), drafter.last_confidence

    full, conf = run()
    assert full.tokens.numel() == 7 and conf.shape == (7,) and ((conf > 0) & (conf < 1)).all()
    cut = float(conf.sort().values[3])  # a threshold between observed confidences
    short, _ = run(confidence_threshold=cut)
    first_low = int((conf < cut).nonzero()[0, 0])
    assert short.tokens.tolist() == full.tokens[:first_low].tolist()
    none, _ = run(confidence_threshold=1.0)
    assert none.tokens.numel() == 0
    same, conf_t = run(confidence_temperatures=[1.0] * 7)
    torch.testing.assert_close(conf_t, conf)
    _, hot = run(confidence_temperatures=[4.0] * 7)
    assert ((hot - 0.5).abs() <= (conf - 0.5).abs() + 1e-7).all()  # higher T pulls towards 0.5
    with pytest.raises(ValueError, match="confidence_threshold"):
        DSparkDrafter(draft, heads, confidence_threshold=0.0)
    with pytest.raises(ValueError, match="confidence_temperatures"):
        DSparkDrafter(draft, heads, confidence_temperatures=[1.0] * 3)
    with pytest.raises(ValueError, match="DSpark drafter: unknown option"):
        DSparkDrafter(draft, heads, treshold=0.5)


def test_protocol_misuse_is_reported(tiny, setup):
    tc, target, heads = setup
    draft = tiny.make_draft(tc).eval()
    drafter = DSparkDrafter(draft, heads)
    with pytest.raises(DraftsmithError, match="before start"):
        drafter.propose(3, 7)
    feats = TargetFeatures(hidden_states={i: torch.zeros(1, 4, 64) for i in draft.config.target_layer_ids})
    with pytest.raises(ValueError, match="5 tokens but features for 4 positions"):
        drafter.start(torch.zeros(5, dtype=torch.long), feats)
    drafter.start(torch.zeros(4, dtype=torch.long), feats)
    with pytest.raises(ValueError, match="at least the anchor"):
        drafter.commit(torch.zeros(0, dtype=torch.long), feats)
    assert drafter.propose(3, 20).tokens.numel() == 7  # never more than γ
    assert isinstance(drafter, SuggestsNumTokens) and drafter.default_num_tokens == 7  # a round asks for γ
    assert drafter.target_request() == TargetRequest(layer_ids=(1, 3), final_hidden=False)


@pytest.mark.parametrize("threshold", [None, 0.5])
def test_item4_greedy_speculative_decoding_matches_plain_decoding(tiny, setup, threshold):
    tc, target, heads = setup
    draft = tiny.make_draft(tc).eval()
    draft.copy_embeddings_from_target(heads.embed_tokens, heads.lm_head)
    drafter = DSparkDrafter(draft, heads, confidence_threshold=threshold)
    prompt = tiny.make_batch(batch=1, length=9, seed=7)["input_ids"]
    plain = generate_plain(target, prompt, 16, eos_token_ids=())
    spec = SpeculativeDecoder(target, drafter, eos_token_ids=()).generate(prompt, 16)
    assert spec.tokens == plain.tokens
    assert sum(r.committed for r in spec.rounds) + 1 == len(spec.tokens)  # + the prefill token
    assert all(1 <= r.accepted + 1 <= 8 for r in spec.rounds)


def test_sampling_round_trip_through_the_engine(tiny, setup):
    """T = 1: the drafter's q goes to the engine's rejection sampler; rounds stay within [1, γ + 1]."""
    from draftsmith.decode.sampling import SamplingConfig

    tc, target, heads = setup
    draft = tiny.make_draft(tc).eval()
    draft.copy_embeddings_from_target(heads.embed_tokens, heads.lm_head)
    prompt = tiny.make_batch(batch=1, length=9, seed=8)["input_ids"]
    result = SpeculativeDecoder(target, DSparkDrafter(draft, heads), sampling=SamplingConfig(temperature=1.0),
                                eos_token_ids=(), seed=3).generate(prompt, 12)
    assert len(result.tokens) == 12 and all(0 <= t < 128 for t in result.tokens)
    assert all(0 <= r.accepted <= 7 and r.drafted == min(7, r.drafted) for r in result.rounds)
