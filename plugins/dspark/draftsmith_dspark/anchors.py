"""DSpark's block alignment: which positions anchor a block, what each slot predicts and is taught with.

Alignment (sample-from-anchor, methods.md §3.1/§3.4, differs from DFlash): a block anchored at position ``a``
feeds ``[x_a, MASK × (γ−1)]`` at positions ``a..a+γ−1``; **slot k predicts ``x_{a+k+1}``**, so all γ slots
are supervised. The teacher for slot k is the target's own distribution at position ``a + k`` (the logits
that predict the same token), and the Markov head's previous token for slot k is ``x_{a+k}``
(``[x_a, y_{a+1}, …, y_{a+γ−1}]``, teacher forcing).

Anchors: :func:`sample_block_anchors` (core's sampler over :func:`anchor_candidates`, padded to a fixed width),
drawn by the objective from its :class:`~draftsmith.nn.random_stream.RandomStream`; packed rows' documents come
from :func:`draftsmith.nn.documents.packed_document_ids`.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from draftsmith.errors import ConfigError, DataError
from draftsmith.nn.anchors import sample_anchors


@dataclasses.dataclass
class DSparkForwardOutput:
    """What ``Qwen3DSparkModel.forward`` returns (A = num_anchors, γ = block_size; methods.md §3.5)."""

    draft_logits: torch.Tensor  # (B, A, γ, V) Markov-adjusted, teacher-forced previous tokens
    target_ids: torch.Tensor  # (B, A, γ) input_ids[anchor + k + 1] (clamped; 0 for unkept blocks)
    eval_mask: torch.Tensor  # (B, A, γ) bool, a contiguous supervised prefix per block
    block_keep_mask: torch.Tensor  # (B, A) bool, sampled anchor vs padding column
    confidence_pred: torch.Tensor | None = None  # (B, A, γ) fp32 confidence logits (pre-sigmoid)
    aligned_target_logits: torch.Tensor | None = None  # (B, A, γ, V) target logits for the same slots
    anchor_positions: torch.Tensor | None = None  # (B, A) the sampled anchors (0 where not kept)


@dataclasses.dataclass
class DSparkHiddenOutput:
    """What ``Qwen3DSparkModel.forward_hidden`` returns: the training forward before any vocab projection."""

    hidden: torch.Tensor  # (B, A, γ, H) final-normed slot states
    markov_features: torch.Tensor | None  # (B, A, γ, r) φ, logit bias = markov_w2(φ)
    confidence_pred: torch.Tensor | None  # (B, A, γ) fp32 logits
    teacher_hidden: torch.Tensor | None  # (B, A, γ, H) target post-norm state at anchor + k
    teacher_positions: torch.Tensor  # (B, A, γ) anchor + k (clamped): where the teacher logits come from
    target_ids: torch.Tensor  # (B, A, γ)
    prev_ids: torch.Tensor  # (B, A, γ) teacher-forced previous tokens
    eval_mask: torch.Tensor  # (B, A, γ) bool
    block_keep_mask: torch.Tensor  # (B, A) bool
    anchors: torch.Tensor  # (B, A)


@dataclasses.dataclass
class BlockAlignment:
    """Per-slot indices of a batch of blocks, all (B, A, γ) except where noted."""

    target_ids: torch.Tensor  # token each slot predicts
    label_positions: torch.Tensor  # anchor + k + 1, clamped into the sequence (0 for unkept blocks)
    teacher_positions: torch.Tensor  # anchor + k, clamped: where the target's logits for that token live
    prev_ids: torch.Tensor  # the Markov head's previous token: x_{anchor + k}
    eval_mask: torch.Tensor  # bool


def anchor_candidates(loss_mask: torch.Tensor, doc_ids: torch.Tensor | None = None) -> torch.Tensor:
    """(B, S) -> (B, S−1) bool: position i can anchor a block iff it and its first label ``i+1`` are both
    supervised (and, packed, in the same document). E.g. loss_mask [1,1,0,1,1,1] → [T,F,F,T,T]."""
    lm = loss_mask.bool()
    valid = lm[:, :-1] & lm[:, 1:]
    if doc_ids is not None:
        valid = valid & (doc_ids[:, :-1] == doc_ids[:, 1:])
    return valid


def sample_block_anchors(loss_mask: torch.Tensor, num_anchors: int, generator: torch.Generator | None = None, *,
                         doc_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``num_anchors`` anchors per sequence, uniformly without replacement among the candidates, sorted
    ascending. Returns ``anchors (B, A)`` long and ``block_keep_mask (B, A)`` bool with exactly
    ``A = num_anchors`` columns (shapes never depend on the data); column i is kept iff
    ``i < min(#candidates, A)``; unkept anchors are 0."""
    if loss_mask.dim() != 2 or loss_mask.shape[1] < 2:
        raise DataError(f"loss_mask must be (B, S) with S >= 2, got {tuple(loss_mask.shape)}")
    valid = anchor_candidates(loss_mask, doc_ids)  # (B, S−1)
    return sample_anchors(valid, num_anchors, generator, fixed_width=True)


def align_blocks(input_ids: torch.Tensor, loss_mask: torch.Tensor, anchors: torch.Tensor,
                 block_keep_mask: torch.Tensor, block_size: int, *,
                 doc_ids: torch.Tensor | None = None) -> BlockAlignment:
    """Labels, teacher positions, Markov previous tokens and eval_mask for ``anchors`` (B, A).

    ``eval_mask = (label < S) ∧ loss_mask[label] ∧ keep (∧ same document)``, then a cumulative product along
    k, so only a contiguous supervised prefix counts (S=10, anchor 6, γ=7 → [1,1,1,0,0,0,0]).
    """
    seq_len = input_ids.shape[1]
    offsets = torch.arange(block_size, device=anchors.device)  # (γ,)
    labels = anchors[..., None] + 1 + offsets  # (B, A, γ)
    keep = block_keep_mask[..., None]  # (B, A, 1)
    safe = torch.where(keep, labels.clamp(max=seq_len - 1), torch.zeros_like(labels))  # (B, A, γ)
    bsz = input_ids.shape[0]
    flat = safe.reshape(bsz, -1)  # (B, A·γ)
    target_ids = input_ids.gather(1, flat).view_as(safe)
    supervised = loss_mask.bool().gather(1, flat).view_as(safe)
    mask = (labels < seq_len) & supervised & keep
    if doc_ids is not None:
        same_doc = doc_ids.gather(1, flat).view_as(safe) == doc_ids.gather(1, anchors)[..., None]
        mask = mask & same_doc
    eval_mask = torch.cumprod(mask.to(torch.int32), dim=-1).bool()
    anchor_ids = input_ids.gather(1, anchors)  # (B, A)
    prev_ids = torch.cat([anchor_ids[..., None], target_ids[..., :-1]], dim=-1)  # (B, A, γ)
    teacher = (anchors[..., None] + offsets).clamp(max=seq_len - 1)  # (B, A, γ)
    return BlockAlignment(target_ids=target_ids, label_positions=safe, teacher_positions=teacher,
                          prev_ids=prev_ids, eval_mask=eval_mask)


def slot_decay_weights(block_size: int, loss_decay_gamma: float | None, *, device=None,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``exp(−k/γ_d)`` for k = 0..γ−1 (uniform when ``loss_decay_gamma`` is None). γ=7, γ_d=4 sums to 3.735212."""
    k = torch.arange(block_size, device=device, dtype=torch.float64)
    if loss_decay_gamma is None:
        return torch.ones(block_size, device=device, dtype=dtype)
    if not (isinstance(loss_decay_gamma, (int, float)) and math.isfinite(loss_decay_gamma) and loss_decay_gamma > 0):
        raise ConfigError(f"loss_decay_gamma must be a positive number or None, got {loss_decay_gamma!r}")
    return torch.exp(-k / float(loss_decay_gamma)).to(dtype)


def gather_positions(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x (B, S, D), positions (B, *idx) -> (B, *idx, D)."""
    bsz, dim = x.shape[0], x.shape[-1]
    flat = positions.reshape(bsz, -1)  # (B, N)
    out = x.gather(1, flat[..., None].expand(-1, -1, dim))  # (B, N, D)
    return out.view(*positions.shape, dim)
