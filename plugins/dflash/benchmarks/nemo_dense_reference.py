"""A re-implementation, from its description (nemo-automodel.md §2.4, §3.4), of NeMo AutoModel's DFlash
*dense-mask* training path — the baseline our training step is compared with. It reuses a draftsmith draft's
weights but computes the way that path does:

* the fused context ``hidden_norm(fc(target_hidden))`` and, per layer, keys/values ``cat(k/v_proj(ctx),
  k/v_proj(noise))``, per-head q/k norm, rotary over ``[context positions | block positions]`` (queries take the
  trailing slice);
* attention through transformers' ``sdpa_attention_forward`` (the ``_attn_implementation="sdpa"`` interface)
  with a dense *additive* float mask ``[B, 1, N·B, S + N·B]`` — with a mask, transformers repeats the KV heads
  instead of using SDPA's GQA;
* logits of every block slot through the target lm_head, then ``DFlashDecayLoss``: CE on slots ``1..B−1``,
  weights ``exp(−(k−1)/γ)`` × label mask, ``Σ w·nll / (Σ w + 1e-6)``.

Not a test oracle (the tests compare against explicit per-block references); a timing baseline only, and not a
measurement of NeMo: the real package is timed by ``benchmarks/train_step.py --method dflash --vs nemo`` (this
module is its labelled fallback when ``nemo_automodel`` is not installed).
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from draftsmith.nn.rotary import rotate_half


def dense_additive_mask(anchors: torch.Tensor, keep: torch.Tensor, block_size: int, seq_len: int,
                        dtype: torch.dtype) -> torch.Tensor:
    """``[B, 1, N·B, S + N·B]``: 0 where visible (context before the kept anchor, own block), −inf elsewhere."""
    b, n = anchors.shape
    q_block = torch.arange(n * block_size, device=anchors.device) // block_size  # (N·B,)
    kv = torch.arange(seq_len + n * block_size, device=anchors.device)
    anchor_of_q = anchors[:, q_block]  # (B, N·B)
    ctx = (kv[None, None, :] < seq_len) & (kv[None, None, :] < anchor_of_q[:, :, None]) & keep[:, q_block, None]
    kv_block = (kv - seq_len).clamp(min=0) // block_size
    own = (kv[None, None, :] >= seq_len) & (kv_block[None, None, :] == q_block[None, :, None])
    visible = (ctx | own).unsqueeze(1)
    return torch.zeros(visible.shape, dtype=dtype, device=anchors.device).masked_fill(~visible, float("-inf"))


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos.unsqueeze(1) + rotate_half(x) * sin.unsqueeze(1)


def nemo_dense_loss(draft, heads, input_ids, loss_mask, target_hidden, anchors, keep, gamma: float = 7.0):
    """The dense-path loss for given anchors ``(B, N)`` / keep mask (same anchors as the draftsmith objective)."""
    cfg, bs = draft.config, draft.block_size
    b, s = input_ids.shape
    n = anchors.shape[1]
    # noise block [anchor, MASK × (bs−1)], padding blocks all MASK
    block = torch.full((b, n, bs), draft.mask_token_id, dtype=torch.long, device=input_ids.device)
    block[:, :, 0] = torch.where(keep, input_ids.gather(1, anchors), block[:, :, 0])
    with torch.no_grad():
        h = heads.embed_tokens(block.view(b, n * bs))  # (B, N·B, H)
    ctx = draft.hidden_norm(draft.fc(target_hidden))  # (B, S, H)
    positions = torch.cat([torch.arange(s, device=h.device).expand(b, -1),
                           (anchors[:, :, None] + torch.arange(bs, device=h.device)).view(b, -1)], dim=1)
    cos, sin = draft.rotary_emb(h, positions)  # (B, S + N·B, D)
    mask = dense_additive_mask(anchors, keep, bs, s, h.dtype)
    q_len, hd = n * bs, cfg.head_dim
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
    h = draft.norm(h)
    logits = heads.lm_head(h).view(b, n, bs, -1)  # every slot's logits
    # DFlashDecayLoss: slots 1..bs−1, decay weights × label mask, weighted mean
    idx = anchors[:, :, None] + torch.arange(bs, device=h.device)
    valid = (idx < s) & keep[:, :, None]
    labels = input_ids.gather(1, idx.clamp(max=s - 1).view(b, -1)).view(b, n, bs)
    valid = valid & loss_mask.bool().gather(1, idx.clamp(max=s - 1).view(b, -1)).view(b, n, bs)
    nll = F.cross_entropy(logits[:, :, 1:].float().reshape(-1, logits.shape[-1]), labels[:, :, 1:].reshape(-1),
                          reduction="none").view(b, n, bs - 1)
    w = torch.exp(-torch.arange(bs - 1, device=h.device, dtype=torch.float32) / gamma) * valid[:, :, 1:]
    return (w * nll).sum() / (w.sum() + 1e-6)
