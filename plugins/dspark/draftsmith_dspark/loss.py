"""The DSpark loss (DeepSpec ``compute_dspark_loss`` as ported by NeMo AutoModel; methods.md §3.4 items 9–10).

``loss = ce_alpha·L_ce + l1_alpha·L_tv + conf_alpha·L_conf`` (defaults 0.1 / 0.9 / 1.0), each term a weighted
mean ``Σ w·ℓ / Σ w`` over supervised slots with ``w = eval_mask · exp(−k/γ_d)`` (k = 0..γ−1, γ_d = 4):

* ``L_ce``   hard-label CE of the Markov-adjusted draft logits;
* ``L_tv``   the full L1 ``‖softmax(draft) − softmax(teacher)‖₁`` in fp32 (= 2·TV; the code's choice, not the
  paper's ½), computed in chunks so no batch-wide vocab-sized temporary exists;
* ``L_conf`` BCE-with-logits of the confidence head against the *detached* ``clamp(1 − ½·L1, 0, 1)``.

Data parallelism: ``Σ w`` is all-reduced (SUM) when ``torch.distributed`` is initialised and the backward loss
is multiplied by the world size, which cancels DDP/FSDP gradient averaging, so every rank's slot has the same
weight whatever the rank's share of supervised tokens. Logged values use local denominators.

Two entry points share everything but the vocab-sized part: :func:`compute_dspark_loss` takes materialised
logits (:class:`DSparkForwardOutput`, the reference path), :func:`fused_dspark_loss` takes hidden states and
never materialises them (the training path, see :mod:`fused_logits`).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from draftsmith.errors import ConfigError, DataError
from draftsmith.train.distributed import global_sum, world_size

from .anchors import DSparkForwardOutput, slot_decay_weights
from .fused_logits import fused_slot_loss, slot_terms

CHUNK_LOGITS = 1 << 23  # default chunk: ~8M logits (32 MB per fp32 temporary), never under NeMo's 128 slots


def default_chunk_size(vocab_size: int) -> int:
    """Slots per vocab chunk: 128 for large vocabularies (Qwen3: 19M logits), more for small ones (V=8192: 1024),
    where bigger GEMMs are faster and the temporaries still small."""
    return max(128, (CHUNK_LOGITS // max(int(vocab_size), 1)) // 64 * 64)


@dataclasses.dataclass
class DSparkLoss:
    loss: torch.Tensor  # the scalar to back-propagate (global denominators × world size)
    metrics: dict[str, torch.Tensor]  # detached 0-d tensors
    num_tokens: int  # supervised slots on this rank


@dataclasses.dataclass
class LossWeights:
    weights: torch.Tensor  # (B, A, γ) fp32, eval_mask · decay
    rows: torch.Tensor  # (M,) the weights of the supervised slots, eval_mask order
    local_den: torch.Tensor  # Σ w on this rank
    scale: torch.Tensor  # world_size / global Σ w


def loss_weights(eval_mask: torch.Tensor, loss_decay_gamma: float | None,
                 first_slot_weight: float = 1.0) -> LossWeights:
    """Per-slot weights and the (global) normaliser shared by all three terms: ``exp(−k/γ_d)``, slot 1 (k = 0,
    the first drafted token, whose acceptance gates every later one) also × ``first_slot_weight``."""
    decay = slot_decay_weights(eval_mask.shape[-1], loss_decay_gamma, device=eval_mask.device)
    decay[0] *= float(first_slot_weight)
    weights = eval_mask.float() * decay  # (B, A, γ)
    local = weights.sum()
    total = global_sum(local)  # Σ w over data-parallel ranks (detached)
    scale = world_size() / total.clamp_min(1e-6)  # an all-padding batch gives a zero (but connected) loss
    return LossWeights(weights, weights[eval_mask], local, scale)


def _local_mean(w: torch.Tensor, x: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return ((w * x.detach()).sum() / den.clamp_min(1e-6)).detach()


def _assemble(lw: LossWeights, eval_mask, block_keep_mask, *, vocab_total, ce, l1, pred, target_ids,
              confidence_pred, alphas) -> DSparkLoss:
    """Add the confidence term to the (already weighted) CE/L1 total and compute the diagnostics."""
    ce_alpha, l1_alpha, conf_alpha = alphas
    loss = vocab_total
    metrics: dict[str, torch.Tensor] = {"ce_loss": _local_mean(lw.rows, ce, lw.local_den)}
    acc = None
    if l1 is not None:
        acc = (1.0 - 0.5 * l1.detach()).clamp(0.0, 1.0)  # analytic per-slot acceptance, α = Σ min(p_d, p_t)
        metrics["tv_loss"] = _local_mean(lw.rows, l1, lw.local_den)
    if confidence_pred is not None and conf_alpha:
        if acc is None:
            raise DataError("the confidence term needs teacher logits (aligned_target_logits / final_hidden)")
        bce = F.binary_cross_entropy_with_logits(confidence_pred[eval_mask].float(), acc, reduction="none")
        loss = loss + conf_alpha * lw.scale * (lw.rows * bce).sum()
        metrics["conf_loss"] = _local_mean(lw.rows, bce, lw.local_den)
    metrics["loss"] = (ce_alpha * metrics["ce_loss"] + l1_alpha * metrics.get("tv_loss", 0.0)
                       + (conf_alpha * metrics["conf_loss"] if "conf_loss" in metrics else 0.0))
    metrics.update(dspark_diagnostics(eval_mask, block_keep_mask, pred == target_ids[eval_mask], acc,
                                      confidence_pred))
    return DSparkLoss(loss=loss, metrics=metrics, num_tokens=int(eval_mask.sum()))


def _scatter(eval_mask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(eval_mask.shape, dtype=rows.dtype, device=rows.device)
    out[eval_mask] = rows
    return out


@torch.no_grad()
def dspark_diagnostics(eval_mask: torch.Tensor, block_keep_mask: torch.Tensor, correct: torch.Tensor,
                       acc: torch.Tensor | None, confidence_pred: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """accuracy, ``acc_k`` (accuracy of drafted slot k + 1), greedy ``tau_sim``; with a teacher ``accept_rate@k`` (1-based slot), ``accept_rate``,
    analytic ``tau_analytic = mean(1 + Σ_k Π_{j≤k} α_j)`` over blocks with a supervised slot (always ≥ 1); with
    a confidence head its absolute error, bias and cumulative-product bias against α."""
    ev = eval_mask.float()  # (B, A, γ)
    valid_blocks = block_keep_mask & eval_mask.any(-1)  # (B, A)
    n_blocks = valid_blocks.sum().clamp_min(1)
    n_rows = ev.sum().clamp_min(1)
    out = {"accuracy": correct.float().sum() / n_rows}
    slot_hits = _scatter(eval_mask, correct.float())  # (B, A, γ)
    slot_acc = slot_hits.sum(dim=(0, 1)) / ev.sum(dim=(0, 1)).clamp_min(1)  # (γ,) accuracy of each drafted slot
    for k in range(slot_acc.shape[0]):
        out[f"acc_{k}"] = slot_acc[k]  # 0-based like EAGLE's acc_k: the per-position curve trackers plot
    hits = torch.cumprod(slot_hits, dim=-1)  # leading correct slots (eval is a prefix)
    out["tau_sim"] = 1.0 + (hits.sum(-1) * valid_blocks).sum() / n_blocks
    if acc is None:
        return out
    alpha = _scatter(eval_mask, acc)  # (B, A, γ), 0 outside eval
    per_slot = alpha.sum(dim=(0, 1)) / ev.sum(dim=(0, 1)).clamp_min(1)  # (γ,)
    for k in range(per_slot.shape[0]):
        out[f"accept_rate@{k + 1}"] = per_slot[k]
    out["accept_rate"] = alpha.sum() / n_rows
    out["tau_analytic"] = 1.0 + (torch.cumprod(alpha, dim=-1).sum(-1) * valid_blocks).sum() / n_blocks
    if confidence_pred is not None:
        conf = torch.sigmoid(confidence_pred.float())
        diff = (conf - alpha) * ev
        out["conf_abs_error"] = diff.abs().sum() / n_rows
        out["conf_bias"] = diff.sum() / n_rows
        cum = (torch.cumprod(conf * ev, dim=-1) - torch.cumprod(alpha, dim=-1)) * ev
        out["conf_cumprod_bias"] = cum.sum() / n_rows
    return out


def compute_dspark_loss(output: DSparkForwardOutput, *, loss_decay_gamma: float | None = 4.0,
                        first_slot_weight: float = 1.0,
                        ce_loss_alpha: float = 0.1, l1_loss_alpha: float = 0.9, confidence_head_alpha: float = 1.0,
                        chunk_size: int = 128) -> DSparkLoss:
    """The loss from materialised logits. Each chunk of ``chunk_size`` supervised slots is checkpointed so its
    fp32 softmax temporaries are recomputed in backward instead of kept."""
    needs_teacher = bool(l1_loss_alpha) or (output.confidence_pred is not None and bool(confidence_head_alpha))
    if needs_teacher and output.aligned_target_logits is None:
        raise ConfigError("l1_loss_alpha / confidence_head_alpha > 0 need aligned_target_logits (teacher)")
    mask = output.eval_mask
    lw = loss_weights(mask, loss_decay_gamma, first_slot_weight)
    draft = output.draft_logits[mask]  # (M, V)
    teacher = output.aligned_target_logits[mask] if output.aligned_target_logits is not None else None
    ids = output.target_ids[mask]  # (M,)
    pieces = [checkpoint(slot_terms, draft[s:s + chunk_size], None if teacher is None else teacher[s:s + chunk_size],
                         ids[s:s + chunk_size], use_reentrant=False) for s in range(0, draft.shape[0], chunk_size)]
    ce = torch.cat([p[0] for p in pieces]) if pieces else draft.sum(-1).float()
    l1 = None
    if teacher is not None:
        l1 = torch.cat([p[1] for p in pieces]) if pieces else draft.sum(-1).float()
    pred = torch.cat([p[2] for p in pieces]) if pieces else ids
    total = ce_loss_alpha * lw.scale * (lw.rows * ce).sum()
    if l1 is not None:
        total = total + l1_loss_alpha * lw.scale * (lw.rows * l1).sum()
    return _assemble(lw, mask, output.block_keep_mask, vocab_total=total, ce=ce, l1=l1, pred=pred,
                     target_ids=output.target_ids, confidence_pred=output.confidence_pred,
                     alphas=(ce_loss_alpha, l1_loss_alpha, confidence_head_alpha))


def fused_dspark_loss(hidden: torch.Tensor, target_ids: torch.Tensor, eval_mask: torch.Tensor,
                      block_keep_mask: torch.Tensor, lm_weight: torch.Tensor, *, phi: torch.Tensor | None = None,
                      w2: torch.Tensor | None = None, teacher_hidden: torch.Tensor | None = None,
                      teacher_positions: torch.Tensor | None = None,
                      teacher_weight: torch.Tensor | None = None, teacher_transform=None,
                      confidence_pred: torch.Tensor | None = None, loss_decay_gamma: float | None = 4.0,
                      first_slot_weight: float = 1.0, ce_loss_alpha: float = 0.1, l1_loss_alpha: float = 0.9,
                      confidence_head_alpha: float = 1.0, chunk_size: int | None = None) -> DSparkLoss:
    """The same loss from hidden states: hidden (B, A, γ, H), phi (B, A, γ, r) with w2 (V, r), teacher_hidden
    (B, A, γ, H) (the target's post-norm states at the teacher positions) — or teacher_hidden (B, S, H) with
    ``teacher_positions`` (B, A, γ), which lets overlapping blocks share teacher rows; only supervised slots are ever
    projected to the vocabulary; ``chunk_size`` slots at a time (default :func:`default_chunk_size`);
    ``teacher_transform`` is the target's post-lm_head scale / soft-cap (``TargetHeads.adjust_logits``)."""
    needs_teacher = bool(l1_loss_alpha) or (confidence_pred is not None and bool(confidence_head_alpha))
    if needs_teacher and teacher_hidden is None:
        raise ConfigError("l1_loss_alpha / confidence_head_alpha > 0 need teacher_hidden (target final hidden)")
    lw = loss_weights(eval_mask, loss_decay_gamma, first_slot_weight)
    coef = lw.rows * lw.scale
    chunk_size = chunk_size or default_chunk_size(lm_weight.shape[0])
    teacher_rows = teacher_index = None
    if teacher_hidden is not None and teacher_positions is None:
        teacher_rows = teacher_hidden[eval_mask]  # (M, H)
    elif teacher_hidden is not None:
        bsz, seq_len = teacher_hidden.shape[:2]
        flat = teacher_positions + seq_len * torch.arange(bsz, device=teacher_positions.device).view(-1, 1, 1)
        teacher_rows, teacher_index = teacher_hidden.reshape(bsz * seq_len, -1), flat[eval_mask]
    total, ce, l1, pred = fused_slot_loss(
        hidden[eval_mask], target_ids[eval_mask], lm_weight,
        phi=phi[eval_mask] if phi is not None else None, w2=w2,
        teacher_hidden=teacher_rows, teacher_index=teacher_index,
        teacher_weight=teacher_weight, teacher_transform=teacher_transform, ce_coef=ce_loss_alpha * coef,
        l1_coef=l1_loss_alpha * coef if teacher_hidden is not None else None, chunk_size=chunk_size)
    return _assemble(lw, eval_mask, block_keep_mask, vocab_total=total, ce=ce, l1=l1, pred=pred,
                     target_ids=target_ids, confidence_pred=confidence_pred,
                     alphas=(ce_loss_alpha, l1_loss_alpha, confidence_head_alpha))
