"""The vocab-sized part of the DSpark loss without vocab-sized memory: logits, CE and L1 chunk by chunk.

For each chunk of supervised slots the function builds the draft logits ``h·Wₗₘᵀ + φ·W2ᵀ`` (lm_head + Markov
bias) and the teacher logits ``h_t·Wₗₘᵀ``, takes CE and the fp32 L1 between the two softmaxes, and — since the
weighted loss ``Σ c_ce·CE + c_l1·L1`` is linear in the per-slot terms with coefficients known up front — also
its gradient, which it folds straight back into H- and r-sized gradients (``g·Wₗₘ``, ``g·W2``, ``gᵀ·φ``). Only
those are kept for backward; backward just scales them by the incoming scalar gradient. Compared with
materialising ``[B, A, γ, V]`` logits (NeMo AutoModel) or checkpointing each chunk (which recomputes the
lm_head GEMMs in backward), this runs every vocab GEMM exactly once and peaks at one chunk of ``V`` columns.

Gradient formulas (z = draft logits, p = softmax z, t = teacher probs, s = sign(p − t)):
``∂CE/∂z = p − onehot(y)`` and ``∂‖p − t‖₁/∂z = p ⊙ (s − ⟨p, s⟩)`` (the same subgradient autograd uses at 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from draftsmith.errors import ConfigError, DataError


def _logits(x: torch.Tensor, weight: torch.Tensor, phi: torch.Tensor | None, w2: torch.Tensor | None) -> torch.Tensor:
    z = x @ weight.t()  # (n, V)
    if phi is not None:
        z = torch.addmm(z, phi.to(z.dtype), w2.t().to(z.dtype))
    return z.float()


def _teacher_probs(teacher_h, teacher_idx, teacher_weight, transform=None):
    """Teacher distributions of a chunk's slots. With ``teacher_idx`` the rows of ``teacher_h`` are shared
    positions: overlapping blocks (anchors closer than γ) ask for the same target position, so each distinct
    one is projected to the vocabulary once. ``transform`` is the target's post-lm_head scale / soft-cap
    (``TargetHeads.adjust_logits``), so the teacher is the target's own distribution."""
    def probs(rows):
        z = (rows @ teacher_weight.t()).float()
        return torch.softmax(transform(z) if transform is not None else z, dim=-1)  # one fused kernel

    if teacher_idx is None:
        return probs(teacher_h)
    uniq, inverse = torch.unique(teacher_idx, return_inverse=True)
    return probs(teacher_h.index_select(0, uniq)).index_select(0, inverse)


def _chunk_terms(h, phi, teacher_h, teacher_idx, ids, lm_weight, w2, teacher_weight, ce_coef, l1_coef,
                 teacher_transform=None):
    """CE, argmax, ∂loss/∂logits and L1 for one chunk of n slots, with at most three (n, V) fp32 buffers live
    (logits, log-probabilities / probabilities, teacher → p − t → the gradient) — the chunk's peak memory.

    Fused kernels and in-place updates keep the passes over the (n, V) buffers few: one ``log_softmax`` gives
    CE, one ``softmax`` p; the gradient is built in the sign buffer as
    ``p ⊙ (c_ce + c_l1·(s − ⟨p, s⟩)) − c_ce·onehot(y)`` (no separate gradient buffer)."""
    z = _logits(h, lm_weight, phi, w2)  # (n, V) fp32
    pred = z.argmax(-1)
    ce = torch.log_softmax(z, dim=-1).gather(1, ids[:, None]).squeeze(1).neg()  # −log p(y)
    p = torch.softmax(z, dim=-1)  # not exp(log p): that would scale each row by log-sum rounding
    del z
    l1 = None
    if teacher_h is None:
        grad = p.mul_(ce_coef[:, None])  # c_ce·(p − onehot(y)) (p is not needed afterwards)
    else:
        teacher = _teacher_probs(teacher_h, teacher_idx, teacher_weight, teacher_transform)
        diff = torch.sub(p, teacher, out=teacher)  # p − t, in the teacher's buffer
        l1 = torch.linalg.vector_norm(diff, ord=1, dim=-1)
        sign = diff.sign_()
        with torch.autocast(p.device.type, enabled=False):  # an fp32 reduction over V, not a bf16 GEMM
            dot = torch.bmm(p[:, None, :], sign[:, :, None]).squeeze(-1)  # ⟨p, s⟩ (n, 1), no temporary
        # c_ce·p + c_l1·p⊙(s − ⟨p, s⟩) = p ⊙ (c_l1·s + (c_ce − c_l1·⟨p, s⟩))
        shift = ce_coef[:, None] - l1_coef[:, None] * dot
        grad = sign.mul_(l1_coef[:, None]).add_(shift).mul_(p)
    grad.scatter_add_(1, ids[:, None], -ce_coef[:, None])  # ... − c_ce·onehot(y)
    return ce, pred, grad, l1


class _FusedSlotLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, phi, teacher_hidden, teacher_index, target_ids, lm_weight, w2, teacher_weight, ce_coef,
                l1_coef, chunk_size, teacher_transform):
        rows = hidden.shape[0]
        want_h, want_phi, want_lm, want_w2 = (ctx.needs_input_grad[0], ctx.needs_input_grad[1],
                                              ctx.needs_input_grad[5], ctx.needs_input_grad[6])
        grad_h = torch.zeros_like(hidden) if want_h else None
        grad_phi = torch.zeros_like(phi) if want_phi else None
        grad_lm = torch.zeros(lm_weight.shape, dtype=torch.float32, device=lm_weight.device) if want_lm else None
        grad_w2 = torch.zeros(w2.shape, dtype=torch.float32, device=w2.device) if want_w2 else None
        ce = torch.empty(rows, dtype=torch.float32, device=hidden.device)
        l1 = torch.empty(rows, dtype=torch.float32, device=hidden.device) if teacher_hidden is not None else None
        pred = torch.empty(rows, dtype=torch.long, device=hidden.device)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for s in range(0, rows, chunk_size):
            e = min(s + chunk_size, rows)
            h, ids = hidden[s:e], target_ids[s:e]
            p_phi = phi[s:e] if phi is not None else None
            teacher, t_idx = None, None
            if l1 is not None:
                teacher, t_idx = (teacher_hidden[s:e], None) if teacher_index is None else \
                    (teacher_hidden, teacher_index[s:e])
            ce[s:e], pred[s:e], grad_z, l1_chunk = _chunk_terms(h, p_phi, teacher, t_idx, ids, lm_weight, w2,
                                                                teacher_weight, ce_coef[s:e], l1_coef[s:e],
                                                                teacher_transform)
            total += (ce_coef[s:e] * ce[s:e]).sum()
            if l1 is not None:
                l1[s:e] = l1_chunk
                total += (l1_coef[s:e] * l1_chunk).sum()
            g = grad_z.to(hidden.dtype)
            if want_h:
                grad_h[s:e] = g @ lm_weight.to(g.dtype)
            if want_phi:
                grad_phi[s:e] = g.to(phi.dtype) @ w2
            if want_lm:
                grad_lm += grad_z.t() @ h.float()
            if want_w2:
                grad_w2 += grad_z.t() @ p_phi.float()
        ctx.save_for_backward(*(x if x is not None else torch.empty(0) for x in (grad_h, grad_phi, grad_lm, grad_w2)))
        ctx.present = (want_h, want_phi, want_lm, want_w2)
        ctx.param_dtypes = (lm_weight.dtype, w2.dtype if w2 is not None else None)
        ctx.mark_non_differentiable(ce, pred, *([l1] if l1 is not None else []))
        return total, ce, l1, pred

    @staticmethod
    def backward(ctx, g_total, _g_ce, _g_l1, _g_pred):
        grad_h, grad_phi, grad_lm, grad_w2 = (x * g_total.to(x.dtype) if present else None
                                              for x, present in zip(ctx.saved_tensors, ctx.present))
        lm_dtype, w2_dtype = ctx.param_dtypes  # the weight grads were accumulated in fp32
        grad_lm = grad_lm.to(lm_dtype) if grad_lm is not None else None
        grad_w2 = grad_w2.to(w2_dtype) if grad_w2 is not None else None
        return grad_h, grad_phi, None, None, None, grad_lm, grad_w2, None, None, None, None, None


def fused_slot_loss(hidden: torch.Tensor, target_ids: torch.Tensor, lm_weight: torch.Tensor, *,
                    phi: torch.Tensor | None = None, w2: torch.Tensor | None = None,
                    teacher_hidden: torch.Tensor | None = None, teacher_index: torch.Tensor | None = None,
                    teacher_weight: torch.Tensor | None = None, teacher_transform=None,
                    ce_coef: torch.Tensor, l1_coef: torch.Tensor | None = None, chunk_size: int = 128):
    """Weighted CE + L1 over ``M`` supervised slots, differentiable in ``hidden``, ``phi``, ``lm_weight``, ``w2``.

    hidden (M, H) final-normed draft states; phi (M, r) Markov features with ``w2`` (V, r); teacher_hidden
    (M, H) target post-norm states at the teacher positions with ``teacher_weight`` (V, H) (default
    ``lm_weight``) — or, with ``teacher_index`` (M,), any (N, H) states of which slot i uses row
    ``teacher_index[i]`` (shared rows are projected once per chunk); ``teacher_transform`` maps the teacher's raw
    logits to the target's (its logit scale / soft-cap; None: none); ce_coef / l1_coef (M,) per-slot coefficients (weights already divided by the denominator).
    Returns ``(Σ c_ce·CE + c_l1·L1, CE (M,), L1 (M,) or None, argmax (M,))``; only the sum carries gradient.
    """
    if (phi is None) != (w2 is None):
        raise DataError("phi and w2 come together (Markov features and the Markov output map)")
    if teacher_hidden is not None and l1_coef is None:
        raise DataError("l1_coef is required with teacher_hidden")
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}")
    teacher_weight = lm_weight.detach() if teacher_weight is None else teacher_weight.detach()
    if teacher_hidden is not None:
        teacher_hidden = teacher_hidden.detach()
    l1_coef = l1_coef if l1_coef is not None else torch.zeros_like(ce_coef)
    return _FusedSlotLoss.apply(hidden, phi, teacher_hidden, teacher_index, target_ids, lm_weight, w2, teacher_weight,
                                ce_coef.float().detach(), l1_coef.float().detach(), int(chunk_size),
                                teacher_transform)


def slot_terms(draft_logits: torch.Tensor, teacher_logits: torch.Tensor | None, target_ids: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Reference per-slot terms from materialised logits (autograd does the backward): CE, fp32 L1 between the
    softmaxes (None without a teacher), argmax. Shapes (n, V), (n, V), (n,) -> (n,) each."""
    logp = torch.log_softmax(draft_logits.float(), dim=-1)
    ce = F.nll_loss(logp, target_ids, reduction="none")
    l1 = None
    if teacher_logits is not None:
        l1 = (logp.exp() - torch.softmax(teacher_logits.detach().float(), dim=-1)).abs().sum(-1)
    return ce, l1, logp.detach().argmax(-1)
