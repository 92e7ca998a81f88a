"""Draft configs for the EAGLE drafts, built from a target's HF config.

Both configs use ``model_type = "llama"``: the serving engines parse an EAGLE head's ``config.json`` with their Llama
config class, so every size the engine needs (``hidden_size``, heads, ``head_dim``, ``intermediate_size``,
``hidden_act``, ``rms_norm_eps``, rope) is written with its Llama name, and ``num_hidden_layers`` is the *draft's own*
depth (NeMo AutoModel keeps the target's depth there, which makes engines that size the head from it misbuild it).

Rope is written twice: ``rope_parameters`` (transformers >= 5) and ``rope_theta`` / ``rope_scaling`` (what engines
pinned to transformers 4 read; without ``rope_theta`` a Qwen3 head would silently fall back to theta 1e4).

What a draft copies from its target (sizes, rope incl. partial rotary, bias flags, special ids) and the layer-id
rule are core's target conventions (:func:`draftsmith.conventions.draft_fields`,
:func:`~draftsmith.conventions.validate_layer_ids`); the option tables are in registry.py.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from transformers import PretrainedConfig

from draftsmith.conventions import DEFAULT_MAX_POSITION_EMBEDDINGS
from draftsmith.errors import ConfigError


def draft_depth(options: dict[str, Any]) -> int:
    """Pop the draft depth from ``options`` (``num_hidden_layers``, or its aliases ``draft_num_hidden_layers`` —
    NeMo AutoModel's name — and ``num_draft_layers``); default 1."""
    given = {k: options.pop(k) for k in ("num_hidden_layers", "draft_num_hidden_layers", "num_draft_layers")
             if options.get(k) is not None}
    if len(set(given.values())) > 1:
        raise ConfigError(f"conflicting draft depths {given}")
    depth = next(iter(given.values()), 1)
    if isinstance(depth, bool) or int(depth) != depth or int(depth) < 1:
        raise ConfigError(f"draft depth must be an integer >= 1, got {depth!r}")
    return int(depth)


class _EagleConfigBase(PretrainedConfig):
    """Fields shared by the EAGLE-1 and EAGLE-3 draft configs (Llama names, see module docstring)."""

    model_type = "llama"

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 1
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = DEFAULT_MAX_POSITION_EMBEDDINGS
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    tie_word_embeddings: bool = False
    rope_parameters: dict | None = None
    partial_rotary_factor: float | None = None  # None = 1.0 (a field, so it survives save/load as an attribute)
    attention_bias: bool = False
    mlp_bias: bool = False
    target_layer_ids: list[int] | None = None

    def __post_init__(self, **kwargs):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        super().__post_init__(**kwargs)

    # --- serialisation: engine-readable extras ----------------------------------------------------------
    # The ``architectures`` written to config.json (engines dispatch on it); empty = the class name, as HF does.
    serialized_architectures: ClassVar[tuple[str, ...]] = ()

    def _engine_keys(self, out: dict[str, Any]) -> dict[str, Any]:
        params = dict(self.rope_parameters or {})
        out["rope_theta"] = params.get("rope_theta", 10000.0)
        if params.get("rope_type", "default") != "default":
            out["rope_scaling"] = {k: v for k, v in params.items() if k != "rope_theta"}
        if self.serialized_architectures:
            out["architectures"] = list(self.serialized_architectures)
        if out.get("dtype") is not None:
            out["torch_dtype"] = out["dtype"]
        for switch in ("norm_output", "fc_norm"):
            # EAGLE-3.1 switches, written only when on: SpecForge reads ``norm_output`` as "apply the final norm
            # before lm_head" (default true), the opposite of ours, so an explicit false would skip its norm
            if out.get(switch) is False:
                del out[switch]
        return out

    def to_json_string(self, use_diff: bool = True) -> str:
        """config.json text: HF's serialisation plus the engine-readable keys (rope_theta / rope_scaling, the
        engine architecture, torch_dtype)."""
        out = self._engine_keys(self.to_diff_dict() if use_diff else self.to_dict())
        return json.dumps(self._encode_special_floats(out), indent=2, sort_keys=True) + "\n"


class LlamaEagleConfig(_EagleConfigBase):
    """EAGLE-1/2 draft config. ``draft_num_hidden_layers`` mirrors ``num_hidden_layers`` (NeMo AutoModel's name);
    ``fc_bias`` biases the fusion layer (the original EAGLE head has one; NeMo's default is off)."""

    draft_num_hidden_layers: int | None = None
    fc_bias: bool = False

    def __post_init__(self, **kwargs):
        if self.draft_num_hidden_layers is None:
            self.draft_num_hidden_layers = self.num_hidden_layers
        if self.draft_num_hidden_layers != self.num_hidden_layers:
            raise ConfigError(f"draft_num_hidden_layers={self.draft_num_hidden_layers} != "
                              f"num_hidden_layers={self.num_hidden_layers}: both name the draft depth")
        super().__post_init__(**kwargs)


class LlamaEagle3Config(_EagleConfigBase):
    """EAGLE-3 draft config in the native layout SGLang and vLLM load (``LlamaForCausalLMEagle3``).

    ``draft_vocab_size`` sizes ``lm_head`` (``d2t``/``t2d`` map it to the target vocab when smaller than
    ``vocab_size``); ``target_hidden_size`` is the width of each captured target layer; ``num_aux_hidden_states``
    how many are fused by ``fc``; ``fc_norm`` / ``norm_output`` are the EAGLE-3.1 switches; ``eagle_config``
    carries ``eagle_aux_hidden_state_layer_ids`` in the engine's convention (see export.py).
    """

    serialized_architectures: ClassVar[tuple[str, ...]] = ("LlamaForCausalLMEagle3",)

    draft_vocab_size: int | None = None
    target_hidden_size: int | None = None
    num_aux_hidden_states: int = 3
    fc_norm: bool = False
    norm_output: bool = False
    eagle_config: dict | None = None

    def __post_init__(self, **kwargs):
        if self.draft_vocab_size is None:
            self.draft_vocab_size = self.vocab_size
        if self.target_hidden_size is None:
            self.target_hidden_size = self.hidden_size
        if not 1 <= self.draft_vocab_size <= self.vocab_size:
            raise ConfigError(f"draft_vocab_size={self.draft_vocab_size} must be in [1, vocab_size={self.vocab_size}]")
        if self.num_aux_hidden_states < 1:
            raise ConfigError(f"num_aux_hidden_states must be >= 1, got {self.num_aux_hidden_states}")
        super().__post_init__(**kwargs)
