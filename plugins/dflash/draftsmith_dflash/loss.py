"""DFlash's loss terms (methods.md §2.4): slot decay weights, the decayed hard-label cross-entropy and the optional
self-logit distillation (KD) term. Normalisation: ``Σ weight·mask`` of the micro-batch (the DFlash/NeMo rule).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from draftsmith.errors import ConfigError


def decay_weights(block_size: int, gamma: float | None, device: torch.device | None = None) -> torch.Tensor:
    """``(B,)`` slot weights: 0 for slot 0, ``exp(−(k−1)/γ)`` for ``k = 1..B−1`` (uniform 1 when γ is None)."""
    if gamma is not None and not gamma > 0:
        raise ConfigError(f"loss_decay_gamma must be > 0 (or None for uniform weights), got {gamma}")
    k = torch.arange(block_size, dtype=torch.float64, device=device)
    w = torch.ones_like(k) if gamma is None else torch.exp(-(k - 1) / gamma)
    w[0] = 0.0
    return w.to(torch.float32)


def decayed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``Σ w·CE(logits, labels) / Σ w`` over the supervised slots: ``(M, V), (M,), (M,) -> ()``."""
    ce = F.cross_entropy(logits, labels, reduction="none")  # (M,)
    return (weights * ce).sum() / weights.sum()


def distillation_kl(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-slot ``KL(p_teacher ‖ p_draft)`` at temperature τ, times τ²: ``(M, V), (M, V) -> (M,)``."""
    log_t = F.log_softmax(teacher_logits / temperature, dim=-1)
    log_d = F.log_softmax(logits / temperature, dim=-1)
    return (log_t.exp() * (log_t - log_d)).sum(dim=-1) * temperature ** 2
