"""The evaluation loop behind ``draftsmith eval`` and ``benchmarks/spec_decode.py``.

For every prompt: speculative decoding with the method's drafter, then plain target decoding of the same prompt
with the same sampling settings (interleaved, so both see the same machine state) — τ, conditional acceptance
and both throughputs come from one run. With ``check_lossless`` the greedy outputs are compared token for token
(at temperature > 0 an extra greedy pair is decoded for the check).

Physical bound reported next to the measured speedup (issue 7):
``speedup <= τ · t_target / (t_verify + t_draft)``, with ``t_target`` the plain decoding time per token and
``t_verify``, ``t_draft`` the mean time per speculative round.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Sequence

import torch

from .engine import SpeculativeDecoder
from .plain import generate_plain, model_device
from .sampling import SamplingConfig
from .stats import DecodeStats


@dataclasses.dataclass
class Mismatch:
    prompt_index: int  # 0-based among the evaluated prompts
    position: int  # 0-based index among generated tokens
    speculative: list[int]  # the speculative tokens from `position` (a few)
    target: list[int]  # plain decoding's tokens from `position`


@dataclasses.dataclass
class EvalReport:
    spec: DecodeStats
    plain: DecodeStats | None
    num_draft_tokens: int
    sampling: SamplingConfig
    lossless_checked: bool = False
    compared_tokens: int = 0
    mismatch: Mismatch | None = None

    @property
    def speedup(self) -> float:
        if self.plain is None or not self.plain.tokens_per_second > 0:
            return float("nan")
        return self.spec.tokens_per_second / self.plain.tokens_per_second

    @property
    def speedup_bound(self) -> float:
        """τ · t_target / (t_verify + t_draft)."""
        if self.plain is None or not self.spec.rounds or not self.plain.generated_tokens:
            return float("nan")
        t_target = self.plain.total_time / self.plain.generated_tokens
        t_round = (self.spec.verify_time + self.spec.draft_time) / self.spec.rounds
        return self.spec.tau * t_target / t_round if t_round > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        out = {"num_draft_tokens": self.num_draft_tokens, "sampling": dataclasses.asdict(self.sampling),
               **self.spec.to_dict()}
        out["target_tokens_per_second"] = self.plain.tokens_per_second if self.plain else None
        out["target_generated_tokens"] = self.plain.generated_tokens if self.plain else None
        out["speedup"] = self.speedup
        out["speedup_bound"] = self.speedup_bound
        out["lossless"] = {"checked": self.lossless_checked, "ok": self.mismatch is None if
                           self.lossless_checked else None, "compared_tokens": self.compared_tokens,
                           "first_mismatch": dataclasses.asdict(self.mismatch) if self.mismatch else None}
        return out


def first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def run_eval(target: torch.nn.Module, drafter: Any, prompts: Sequence[Sequence[int]], *, max_new_tokens: int = 128,
             sampling: SamplingConfig | None = None, num_draft_tokens: int | None = None,
             eos_token_ids: Iterable[int] | None = None, check_lossless: bool = False, baseline: bool = True,
             seed: int = 0, warmup: bool = True,
             progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None) -> EvalReport:
    """Evaluate a drafter on tokenised prompts; stops at the first lossless-check difference."""
    sampling = sampling or SamplingConfig()
    decoder = SpeculativeDecoder(target, drafter, sampling=sampling, num_draft_tokens=num_draft_tokens,
                                 eos_token_ids=eos_token_ids, seed=seed)
    eos = decoder.eos
    greedy = sampling if sampling.greedy else SamplingConfig()
    checker = None
    if check_lossless and not sampling.greedy:
        checker = SpeculativeDecoder(target, drafter, sampling=greedy, num_draft_tokens=decoder.num_draft_tokens,
                                     eos_token_ids=eos, seed=seed)
    generator = torch.Generator(device=model_device(target))
    generator.manual_seed(seed + 1)
    if warmup and prompts:  # first calls pay one-off costs (allocator, kernels, lazy imports): not timed
        decoder.generate(prompts[0], min(8, max_new_tokens))
        generate_plain(target, prompts[0], min(8, max_new_tokens), sampling, eos, generator)
    report = EvalReport(spec=DecodeStats(), plain=DecodeStats() if baseline else None,
                        num_draft_tokens=decoder.num_draft_tokens, sampling=sampling,
                        lossless_checked=check_lossless)
    items = list(enumerate(prompts))
    for i, ids in (progress(items) if progress else items):
        spec = decoder.generate(ids, max_new_tokens)
        report.spec.add(spec)
        plain = None
        if baseline or (check_lossless and sampling.greedy):
            plain = generate_plain(target, ids, max_new_tokens, sampling, eos, generator)
            if baseline:
                report.plain.add(plain)
        if not check_lossless:
            continue
        if sampling.greedy:
            got, want = spec.tokens, plain.tokens
        else:
            got = checker.generate(ids, max_new_tokens).tokens
            want = generate_plain(target, ids, max_new_tokens, greedy, eos).tokens
        pos = first_difference(got, want)
        report.compared_tokens += len(want)
        if pos is not None:
            report.mismatch = Mismatch(i, pos, got[pos:pos + 5], want[pos:pos + 5])
            break
    return report
