"""The tracker contract: :class:`TrackerSpec` (what a plugin registers) and :class:`Tracker` (what it builds)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Union, runtime_checkable

ImportRef = Union[str, Callable[..., Any]]  # "module:Class" (imported on first use) or the callable


@dataclasses.dataclass
class TrackerRun:
    """What a tracker is started with.

    * ``output_dir`` — the run directory (trackers that write files put them under it unless told otherwise);
    * ``name`` — a human name for the run (the output directory's name);
    * ``config`` — the resolved run configuration as a nested dict (what ``config.yaml`` holds);
    * ``resumed_step`` — the step the run resumes from, or ``None`` for a fresh run: records a killed run wrote
      after that step are written again, so a tracker that can should drop them (TensorBoard's ``purge_step``);
    * ``state`` — what this tracker stored in ``state`` on an earlier start of the same run (e.g. the W&B or
      MLflow run id, so a resumed run continues the same tracker run); update it in place, it is saved to
      ``<output_dir>/trackers.json`` after ``start``.
    """

    output_dir: Path
    name: str
    config: dict[str, Any]
    resumed_step: int | None = None
    state: dict[str, Any] = dataclasses.field(default_factory=dict)


@runtime_checkable
class Tracker(Protocol):
    """One experiment tracker, built by ``TrackerSpec.factory(**options)`` on the main rank."""

    def start(self, run: TrackerRun) -> None:
        """Open the tracker's run and log ``run.config``. An exception here is a tracker that failed to start."""

    def log(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        """Log ``metrics`` (name → number, possibly NaN/inf) of ``split`` (``"train"`` or ``"eval"``) at ``step``."""

    def event(self, step: int, name: str, info: Mapping[str, Any]) -> None:
        """A run event (``"resume"`` with the checkpoint it resumed from); trackers may ignore it."""

    def finish(self, status: str) -> None:
        """Close the run; ``status`` is ``"completed"`` or ``"failed"``."""


@dataclasses.dataclass(frozen=True)
class TrackerSpec:
    """A tracker a plugin provides.

    * ``name`` — the value of ``train.trackers`` that selects it;
    * ``factory`` — ``factory(**options) -> Tracker`` (a class or function, or ``"module:Name"`` imported only
      when a run selects the tracker, so registering it costs nothing);
    * ``options`` — every option the tracker takes with its default (``tracker_options.<name>`` in the run
      config is checked against these keys);
    * ``requires`` — the pip requirement(s) the tracker needs, named in the error when it fails to start;
    * ``summary`` — one line for ``draftsmith plugins``.
    """

    name: str
    factory: ImportRef
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    requires: tuple[str, ...] = ()
    summary: str = ""
    plugin: str | None = None
    distribution: str | None = None
    version: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip() or "," in self.name:
            raise ValueError(f"TrackerSpec.name must be a non-empty name without commas, got {self.name!r}")
        object.__setattr__(self, "options", dict(self.options))
        object.__setattr__(self, "requires", tuple(self.requires))

    def load_factory(self) -> Callable[..., Any]:
        if isinstance(self.factory, str):
            from ..spec import import_object

            return import_object(self.factory)
        return self.factory

    def with_provenance(self, plugin: str | None, distribution: str | None, version: str | None) -> "TrackerSpec":
        return dataclasses.replace(self, plugin=plugin, distribution=distribution, version=version)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "summary": self.summary, "options": dict(self.options),
                "requires": list(self.requires), "plugin": self.plugin, "distribution": self.distribution,
                "version": self.version}


def default_output(run: TrackerRun, value: Any, subdir: str) -> Path:
    """``value`` as a path, or ``<output_dir>/<subdir>`` when unset."""
    return Path(value) if value else Path(run.output_dir) / subdir
