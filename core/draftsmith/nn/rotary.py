"""Rotary position embedding for drafts, driven by the *target's* rope configuration.

The inverse frequencies come from transformers' ``ROPE_INIT_FUNCTIONS`` (never hand-rolled), so every rope
type the target uses — default, linear, dynamic, llama3, YaRN (with its attention/concentration factor),
longrope — gives the draft the same positions as the target. ``inv_freq`` stays fp32 after ``.to(bf16)`` and
chained casts: a bf16 ``inv_freq`` dephases rotary at large positions and erodes acceptance.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..conventions import partial_rotary_factor, rope_parameters_of  # noqa: F401  (rope_parameters_of: public here too)
from ..errors import ConfigError


def _default_inv_freq(config: Any, head_dim: int) -> tuple[torch.Tensor, float]:
    params = rope_parameters_of(config)
    base = float(params["rope_theta"])
    factor = partial_rotary_factor(config)  # on the config, or inside rope_parameters (transformers 5)
    dim = int(head_dim * factor)
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).to(torch.float32) / dim))
    return inv_freq, 1.0


def compute_inv_freq(config: Any, head_dim: int | None = None) -> tuple[torch.Tensor, float]:
    """``(inv_freq (fp32), attention_scaling)`` for ``config`` through transformers' rope init functions."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    head_dim = head_dim or getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    params = rope_parameters_of(config)
    rope_type = params.get("rope_type", "default")
    if rope_type == "default":
        return _default_inv_freq(config, head_dim)
    if rope_type not in ROPE_INIT_FUNCTIONS:
        raise ConfigError(f"unsupported rope_type {rope_type!r}; transformers knows {sorted(ROPE_INIT_FUNCTIONS)}")
    cfg = copy.copy(config)
    cfg.head_dim = head_dim
    cfg.rope_parameters = params
    inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](cfg, None)
    return inv_freq.to(torch.float32), float(scaling)


class RotaryEmbedding(nn.Module):
    """``forward(x, position_ids) -> (cos, sin)`` each ``(B, T, head_dim)`` in ``x``'s dtype, computed in fp32."""

    def __init__(self, config: Any, head_dim: int | None = None) -> None:
        super().__init__()
        self._rope_config, self._head_dim = config, head_dim  # for reset_inv_freq
        inv_freq, self.attention_scaling = compute_inv_freq(config, head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def reset_inv_freq(self) -> None:
        """Recompute ``inv_freq`` exactly, in fp32.  transformers 5 builds models on the meta device and re-creates
        non-persistent buffers as placeholders (in the load dtype) when loading, then re-initialises only its own
        rotary classes: a draft's ``_init_weights`` calls this for ours."""
        inv_freq, self.attention_scaling = compute_inv_freq(self._rope_config, self._head_dim)
        device = self.inv_freq.device if self.inv_freq.device.type != "meta" else None
        self.inv_freq = inv_freq.to(device=device)

    def _apply(self, fn, recurse: bool = True):  # keep inv_freq fp32 through .to(dtype) / .half() / ...
        inv_freq = self.inv_freq
        out = super()._apply(fn, recurse)
        # restore the exact fp32 values (a bf16 round trip would lose them), on whatever device fn moved to
        self.inv_freq = inv_freq.to(device=self.inv_freq.device, dtype=torch.float32)
        return out

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = self.inv_freq.to(device=x.device, dtype=torch.float32)
        freqs = position_ids.to(torch.float32)[..., None] * inv_freq  # (B, T, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, D)
        cos = emb.cos() * self.attention_scaling
        sin = emb.sin() * self.attention_scaling
        return cos.to(x.dtype), sin.to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``(B, heads, T, D)`` by ``cos``/``sin`` ``(B, T, D)`` (HF ``rotate_half`` convention).
    With partial rotary, only the first ``cos.shape[-1]`` dims rotate."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    rot = cos.shape[-1]
    if rot == x.shape[-1]:
        return x * cos + rotate_half(x) * sin
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    return torch.cat((x_rot * cos + rotate_half(x_rot) * sin, x_pass), dim=-1)
