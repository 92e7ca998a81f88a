"""methods.md §6 items 18–19: the Hardware-Aware Prefix Scheduler (Appendix A numbers, prefix order, batch
size) and Sequential Temperature Scaling (identity at T = 1, order preservation, calibration gain)."""

from __future__ import annotations

import pytest
import torch

from draftsmith_dspark.scheduling import (apply_sts, expected_calibration_error, fit_sts_temperatures,
                                          prefix_survival, schedule_prefix_lengths, static_threshold_length)

SPS = (1.0, 0.5, 0.45)  # steps/s at verify batch 1, 2, 3 (Appendix A)


def _residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The rejection sampler's correction distribution ``normalise(max(p − q, 0))`` in closed form (what
    ``draftsmith.decode.verify.verify_sampling`` samples from; this test needs the exact distribution)."""
    r = (p - q).clamp_min(0)
    return r / r.sum()


def test_item18_appendix_early_stop():
    s = schedule_prefix_lengths([[0.8, 0.72]], SPS)
    assert s.lengths == [0] and s.batch_tokens == 1 and s.throughput == pytest.approx(1.0)  # Θ0 = 1·SPS(1)
    assert len(s.trace) == 1 and s.trace[0][4] == pytest.approx(0.9)  # Θ1 = 1.8·0.5: no gain → stop


def test_item18_appendix_global_search_depends_on_the_sample():
    high = schedule_prefix_lengths([[0.8, 0.8 * 0.9]], SPS, early_stop=False)  # c_2 = 0.9 after x_1 = A
    assert high.lengths == [2] and high.throughput == pytest.approx(1.134)  # 2.52 · 0.45
    low = schedule_prefix_lengths([[0.8, 0.0]], SPS, early_stop=False)  # c_2 = 0 after x_1 = B
    assert low.lengths == [0] and low.trace[-1][4] == pytest.approx(0.81)  # 1.8 · 0.45


def _first_token_distribution(early_stop: bool) -> torch.Tensor:
    """Exact distribution of the first committed token when the verify length depends on x_1 through c_2."""
    p_t, p_d = torch.tensor([0.7, 0.3]), torch.tensor([0.5, 0.5])
    c2 = {0: 0.9, 1: 0.0}  # confidence of slot 2 after drafting x_1 = A (0) or B (1)
    out = torch.zeros(2)
    for x1 in (0, 1):
        s = schedule_prefix_lengths([[0.8, 0.8 * c2[x1]]], SPS, early_stop=early_stop)
        if s.lengths[0] == 0:  # nothing verified: the target samples its own token
            out += p_d[x1] * p_t
        else:  # x_1 verified by rejection sampling
            accept = min(1.0, float(p_t[x1] / p_d[x1]))
            out[x1] += p_d[x1] * accept
            out += p_d[x1] * (1 - accept) * _residual(p_t, p_d)
    return out


def test_item18_early_stop_is_lossless_and_global_search_is_biased():
    torch.testing.assert_close(_first_token_distribution(early_stop=True), torch.tensor([0.7, 0.3]))
    torch.testing.assert_close(_first_token_distribution(early_stop=False), torch.tensor([0.85, 0.15]))


def test_item18_survival_order_and_batch_size():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 6, generator=g) * 2 + 1
    a = prefix_survival(logits)
    assert (a[:, 1:] <= a[:, :-1]).all() and ((a >= 0) & (a <= 1)).all()
    sps = [1.0 / (1 + 0.02 * b) for b in range(1, 40)]  # a slowly saturating throughput curve
    s = schedule_prefix_lengths(a, sps)
    assert s.batch_tokens == sum(1 + l for l in s.lengths)
    admitted = {}
    for r, j, *_ in s.trace[: sum(s.lengths)]:
        assert j == admitted.get(r, 0) + 1  # a slot is admitted only after its whole prefix
        admitted[r] = j
    assert admitted == {r: l for r, l in enumerate(s.lengths) if l}
    values = [float(a[r, j - 1]) for r, j, *_ in s.trace]
    assert values == sorted(values, reverse=True)  # descending survival
    free = schedule_prefix_lengths(a, [1.0] * 40)  # flat SPS: every candidate helps
    assert free.lengths == [6] * 4 and free.batch_tokens == 28


def test_scheduler_input_validation():
    with pytest.raises(ValueError, match="non-increasing"):
        schedule_prefix_lengths([[0.5, 0.7]], SPS)
    with pytest.raises(ValueError, match="covers batch sizes"):
        schedule_prefix_lengths([[0.9, 0.9]], [1.0, 1.0])
    with pytest.raises(ValueError, match="requests, γ"):
        schedule_prefix_lengths([0.9, 0.8], SPS)


def test_static_threshold_length():
    logits = torch.logit(torch.tensor([0.9, 0.8, 0.4, 0.95]))
    assert static_threshold_length(logits, 0.5) == 2
    assert static_threshold_length(logits, 0.1) == 4
    assert static_threshold_length(logits, 0.95) == 0


def test_item19_sts_identity_and_order():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(50, 5, generator=g) * 3
    assert torch.equal(apply_sts(logits, [1.0] * 5), logits)
    assert torch.equal(prefix_survival(logits, [1.0] * 5), prefix_survival(logits))
    temps = torch.tensor([0.3, 0.7, 1.0, 2.0, 5.0])
    scaled = torch.sigmoid(apply_sts(logits, temps))
    for k in range(5):  # order within a position is preserved (non-strictly: σ saturates in fp32)
        by_logit = scaled[:, k][torch.argsort(logits[:, k])]
        assert (by_logit[1:] >= by_logit[:-1]).all()
        assert torch.equal(torch.argsort(apply_sts(logits, temps)[:, k]), torch.argsort(logits[:, k]))
    with pytest.raises(ValueError, match="positive temperature"):
        apply_sts(logits, [1.0, 1.0, 0.0, 1.0, 1.0])


def test_sts_fit_recovers_calibration():
    """Rounds whose true conditional acceptances are σ(z_k) are observed through an over-confident head
    (logits × 3); STS must find temperatures ≈ 3 and cut the ECE of the prefix survival."""
    g = torch.Generator().manual_seed(2)
    n, gamma = 4000, 4
    z = torch.randn(n, gamma, generator=g)
    survive = torch.rand(n, gamma, generator=g) < torch.sigmoid(z)
    accepted = torch.cumprod(survive.int(), dim=1).sum(1)  # drafts accepted per round
    raw = 3.0 * z
    temps = fit_sts_temperatures(raw, accepted)
    assert temps.shape == (gamma,) and ((temps > 2.0) & (temps < 4.5)).all()
    observed = (accepted[:, None] > torch.arange(gamma)).float()
    before = expected_calibration_error(prefix_survival(raw), observed)
    after = expected_calibration_error(prefix_survival(raw, temps), observed)
    assert after < 0.5 * before and after < 0.03
    ones = fit_sts_temperatures(z, accepted)  # already calibrated: T_1 ≈ 1 (deeper slots see few survivors)
    assert 0.7 < float(ones[0]) < 1.4


def test_ece_basics():
    assert expected_calibration_error(torch.tensor([0.2, 0.8]), torch.tensor([0.2, 0.8])) == pytest.approx(0.0)
    assert expected_calibration_error(torch.tensor([1.0, 1.0]), torch.tensor([0.0, 0.0])) == pytest.approx(1.0)
