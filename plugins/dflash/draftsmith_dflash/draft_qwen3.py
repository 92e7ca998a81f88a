"""The DFlash draft model for Qwen3-shaped targets (``Qwen3DFlashDraftModel``) and its config.

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
from huggingface_hub.dataclasses import strict
from transformers import PreTrainedModel, Qwen3Config

from draftsmith.checkpoint import draft_metadata
from draftsmith.errors import ConfigError
from draftsmith.nn.block_attention import BlockBackboneMixin, BlockLayout
from draftsmith.nn.kv_cache import DraftKVCache
from draftsmith.nn.rotary import rope_parameters_of

from .options import check_options
from .registry import build_target_layer_ids

NATIVE_ARCHITECTURE = "DFlashDraftModel"
DRAFT_CLASS_PATH = "draftsmith_dflash.draft_qwen3:Qwen3DFlashDraftModel"


def _eos_ids(config: Any) -> set[int]:
    eos = getattr(config, "eos_token_id", None)
    if eos is None:
        return set()
    return {int(eos)} if isinstance(eos, int) else {int(e) for e in eos}


def validate_mask_token_id(mask_token_id: Any, vocab_size: int, pad_token_id: Any = None,
                           eos_token_ids: Any = ()) -> int:
    """The mask token must be an explicit reserved id inside the vocab, never pad or eos."""
    if mask_token_id is None:
        raise ConfigError("DFlash needs `mask_token_id`: a reserved token id (inside the target vocab, not pad/eos) "
                          "whose embedding fills the block's draft slots, e.g. 151669 for Qwen3")
    if isinstance(mask_token_id, bool) or not isinstance(mask_token_id, int):
        raise ConfigError(f"mask_token_id must be an int, got {mask_token_id!r}")
    if not 0 <= mask_token_id < vocab_size:
        raise ConfigError(f"mask_token_id {mask_token_id} is outside the target vocab [0, {vocab_size})")
    if pad_token_id is not None and mask_token_id == pad_token_id:
        raise ConfigError(f"mask_token_id {mask_token_id} is the target's pad token id; pick a reserved id")
    if mask_token_id in set(eos_token_ids or ()):
        raise ConfigError(f"mask_token_id {mask_token_id} is one of the target's eos token ids; pick a reserved id")
    return mask_token_id


@strict
class Qwen3DFlashConfig(Qwen3Config):
    """A Qwen3 config plus the DFlash fields (``num_hidden_layers`` = the draft's own depth)."""

    block_size: int = 16
    dflash_config: dict | None = None
    num_target_layers: int | None = None
    is_causal: bool = False
    mlp_bias: bool = False

    def __post_init__(self, **kwargs):
        # Engines put mask_token_id / target_layer_ids in dflash_config; older exports also at top level.
        dflash = dict(self.dflash_config or {})
        for key in ("mask_token_id", "target_layer_ids"):
            if key in kwargs:
                dflash.setdefault(key, kwargs.pop(key))
        dflash.setdefault("block_size", self.block_size)
        self.dflash_config = dflash
        super().__post_init__(**kwargs)

    @property
    def mask_token_id(self) -> int | None:
        return (self.dflash_config or {}).get("mask_token_id")

    @property
    def target_layer_ids(self) -> list[int]:
        return list((self.dflash_config or {}).get("target_layer_ids") or [])

    @property
    def causal(self) -> bool:
        """In-block causal attention (JetSpec variant); DFlash's default is bidirectional."""
        return bool((self.dflash_config or {}).get("causal", self.is_causal))

    @property
    def draft_sliding_window(self) -> int | None:
        """Context window of the draft's layers (all layers share one layer type), or ``None``."""
        types = set(self.layer_types or ["full_attention"])
        if types == {"full_attention"}:
            return None
        if types == {"sliding_attention"} and self.sliding_window:
            return int(self.sliding_window)
        raise ConfigError(f"DFlash drafts support all-full or all-sliding layers (with sliding_window set); "
                          f"got layer_types {self.layer_types} and sliding_window {self.sliding_window}")

    def check_dflash(self) -> None:
        if not isinstance(self.block_size, int) or self.block_size < 2:
            raise ConfigError(f"block_size must be an int >= 2 (anchor + at least one draft), got {self.block_size!r}")
        if self.dflash_config.get("block_size", self.block_size) != self.block_size:
            raise ConfigError(f"block_size {self.block_size} disagrees with dflash_config.block_size "
                              f"{self.dflash_config['block_size']}")
        if not self.target_layer_ids:
            raise ConfigError("DFlash config has no dflash_config.target_layer_ids")
        validate_mask_token_id(self.mask_token_id, self.vocab_size, self.pad_token_id, _eos_ids(self))
        self.draft_sliding_window  # noqa: B018 - raises on mixed layer types


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
    def build_draft_config(cls, target_config: Any, *, mask_token_id: int | None = None, block_size: int = 16,
                           num_draft_layers: int | None = None, num_hidden_layers: int | None = None,
                           target_layer_ids: list[int] | None = None, num_feature_layers: int | None = None,
                           causal: bool = False, sliding_window: int | None = None,
                           intermediate_size: int | None = None, **options: Any) -> Qwen3DFlashConfig:
        """The draft config for ``target_config``: Qwen3 dims and rope read from the target (text config of a
        multimodal wrapper), ``num_hidden_layers`` = draft depth (default 5), target layer ids from the DFlash
        rule unless given, ``mask_token_id`` required and validated against the target's vocab/pad/eos."""
        check_options("DFlash draft", options)  # method (training/decoding) options are accepted and ignored
        tc = getattr(target_config, "text_config", None) or target_config
        n_target = int(tc.num_hidden_layers)
        if num_draft_layers is not None and num_hidden_layers is not None and num_draft_layers != num_hidden_layers:
            raise ConfigError(f"num_draft_layers={num_draft_layers} and num_hidden_layers={num_hidden_layers} disagree")
        depth = num_draft_layers or num_hidden_layers or 5
        if sliding_window is not None and (isinstance(sliding_window, bool) or not isinstance(sliding_window, int)
                                           or sliding_window < 1):
            raise ConfigError(f"sliding_window must be a positive int (or unset), got {sliding_window!r}")
        validate_mask_token_id(mask_token_id, int(tc.vocab_size), getattr(tc, "pad_token_id", None), _eos_ids(tc))
        if target_layer_ids is None:
            target_layer_ids = build_target_layer_ids(n_target, depth, num_feature_layers=num_feature_layers)
        target_layer_ids = [int(i) for i in target_layer_ids]
        bad = [i for i in target_layer_ids if not -1 <= i < n_target]
        if not target_layer_ids or bad or len(set(target_layer_ids)) != len(target_layer_ids):
            raise ConfigError(f"target_layer_ids {target_layer_ids} must be distinct ids in [-1, {n_target - 1}] "
                              f"(-1 = embedding output) for a {n_target}-layer target")
        rope = {k: v for k, v in rope_parameters_of(tc).items() if not k.startswith("mrope")}
        dflash = {"block_size": block_size, "mask_token_id": mask_token_id, "target_layer_ids": target_layer_ids}
        if causal:
            dflash["causal"] = True
        heads = tc.num_attention_heads
        config = Qwen3DFlashConfig(
            vocab_size=int(tc.vocab_size), hidden_size=tc.hidden_size,
            intermediate_size=intermediate_size or tc.intermediate_size,
            num_hidden_layers=depth, num_attention_heads=heads,
            num_key_value_heads=getattr(tc, "num_key_value_heads", None) or heads,
            head_dim=getattr(tc, "head_dim", None) or tc.hidden_size // heads,
            hidden_act=getattr(tc, "hidden_act", "silu"),
            max_position_embeddings=getattr(tc, "max_position_embeddings", 32768),
            initializer_range=getattr(tc, "initializer_range", 0.02),
            rms_norm_eps=getattr(tc, "rms_norm_eps", 1e-6),
            rope_parameters=rope,
            attention_bias=bool(getattr(tc, "attention_bias", False)),
            mlp_bias=bool(getattr(tc, "mlp_bias", False)),
            use_sliding_window=sliding_window is not None, sliding_window=sliding_window,
            max_window_layers=0 if sliding_window is not None else depth,
            layer_types=["sliding_attention" if sliding_window is not None else "full_attention"] * depth,
            tie_word_embeddings=False, pad_token_id=getattr(tc, "pad_token_id", None),
            bos_token_id=getattr(tc, "bos_token_id", None), eos_token_id=getattr(tc, "eos_token_id", None),
            block_size=block_size, dflash_config=dflash, num_target_layers=n_target, is_causal=bool(causal),
            architectures=[NATIVE_ARCHITECTURE],
            **({"partial_rotary_factor": tc.partial_rotary_factor}
               if getattr(tc, "partial_rotary_factor", 1.0) not in (None, 1.0) else {}),
        )
        config.draftsmith = draft_metadata("dflash", DRAFT_CLASS_PATH, target_config,
                                           target_layer_ids=target_layer_ids, block_size=block_size,
                                           mask_token_id=mask_token_id)
        config.check_dflash()
        return config

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
        with open(path) as f:
            data = json.load(f)
        data["architectures"] = [NATIVE_ARCHITECTURE]
        with open(path, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
