"""A resumable stream of random generators: one home for every stateful random draw of a training objective.

Draw ``i`` of data-parallel rank ``r`` uses a fresh ``torch.Generator`` seeded with
``(seed·0x9E3779B97F4A7C15 + r·0xBF58476D1CE4E5B9 + i) mod 2^63``, so the draws are a pure function of
``(seed, rank, i)``: reproducible, different on every rank, independent of the global RNG (which data loading,
evaluation or a library may consume), and resumable from the single integer ``i`` (``state_dict``). Generators
are CPU generators (the same draws on every device) except for :meth:`RandomStream.uniform_like`, which draws on
the tensor's device.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

_SEED_MIX, _RANK_MIX = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9


def _rank() -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class RandomStream:
    """``next_generator()`` → the generator of the next draw; ``state_dict()`` / ``load_state_dict()`` resume.

    ``rank`` defaults to the data-parallel rank at each draw (0 without ``torch.distributed``).
    """

    def __init__(self, seed: int = 0, rank: int | None = None) -> None:
        self.seed, self.rank, self.calls = int(seed), rank, 0

    def next_generator(self, device: torch.device | str = "cpu") -> torch.Generator:
        """The generator of the next draw (a CPU generator unless ``device`` names another)."""
        rank = _rank() if self.rank is None else int(self.rank)
        mixed = (self.seed * _SEED_MIX + rank * _RANK_MIX + self.calls) % (2 ** 63)
        self.calls += 1
        return torch.Generator(device=device).manual_seed(mixed)

    def uniform_like(self, x: torch.Tensor, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
        """``U(low, high)`` noise shaped like ``x`` (dtype and device of ``x``) from the next draw, drawn on ``x``'s
        device (activation-sized noise is never made on the CPU and copied; a CUDA draw differs from a CPU one,
        but is as reproducible and as resumable)."""
        u = torch.rand(x.shape, generator=self.next_generator(x.device), dtype=torch.float32, device=x.device)
        return (u * (high - low) + low).to(dtype=x.dtype)

    def state_dict(self) -> dict[str, int]:
        return {"calls": self.calls}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.calls = int(state["calls"])
