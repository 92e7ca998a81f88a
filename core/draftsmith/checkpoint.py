"""Loading a saved draft back through the registry (``draftsmith.load_draft``).

Every draft's ``config.json`` carries a ``draftsmith`` block written by its plugin::

    "draftsmith": {"method": "eagle3", "draft_class": "draftsmith_eagle.draft_llama:LlamaEagle3DraftModel",
                   "target_architectures": ["Qwen3ForCausalLM"], "target_layer_ids": [1, 2, 3],
                   "layer_id_convention": "output-of-layer", "version": "0.1.0"}

Loading never imports a class named by the file itself: the class must be one a registered spec points at
(for that method), so a crafted checkpoint cannot make draftsmith import arbitrary code. Weights are read
from safetensors only.

A directory without that block — a public checkpoint (z-lab DFlash, SpecForge EAGLE-3, speculators) or one of
our engine exports, which keep the block under ``draftsmith_export`` — is read by the registered format whose
detector claims its ``config.json`` (:class:`draftsmith.formats.FormatSpec`; ``draftsmith plugins --json`` lists
them), so ``load_draft`` / ``eval --draft`` / ``train --init-from`` take any layout a plugin can read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .conventions import read_config_json
from .errors import DraftNotFoundError, DraftsmithError

METADATA_KEY = "draftsmith"
LAYER_ID_CONVENTION = "output-of-layer"


def draft_metadata(method: str, draft_class: str, target_config: Any, *, target_layer_ids: Any = None,
                   **extra: Any) -> dict[str, Any]:
    """The ``draftsmith`` block a plugin stores in its draft config."""
    from . import __version__

    block = {
        "method": method,
        "draft_class": draft_class,
        "target_architectures": list(getattr(target_config, "architectures", None) or []),
        "target_model_type": getattr(target_config, "model_type", None),
        "target_num_hidden_layers": getattr(target_config, "num_hidden_layers", None),
        # where the target was loaded from (formats that name their verifier, e.g. speculators, write it)
        "target_name_or_path": getattr(target_config, "_name_or_path", None) or None,
        "target_layer_ids": list(target_layer_ids) if target_layer_ids is not None else None,
        "layer_id_convention": LAYER_ID_CONVENTION,
        "version": __version__,
    }
    block.update(extra)
    return block


EXPORT_METADATA_KEY = "draftsmith_export"  # the block in engine layouts (not loadable as a native draft)


def _native_block(config: dict[str, Any]) -> dict[str, Any] | None:
    block = config.get(METADATA_KEY)
    return block if isinstance(block, dict) and "method" in block else None


def _foreign_format(path: Path, config: dict[str, Any]) -> Any:
    """The registered readable format claiming ``config``; DraftsmithError naming the readable ones if none."""
    from .plugins import get_registry

    registry = get_registry()
    fmt = registry.detect_format(config)
    if fmt is None:
        readable = sorted(f"{f.method}/{f.name}" for f in registry.readable_formats())
        raise DraftsmithError(f"{path / 'config.json'} has no '{METADATA_KEY}' block and matches no readable "
                              f"format (architectures {config.get('architectures')}); readable formats: "
                              f"{', '.join(readable) or 'none (install a method plugin)'}")
    return fmt


def read_draft_metadata(path: str | Path) -> dict[str, Any]:
    """The ``draftsmith`` block of a saved draft directory, with clear errors for missing/malformed files.

    For a directory in another layout, the block of the format that reads it: ``method`` and ``format`` (the
    format's name), plus what an engine export kept of ours (``target_num_hidden_layers``, ids, …)."""
    path = Path(path)
    config = read_config_json(path, what="draft directory", error=DraftsmithError)
    if not path.is_dir() or not any(p.suffix == ".safetensors" for p in path.iterdir()):
        raise DraftsmithError(f"{str(path)!r} holds no .safetensors weights")
    block = _native_block(config)
    if block is not None:
        return block
    fmt = _foreign_format(path, config)
    kept = config.get(EXPORT_METADATA_KEY)
    return {**(kept if isinstance(kept, dict) else {}), "method": fmt.method, "format": fmt.name}


def resolve_saved_draft_class(block: dict[str, Any]) -> type:
    """The registered draft class a saved draft's metadata names."""
    from .plugins import get_registry

    registry = get_registry()
    method = block["method"]
    wanted = block.get("draft_class")
    canon = registry.draft_method(method)
    for m, _arch, spec, _status in registry.iter_entries(canon):
        if spec.draft_class_path == wanted:
            return spec.load_draft_cls()
    archs = block.get("target_architectures") or []
    if archs:
        return registry.resolve(method, archs).load_draft_cls()
    raise DraftNotFoundError(f"saved draft class {wanted!r} for method {method!r} is not registered by any "
                             f"installed plugin")


def load_draft(path: str | Path, *, dtype: Any = None, device: Any = None) -> Any:
    """Load a draft saved by ``save_pretrained`` (or by ``draftsmith train``) as an identical module — or, for
    a directory in another registered layout, the draft its format's reader builds from it."""
    path = Path(path)
    block = read_draft_metadata(path)
    config = read_config_json(path, what="draft directory", error=DraftsmithError)
    if _native_block(config) is None:
        from .plugins import get_registry

        model = get_registry().get_format(block["method"], block["format"]).load_reader()(path, config)
        if dtype is not None:
            model = model.to(dtype)
    else:
        cls = resolve_saved_draft_class(block)
        kwargs: dict[str, Any] = {}
        if dtype is not None:
            kwargs["dtype"] = dtype
        model = cls.from_pretrained(str(path), **kwargs)
    if device is not None:
        model = model.to(device)
    return model.eval()


def save_draft(draft: Any, out_dir: str | Path, *, dtype: Any = None, check_finite: bool = True,
               architectures: list[str] | None = None) -> Path:
    """Write a draft as ``config.json`` + ``model.safetensors`` (``save_pretrained``) — the one save path of every
    exporter and of training checkpoints.

    * the module inside DDP / FSDP / compile wrappers is saved (an FSDP2 draft must be gathered by the caller);
    * ``check_finite`` refuses NaN/inf weights with an error naming them (an engine would load them silently);
    * ``dtype`` (``"bfloat16"``, a ``torch.dtype``) casts a *copy* of the tensors — never the live draft, whose fp32
      weights a round trip would lose — and the file's ``dtype`` field names the stored one;
    * ``architectures`` overrides the class name transformers writes (engines dispatch on it).
    """
    import torch

    from .nn.weights import non_finite_tensors, unwrap_model

    model = unwrap_model(draft)
    state = model.state_dict()
    if check_finite:
        bad = non_finite_tensors(state)
        if bad:
            raise DraftsmithError(f"refusing to save non-finite weights: {bad[:5]}"
                                  + (f" (+{len(bad) - 5} more)" if len(bad) > 5 else ""))
    cast = None
    if dtype is not None:
        cast = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
        if not isinstance(cast, torch.dtype) or not cast.is_floating_point:
            raise DraftsmithError(f"save dtype must be a floating torch dtype name, got {dtype!r}")
        state = {k: v.detach().to(cast) if v.is_floating_point() else v for k, v in state.items()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cast is None:
        model.save_pretrained(str(out))
    else:
        model.save_pretrained(str(out), state_dict=state)
    if cast is not None or architectures is not None:
        config_file = out / "config.json"
        written = json.loads(config_file.read_text())
        if cast is not None:
            written["dtype"] = str(cast).split(".")[-1]
        if architectures is not None:
            written["architectures"] = list(architectures)
        config_file.write_text(json.dumps(written, indent=2, sort_keys=True) + "\n")
    return out
