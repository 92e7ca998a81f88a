"""The DFlash draft config (``Qwen3DFlashConfig``: a Qwen3 config plus the DFlash fields) and how it is built from
a target's config (``build_dflash_config``).

What a draft copies from its target (sizes, rope incl. partial rotary, bias flags, special ids), the layer-id
rule and the mask-token rule are core's target conventions (:mod:`draftsmith.conventions`); the option tables
(names and defaults) are declared in registry.py.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import Qwen3Config

from draftsmith.checkpoint import draft_metadata
from draftsmith.conventions import (check_option_names, draft_fields, num_target_layers, validate_layer_ids,
                                    validate_mask_token_for)
from draftsmith.errors import ConfigError

from .registry import DRAFT_OPTIONS, DRAFTER_OPTIONS, OBJECTIVE_OPTIONS, build_target_layer_ids

NATIVE_ARCHITECTURE = "DFlashDraftModel"
DRAFT_CLASS_PATH = "draftsmith_dflash.draft_qwen3:Qwen3DFlashDraftModel"
# the fields of draft_fields a DFlash config keeps (its own embedding/lm_head are the target's, never saved)
_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
           "head_dim", "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps",
           "rope_parameters", "attention_bias", "mlp_bias", "pad_token_id", "bos_token_id", "eos_token_id",
           "partial_rotary_factor")


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
        validate_mask_token_for(self.mask_token_id, self, method="DFlash")
        self.draft_sliding_window  # noqa: B018 - raises on mixed layer types


def build_dflash_config(target_config: Any, **options: Any) -> Qwen3DFlashConfig:
    """The draft config for ``target_config``: Qwen3 dims and rope from the target (:func:`draft_fields`),
    ``num_hidden_layers`` = draft depth (default 5), target layer ids from the DFlash rule unless given,
    ``mask_token_id`` required and validated against the target's vocab/pad/eos. Method (objective/drafter)
    options are accepted and ignored; unknown names are an error."""
    check_option_names("DFlash draft", options, set(DRAFT_OPTIONS) | set(OBJECTIVE_OPTIONS) | set(DRAFTER_OPTIONS),
                       kind="DFlash")
    opts = {**DRAFT_OPTIONS, **{k: v for k, v in options.items() if k in DRAFT_OPTIONS}}
    n_target = num_target_layers(target_config)
    # the depth has two names; unset (or None) falls back to the other, then to the table's default
    layers, hidden_layers = options.get("num_draft_layers"), opts["num_hidden_layers"]
    if layers is not None and hidden_layers is not None and layers != hidden_layers:
        raise ConfigError(f"num_draft_layers={layers} and num_hidden_layers={hidden_layers} disagree")
    depth = layers or hidden_layers or DRAFT_OPTIONS["num_draft_layers"]
    block_size, sliding_window, causal = opts["block_size"], opts["sliding_window"], bool(opts["causal"])
    if sliding_window is not None and (isinstance(sliding_window, bool) or not isinstance(sliding_window, int)
                                       or sliding_window < 1):
        raise ConfigError(f"sliding_window must be a positive int (or unset), got {sliding_window!r}")
    mask_token_id = validate_mask_token_for(opts["mask_token_id"], target_config, method="DFlash")
    ids = opts["target_layer_ids"]
    if ids is None:
        ids = build_target_layer_ids(n_target, depth, num_feature_layers=opts["num_feature_layers"])
    ids = validate_layer_ids(ids, n_target)
    fields = {k: v for k, v in draft_fields(target_config, rotary=opts["rotary"] or "target").items()
              if k in _FIELDS}
    if opts["intermediate_size"]:
        fields["intermediate_size"] = int(opts["intermediate_size"])
    dflash = {"block_size": block_size, "mask_token_id": mask_token_id, "target_layer_ids": ids}
    if causal:
        dflash["causal"] = True
    config = Qwen3DFlashConfig(
        **fields, num_hidden_layers=depth,
        use_sliding_window=sliding_window is not None, sliding_window=sliding_window,
        max_window_layers=0 if sliding_window is not None else depth,
        layer_types=["sliding_attention" if sliding_window is not None else "full_attention"] * depth,
        tie_word_embeddings=False, block_size=block_size, dflash_config=dflash, num_target_layers=n_target,
        is_causal=causal, architectures=[NATIVE_ARCHITECTURE],
    )
    config.draftsmith = draft_metadata("dflash", DRAFT_CLASS_PATH, target_config, target_layer_ids=ids,
                                       block_size=block_size, mask_token_id=mask_token_id)
    config.check_dflash()
    return config


def check_matches_draft(component: str, options: dict[str, Any], draft_config: Any) -> None:
    """Draft-shape options given to a component must agree with the draft it was handed."""
    facts = {"block_size": draft_config.block_size, "mask_token_id": draft_config.mask_token_id,
             "target_layer_ids": list(draft_config.target_layer_ids),
             "num_draft_layers": draft_config.num_hidden_layers}
    for name, actual in facts.items():
        given = options.get(name)
        if given is not None and (list(given) if name == "target_layer_ids" else given) != actual:
            raise ConfigError(f"{component}: option {name}={given!r} disagrees with the draft ({name}={actual!r}); "
                              f"{name} is fixed when the draft is built")
