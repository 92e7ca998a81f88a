"""The ``medusa`` formats: ``native`` (config.json + model.safetensors through the shared save helper) and ``heads``
(an engine-style layout with a reader: see below)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from draftsmith.checkpoint import save_draft
from draftsmith.errors import ConfigError


def export_native(draft: Any, out_dir: str | Path, **options: Any) -> Path:
    if options:
        raise ConfigError(f"native export takes no options, got {sorted(options)}")
    return save_draft(draft, out_dir)


# -- a second format, registered through draftsmith_register_formats (plugin.py): how a third party adds an
# engine's layout, with a reader so draftsmith.load_draft / eval --draft / train --init-from take it back.
# Layout ("heads"): config.json {"architectures": ["MedusaResidualHeads"], "hidden_size", "vocab_size",
# "num_heads"} and model.safetensors with heads.{k}.weight (H, H) / heads.{k}.bias (H) — no draftsmith metadata.
HEADS_ARCHITECTURE = "MedusaResidualHeads"


def is_heads_layout(config: dict[str, Any]) -> bool:
    """Torch-free detector: the ``heads`` layout's config.json."""
    return HEADS_ARCHITECTURE in (config.get("architectures") or [])


def export_heads(draft: Any, out_dir: str | Path, **options: Any) -> Path:
    import json

    from safetensors.torch import save_file

    from draftsmith.nn.weights import non_finite_tensors, unwrap_model

    options.pop("target", None)  # the layout does not name its target
    if options:
        raise ConfigError(f"heads export takes no options, got {sorted(options)}")
    model = unwrap_model(draft)
    state = {f"heads.{k}.{p}": getattr(head.linear, p).detach().cpu().contiguous()
             for k, head in enumerate(model.heads) for p in ("weight", "bias")}
    if non_finite_tensors(state):
        raise ConfigError("refusing to export non-finite weights")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    (out / "config.json").write_text(json.dumps({"architectures": [HEADS_ARCHITECTURE], "hidden_size": cfg.hidden_size,
                                                 "vocab_size": cfg.vocab_size, "num_heads": cfg.num_heads}))
    save_file(state, str(out / "model.safetensors"))
    return out


def read_heads(path: Path, config: dict[str, Any]) -> Any:
    from safetensors.torch import load_file

    from draftsmith.checkpoint import draft_metadata

    from .config import MedusaDraftConfig
    from .draft_medusa import MedusaDraftModel

    cfg = MedusaDraftConfig(hidden_size=int(config["hidden_size"]), num_heads=int(config["num_heads"]),
                            vocab_size=int(config["vocab_size"]))
    cfg.draftsmith = draft_metadata("medusa", f"{MedusaDraftModel.__module__}:{MedusaDraftModel.__qualname__}", None)
    model = MedusaDraftModel(cfg)
    state = {name.replace("heads.", "", 1): t for name, t in load_file(str(path / "model.safetensors")).items()}
    expected = {f"{k}.{p}" for k in range(cfg.num_heads) for p in ("weight", "bias")}
    if set(state) != expected:  # strict: every tensor accounted for
        raise ConfigError(f"{path}: tensors {sorted(state)} do not match {cfg.num_heads} heads")
    model.heads.load_state_dict({f"{n.split('.')[0]}.linear.{n.split('.')[1]}": t for n, t in state.items()})
    return model.eval()
