"""DSpark training-time plumbing shared by the draft forward, the loss and the tests.

Alignment (sample-from-anchor, methods.md §3.1/§3.4, differs from DFlash): a block anchored at position ``a``
feeds ``[x_a, MASK × (γ−1)]`` at positions ``a..a+γ−1``; **slot k predicts ``x_{a+k+1}``**, so all γ slots
are supervised. The teacher for slot k is the target's own distribution at position ``a + k`` (the logits
that predict the same token), and the Markov head's previous token for slot k is ``x_{a+k}``
(``[x_a, y_{a+1}, …, y_{a+γ−1}]``, teacher forcing).
"""

from __future__ import annotations

import dataclasses
import math

import torch


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
class BlockAlignment:
    """Per-slot indices of a batch of blocks, all (B, A, γ) except where noted."""

    target_ids: torch.Tensor  # token each slot predicts
    label_positions: torch.Tensor  # anchor + k + 1, clamped into the sequence (0 for unkept blocks)
    teacher_positions: torch.Tensor  # anchor + k, clamped: where the target's logits for that token live
    prev_ids: torch.Tensor  # the Markov head's previous token: x_{anchor + k}
    eval_mask: torch.Tensor  # bool


def document_ids(position_ids: torch.Tensor | None) -> torch.Tensor | None:
    """Packed-sequence document index per token, from position ids that restart at 0 at each document start
    (None when the batch is not packed: plain ``arange`` positions are a single document)."""
    if position_ids is None:
        return None
    starts = position_ids == 0  # (B, S)
    if bool((starts.sum(-1) <= 1).all()):
        return None
    return torch.cumsum(starts.to(torch.long), dim=-1)


def anchor_candidates(loss_mask: torch.Tensor, doc_ids: torch.Tensor | None = None) -> torch.Tensor:
    """(B, S) -> (B, S−1) bool: position i can anchor a block iff it and its first label ``i+1`` are both
    supervised (and, packed, in the same document). E.g. loss_mask [1,1,0,1,1,1] → [T,F,F,T,T]."""
    lm = loss_mask.bool()
    valid = lm[:, :-1] & lm[:, 1:]
    if doc_ids is not None:
        valid = valid & (doc_ids[:, :-1] == doc_ids[:, 1:])
    return valid


def sample_anchors(loss_mask: torch.Tensor, num_anchors: int, *, doc_ids: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``num_anchors`` anchors per sequence, uniformly without replacement among the candidates, sorted
    ascending. Returns ``anchors (B, A)`` long and ``block_keep_mask (B, A)`` bool with exactly
    ``A = num_anchors`` columns; column i is kept iff ``i < min(#candidates, A)``; unkept anchors are 0."""
    if num_anchors < 1:
        raise ValueError(f"num_anchors must be >= 1, got {num_anchors}")
    if loss_mask.dim() != 2 or loss_mask.shape[1] < 2:
        raise ValueError(f"loss_mask must be (B, S) with S >= 2, got {tuple(loss_mask.shape)}")
    valid = anchor_candidates(loss_mask, doc_ids)  # (B, S−1)
    bsz, n_cand = valid.shape
    device = loss_mask.device
    # a random key in [0, 1) for candidates and 2 for the rest: the k smallest keys are a uniform sample of
    # the candidates, padded with non-candidates when there are fewer than k
    keys = torch.rand(bsz, n_cand, generator=generator, device=generator.device if generator else device)
    keys = torch.where(valid, keys.to(device), torch.full_like(keys, 2.0, device=device))
    k = min(num_anchors, n_cand)
    picked = keys.topk(k, dim=-1, largest=False).indices  # (B, k)
    count = valid.sum(-1).clamp(max=num_anchors)  # (B,)
    keep = torch.arange(k, device=device)[None, :] < count[:, None]  # (B, k): the first `count` are candidates
    # sort the kept anchors ascending (pushing unkept columns to the end), then zero the unkept ones
    picked = torch.where(keep, picked, torch.full_like(picked, n_cand + 1)).sort(dim=-1).values
    anchors = torch.where(keep, picked, torch.zeros_like(picked))
    if k < num_anchors:  # short sequences: pad to a fixed width so shapes never depend on the data
        pad = num_anchors - k
        anchors = torch.cat([anchors, anchors.new_zeros(bsz, pad)], dim=-1)
        keep = torch.cat([keep, keep.new_zeros(bsz, pad)], dim=-1)
    return anchors, keep


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
        raise ValueError(f"loss_decay_gamma must be a positive number or None, got {loss_decay_gamma!r}")
    return torch.exp(-k / float(loss_decay_gamma)).to(dtype)


def gather_positions(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x (B, S, D), positions (B, *idx) -> (B, *idx, D)."""
    bsz, dim = x.shape[0], x.shape[-1]
    flat = positions.reshape(bsz, -1)  # (B, N)
    out = x.gather(1, flat[..., None].expand(-1, -1, dim))  # (B, N, D)
    return out.view(*positions.shape, dim)


def copy_full_tensor(dst: torch.Tensor, src: torch.Tensor) -> None:
    """``dst.copy_(src)`` across sharding: a DTensor ``src`` (e.g. an FSDP-sharded target embedding) is gathered
    to the full tensor first; a DTensor ``dst`` (a sharded draft) receives the full tensor scattered with its
    own mesh and placements."""
    src = src.detach()
    if hasattr(src, "full_tensor"):
        src = src.full_tensor()
    if tuple(src.shape) != tuple(dst.shape):
        raise ValueError(f"cannot copy a tensor of shape {tuple(src.shape)} into one of shape {tuple(dst.shape)}")
    with torch.no_grad():
        if hasattr(dst, "device_mesh"):
            from torch.distributed.tensor import distribute_tensor

            dst.copy_(distribute_tensor(src.to(dst.dtype), dst.device_mesh, dst.placements))
        else:
            dst.copy_(src.to(device=dst.device, dtype=dst.dtype))
