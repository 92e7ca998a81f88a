"""The native DSpark checkpoint (NeMo AutoModel / DeepSpec layout): ``config.json`` + ``model.safetensors``.

``config.json`` carries ``architectures: ["Qwen3DSparkModel"]``, the Qwen3 layer dims, ``block_size``,
``mask_token_id``, ``target_layer_ids`` (output-of-layer ids), ``num_target_layers``, ``markov_rank``,
``markov_head_type``, ``enable_confidence_head``, ``confidence_head_with_markov`` and the ``draftsmith`` block;
the weights include the frozen full-vocab ``embed_tokens`` / ``lm_head`` copies, as DSpark checkpoints do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from draftsmith.checkpoint import save_draft
from draftsmith.errors import DraftsmithError

REQUIRED_CONFIG_KEYS = ("architectures", "block_size", "mask_token_id", "target_layer_ids", "num_target_layers",
                        "markov_rank", "markov_head_type", "enable_confidence_head", "confidence_head_with_markov",
                        "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
                        "vocab_size", "draftsmith")


def export_native(draft: Any, out_dir: str | Path, *, dtype: Any = None, **options: Any) -> Path:
    """Write ``draft`` to ``out_dir`` as config.json + model.safetensors through
    :func:`draftsmith.checkpoint.save_draft` (optionally a copy cast to ``dtype``, e.g. ``"bfloat16"``; non-finite
    weights refused; rotary frequencies are not saved). ``out_dir`` must be empty or new. Returns the directory."""
    if options:
        raise DraftsmithError(f"unknown native-export option(s) {sorted(options)}; known: dtype")
    config = getattr(draft, "config", None)
    if config is None or getattr(config, "draftsmith", None) is None or config.mask_token_id is None:
        raise DraftsmithError("export_native expects a DSpark draft built by Qwen3DSparkModel.build_draft_config")
    out = Path(out_dir)
    if out.exists():
        present = sorted(p.name for p in out.iterdir()) if out.is_dir() else [out.name]
        if present:  # never mix with (or silently replace) another checkpoint
            raise DraftsmithError(f"export directory {str(out)!r} is not empty ({', '.join(present)})")
    save_draft(draft, out, dtype=dtype)
    written = json.loads((out / "config.json").read_text())
    missing = [k for k in REQUIRED_CONFIG_KEYS if k not in written]
    if missing or not (out / "model.safetensors").is_file():
        raise DraftsmithError(f"native export incomplete: missing config keys {missing} or model.safetensors")
    return out
