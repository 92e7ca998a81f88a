"""A re-implementation of NeMo AutoModel's *eager* EAGLE-3 training step, for speed comparison only — not a
measurement of NeMo: the real package is timed by ``benchmarks/train_step.py --method eagle3 --vs nemo`` (this
module is its labelled fallback when ``nemo_automodel`` is not installed).

Written from the description in shared/reference/nemo-automodel.md §2.2/§3.2 (no NeMo code): the draft's weights
are used as they are, with NeMo's algorithm around them —

* target side: full-vocab target logits for every position, ``target_probs = softmax(logits[..., selected])``
  (fp32), ``position_mask = loss_mask ∧ argmax ∈ draft vocab``; logits, ids, mask and probs are shifted left by
  one with zero fill before the unroll and again after every step;
* attention: K/V GQA-expanded with ``repeat_interleave`` and appended to per-step lists; scores
  ``Q·K_0ᵀ·scale + additive causal/padding mask`` concatenated with the stacked diagonal scores of the later steps
  (einsum), an fp32 softmax over the ``T + s`` columns, then ``P[:, :T]·V_0 + einsum(P_diag, V_diag)``;
* loss: per step, draft logits for every position, masked soft CE normalised by the valid count, weighted
  ``0.8^i`` and divided by the weights' sum; accuracy bookkeeping as NeMo does.
"""

from __future__ import annotations

import torch

from draftsmith.nn.rotary import apply_rotary


def _shift(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x[:, 1:], torch.zeros_like(x[:, :1])], dim=1)


def _additive_causal_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    b, t = attention_mask.shape
    causal = torch.triu(torch.full((t, t), torch.finfo(dtype).min, dtype=dtype), diagonal=1)
    causal = causal[None, None].expand(b, 1, t, t)
    return causal + (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def _eager_ttt_attention(attn, x, cos, sin, mask, cache_k, cache_v):
    b, t, _ = x.shape
    q = attn.q_proj(x).view(b, t, attn.num_heads, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(b, t, attn.num_key_value_heads, attn.head_dim).transpose(1, 2)
    v = attn.v_proj(x).view(b, t, attn.num_key_value_heads, attn.head_dim).transpose(1, 2)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    g = attn.num_key_value_groups
    cache_k.append(k.repeat_interleave(g, dim=1))
    cache_v.append(v.repeat_interleave(g, dim=1))
    step = len(cache_k) - 1
    w = torch.matmul(q, cache_k[0].transpose(-2, -1)) * attn.scaling + mask
    if step:
        diag = torch.einsum("bhtd,sbhtd->bhts", q, torch.stack(cache_k[1:])) * attn.scaling
        w = torch.cat([w, diag], dim=-1)
    p = torch.softmax(w.float(), dim=-1).to(q.dtype)
    out = torch.matmul(p[..., :t], cache_v[0])
    if step:
        out = out + torch.einsum("bhts,sbhtd->bhtd", p[..., t:], torch.stack(cache_v[1:]))
    return attn.o_proj(out.transpose(1, 2).reshape(b, t, -1))


def nemo_eager_loss(draft, lm_head, batch, aux, final_hidden, ttt_steps):
    """Loss of one NeMo-style eager EAGLE-3 step (single-layer draft)."""
    ids, am, lm = batch["input_ids"], batch["attention_mask"], batch["loss_mask"]
    with torch.no_grad():
        logits_t = lm_head(final_hidden)  # (B, T, V): NeMo gets these from the target's CausalLM forward
        selected = draft.selected_token_ids()
        position_mask = (draft.t2d[logits_t.argmax(-1)] & lm.bool()) if draft.compresses_vocab else lm.bool()
        target_probs = torch.softmax(logits_t[..., selected].float(), dim=-1)
    ids, target_probs, position_mask = _shift(ids), _shift(target_probs), _shift(position_mask)
    hidden = draft.project_hidden_states(aux)
    layer = draft.midlayer
    cache_k, cache_v = [], []
    loss, total = 0.0, sum(0.8 ** i for i in range(ttt_steps))
    positions = torch.arange(ids.shape[1])[None].expand_as(ids)
    for step in range(ttt_steps):
        mask = _additive_causal_mask(am, hidden.dtype)  # NeMo's draft forward rebuilds it on every call
        embeds = draft.embed_tokens(ids)
        cos, sin = draft.rotary_emb(hidden, positions + step)
        residual = hidden
        fused = torch.cat([layer.input_layernorm(embeds), layer.hidden_norm(hidden)], dim=-1)
        hidden = residual + _eager_ttt_attention(layer.self_attn, fused, cos, sin, mask, cache_k, cache_v)
        x = layer.post_attention_layernorm(hidden)
        mlp = layer.mlp  # NeMo's MLP: separate gate / up / down projections
        hidden = hidden + mlp.down_proj(mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x))
        logits = draft.compute_logits(hidden)
        ce = -(target_probs * torch.log_softmax(logits.float(), dim=-1)).sum(-1)
        m = position_mask.float()
        loss = loss + (0.8 ** step) * (ce * m).sum() / m.sum().clamp_min(1.0)
        with torch.no_grad():
            _ = ((logits.argmax(-1) == target_probs.argmax(-1)) & position_mask).sum()
        if step + 1 < ttt_steps:
            ids, target_probs, position_mask = _shift(ids), _shift(target_probs), _shift(position_mask)
    return loss / total
