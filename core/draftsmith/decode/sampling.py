"""The target's sampling distribution: temperature, top-k and top-p applied to logits.

Speculative decoding is lossless with respect to *this* distribution: plain target decoding and verification
both call :func:`target_distribution`, so "the target's output distribution" always means the same thing.
Temperature 0 means greedy (argmax); no probabilities are formed then.
"""

from __future__ import annotations

import dataclasses

import torch

from ..errors import ConfigError


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How the target picks tokens. ``temperature == 0`` is greedy; ``top_k == 0`` and ``top_p == 1`` disable
    the filters."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0

    def __post_init__(self) -> None:
        if not (self.temperature >= 0.0) or self.temperature != self.temperature:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if not (0.0 < self.top_p <= 1.0):
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if int(self.top_k) != self.top_k or self.top_k < 0:
            raise ConfigError(f"top_k must be a non-negative integer, got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def describe(self) -> str:
        if self.greedy:
            return "greedy"
        parts = [f"T = {self.temperature:g}"]
        if self.top_k:
            parts.append(f"top-k = {self.top_k}")
        if self.top_p < 1.0:
            parts.append(f"top-p = {self.top_p:g}")
        return ", ".join(parts)


def target_distribution(logits: torch.Tensor, sampling: SamplingConfig) -> torch.Tensor:
    """Probabilities (fp32, same shape as ``logits`` (..., V)) the target samples from at ``temperature > 0``."""
    if sampling.greedy:
        raise ValueError("target_distribution is undefined at temperature 0 (greedy decoding uses argmax)")
    logits = logits.float() / sampling.temperature
    vocab = logits.shape[-1]
    if 0 < sampling.top_k < vocab:
        kth = torch.topk(logits, sampling.top_k, dim=-1).values[..., -1:]  # (..., 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(dim=-1)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # (..., V)
        # keep the smallest prefix whose mass reaches top_p (the most likely token is always kept)
        drop_sorted = mass_before >= sampling.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.softmax(dim=-1)


def sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row of ``probs`` (..., V) → (...) long."""
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])


def pick_token(logits: torch.Tensor, sampling: SamplingConfig, generator: torch.Generator | None = None
               ) -> torch.Tensor:
    """The target's next token(s) from ``logits`` (..., V): argmax when greedy, else a sample."""
    if sampling.greedy:
        return logits.argmax(dim=-1)
    return sample(target_distribution(logits, sampling), generator)
