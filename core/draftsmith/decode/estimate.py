"""Offline acceptance estimators (methods.md §5): cheap τ figures for training-time evaluation.

* :func:`replay_greedy` / :func:`replay_tau` — **greedy trajectory replay**, exact at T = 0: anchors are
  visited as real decoding visits them (first anchor = first generated token; next anchor = a + τ), using an
  objective's per-anchor acceptance lengths (``Objective.acceptance_lengths(batch, features)``, see
  :mod:`draftsmith.method`). On sequences that are the target's own greedy output the recorded τ values equal
  those of real speculative decoding with the same number of drafts per round (fp ties aside).
* :func:`teacher_forced_tau` — estimator (a): ``1 + mean_a L_a`` over *all* anchors (biased vs replay).
* :func:`expected_tau`, :func:`expected_tau_iid` — ``E[τ] = 1 + Σ_k Π_{j≤k} α_j`` and its i.i.d. closed form.
* :func:`acceptance_probability` — ``α(p, q) = Σ_v min(p_v, q_v) = 1 − ½‖p − q‖₁``.
* :func:`analytic_tau` — estimator (c): α per teacher-forced slot from draft and target distributions.
* :func:`tau_from_hits` — the EAGLE-3 analogue ``1 + Σ_k hits_k / valid_k``.

Replay statistics are sums (:class:`ReplayStats`), so they accumulate over batches and all-reduce exactly
under data parallelism (:meth:`ReplayStats.all_reduce`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import torch

from ..errors import DraftsmithError


def acceptance_probability(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """α(p, q) = Σ_v min(p_v, q_v) over the last dim: the probability that rejection sampling accepts a draft
    drawn from ``q`` when the target samples from ``p``."""
    return torch.minimum(p.float(), q.float()).sum(dim=-1)


def expected_tau(alphas: Any) -> Any:
    """E[τ] = 1 + Σ_{k=1..γ} Π_{j≤k} α_j from conditional acceptances ``alphas`` (..., γ)."""
    a = torch.as_tensor(alphas, dtype=torch.float64)
    tau = 1.0 + a.cumprod(dim=-1).sum(dim=-1)
    return float(tau) if tau.dim() == 0 and not isinstance(alphas, torch.Tensor) else tau


def expected_tau_iid(alpha: float, num_draft_tokens: int) -> float:
    """E[τ] for i.i.d. acceptance α and γ drafts: (1 − α^{γ+1}) / (1 − α) (γ + 1 when α = 1)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if alpha == 1.0:
        return float(num_draft_tokens + 1)
    return (1.0 - alpha ** (num_draft_tokens + 1)) / (1.0 - alpha)


def analytic_tau(draft_probs: torch.Tensor, target_probs: torch.Tensor, valid: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """Estimator (c): mean over anchors of 1 + Σ_k Π_{j≤k} α_j with α_k = α(p_t,k, p_d,k).

    ``draft_probs``/``target_probs`` (A, γ, V) at teacher-forced slots; ``valid`` (A, γ) bool marks slots
    that exist (a slot past a missing one contributes nothing). Approximate: slot k is conditioned on data
    tokens, not on sampled drafts.
    """
    alpha = acceptance_probability(draft_probs, target_probs)  # (A, γ)
    if valid is not None:
        alpha = alpha * valid.to(alpha.dtype)
    return expected_tau(alpha).mean()


def teacher_forced_tau(acceptance_lengths: torch.Tensor) -> float:
    """Estimator (a): 1 + mean of the acceptance lengths over every usable anchor (entries >= 0)."""
    valid = acceptance_lengths >= 0
    if not valid.any():
        return float("nan")
    return 1.0 + float(acceptance_lengths[valid].float().mean())


def tau_from_hits(hits: Any, valid: Any) -> float:
    """EAGLE-3's simulated τ: 1 + Σ_k hits_k / valid_k (k = chain depth, hits = correct through depth k)."""
    hits, valid = torch.as_tensor(hits, dtype=torch.float64), torch.as_tensor(valid, dtype=torch.float64)
    return 1.0 + float((hits / valid.clamp_min(1)).sum())


@dataclasses.dataclass
class ReplayStats:
    """Sums over replayed rounds; ``tau`` and ``conditional_acceptance`` are ratios of sums."""

    sequences: int = 0  # generations replayed (contiguous supervised spans)
    rounds: int = 0
    committed: int = 0  # Σ τ
    truncated: int = 0  # replays that hit an anchor the objective marked unusable (-1) and stopped there
    taus: list[int] = dataclasses.field(default_factory=list)  # per round, in visiting order
    offered_at: list[int] = dataclasses.field(default_factory=list)
    accepted_at: list[int] = dataclasses.field(default_factory=list)

    @property
    def tau(self) -> float:
        return self.committed / self.rounds if self.rounds else float("nan")

    @property
    def conditional_acceptance(self) -> list[float]:
        return [a / o for a, o in zip(self.accepted_at, self.offered_at) if o > 0]

    def _record(self, tau: int, accepted: int, offered: int) -> None:
        self.rounds += 1
        self.committed += tau
        self.taus.append(tau)
        if offered > len(self.offered_at):
            grow = offered - len(self.offered_at)
            self.offered_at += [0] * grow
            self.accepted_at += [0] * grow
        for d in range(offered):
            self.offered_at[d] += 1
            self.accepted_at[d] += int(d < accepted)

    def merge(self, other: "ReplayStats") -> "ReplayStats":
        for name in ("sequences", "rounds", "committed", "truncated"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.taus += other.taus
        n = max(len(self.offered_at), len(other.offered_at))
        pad = (lambda xs: xs + [0] * (n - len(xs)))
        self.offered_at = [a + b for a, b in zip(pad(self.offered_at), pad(other.offered_at))]
        self.accepted_at = [a + b for a, b in zip(pad(self.accepted_at), pad(other.accepted_at))]
        return self

    def all_reduce(self, max_depth: int = 64) -> "ReplayStats":
        """Sum the counters over data-parallel ranks (no-op without an initialised process group).
        Per-round ``taus`` stay local."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        depth = max(max_depth, len(self.offered_at))
        pad = (lambda xs: xs + [0] * (depth - len(xs)))
        vec = torch.tensor([self.sequences, self.rounds, self.committed, self.truncated,
                            *pad(self.offered_at), *pad(self.accepted_at)], dtype=torch.float64)
        if dist.get_backend() == "nccl":
            vec = vec.cuda()
        dist.all_reduce(vec)
        vals = [int(round(v)) for v in vec.tolist()]
        self.sequences, self.rounds, self.committed, self.truncated = vals[:4]
        offered, accepted = vals[4:4 + depth], vals[4 + depth:]
        last = max((i + 1 for i, o in enumerate(offered) if o), default=0)
        self.offered_at, self.accepted_at = offered[:last], accepted[:last]
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"tau_replay": self.tau, "replay_rounds": self.rounds, "replay_sequences": self.sequences,
                "replay_truncated": self.truncated, "replay_conditional_acceptance": self.conditional_acceptance}


def _spans(mask_row: list[bool]) -> list[tuple[int, int]]:
    """[start, end) of every maximal run of True."""
    spans, start = [], None
    for i, m in enumerate(mask_row + [False]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            spans.append((start, i))
            start = None
    return spans


def replay_greedy(acceptance_lengths: torch.Tensor, loss_mask: torch.Tensor,
                  attention_mask: torch.Tensor | None = None, num_draft_tokens: int | None = None,
                  stats: ReplayStats | None = None) -> ReplayStats:
    """Greedy trajectory replay over every generation in a batch.

    A generation is a maximal run of supervised tokens (``loss_mask``) — one assistant turn — whose first token
    is the token plain decoding samples right after the prefill, so it is the first anchor. At anchor ``a``
    with ``R`` tokens left in the run, a round proposes ``k = min(γ, R)`` drafts, accepts
    ``L = min(acceptance_lengths[a], k)`` and commits ``τ = min(L + 1, R)``; the next anchor is ``a + τ``.
    ``num_draft_tokens`` (γ) defaults to the objective's own block (its acceptance lengths are already capped
    by it). An anchor marked -1 stops that generation's replay (counted in ``truncated``).
    """
    if acceptance_lengths.shape != loss_mask.shape:
        raise DraftsmithError(f"acceptance_lengths {tuple(acceptance_lengths.shape)} and loss_mask "
                              f"{tuple(loss_mask.shape)} must have the same (B, T) shape")
    stats = stats if stats is not None else ReplayStats()
    mask = loss_mask.bool()
    if attention_mask is not None:
        mask = mask & attention_mask.bool()
    lengths = acceptance_lengths.detach().long().cpu().tolist()
    for row, mrow in zip(lengths, mask.cpu().tolist()):
        for start, end in _spans(mrow):
            stats.sequences += 1
            a = start
            while a < end - 1:
                remaining = end - 1 - a
                if row[a] < 0:
                    stats.truncated += 1
                    break
                k = remaining if num_draft_tokens is None else min(num_draft_tokens, remaining)
                accepted = min(row[a], k)
                tau = min(accepted + 1, remaining)
                stats._record(tau, accepted, min(accepted + 1, k))
                a += tau
    return stats


def replay_tau(objective: Any, batch: Mapping[str, torch.Tensor], features: Any,
               num_draft_tokens: int | None = None, stats: ReplayStats | None = None) -> ReplayStats | None:
    """Trajectory replay with ``objective.acceptance_lengths(batch, features)``; None when the method's
    objective does not provide acceptance lengths."""
    from ..method import ReportsAcceptanceLengths

    if not isinstance(objective, ReportsAcceptanceLengths):
        return None
    with torch.no_grad():
        lengths = objective.acceptance_lengths(batch, features)
    return replay_greedy(lengths, batch["loss_mask"], batch.get("attention_mask"), num_draft_tokens, stats)
