"""Plugin discovery and isolated loading (entry-point group ``draftsmith``).

Each entry point is imported and registered on its own: a plugin that fails to import, has a malformed hook,
or registers something invalid becomes a :class:`BrokenPlugin` record and the others keep working.
``DRAFTSMITH_STRICT_PLUGINS=1`` turns such a failure into a :class:`PluginLoadError` naming the distribution
and the original exception; ``DRAFTSMITH_DISABLE_PLUGINS=a,b`` skips plugins by name. Discovery happens on
first use (never at import time) and is cached; :func:`reset_plugins` starts over (tests).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from importlib import metadata
from typing import Any, Iterable

import pluggy

from . import hookspecs
from .errors import PluginLoadError
from .registry import IN_PROCESS, Provenance, Registry

ENTRY_POINT_GROUP = "draftsmith"
REGISTRATION_HOOKS = ("draftsmith_register_drafts", "draftsmith_register_methods", "draftsmith_register_formats",
                      "draftsmith_register_trackers")
# Core's own plugin modules, registered before any entry point (and not subject to DRAFTSMITH_DISABLE_PLUGINS):
# what every installation has, registered through the same hooks a third party uses.
BUILTIN_MODULES = ("draftsmith.tracking.builtin",)
BUILTIN_PLUGIN = "draftsmith"


@dataclasses.dataclass(frozen=True)
class BrokenPlugin:
    """A plugin that could not be loaded or registered, and why."""

    name: str
    distribution: str | None
    version: str | None
    error: str


@dataclasses.dataclass(frozen=True)
class LoadedPlugin:
    name: str
    distribution: str | None
    version: str | None
    module: str
    hooks: tuple[str, ...]


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _disabled_from_env() -> set[str]:
    return {p.strip() for p in os.environ.get("DRAFTSMITH_DISABLE_PLUGINS", "").split(",") if p.strip()}


def _dist_info(ep: Any) -> tuple[str | None, str | None]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return None, None
    try:
        return dist.metadata["Name"], dist.version
    except Exception:  # a distribution with broken metadata still loads; just no provenance
        return getattr(dist, "name", None), None


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _hook_names(module: Any) -> list[str]:
    marker = f"{hookspecs.PROJECT}_impl"
    return sorted(n for n in dir(module) if n.startswith("draftsmith_") and hasattr(getattr(module, n), marker))


class PluginManager:
    """The loaded plugins, their registry and the failures, behind typed methods (core never calls
    ``pm.hook.*`` directly elsewhere)."""

    def __init__(self, entry_points: Iterable[Any] | None = None, *, strict: bool | None = None,
                 disabled: Iterable[str] | None = None) -> None:
        self.strict = _env_flag("DRAFTSMITH_STRICT_PLUGINS") if strict is None else strict
        self.disabled = _disabled_from_env() if disabled is None else set(disabled)
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.registry = Registry()
        self.loaded: list[LoadedPlugin] = []
        self.broken: list[BrokenPlugin] = []
        self.skipped: list[str] = []
        self.builtin: list[LoadedPlugin] = []
        for module_name in BUILTIN_MODULES:
            self._load_builtin(module_name)
        if entry_points is None:
            entry_points = metadata.entry_points(group=ENTRY_POINT_GROUP)
        for ep in sorted(entry_points, key=lambda e: e.name):
            self._load_one(ep)

    def _fail(self, name: str, dist: str | None, version: str | None, exc: BaseException, what: str) -> None:
        message = f"{what}: {_describe(exc)}"
        if self.strict:
            raise PluginLoadError(
                f"draftsmith plugin {name!r} from distribution {dist or '<unknown>'} {version or ''} failed to "
                f"{what.split(' ', 1)[-1]}: {_describe(exc)}".replace("  ", " ")
            ) from exc
        self.broken.append(BrokenPlugin(name, dist, version, message))

    def _load_one(self, ep: Any) -> None:
        dist, version = _dist_info(ep)
        if ep.name in self.disabled:
            self.skipped.append(ep.name)
            return
        try:
            module = ep.load()
        except BaseException as exc:  # noqa: BLE001 - an import may raise anything, even SystemExit
            if isinstance(exc, KeyboardInterrupt):
                raise
            return self._fail(ep.name, dist, version, exc, "failed to import")
        hooks = _hook_names(module)
        known = {n for n in dir(hookspecs) if n.startswith("draftsmith_")}
        try:
            unknown = [h for h in hooks if h not in known]
            if unknown:
                raise pluggy.PluginValidationError(
                    module, f"unknown hook(s) {unknown}; known hooks: {sorted(known)}")
            if self.pm.get_plugin(ep.name) is not None:
                other = next((p for p in self.loaded if p.name == ep.name), None)
                raise ValueError(f"plugin name {ep.name!r} is already used by distribution "
                                 f"{other.distribution if other else '<unknown>'}")
            self.pm.register(module, name=ep.name)
        except Exception as exc:
            return self._fail(ep.name, dist, version, exc, "failed to register")
        stage = self.registry.staged(Provenance(ep.name, dist, version))
        others = [p for p in self.pm.get_plugins() if p is not module]
        try:
            for hook in REGISTRATION_HOOKS:
                self.pm.subset_hook_caller(hook, remove_plugins=others)(registry=stage)
        except Exception as exc:
            self.pm.unregister(module)
            return self._fail(ep.name, dist, version, exc, "failed in registration hook")
        self.registry.merge(stage)
        self.loaded.append(LoadedPlugin(ep.name, dist, version, module.__name__, tuple(hooks)))

    def _load_builtin(self, module_name: str) -> None:
        """Register one of core's own plugin modules; a failure here is a bug in draftsmith itself, so it raises."""
        import importlib

        from . import __version__

        module = importlib.import_module(module_name)
        self.pm.register(module, name=f"{BUILTIN_PLUGIN}:{module_name}")
        stage = self.registry.staged(Provenance(BUILTIN_PLUGIN, "draftsmith", __version__))
        others = [p for p in self.pm.get_plugins() if p is not module]
        for hook in REGISTRATION_HOOKS:
            self.pm.subset_hook_caller(hook, remove_plugins=others)(registry=stage)
        self.registry.merge(stage)
        self.builtin.append(LoadedPlugin(BUILTIN_PLUGIN, "draftsmith", __version__, module_name,
                                         tuple(_hook_names(module))))

    # -- typed hook wrappers ----------------------------------------------------------------------------
    def find_decoder_layers(self, model: Any) -> Any:
        return self.pm.hook.draftsmith_find_decoder_layers(model=model)


_LOCK = threading.Lock()
_MANAGER: PluginManager | None = None


def get_plugin_manager() -> PluginManager:
    """The process-wide plugin manager, discovering plugins on first call."""
    global _MANAGER
    with _LOCK:
        if _MANAGER is None:
            _MANAGER = PluginManager()
        return _MANAGER


def reset_plugins() -> None:
    """Forget discovered plugins and in-process registrations (the next use rediscovers)."""
    global _MANAGER
    with _LOCK:
        _MANAGER = None


def get_registry() -> Registry:
    return get_plugin_manager().registry


def register_draft(spec: Any) -> Any:
    """Register a draft spec in this process without packaging (notebooks, tests)."""
    from .spec import DraftSpec

    if isinstance(spec, DraftSpec) and spec.plugin is None and spec.distribution is None:
        spec = spec.with_provenance(IN_PROCESS, None, None)
    return get_registry().register(spec)


def register_method(method: Any) -> Any:
    """Register a method in this process without packaging."""
    from .method import MethodSpec

    if isinstance(method, MethodSpec) and method.plugin is None and method.distribution is None:
        method = method.with_provenance(IN_PROCESS, None, None)
    return get_registry().register_method(method)


def register_format(fmt: Any) -> Any:
    """Register a checkpoint format in this process without packaging."""
    from .formats import FormatSpec

    if isinstance(fmt, FormatSpec) and fmt.plugin is None and fmt.distribution is None:
        fmt = fmt.with_provenance(IN_PROCESS, None, None)
    return get_registry().register_format(fmt)


def register_tracker(tracker: Any) -> Any:
    """Register an experiment tracker in this process without packaging."""
    from .tracking.spec import TrackerSpec

    if isinstance(tracker, TrackerSpec) and tracker.plugin is None and tracker.distribution is None:
        tracker = tracker.with_provenance(IN_PROCESS, None, None)
    return get_registry().register_tracker(tracker)
