"""Drafting equals the training forward: incremental KV-cached drafting vs the batched (TTT) forward, fp32."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from draftsmith.decode import SamplingConfig, SpeculativeDecoder, generate_plain
from draftsmith.method import TargetFeatures
from draftsmith_eagle.drafting import EagleChainDrafter, EagleTreeDrafter
from draftsmith_eagle.loss import shift_left
from draftsmith_eagle.objective import Eagle1Objective, Eagle3Objective

TOL = dict(rtol=1e-4, atol=1e-4)


def _slice(feats: TargetFeatures, start: int, stop: int) -> TargetFeatures:
    return TargetFeatures({i: h[:, start:stop] for i, h in feats.hidden_states.items()},
                          feats.final_hidden[:, start:stop] if feats.final_hidden is not None else None)


@pytest.mark.parametrize("depth", [1, 2])
def test_eagle3_incremental_equals_ttt_unroll(eagle, depth):
    """Slot t: prefill 0..t-1, the committed slot t, then chain steps fed the (teacher-forced) next tokens and the
    draft's own hidden state == TTT steps 0..K-1 of slot t; and the prefill == step 0 of slots 0..t-1."""
    model = eagle.make_eagle3(eagle.target_config(), num_hidden_layers=depth).eval()
    t_len, steps = 12, 4
    ids = torch.randint(3, 128, (1, t_len), generator=torch.Generator().manual_seed(0))
    aux = torch.randn(1, t_len, 192, generator=torch.Generator().manual_seed(1))
    cache, hidden, unrolled = model.new_ttt_cache(), model.project_hidden_states(aux), []
    for s in range(steps):
        hidden = model(shift_left(ids, s + 1), hidden, cache_hidden=cache)
        unrolled.append(hidden)
    for t in (0, 5, 7):
        kv = model.new_cache()
        if t:
            pre = model(ids[:, 1:t + 1], model.project_hidden_states(aux[:, :t]), cache_hidden=kv)
            assert_close(pre, unrolled[0][:, :t], **TOL)
        out = model(ids[:, t + 1:t + 2], model.project_hidden_states(aux[:, t:t + 1]), cache_hidden=kv)
        assert_close(out[:, 0], unrolled[0][:, t], **TOL)
        for s in range(1, steps):
            out = model(ids[:, t + s + 1:t + s + 2], out, cache_hidden=kv)
            assert len(kv) == t + s + 1
            assert_close(out[:, 0], unrolled[s][:, t], **TOL)
        kv.crop(t + 1)
        assert len(kv) == t + 1


def test_eagle1_incremental_equals_unroll(eagle):
    model = eagle.make_eagle1(eagle.target_config(), draft_num_hidden_layers=2).eval()
    ids = torch.randint(3, 128, (1, 10), generator=torch.Generator().manual_seed(0))
    feats = torch.randn(1, 10, 64, generator=torch.Generator().manual_seed(1))
    batched = model(ids, feats)  # the training forward (teacher-forced features)
    cache, inputs, unrolled = model.new_ttt_cache(), feats, []
    for s in range(3):  # chains for every slot at once, fed the draft's own predicted features
        inputs = model(shift_left(ids, s), inputs, cache=cache)
        unrolled.append(inputs)
    assert_close(unrolled[0], batched, **TOL)
    kv = model.new_cache()
    pre = model(ids[:, :6], feats[:, :6], cache=kv)
    assert_close(pre, batched[:, :6], **TOL)
    out = model(ids[:, 6:7], feats[:, 6:7], cache=kv)
    for s in range(1, 3):
        out = model(ids[:, 6 + s:7 + s], out, cache=kv)
        assert_close(out[:, 0], unrolled[s][:, 6], **TOL)


@pytest.mark.parametrize("method", ["eagle3", "eagle1"])
def test_acceptance_lengths_match_real_drafting(eagle, method):
    """Data whose continuation after anchor a *is* the drafter's greedy proposal: acceptance_lengths[a] == k; a
    corrupted token at draft slot j gives j. The teacher-forced batch computation reproduces real drafting."""
    tc = eagle.target_config()
    target = eagle.make_target(tc)
    heads = eagle.heads_of(target)
    draft = eagle.make_eagle3(tc) if method == "eagle3" else eagle.make_eagle1(tc)
    if method == "eagle3":
        objective = Eagle3Objective(draft, heads, ttt_steps=4)
        objective.prepare(torch.arange(128).flip(0))
    else:
        objective = Eagle1Objective(draft, heads, num_draft_tokens=4, feature_noise=0.0)
    objective.eval()
    request, k, a = objective.target_request(), 4, 9
    ids = torch.randint(3, 128, (1, a + 1), generator=torch.Generator().manual_seed(4))
    feats = eagle.features_of(target, {"input_ids": ids}, request)
    drafter = EagleChainDrafter(draft, heads)
    drafter.start(ids[0, :a], _slice(feats, 0, a))
    proposal = drafter.propose(int(ids[0, a]), k)
    assert proposal.probs is None and proposal.parents is None and proposal.tokens.shape == (k,)
    full = torch.cat([ids, proposal.tokens[None], torch.tensor([[5, 6]])], dim=1)
    for j in (None, 0, 2):
        seq = full.clone()
        if j is not None:
            seq[0, a + 1 + j] = (seq[0, a + 1 + j] + 1) % 128
        batch = {"input_ids": seq, "attention_mask": torch.ones_like(seq), "loss_mask": torch.ones_like(seq)}
        lengths = objective.acceptance_lengths(batch, eagle.features_of(target, batch, request))
        assert lengths.shape == seq.shape and lengths[0, 0] == -1
        assert lengths[0, a] == (k if j is None else j)


@pytest.mark.parametrize("method", ["eagle3", "eagle1"])
def test_drafter_protocol_and_cache_bookkeeping(eagle, method):
    tc = eagle.target_config()
    target = eagle.make_target(tc)
    heads = eagle.heads_of(target)
    draft = eagle.make_eagle3(tc, draft_vocab_size=32) if method == "eagle3" else eagle.make_eagle1(tc)
    if method == "eagle3":
        draft.set_vocab_mapping(torch.arange(40, 72))
    drafter = EagleChainDrafter(draft, heads)
    seq = torch.randint(3, 128, (1, 16), generator=torch.Generator().manual_seed(2))
    feats = eagle.features_of(target, {"input_ids": seq}, drafter.target_request())
    drafter.start(seq[0, :6], _slice(feats, 0, 6))
    assert len(drafter.cache) == drafter.length == 5
    g = torch.Generator().manual_seed(0)
    p = drafter.propose(int(seq[0, 6]), 3, temperature=0.7, generator=g)
    assert len(drafter.cache) == drafter.length == 6  # the anchor's slot stays, the chain's slots are dropped
    assert p.probs.shape == (3, 128) and torch.allclose(p.probs.sum(-1), torch.ones(3))
    if method == "eagle3":
        outside = torch.ones(128, dtype=torch.bool)
        outside[40:72] = False
        assert p.probs[:, outside].abs().max() == 0 and ((p.tokens >= 40) & (p.tokens < 72)).all()
    assert p.probs[torch.arange(3), p.tokens].gt(0).all()
    drafter.commit(seq[0, 6:9], _slice(feats, 6, 9))  # anchor + 2 accepted drafts
    assert len(drafter.cache) == drafter.length == 8
    # the cache now equals a fresh prefill of the same committed slots
    fresh = EagleChainDrafter(draft, heads)
    fresh.start(seq[0, :9], _slice(feats, 0, 9))
    assert len(fresh.cache) == 8
    for layer in range(draft.config.num_hidden_layers):
        assert_close(drafter.cache.get(layer)[0], fresh.cache.get(layer)[0], **TOL)
    assert_close(drafter.pending, fresh.pending)
    greedy_a, greedy_b = drafter.propose(int(seq[0, 9]), 4), fresh.propose(int(seq[0, 9]), 4)
    assert greedy_a.tokens.tolist() == greedy_b.tokens.tolist()


def test_tree_children_are_the_top_k_of_their_path(eagle):
    """Every expanded node's children are the top-k tokens of the draft distribution along that node's path,
    recomputed by chain drafting the path: tree masks, positions and hidden passing match the chain."""
    tc = eagle.target_config()
    target = eagle.make_target(tc)
    heads = eagle.heads_of(target)
    draft = eagle.make_eagle3(tc, draft_vocab_size=128)
    tree = EagleTreeDrafter(draft, heads, top_k=3, max_depth=3)
    seq = torch.randint(3, 128, (1, 8), generator=torch.Generator().manual_seed(3))
    feats = eagle.features_of(target, {"input_ids": seq}, tree.target_request())
    tree.start(seq[0, :7], _slice(feats, 0, 7))
    p = tree.propose(int(seq[0, 7]), 21)
    parents, tokens = p.parents.tolist(), p.tokens.tolist()
    assert len(tokens) == 21 and all(-1 <= q < i for i, q in enumerate(parents))
    assert len(tree.cache) == tree.length == 7
    chain = EagleChainDrafter(draft, heads)
    for node in [-1] + [i for i in range(21) if i in parents]:
        path, n = [], node
        while n >= 0:
            path.insert(0, tokens[n])
            n = parents[n]
        chain.start(seq[0, :7], _slice(feats, 0, 7))
        out = chain._anchor_slot(int(seq[0, 7]))
        for tok in path:
            out = chain._step(torch.tensor([[tok]]), out, committed=False)
        logp = chain._logprobs(out[:, -1], 0.0)[0]
        children = sorted(tokens[i] for i in range(21) if parents[i] == node)
        assert children == sorted(logp.topk(3).indices.tolist())


@pytest.mark.parametrize("method, drafter_cls", [("eagle3", EagleChainDrafter), ("eagle3", EagleTreeDrafter),
                                                 ("eagle1", EagleChainDrafter), ("eagle1", EagleTreeDrafter)])
def test_speculative_decoding_is_lossless(eagle, method, drafter_cls):
    tc = eagle.target_config(num_layers=6)
    target = eagle.make_target(tc)
    heads = eagle.heads_of(target)
    draft = eagle.make_eagle3(tc) if method == "eagle3" else eagle.make_eagle1(tc)
    if method == "eagle3":
        draft.set_vocab_mapping(torch.arange(64))
    prompt = torch.randint(3, 128, (9,), generator=torch.Generator().manual_seed(1))
    plain = generate_plain(target, prompt, 20)
    result = SpeculativeDecoder(target, drafter_cls(draft, heads), num_draft_tokens=5).generate(prompt, 20)
    assert result.tokens == plain.tokens
    sampled = SpeculativeDecoder(target, drafter_cls(draft, heads), num_draft_tokens=4,
                                 sampling=SamplingConfig(temperature=0.9), seed=3).generate(prompt, 12)
    assert len(sampled.tokens) == 12
