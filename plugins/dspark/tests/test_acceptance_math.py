"""methods.md §6 items 1–3 on the core pieces DSpark drafts and verifies with: expected acceptance length
(``draftsmith.decode.estimate``), α(p, q), the rejection sampler (``draftsmith.decode.verify``) and the
temperature sampling of the Markov loop (``draftsmith.decode.sampling``)."""

from __future__ import annotations

import pytest
import torch

from draftsmith.decode.estimate import acceptance_probability, expected_tau
from draftsmith.decode.sampling import SamplingConfig, pick_token, target_distribution
from draftsmith.decode.verify import DraftTree, verify_sampling


def test_item1_expected_tau():
    alpha = torch.tensor([0.9, 0.8, 0.7], dtype=torch.float64)
    assert float(expected_tau(alpha)) == pytest.approx(1 + 0.9 + 0.72 + 0.504)  # 3.124
    for a, gamma, tau in [(0.8, 7, 4.1611392), (0.8, 15, 4.8592625), (0.5, 7, 1.9921875)]:
        got = float(expected_tau(torch.full((gamma,), a, dtype=torch.float64)))
        assert got == pytest.approx(tau, abs=1e-7)
        assert got == pytest.approx((1 - a ** (gamma + 1)) / (1 - a))


def test_item2_alpha_equals_one_minus_half_l1():
    p, q = torch.tensor([0.7, 0.3]), torch.tensor([0.5, 0.5])
    assert float(acceptance_probability(p, q)) == pytest.approx(0.8)
    assert float(1 - 0.5 * (p - q).abs().sum()) == pytest.approx(0.8)
    assert float(acceptance_probability(p, p)) == pytest.approx(1.0)
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert float(acceptance_probability(a, b)) == 0.0 and float((a - b).abs().sum()) == 2.0


def _verify_one_draft(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, g: torch.Generator):
    """N single-draft chains ``drafts`` (N,) drawn from ``q``, verified against ``p`` (draft slot and bonus)."""
    n, v = drafts.shape[0], p.shape[0]
    return verify_sampling(p.expand(n, 2, v), drafts[:, None], DraftTree.chain(1), q.expand(n, 1, v), g)


def test_item3_rejection_sampler_is_lossless():
    p, q = torch.tensor([0.7, 0.3]), torch.tensor([0.5, 0.5])
    g = torch.Generator().manual_seed(0)
    n = 100_000
    drafts = torch.multinomial(q, n, replacement=True, generator=g)
    # exact: A always accepted (p/q >= 1), B accepted w.p. 0.6, the residual normalise(max(p − q, 0)) = [1, 0]
    few = _verify_one_draft(p, q, drafts[:20_000], g)
    out = torch.where(few.num_accepted == 1, drafts[:20_000], few.next_token)  # the first committed token
    is_b = drafts[:20_000] == 1
    assert float(few.num_accepted[is_b].float().mean()) == pytest.approx(0.6, abs=0.02)
    assert bool((few.num_accepted[~is_b] == 1).all())
    assert bool((few.next_token[few.num_accepted == 0] == 0).all())  # every correction comes from [1, 0]
    assert float((out == 0).float().mean()) == pytest.approx(0.7, abs=0.012)
    # Monte-Carlo over 1e5 draws
    res = _verify_one_draft(p, q, drafts, g)
    out = torch.where(res.num_accepted == 1, drafts, res.next_token)
    freq = torch.bincount(out, minlength=2).float() / n
    assert freq[0].item() == pytest.approx(0.7, abs=0.006)  # P(A) = 0.5 + 0.5·0.4


def test_residual_falls_back_to_target_when_it_vanishes():
    """No residual mass (p ≤ q everywhere; here an unnormalised q = 2p that rejects half the drafts): the
    correction is drawn from p itself."""
    p = torch.tensor([0.2, 0.8])
    g = torch.Generator().manual_seed(1)
    drafts = torch.multinomial(p, 40_000, replacement=True, generator=g)
    res = _verify_one_draft(p, 2 * p, drafts, g)
    rejected = res.next_token[res.num_accepted == 0]
    assert float((res.num_accepted == 0).float().mean()) == pytest.approx(0.5, abs=0.02)
    freq = torch.bincount(rejected, minlength=2).float() / rejected.numel()
    assert torch.allclose(freq, p, atol=0.02)


def test_sample_token_greedy_and_tempered():
    logits = torch.tensor([[0.0, 2.0, 1.0]])
    greedy = SamplingConfig(temperature=0.0)
    assert pick_token(logits, greedy).tolist() == [1] and greedy.greedy  # greedy: no distribution is formed
    with pytest.raises(ValueError, match="temperature 0"):
        target_distribution(logits, greedy)
    q = target_distribution(logits, SamplingConfig(temperature=0.5))
    assert torch.allclose(q, torch.softmax(logits / 0.5, -1))
    g = torch.Generator().manual_seed(0)
    toks = [int(pick_token(logits, SamplingConfig(temperature=1.0), g)[0]) for _ in range(2000)]
    freq = torch.bincount(torch.tensor(toks), minlength=3).float() / 2000
    assert torch.allclose(freq, torch.softmax(logits, -1)[0], atol=0.04)
