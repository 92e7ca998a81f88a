"""DFlash training alignment: anchor sampling, block inputs, labels and decay weights (methods.md §2.3).

A block anchored at ``a`` holds ``[y[a], MASK × (B−1)]`` at positions ``pos(a) + k``; slot ``k >= 1``
predicts ``y[a + k]`` (slot 0 is the known anchor and is never supervised), so a full block has ``B − 1``
supervised slots.
"""

from __future__ import annotations

import torch


def document_ids_from_positions(position_ids: torch.Tensor) -> torch.Tensor:
    """Packing: a new document starts wherever the position restarts at 0 → ``(B, T)`` document index."""
    return (position_ids == 0).long().cumsum(dim=1)


def anchor_candidates(loss_mask: torch.Tensor, block_size: int,
                      document_ids: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, T)`` bool: ``a`` may anchor a block iff ``loss_mask[a]`` and the whole block fits in the sequence
    (``a <= T − B``) — and, when packed, in the anchor's document (``a + B − 1`` in the same document)."""
    b, t = loss_mask.shape
    idx = torch.arange(t, device=loss_mask.device)
    valid = loss_mask.bool() & (idx <= t - block_size).unsqueeze(0)
    if document_ids is not None and t >= block_size:
        end_doc = torch.full_like(document_ids, -1)
        end_doc[:, : t - block_size + 1] = document_ids[:, block_size - 1:]
        valid = valid & (end_doc == document_ids)
    return valid


def sample_anchors(valid: torch.Tensor, num_anchors: int,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``num_anchors`` anchors per row, drawn uniformly without replacement among ``valid`` positions.

    Random keys (from ``generator``, on the CPU so results do not depend on the device) are sorted per row; the
    chosen positions are then sorted ascending. Width ``N = min(num_anchors, max valid count in the batch)``;
    ``keep[b, i] = i < min(count_b, N)``; unkept anchors are 0. Returns ``(anchors (B, N) long, keep (B, N)
    bool)``; ``N`` is 0 when no row has a valid anchor.
    """
    if num_anchors < 1:
        raise ValueError(f"num_anchors must be >= 1, got {num_anchors}")
    b, t = valid.shape
    counts = valid.sum(dim=1)  # (B,)
    n = min(num_anchors, int(counts.max())) if b and t else 0
    device = valid.device
    if n == 0:
        empty = torch.zeros(b, 0, dtype=torch.long, device=device)
        return empty, empty.bool()
    keys = torch.rand(b, t, generator=generator).to(device)
    keys = keys.masked_fill(~valid, 2.0)  # invalid positions sort last
    chosen = keys.argsort(dim=1)[:, :n]  # (B, N) random valid positions first
    keep = torch.arange(n, device=device).unsqueeze(0) < counts.clamp(max=n).unsqueeze(1)  # (B, N)
    anchors = chosen.masked_fill(~keep, t).sort(dim=1).values  # kept ascending, then sentinels
    return anchors.masked_fill(~keep, 0), keep


def block_input_ids(input_ids: torch.Tensor, anchors: torch.Tensor, keep: torch.Tensor, block_size: int,
                    mask_token_id: int) -> torch.Tensor:
    """``(B, N·B)`` block tokens: ``[y[a], MASK × (B−1)]`` per kept block, all MASK for padding blocks."""
    b, n = anchors.shape
    ids = torch.full((b, n, block_size), mask_token_id, dtype=input_ids.dtype, device=input_ids.device)
    first = input_ids.gather(1, anchors)  # (B, N)
    ids[:, :, 0] = torch.where(keep, first, torch.full_like(first, mask_token_id))
    return ids.reshape(b, n * block_size)


def block_labels(input_ids: torch.Tensor, loss_mask: torch.Tensor, anchors: torch.Tensor, keep: torch.Tensor,
                 block_size: int, document_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels ``y[a + k]`` and the supervised-slot mask, both ``(B, N, B)``.

    mask = keep ∧ k ≥ 1 ∧ (a + k < T) ∧ loss_mask[a + k] (∧ same document when packed) — per slot, not a
    prefix mask.
    """
    b, n = anchors.shape
    t = input_ids.shape[1]
    k = torch.arange(block_size, device=anchors.device)
    idx = anchors[:, :, None] + k  # (B, N, B)
    in_range = idx < t
    flat = idx.clamp(max=t - 1).reshape(b, -1)
    labels = input_ids.gather(1, flat).reshape(b, n, block_size)
    supervised = loss_mask.bool().gather(1, flat).reshape(b, n, block_size)
    mask = keep[:, :, None] & (k >= 1) & in_range & supervised
    if document_ids is not None:
        same_doc = document_ids.gather(1, flat).reshape(b, n, block_size) == document_ids.gather(1, anchors)[:, :, None]
        mask = mask & same_doc
    return labels, mask


def decay_weights(block_size: int, gamma: float | None, device: torch.device | None = None) -> torch.Tensor:
    """``(B,)`` slot weights: 0 for slot 0, ``exp(−(k−1)/γ)`` for ``k = 1..B−1`` (uniform 1 when γ is None)."""
    if gamma is not None and not gamma > 0:
        raise ValueError(f"loss_decay_gamma must be > 0 (or None for uniform weights), got {gamma}")
    k = torch.arange(block_size, dtype=torch.float64, device=device)
    w = torch.ones_like(k) if gamma is None else torch.exp(-(k - 1) / gamma)
    w[0] = 0.0
    return w.to(torch.float32)


def accept_lengths(correct: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per block, the number of leading correct slots: invalid slots neither break nor count. ``(B, N)``.

    ``correct``/``mask`` are ``(B, N, B)`` bool. ``accept_len`` = this + 1 (the target's bonus token)."""
    wrong = mask & ~correct
    alive = wrong.long().cumsum(dim=-1) == 0  # no valid miss so far (inclusive)
    return (alive & mask & correct).sum(dim=-1)

