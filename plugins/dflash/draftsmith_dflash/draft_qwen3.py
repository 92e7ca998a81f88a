"""The DFlash draft model for Qwen3-shaped targets (``Qwen3DFlashDraftModel``; its config: config.py).

Main differences with a Qwen3 decoder: no embedding and no lm_head of its own (the target's are used, frozen,
by reference, and never saved); queries come from the block only (anchor + mask tokens); every layer attends
to the fused target context (``hidden_norm(fc(concat of captured target layers))``) as extra keys/values
projected by that layer's own ``k_proj``/``v_proj``; attention inside a block is bidirectional.

Saved layout (``save_pretrained``) is the z-lab / vLLM / SGLang DFlash checkpoint: ``config.json`` with
``architectures: ["DFlashDraftModel"]``, ``model_type: qwen3``, top-level ``block_size``, ``dflash_config
{block_size, mask_token_id, target_layer_ids}``, ``num_target_layers``, ``layer_types``, Qwen3 dims and the
``draftsmith`` block; tensors ``layers.*``, ``fc.weight``, ``hidden_norm.weight``, ``norm.weight``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from transformers import PreTrainedModel

from draftsmith.conventions import read_config_json
from draftsmith.errors import ConfigError
from draftsmith.nn.block_attention import BlockBackboneMixin, BlockLayout
from draftsmith.nn.kv_cache import DraftKVCache

from .config import NATIVE_ARCHITECTURE, Qwen3DFlashConfig, build_dflash_config  # noqa: F401  (public names)


class Qwen3DFlashDraftModel(BlockBackboneMixin, PreTrainedModel):
    """DFlash draft: ``forward(noise_embedding, position_ids, target_hidden, ...) -> (B, Q, H)`` final-normed
    hidden states of the block rows; logits come from the target's ``lm_head`` (:meth:`compute_logits`)."""

    config_class = Qwen3DFlashConfig
    base_model_prefix = "dflash"
    _no_split_modules = ["BlockDecoderLayer"]
    _supports_sdpa = True

    def __init__(self, config: Qwen3DFlashConfig) -> None:
        super().__init__(config)
        config.check_dflash()
        self._init_block_backbone(config, len(config.target_layer_ids), config.num_hidden_layers)
        self.post_init()

    # -- config ---------------------------------------------------------------------------------------------

    @classmethod
    def build_draft_config(cls, target_config: Any, **options: Any) -> Qwen3DFlashConfig:
        """The draft config for ``target_config`` (:func:`~draftsmith_dflash.config.build_dflash_config`; options:
        ``registry.DRAFT_OPTIONS``)."""
        return build_dflash_config(target_config, **options)

    @property
    def block_size(self) -> int:
        return int(self.config.block_size)

    @property
    def mask_token_id(self) -> int:
        return int(self.config.mask_token_id)

    @property
    def target_layer_ids(self) -> list[int]:
        return self.config.target_layer_ids

    # -- target heads (by reference, never registered, never saved) -----------------------------------------

    def bind_target_heads(self, embed_tokens: torch.nn.Module, lm_head: torch.nn.Module) -> None:
        """Use the target's frozen embedding and lm_head. Stored outside ``nn.Module`` registration so they are
        not parameters of the draft (not trained, not saved, not moved by ``.to()``)."""
        rows = embed_tokens.weight.shape[0]
        if self.mask_token_id >= rows:
            raise ConfigError(f"mask_token_id {self.mask_token_id} has no row in the target embedding ({rows} rows)")
        hidden = self.config.hidden_size
        if embed_tokens.weight.shape[1] != hidden or lm_head.weight.shape[1] != hidden:
            raise ConfigError(f"target heads of width {embed_tokens.weight.shape[1]}/{lm_head.weight.shape[1]} do not "
                              f"match the draft hidden size {self.config.hidden_size}")
        object.__setattr__(self, "_target_embed_tokens", embed_tokens)
        object.__setattr__(self, "_target_lm_head", lm_head)

    def _heads(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        embed, head = self.__dict__.get("_target_embed_tokens"), self.__dict__.get("_target_lm_head")
        if embed is None or head is None:
            raise ConfigError("the DFlash draft has no target embedding/lm_head bound: call bind_target_heads() "
                              "(the objective and drafter do this)")
        return embed, head

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Target embeddings of ``input_ids`` (no gradient: the target is frozen), in the draft's dtype."""
        embed, _ = self._heads()
        with torch.no_grad():
            return embed(input_ids.to(embed.weight.device)).to(device=self.fc.weight.device, dtype=self.fc.weight.dtype)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Target ``lm_head`` logits of draft hidden states (gradient flows to the draft, not the head)."""
        _, head = self._heads()
        return head(hidden_states.to(head.weight.dtype))

    # -- forward --------------------------------------------------------------------------------------------

    def block_layout(self, anchors: torch.Tensor, context_len: int, keep: torch.Tensor | None = None,
                     document_ids: torch.Tensor | None = None) -> BlockLayout:
        """The block layout of this draft's attention variant (bidirectional or causal, optional window)."""
        return BlockLayout(anchors, self.block_size, context_len, keep=keep, causal=self.config.causal,
                           sliding_window=self.config.draft_sliding_window, document_ids=document_ids)

    def forward(self, noise_embedding: torch.Tensor, position_ids: torch.Tensor,
                target_hidden: torch.Tensor | None = None, context_position_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, cache: DraftKVCache | None = None) -> torch.Tensor:
        """Block rows → final-normed hidden ``(B, Q, H)``; see :meth:`BlockBackboneMixin.backbone_forward`.
        ``target_hidden`` is ``(B, C, len(target_layer_ids)·H)``, the captured layers concatenated in order."""
        expected = len(self.target_layer_ids) * self.config.hidden_size
        if target_hidden is not None and target_hidden.shape[-1] != expected:
            raise ConfigError(f"target_hidden has width {target_hidden.shape[-1]}, expected {expected} "
                              f"({len(self.target_layer_ids)} layers {self.target_layer_ids} × "
                              f"{self.config.hidden_size})")
        if target_hidden is not None:
            target_hidden = target_hidden.to(self.fc.weight.dtype)
        return self.backbone_forward(noise_embedding, position_ids, target_hidden, context_position_ids,
                                     attention_mask, cache)

    # -- saving ---------------------------------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """``config.json`` + ``model.safetensors`` in the engines' DFlash layout (``architectures`` is the
        engines' ``DFlashDraftModel``, not this class name that transformers would write)."""
        super().save_pretrained(save_directory, *args, **kwargs)
        self.config.architectures = [NATIVE_ARCHITECTURE]
        path = os.path.join(save_directory, "config.json")
        data = read_config_json(save_directory, what="draft directory")
        data["architectures"] = [NATIVE_ARCHITECTURE]
        with open(path, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
