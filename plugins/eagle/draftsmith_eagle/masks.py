"""Attention visibility for the EAGLE drafts: causal + key padding + packed documents.

A *visibility* mask is boolean ``(B, 1, Tq, Tk)`` with True = "may attend" (SDPA's boolean convention). ``None``
means plain causal attention, which is the fast path (SDPA ``is_causal``). It is exact for right-padded rows of one
document each: a real query at ``t`` only sees keys ``<= t``, which are real. Pad queries then see pad keys; their
outputs are finite and never supervised, and no real query ever reads them.

Packed rows are recognised from ``position_ids``: a new document starts wherever the position does not increase,
and keys of another document are hidden (document ids: :mod:`draftsmith.nn.documents`). Every row keeps its own diagonal visible so no row is fully masked (a fully
masked row makes SDPA return NaN).
"""

from __future__ import annotations

import torch

from draftsmith.nn.documents import document_ids, is_single_document


def is_right_padded(attention_mask: torch.Tensor | None) -> bool:
    """True when every row is a run of real tokens followed by padding (no hole, no left pad)."""
    if attention_mask is None:
        return True
    m = attention_mask.bool()
    return not bool((m[:, 1:] & ~m[:, :-1]).any())


def causal_visibility(attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None = None,
                      seq_len: int | None = None, *, allow_none: bool = True) -> torch.Tensor | None:
    """Boolean ``(B, 1, T, T)`` visibility (causal ∧ key not padding ∧ same document), or ``None`` when plain
    causal attention is exact for every real query (see module docstring) and ``allow_none``."""
    if allow_none and is_right_padded(attention_mask) and is_single_document(position_ids):
        return None
    ref = attention_mask if attention_mask is not None else position_ids
    batch, t = (ref.shape if ref is not None else (1, seq_len))
    device = ref.device if ref is not None else None
    idx = torch.arange(t, device=device)
    vis = (idx[None, :] <= idx[:, None])[None, None].expand(batch, 1, t, t)  # (B, 1, T, T) causal
    if attention_mask is not None:
        vis = vis & attention_mask.bool()[:, None, None, :]
    if position_ids is not None:
        doc = document_ids(position_ids)
        vis = vis & (doc[:, None, :, None] == doc[:, None, None, :])
    return vis | torch.eye(t, dtype=torch.bool, device=device)  # never a fully masked row


def _build_causal_mask(attention_mask: torch.Tensor, dtype: torch.dtype,
                       position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Additive ``(B, 1, T, T)`` mask (0 = attend, ``finfo(dtype).min`` = masked): causal + padding (+ packed
    documents when ``position_ids`` restart). The form eager attention and HF layers take."""
    vis = causal_visibility(attention_mask, position_ids, allow_none=False)
    zero = torch.zeros((), dtype=dtype, device=vis.device)
    return torch.where(vis, zero, torch.finfo(dtype).min)


def lower_right_causal(q_len: int, k_len: int, device=None) -> torch.Tensor:
    """``(Tq, Tk)`` causal visibility for ``Tq`` new queries appended after ``Tk - Tq`` cached keys."""
    q_pos = torch.arange(k_len - q_len, k_len, device=device)
    return torch.arange(k_len, device=device)[None, :] <= q_pos[:, None]
