"""Readers of public DFlash layouts (the inverse of export.py): a directory → :class:`Qwen3DFlashDraftModel`.

Registered as the ``reader`` of the ``zlab`` and ``speculators`` formats (registry.py), so
:func:`draftsmith.load_draft` — and ``eval --draft``, ``export --draft``, ``train --init-from`` — take a directory
without draftsmith's own ``draftsmith`` block:

* ``zlab`` — z-lab ``DFlashDraftModel`` (``dflash/model.py`` of z-lab ``dflash`` 0.1.0; also what SpecForge
  0.2.0, vLLM ``qwen3_dflash.py`` and SGLang ``srt/models/dflash.py`` read): Qwen3 dims at the top level,
  ``dflash_config {block_size, mask_token_id, target_layer_ids}`` as ``out(k)`` (each key also accepted at the top
  level, as z-lab's ``_draft_value`` does), ``num_target_layers``, ``layer_types``, ``sliding_window``,
  ``is_causal``; tensors ``layers.*``, ``fc``, ``hidden_norm``, ``norm``.
* ``speculators`` — vLLM ``speculators`` 0.9.0 (``speculators_model_type: dflash``,
  ``models/dflash/{config,core}.py``): the layer's Qwen3 config in ``transformer_layer_config``, ids ``in(k)`` in
  ``aux_hidden_state_layer_ids``, ``block_size`` / ``mask_token_id`` at the top level, the verifier in
  ``speculators_config.verifier``. The verifier-owned tensors speculators may save (``embed_tokens``,
  ``lm_head``, ``verifier_lm_head``, ``verifier_norm``) are overwritten from the verifier by its own loader
  (``DFlashDraftModel.load_verifier_weights``): our draft uses the target's heads, so they are dropped.

Every other tensor of the file must land on a parameter and every parameter must be in the file (strict). What
our draft cannot reproduce is refused with one line: mixed layer types, an in-block window narrower than the
block, a reduced draft vocabulary, ``sample_from_anchor``, sliding windows in the speculators layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from draftsmith.checkpoint import EXPORT_METADATA_KEY, draft_metadata
from draftsmith.conventions import draft_fields
from draftsmith.errors import ConfigError, DraftsmithError
from draftsmith.nn.weights import load_state_strict

from .config import _FIELDS, DRAFT_CLASS_PATH, NATIVE_ARCHITECTURE, Qwen3DFlashConfig
from .draft_qwen3 import Qwen3DFlashDraftModel

# config.json keys of a z-lab / speculators checkpoint that are not Qwen3 fields
_NON_QWEN3_KEYS = frozenset({"architectures", "auto_map", "block_size", "dflash_config", "num_target_layers",
                             "is_causal", "mask_token_id", "target_layer_ids", EXPORT_METADATA_KEY,
                             "transformers_version", "dtype", "torch_dtype"})
# speculators' verifier copies (models/dflash/core.py: reloaded from the verifier on every load)
VERIFIER_TENSORS = ("embed_tokens.weight", "lm_head.weight", "verifier_lm_head.weight", "verifier_norm.weight")
# what an engine export kept of the draft's own metadata and a reader restores
_KEPT = ("target_architectures", "target_model_type", "target_num_hidden_layers", "target_name_or_path", "version")


def zlab_target_layer_ids(num_target_layers: int, num_draft_layers: int) -> list[int]:
    """z-lab's default ids (``dflash/model.py: build_target_layer_ids``), used when a checkpoint records none:
    one layer → ``[N // 2]``, else ``round(1 + i·(N − 4)/(k − 1))``."""
    if num_draft_layers == 1:
        return [num_target_layers // 2]
    span = num_target_layers - 4
    return [int(round(1 + i * span / (num_draft_layers - 1))) for i in range(num_draft_layers)]


def read_zlab(path: Path, config: dict[str, Any]) -> Qwen3DFlashDraftModel:
    """A z-lab ``DFlashDraftModel`` directory (e.g. a public ``z-lab/*-DFlash`` checkpoint) as our draft."""
    path = Path(path)
    dflash = config.get("dflash_config") or {}

    def value(name: str, default: Any = None) -> Any:  # z-lab's _draft_value: dflash_config first, then top level
        return dflash.get(name, config.get(name, default))

    qwen3 = _qwen3_config(path, config)
    n_target = config.get("num_target_layers")
    ids = value("target_layer_ids")
    if ids is None:
        if n_target is None:
            raise ConfigError(f"{path / 'config.json'} records neither dflash_config.target_layer_ids nor "
                              f"num_target_layers: the captured target layers are unknown")
        ids = zlab_target_layer_ids(int(n_target), int(qwen3.num_hidden_layers))
    causal = _zlab_causality(path, config, dflash, _layer_types(qwen3))
    return _build(path, qwen3, ids=ids, block_size=int(value("block_size", 16)),
                  mask_token_id=value("mask_token_id"), num_target_layers=n_target, causal=causal,
                  state=_load_weights(path), kept=_kept(config), fmt="zlab")


def _zlab_causality(path: Path, config: dict[str, Any], dflash: dict[str, Any], layer_types: list[str]) -> bool:
    """In-block causality as z-lab reads it (``Qwen3DFlashAttention.__init__``): ``is_causal`` when present, else
    causal on sliding layers; vLLM reads ``dflash_config.causal`` (same default) — the two must agree."""
    sliding = bool(layer_types) and set(layer_types) == {"sliding_attention"}
    zlab = config.get("is_causal")
    zlab = sliding if zlab is None else bool(zlab)
    vllm = dflash.get("causal")
    if vllm is not None and bool(vllm) != zlab:
        raise ConfigError(f"{path / 'config.json'}: is_causal={config.get('is_causal')!r} (z-lab) and "
                          f"dflash_config.causal={vllm!r} (vLLM) disagree: the engines would run it differently")
    return zlab


def read_speculators(path: Path, config: dict[str, Any]) -> Qwen3DFlashDraftModel:
    """A speculators 0.9.0 DFlash directory (``speculators_model_type: dflash``) as our draft."""
    path = Path(path)
    layer = config.get("transformer_layer_config")
    if not isinstance(layer, dict):
        raise DraftsmithError(f"{path / 'config.json'}: a speculators dflash config without transformer_layer_config")
    qwen3 = _qwen3_config(path, layer)  # speculators: validate_transformer_config builds this Qwen3Config
    vocab = int(qwen3.vocab_size)
    if int(config.get("draft_vocab_size") or vocab) != vocab:
        raise ConfigError(f"{path}: a reduced draft vocabulary (draft_vocab_size {config.get('draft_vocab_size')} "
                          f"of {vocab}, own lm_head + d2t/t2d): draftsmith's DFlash draft drafts with the "
                          f"target's full lm_head")
    if config.get("sample_from_anchor", False):
        raise ConfigError(f"{path}: sample_from_anchor is true (slot k predicts token a+k+1, block_size "
                          f"speculative tokens); a DFlash draft's slot k predicts token a+k")
    if "sliding_attention" in _layer_types(qwen3):
        raise ConfigError(f"{path}: sliding-window layers: speculators (models/dflash/attention.py) windows the "
                          f"context by anchor (kv >= anchor - W), draftsmith, z-lab and vLLM by query "
                          f"(pos - kv < W); it cannot be read without changing its outputs")
    aux = config.get("aux_hidden_state_layer_ids")
    if not aux:
        raise ConfigError(f"{path / 'config.json'} has no aux_hidden_state_layer_ids: the captured target layers "
                          f"are unknown")
    verifier = (config.get("speculators_config") or {}).get("verifier") or {}
    named = {"target_name_or_path": verifier.get("name_or_path"), "target_architectures": verifier.get("architectures")}
    kept = {**_kept(config), **{k: v for k, v in named.items() if v}}  # the verifier it names wins
    state = {n: t for n, t in _load_weights(path).items() if n not in VERIFIER_TENSORS}
    return _build(path, qwen3, ids=[int(i) - 1 for i in aux],  # in(k) → out(k)
                  block_size=int(config.get("block_size") or 8), mask_token_id=config.get("mask_token_id"),
                  num_target_layers=kept.get("target_num_hidden_layers") or _verifier_layers(verifier),
                  causal=False,  # full-attention layers are always bidirectional in speculators
                  state=state, kept=kept, fmt="speculators")


def _verifier_layers(verifier: dict[str, Any]) -> int | None:
    """The verifier's depth from its local ``config.json`` (a hub id is not fetched), or None."""
    import json

    name = verifier.get("name_or_path")
    file = Path(str(name)) / "config.json" if name else None
    if file is None or not file.is_file():
        return None
    text = json.loads(file.read_text())
    text = text.get("text_config") or text
    return text.get("num_hidden_layers")


def _kept(config: dict[str, Any]) -> dict[str, Any]:
    kept = config.get(EXPORT_METADATA_KEY)
    return {k: v for k, v in kept.items() if k in _KEPT} if isinstance(kept, dict) else {}


def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise DraftsmithError(f"{path} holds no .safetensors weights")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file)))
    return state


def _qwen3_config(path: Path, text: dict[str, Any]) -> Any:
    """The ``Qwen3Config`` the client builds from the checkpoint's keys (z-lab: ``config_class = Qwen3Config``;
    speculators: ``validate_transformer_config``), so absent keys take Qwen3's defaults as they do there."""
    from transformers import Qwen3Config

    skip = _NON_QWEN3_KEYS | {"draftsmith", "speculators_config", "speculators_model_type", "speculators_version"}
    try:
        return Qwen3Config(**{k: v for k, v in text.items() if k not in skip})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path / 'config.json'}: not a Qwen3 draft config: {exc}") from None


def _layer_types(qwen3: Any) -> list[str]:
    return list(qwen3.layer_types or ["full_attention"] * int(qwen3.num_hidden_layers))


def _build(path: Path, qwen3: Any, *, ids: list[int], block_size: int, mask_token_id: Any,
           num_target_layers: Any, causal: bool, state: dict[str, torch.Tensor], kept: dict[str, Any],
           fmt: str) -> Qwen3DFlashDraftModel:
    """Our draft config from the client's Qwen3 config and the DFlash keys, the model, the weights (strict)."""
    depth, layer_types = int(qwen3.num_hidden_layers), _layer_types(qwen3)
    if len(layer_types) != depth:
        raise ConfigError(f"{path / 'config.json'}: {len(layer_types)} layer_types for {depth} draft layers")
    if len(set(layer_types)) > 1:
        raise ConfigError(f"{path}: mixed layer types {sorted(set(layer_types))}: draftsmith's DFlash draft runs "
                          f"all layers full or all sliding")
    sliding = layer_types[0] == "sliding_attention"
    window = qwen3.sliding_window if sliding else None
    if sliding and window is not None and int(window) < block_size:
        raise ConfigError(f"{path}: sliding_window {window} < block_size {block_size}: z-lab also windows the "
                          f"block itself, draftsmith only the context")
    try:
        fields = {k: v for k, v in draft_fields(qwen3).items() if k in _FIELDS}
    except ConfigError as exc:
        raise ConfigError(f"{path / 'config.json'}: {exc}") from None
    dflash = {"block_size": block_size, "mask_token_id": mask_token_id, "target_layer_ids": [int(i) for i in ids]}
    if causal:
        dflash["causal"] = True
    n_target = int(num_target_layers) if num_target_layers is not None else None
    cfg = Qwen3DFlashConfig(
        **fields, num_hidden_layers=depth, use_sliding_window=sliding,
        sliding_window=int(window) if window is not None else None, max_window_layers=0 if sliding else depth,
        layer_types=layer_types, tie_word_embeddings=False, block_size=block_size, dflash_config=dflash,
        num_target_layers=n_target, is_causal=causal, architectures=[NATIVE_ARCHITECTURE])
    block = draft_metadata("dflash", DRAFT_CLASS_PATH, None, target_layer_ids=dflash["target_layer_ids"],
                           block_size=block_size, mask_token_id=mask_token_id)
    block.update({k: v for k, v in kept.items() if v is not None}, read_from=fmt)
    if n_target is not None:
        block["target_num_hidden_layers"] = n_target
    cfg.draftsmith = block
    model = Qwen3DFlashDraftModel(cfg)  # checks block size, ids, mask token, layer types
    load_state_strict(model, state, path)
    return model.float().eval()
