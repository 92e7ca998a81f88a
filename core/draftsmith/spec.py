"""The draft specification: what a plugin registers to say "method M serves architectures A with class C".

`DraftSpecProtocol` is the contract the registry accepts from any object; `DraftSpec` is the default frozen
dataclass implementation third parties construct directly.

A draft class (the `draft_cls` a spec points at) must provide:

* ``build_draft_config(target_config, **options) -> PretrainedConfig`` (classmethod): the draft's config, every
  size read from the target config so same-shaped architectures need no code of their own;
* ``__init__(config)``: build the module from that config;
* ``save_pretrained(path)`` / ``from_pretrained(path)``: ``config.json`` + ``model.safetensors``.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Protocol, runtime_checkable

from .errors import DraftsmithError


@runtime_checkable
class DraftSpecProtocol(Protocol):
    """What the registry needs from a registered spec (any object with these members is accepted)."""

    method: str
    architectures: tuple[str, ...]
    priority: int

    @property
    def draft_class_path(self) -> str: ...

    def load_draft_cls(self) -> type: ...

    def build_config(self, target_config: Any, **options: Any) -> Any: ...

    def build(self, target_config: Any, **options: Any) -> Any: ...


def import_object(path: str) -> Any:
    """Import ``"package.module:Qual.Name"`` and return the object, with an error that names the path."""
    module_name, sep, qualname = path.partition(":")
    if not sep or not module_name or not qualname:
        raise DraftsmithError(f"import path {path!r} must look like 'package.module:QualName'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise DraftsmithError(f"cannot import module {module_name!r} (from {path!r}): {exc}") from exc
    for part in qualname.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise DraftsmithError(f"module {module_name!r} has no attribute {qualname!r} (from {path!r})") from None
    return obj


def object_path(obj: Any) -> str:
    """The ``module:QualName`` string of a class or function (or the string itself)."""
    if isinstance(obj, str):
        return obj
    return f"{obj.__module__}:{obj.__qualname__}"


@dataclasses.dataclass(frozen=True)
class DraftSpec:
    """A draft model registration: ``method`` × ``architectures`` → ``draft_cls``.

    ``draft_cls`` may be a class or a ``"module:QualName"`` string imported only when first used, so
    registering costs no torch import. ``plugin``, ``distribution`` and ``version`` are provenance; the
    registry fills them from the plugin that registered the spec.
    """

    method: str
    architectures: tuple[str, ...]
    draft_cls: Any
    priority: int = 0
    description: str = ""
    plugin: str | None = None
    distribution: str | None = None
    version: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.method, str) or not self.method.strip():
            raise ValueError(f"DraftSpec.method must be a non-empty string, got {self.method!r}")
        archs = self.architectures
        if isinstance(archs, str):
            archs = (archs,)
        archs = tuple(archs)
        if not archs or not all(isinstance(a, str) and a for a in archs):
            raise ValueError(f"DraftSpec.architectures must be non-empty strings, got {self.architectures!r}")
        object.__setattr__(self, "architectures", archs)
        if isinstance(self.draft_cls, str):
            module_name, sep, qualname = self.draft_cls.partition(":")
            if not (sep and module_name and qualname):
                raise ValueError(f"DraftSpec.draft_cls {self.draft_cls!r} must look like 'package.module:QualName'")
        elif not isinstance(self.draft_cls, type):
            raise ValueError(f"DraftSpec.draft_cls must be a class or an import string, got {self.draft_cls!r}")
        if not isinstance(self.priority, int) or isinstance(self.priority, bool):
            raise ValueError(f"DraftSpec.priority must be an int, got {self.priority!r}")

    @property
    def draft_class_path(self) -> str:
        return object_path(self.draft_cls)

    def load_draft_cls(self) -> type:
        """The draft class, importing it on first use."""
        if isinstance(self.draft_cls, type):
            return self.draft_cls
        cls = import_object(self.draft_cls)
        if not isinstance(cls, type):
            raise DraftsmithError(f"{self.draft_cls!r} is not a class")
        return cls

    def build_config(self, target_config: Any, **options: Any) -> Any:
        """The draft's config for ``target_config`` (an HF ``PretrainedConfig``)."""
        cls = self.load_draft_cls()
        builder = getattr(cls, "build_draft_config", None)
        if builder is None:
            raise DraftsmithError(f"draft class {self.draft_class_path} has no build_draft_config classmethod")
        return builder(target_config, **options)

    def build(self, target_config: Any, **options: Any) -> Any:
        """A freshly initialised draft module for ``target_config``."""
        return self.load_draft_cls()(self.build_config(target_config, **options))

    def with_provenance(self, plugin: str | None, distribution: str | None, version: str | None) -> "DraftSpec":
        return dataclasses.replace(self, plugin=plugin, distribution=distribution, version=version)
