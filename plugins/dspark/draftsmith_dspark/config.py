"""The DSpark draft config: a Qwen3 config (the draft's own layer shapes) plus the DSpark fields.

``build_dspark_config(target_config, **options)`` takes every size and convention from the target through
:func:`draftsmith.conventions.draft_fields` (hidden size, heads, head_dim, rope parameters incl. YaRN/llama3 and
partial rotary, eps, biases, vocab, special ids) and sets the DSpark fields NeMo AutoModel and the serving forks
read from ``config.json``: ``block_size``, ``mask_token_id``, ``target_layer_ids``, ``num_target_layers``,
``markov_rank``, ``markov_head_type``, ``enable_confidence_head``, ``confidence_head_with_markov``. The option
tables (:data:`DRAFT_OPTIONS`, :data:`OBJECTIVE_OPTIONS`, :data:`DRAFTER_OPTIONS`) are declared in the torch-free
registry module and re-exported here.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import Qwen3Config

from draftsmith.conventions import check_option_names, draft_fields, num_target_layers, validate_mask_token_for
from draftsmith.errors import ConfigError

from .markov_head import MARKOV_HEAD_TYPES
from .registry import (DRAFT_OPTIONS, DRAFTER_OPTIONS, OBJECTIVE_OPTIONS, build_target_layer_ids,
                       validate_target_layer_ids)


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


def build_dspark_config(target_config: Any, **options: Any) -> Qwen3DSparkConfig:
    """The draft config for ``target_config`` (see :data:`DRAFT_OPTIONS` for the options and defaults).

    Objective options (:data:`OBJECTIVE_OPTIONS`) are accepted and ignored, except ``confidence_head_alpha``: a
    draft trained without the confidence term gets no confidence head unless ``enable_confidence_head`` says so.
    """
    check_option_names("DSpark draft", options, set(DRAFT_OPTIONS) | set(OBJECTIVE_OPTIONS))
    opts = {k: options.get(k, v) for k, v in DRAFT_OPTIONS.items()}
    n_target = num_target_layers(target_config)
    mask_id = validate_mask_token_for(opts["mask_token_id"], target_config, method="DSpark")
    n_layers = opts["num_draft_layers"]
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
        raise ConfigError(f"num_draft_layers must be a positive int, got {n_layers!r}")
    if opts["target_layer_ids"] is not None:
        layer_ids = validate_target_layer_ids(opts["target_layer_ids"], n_target)
    else:
        layer_ids = build_target_layer_ids(n_target, opts["num_feature_layers"] or n_layers)
    enable_conf = opts["enable_confidence_head"]
    if enable_conf is None:
        enable_conf = float(opts["confidence_head_alpha"] if opts["confidence_head_alpha"] is not None else 1.0) > 0
    fields = draft_fields(target_config, rotary=opts["rotary"] or "target")
    # Qwen3Config (a strict dataclass) drops an unknown partial_rotary_factor keyword; the factor stays in
    # rope_parameters (what draftsmith.nn.rotary reads) and is set as an attribute below for older engines
    partial = fields.pop("partial_rotary_factor", None)
    if opts["intermediate_size"]:
        fields["intermediate_size"] = int(opts["intermediate_size"])
    markov_rank = int(opts["markov_rank"])
    config = Qwen3DSparkConfig(
        **fields,
        num_hidden_layers=n_layers,
        tie_word_embeddings=False,
        use_sliding_window=False,
        layer_types=["full_attention"] * n_layers,
        max_window_layers=n_layers,
        architectures=["Qwen3DSparkModel"],
        block_size=int(opts["block_size"]),
        num_anchors=int(opts["num_anchors"]),
        mask_token_id=mask_id,
        target_layer_ids=layer_ids,
        num_target_layers=n_target,
        markov_rank=markov_rank,
        markov_head_type=str(opts["markov_head_type"]),
        enable_confidence_head=bool(enable_conf),
        confidence_head_with_markov=bool(opts["confidence_head_with_markov"]) and markov_rank > 0,
        freeze_embeddings=bool(opts["freeze_embeddings"]),
    )
    if partial is not None:
        config.partial_rotary_factor = partial
    return config


__all__ = ["Qwen3DSparkConfig", "build_dspark_config", "DRAFT_OPTIONS", "OBJECTIVE_OPTIONS", "DRAFTER_OPTIONS"]
