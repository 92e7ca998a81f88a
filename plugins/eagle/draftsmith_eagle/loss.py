"""Label alignment, supervision masks, soft cross-entropy and TTT weights of the EAGLE objectives
(data-parallel reductions: :mod:`draftsmith.train.distributed`).

Alignment (one place, tested): slot ``t`` pairs the token ``x_{t+1}`` with the target's features at ``t`` and, at
draft step ``k`` (0 for EAGLE-1; ``0..ttt_steps-1`` for EAGLE-3), reads the token ``x_{t+k+1}`` and predicts
``x_{t+k+2}``, whose target distribution is the target's output at position ``t+k+1``. Token ids and target
outputs are therefore shifted left by ``k+1``; the features are never shifted.

``loss_mask`` marks supervised *tokens* (unshifted), so a prediction is supervised iff the token it predicts is:
slot ``t`` at step ``k`` counts iff ``loss_mask[t+k+2]``, the position is real (``attention_mask``), inside the
sequence, and in the same packed document as ``t`` (documents restart where ``position_ids`` stop increasing).
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F

from draftsmith.errors import DataError
from draftsmith.nn.documents import document_ids
from draftsmith.train.distributed import global_sum, world_size  # noqa: F401  (the objectives' reductions)


def batch_tensors(batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                torch.Tensor | None]:
    """``input_ids``, ``attention_mask`` (default all ones), ``loss_mask``, ``position_ids`` (or None), checked."""
    for key in ("input_ids", "loss_mask"):
        if key not in batch:
            raise DataError(f"EAGLE objective: batch has no {key!r} (got keys {sorted(batch)})")
    ids = batch["input_ids"]
    if ids.dim() != 2:
        raise DataError(f"input_ids must be (B, T), got shape {tuple(ids.shape)}")
    attn = batch.get("attention_mask")
    attn = torch.ones_like(ids, dtype=torch.bool) if attn is None else attn.bool()
    loss_mask = batch["loss_mask"].bool()
    pos = batch.get("position_ids")
    for name, t in (("attention_mask", attn), ("loss_mask", loss_mask), ("position_ids", pos)):
        if t is not None and tuple(t.shape) != tuple(ids.shape):
            raise DataError(f"{name} has shape {tuple(t.shape)}, expected {tuple(ids.shape)} like input_ids")
    return ids, attn, loss_mask, pos


def shift_left(x: torch.Tensor, k: int) -> torch.Tensor:
    """``x[:, k:]`` padded with zeros at the end (same shape): position ``t`` now holds ``x[:, t+k]``."""
    if k == 0:
        return x
    return torch.cat([x[:, k:], x.new_zeros(x.shape[0], min(k, x.shape[1]), *x.shape[2:])], dim=1)


def prediction_validity(attention_mask: torch.Tensor, loss_mask: torch.Tensor, position_ids: torch.Tensor | None,
                        steps: int) -> torch.Tensor:
    """``(steps, B, T)`` bool: slot ``t`` at step ``k`` is supervised (see module docstring)."""
    real = attention_mask & loss_mask
    doc = document_ids(position_ids) if position_ids is not None else None
    out = []
    for k in range(steps):
        ok = shift_left(real, k + 2) & attention_mask
        if doc is not None:
            ok = ok & (shift_left(doc, k + 2) == doc)
        out.append(ok)
    return torch.stack(out)


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Per-row ``-Σ_v p(v) log softmax(z)(v)`` in fp32: ``(N, V), (N, V) -> (N,)``."""
    return -(target_probs * F.log_softmax(logits.float(), dim=-1)).sum(-1)


def step_weights(steps: int, decay: float = 0.8) -> list[float]:
    """EAGLE-3 TTT step weights ``decay^i / Σ_j decay^j`` (normalised, so the loss scale does not depend on
    ``ttt_steps``; for 7 steps and 0.8 the raw sum is 3.951424)."""
    raw = [decay ** i for i in range(steps)]
    total = sum(raw)
    return [w / total for w in raw]


def chain_counts(correct: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """EAGLE-3 simulated-acceptance counts from per-step ``(K, N)`` bool tensors (step k of slot n correct /
    supervised): ``hits_k`` = slots whose greedy chain is correct at every step ``<= k`` and supervised at every
    step ``<= k``; ``chains_k`` = slots supervised at every step ``<= k``. A correct-but-unsupervised step cannot
    happen (``correct`` implies ``valid``); a gap in supervision drops the chain from the later denominators, a
    target outside the draft vocabulary (``valid`` but never ``correct``) breaks it."""
    through = valid.long().cumprod(0).bool()
    hits = (correct & valid).long().cumprod(0).bool() & through
    return hits.sum(-1), through.sum(-1)


def simulated_tau(hits: torch.Tensor, chains: torch.Tensor) -> float:
    """``1 + Σ_k hits_k / chains_k`` over the depths that have any supervised chain."""
    present = chains > 0
    return 1.0 + float((hits[present].double() / chains[present].double()).sum())
