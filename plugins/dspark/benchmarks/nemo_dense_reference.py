"""A re-implementation, from its description (nemo-automodel.md §2.4–2.5, §3.5; methods.md §3.4), of NeMo
AutoModel's DSpark *dense-mask* training path — the timing baseline of ``train_step.py``. It reuses a draftsmith
DSpark draft's weights but computes the way that path does:

* per layer, keys/values ``cat(k/v_proj(ctx), k/v_proj(noise))`` with per-head q/k norm and rotary over
  ``[context positions | block positions]``, attention through transformers' ``sdpa_attention_forward`` with a
  dense additive float mask ``[B, 1, A·γ, S + A·γ]`` (with a mask, transformers repeats the KV heads);
* ``draft_logits = lm_head(h) + W2·W1[prev]`` and ``aligned_target_logits = lm_head(target_last_hidden[a+k])``
  materialised for every slot ``[B, A, γ, V]``; confidence logits from ``[h; W1[prev]]``;
* ``compute_dspark_loss``: weights ``eval_mask·exp(−k/γ_d)``; CE over the full logits; the L1 term in
  128-token chunks under activation checkpointing; BCE against the detached ``clamp(1 − ½L1, 0, 1)``;
  ``0.1·CE + 0.9·L1 + 1.0·BCE``, each ``Σ w·ℓ / Σ w``.

Not a test oracle (the plugin's tests check the loss against explicit references); a timing baseline only, and
not a measurement of NeMo: the real package is timed by ``benchmarks/train_step.py --method dspark --vs nemo``
(this module is its labelled fallback when ``nemo_automodel`` is not installed).
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from draftsmith.nn.rotary import rotate_half


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos.unsqueeze(1) + rotate_half(x) * sin.unsqueeze(1)


def _dense_additive_mask(anchors, keep, gamma, seq_len, dtype):
    b, n = anchors.shape
    q_block = torch.arange(n * gamma, device=anchors.device) // gamma
    kv = torch.arange(seq_len + n * gamma, device=anchors.device)
    anchor_of_q = anchors[:, q_block]
    ctx = (kv[None, None] < seq_len) & (kv[None, None] < anchor_of_q[:, :, None]) & keep[:, q_block, None]
    kv_block = (kv - seq_len).clamp(min=0) // gamma
    own = (kv[None, None] >= seq_len) & (kv_block[None, None] == q_block[None, :, None])
    visible = (ctx | own).unsqueeze(1)
    return torch.zeros(visible.shape, dtype=dtype, device=anchors.device).masked_fill(~visible, float("-inf"))


def _l1_chunk(d: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return (torch.softmax(d.float(), -1) - torch.softmax(t.float(), -1)).abs().sum(-1)


def nemo_dense_loss(draft, input_ids, loss_mask, target_hidden, target_last_hidden, anchors, keep,
                    decay_gamma: float = 4.0, chunk: int = 128):
    cfg, gamma = draft.config, draft.config.block_size
    b, s = input_ids.shape
    n = anchors.shape[1]
    noise = torch.full((b, n, gamma), cfg.mask_token_id, dtype=torch.long, device=input_ids.device)
    noise[:, :, 0] = torch.where(keep, input_ids.gather(1, anchors), noise[:, :, 0])
    h = draft.embed_tokens(noise.view(b, n * gamma))  # (B, A·γ, H)
    ctx = draft.hidden_norm(draft.fc(target_hidden))  # (B, S, H)
    positions = torch.cat([torch.arange(s, device=h.device).expand(b, -1),
                           (anchors[:, :, None] + torch.arange(gamma, device=h.device)).view(b, -1)], dim=1)
    cos, sin = draft.rotary_emb(h, positions)
    mask = _dense_additive_mask(anchors, keep, gamma, s, h.dtype)
    q_len, hd = n * gamma, cfg.head_dim
    for layer in draft.layers:
        attn = layer.self_attn
        x = layer.input_layernorm(h)
        q = attn.q_norm(attn.q_proj(x).view(b, q_len, -1, hd)).transpose(1, 2)
        k = attn.k_norm(torch.cat([attn.k_proj(ctx), attn.k_proj(x)], 1).view(b, s + q_len, -1, hd)).transpose(1, 2)
        v = torch.cat([attn.v_proj(ctx), attn.v_proj(x)], 1).view(b, s + q_len, -1, hd).transpose(1, 2)
        q, k = _rope(q, cos[:, -q_len:], sin[:, -q_len:]), _rope(k, cos, sin)
        module = types.SimpleNamespace(num_key_value_groups=attn.num_heads // attn.num_kv_heads, is_causal=False,
                                       training=True)
        out, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=attn.scaling, is_causal=False)
        h = h + attn.o_proj(out.reshape(b, q_len, -1))
        h = h + layer.mlp(layer.post_attention_layernorm(h))
    h = draft.norm(h).view(b, n, gamma, -1)  # (B, A, γ, H)

    # sample-from-anchor alignment: slot k predicts x[a+k+1], teacher at a+k, prev = x[a+k]
    labels = anchors[:, :, None] + 1 + torch.arange(gamma, device=h.device)
    safe = torch.where(keep[:, :, None], labels.clamp(max=s - 1), torch.zeros_like(labels))
    target_ids = input_ids.gather(1, safe.view(b, -1)).view(b, n, gamma)
    eval_mask = (labels < s) & loss_mask.bool().gather(1, safe.view(b, -1)).view(b, n, gamma) & keep[:, :, None]
    eval_mask = torch.cumprod(eval_mask.int(), -1).bool()
    prev = torch.cat([input_ids.gather(1, anchors)[:, :, None], target_ids[:, :, :-1]], -1)
    e = draft.markov_head.markov_w1(prev)  # (B, A, γ, r)
    draft_logits = draft.lm_head(h) + draft.markov_head.markov_w2(e)  # (B, A, γ, V) materialised
    teacher_pos = (safe - 1).clamp(min=0)
    with torch.no_grad():
        aligned = draft.lm_head(target_last_hidden.gather(
            1, teacher_pos.view(b, -1, 1).expand(-1, -1, target_last_hidden.shape[-1])).view(b, n, gamma, -1))
    conf = draft.confidence_head.proj(torch.cat([h, e], -1)).squeeze(-1).float()

    w = eval_mask.float() * torch.exp(-torch.arange(gamma, device=h.device, dtype=torch.float32) / decay_gamma)
    den = w.sum().clamp_min(1e-6)
    v = draft_logits.shape[-1]
    ce = F.cross_entropy(draft_logits.float().view(-1, v), target_ids.view(-1), reduction="none").view_as(w)
    flat_d, flat_t = draft_logits.view(-1, v), aligned.view(-1, v)
    l1 = torch.cat([checkpoint(_l1_chunk, flat_d[i:i + chunk], flat_t[i:i + chunk], use_reentrant=False)
                    for i in range(0, flat_d.shape[0], chunk)]).view_as(w)
    alpha = (1 - 0.5 * l1.detach()).clamp(0, 1)
    bce = F.binary_cross_entropy_with_logits(conf, alpha, reduction="none")
    return (0.1 * (w * ce).sum() + 0.9 * (w * l1).sum() + 1.0 * (w * bce).sum()) / den
