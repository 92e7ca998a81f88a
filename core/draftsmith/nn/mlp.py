"""The SwiGLU MLP of Llama/Qwen3 decoder layers, sized by a config (``hidden_size``, ``intermediate_size``,
``hidden_act``, ``mlp_bias``); same parameter names as transformers' ``LlamaMLP``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class SwiGLUMLP(nn.Module):
    """``down(act(gate(x)) * up(x))`` (Llama/Qwen3 MLP)."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        from transformers.activations import ACT2FN

        bias = bool(getattr(config, "mlp_bias", False))
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=bias)
        self.act_fn = ACT2FN[getattr(config, "hidden_act", "silu")]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))

