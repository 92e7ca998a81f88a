"""The ``medusa`` export formats: ``native`` (config.json + model.safetensors through the shared save helper)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from draftsmith.checkpoint import save_draft
from draftsmith.errors import ConfigError


def export_native(draft: Any, out_dir: str | Path, **options: Any) -> Path:
    if options:
        raise ConfigError(f"native export takes no options, got {sorted(options)}")
    return save_draft(draft, out_dir)
