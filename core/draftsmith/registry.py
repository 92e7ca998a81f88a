"""The registry of draft specs and methods, and the resolver.

Resolution rule: walk the target's ``config.architectures`` in order and return the first registered spec for
the method. Among specs for the same (method, architecture) the highest ``priority`` wins; two different specs
at the same top priority are a conflict, reported by ``list-drafts`` and raised (naming both distributions)
only when that pair is resolved — a conflict on some other architecture never breaks yours.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Iterator

from .errors import ConfigError, DraftConflictError, DraftNotFoundError
from .formats import FormatSpec
from .method import MethodSpec
from .spec import DraftSpec, DraftSpecProtocol

# Install hints for methods whose plugin is not installed (first-party distributions only; a third-party
# method is unknown until its own distribution is installed, so there is nothing better to suggest).
FIRST_PARTY_DISTRIBUTIONS = {
    "eagle1": "draftsmith-eagle",
    "eagle2": "draftsmith-eagle",
    "eagle3": "draftsmith-eagle",
    "dflash": "draftsmith-dflash",
    "dspark": "draftsmith-dspark",
}

IN_PROCESS = "<in-process>"


@dataclasses.dataclass(frozen=True)
class Provenance:
    plugin: str | None
    distribution: str | None
    version: str | None


def _origin(spec: Any) -> str:
    dist = getattr(spec, "distribution", None) or getattr(spec, "plugin", None) or IN_PROCESS
    version = getattr(spec, "version", None)
    return f"{dist} {version}" if version else str(dist)


class Registry:
    """Draft specs keyed by (method, architecture) and methods keyed by name.

    Plugins receive a registry in their hooks and call :meth:`register` / :meth:`register_method`; the
    provenance of whatever they register is stamped from the plugin being loaded.
    """

    def __init__(self) -> None:
        self._drafts: dict[tuple[str, str], list[Any]] = {}
        self._methods: dict[str, MethodSpec] = {}
        self._method_conflicts: dict[str, list[MethodSpec]] = {}
        self._formats: dict[tuple[str, str], list[FormatSpec]] = {}
        self._trackers: dict[str, list[Any]] = {}
        self._provenance = Provenance(IN_PROCESS, None, None)

    # -- registration -----------------------------------------------------------------------------------
    def _stamped(self, spec: Any) -> Any:
        """``spec`` with the provenance of the plugin being loaded, unless it already carries one."""
        if spec.distribution is None and spec.plugin is None:
            p = self._provenance
            spec = spec.with_provenance(p.plugin, p.distribution, p.version)
        return spec

    def register(self, spec: Any) -> Any:
        """Register a draft spec (a :class:`DraftSpec` or any :class:`DraftSpecProtocol` object)."""
        if not isinstance(spec, DraftSpecProtocol):
            raise TypeError(
                f"registry.register() expects a DraftSpec (or an object implementing DraftSpecProtocol), "
                f"got {type(spec).__name__}: {spec!r}"
            )
        if isinstance(spec, DraftSpec):  # other protocol objects carry their own provenance
            spec = self._stamped(spec)
        for arch in spec.architectures:
            entries = self._drafts.setdefault((spec.method, arch), [])
            if not any(e == spec for e in entries):
                entries.append(spec)
        return spec

    def register_method(self, method: MethodSpec) -> MethodSpec:
        """Register a method (objective, drafter, layer policy, export formats)."""
        if not isinstance(method, MethodSpec):
            raise TypeError(f"registry.register_method() expects a MethodSpec, got {type(method).__name__}")
        method = self._stamped(method)
        existing = self._methods.get(method.name)
        if existing is not None and existing != method:
            self._method_conflicts.setdefault(method.name, [existing]).append(method)
        else:
            self._methods[method.name] = method
        return method

    def register_format(self, fmt: FormatSpec) -> FormatSpec:
        """Register a checkpoint format (writer and/or reader) of a method's drafts."""
        if not isinstance(fmt, FormatSpec):
            raise TypeError(f"registry.register_format() expects a draftsmith.formats.FormatSpec, "
                            f"got {type(fmt).__name__}")
        fmt = self._stamped(fmt)
        entries = self._formats.setdefault((fmt.method, fmt.name), [])
        if fmt not in entries:
            entries.append(fmt)
        return fmt

    def register_tracker(self, tracker: Any) -> Any:
        """Register an experiment tracker (a :class:`draftsmith.tracking.TrackerSpec`), selected by name with
        ``train.trackers``."""
        from .tracking.spec import TrackerSpec

        if not isinstance(tracker, TrackerSpec):
            raise TypeError(f"registry.register_tracker() expects a draftsmith.tracking.TrackerSpec, "
                            f"got {type(tracker).__name__}")
        tracker = self._stamped(tracker)
        entries = self._trackers.setdefault(tracker.name, [])
        if tracker not in entries:
            entries.append(tracker)
        return tracker

    def merge(self, other: "Registry") -> None:
        """Add everything ``other`` (a staged registry of one plugin) registered."""
        for key, trackers in other._trackers.items():
            entries = self._trackers.setdefault(key, [])
            entries.extend(t for t in trackers if t not in entries)
        for key, formats in other._formats.items():
            entries = self._formats.setdefault(key, [])
            entries.extend(f for f in formats if f not in entries)
        for key, specs in other._drafts.items():
            entries = self._drafts.setdefault(key, [])
            entries.extend(s for s in specs if s not in entries)
        for method in other._methods.values():
            self.register_method(method)
        for name, methods in other._method_conflicts.items():
            for m in methods:
                self.register_method(m)

    def staged(self, provenance: Provenance) -> "Registry":
        """An empty registry that stamps ``provenance``; merged into this one only if the plugin succeeds."""
        stage = Registry()
        stage._provenance = provenance
        return stage

    # -- queries ----------------------------------------------------------------------------------------
    def methods(self) -> dict[str, MethodSpec]:
        return dict(self._methods)

    def get_method(self, name: str) -> MethodSpec:
        if name in self._method_conflicts:
            origins = " and ".join(_origin(m) for m in self._method_conflicts[name])
            raise DraftConflictError(f"method {name!r} is registered by more than one plugin: {origins}")
        try:
            return self._methods[name]
        except KeyError:
            raise DraftNotFoundError(self._unknown_method_message(name)) from None

    def formats(self, method: str) -> dict[str, FormatSpec]:
        """The formats of ``method``'s drafts, name → spec: those registered for its draft method, plus the
        writer-only shorthand of its :attr:`MethodSpec.export_formats` (a registered format of the same name
        wins). A name two plugins register is a conflict, raised by :meth:`get_format`."""
        canon = self.draft_method(method)
        out: dict[str, FormatSpec] = {}
        m = self._methods.get(method)
        if m is not None:
            for name, writer in m.export_formats.items():
                out[name] = FormatSpec(canon, name, writer=writer, plugin=m.plugin, distribution=m.distribution,
                                       version=m.version)
        for (fm, name), entries in sorted(self._formats.items()):
            if fm == canon:
                out[name] = entries[-1]
        return out

    def get_format(self, method: str, name: str) -> FormatSpec:
        """The format ``name`` of ``method``; ConfigError naming the known ones (or both registrants)."""
        entries = self._formats.get((self.draft_method(method), name)) or []
        if len(entries) > 1:
            raise DraftConflictError(f"format {name!r} of {method} is registered by more than one plugin: "
                                     + " and ".join(_origin(f) for f in entries))
        known = self.formats(method)
        if name not in known:
            raise ConfigError(f"method {method!r} has no {name!r} format; its formats: "
                              f"{', '.join(sorted(known)) or 'none'}")
        return known[name]

    def readable_formats(self) -> list[FormatSpec]:
        """Every registered format with a reader (what :func:`draftsmith.load_draft` can detect)."""
        return [entries[-1] for _key, entries in sorted(self._formats.items()) if entries[-1].reader is not None]

    def detect_format(self, config: dict[str, Any]) -> FormatSpec | None:
        """The one readable format whose detector accepts ``config`` (a config.json dict), or None;
        DraftConflictError when several formats of different readers claim it."""
        hits = [f for f in self.readable_formats() if f.matches(config)]
        readers = {(f.method, f.reader) for f in hits}  # one layout may back several format names
        if len(readers) > 1:
            raise DraftConflictError("this checkpoint matches several formats: "
                                     + ", ".join(f"{f.method}/{f.name} ({_origin(f)})" for f in hits))
        return hits[0] if hits else None

    def trackers(self) -> dict[str, Any]:
        """Registered trackers, name → spec (the last registration of a conflicting name; see get_tracker)."""
        return {name: entries[-1] for name, entries in sorted(self._trackers.items())}

    def get_tracker(self, name: str) -> Any:
        """The tracker ``name``; ConfigError naming the installed ones, DraftConflictError naming both plugins."""
        entries = self._trackers.get(name) or []
        if len(entries) > 1:
            raise DraftConflictError(f"tracker {name!r} is registered by more than one plugin: "
                                     + " and ".join(_origin(t) for t in entries))
        if not entries:
            raise ConfigError(f"unknown tracker {name!r}; installed trackers: "
                              f"{', '.join(sorted(self._trackers)) or 'none'}")
        return entries[0]

    def draft_method(self, method: str) -> str:
        """Canonical method whose drafts ``method`` uses (``eagle2`` → ``eagle1``)."""
        m = self._methods.get(method)
        return m.draft_method if m is not None else method

    def known_methods(self) -> list[str]:
        names = set(self._methods) | {m for (m, _a) in self._drafts}
        return sorted(names)

    def architectures(self, method: str) -> list[str]:
        canon = self.draft_method(method)
        return sorted(a for (m, a) in self._drafts if m == canon)

    def candidates(self, method: str, architecture: str) -> list[Any]:
        """All specs for the pair, best first (priority descending, registration order kept)."""
        entries = self._drafts.get((self.draft_method(method), architecture), [])
        return sorted(entries, key=lambda s: -s.priority)

    def _winner(self, method: str, architecture: str) -> tuple[Any | None, list[Any]]:
        ranked = self.candidates(method, architecture)
        if not ranked:
            return None, []
        top = [s for s in ranked if s.priority == ranked[0].priority]
        return ranked[0], top if len(top) > 1 else []

    def _unknown_method_message(self, method: str) -> str:
        known = ", ".join(self.known_methods()) or "none (no draftsmith plugin is installed)"
        hint = FIRST_PARTY_DISTRIBUTIONS.get(method)
        install = f"; install it with `pip install {hint}`" if hint else "; install the plugin that provides it"
        return f"unknown draft method {method!r}{install}. Installed methods: {known}"

    def resolve(self, method: str, architectures: Iterable[str] | str) -> Any:
        """The spec serving ``method`` for the first of ``architectures`` that has one."""
        archs = [architectures] if isinstance(architectures, str) else list(architectures or [])
        canon = self.draft_method(method)
        supported = self.architectures(method)
        if not supported and method not in self._methods:
            raise DraftNotFoundError(self._unknown_method_message(method))
        if not archs:
            raise DraftNotFoundError(
                f"no architectures given to resolve a {method!r} draft (the target config has an empty "
                f"'architectures' list?). Supported architectures for {method!r}: {', '.join(supported) or 'none'}"
            )
        for arch in archs:
            winner, tied = self._winner(canon, arch)
            if winner is None:
                continue
            if tied:
                origins = " and ".join(f"{_origin(s)} ({s.draft_class_path})" for s in tied)
                raise DraftConflictError(
                    f"conflicting {method!r} drafts for {arch!r} at priority {winner.priority}: {origins}. "
                    f"Uninstall one, disable it with DRAFTSMITH_DISABLE_PLUGINS, or register with a higher priority."
                )
            return winner
        return self._not_found(method, archs, supported)

    def _not_found(self, method: str, archs: list[str], supported: list[str]) -> Any:
        from .conventions import UNSERVED_FAMILIES

        why = "".join(f" {a} is not served: {UNSERVED_FAMILIES[a]}." for a in archs if a in UNSERVED_FAMILIES)
        raise DraftNotFoundError(
            f"no {method!r} draft spec registered for any of {archs}.{why} "
            f"Supported architectures for {method!r}: {', '.join(supported) or 'none'}. "
            f"A plugin can add one (see docs/writing-a-plugin.md)."
        )

    def iter_entries(self, method: str | None = None) -> Iterator[tuple[str, str, Any, str]]:
        """(method, architecture, spec, status) rows; ``status`` is ``ok`` or ``conflict``. Conflicting
        specs each get a row."""
        canon = self.draft_method(method) if method else None
        for (m, arch) in sorted(self._drafts):
            if canon is not None and m != canon:
                continue
            winner, tied = self._winner(m, arch)
            if tied:
                for spec in tied:
                    yield m, arch, spec, "conflict"
            elif winner is not None:
                yield m, arch, winner, "ok"
