"""Readers of public EAGLE-3 layouts (the inverse of export.py): a directory → :class:`LlamaEagle3DraftModel`.

Registered as the ``reader`` of the ``sglang``, ``vllm`` and ``speculators`` formats (registry.py), so
:func:`draftsmith.load_draft` — and ``eval --draft``, ``export --draft``, ``train --init-from`` — take:

* ``sglang`` — SGLang / SpecForge / SafeAILab ``LlamaForCausalLMEagle3``: ``midlayer.*``, ids ``out(k)`` in
  ``eagle_config.eagle_aux_hidden_state_layer_ids``; full-vocabulary heads carry identity ``d2t``/``t2d``;
* ``vllm`` — ``Eagle3LlamaForCausalLM``: ``layers.{i}.*``, ids ``in(k)`` in the top-level
  ``eagle_aux_hidden_state_layer_ids``;
* ``speculators`` — ``speculators_model_type: eagle3``: the layer config in ``transformer_layer_config``, ids
  ``in(k)``, ``norm_before_residual`` / ``norm_before_fc`` (read with speculators' defaults);
* ``nemo`` (EAGLE-1) — NeMo AutoModel's ``LlamaEagleDraftModel`` save without draftsmith metadata (the layout our
  EAGLE-1 head shares: ``embed_tokens``, ``fc`` (+ bias), ``layers.{i}.*``, ``norm``).

Every tensor of the file must land on a parameter and every parameter must be in the file (strict); what our
head cannot reproduce (a norm before the residual or before ``fc``, a permuted full vocabulary, a checkpoint
without its embedding) is refused with one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from draftsmith.checkpoint import EXPORT_METADATA_KEY, draft_metadata
from draftsmith.conventions import draft_fields
from draftsmith.errors import ConfigError, DraftsmithError
from draftsmith.nn.weights import load_state_strict

from .config import LlamaEagle3Config, LlamaEagleConfig
from .draft_llama import DRAFT_CLASS, LlamaEagle3DraftModel


def read_sglang(path: Path, config: dict[str, Any]) -> LlamaEagle3DraftModel:
    # SpecForge (modeling/draft/llama3_eagle.py) reads norm_output as "apply the final norm before lm_head",
    # default true — the standard EAGLE-3 head, ours with norm_output off; false is a head we do not have
    if config.get("norm_output", True) is False:
        raise ConfigError(f"{path}: norm_output is false (SpecForge: no final norm before lm_head), which "
                          f"draftsmith's EAGLE-3 head does not do")
    ids = (config.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids")
    return _build(path, config, config, ids, rename=lambda n: n, fmt="sglang")


def read_vllm(path: Path, config: dict[str, Any]) -> LlamaEagle3DraftModel:
    ids = config.get("eagle_aux_hidden_state_layer_ids")
    ids = None if ids is None else [int(i) - 1 for i in ids]  # in(k) → out(k)
    return _build(path, config, config, ids, rename=_from_engine_layers, fmt="vllm")


def read_speculators(path: Path, config: dict[str, Any]) -> LlamaEagle3DraftModel:
    # speculators' defaults (models/eagle3/config.py): norm_before_residual true when absent (vLLM's too)
    if config.get("norm_before_residual", True):
        raise ConfigError(f"{path}: norm_before_residual is true (speculators' default when absent): the draft "
                          f"normalises the fused features before the residual, which draftsmith's EAGLE-3 head "
                          f"does not; it cannot be read without changing its outputs")
    if config.get("norm_before_fc", False):
        raise ConfigError(f"{path}: norm_before_fc is true (an input_norm before fc), which draftsmith's "
                          f"EAGLE-3 head does not have")
    layer = config.get("transformer_layer_config")
    if not isinstance(layer, dict):
        raise DraftsmithError(f"{path / 'config.json'}: a speculators eagle3 config without transformer_layer_config")
    ids = config.get("eagle_aux_hidden_state_layer_ids")
    ids = None if ids is None else [int(i) - 1 for i in ids]  # in(k) → out(k)
    return _build(path, config, layer, ids, rename=_from_engine_layers, fmt="speculators")


def read_nemo_eagle1(path: Path, config: dict[str, Any]) -> Any:
    """An EAGLE-1 head in NeMo AutoModel's layout (no draftsmith block); the depth is ``draft_num_hidden_layers``
    (NeMo's name) or ``num_hidden_layers``, the fc bias whatever the file holds."""
    from transformers import LlamaConfig

    from .draft_llama_v12 import DRAFT_CLASS as EAGLE1_CLASS
    from .draft_llama_v12 import LlamaEagleDraftModel

    state = load_file(str(path / "model.safetensors"))
    fields = draft_fields(LlamaConfig(**{k: v for k, v in config.items() if k not in ("architectures", "auto_map")}))
    depth = int(config.get("draft_num_hidden_layers") or config.get("num_hidden_layers") or 1)
    cfg = LlamaEagleConfig(**{**fields, "num_hidden_layers": depth}, fc_bias="fc.bias" in state, target_layer_ids=[])
    cfg.draftsmith = {**draft_metadata("eagle1", EAGLE1_CLASS, None, target_layer_ids=[]),
                      "feature": "final_hidden (post-final-norm)", "read_from": "nemo"}
    model = LlamaEagleDraftModel(cfg)
    load_state_strict(model, state, path)
    return model.eval()


def _from_engine_layers(name: str) -> str:
    """``layers.0.*`` → ``midlayer.*``, ``layers.{i}.*`` → ``additional_layers.{i-1}.*`` (inverse of export.py)."""
    if not name.startswith("layers."):
        return name
    index, rest = name[len("layers."):].split(".", 1)
    return f"midlayer.{rest}" if int(index) == 0 else f"additional_layers.{int(index) - 1}.{rest}"


def _build(path: Path, config: dict[str, Any], layer: dict[str, Any], ids: list[int] | None, *, rename,
           fmt: str) -> LlamaEagle3DraftModel:
    from transformers import LlamaConfig

    kept = config.get(EXPORT_METADATA_KEY) if isinstance(config.get(EXPORT_METADATA_KEY), dict) else {}
    if ids is None:
        raise ConfigError(f"{path / 'config.json'} does not record the target layers it fuses (SGLang and vLLM "
                          f"then capture their default (2, N//2, N-3)); add the ids the head was trained on to "
                          f"its config ({'eagle_config.' if fmt == 'sglang' else ''}"
                          f"eagle_aux_hidden_state_layer_ids) and read it again")
    state = {rename(n): t for n, t in load_file(str(path / "model.safetensors")).items()}
    fields = draft_fields(LlamaConfig(**{k: v for k, v in layer.items() if k not in ("architectures", "auto_map")}))
    vocab = int(config.get("draft_vocab_size") or fields["vocab_size"])
    if "embed_tokens.weight" not in state:
        raise ConfigError(f"{path}: no embed_tokens.weight (the engines copy the target's embedding); a draft "
                          f"read by draftsmith must carry the embedding it was trained with")
    if vocab == fields["vocab_size"]:
        _drop_identity_maps(path, state)
    cfg = LlamaEagle3Config(
        **fields, num_hidden_layers=int(layer.get("num_hidden_layers", 1)), draft_vocab_size=vocab,
        target_hidden_size=int(config.get("target_hidden_size") or fields["hidden_size"]),
        num_aux_hidden_states=len(ids), target_layer_ids=[int(i) for i in ids],
        fc_norm=bool(config.get("fc_norm", False)), norm_output=fmt != "sglang" and bool(config.get("norm_output", False)),
        eagle_config={"eagle_aux_hidden_state_layer_ids": [int(i) for i in ids], "use_aux_hidden_state": True},
    )
    if fmt == "speculators":  # speculators' `verifier` names the target
        verifier = (config.get("speculators_config") or {}).get("verifier") or {}
        kept = {"target_name_or_path": verifier.get("name_or_path"),
                "target_architectures": verifier.get("architectures"), **kept}
    cfg.draftsmith = {**draft_metadata("eagle3", DRAFT_CLASS, None, target_layer_ids=cfg.target_layer_ids),
                      **{k: v for k, v in kept.items() if k in _KEPT}, "read_from": fmt}
    model = LlamaEagle3DraftModel(cfg)
    load_state_strict(model, state, path)
    model.check_vocab_mapping()
    return model.eval()


# what an engine export kept of the draft's own metadata and a reader restores
_KEPT = ("target_architectures", "target_model_type", "target_num_hidden_layers", "target_name_or_path", "version")


def _drop_identity_maps(path: Path, state: dict[str, torch.Tensor]) -> None:
    """SpecForge / SGLang write identity ``d2t``/``t2d`` for a full vocabulary; our full-vocab head has none."""
    d2t, t2d = state.pop("d2t", None), state.pop("t2d", None)
    if d2t is not None and bool(d2t.ne(0).any()):
        raise ConfigError(f"{path}: a full-vocabulary head whose d2t permutes the vocabulary; draftsmith reads "
                          f"full-vocabulary heads with the identity map only")
    if t2d is not None and not bool(t2d.all()):
        raise ConfigError(f"{path}: a full-vocabulary head whose t2d drops target tokens")
