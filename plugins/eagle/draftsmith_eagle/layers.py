"""Llama-shaped building blocks of the EAGLE drafts (shared by EAGLE-1/2 and EAGLE-3).

Same numerics and parameter names as transformers' ``LlamaAttention`` / ``LlamaMLP`` / ``LlamaDecoderLayer``, so
engines load the weights and parity tests compare against the HF layers. Differences from Llama: the input width
of q/k/v is a parameter (EAGLE-3's first layer reads ``[embed ; hidden]``, 2H wide), attention goes through SDPA
with GQA instead of materialised repeated K/V, and an optional cache object decides the attention pattern
(incremental KV cache for drafting, TTT cache for EAGLE-3 training — see attention.py).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from draftsmith.nn.attention import sdpa_gqa
from draftsmith.nn.mlp import SwiGLUMLP
from draftsmith.nn.norm import RMSNorm
from draftsmith.nn.rotary import apply_rotary



# The Llama MLP of every draft layer (core's; same parameter names as transformers' ``LlamaMLP``).
EagleLlamaMLP = SwiGLUMLP


class EagleLlamaAttention(nn.Module):
    """GQA self-attention with rotary positions.

    ``attention_bias`` biases q/k/v/o (Llama semantics); a Qwen-style ``qkv_bias`` in the config biases q/k/v only.
    """

    def __init__(self, config: Any, layer_idx: int = 0, in_features: int | None = None) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.head_dim = config.head_dim
        self.scaling = self.head_dim ** -0.5
        in_features = in_features or config.hidden_size
        o_bias = bool(getattr(config, "attention_bias", False))
        qkv_bias = o_bias or bool(getattr(config, "qkv_bias", False))
        self.q_proj = nn.Linear(in_features, self.num_heads * self.head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(in_features, self.num_key_value_heads * self.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(in_features, self.num_key_value_heads * self.head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=o_bias)

    def forward(self, x: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                attention_mask: torch.Tensor | None = None, cache: Any = None) -> torch.Tensor:
        """``x (B, T, in)``; ``position_embeddings`` = rotary ``(cos, sin)`` each ``(B, T, D)``; ``attention_mask``
        boolean visibility / additive float ``(B|1, 1, T, Tk)`` or None (causal); ``cache`` a layer view of a
        :class:`KVCache` or :class:`TTTCache` (None: attend within ``x`` only)."""
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # (B, h, T, D)
        k = self.k_proj(x).view(b, t, self.num_key_value_heads, self.head_dim).transpose(1, 2)  # (B, kv, T, D)
        v = self.v_proj(x).view(b, t, self.num_key_value_heads, self.head_dim).transpose(1, 2)  # (B, kv, T, D)
        cos, sin = position_embeddings
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is None:
            out = sdpa_gqa(q, k, v, attention_mask, is_causal=attention_mask is None, scale=self.scaling)
        else:
            out = cache.attend(q, k, v, attention_mask, self.scaling)  # (B, h, T, D)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))  # (B, T, H)


class EagleLlamaDecoderLayer(nn.Module):
    """Pre-norm Llama decoder layer: ``h + attn(norm(h))`` then ``h + mlp(norm(h))``."""

    def __init__(self, config: Any, layer_idx: int = 0) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.self_attn = EagleLlamaAttention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = EagleLlamaMLP(config)

    def forward(self, hidden: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                attention_mask: torch.Tensor | None = None, cache: Any = None) -> torch.Tensor:
        hidden = hidden + self.self_attn(self.input_layernorm(hidden), position_embeddings, attention_mask, cache)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))  # (B, T, H)


class Eagle3FusedDecoderLayer(nn.Module):
    """EAGLE-3's first draft layer: attention reads ``[input_layernorm(embed) ; hidden_norm(h)]`` (2H wide, embedding
    first); the residual is the un-normalised hidden (SGLang/vLLM ``norm_before_residual=False``)."""

    def __init__(self, config: Any, layer_idx: int = 0) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.hidden_norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.self_attn = EagleLlamaAttention(config, layer_idx, in_features=2 * config.hidden_size)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = EagleLlamaMLP(config)

    def forward(self, embeds: torch.Tensor, hidden: torch.Tensor,
                position_embeddings: tuple[torch.Tensor, torch.Tensor],
                attention_mask: torch.Tensor | None = None, cache: Any = None) -> torch.Tensor:
        fused = torch.cat([self.input_layernorm(embeds), self.hidden_norm(hidden)], dim=-1)  # (B, T, 2H)
        hidden = hidden + self.self_attn(fused, position_embeddings, attention_mask, cache)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))  # (B, T, H)
