"""Target conventions: the one place that reads a target's HF config the way every draft needs it.

Every plugin and core itself go through these functions, so a rule is decided once:

* :func:`text_config` — the language-model config (``get_text_config(decoder=True)`` of multimodal wrappers,
  ``text_config``, else the config itself); :func:`num_target_layers`, :func:`eos_token_ids`.
* :func:`rope_parameters_of` — transformers 5 ``rope_parameters`` (older ``rope_theta`` + ``rope_scaling``
  normalised into the same dict); :func:`partial_rotary_factor` reads it from the config or the rope dict.
* :func:`draft_fields` — the sizes and conventions a draft copies from its target, under their Llama/Qwen3
  names: vocab, hidden/intermediate size, heads, ``head_dim``, activation, eps, ``max_position_embeddings``
  (the target's; 32768 when it has none), rope parameters incl. YaRN/llama3 and partial rotary, bias flags,
  special ids, init range.
* :func:`output_logit_transform` — the scale and soft-cap a target's forward applies after its ``lm_head``
  (Granite, Cohere, Gemma 2): teacher distributions must include them.
* :func:`validate_layer_ids` — output-of-layer ids (DESIGN §6: ``i`` = output of decoder layer ``i``, ``-1`` =
  the embedding output), one rule with named switches; :func:`validate_mask_token_id` — a reserved id inside
  the vocab, never pad or eos.
* :func:`read_config_json` — a local ``config.json`` as a dict, with one-line errors.

Torch-free (only ``json``): imported by light modules such as ``draftsmith.checkpoint``.
"""

from __future__ import annotations

import copy
import json
import operator
from pathlib import Path
from typing import Any, Iterable, Sequence

from .errors import ConfigError

DEFAULT_MAX_POSITION_EMBEDDINGS = 32768  # when a target config has none (Qwen3's default; engines size rotary by it)


# -- reading configs -------------------------------------------------------------------------------------------
def read_config_json(directory: str | Path, *, what: str = "directory", error: type[Exception] = ConfigError
                     ) -> dict[str, Any]:
    """``directory/config.json`` as a dict; ``error`` (one line) when the directory or file is missing or the
    JSON is invalid. ``what`` names the directory in the messages (``"target path"``, ``"draft directory"``)."""
    path = Path(directory)
    if not path.exists():
        raise error(f"{what} {str(path)!r} does not exist")
    if not path.is_dir():
        raise error(f"{what} {str(path)!r} is not a directory")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise error(f"{what} {str(path)!r} has no config.json")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise error(f"{config_file}: invalid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise error(f"{config_file}: the top level must be a JSON object")
    return config


def architectures_of(config: dict[str, Any], config_file: Any = "config.json") -> list[str]:
    """The ``architectures`` list of a config dict (non-empty list of strings), else a ConfigError."""
    archs = config.get("architectures")
    if not archs or not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise ConfigError(f"{config_file} has no 'architectures' list; cannot tell which draft applies")
    return archs


# -- the text config and its facts -----------------------------------------------------------------------------
def text_config(config: Any) -> Any:
    """The language-model config of a target (the config itself for text-only models)."""
    getter = getattr(config, "get_text_config", None)
    if callable(getter):
        try:
            text = getter(decoder=True)
        except TypeError:  # an older or third-party signature without ``decoder``
            text = getter()
        if text is not None:
            return text
    return getattr(config, "text_config", None) or config


def num_target_layers(config: Any) -> int:
    return int(text_config(config).num_hidden_layers)


def eos_token_ids(config: Any) -> tuple[int, ...]:
    """The config's ``eos_token_id`` (an int or a list) as a tuple of ints."""
    eos = getattr(config, "eos_token_id", None)
    if eos is None:
        return ()
    return (int(eos),) if isinstance(eos, int) else tuple(int(e) for e in eos)


def output_logit_transform(config: Any) -> tuple[float, float | None]:
    """``(scale, softcap)``: what a target's forward does to ``lm_head(final_hidden)`` before it returns logits,
    ``logits = softcap · tanh(scale · z / softcap)`` (no tanh when ``softcap`` is None).

    * ``scale``: Granite divides by ``logits_scaling`` (8 or 16 in released checkpoints), Cohere multiplies by
      ``logit_scale`` (0.0625); 1.0 elsewhere;
    * ``softcap``: ``final_logit_softcapping`` (Gemma 2: 30; Gemma 3/4 where set).

    A teacher distribution built from the raw ``lm_head`` output of such a target is 8× too sharp (Granite) or
    uncapped (Gemma 2): the objectives go through :meth:`draftsmith.method.TargetHeads.target_logits`."""
    text = text_config(config)
    scale = 1.0
    if getattr(text, "logits_scaling", None):
        scale /= float(text.logits_scaling)
    if getattr(text, "logit_scale", None) is not None and isinstance(text.logit_scale, (int, float)):
        scale *= float(text.logit_scale)
    cap = getattr(text, "final_logit_softcapping", None)
    return scale, (float(cap) if cap else None)


# Target families beyond the dense Llama shape whose decoder layers hand forward hooks a plain (B, T, H) hidden
# state, so a config-driven Llama-shaped draft reads them: MoE (Mixtral, Qwen2/3-MoE, GLM-4 MoE, MiniMax-M2),
# MLA (DeepSeek-V3, Kimi-K2's architecture), sliding + global layers with soft-capping and embedding scale
# (Gemma 2/3/4, OLMo 3) and hybrid linear attention (Qwen3-Next, Qwen3.5: the decoder rewinds their recurrent
# state). Each is backed by a row of the coverage matrix (tests/test_coverage_matrix.py, docs/coverage.md) for
# every first-party method; method plugins register the ones they serve.
MATRIX_FAMILIES = (
    "MixtralForCausalLM", "Qwen2MoeForCausalLM", "Qwen3NextForCausalLM", "Qwen3_5ForCausalLM",
    "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Gemma4ForCausalLM", "DeepseekV3ForCausalLM", "Glm4MoeForCausalLM",
    "Olmo2ForCausalLM", "Olmo3ForCausalLM", "GraniteForCausalLM", "SmolLM3ForCausalLM", "Ernie4_5ForCausalLM",
    "HunYuanDenseV1ForCausalLM", "MiniMaxM2ForCausalLM",
)


# Families transformers ships that the coverage matrix probes and no first-party draft serves, and why (named by
# ``draftsmith resolve`` when one is asked for).
UNSERVED_FAMILIES = {
    "DeepseekV4ForCausalLM": "DeepSeek-V4's decoder layers carry several residual streams (hyper-connections: "
                             "a (B, T, streams, H) hidden state, not the (B, T, H) every draft reads), and "
                             "transformers 5.24's cached multi-token forward fails on it, so no chain can be "
                             "verified; its coverage row fails (docs/coverage.md)",
}


def rope_parameters_of(config: Any) -> dict:
    """The rope parameters of a config as one dict with ``rope_type`` and ``rope_theta``.

    Targets with sliding and global layers (Gemma 3/4, OLMo 3) keep one rope per layer type,
    ``{"full_attention": {...}, "sliding_attention": {...}}``: a draft is a global-attention decoder, so it takes
    the full-attention layers' rope (Gemma 3: θ = 1e6; the sliding layers' local θ only spans their window)."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and params and all(isinstance(v, dict) for v in params.values()):
        params = dict(params.get("full_attention") or next(iter(params.values())))
    elif isinstance(params, dict) and params:
        params = dict(params)
    else:
        params = dict(getattr(config, "rope_scaling", None) or {})
        if "type" in params and "rope_type" not in params:
            params["rope_type"] = params.pop("type")
        params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    params.setdefault("rope_type", "default")
    return params


def full_attention_attr(config: Any, name: str) -> Any:
    """``config.<name>``; for configs whose layers differ (transformers' per-layer configs, Gemma 4: the global
    layers have their own ``head_dim``), the value of the first full-attention layer — the kind of layer a
    draft is. ``None`` when unset."""
    try:
        return getattr(config, name, None)
    except RuntimeError as exc:  # transformers' AmbiguousGlobalPerLayerAttributeError
        if "per-layer" not in str(exc):
            raise
    layer_types = list(getattr(config, "layer_types", None) or [])
    index = layer_types.index("full_attention") if "full_attention" in layer_types else 0
    return getattr(config.per_layer_config[index], name, None)


def partial_rotary_factor(config: Any) -> float:
    """The fraction of each head that rotates (config attribute, or inside ``rope_parameters``); 1.0 if unset."""
    factor = getattr(config, "partial_rotary_factor", None)
    if factor is None:
        factor = rope_parameters_of(config).get("partial_rotary_factor")
    return float(factor if factor is not None else 1.0)


ROTARY_CHOICES = ("target", "full")


def draft_fields(target_config: Any, *, rotary: str = "target") -> dict[str, Any]:
    """The fields every draft copies from its target, as ``PretrainedConfig`` keyword arguments.

    ``rotary`` (the ``draft.rotary`` option of every first-party method): ``target`` copies the target's rotary
    fraction; ``full`` rotates the draft's whole head (same rope type and θ). A draft is its own model, so either
    trains, and the choice matters only for serving: speculators, SpecForge / SGLang and z-lab rotate the whole
    head, so a partial-rotary target's draft serves there only with ``full`` (docs/formats.md).

    ``rope_parameters`` keeps every rope key of the target (YaRN, llama3, longrope ...) except the multimodal
    ``mrope*`` ones (drafts are text-only); a partial rotary factor other than 1 is written both inside
    ``rope_parameters`` (transformers 5) and as the ``partial_rotary_factor`` attribute (what
    :mod:`draftsmith.nn.rotary` and engines pinned to transformers 4 read). ``attention_bias`` biases q/k/v/o
    (Llama semantics), ``mlp_bias`` the MLP.
    """
    text = text_config(target_config)
    for name in ("hidden_size", "num_attention_heads", "intermediate_size", "vocab_size", "num_hidden_layers"):
        if getattr(text, name, None) is None:
            raise ConfigError(f"target config {type(text).__name__} has no {name!r}: cannot size a draft for it")
    heads = int(text.num_attention_heads)
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    if heads % kv_heads:
        raise ConfigError(f"num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}")
    if rotary not in ROTARY_CHOICES:
        raise ConfigError(f"draft option rotary must be one of {', '.join(ROTARY_CHOICES)}, got {rotary!r}")
    rope = {k: v for k, v in copy.deepcopy(rope_parameters_of(text)).items() if not k.startswith("mrope")}
    factor = partial_rotary_factor(text) if rotary == "target" else 1.0
    extra: dict[str, Any] = {}
    if factor != 1.0:
        rope["partial_rotary_factor"] = factor
        extra["partial_rotary_factor"] = factor
    else:
        rope.pop("partial_rotary_factor", None)
    eos = getattr(text, "eos_token_id", None)
    return {
        **extra,
        "vocab_size": int(text.vocab_size),
        "hidden_size": int(text.hidden_size),
        "intermediate_size": int(text.intermediate_size),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": int(full_attention_attr(text, "head_dim") or text.hidden_size // heads),
        "hidden_act": getattr(text, "hidden_act", None) or getattr(text, "hidden_activation", None) or "silu",
        "rms_norm_eps": float(getattr(text, "rms_norm_eps", None) or 1e-6),
        "max_position_embeddings": int(getattr(text, "max_position_embeddings", None)
                                       or DEFAULT_MAX_POSITION_EMBEDDINGS),
        "rope_parameters": rope,
        "attention_bias": bool(getattr(text, "attention_bias", False) or False),
        "mlp_bias": bool(getattr(text, "mlp_bias", False) or False),
        "pad_token_id": getattr(text, "pad_token_id", None),
        "bos_token_id": getattr(text, "bos_token_id", None),
        "eos_token_id": list(eos) if isinstance(eos, (list, tuple)) else eos,
        "initializer_range": float(getattr(text, "initializer_range", None) or 0.02),
    }


# -- validation ------------------------------------------------------------------------------------------------
def validate_layer_ids(layer_ids: Any, num_layers: int, *, name: str = "target_layer_ids",
                       allow_empty: bool = False, increasing: bool = False) -> list[int]:
    """Output-of-layer ids as a list of ints: each an integer (not a bool) in ``[-1, num_layers - 1]`` (``-1``
    = the embedding output), no duplicates; non-empty unless ``allow_empty``; strictly increasing when
    ``increasing`` (methods whose feature order is fixed by their checkpoint format). ConfigError otherwise."""
    if isinstance(layer_ids, (str, bytes)) or not isinstance(layer_ids, Iterable):
        raise ConfigError(f"{name} must be a list of integers, got {layer_ids!r}")
    ids = []
    for i in layer_ids:
        try:  # ints and int-like values (numpy / torch integers); never bools, floats or strings
            if isinstance(i, bool):
                raise TypeError
            ids.append(operator.index(i))
        except TypeError:
            raise ConfigError(f"{name} must be integers, got {i!r} in {list(layer_ids)}") from None
    if not ids and not allow_empty:
        raise ConfigError(f"{name} must not be empty")
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{name} must be distinct, got {ids} (duplicates)")
    bad = [i for i in ids if not -1 <= i < num_layers]
    if bad:
        raise ConfigError(f"{name} {bad} out of range for a {num_layers}-layer target (valid: -1 = embedding "
                          f"output, 0..{num_layers - 1} = output of that decoder layer)")
    if increasing and any(b <= a for a, b in zip(ids, ids[1:])):
        raise ConfigError(f"{name} must be strictly increasing, got {ids}")
    return ids


def validate_mask_token_id(mask_token_id: Any, vocab_size: int, *, pad_token_id: Any = None,
                           eos_token_ids: Sequence[int] = (), method: str = "this method",
                           example: str = "e.g. 151669 for Qwen3") -> int:
    """The mask token of a block drafter: an explicit int inside ``[0, vocab_size)``, never pad or an eos id."""
    if mask_token_id is None:
        raise ConfigError(f"{method} needs `mask_token_id`: a reserved token id (inside the target vocab, not "
                          f"pad/eos) whose embedding fills the block's draft slots, {example} (draft option "
                          f"mask_token_id; `draftsmith train` also takes the target tokenizer's declared "
                          f"mask_token, and this one declares none)")
    if isinstance(mask_token_id, bool) or not isinstance(mask_token_id, int):
        raise ConfigError(f"mask_token_id must be an int, got {mask_token_id!r}")
    if not 0 <= mask_token_id < int(vocab_size):
        raise ConfigError(f"mask_token_id {mask_token_id} is outside the target vocab [0, {int(vocab_size)})")
    if pad_token_id is not None and mask_token_id == pad_token_id:
        raise ConfigError(f"mask_token_id {mask_token_id} is the target's pad token id; pick a reserved id")
    if mask_token_id in set(eos_token_ids or ()):
        raise ConfigError(f"mask_token_id {mask_token_id} is one of the target's eos token ids; pick a reserved id")
    return mask_token_id


def validate_mask_token_for(mask_token_id: Any, target_config: Any, **kwargs: Any) -> int:
    """:func:`validate_mask_token_id` against a target config (its text config's vocab, pad and eos ids)."""
    text = text_config(target_config)
    return validate_mask_token_id(mask_token_id, int(text.vocab_size), pad_token_id=getattr(text, "pad_token_id", None),
                                  eos_token_ids=eos_token_ids(text), **kwargs)


def check_option_names(component: str, given: Iterable[str], known: Iterable[str], *, kind: str = "") -> None:
    """A ConfigError naming the unknown options of ``component`` and the accepted ones (a typo is never ignored);
    ``kind`` ("draft", "drafter") qualifies them in the message."""
    known = set(known)
    unknown = sorted(set(given) - known)
    if unknown:
        what = f"{kind} option(s)" if kind else "option(s)"
        raise ConfigError(f"{component}: unknown {what} {unknown}; accepted: {sorted(known)}")
