"""Per-round records of speculative decoding and their aggregation into acceptance metrics.

Definitions (methods.md §1, §5):

* **τ** (acceptance length) of a round = tokens it commits = accepted drafts + the target's bonus/correction
  token, so ``1 <= τ <= γ + 1``; a round cut short by EOS or the length limit commits fewer. The first generated
  token comes from the prefill forward, not from a round, hence ``1 + Σ τ = generated tokens``.
* **conditional acceptance at position k** = P(draft at depth k accepted | drafts at depths < k accepted and a
  draft at depth k was proposed) — the α_k of ``E[τ] = 1 + Σ_k Π_{j≤k} α_j``.
* drafted tokens count every proposed node (tree nodes included); accepted tokens count accepted drafts.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable


@dataclasses.dataclass
class RoundRecord:
    drafted: int  # nodes proposed this round
    accepted: int  # drafts accepted by verification (before EOS / length truncation)
    committed: int  # tokens committed this round (τ of the round)
    offered_depths: int  # depths at which a draft was on offer along the accepted path (accepted or +1)
    draft_time: float  # seconds in propose + commit of the drafter
    verify_time: float  # seconds in the target forward, verification and cache update


@dataclasses.dataclass
class GenerationResult:
    """One speculative (or plain) generation for one prompt."""

    tokens: list[int]  # generated ids (the prompt excluded)
    stop_reason: str  # "eos" or "length"
    total_time: float  # seconds, prefill included
    prefill_time: float = 0.0
    rounds: list[RoundRecord] = dataclasses.field(default_factory=list)

    @property
    def taus(self) -> list[int]:
        return [r.committed for r in self.rounds]


@dataclasses.dataclass
class DecodeStats:
    """Aggregates :class:`GenerationResult` s; every metric is a ratio of sums, so merging is exact."""

    generations: int = 0
    generated_tokens: int = 0
    rounds: int = 0
    committed_tokens: int = 0  # Σ τ over rounds
    drafted_tokens: int = 0
    accepted_tokens: int = 0
    total_time: float = 0.0
    prefill_time: float = 0.0
    draft_time: float = 0.0
    verify_time: float = 0.0
    offered_at: list[int] = dataclasses.field(default_factory=list)  # per depth k (index k - 1)
    accepted_at: list[int] = dataclasses.field(default_factory=list)

    def add(self, result: GenerationResult) -> None:
        self.generations += 1
        self.generated_tokens += len(result.tokens)
        self.total_time += result.total_time
        self.prefill_time += result.prefill_time
        for r in result.rounds:
            self.rounds += 1
            self.committed_tokens += r.committed
            self.drafted_tokens += r.drafted
            self.accepted_tokens += r.accepted
            self.draft_time += r.draft_time
            self.verify_time += r.verify_time
            grow = r.offered_depths - len(self.offered_at)
            if grow > 0:
                self.offered_at.extend([0] * grow)
                self.accepted_at.extend([0] * grow)
            for d in range(r.offered_depths):
                self.offered_at[d] += 1
                self.accepted_at[d] += int(d < r.accepted)

    @classmethod
    def of(cls, results: Iterable[GenerationResult]) -> "DecodeStats":
        stats = cls()
        for r in results:
            stats.add(r)
        return stats

    @property
    def tau(self) -> float:
        return self.committed_tokens / self.rounds if self.rounds else float("nan")

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_tokens / self.drafted_tokens if self.drafted_tokens else float("nan")

    @property
    def conditional_acceptance(self) -> list[float]:
        return [a / o for a, o in zip(self.accepted_at, self.offered_at) if o > 0]

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.total_time if self.total_time > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        per_round = (lambda t: t / self.rounds if self.rounds else float("nan"))
        return {
            "generations": self.generations,
            "generated_tokens": self.generated_tokens,
            "rounds": self.rounds,
            "tau": self.tau,
            "conditional_acceptance": self.conditional_acceptance,
            "acceptance_offered": list(self.offered_at),
            "drafted_tokens": self.drafted_tokens,
            "accepted_tokens": self.accepted_tokens,
            "acceptance_rate": self.acceptance_rate,
            "tokens_per_second": self.tokens_per_second,
            "total_time_s": self.total_time,
            "prefill_time_s": self.prefill_time,
            "draft_time_per_round_s": per_round(self.draft_time),
            "verify_time_per_round_s": per_round(self.verify_time),
        }
