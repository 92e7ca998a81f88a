"""The engine's core invariant: greedy speculative decoding == the target's own greedy decoding, token for
token, for any drafter (random, oracle, tree), several target families, EOS inside a block, the length limit;
plus τ bookkeeping, cache/feature consistency and proposal validation."""

from __future__ import annotations

import pytest
import torch

from draftsmith.decode import SamplingConfig, SpeculativeDecoder, generate_plain
from draftsmith.decode.sampling import target_distribution
from draftsmith.decode.testing import (OracleDrafter, OracleTreeDrafter, RandomDrafter, every_nth,
                                       tiny_target)
from draftsmith.errors import DraftsmithError
from draftsmith.method import Proposal, TargetRequest
from draftsmith.target import run_target


PROMPT = torch.tensor([5, 17, 33, 9, 100, 7, 64, 3])
GAMMA = 5
TARGETS = {}


def target(arch: str, **kw):
    key = (arch, tuple(sorted(kw.items())))
    if key not in TARGETS:
        TARGETS[key] = tiny_target(arch, **kw)
    return TARGETS[key]


def drafter(kind: str, reference: list[int], request: TargetRequest | None = None):
    if kind == "random":
        return RandomDrafter(vocab_size=128, request=request)
    cls = OracleTreeDrafter if kind == "tree" else OracleDrafter
    return cls(reference=reference, vocab_size=128, corrupt=every_nth(4, offset=1), request=request)


def check_rounds(result, gamma: int, max_new: int):
    taus = result.taus
    assert all(1 <= t <= gamma + 1 for t in taus), taus
    assert 1 + sum(taus) == len(result.tokens)  # the first token comes from the prefill
    assert len(result.tokens) <= max_new
    for r in result.rounds:
        assert r.accepted <= r.drafted and r.committed <= r.accepted + 1


ARCHS = [("qwen3", {}), ("llama", {"num_layers": 3, "seed": 1}), ("qwen2", {"seed": 2}),
         ("mistral", {"sliding_window": 8, "seed": 3})]


@pytest.mark.parametrize("arch,kw", ARCHS, ids=[a for a, _ in ARCHS])
@pytest.mark.parametrize("kind", ["random", "oracle", "tree"])
def test_greedy_speculative_equals_plain_greedy(arch, kw, kind):
    model = target(arch, **kw)
    ref = generate_plain(model, PROMPT, 48, eos_token_ids=())
    d = drafter(kind, PROMPT.tolist() + ref.tokens)
    out = SpeculativeDecoder(model, d, num_draft_tokens=GAMMA, eos_token_ids=()).generate(PROMPT, 48)
    assert out.tokens == ref.tokens
    assert out.stop_reason == "length"
    check_rounds(out, 2 * GAMMA + 1 if kind == "tree" else GAMMA, 48)
    if kind != "random":
        assert sum(out.taus) / len(out.taus) > 1.8  # the oracle's drafts are mostly right


SLIDING = {"mistral": {"seed": 3},  # every layer slides; no layer_types
           "qwen2": {"seed": 2, "use_sliding_window": True, "max_window_layers": 2}}  # mixed via layer_types


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("window", [5, 8, 30])
@pytest.mark.parametrize("arch", list(SLIDING))
def test_trees_and_chains_on_sliding_window_targets(arch, attn, window):
    """Sliding-window layers: the chain cache is rolled back past the window, and tree verification masks
    the context rows a deeper node can no longer see (windows shorter than, around and beyond the tree)."""
    from draftsmith.decode.cache import new_cache

    model = target(arch, sliding_window=window, attn_implementation=attn, **SLIDING[arch])
    kinds = [type(layer).__name__ for layer in new_cache(model).layers]
    assert kinds.count("DynamicSlidingWindowLayer") == (4 if arch == "mistral" else 2)
    ref = generate_plain(model, PROMPT, 40, eos_token_ids=())
    for kind in ("oracle", "tree"):
        d = drafter(kind, PROMPT.tolist() + ref.tokens)
        out = SpeculativeDecoder(model, d, num_draft_tokens=GAMMA, eos_token_ids=()).generate(PROMPT, 40)
        assert out.tokens == ref.tokens, kind
        assert sum(out.taus) / len(out.taus) > 1.8


def test_tree_mask_for_sliding_layers_hides_context_beyond_the_window():
    from draftsmith.decode.cache import new_cache, tree_attention_mask
    from draftsmith.decode.verify import DraftTree

    tree = DraftTree.from_parents([-1, 0, 1], 3)  # a chain given as a tree: depths 1, 2, 3
    depths = torch.tensor([0, 1, 2, 3])
    mistral = target("mistral", sliding_window=4, seed=3)
    sliding = tree_attention_mask(tree.ancestor_matrix(), depths, 10, mistral, new_cache(mistral),
                                  torch.float32)[0, 0]  # (4, 10 + 4): nothing cached yet → 10 context rows
    # the anchor (position 10) sees positions 7..9 and itself; the depth-3 node (13) no context, its ancestors
    assert sliding[0].tolist() == [False] * 7 + [True] * 3 + [True, False, False, False]
    assert sliding[3].tolist() == [False] * 10 + [True] * 4
    narrow = target("mistral", sliding_window=3, seed=3)
    row = tree_attention_mask(tree.ancestor_matrix(), depths, 10, narrow, new_cache(narrow), torch.float32)
    assert row[0, 0, 3].tolist() == [False] * 10 + [False, True, True, True]  # the anchor is 3 positions back
    qwen2 = target("qwen2", sliding_window=4, seed=2, use_sliding_window=True, max_window_layers=2)
    masks = tree_attention_mask(tree.ancestor_matrix(), depths, 10, qwen2, new_cache(qwen2), torch.float32)
    assert set(masks) == {"full_attention", "sliding_attention"}
    assert torch.equal(masks["sliding_attention"][0, 0], sliding)
    assert masks["full_attention"][0, 0, 3].tolist() == [True] * 14


@pytest.mark.parametrize("kind", ["random", "oracle", "tree"])
def test_eos_inside_a_block(kind):
    model = target("qwen3")
    ref = generate_plain(model, PROMPT, 40, eos_token_ids=())
    # pick as "EOS" a token whose first occurrence is mid-generation, inside some round's block
    eos = next(t for i, t in enumerate(ref.tokens) if i >= 6 and t not in ref.tokens[:i])
    plain = generate_plain(model, PROMPT, 40, eos_token_ids=[eos])
    assert plain.stop_reason == "eos" and plain.tokens[-1] == eos
    d = OracleDrafter(reference=PROMPT.tolist() + ref.tokens, vocab_size=128) if kind == "oracle" else \
        drafter(kind, PROMPT.tolist() + ref.tokens)  # the plain oracle drafts straight through the EOS
    out = SpeculativeDecoder(model, d, num_draft_tokens=GAMMA, eos_token_ids=[eos]).generate(PROMPT, 40)
    assert out.tokens == plain.tokens and out.stop_reason == "eos"
    check_rounds(out, 2 * GAMMA + 1 if kind == "tree" else GAMMA, 40)


@pytest.mark.parametrize("max_new", [1, 2, 6, 7, 13])
@pytest.mark.parametrize("kind", ["random", "oracle", "tree"])
def test_max_length(max_new, kind):
    model = target("qwen3")
    ref = generate_plain(model, PROMPT, 20, eos_token_ids=())
    d = OracleDrafter(reference=PROMPT.tolist() + ref.tokens, vocab_size=128) if kind == "oracle" else \
        drafter(kind, PROMPT.tolist() + ref.tokens)
    out = SpeculativeDecoder(model, d, num_draft_tokens=GAMMA, eos_token_ids=()).generate(PROMPT, max_new)
    assert out.tokens == ref.tokens[:max_new] and len(out.tokens) == max_new
    check_rounds(out, 2 * GAMMA + 1 if kind == "tree" else GAMMA, max_new)
    if max_new == 1:
        assert out.rounds == []


def test_perfect_oracle_gives_gamma_plus_one():
    model = target("qwen3")
    ref = generate_plain(model, PROMPT, 40, eos_token_ids=())
    d = OracleDrafter(reference=PROMPT.tolist() + ref.tokens, vocab_size=128)
    out = SpeculativeDecoder(model, d, num_draft_tokens=GAMMA, eos_token_ids=()).generate(PROMPT, 40)
    # 39 tokens after the prefill's: six full rounds of γ+1 = 6, then the 3 left
    assert out.taus == [GAMMA + 1] * 6 + [3]
    assert [r.drafted for r in out.rounds] == [GAMMA] * 6 + [3]  # the last round asks only what is left
    # the drafter saw every anchor at the position the engine committed up to
    assert [a for a, _ in d.calls] == [len(PROMPT) + i * (GAMMA + 1) for i in range(7)]


def test_cache_length_equals_committed_length_every_round():
    """methods.md §6 item 6: each verification starts at the cache length = position of the anchor."""
    model = target("qwen3")
    ref = generate_plain(model, PROMPT, 30, eos_token_ids=())
    seen = []

    def pre_hook(_module, _args, kwargs):
        # transformers >= 5.24 takes the cache as `cache`, earlier 5.x as `past_key_values` (decode.plain.cache_kwargs)
        cache = kwargs["cache"] if "cache" in kwargs else kwargs.get("past_key_values")
        pos = kwargs.get("position_ids")
        if cache is not None and pos is not None and cache.get_seq_length() > 0:
            seen.append((cache.get_seq_length(), int(pos[0, 0])))

    for kind in ("oracle", "tree"):
        seen.clear()
        d = drafter(kind, PROMPT.tolist() + ref.tokens)
        handle = model.register_forward_pre_hook(pre_hook, with_kwargs=True)
        try:
            out = SpeculativeDecoder(model, d, num_draft_tokens=GAMMA, eos_token_ids=()).generate(PROMPT, 30)
        finally:
            handle.remove()
        assert len(seen) == len(out.rounds)
        expected = len(PROMPT)
        for (cache_len, first_pos), tau in zip(seen, out.taus):
            assert cache_len == first_pos == expected
            expected += tau


class RecordingDrafter(OracleTreeDrafter):
    """Keeps every feature block it is handed, to compare with one full target forward."""

    def start(self, prompt_ids, features):
        super().start(prompt_ids, features)
        self.blocks = [features]

    def commit(self, tokens, features):
        super().commit(tokens, features)
        self.blocks.append(features)


@pytest.mark.parametrize("tree", [False, True])
def test_features_handed_to_the_drafter_equal_a_full_forward(tree):
    model = target("qwen3")
    ref = generate_plain(model, PROMPT, 30, eos_token_ids=())
    request = TargetRequest(layer_ids=(-1, 0, 2), final_hidden=True)
    cls = RecordingDrafter if tree else type("RecordingChain", (RecordingDrafter,),
                                             {"propose": OracleDrafter.propose})
    d = cls(reference=PROMPT.tolist() + ref.tokens, vocab_size=128, corrupt=every_nth(3), request=request)
    out = SpeculativeDecoder(model, d, num_draft_tokens=GAMMA, eos_token_ids=()).generate(PROMPT, 30)
    seq = torch.cat([PROMPT, torch.tensor(out.tokens)])
    full, _ = run_target(model, request, seq[None])
    covered = sum(b.final_hidden.shape[1] for b in d.blocks)
    assert covered == len(PROMPT) + sum(out.taus[:-1])  # the last round ends generation: no commit
    for key in (-1, 0, 2, "final"):
        got = torch.cat([b.final_hidden if key == "final" else b.hidden_states[key] for b in d.blocks], dim=1)
        want = (full.final_hidden if key == "final" else full.hidden_states[key])[:, :covered]
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_plain_decoding_matches_transformers_generate():
    model = target("llama", num_layers=3, seed=1)
    ours = generate_plain(model, PROMPT, 25, eos_token_ids=())
    hf = model.generate(PROMPT[None], attention_mask=torch.ones(1, len(PROMPT), dtype=torch.long),
                        max_new_tokens=25, min_new_tokens=25, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert ours.tokens == hf[0, len(PROMPT):].tolist()


SMALL_PROMPT = PROMPT % 8


def _exact_second_token(model, sampling):
    """P(second generated token) = Σ_t1 p(t1 | prompt) p(t2 | prompt, t1), enumerated exactly."""
    with torch.no_grad():
        p1 = target_distribution(model(SMALL_PROMPT[None]).logits[0, -1], sampling)  # (V,)
        v = p1.shape[0]
        seqs = torch.cat([SMALL_PROMPT.expand(v, -1), torch.arange(v)[:, None]], dim=1)
        p2 = target_distribution(model(seqs).logits[:, -1], sampling)  # (V, V)
    return p1, p1 @ p2


class FixedQDrafter(RandomDrafter):
    """Draws every draft from the same skewed q, so a wrong residual would bias the output systematically."""

    def propose(self, anchor, num_tokens, temperature=0.0, generator=None):
        q = torch.softmax(torch.arange(self.vocab_size, dtype=torch.float32).flip(0) * 0.8, dim=-1)
        q = q.expand(num_tokens, -1)
        return Proposal(tokens=torch.multinomial(q, 1, generator=generator)[:, 0], probs=q)


@pytest.mark.parametrize("sampling", [SamplingConfig(temperature=1.0), SamplingConfig(temperature=0.8, top_k=5)])
def test_sampling_end_to_end_matches_the_target_distribution(sampling):
    """Engine-level check of the sampling path (q wiring, residuals, bonus): the first two generated tokens'
    marginals vs exact enumeration. The exact Monte-Carlo test of the rule is in test_decode_sampling.py."""
    model = tiny_target("qwen3", vocab_size=8, seed=7, num_layers=1)
    with torch.no_grad():
        model.get_output_embeddings().weight.div_(8.0)  # undo the greedy-margin scaling: spread-out p
    p1, p2 = _exact_second_token(model, sampling)
    runs = 800
    dec = SpeculativeDecoder(model, FixedQDrafter(vocab_size=8), sampling=sampling,
                             num_draft_tokens=3, eos_token_ids=(), seed=11)
    firsts, seconds, accepted = [], [], 0
    for _ in range(runs):
        out = dec.generate(SMALL_PROMPT, 3)
        firsts.append(out.tokens[0])
        seconds.append(out.tokens[1])
        accepted += out.rounds[0].accepted
    f1 = torch.bincount(torch.tensor(firsts), minlength=8).float() / runs
    f2 = torch.bincount(torch.tensor(seconds), minlength=8).float() / runs
    assert 0.5 * (f1 - p1).abs().sum() < 0.08  # sampling noise: ~0.035 expected at 800 runs
    assert 0.5 * (f2 - p2).abs().sum() < 0.08
    assert 0 < accepted < 2 * runs  # both acceptances and rejections happened


class BadDrafter(RandomDrafter):
    def __init__(self, proposal):
        super().__init__(vocab_size=128)
        self.proposal = proposal

    def propose(self, anchor, num_tokens, temperature=0.0, generator=None):
        return self.proposal


@pytest.mark.parametrize("proposal,match", [
    ([1, 2], "Proposal"),
    (Proposal(tokens=torch.tensor([1, 500])), "outside the target vocab"),
    (Proposal(tokens=torch.tensor([1, 2, 3, 4, 5, 6, 7])), "chain of 7 tokens"),
    (Proposal(tokens=torch.tensor([1, 2]), probs=torch.ones(2, 5)), "probs of shape"),
    (Proposal(tokens=torch.tensor([1, 2]), parents=torch.tensor([1, -1])), "parent"),
    (Proposal(tokens=torch.tensor([[1, 2]])), "1-D"),
])
def test_bad_proposals_are_clear_errors(proposal, match):
    with pytest.raises(DraftsmithError, match=match):
        SpeculativeDecoder(target("qwen3"), BadDrafter(proposal), num_draft_tokens=GAMMA).generate(PROMPT, 10)


def test_empty_proposal_is_a_round_with_tau_one():
    model = target("qwen3")
    ref = generate_plain(model, PROMPT, 6, eos_token_ids=())
    out = SpeculativeDecoder(model, BadDrafter(Proposal(tokens=torch.zeros(0, dtype=torch.long))),
                             num_draft_tokens=GAMMA, eos_token_ids=()).generate(PROMPT, 6)
    assert out.tokens == ref.tokens and out.taus == [1] * 5


def test_target_forwards_use_the_installed_transformers_cache_argument():
    """No deprecated ``past_key_values`` keyword where the installed transformers names it ``cache``: plain and
    speculative decoding run without its FutureWarning, and a forward that only knows ``past_key_values`` (older
    5.x releases) gets that name."""
    import inspect
    import warnings

    from draftsmith.decode.plain import cache_kwargs

    model = target("qwen3")
    name = "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"
    assert set(cache_kwargs(model, "C")) == {name, "use_cache"}

    class OldForward(torch.nn.Module):
        def forward(self, input_ids=None, past_key_values=None, use_cache=None):
            return None

    assert cache_kwargs(OldForward(), "C") == {"past_key_values": "C", "use_cache": True}
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        plain = generate_plain(model, PROMPT, 8, eos_token_ids=())
        spec = SpeculativeDecoder(model, drafter("oracle", plain.tokens), num_draft_tokens=GAMMA,
                                  eos_token_ids=()).generate(PROMPT, 8)
    assert spec.tokens == plain.tokens
