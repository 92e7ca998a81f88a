"""Serving-side helpers around the confidence head (methods.md §3.3, §3.7): prefix survival, the
Hardware-Aware Prefix Scheduler (DSpark Algorithm 1) and Sequential Temperature Scaling (STS).

Pure functions over small tensors/lists: they decide how many drafts of each request a batched verifier
should check, and calibrate the confidence logits that drive that decision.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import torch

from draftsmith.errors import ConfigError, DataError


def prefix_survival(confidence_logits: torch.Tensor, temperatures: torch.Tensor | Sequence[float] | None = None
                    ) -> torch.Tensor:
    """``a_k = Π_{i≤k} σ(c_i / T_i)``: (..., γ) logits -> (..., γ) survival, non-increasing along k."""
    logits = apply_sts(confidence_logits, temperatures) if temperatures is not None else confidence_logits
    return torch.cumprod(torch.sigmoid(logits.double()), dim=-1).to(confidence_logits.dtype)


@dataclasses.dataclass
class Schedule:
    lengths: list[int]  # ℓ_r: drafts of request r to verify
    batch_tokens: int  # B = Σ_r (1 + ℓ_r)
    throughput: float  # Θ = τ*·SPS(B) of the chosen schedule
    trace: list[tuple[int, int, int, float, float]]  # visited (r, j, B, τ*, Θ), in visiting order


def _sps_lookup(sps: Callable[[int], float] | Sequence[float]) -> Callable[[int], float]:
    if callable(sps):
        return sps
    table = list(sps)

    def lookup(batch: int) -> float:  # table[i] = SPS(i + 1)
        if not 1 <= batch <= len(table):
            raise DataError(f"the SPS profile covers batch sizes 1..{len(table)}, the schedule needs {batch}")
        return float(table[batch - 1])

    return lookup


def schedule_prefix_lengths(survival: torch.Tensor | Sequence[Sequence[float]],
                            sps: Callable[[int], float] | Sequence[float], *, early_stop: bool = True) -> Schedule:
    """DSpark Algorithm 1: verification lengths for R requests maximising ``Θ = τ*·SPS(B)``.

    ``survival[r][j-1] = a_{r,j}`` (calibrated, non-increasing in j). Starting from ``ℓ = 0``, ``B = R``,
    ``τ* = R``, candidates are admitted in descending ``a_{r,j}`` (ties: shorter prefix first, so prefixes are
    always respected) while each admission raises ``Θ``. ``early_stop=True`` stops at the first candidate that
    does not — required for losslessness, because ``a_{r,j+1}`` depends on the sampled ``x_{r,j}``; with
    ``early_stop=False`` the search runs through every candidate and keeps the best prefix of the order (the
    global search shown biased in the paper's Appendix A; provided for that comparison only).
    """
    a = torch.as_tensor(survival, dtype=torch.float64)
    if a.dim() != 2:
        raise DataError(f"survival must be (requests, γ), got shape {tuple(a.shape)}")
    if bool((a[:, 1:] > a[:, :-1] + 1e-12).any()) or bool(((a < 0) | (a > 1)).any()):
        raise DataError("survival a_{r,j} must lie in [0, 1] and be non-increasing in j (cumulative products)")
    lookup = _sps_lookup(sps)
    requests = a.shape[0]
    order = sorted(((float(a[r, j]), j, r) for r in range(requests) for j in range(a.shape[1])),
                   key=lambda t: (-t[0], t[1], t[2]))
    batch, tau = requests, float(requests)
    best_theta, best_idx = tau * lookup(batch), -1
    trace = []
    for idx, (value, j, r) in enumerate(order):
        batch += 1
        tau += value
        theta = tau * lookup(batch)
        trace.append((r, j + 1, batch, tau, theta))
        if theta > best_theta:
            best_theta, best_idx = theta, idx
        elif early_stop:
            break
    lengths = [0] * requests
    for _value, j, r in order[:best_idx + 1]:
        lengths[r] = max(lengths[r], j + 1)
    return Schedule(lengths=lengths, batch_tokens=requests + sum(lengths), throughput=best_theta, trace=trace)


def static_threshold_length(confidence_logits: torch.Tensor, threshold: float) -> int:
    """Static scheduling: the index of the first slot with ``σ(c_k) < threshold`` (all γ if none)."""
    below = (torch.sigmoid(confidence_logits.float()) < threshold).nonzero()
    return int(below[0, 0]) if below.numel() else int(confidence_logits.shape[0])


def apply_sts(confidence_logits: torch.Tensor, temperatures: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """Per-position temperature scaling ``c_k / T_k`` of (..., γ) logits (T_k > 0, order-preserving)."""
    t = torch.as_tensor(temperatures, dtype=confidence_logits.dtype, device=confidence_logits.device)
    if t.shape != confidence_logits.shape[-1:] or bool((t <= 0).any()):
        raise ConfigError(f"need one positive temperature per block slot ({confidence_logits.shape[-1]}), got {t}")
    return confidence_logits / t


def expected_calibration_error(predicted: torch.Tensor, observed: torch.Tensor, n_bins: int = 15) -> float:
    """ECE with ``n_bins`` equal-width bins: ``Σ_b (n_b/N)·|mean(predicted) − mean(observed)|``."""
    p, o = predicted.double().flatten(), observed.double().flatten()
    if p.numel() == 0:
        return 0.0
    bins = (p * n_bins).long().clamp(0, n_bins - 1)
    gap = (torch.zeros(n_bins, dtype=torch.float64).index_add_(0, bins, p)
           - torch.zeros(n_bins, dtype=torch.float64).index_add_(0, bins, o)).abs()
    return float(gap.sum() / p.numel())  # Σ_b |Σp − Σo| / N = Σ_b (n_b/N)·|p̄_b − ō_b|


DEFAULT_STS_GRID = tuple(float(x) for x in torch.logspace(-1.0, 1.0, 81, base=4.0).tolist())  # 0.25 .. 4, incl. 1


def fit_sts_temperatures(confidence_logits: torch.Tensor, accepted: torch.Tensor, *, proposed: torch.Tensor | None = None,
                         grid: Sequence[float] = DEFAULT_STS_GRID, n_bins: int = 15) -> torch.Tensor:
    """Sequential Temperature Scaling on held-out rounds.

    confidence_logits (N, γ); accepted (N,) drafts accepted per round (the bonus excluded), so prefix k
    survived iff ``accepted ≥ k``; proposed (N,) drafts verified per round (default γ: slot k is scored only
    where it was verified). For k = 1..γ in order, pick the ``T_k`` from ``grid`` minimising the ECE of
    ``a_k = a_{k−1}·σ(c_k/T_k)`` against observed survival, earlier temperatures fixed. Returns (γ,) temps.
    """
    n, gamma = confidence_logits.shape
    proposed = torch.full((n,), gamma) if proposed is None else proposed
    temps = torch.ones(gamma, dtype=torch.float64)
    prev = torch.ones(n, dtype=torch.float64)
    logits = confidence_logits.double()
    for k in range(gamma):
        rows = proposed > k
        survived = (accepted > k).double()
        best = min(grid, key=lambda t: (expected_calibration_error((prev * torch.sigmoid(logits[:, k] / t))[rows],
                                                                   survived[rows], n_bins), abs(t - 1.0)))
        temps[k] = best
        prev = prev * torch.sigmoid(logits[:, k] / best)
    return temps.to(confidence_logits.dtype)
