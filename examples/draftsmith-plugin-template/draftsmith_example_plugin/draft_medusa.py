"""A Medusa-style draft: K residual heads over the target's final (post-norm) hidden state.

Head k (k = 1..K) maps the hidden state at position t to logits for token t + 1 + k through the target's own
frozen ``lm_head`` (bound by reference, never saved). Nothing but the heads is trained.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from .config import MedusaDraftConfig, build_medusa_config


class ResidualHead(nn.Module):
    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, hidden_size)
        nn.init.zeros_(self.linear.weight)  # start as identity: head k initially predicts like the target

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + nn.functional.silu(self.linear(h))


class MedusaDraftModel(PreTrainedModel):
    config_class = MedusaDraftConfig
    base_model_prefix = "medusa"

    def __init__(self, config: MedusaDraftConfig) -> None:
        super().__init__(config)
        self.heads = nn.ModuleList(ResidualHead(config.hidden_size) for _ in range(config.num_heads))
        self._lm_head: list[nn.Module] = []  # held in a list so it is not a registered (saved) submodule
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, ResidualHead):
            nn.init.zeros_(module.linear.weight)
            nn.init.zeros_(module.linear.bias)

    @classmethod
    def build_draft_config(cls, target_config: Any, **options: Any) -> MedusaDraftConfig:
        """Options: ``num_heads`` (3); see config.py."""
        return build_medusa_config(target_config, f"{cls.__module__}:{cls.__qualname__}", **options)

    def bind_lm_head(self, lm_head: nn.Module) -> None:
        self._lm_head[:] = [lm_head]

    def forward(self, final_hidden: torch.Tensor) -> torch.Tensor:
        """``final_hidden`` (B, T, H) → logits (B, T, K, V); [..., k, :] predicts token t + 2 + k."""
        if not self._lm_head:
            raise RuntimeError("MedusaDraftModel needs the target lm_head: call bind_lm_head(lm_head) first")
        return torch.stack([self._lm_head[0](head(final_hidden)) for head in self.heads], dim=2)
