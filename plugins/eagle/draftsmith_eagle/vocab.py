"""EAGLE-3 draft-vocabulary selection.

The draft's ``lm_head`` covers only the ``draft_vocab_size`` target tokens that matter most: the special tokens
(bos/eos/pad/unk — generation must be able to stop) first, then the most frequent *supervised* tokens of the
training data (descending count; equal counts keep ascending-id order, so the result is deterministic), then — when
fewer tokens were ever seen — the remaining ids in ascending order. The order is kept (not sorted): it is the draft
id order, and ``d2t`` offsets may be negative.
"""

from __future__ import annotations

from typing import Iterable

import torch

from draftsmith.errors import ConfigError


def select_draft_vocab(token_counts: torch.Tensor, draft_vocab_size: int,
                       special_token_ids: Iterable[int | None] = ()) -> torch.Tensor:
    """``(draft_vocab_size,)`` long target ids in draft-id order (see module docstring).

    ``token_counts``: ``(V,)`` supervised-token frequencies over the target vocab. Specials outside the vocab or
    ``None`` are ignored; duplicates count once. ``draft_vocab_size >= V`` returns the identity ``arange(V)``.
    """
    counts = torch.as_tensor(token_counts).flatten().cpu()
    if counts.dtype.is_floating_point or counts.dtype == torch.bool:
        counts = counts.to(torch.float64)
    else:
        counts = counts.to(torch.long)
    v = counts.numel()
    if v == 0:
        raise ConfigError("token_counts is empty: cannot select a draft vocabulary")
    if int(draft_vocab_size) < 1:
        raise ConfigError(f"draft_vocab_size must be >= 1, got {draft_vocab_size}")
    if bool((counts < 0).any()):
        raise ConfigError("token_counts must be non-negative")
    if draft_vocab_size >= v:
        return torch.arange(v)
    chosen: list[int] = []
    for tok in special_token_ids:
        if tok is not None and 0 <= int(tok) < v and int(tok) not in chosen:
            chosen.append(int(tok))
    chosen = chosen[:draft_vocab_size]
    taken = torch.zeros(v, dtype=torch.bool)
    taken[chosen] = True
    # descending count, ties by ascending id: a stable sort of the ids (already ascending) on -count
    order = torch.sort(-counts, stable=True).indices
    seen = order[(counts[order] > 0) & ~taken[order]]
    rest = torch.arange(v)[~taken & (counts == 0)]  # never-seen ids fill the remainder in id order
    picked = torch.cat([torch.tensor(chosen, dtype=torch.long), seen, rest])
    return picked[:draft_vocab_size]
