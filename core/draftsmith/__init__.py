"""draftsmith: build, train, evaluate and ship speculative-decoding draft models.

The public API is importable without torch or transformers; model code loads lazily.
"""

from __future__ import annotations

from typing import Any

from .errors import (
    ConfigError,
    DataError,
    DraftConflictError,
    DraftNotFoundError,
    DraftsmithError,
    PluginLoadError,
    TrainingError,
)
from .hookspecs import hookimpl
from .method import MethodSpec, TargetRequest
from .formats import FormatSpec
from .plugins import (BrokenPlugin, get_plugin_manager, get_registry, register_draft, register_format, register_method,
                      register_tracker, reset_plugins)
from .spec import DraftSpec, DraftSpecProtocol
from .tracking import TrackerSpec

__version__ = "0.1.0"

__all__ = [
    "BrokenPlugin", "ConfigError", "DataError", "DraftConflictError", "DraftNotFoundError", "DraftSpec",
    "DraftSpecProtocol", "DraftsmithError", "FormatSpec", "MethodSpec", "PluginLoadError", "TargetRequest",
    "TrackerSpec", "TrainingError", "get_method", "get_plugin_manager", "get_registry", "hookimpl", "list_drafts",
    "load_draft", "register_draft", "register_format", "register_method", "register_tracker", "reset_plugins",
    "resolve_draft_spec", "__version__",
]


def resolve_draft_spec(method: str, architectures: Any) -> Any:
    """The registered spec serving ``method`` for the first of ``architectures`` (a target's
    ``config.architectures``) that has one. Raises DraftNotFoundError / DraftConflictError."""
    return get_registry().resolve(method, architectures)


def get_method(name: str) -> MethodSpec:
    """The registered :class:`MethodSpec` called ``name``."""
    return get_registry().get_method(name)


def list_drafts(method: str | None = None) -> list[dict[str, Any]]:
    """Installed drafts as rows: method, architecture, draft_class, plugin, distribution, version, status."""
    return [
        {
            "method": m,
            "architecture": arch,
            "draft_class": spec.draft_class_path,
            "plugin": getattr(spec, "plugin", None),
            "distribution": getattr(spec, "distribution", None),
            "version": getattr(spec, "version", None),
            "status": status,
        }
        for m, arch, spec, status in get_registry().iter_entries(method)
    ]


def load_draft(path: Any, **kwargs: Any) -> Any:
    """Load a saved draft directory (config.json + model.safetensors) through the registry."""
    from .checkpoint import load_draft as _load

    return _load(path, **kwargs)
