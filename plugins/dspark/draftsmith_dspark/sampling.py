"""Sampling pieces of speculative decoding used by the DSpark drafter and its tests (methods.md §1).

* ``sample_token``: greedy below ``GREEDY_TEMPERATURE``, else multinomial from ``softmax(logits / T)``;
* ``acceptance_probability``: ``α(p, q) = Σ min(p, q) = 1 − ½‖p − q‖₁``;
* ``expected_acceptance_length``: ``E[τ] = 1 + Σ_k Π_{j≤k} α_j`` (bonus token included);
* ``rejection_sample_chain``: the lossless Leviathan/Chen rule for a chain of drafts.
"""

from __future__ import annotations

import torch

GREEDY_TEMPERATURE = 1e-5


def draft_distribution(logits: torch.Tensor, temperature: float) -> torch.Tensor | None:
    """``softmax(logits / T)`` in fp32, or None when decoding greedily (the distribution is a one-hot)."""
    if temperature < GREEDY_TEMPERATURE:
        return None
    return torch.softmax(logits.float() / temperature, dim=-1)


def sample_token(logits: torch.Tensor, temperature: float, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(..., V) logits -> (token (...), distribution it was drawn from or None when greedy)."""
    probs = draft_distribution(logits, temperature)
    if probs is None:
        return logits.argmax(-1), None
    flat = probs.reshape(-1, probs.shape[-1])
    token = torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])
    return token, probs


def acceptance_probability(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``Σ_v min(p_v, q_v)`` over the last dim (= 1 − ½‖p − q‖₁)."""
    return torch.minimum(p, q).sum(-1)


def expected_acceptance_length(alpha: torch.Tensor) -> torch.Tensor:
    """``1 + Σ_k Π_{j≤k} α_j`` for conditional per-position acceptances ``alpha`` (..., γ)."""
    return 1.0 + torch.cumprod(alpha, dim=-1).sum(-1)


def residual_distribution(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``normalize(max(p − q, 0))``; falls back to ``p`` when the residual mass vanishes (p == q)."""
    r = (p - q).clamp_min(0)
    mass = r.sum(-1, keepdim=True)
    return torch.where(mass > 1e-12, r / mass.clamp_min(1e-30), p)


def rejection_sample_chain(draft_tokens: torch.Tensor, draft_probs: torch.Tensor, target_probs: torch.Tensor,
                           generator: torch.Generator | None = None) -> tuple[int, int]:
    """Verify a chain of k drafts. draft_probs (k, V) the q each was drawn from; target_probs (k+1, V) the
    target's distributions at the k draft slots plus the bonus slot. Returns ``(accepted, next_token)``:
    draft i is accepted with prob ``min(1, p_i(x_i)/q_i(x_i))``; at the first rejection the correction comes
    from the residual, after k acceptances the bonus from ``p_k``."""
    k = int(draft_tokens.shape[0])
    for i in range(k):
        x = int(draft_tokens[i])
        p, q = float(target_probs[i, x]), float(draft_probs[i, x])
        u = float(torch.rand((), generator=generator))
        if q <= 0 or u * q >= p:  # reject (u < p/q accepts)
            res = residual_distribution(target_probs[i], draft_probs[i])
            return i, int(torch.multinomial(res, 1, generator=generator))
    return k, int(torch.multinomial(target_probs[k], 1, generator=generator))
