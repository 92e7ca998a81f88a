"""DFlash export: the z-lab / vLLM (``dflash``) / SGLang checkpoint (peers-and-formats.md §2.4).

``save_pretrained`` already writes that layout, so exporting is saving plus checking what the engines parse:
``architectures == ["DFlashDraftModel"]``, ``model_type: qwen3``, ``block_size``, ``dflash_config
{mask_token_id, target_layer_ids}`` (output-of-layer ids, z-lab's and SGLang's convention; vLLM adds 1 itself),
``num_target_layers``, one ``layer_types`` entry per draft layer, and exactly the tensors ``layers.*``,
``fc.weight``, ``hidden_norm.weight``, ``norm.weight`` — no embedding, no lm_head (engines share the
target's). Written by :func:`draftsmith.checkpoint.save_draft`: non-finite weights are refused (an engine
would load them silently), the draft inside DDP/FSDP wrappers is saved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from draftsmith.checkpoint import save_draft
from draftsmith.conventions import read_config_json
from draftsmith.errors import ConfigError, DraftsmithError
from draftsmith.formats import sglang_dflash_causality_problem
from draftsmith.nn.weights import unwrap_model

from .config import NATIVE_ARCHITECTURE

REQUIRED_TOP_LEVEL = ("block_size", "dflash_config", "num_target_layers", "layer_types", "hidden_size",
                      "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
                      "intermediate_size", "rms_norm_eps", "rope_parameters", "vocab_size")


def check_native_checkpoint(out_dir: str | Path) -> dict[str, Any]:
    """Validate an exported directory against what the DFlash engines read; returns its config dict."""
    from safetensors import safe_open

    out_dir = Path(out_dir)
    config = read_config_json(out_dir, what="DFlash checkpoint directory", error=DraftsmithError)
    problems = []
    if config.get("architectures") != [NATIVE_ARCHITECTURE]:
        problems.append(f"architectures is {config.get('architectures')}, expected [{NATIVE_ARCHITECTURE!r}]")
    if config.get("model_type") != "qwen3":
        problems.append(f"model_type is {config.get('model_type')!r}, expected 'qwen3'")
    problems += [f"config.json lacks {key!r}" for key in REQUIRED_TOP_LEVEL if key not in config]
    dflash = config.get("dflash_config") or {}
    problems += [f"dflash_config lacks {key!r}" for key in ("mask_token_id", "target_layer_ids") if key not in dflash]
    if len(config.get("layer_types") or []) != config.get("num_hidden_layers"):
        problems.append("layer_types must have one entry per draft layer")
    with safe_open(str(out_dir / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    depth = config.get("num_hidden_layers", 0)
    expected = {"fc.weight", "hidden_norm.weight", "norm.weight"}
    missing = sorted(n for n in expected if n not in names)
    stray = sorted(n for n in names - expected
                   if not (n.startswith("layers.") and int(n.split(".")[1]) < depth))
    if missing or stray:
        problems.append(f"tensor names: missing {missing}, unexpected {stray}")
    if problems:
        raise DraftsmithError(f"{out_dir} is not a valid DFlash checkpoint: " + "; ".join(problems))
    return config


def export_native(draft: Any, out_dir: str | Path, **options: Any) -> Path:
    """Write ``draft`` as a native DFlash checkpoint (``config.json`` + ``model.safetensors``) in ``out_dir``."""
    if options:
        raise DraftsmithError(f"export_native takes no options, got {sorted(options)}")
    draft = unwrap_model(draft)
    if getattr(draft.config, "dflash_config", None) is None:
        raise DraftsmithError(f"{type(draft).__name__} is not a DFlash draft (its config has no dflash_config)")
    out_dir = save_draft(draft, out_dir, architectures=[NATIVE_ARCHITECTURE])  # non-finite weights refused
    check_native_checkpoint(out_dir)
    return out_dir


def export_sglang(draft: Any, out_dir: str | Path, **options: Any) -> Path:
    """The z-lab layout SGLang reads, refusing drafts whose attention SGLang would change (see
    :func:`draftsmith.formats.sglang_dflash_causality_problem`)."""
    config = unwrap_model(draft).config
    problem = sglang_dflash_causality_problem(bool(getattr(config, "causal", False)), config.layer_types or [])
    if problem:
        raise ConfigError(f"the 'sglang' format cannot hold {problem}")
    return export_native(draft, out_dir, **options)
