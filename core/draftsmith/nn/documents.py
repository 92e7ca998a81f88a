"""Packed rows: which document each position belongs to, read off ``position_ids``.

Packing (:mod:`draftsmith.data.packing`) restarts positions at 0 for every document of a row; more generally a
new document starts wherever the position does not increase. ``document_ids`` numbers the documents of each row
``0, 1, 2, ...``; only equality between positions matters to the masks and alignments that use it.
"""

from __future__ import annotations

import torch


def document_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` document index per position: +1 wherever ``position_ids`` does not increase."""
    starts = position_ids[:, 1:] <= position_ids[:, :-1]  # (B, T-1)
    return torch.nn.functional.pad(starts.long().cumsum(-1), (1, 0))  # (B, T)


def is_single_document(position_ids: torch.Tensor | None) -> bool:
    """True when no row restarts its positions (or there are no position ids)."""
    return position_ids is None or not bool((position_ids[:, 1:] <= position_ids[:, :-1]).any())


def packed_document_ids(position_ids: torch.Tensor | None) -> torch.Tensor | None:
    """:func:`document_ids`, or ``None`` when every row is one document (callers then skip document masks)."""
    return None if is_single_document(position_ids) else document_ids(position_ids)
