"""Engine exports of EAGLE drafts (``draftsmith export --format F``; registered per method in plugin.py).

Layer-id conventions and the capturability rule come from :mod:`draftsmith.formats` (every format refuses the
last decoder layer's output, which no engine captures). Per format (docs/formats.md has the loaders' sources):

* ``native`` — draftsmith's own checkpoint: the EAGLE-3 native layout (``LlamaForCausalLMEagle3``,
  ``midlayer.*``, ``additional_layers.*``, ``fc``, ``norm``, ``lm_head``, ``embed_tokens``, ``d2t``/``t2d`` for a
  reduced vocab) with ``eagle_config.eagle_aux_hidden_state_layer_ids`` as output-of-layer ids. EAGLE-1 drafts
  write their own layout (draft_llama_v12.py).
* ``sglang`` — what SGLang and SpecForge load: the native layout restricted to what they can hold — one draft
  layer (both skip other tensors silently), three captured layers (SpecForge's ``fc`` is 3·H wide), no EAGLE-3.1
  ``norm_output`` (SpecForge reads that key with the opposite meaning) — plus identity ``d2t``/``t2d`` for a
  full vocabulary (SpecForge leaves absent ones uninitialised).
* ``vllm`` — vLLM's ``Eagle3LlamaForCausalLM``: ids **+1** (input-of-layer) under the top-level
  ``eagle_aux_hidden_state_layer_ids`` vLLM reads first; no top-level ``target_layer_ids`` (vLLM's fallback reads
  it +1); explicit ``norm_before_residual: false``; weights ``layers.{i}.*`` (vLLM prefixes ``model.``).
* ``speculators`` — the vLLM ``speculators`` format (``speculators_model_type: eagle3``,
  ``transformer_layer_config``, ``speculators_config``), loaded by ``speculators`` without conversion and served
  by ``vllm serve DIR``; ids +1; ``d2t``/``t2d`` only for a reduced vocab (speculators rejects them otherwise).

Engine-only directories keep the ``draftsmith`` block under ``draftsmith_export``, so ``draftsmith.load_draft``
refuses them instead of misloading them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from draftsmith.checkpoint import save_draft
from draftsmith.errors import ConfigError, DraftsmithError
from draftsmith.formats import (check_capturable, check_whole_head_rotary, engine_layer_ids, specforge_rope_parameters,
                                speculators_layer_fields, speculators_verifier)
from draftsmith.nn.weights import non_finite_tensors, unwrap_model

from .draft_llama import LlamaEagle3DraftModel

VLLM_ARCHITECTURE = "Eagle3LlamaForCausalLM"  # vLLM's own name (its registry also maps SGLang's to it)
SPECULATORS_ARCHITECTURE = "Eagle3Speculator"


def _target_layers(model: Any) -> int | None:
    return (getattr(model.config, "draftsmith", None) or {}).get("target_num_hidden_layers")


def export_native(draft: Any, out_dir: str | Path, **options: Any) -> Path:
    """config.json + model.safetensors into ``out_dir`` through :func:`draftsmith.checkpoint.save_draft` (the
    draft inside DDP/FSDP wrappers, non-finite weights refused; EAGLE-3 ids checked capturable)."""
    if options:
        raise ConfigError(f"native export takes no options, got {sorted(options)}")
    model = unwrap_model(draft)
    if isinstance(model, LlamaEagle3DraftModel):
        check_capturable(model.config.target_layer_ids, _target_layers(model), "native")
    return save_draft(draft, out_dir)


def export_sglang(draft: Any, out_dir: str | Path, **options: Any) -> Path:
    """The native EAGLE-3 layout as SGLang / SpecForge load it (see module docstring)."""
    from safetensors.torch import load_file, save_file

    model = _require_eagle3(draft, "sglang")
    cfg = model.config
    if options:
        raise ConfigError(f"sglang export takes no options, got {sorted(options)}")
    if cfg.num_hidden_layers != 1:
        raise ConfigError(f"the 'sglang' format holds one draft layer (SGLang and SpecForge skip the others "
                          f"silently); this draft has {cfg.num_hidden_layers}: use --format vllm or speculators")
    if cfg.num_aux_hidden_states != 3:
        raise ConfigError(f"the 'sglang' format fuses exactly 3 target layers (SpecForge's fc is 3·H wide); this "
                          f"draft fuses {cfg.num_aux_hidden_states}: use --format vllm or speculators")
    if cfg.norm_output:
        raise ConfigError("the 'sglang' format cannot hold EAGLE-3.1 norm_output (SpecForge reads that key as "
                          "'apply the final norm before lm_head'): use --format vllm or speculators")
    check_whole_head_rotary(cfg, "sglang", "SpecForge 0.2.0, SGLang")
    rope = specforge_rope_parameters(cfg.rope_parameters or {})  # ConfigError for a rope it would misread
    out = export_native(draft, out_dir)
    if not model.compresses_vocab:  # identity maps: SpecForge leaves absent d2t/t2d uninitialised
        state = load_file(str(out / "model.safetensors"))
        state["d2t"] = torch.zeros(cfg.draft_vocab_size, dtype=torch.long)  # offsets: draft id + 0 = target id
        state["t2d"] = torch.ones(cfg.vocab_size, dtype=torch.bool)
        save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    # no longer the native layout (identity maps): our block moves aside, load_draft reads it as 'sglang'
    text = json.loads((out / "config.json").read_text())
    text["draftsmith_export"] = {**text.pop("draftsmith"), "exported_for": "sglang"}
    text["rope_parameters"] = rope  # YaRN with the mscale / beta keys SpecForge requires
    if "rope_scaling" in text:  # the legacy key wins when transformers loads the config: the same keys there
        text["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    (out / "config.json").write_text(json.dumps(text, indent=2, sort_keys=True) + "\n")
    return out


def export_vllm(draft: Any, out_dir: str | Path, **options: Any) -> Path:
    """EAGLE-3 for vLLM (see module docstring)."""
    if options:
        raise ConfigError(f"vllm export takes no options, got {sorted(options)}")
    model = _require_eagle3(draft, "vllm")
    config = model.config
    ids = engine_layer_ids(config.target_layer_ids, _target_layers(model), "vllm")
    block = dict(getattr(config, "draftsmith", None) or {})
    block.update(exported_for="vllm", engine_layer_ids=ids, engine_layer_id_convention="input-of-layer")
    out = _engine_dir(out_dir)
    text = json.loads(config.to_json_string(use_diff=True))
    text.pop("draftsmith", None)
    text.pop("target_layer_ids", None)  # vLLM's fallback would read it +1: only the key it reads first is written
    text["eagle_aux_hidden_state_layer_ids"] = ids
    text["eagle_config"] = {**(text.get("eagle_config") or {}), "eagle_aux_hidden_state_layer_ids": ids}
    text.update(architectures=[VLLM_ARCHITECTURE], norm_before_residual=False, draftsmith_export=block,
                torch_dtype=str(model.dtype).split(".")[-1])
    (out / "config.json").write_text(json.dumps(text, indent=2, sort_keys=True) + "\n")
    _save_engine_weights(model, out)
    return out


def export_speculators(draft: Any, out_dir: str | Path, *, target: str | None = None, **options: Any) -> Path:
    """EAGLE-3 in the vLLM ``speculators`` format (see module docstring); ``target``: the verifier's directory
    or hub id (default: where the draft's target was loaded from)."""
    if options:
        raise ConfigError(f"speculators export takes only the option 'target', got {sorted(options)}")
    model = _require_eagle3(draft, "speculators")
    cfg = model.config
    check_whole_head_rotary(cfg, "speculators", "speculators 0.9.0")
    block = dict(getattr(cfg, "draftsmith", None) or {})
    ids = engine_layer_ids(cfg.target_layer_ids, _target_layers(model), "speculators")
    verifier = speculators_verifier(target, block)
    layer = {**speculators_layer_fields(cfg),  # the draft layer's own HF (Llama) config
             "model_type": "llama", "architectures": ["LlamaForCausalLM"], "mlp_bias": bool(cfg.mlp_bias)}
    rope = layer["rope_parameters"]
    if rope.get("rope_type", "default") != "default":
        layer["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    if getattr(cfg, "qkv_bias", False):
        raise ConfigError("the 'speculators' format has no q/k/v-only bias (qkv_bias): use --format vllm")
    text = {
        "architectures": [SPECULATORS_ARCHITECTURE], "speculators_model_type": "eagle3",
        "speculators_version": "0.9.0", "transformer_layer_config": layer,
        "draft_vocab_size": cfg.draft_vocab_size, "target_hidden_size": cfg.target_hidden_size,
        "eagle_aux_hidden_state_layer_ids": ids, "norm_before_residual": False, "norm_before_fc": False,
        "fc_norm": bool(cfg.fc_norm), "norm_output": bool(cfg.norm_output),
        "speculators_config": {
            "algorithm": "eagle3", "default_proposal_method": "greedy",
            "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": 3}],
            "verifier": verifier,
        },
        "torch_dtype": str(model.dtype).split(".")[-1],
        "draftsmith_export": {**block, "exported_for": "speculators", "engine_layer_ids": ids,
                              "engine_layer_id_convention": "input-of-layer"},
    }
    out = _engine_dir(out_dir)
    (out / "config.json").write_text(json.dumps(text, indent=2, sort_keys=True) + "\n")
    _save_engine_weights(model, out, keep_vocab_maps=model.compresses_vocab)
    return out


def _engine_dir(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _save_engine_weights(model: LlamaEagle3DraftModel, out: Path, keep_vocab_maps: bool = True) -> None:
    """``model.safetensors`` with the engines' names: ``layers.0.*`` for the fused layer, ``layers.{i}.*`` for
    extra depth (non-finite weights refused, as :func:`draftsmith.checkpoint.save_draft` does)."""
    from safetensors.torch import save_file

    state_dict = model.state_dict()
    bad = non_finite_tensors(state_dict)
    if bad:  # an engine would load NaN/inf weights silently
        raise DraftsmithError(f"refusing to export non-finite weights: {bad[:5]}")
    state = {}
    for name, tensor in state_dict.items():
        if name.startswith("rotary_emb."):
            continue
        if name in ("d2t", "t2d") and not keep_vocab_maps:
            continue
        if name.startswith("midlayer."):
            name = "layers.0." + name[len("midlayer."):]
        elif name.startswith("additional_layers."):
            index, rest = name[len("additional_layers."):].split(".", 1)
            name = f"layers.{int(index) + 1}.{rest}"
        state[name] = tensor.detach().to("cpu").contiguous()
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})


def _require_eagle3(draft: Any, fmt: str) -> LlamaEagle3DraftModel:
    model = unwrap_model(draft)
    if not isinstance(model, LlamaEagle3DraftModel):
        raise ConfigError(f"the {fmt!r} export writes EAGLE-3 heads; got {type(model).__name__} (EAGLE-1 drafts "
                          f"export with 'native' only: no engine's EAGLE-1 loader reads their layout yet)")
    return model
