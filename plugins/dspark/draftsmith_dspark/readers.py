"""Readers of the DSpark engine layouts (``draftsmith.load_draft`` on a directory without a ``draftsmith`` block).

Each reader builds our :class:`~draftsmith_dspark.draft_qwen3.Qwen3DSparkModel` (fp32, CPU) from the foreign
``config.json`` and loads every tensor strictly (a missing or unexpected name is an error):

* :func:`read_vllm` — ``Qwen3DSparkModel`` (our ``vllm`` export; DeepSpec / NeMo AutoModel checkpoints): the
  native tensor names, ids ``target_layer_ids`` out(k); the 1+N bonus-anchor layout is refused;
* :func:`read_sglang` — SGLang / SpecForge ``DSparkDraftModel``: ids and heads from ``dspark_config`` /
  ``dflash_config`` (out(k)); ``embed_tokens`` / ``lm_head`` from the target;
* :func:`read_speculators` — speculators ``dspark`` (what ``export_speculators`` writes, and public speculators
  DSpark checkpoints): ``transformer_layer_config``, ids ``aux_hidden_state_layer_ids`` in(k) (−1 here);
  ``embed_tokens`` / ``lm_head`` from the verifier, as speculators' own loader does.

Layouts without an embedding and head take them from the target directory named by ``draftsmith_export``
(``target_name_or_path``) or by ``speculators_config.verifier.name_or_path``; a hub id is not downloaded.
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

from draftsmith.checkpoint import LAYER_ID_CONVENTION, draft_metadata
from draftsmith.errors import ConfigError, DraftsmithError
from draftsmith.nn.weights import load_state_strict

from .export import DSPARK_HEAD_KEYS, EXPORT_ONLY_KEYS, QWEN3_LAYER_KEYS

HEAD_TENSORS = ("embed_tokens.weight", "lm_head.weight")


def read_vllm(path: Path, config: dict[str, Any]) -> Any:
    """``Qwen3DSparkModel`` without our block: every tensor in the file (native names)."""
    if config.get("dspark_bonus_anchor") is True or config.get("sample_from_anchor") is False:
        raise ConfigError(f"{path}: a bonus-anchor DSpark (1+N block, the anchor predicts nothing) is not what "
                          f"draftsmith's DSpark runs (slot k predicts x[a+k+1])")
    layer = {k: config[k] for k in QWEN3_LAYER_KEYS if k in config}
    heads = {k: config[k] for k in DSPARK_HEAD_KEYS if k in config}
    ids = [int(i) for i in _required(config, "target_layer_ids", path)]
    return _build(path, config, layer, heads, ids, num_target_layers=config.get("num_target_layers"),
                  block_size=config.get("block_size"), mask_token_id=config.get("mask_token_id"),
                  target=None)


def read_sglang(path: Path, config: dict[str, Any]) -> Any:
    """SGLang / SpecForge ``DSparkDraftModel``: ``dspark_config`` wins over ``dflash_config`` (SGLang's order)."""
    dflash = dict(config.get("dflash_config") or {})
    dspark = {**dflash, **dict(config.get("dspark_config") or {})}
    if dflash.get("projector_type", "dspark") != "dspark":
        raise ConfigError(f"{path}: dflash_config.projector_type {dflash.get('projector_type')!r} is not a DSpark")
    if dspark.get("sample_from_anchor") is False:
        raise ConfigError(f"{path}: a bonus-anchor DSpark (sample_from_anchor false) is not what draftsmith runs")
    layer = {k: config[k] for k in QWEN3_LAYER_KEYS if k in config}
    # SpecForge's defaults when a key is absent (dspark.py build_markov_head / _init_draft_head)
    heads = {"markov_rank": int(dspark.get("markov_rank", 0) or 0),
             "markov_head_type": str(dspark.get("markov_head_type", "vanilla")).lower(),
             "enable_confidence_head": bool(dspark.get("enable_confidence_head",
                                                       float(dspark.get("confidence_head_alpha", 0.0) or 0) > 0)),
             "confidence_head_with_markov": bool(dspark.get("confidence_head_with_markov", False))}
    ids = [int(i) for i in _required(dspark, "target_layer_ids", path, where="dspark_config/dflash_config")]
    return _build(path, config, layer, heads, ids, num_target_layers=config.get("num_target_layers"),
                  block_size=dspark.get("block_size", config.get("block_size")),
                  mask_token_id=dspark.get("mask_token_id", config.get("mask_token_id")),
                  target=_kept(config).get("target_name_or_path"))


def read_speculators(path: Path, config: dict[str, Any]) -> Any:
    """speculators ``dspark``: the layer config nested, ids in(k), the verifier named in ``speculators_config``."""
    if config.get("sample_from_anchor") is False:
        raise ConfigError(f"{path}: a speculators DSpark trained with sample_from_anchor false (the DFlash 1+N "
                          f"block) is not what draftsmith's DSpark runs")
    layer_config = dict(_required(config, "transformer_layer_config", path))
    vocab = int(layer_config["vocab_size"])
    if int(config.get("draft_vocab_size") or vocab) != vocab:
        raise ConfigError(f"{path}: a reduced draft vocabulary ({config.get('draft_vocab_size')} of {vocab}, "
                          f"d2t/t2d) has no counterpart in draftsmith's DSpark draft (full vocabulary)")
    if config.get("sliding_window_non_causal"):
        raise ConfigError(f"{path}: sliding_window_non_causal DSpark drafts are not supported")
    layer = {k: layer_config[k] for k in QWEN3_LAYER_KEYS if k in layer_config}
    heads = {k: config[k] for k in DSPARK_HEAD_KEYS if k in config}
    ids = [int(i) - 1 for i in _required(config, "aux_hidden_state_layer_ids", path)]  # in(k) -> out(k)
    verifier = ((config.get("speculators_config") or {}).get("verifier") or {})
    kept = _kept(config)
    return _build(path, config, layer, heads, ids, num_target_layers=kept.get("target_num_hidden_layers"),
                  block_size=config.get("block_size"), mask_token_id=config.get("mask_token_id"),
                  target=verifier.get("name_or_path") or kept.get("target_name_or_path"),
                  target_architectures=verifier.get("architectures"))


# -- shared ------------------------------------------------------------------------------------------------------
def _build(path: Path, config: dict[str, Any], layer: dict[str, Any], heads: dict[str, Any], ids: list[int], *,
           num_target_layers: Any, block_size: Any, mask_token_id: Any, target: str | None,
           target_architectures: list[str] | None = None) -> Any:
    """Our draft from the translated fields, weights loaded strictly (``embed_tokens`` / ``lm_head`` from
    ``target`` when the file lacks them)."""
    import torch
    from safetensors.torch import load_file

    from .config import Qwen3DSparkConfig
    from .draft_qwen3 import Qwen3DSparkModel

    if mask_token_id is None or block_size is None:
        raise ConfigError(f"{path}: a DSpark layout needs block_size and mask_token_id")
    kept = _kept(config)
    n_target = num_target_layers or kept.get("target_num_hidden_layers")
    state = _read_weights(path, load_file)
    if not all(name in state for name in HEAD_TENSORS):
        state.update(_target_head(path, target or kept.get("target_name_or_path")))
    rank = int(heads.get("markov_rank", 256))
    layer = dict(layer)
    layer.setdefault("layer_types", ["full_attention"] * int(layer["num_hidden_layers"]))
    layer["max_window_layers"] = int(layer["num_hidden_layers"])
    cfg = Qwen3DSparkConfig(
        **layer, tie_word_embeddings=False, architectures=["Qwen3DSparkModel"], block_size=int(block_size),
        num_anchors=int(kept.get("num_anchors", 512)), mask_token_id=int(mask_token_id), target_layer_ids=ids,
        num_target_layers=int(n_target) if n_target is not None else None, markov_rank=rank,
        markov_head_type=str(heads.get("markov_head_type", "vanilla")),
        enable_confidence_head=bool(heads.get("enable_confidence_head", True)),
        confidence_head_with_markov=bool(heads.get("confidence_head_with_markov", rank > 0)) and rank > 0,
        freeze_embeddings=bool(kept.get("freeze_embeddings", True)))
    cfg.draftsmith = _our_block(kept, ids, cfg, target, target_architectures)
    model = Qwen3DSparkModel(cfg)
    load_state_strict(model, state, path)
    model = model.to(torch.float32).eval()
    if cfg.freeze_embeddings:
        model.freeze_embeddings()
    return model


def _read_weights(path: Path, load_file: Any) -> dict[str, Any]:
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise DraftsmithError(f"{path} holds no .safetensors weights")
    state: dict[str, Any] = {}
    for file in files:
        state.update(load_file(str(file)))
    return state


def _target_head(path: Path, target: str | None) -> dict[str, Any]:
    """``embed_tokens.weight`` (V, H) and ``lm_head.weight`` (V, H) from the target's safetensors (a tied
    target's head is its embedding)."""
    import json

    from safetensors import safe_open

    where = Path(target) if target else None
    if where is None or not where.is_dir():
        raise ConfigError(f"{path} holds no embed_tokens/lm_head (its clients take the target's): the target "
                          f"directory it names ({target!r}) is not available locally")
    found: dict[str, Any] = {}
    for file in sorted(where.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            for key in f.keys():
                if key.endswith("embed_tokens.weight") and "embed_tokens.weight" not in found:
                    found["embed_tokens.weight"] = f.get_tensor(key)
                elif key == "lm_head.weight":
                    found["lm_head.weight"] = f.get_tensor(key)
    if "embed_tokens.weight" not in found:
        raise ConfigError(f"the target {target!r} has no embed_tokens tensor")
    if "lm_head.weight" not in found:
        tied = json.loads((where / "config.json").read_text()).get("tie_word_embeddings", False)
        if not tied:
            raise ConfigError(f"the target {target!r} has no lm_head tensor and does not tie its embeddings")
        found["lm_head.weight"] = found["embed_tokens.weight"]
    return {k: v.float() for k, v in found.items()}


def _kept(config: dict[str, Any]) -> dict[str, Any]:
    kept = config.get("draftsmith_export")
    return dict(kept) if isinstance(kept, dict) else {}


def _our_block(kept: dict[str, Any], ids: list[int], cfg: Any, target: str | None,
               target_architectures: list[str] | None) -> dict[str, Any]:
    """The ``draftsmith`` block: what the export kept (minus the export-only keys), else one built from the
    foreign config."""
    from .draft_qwen3 import DRAFT_CLASS

    if kept.get("method") == "dspark":
        block = {k: v for k, v in kept.items() if k not in EXPORT_ONLY_KEYS}
    else:
        origin = types.SimpleNamespace(architectures=list(target_architectures or []), model_type=None,
                                       num_hidden_layers=cfg.num_target_layers, _name_or_path=target)
        block = draft_metadata("dspark", DRAFT_CLASS, origin, target_layer_ids=ids, block_size=cfg.block_size,
                               mask_token_id=cfg.mask_token_id)
    block.update(target_layer_ids=list(ids), layer_id_convention=LAYER_ID_CONVENTION)
    return block


def _required(config: dict[str, Any], key: str, path: Path, where: str | None = None) -> Any:
    value = config.get(key)
    if value is None:
        raise ConfigError(f"{path}: {where or 'config.json'} has no {key!r}")
    return value
