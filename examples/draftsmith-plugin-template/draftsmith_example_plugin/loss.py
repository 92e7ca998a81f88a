"""The ``medusa`` loss: mean over heads of the cross-entropy of head k against token t + 2 + k.

Head k at position t predicts token ``t + 2 + k``: its logits are shifted left by ``k + 2`` against the labels,
and only supervised real tokens count (``loss_mask ∧ attention_mask`` at the label position).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def medusa_loss(logits: torch.Tensor, input_ids: torch.Tensor, supervised: torch.Tensor
                ) -> tuple[torch.Tensor | None, int, int]:
    """``logits`` (B, T, K, V), ``input_ids`` / ``supervised`` (B, T) → (loss or None, correct, counted)."""
    losses, correct, count = [], 0, 0
    for k in range(logits.shape[2]):
        shift = k + 2
        if input_ids.shape[1] <= shift:
            break
        pred = logits[:, :-shift, k]  # (B, T − shift, V)
        labels, valid = input_ids[:, shift:], supervised[:, shift:]  # (B, T − shift)
        if valid.any():
            losses.append(F.cross_entropy(pred[valid], labels[valid]))
            correct += int((pred[valid].argmax(-1) == labels[valid]).sum())
            count += int(valid.sum())
    return (torch.stack(losses).mean() if losses else None), correct, count
