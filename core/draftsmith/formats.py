"""Engine formats: which client reads a draft directory, in which layer-id convention, through which keys.

Method plugins keep the method-specific tensor mapping (their ``export.py``); the conventions every exporter must
get right live here, once:

* **layer ids** — draftsmith counts *output-of-layer* ids, ``out(k)`` = HF ``hidden_states[k + 1]`` (``-1`` = the
  embedding output). vLLM and speculators count *input-of-layer* ids, ``in(k) = out(k − 1)``: every id is written
  ``+1``. SGLang, SpecForge and z-lab read ``out(k)`` as is. No engine can capture ``in(N)`` on an ``N``-layer
  target (the output of the last decoder layer: vLLM reserves that slot for the final, normed hidden state), so
  :func:`engine_layer_ids` refuses the last layer's id for every format — a draft trained on it cannot be served.
* **formats** — :data:`FORMATS` names, per ``--format``, the engine(s) that read it, their convention and the
  config keys their loaders read (docs/formats.md has the versions and source files).

Torch-free.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

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
                 ("eagle3", "dflash")),
    EngineFormat("vllm", ("vLLM",), INPUT_OF_LAYER,
                 ("eagle_aux_hidden_state_layer_ids", "dflash_config.target_layer_ids (+1 by vLLM)"),
                 ("eagle3", "dflash")),
    EngineFormat("speculators", ("speculators", "vLLM"), INPUT_OF_LAYER,
                 ("eagle_aux_hidden_state_layer_ids",), ("eagle3",)),
)}


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
