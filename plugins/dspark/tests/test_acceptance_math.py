"""methods.md §6 items 1–3: expected acceptance length, α(p, q), and the rejection sampler."""

from __future__ import annotations

import pytest
import torch

from draftsmith_dspark.sampling import (acceptance_probability, draft_distribution, expected_acceptance_length,
                                        rejection_sample_chain, residual_distribution, sample_token)


def test_item1_expected_tau():
    alpha = torch.tensor([0.9, 0.8, 0.7], dtype=torch.float64)
    assert float(expected_acceptance_length(alpha)) == pytest.approx(1 + 0.9 + 0.72 + 0.504)  # 3.124
    for a, gamma, tau in [(0.8, 7, 4.1611392), (0.8, 15, 4.8592625), (0.5, 7, 1.9921875)]:
        got = float(expected_acceptance_length(torch.full((gamma,), a, dtype=torch.float64)))
        assert got == pytest.approx(tau, abs=1e-7)
        assert got == pytest.approx((1 - a ** (gamma + 1)) / (1 - a))


def test_item2_alpha_equals_one_minus_half_l1():
    p, q = torch.tensor([0.7, 0.3]), torch.tensor([0.5, 0.5])
    assert float(acceptance_probability(p, q)) == pytest.approx(0.8)
    assert float(1 - 0.5 * (p - q).abs().sum()) == pytest.approx(0.8)
    assert float(acceptance_probability(p, p)) == pytest.approx(1.0)
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert float(acceptance_probability(a, b)) == 0.0 and float((a - b).abs().sum()) == 2.0


def test_item3_rejection_sampler_is_lossless():
    p, q = torch.tensor([0.7, 0.3]), torch.tensor([0.5, 0.5])
    assert torch.equal(residual_distribution(p, q), torch.tensor([1.0, 0.0]))
    # exact: A always accepted (p/q >= 1), B accepted w.p. 0.6, residual all on A
    g = torch.Generator().manual_seed(0)
    n = 100_000
    drafts = torch.multinomial(q, n, replacement=True, generator=g)
    first, accepted_b, drafted_b = torch.zeros(2), 0, 0
    for x in drafts[:20_000].tolist():  # per-draw verification (the real code path)
        acc, nxt = rejection_sample_chain(torch.tensor([x]), q[None], torch.stack([p, p]), g)
        out = x if acc == 1 else nxt
        first[out] += 1
        if x == 1:
            drafted_b += 1
            accepted_b += acc
    assert accepted_b / drafted_b == pytest.approx(0.6, abs=0.02)
    # vectorised Monte-Carlo of the same rule over 1e5 draws
    u = torch.rand(n, generator=g)
    accept = u < (p[drafts] / q[drafts]).clamp(max=1)
    out = torch.where(accept, drafts, torch.multinomial(residual_distribution(p, q), n, replacement=True,
                                                        generator=g))
    freq = torch.bincount(out, minlength=2).float() / n
    assert freq[0].item() == pytest.approx(0.7, abs=0.006)  # P(A) = 0.5 + 0.5·0.4
    assert (first / first.sum())[0].item() == pytest.approx(0.7, abs=0.012)


def test_residual_falls_back_to_target_when_identical():
    p = torch.tensor([0.2, 0.8])
    assert torch.equal(residual_distribution(p, p), p)


def test_sample_token_greedy_and_tempered():
    logits = torch.tensor([[0.0, 2.0, 1.0]])
    tok, probs = sample_token(logits, 0.0)
    assert tok.tolist() == [1] and probs is None
    q = draft_distribution(logits, 0.5)
    assert torch.allclose(q, torch.softmax(logits / 0.5, -1))
    g = torch.Generator().manual_seed(0)
    toks = [int(sample_token(logits, 1.0, g)[0]) for _ in range(2000)]
    freq = torch.bincount(torch.tensor(toks), minlength=3).float() / 2000
    assert torch.allclose(freq, torch.softmax(logits, -1)[0], atol=0.04)
