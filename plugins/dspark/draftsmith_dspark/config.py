"""The DSpark draft config: a Qwen3 config (the draft's own layer shapes) plus the DSpark fields.

``build_dspark_config(target_config, **options)`` derives every size from the target config (hidden size,
heads, head_dim, rope parameters incl. YaRN, eps, biases, vocab) and sets the DSpark fields NeMo AutoModel
and the serving forks read from ``config.json``: ``block_size``, ``mask_token_id``, ``target_layer_ids``,
``num_target_layers``, ``markov_rank``, ``markov_head_type``, ``enable_confidence_head``,
``confidence_head_with_markov`` (methods.md §3.8 defaults: γ = 7, 5 layers, rank 256 vanilla).
"""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import Qwen3Config

from draftsmith.errors import ConfigError
from draftsmith.nn.rotary import rope_parameters_of

from .markov_head import MARKOV_HEAD_TYPES
from .registry import build_target_layer_ids, validate_target_layer_ids

# Options build_draft_config understands, with their defaults (None = derived from the target / required).
DRAFT_OPTIONS: dict[str, Any] = {
    "mask_token_id": None,  # required: a reserved id, never pad/eos (Qwen3: 151669)
    "num_draft_layers": 5,
    "target_layer_ids": None,  # default: registry.build_target_layer_ids(N, num_feature_layers)
    "num_feature_layers": None,  # default: num_draft_layers
    "block_size": 7,  # γ: drafts per block (sample-from-anchor: the anchor slot predicts too)
    "num_anchors": 512,
    "markov_rank": 256,  # 0 disables the Markov head
    "markov_head_type": "vanilla",
    "enable_confidence_head": None,  # default: confidence_head_alpha > 0 (True with the default 1.0)
    "confidence_head_with_markov": True,
    "freeze_embeddings": True,
    "intermediate_size": None,  # default: the target's
}
# Objective options that may arrive in the same option dict; the draft does not need them.
OBJECTIVE_OPTIONS = ("loss_decay_gamma", "ce_loss_alpha", "l1_loss_alpha", "confidence_head_alpha",
                     "loss_chunk_size", "seed", "attention_backend")


@strict
class Qwen3DSparkConfig(Qwen3Config):
    """Qwen3 layer shapes + DSpark fields (``model_type`` stays ``qwen3`` for engines that key on it)."""

    model_type = "qwen3"

    block_size: int = 7
    num_anchors: int = 512
    mask_token_id: int | None = None
    target_layer_ids: list[int] | None = None
    num_target_layers: int | None = None
    markov_rank: int = 256
    markov_head_type: str = "vanilla"
    enable_confidence_head: bool = True
    confidence_head_with_markov: bool = True
    freeze_embeddings: bool = True

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.block_size < 1:
            raise ConfigError(f"block_size must be >= 1, got {self.block_size}")
        if self.num_anchors < 1:
            raise ConfigError(f"num_anchors must be >= 1, got {self.num_anchors}")
        if self.markov_rank < 0:
            raise ConfigError(f"markov_rank must be >= 0 (0 disables the Markov head), got {self.markov_rank}")
        if self.markov_head_type not in MARKOV_HEAD_TYPES:
            raise ConfigError(f"markov_head_type must be one of {list(MARKOV_HEAD_TYPES)}, "
                              f"got {self.markov_head_type!r}")


def _eos_ids(config: Any) -> list[int]:
    eos = getattr(config, "eos_token_id", None)
    if eos is None:
        return []
    return [eos] if isinstance(eos, int) else list(eos)


def validate_mask_token_id(mask_token_id: Any, target_config: Any) -> int:
    """The mask id must be an explicit reserved id inside the vocab and never the pad or an eos id."""
    vocab = int(target_config.vocab_size)
    if mask_token_id is None:
        raise ConfigError("DSpark needs mask_token_id: a reserved token id (not pad/eos) whose embedding fills "
                          "the non-anchor block slots, e.g. 151669 for Qwen3 (set draft option mask_token_id)")
    if isinstance(mask_token_id, bool) or not isinstance(mask_token_id, int):
        raise ConfigError(f"mask_token_id must be an int, got {mask_token_id!r}")
    if not 0 <= mask_token_id < vocab:
        raise ConfigError(f"mask_token_id {mask_token_id} is outside the target vocab [0, {vocab - 1}]")
    if mask_token_id == getattr(target_config, "pad_token_id", None):
        raise ConfigError(f"mask_token_id {mask_token_id} is the target's pad_token_id; use a reserved id")
    if mask_token_id in _eos_ids(target_config):
        raise ConfigError(f"mask_token_id {mask_token_id} is an eos id of the target; use a reserved id")
    return mask_token_id


def _text_config(config: Any) -> Any:
    return getattr(config, "text_config", None) or config


def build_dspark_config(target_config: Any, **options: Any) -> Qwen3DSparkConfig:
    """The draft config for ``target_config`` (see :data:`DRAFT_OPTIONS` for the options and defaults)."""
    unknown = sorted(set(options) - set(DRAFT_OPTIONS) - set(OBJECTIVE_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown DSpark draft option(s) {unknown}; known: {sorted(DRAFT_OPTIONS)}")
    opts = {k: options.get(k, v) for k, v in DRAFT_OPTIONS.items()}
    tc = _text_config(target_config)
    n_target = int(tc.num_hidden_layers)
    mask_id = validate_mask_token_id(opts["mask_token_id"], tc)
    n_layers = opts["num_draft_layers"]
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
        raise ConfigError(f"num_draft_layers must be a positive int, got {n_layers!r}")
    if opts["target_layer_ids"] is not None:
        layer_ids = validate_target_layer_ids(opts["target_layer_ids"], n_target)
    else:
        layer_ids = build_target_layer_ids(n_target, opts["num_feature_layers"] or n_layers)
    enable_conf = opts["enable_confidence_head"]
    if enable_conf is None:
        enable_conf = float(options.get("confidence_head_alpha", 1.0)) > 0
    rope = {k: v for k, v in rope_parameters_of(tc).items()
            if not k.startswith("mrope") and k != "partial_rotary_factor"}
    heads = int(tc.num_attention_heads)
    return Qwen3DSparkConfig(
        vocab_size=int(tc.vocab_size),
        hidden_size=int(tc.hidden_size),
        intermediate_size=int(opts["intermediate_size"] or tc.intermediate_size),
        num_hidden_layers=n_layers,
        num_attention_heads=heads,
        num_key_value_heads=int(getattr(tc, "num_key_value_heads", None) or heads),
        head_dim=int(getattr(tc, "head_dim", None) or tc.hidden_size // heads),
        hidden_act=getattr(tc, "hidden_act", "silu"),
        max_position_embeddings=int(getattr(tc, "max_position_embeddings", 32768)),
        initializer_range=float(getattr(tc, "initializer_range", 0.02) or 0.02),
        rms_norm_eps=float(getattr(tc, "rms_norm_eps", 1e-6)),
        rope_parameters=rope,
        attention_bias=bool(getattr(tc, "attention_bias", False)),
        mlp_bias=bool(getattr(tc, "mlp_bias", False)),
        tie_word_embeddings=False,
        use_sliding_window=False,
        layer_types=["full_attention"] * n_layers,
        max_window_layers=n_layers,
        pad_token_id=getattr(tc, "pad_token_id", None),
        bos_token_id=getattr(tc, "bos_token_id", None),
        eos_token_id=getattr(tc, "eos_token_id", None),
        architectures=["Qwen3DSparkModel"],
        block_size=int(opts["block_size"]),
        num_anchors=int(opts["num_anchors"]),
        mask_token_id=mask_id,
        target_layer_ids=layer_ids,
        num_target_layers=n_target,
        markov_rank=int(opts["markov_rank"]),
        markov_head_type=str(opts["markov_head_type"]),
        enable_confidence_head=bool(enable_conf),
        confidence_head_with_markov=bool(opts["confidence_head_with_markov"]) and int(opts["markov_rank"]) > 0,
        freeze_embeddings=bool(opts["freeze_embeddings"]),
    )
