"""Engine exports of EAGLE drafts (``draftsmith export``; registered per method in plugin.py).

* ``native`` — ``save_pretrained``: the EAGLE-3 native layout (``LlamaForCausalLMEagle3``, ``midlayer.*``, ``fc``,
  ``norm``, ``lm_head``, ``embed_tokens``, ``d2t``, ``t2d``) that SGLang loads as is and vLLM loads through its
  ``midlayer.`` rename, with ``eagle_config.eagle_aux_hidden_state_layer_ids`` in the output-of-layer convention
  (draftsmith's, SGLang's). EAGLE-1 drafts write their own layout (draft_llama_v12.py).
* ``sglang`` — the native layout (SGLang reads ids as "output of layer k" and captures ``hidden_states[k+1]``).
* ``vllm`` — vLLM counts "input of layer k" (= output of layer k-1), so every id is written **+1**; vLLM also
  reserves its last capture slot (input of layer N = the final hidden) and rejects aux id N there, so a draft
  trained on the last decoder layer's output cannot be served by vLLM (clear error). Weights use vLLM's own names:
  ``layers.0.*`` for the fused layer and ``layers.{i}.*`` for extra depth (vLLM prefixes ``model.`` itself, maps
  ``d2t`` to its draft-to-target table and skips ``t2d``). The ``draftsmith`` block is kept under
  ``draftsmith_export`` so ``draftsmith.load_draft`` refuses this engine-only directory instead of misloading it.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from draftsmith.checkpoint import save_draft
from draftsmith.errors import ConfigError, DraftsmithError
from draftsmith.nn.weights import non_finite_tensors, unwrap_model

from .draft_llama import LlamaEagle3DraftModel


def export_native(draft: Any, out_dir: str | Path, **options: Any) -> Path:
    """config.json + model.safetensors into ``out_dir`` through :func:`draftsmith.checkpoint.save_draft` (the
    draft inside DDP/FSDP wrappers, non-finite weights refused)."""
    if options:
        raise ConfigError(f"native export takes no options, got {sorted(options)}")
    return save_draft(draft, out_dir)


def export_sglang(draft: Any, out_dir: str | Path, **options: Any) -> Path:
    """The native EAGLE-3 layout, aux ids in SGLang's output-of-layer convention (unchanged)."""
    _require_eagle3(draft, "sglang")
    return export_native(draft, out_dir, **options)


def vllm_layer_ids(layer_ids: list[int], num_target_layers: int | None) -> list[int]:
    """Output-of-layer ids -> vLLM's input-of-layer ids (+1), refusing vLLM's reserved final slot."""
    ids = [int(i) + 1 for i in layer_ids]
    if num_target_layers is not None and num_target_layers in ids:
        raise ConfigError(f"target layer {num_target_layers - 1} (the last decoder layer's output) cannot be "
                          f"served by vLLM: its capture id {num_target_layers} is reserved for the final hidden "
                          f"state. Retrain with target_layer_ids <= {num_target_layers - 2}.")
    return ids


def export_vllm(draft: Any, out_dir: str | Path, **options: Any) -> Path:
    """EAGLE-3 for vLLM (see module docstring)."""
    from safetensors.torch import save_file

    if options:
        raise ConfigError(f"vllm export takes no options, got {sorted(options)}")
    model = _require_eagle3(draft, "vllm")
    config = copy.deepcopy(model.config)
    block = dict(getattr(config, "draftsmith", None) or {})
    ids = vllm_layer_ids(config.target_layer_ids, block.get("target_num_hidden_layers"))
    config.eagle_config = {**(config.eagle_config or {}), "eagle_aux_hidden_state_layer_ids": ids}
    block.update(exported_for="vllm", engine_layer_ids=ids, engine_layer_id_convention="input-of-layer")
    if hasattr(config, "draftsmith"):
        del config.draftsmith
    config.draftsmith_export = block
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config.dtype = str(model.dtype).split(".")[-1]
    (out / "config.json").write_text(config.to_json_string(use_diff=True))
    bad = non_finite_tensors(model.state_dict())
    if bad:  # as save_draft: an engine would load NaN/inf weights silently
        raise DraftsmithError(f"refusing to export non-finite weights: {bad[:5]}")
    state = {}
    for name, tensor in model.state_dict().items():
        if name.startswith("midlayer."):
            name = "layers.0." + name[len("midlayer."):]
        elif name.startswith("additional_layers."):
            index, rest = name[len("additional_layers."):].split(".", 1)
            name = f"layers.{int(index) + 1}.{rest}"
        state[name] = tensor.detach().to("cpu").contiguous()
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def _require_eagle3(draft: Any, fmt: str) -> LlamaEagle3DraftModel:
    model = unwrap_model(draft)
    if not isinstance(model, LlamaEagle3DraftModel):
        raise ConfigError(f"the {fmt!r} export writes EAGLE-3 heads; got {type(model).__name__} (EAGLE-1 drafts "
                          f"export with 'native' only)")
    return model
