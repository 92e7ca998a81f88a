"""Rows of samples: one sample per row, or several packed into ``seq_len`` with per-document positions.

A row is a list of sample indices. Packing is greedy next-fit over a seeded shuffle of the samples (so each
row mixes unrelated documents); the collate gives every document its own ``position_ids`` starting at 0,
which both the target (transformers builds a block-causal mask from position resets) and the method's
objective use to keep documents apart. Torch-free.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def single_rows(indices: Sequence[int]) -> list[list[int]]:
    return [[int(i)] for i in indices]


def pack_rows(indices: Sequence[int], lengths: Sequence[int], seq_len: int, seed: int) -> list[list[int]]:
    """Greedy next-fit packing of the samples ``indices`` (lengths ≤ seq_len) into rows of ≤ ``seq_len`` tokens."""
    order = [int(indices[j]) for j in np.random.default_rng(seed).permutation(len(indices))]
    rows: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i in order:
        n = int(lengths[i])
        if n > seq_len:
            raise ValueError(f"sample {i} has {n} tokens, more than seq_len={seq_len}; truncate first")
        if current and used + n > seq_len:
            rows.append(current)
            current, used = [], 0
        current.append(i)
        used += n
    if current:
        rows.append(current)
    return rows
