"""DFlash training alignment: anchor candidates, block inputs, labels and acceptance counts (methods.md §2.3).

A block anchored at ``a`` holds ``[y[a], MASK × (B−1)]`` at positions ``pos(a) + k``; slot ``k >= 1``
predicts ``y[a + k]`` (slot 0 is the known anchor and is never supervised), so a full block has ``B − 1``
supervised slots.

The draw itself is core's (:func:`draftsmith.nn.anchors.sample_anchors`, from the objective's resumable
:class:`~draftsmith.nn.random_stream.RandomStream`); packed documents are :func:`draftsmith.nn.documents.document_ids`.
"""

from __future__ import annotations

import torch

from draftsmith.nn.anchors import sample_anchors  # noqa: F401  (the draw DFlash uses, re-exported)


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


def accept_lengths(correct: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per block, the number of leading correct slots: invalid slots neither break nor count. ``(B, N)``.

    ``correct``/``mask`` are ``(B, N, B)`` bool. ``accept_len`` = this + 1 (the target's bonus token)."""
    wrong = mask & ~correct
    alive = wrong.long().cumsum(dim=-1) == 0  # no valid miss so far (inclusive)
    return (alive & mask & correct).sum(dim=-1)



def slot_accuracy(correct: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Accuracy per drafted slot, ``(B - 1,)``: for slot ``k ≥ 1``, ``#(valid ∧ correct) / #valid`` over the blocks
    that supervise slot ``k`` (0 where none does). The per-position curve EAGLE's ``acc_k`` gives per TTT step;
    the conditional acceptance per position of real decoding is ``draftsmith eval``'s. ``correct``/``mask`` are
    ``(B, N, B)`` bool, slot 0 is the anchor."""
    valid = mask[..., 1:]
    hits = (valid & correct[..., 1:]).sum(dim=(0, 1)).float()
    return hits / valid.sum(dim=(0, 1)).clamp_min(1).float()
