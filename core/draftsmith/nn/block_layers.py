"""Block-drafter layers (DFlash, DSpark): KV-injection attention and the pre-norm decoder layer.

:class:`KVInjectionAttention` is Qwen3-style attention (q/k/v/o, per-head ``q_norm``/``k_norm``, GQA, rotary) whose
queries come from the block only and whose keys/values are ``[k/v_proj(context); k/v_proj(block)]`` with the
layer's *own* projections (+ ``k_norm`` on both). With a :class:`~draftsmith.nn.kv_cache.DraftKVCache` the context
keys/values are appended to the cache (incremental drafting) and the block's are not; the ``attention_mask`` is then
a dense mask over ``[cached + new context | block]`` or ``None``. :class:`BlockDecoderLayer`: ``h + attn(norm(h),
context)`` then ``h + mlp(norm(h))``; the context is *not* normed by the layer (it arrives normed by
``hidden_norm``). Numerics of transformers' ``Qwen3DecoderLayer`` (parity-tested).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .attention import blockwise_attention, grouped_attention, masked_sdpa
from .block_mask import BlockwiseMask, GroupedBlockMask
from .kv_cache import DraftKVCache
from .mlp import SwiGLUMLP
from .norm import RMSNorm
from .rotary import apply_rotary

PositionEmbeddings = tuple[torch.Tensor, torch.Tensor]  # (cos, sin), each (B, T, head_dim)


def head_dim_of(config: Any) -> int:
    """``config.head_dim``, else ``hidden_size // num_attention_heads``."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


class KVInjectionAttention(nn.Module):
    """Qwen3-style attention whose keys/values are ``[context; block]`` and queries the block only.

    Main difference with Qwen3Attention: the context rows (already fused target features) only pass through
    ``k_proj``/``v_proj`` (+ ``k_norm``, rotary at their own positions) — they produce no queries and are not
    updated by the layer.
    """

    def __init__(self, config: Any, layer_idx: int = 0) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.head_dim = head_dim_of(config)
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = getattr(config, "num_key_value_heads", None) or self.num_heads
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_attention_heads ({self.num_heads}) must be a multiple of "
                             f"num_key_value_heads ({self.num_kv_heads})")
        self.scaling = self.head_dim ** -0.5
        bias = bool(getattr(config, "attention_bias", False))
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=bias)
        eps = getattr(config, "rms_norm_eps", 1e-6)
        self.q_norm = RMSNorm(self.head_dim, eps=eps)  # per head, over head_dim (Qwen3)
        self.k_norm = RMSNorm(self.head_dim, eps=eps)

    def project_kv(self, x: torch.Tensor, position_embeddings: PositionEmbeddings) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys/values ``(B, Hk, T, D)`` of rows ``x`` ``(B, T, H)``: k_proj → k_norm → rotary; v_proj."""
        b, t, _ = x.shape
        k = self.k_norm(self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = position_embeddings
        return apply_rotary(k, cos, sin), v

    def forward(self, hidden_states: torch.Tensor, context: torch.Tensor | None,
                position_embeddings: PositionEmbeddings, context_position_embeddings: PositionEmbeddings | None = None,
                attention_mask: torch.Tensor | None = None, cache: DraftKVCache | None = None) -> torch.Tensor:
        """``hidden_states`` (B, Q, H) block rows; ``context`` (B, C, H) fused target features (C may be 0 or
        ``None``); ``position_embeddings`` for the block rows, ``context_position_embeddings`` for the context rows.
        ``attention_mask``: bool (True = attend) or additive float, ``(B, 1, Q, C_total + Q)`` where ``C_total``
        includes cached rows; ``None`` = every query sees every key. Returns (B, Q, H)."""
        b, q_len, _ = hidden_states.shape
        q = self.q_norm(self.q_proj(hidden_states).view(b, q_len, self.num_heads, self.head_dim)).transpose(1, 2)
        cos, sin = position_embeddings
        q = apply_rotary(q, cos, sin)  # (B, Hq, Q, D)
        k_blk, v_blk = self.project_kv(hidden_states, position_embeddings)  # (B, Hk, Q, D)

        k_ctx = v_ctx = None
        if context is not None and context.shape[1] > 0:
            if context_position_embeddings is None:
                raise ValueError("context rows need context_position_embeddings")
            k_ctx, v_ctx = self.project_kv(context, context_position_embeddings)  # (B, Hk, C, D)
        if cache is not None:
            if k_ctx is not None:
                k_ctx, v_ctx = cache.append(self.layer_idx, k_ctx, v_ctx)
            else:
                k_ctx, v_ctx = cache.get(self.layer_idx)
        if isinstance(attention_mask, (BlockwiseMask, GroupedBlockMask)):
            k = v = None  # keys stay split: context and blocks are scored separately
        elif k_ctx is not None:
            k, v = torch.cat([k_ctx, k_blk], dim=2), torch.cat([v_ctx, v_blk], dim=2)  # (B, Hk, C+Q, D)
        else:
            k, v = k_blk, v_blk

        if isinstance(attention_mask, (BlockwiseMask, GroupedBlockMask)):
            if cache is not None:
                raise ValueError("the grouped/blockwise backends are for training forwards; decode with a dense "
                                 "mask or None")
            structured = blockwise_attention if isinstance(attention_mask, BlockwiseMask) else grouped_attention
            out = structured(q, k_ctx, v_ctx, k_blk, v_blk, attention_mask, self.scaling)
        else:
            out = masked_sdpa(q, k, v, attention_mask, self.scaling)  # (B, Hq, Q, D)
        out = out.transpose(1, 2).reshape(b, q_len, self.num_heads * self.head_dim)
        return self.o_proj(out)



class BlockDecoderLayer(nn.Module):
    """Pre-RMSNorm decoder layer with KV-injection attention and a SwiGLU MLP (Qwen3DecoderLayer numerics)."""

    def __init__(self, config: Any, layer_idx: int = 0) -> None:
        super().__init__()
        eps = getattr(config, "rms_norm_eps", 1e-6)
        self.self_attn = KVInjectionAttention(config, layer_idx)
        self.mlp = SwiGLUMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=eps)

    def forward(self, hidden_states: torch.Tensor, context: torch.Tensor | None,
                position_embeddings: PositionEmbeddings, context_position_embeddings: PositionEmbeddings | None = None,
                attention_mask: torch.Tensor | None = None, cache: DraftKVCache | None = None) -> torch.Tensor:
        h = hidden_states  # (B, Q, H)
        h = h + self.self_attn(self.input_layernorm(h), context, position_embeddings, context_position_embeddings,
                               attention_mask, cache)
        return h + self.mlp(self.post_attention_layernorm(h))

