"""The lossless verification rules, checked by Monte-Carlo on tiny vocabularies (methods.md §6 item 3).

Every check runs the engine's own vectorised verifier on 10^5+ independent trials at once."""

from __future__ import annotations

import pytest
import torch

from draftsmith.decode.sampling import SamplingConfig, pick_token, target_distribution
from draftsmith.decode.verify import DraftTree, verify_greedy, verify_sampling
from draftsmith.errors import ConfigError


N = 120_000


def _gen(seed: int = 0) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def test_reference_numbers_accept_reject_and_residual():
    """p = (0.7, 0.3), q = (0.5, 0.5): A always accepted, B w.p. 0.6, residual (1, 0) → P(A) = 0.7."""
    g = _gen(1)
    p = torch.tensor([[0.7, 0.3], [0.7, 0.3]]).expand(N, 2, 2)  # rows: after anchor, after draft 1
    q = torch.tensor([[0.5, 0.5]]).expand(N, 1, 2)
    drafts = torch.multinomial(q[:, 0], 1, generator=g)  # (N, 1)
    v = verify_sampling(p, drafts, DraftTree.chain(1), q, g)
    accepted = v.num_accepted.bool()
    is_a = drafts[:, 0] == 0
    assert accepted[is_a].all()  # min(1, 0.7/0.5) = 1
    assert abs(accepted[~is_a].float().mean().item() - 0.6) < 0.01  # 0.3 / 0.5
    assert (v.next_token[~accepted] == 0).all()  # residual max(p - q, 0) = (0.2, 0) → always A
    first = torch.where(accepted, drafts[:, 0], v.next_token)
    assert abs((first == 0).float().mean().item() - 0.7) < 0.005
    assert abs(accepted.float().mean().item() - 0.8) < 0.005  # α(p, q) = Σ min(p, q) = 0.8


def _simulate(p_abs, q_abs, k, num_tokens, gen, tree=None, drafts_from_q=True):
    """Run rounds until every trial has ``num_tokens`` tokens; the target distribution depends only on the
    absolute position (so the output must be independent draws from p_abs[0], p_abs[1], ...)."""
    n, v = N, p_abs.shape[-1]
    out = torch.full((n, num_tokens + k + 1), -1, dtype=torch.long)
    length = torch.zeros(n, dtype=torch.long)
    tree = tree or DraftTree.chain(k)
    depth = torch.tensor(tree.depths)  # (m,)
    while (length < num_tokens).any():
        rows = (length[:, None] + torch.arange(k + 1)).clamp(max=p_abs.shape[0] - 1)  # (N, k+1)
        p = p_abs[rows]  # (N, k+1, V)
        q = q_abs[(length[:, None] + depth - 1).clamp(max=q_abs.shape[0] - 1)]  # (N, m, V)
        drafts = torch.multinomial(q.reshape(-1, v), 1, generator=gen).reshape(n, -1)
        # the target row of draft i is the row of its parent node
        node_rows = torch.cat([rows[:, :1], length[:, None] + depth[None, :]], dim=1).clamp(max=p_abs.shape[0] - 1)
        p = p_abs[node_rows]
        res = verify_sampling(p, drafts, tree, q if drafts_from_q else None, gen)
        active = length < num_tokens
        for d in range(res.path.shape[1]):
            node = res.path[:, d]
            take = active & (node >= 0)
            out[take, length[take]] = drafts[take, node[take]]
            length = length + take.long()
        out[active, length[active]] = res.next_token[active]
        length = length + active.long()
    return out[:, :num_tokens]


def _assert_distribution(samples, probs, tol):
    freq = torch.bincount(samples, minlength=probs.numel()).float() / samples.numel()
    assert torch.allclose(freq, probs, atol=tol), (freq, probs)


@pytest.mark.parametrize("k", [1, 3])
def test_chain_rejection_sampling_is_lossless(k):
    g = _gen(2)
    v = 4
    p_abs = torch.softmax(torch.randn(8, v, generator=g) * 1.5, dim=-1)
    q_abs = torch.softmax(torch.randn(8, v, generator=g) * 1.5, dim=-1)
    out = _simulate(p_abs, q_abs, k, 3, g)
    for pos in range(3):
        _assert_distribution(out[:, pos], p_abs[pos], 0.007)
    # independence: the joint of the first two tokens is the product of the marginals
    joint = torch.bincount(out[:, 0] * v + out[:, 1], minlength=v * v).float() / N
    assert torch.allclose(joint, torch.outer(p_abs[0], p_abs[1]).flatten(), atol=0.007)


def test_deterministic_chain_drafts_are_lossless_at_temperature():
    """probs=None at T > 0: drafts verified as one-hot q (sample-and-match)."""
    g = _gen(3)
    p_abs = torch.softmax(torch.randn(8, 3, generator=g), dim=-1)
    q_abs = torch.softmax(torch.randn(8, 3, generator=g) * 3, dim=-1)
    out = _simulate(p_abs, q_abs, 2, 2, g, drafts_from_q=False)
    for pos in range(2):
        _assert_distribution(out[:, pos], p_abs[pos], 0.007)


def test_tree_sampling_is_lossless():
    """A tree with duplicate and distinct siblings: the walk follows the target's own sample."""
    g = _gen(4)
    tree = DraftTree.from_parents([-1, -1, -1, 0, 0, 1, 3], 7)
    p_abs = torch.softmax(torch.randn(8, 3, generator=g) * 1.5, dim=-1)
    q_abs = torch.softmax(torch.randn(8, 3, generator=g), dim=-1)
    out = _simulate(p_abs, q_abs, 7, 3, g, tree=tree)
    for pos in range(3):
        _assert_distribution(out[:, pos], p_abs[pos], 0.007)


def test_greedy_chain_and_tree_walks():
    logits = torch.tensor([[[0., 5, 1], [9, 0, 0], [0, 0, 3], [1, 2, 0]]])  # argmax per node: 1, 0, 2, 1
    chain = verify_greedy(logits, torch.tensor([[1, 0, 1]]), DraftTree.chain(3))
    assert chain.num_accepted.tolist() == [2] and chain.next_token.tolist() == [2]
    assert chain.path.tolist() == [[0, 1, -1]] and chain.offered.tolist() == [[True, True, True]]
    # tree: node 1 = draft 0 (token 2, wrong), draft 1 (token 1, right) under the anchor; draft 2 under draft 1
    tree = DraftTree.from_parents([-1, -1, 1], 3)
    logits_t = torch.tensor([[[0., 5, 1], [9, 0, 0], [0, 0, 3], [0, 0, 4]]])  # argmax: 1, 0, 2, 2
    res = verify_greedy(logits_t, torch.tensor([[2, 1, 2]]), tree)
    assert res.num_accepted.tolist() == [2] and res.path.tolist() == [[1, 2]] and res.next_token.tolist() == [2]
    assert tree.ancestor_matrix().tolist() == [[True, False, False, False], [True, True, False, False],
                                               [True, False, True, False], [True, False, True, True]]


def test_chain_walk_equals_generic_tree_walk():
    g = _gen(5)
    k = 5
    logits = torch.randn(2000, k + 1, 3, generator=g)
    drafts = torch.randint(0, 3, (2000, k), generator=g)
    fast = verify_greedy(logits, drafts, DraftTree.chain(k))
    generic = DraftTree(tuple(range(-1, k - 1)), tuple(range(1, k + 1)), is_chain=False)
    slow = verify_greedy(logits, drafts, generic)
    for name in ("num_accepted", "path", "next_token", "offered"):
        assert torch.equal(getattr(fast, name), getattr(slow, name)), name


def test_empty_proposal_verifies_the_anchor_alone():
    res = verify_greedy(torch.tensor([[[0., 2, 1]]]), torch.zeros(1, 0, dtype=torch.long), DraftTree.chain(0))
    assert res.num_accepted.tolist() == [0] and res.next_token.tolist() == [1]


def test_target_distribution_top_k_top_p():
    logits = torch.log(torch.tensor([0.5, 0.25, 0.15, 0.1]))
    assert torch.allclose(target_distribution(logits, SamplingConfig(temperature=1.0)),
                          torch.tensor([0.5, 0.25, 0.15, 0.1]))
    assert torch.allclose(target_distribution(logits, SamplingConfig(temperature=1.0, top_k=2)),
                          torch.tensor([2 / 3, 1 / 3, 0, 0]))
    # top-p 0.7: the smallest prefix with mass >= 0.7 is {0.5, 0.25}
    assert torch.allclose(target_distribution(logits, SamplingConfig(temperature=1.0, top_p=0.7)),
                          torch.tensor([2 / 3, 1 / 3, 0, 0]))
    assert torch.allclose(target_distribution(logits, SamplingConfig(temperature=1.0, top_p=0.2)),
                          torch.tensor([1.0, 0, 0, 0]))
    sharp = target_distribution(logits, SamplingConfig(temperature=0.5))
    assert torch.allclose(sharp, torch.tensor([0.25, 0.0625, 0.0225, 0.01]) / 0.345)
    assert pick_token(logits, SamplingConfig()).item() == 0


@pytest.mark.parametrize("kwargs", [{"temperature": -1.0}, {"top_p": 0.0}, {"top_p": 1.5}, {"top_k": -2},
                                    {"temperature": float("nan")}])
def test_bad_sampling_config(kwargs):
    with pytest.raises(ConfigError):
        SamplingConfig(**kwargs)


def test_bad_tree_parents():
    with pytest.raises(Exception, match="parent"):
        DraftTree.from_parents([0, -1], 2)  # node 0 cannot follow itself
