"""The base class every EAGLE draft shares: HF save/load plumbing, weight init, target-embedding binding, positions.

Sharded-weight helpers (``weight_of``, ``full_tensor``) come from :mod:`draftsmith.nn.weights`."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from draftsmith.errors import ConfigError
from draftsmith.nn.weights import full_tensor, weight_of  # noqa: F401  (full_tensor: public name)
from draftsmith.nn.rotary import RotaryEmbedding


def positions_for(batch: int, length: int, offset: int, position_ids: torch.Tensor | None,
                  device: torch.device) -> torch.Tensor:
    """``(B, T)`` absolute positions: the given ids, else ``offset + arange(T)``."""
    if position_ids is not None:
        return position_ids
    return (torch.arange(length, device=device) + offset)[None].expand(batch, length)


class EagleDraftModel(PreTrainedModel):
    """Base of the EAGLE drafts (a transformers ``PreTrainedModel``: ``save_pretrained`` writes config.json +
    model.safetensors, ``from_pretrained`` restores the module)."""

    base_model_prefix = ""
    supports_gradient_checkpointing = False
    _supports_sdpa = True
    _keys_to_ignore_on_load_unexpected = [r"rotary_emb\.inv_freq"]

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, RotaryEmbedding):
            module.reset_inv_freq()  # see its docstring: transformers leaves our inv_freq a placeholder

    # --- target embedding ------------------------------------------------------------------------------------
    def copy_embeddings_from_target(self, target_embeddings: Any) -> None:
        """Copy the target's token embedding (an ``nn.Embedding`` or its weight; a sharded ``DTensor`` weight is
        gathered with ``.full_tensor()`` first) into ``embed_tokens``."""
        weight = weight_of(target_embeddings).detach()
        own = self.embed_tokens.weight
        if tuple(weight.shape) != tuple(own.shape):
            raise ConfigError(f"target embedding has shape {tuple(weight.shape)}, the draft expects "
                              f"{tuple(own.shape)} (vocab_size x hidden_size)")
        with torch.no_grad():
            own.copy_(weight.to(device=own.device, dtype=own.dtype))

    def freeze_embeddings(self) -> None:
        """Stop training ``embed_tokens`` (EAGLE drafts keep the target's embedding by default)."""
        self.embed_tokens.weight.requires_grad_(False)
