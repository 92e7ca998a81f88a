"""Engine formats: which client reads a draft directory, in which layer-id convention, through which keys.

Method plugins keep the method-specific tensor mapping (their ``export.py``); the conventions every exporter must
get right live here, once:

* **layer ids** — draftsmith counts *output-of-layer* ids, ``out(k)`` = HF ``hidden_states[k + 1]`` (``-1`` = the
  embedding output). vLLM and speculators count *input-of-layer* ids, ``in(k) = out(k − 1)``: every id is written
  ``+1``. SGLang, SpecForge and z-lab read ``out(k)`` as is. No engine can capture ``in(N)`` on an ``N``-layer
  target (the output of the last decoder layer: vLLM reserves that slot for the final, normed hidden state), so
  :func:`engine_layer_ids` refuses the last layer's id for every format — a draft trained on it cannot be served.
* **rotary** — :func:`whole_head_rotary_problem` and :func:`specforge_rope_parameters`: the rope a client
  would build differently from the draft (partial rotary, SpecForge's YaRN), found with the real clients.
* **formats** — :data:`FORMATS` names, per ``--format``, the engine(s) that read it, their convention and the
  config keys their loaders read (docs/formats.md has the versions and source files).
* **the format registry** — each plugin registers, through ``draftsmith_register_formats``, one
  :class:`FormatSpec` per (method, format): the writer behind ``draftsmith export --format``, and for a layout
  that can be read back, the reader and the detector :func:`draftsmith.load_draft` uses on a directory without
  draftsmith's own metadata (a public checkpoint, an engine export). A third party adds an engine the same way.

Torch-free at import (the rotary checks import torch when an exporter calls them).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Union

from .errors import ConfigError

OUTPUT_OF_LAYER = "output-of-layer"  # out(k): draftsmith, SGLang, SpecForge, z-lab
INPUT_OF_LAYER = "input-of-layer"  # in(k) = out(k - 1): vLLM, speculators


@dataclasses.dataclass(frozen=True)
class EngineFormat:
    """One ``draftsmith export --format`` value: the clients reading it and how they read layer ids."""

    name: str
    clients: tuple[str, ...]
    layer_id_convention: str
    id_keys: tuple[str, ...]  # where the clients read the captured layer ids
    methods: tuple[str, ...]


FORMATS: dict[str, EngineFormat] = {f.name: f for f in (
    EngineFormat("native", ("draftsmith", "SGLang", "SpecForge"), OUTPUT_OF_LAYER,
                 ("eagle_config.eagle_aux_hidden_state_layer_ids", "dflash_config.target_layer_ids",
                  "target_layer_ids"), ("eagle1", "eagle3", "dflash", "dspark")),
    EngineFormat("sglang", ("SGLang", "SpecForge"), OUTPUT_OF_LAYER,
                 ("eagle_config.eagle_aux_hidden_state_layer_ids", "dflash_config.target_layer_ids"),
                 ("eagle3", "dflash", "dspark")),
    EngineFormat("vllm", ("vLLM",), INPUT_OF_LAYER,
                 ("eagle_aux_hidden_state_layer_ids", "dflash_config.target_layer_ids (+1 by vLLM)",
                  "target_layer_ids (+1 by vLLM)"), ("eagle3", "dflash", "dspark")),
    EngineFormat("speculators", ("speculators", "vLLM"), INPUT_OF_LAYER,
                 ("eagle_aux_hidden_state_layer_ids", "aux_hidden_state_layer_ids"), ("eagle3", "dflash", "dspark")),
    EngineFormat("zlab", ("z-lab dflash", "vLLM", "SGLang"), OUTPUT_OF_LAYER,
                 ("dflash_config.target_layer_ids",), ("dflash",)),
)}


ImportRef = Union[str, Callable[..., Any]]  # "module:function" (imported on first use) or the function


@dataclasses.dataclass(frozen=True)
class FormatSpec:
    """One checkpoint layout a method's drafts can be written in and/or read from.

    * ``method`` — the draft method (``eagle3``, ``dflash``, …; ``eagle2`` shares ``eagle1``'s formats);
      ``name`` — the ``--format`` value.
    * ``writer`` — ``f(draft, out_dir, *, target=None) -> Path``: writes ``draft`` into the (new or empty)
      ``out_dir``; ``target`` names the verifier for formats that record it. ``None``: read-only layout.
    * ``reader`` — ``f(path: Path, config: dict) -> draft``: the draft (this method's draft class, fp32, on CPU)
      from a directory in this layout, weights from safetensors only. ``None``: write-only.
    * ``detect`` — ``f(config: dict) -> bool``: does a ``config.json`` hold this layout? Must be cheap and
      torch-free; needed with a reader.
    * ``clients`` / ``layer_id_convention`` / ``summary`` — documentation (``draftsmith plugins --json``).
    * ``refusal`` — set (with neither writer nor reader) when the engine exists but cannot run this method's
      drafts: the one line ``draftsmith export --format`` answers, saying why and what to use instead.

    Callables may be ``"module:function"`` strings, imported on first use.
    """

    method: str
    name: str
    writer: ImportRef | None = None
    reader: ImportRef | None = None
    detect: ImportRef | None = None
    clients: tuple[str, ...] = ()
    layer_id_convention: str = OUTPUT_OF_LAYER
    summary: str = ""
    refusal: str = ""
    plugin: str | None = None
    distribution: str | None = None
    version: str | None = None

    def __post_init__(self) -> None:
        for field in ("method", "name"):
            value = getattr(self, field)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"FormatSpec.{field} must be a non-empty string, got {value!r}")
        if self.refusal and (self.writer is not None or self.reader is not None):
            raise ValueError(f"format {self.method}/{self.name}: a refusal has no writer or reader")
        if self.writer is None and self.reader is None and not self.refusal:
            raise ValueError(f"format {self.method}/{self.name} has neither a writer nor a reader (nor a refusal)")
        if self.reader is not None and self.detect is None:
            raise ValueError(f"format {self.method}/{self.name} has a reader but no detect function")
        if self.layer_id_convention not in (OUTPUT_OF_LAYER, INPUT_OF_LAYER):
            raise ValueError(f"format {self.method}/{self.name}: layer_id_convention must be {OUTPUT_OF_LAYER!r} "
                             f"or {INPUT_OF_LAYER!r}, got {self.layer_id_convention!r}")
        object.__setattr__(self, "clients", tuple(self.clients))

    def load_writer(self) -> Callable[..., Any]:
        if self.refusal:
            raise ConfigError(self.refusal)
        if self.writer is None:
            raise ConfigError(f"the {self.name!r} format of {self.method} is read-only (no writer)")
        return _load(self.writer)

    def load_reader(self) -> Callable[..., Any]:
        if self.reader is None:
            raise ConfigError(f"the {self.name!r} format of {self.method} is write-only (no reader)")
        return _load(self.reader)

    def matches(self, config: dict[str, Any]) -> bool:
        return self.detect is not None and bool(_load(self.detect)(config))

    def with_provenance(self, plugin: str | None, distribution: str | None, version: str | None) -> "FormatSpec":
        return dataclasses.replace(self, plugin=plugin, distribution=distribution, version=version)

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "name": self.name, "writes": self.writer is not None,
                "reads": self.reader is not None, "refusal": self.refusal or None, "clients": list(self.clients),
                "layer_id_convention": self.layer_id_convention, "summary": self.summary,
                "plugin": self.plugin, "distribution": self.distribution, "version": self.version}


def _load(ref: Any) -> Any:
    if isinstance(ref, str):
        from .spec import import_object

        return import_object(ref)
    return ref


def speculators_verifier(target: str | None, block: dict[str, Any]) -> dict[str, Any]:
    """``speculators_config.verifier`` of a speculators export: ``target`` (``--target``), else where the draft's
    target was loaded from (the draft block's ``target_name_or_path``). speculators' loader reads the verifier's
    config (and, for block drafts, its embedding, ``lm_head`` and final norm) from that path, so a draft that
    records none and gets none is refused."""
    verifier = target or block.get("target_name_or_path")
    if not verifier:
        raise ConfigError("the 'speculators' format names its verifier: pass --target with the target model's "
                          "directory or hub id (this draft does not record where its target was loaded from)")
    return {"name_or_path": str(verifier), "architectures": list(block.get("target_architectures") or [])}


def speculators_layer_fields(cfg: Any) -> dict[str, Any]:
    """The decoder-layer keys every speculators ``transformer_layer_config`` holds (speculators builds the
    draft layer's HF config from them); each method adds its ``model_type``, architecture and own keys."""
    rope = dict(cfg.rope_parameters or {})
    return {
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers, "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads, "head_dim": cfg.head_dim, "hidden_act": cfg.hidden_act,
        "rms_norm_eps": cfg.rms_norm_eps, "max_position_embeddings": cfg.max_position_embeddings,
        "rope_parameters": rope, "rope_theta": rope.get("rope_theta", 10000.0),
        "attention_bias": bool(cfg.attention_bias),
        "pad_token_id": cfg.pad_token_id, "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
        "tie_word_embeddings": False,
    }


def uncapturable_ids(layer_ids: Iterable[int], num_target_layers: int) -> list[int]:
    """The output-of-layer ids no engine can capture on an ``N``-layer target: outside ``[-1, N − 2]``."""
    return [int(i) for i in layer_ids if not -1 <= int(i) <= num_target_layers - 2]


def sglang_dflash_causality_problem(causal: bool, layer_types: Iterable[str]) -> str | None:
    """Why SGLang would run a DFlash draft with other in-block attention than it was trained with, or None.

    SGLang (``srt/models/dflash.py``) decides in-block causality from ``layer_types`` alone: full attention →
    bidirectional blocks, sliding attention → causal blocks; z-lab and vLLM read ``is_causal`` instead."""
    sliding = set(layer_types) == {"sliding_attention"}
    if causal == sliding:
        return None
    return (f"a {'causal' if causal else 'bidirectional'} DFlash draft with "
            f"{'full-attention' if not sliding else 'sliding-window'} layers: SGLang would run its blocks "
            f"{'bidirectionally' if not sliding else 'causally'} (it reads causality from layer_types only); "
            f"serve it with --format native/vllm (z-lab, vLLM)")


def whole_head_rotary_problem(cfg: Any, fmt: str, clients: str) -> str | None:
    """Why a draft would serve with other positions in clients that rotate the whole head, or None.

    A draft copies its target's rotary fraction (Qwen3.5 / Qwen3-Next 0.25, GLM-4 MoE 0.5): it rotates
    ``2·len(inv_freq)`` of its ``head_dim`` dims. speculators 0.9.0, SpecForge 0.2.0 and z-lab 0.1.0 load such a
    config without a word and rotate every dim (measured: their logits differ by 5e-3..7e-2 from ours). A rope
    that covers the whole head with zero frequencies (Gemma 4's ``proportional``) serves fine."""
    from .conventions import partial_rotary_factor
    from .nn.rotary import compute_inv_freq  # torch, imported only by exporters

    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    rotated = 2 * int(compute_inv_freq(cfg, head_dim)[0].numel())
    if rotated == head_dim:
        return None
    return (f"the {fmt!r} format's clients ({clients}) rotate the whole head: this draft rotates {rotated} of "
            f"its {head_dim} head dims (partial_rotary_factor {partial_rotary_factor(cfg)}, from the target) "
            f"and would serve with other positions; use --format vllm, or retrain with the draft option "
            f"rotary=full (--set draft.rotary=full) for a draft these clients serve")


def check_whole_head_rotary(cfg: Any, fmt: str, clients: str) -> None:
    """ConfigError with :func:`whole_head_rotary_problem`'s line when there is one (every writer of a layout
    whose clients rotate the whole head calls this)."""
    problem = whole_head_rotary_problem(cfg, fmt, clients)
    if problem:
        raise ConfigError(problem)


# rope types SpecForge 0.2.0's Llama EAGLE-3 head builds (modeling/draft/llama3_eagle.py ``_init_rope``)
SPECFORGE_ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")


def specforge_rope_parameters(rope: dict[str, Any]) -> dict[str, Any]:
    """``rope`` as SpecForge's EAGLE-3 head reads it, or ConfigError naming what it would misread.

    Its YaRN passes ``mscale`` / ``mscale_all_dim`` / ``beta_fast`` / ``beta_slow`` /
    ``original_max_position_embeddings`` through without defaults (absent: a TypeError at load) and rounds the correction range (transformers' ``truncate: true``).
    transformers' default attention factor ``0.1·ln(factor) + 1`` is exactly SpecForge's ratio with
    ``mscale = 1, mscale_all_dim = 0``, so those are written when the target sets neither."""
    rope = dict(rope)
    kind = rope.get("rope_type", "default")
    if kind not in SPECFORGE_ROPE_TYPES:
        raise ConfigError(f"the 'sglang' format's clients (SpecForge 0.2.0) know the rope types "
                          f"{', '.join(SPECFORGE_ROPE_TYPES)}, not this draft's {kind!r} (from the target): use "
                          f"--format speculators or vllm")
    if kind == "yarn":
        if rope.get("truncate", True) is False or rope.get("attention_factor") is not None:
            raise ConfigError("the 'sglang' format's clients (SpecForge 0.2.0) round YaRN's correction range and "
                              "derive its attention factor from mscale: this draft's YaRN (truncate: false or an "
                              "explicit attention_factor, from the target, e.g. gpt-oss) would serve with other "
                              "positions; use --format speculators or vllm")
        if not rope.get("original_max_position_embeddings"):
            raise ConfigError("the 'sglang' format needs YaRN's original_max_position_embeddings (SpecForge has "
                              "no default for it); this draft's rope has none")
        if not (rope.get("mscale") and rope.get("mscale_all_dim")):
            rope.update(mscale=1.0, mscale_all_dim=0.0)
        rope.setdefault("beta_fast", 32.0)  # transformers' defaults, which SpecForge does not apply
        rope.setdefault("beta_slow", 1.0)
    return rope


def check_capturable(layer_ids: Iterable[int], num_target_layers: int | None, fmt: str) -> None:
    """ConfigError when an id is the last decoder layer's output (``in(N)``: no engine captures it)."""
    ids = [int(i) for i in layer_ids]
    if num_target_layers is not None and num_target_layers - 1 in uncapturable_ids(ids, num_target_layers):
        raise ConfigError(
            f"the {fmt!r} format cannot serve target layer {num_target_layers - 1} (the last decoder layer's "
            f"output, in({num_target_layers}) in the engines' convention): engines capture only the inputs of "
            f"layers 0..{num_target_layers - 1}; in({num_target_layers}) is reserved for the final normed hidden state. "
            f"Retrain with target_layer_ids <= {num_target_layers - 2}.")


def engine_layer_ids(layer_ids: Iterable[int], num_target_layers: int | None, fmt: str) -> list[int]:
    """draftsmith's output-of-layer ids in the convention of format ``fmt`` (refusing uncapturable ids)."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown engine format {fmt!r}; known: {sorted(FORMATS)}")
    ids = [int(i) for i in layer_ids]
    check_capturable(ids, num_target_layers, fmt)
    return [i + 1 for i in ids] if FORMATS[fmt].layer_id_convention == INPUT_OF_LAYER else ids
