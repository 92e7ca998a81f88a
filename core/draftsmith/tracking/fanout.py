"""One run's trackers: built from ``train.trackers`` / ``tracker_options``, fed every record on the main rank.

Failure rules (a tracker is a side channel; the metrics file is the run's record):

* a tracker that cannot be built or started is one line naming it, its cause and its pip requirement. With
  ``train.tracker_errors: stop`` (the default) the run stops before the first step; with ``warn`` it trains
  without that tracker.
* a tracker that fails later (a full disk under its log dir, a lost server) is reported once and dropped — a
  logging hiccup never kills a long run. ``jsonl`` is the exception: ``metrics.jsonl`` is what resume and
  ``draftsmith report`` read, so its errors propagate.

Tracker state (run ids) lives in ``<output_dir>/trackers.json`` so a resumed run continues the same W&B/MLflow run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import ConfigError
from .spec import TrackerRun, TrackerSpec

ALWAYS_ON = "jsonl"
STATE_FILE = "trackers.json"


def _registry(registry: Any = None) -> Any:
    if registry is not None:
        return registry
    from ..plugins import get_registry

    return get_registry()


def selected_trackers(names: list[str] | tuple[str, ...], options: Mapping[str, Any], registry: Any = None
                      ) -> list[tuple[TrackerSpec, dict[str, Any]]]:
    """(spec, options) per selected tracker, ``jsonl`` first; ConfigError for unknown names or option keys."""
    registry = _registry(registry)
    known = registry.trackers()
    wanted = [ALWAYS_ON] + [n for n in names if n != ALWAYS_ON]
    for name in list(names) + list(options or {}):
        if name not in known:
            raise ConfigError(f"unknown tracker {name!r} (train.trackers / tracker_options); installed trackers: "
                              f"{', '.join(sorted(known)) or 'none'} — a plugin adds more through the "
                              f"draftsmith_register_trackers hook")
    # every tracker_options section is checked, selected or not: a typo shows now, not when it is switched on
    checked = {name: _options(registry.get_tracker(name), (options or {}).get(name)) for name in (options or {})}
    out, seen = [], set()
    for name in wanted:
        if name in seen:
            continue
        seen.add(name)
        spec = registry.get_tracker(name)
        out.append((spec, {**spec.options, **checked.get(name, {})}))
    return out


def _options(spec: TrackerSpec, given: Any) -> dict[str, Any]:
    given = given or {}
    if not isinstance(given, Mapping):
        raise ConfigError(f"tracker_options.{spec.name}: expected a mapping of options, got {given!r}")
    unknown = sorted(set(given) - set(spec.options))
    if unknown:
        raise ConfigError(f"tracker_options.{spec.name}: unknown option(s) {', '.join(unknown)}; the {spec.name!r} "
                          f"tracker takes: {', '.join(sorted(spec.options)) or 'no options'}")
    return dict(given)


def check_tracker_config(config: Any, registry: Any = None) -> None:
    """Torch-free check of a RunConfig's tracker selection (``draftsmith train`` calls it before torch)."""
    selected_trackers(config.train.trackers, config.tracker_options, registry)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries of a record (bools and other strings dropped; 'nan'/'inf' strings read back as floats)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
            value = value.item()
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            out[key] = value  # ints stay ints (metrics.jsonl keeps "epoch": 0)
        elif isinstance(value, str) and value in ("nan", "inf", "-inf"):
            out[key] = float(value)
    return out


class RunTrackers:
    """The trackers of one run (main rank). ``say`` prints a line to the run's console."""

    def __init__(self, selected: list[tuple[TrackerSpec, dict[str, Any]]], *, on_error: str = "stop",
                 say: Callable[[str], None] = print) -> None:
        if on_error not in ("stop", "warn"):
            raise ConfigError(f"train.tracker_errors must be 'stop' or 'warn', got {on_error!r}")
        self.selected, self.on_error, self.say = selected, on_error, say
        self.active: list[tuple[str, Any]] = []

    @classmethod
    def from_config(cls, config: Any, *, say: Callable[[str], None] = print, registry: Any = None) -> "RunTrackers":
        return cls(selected_trackers(config.train.trackers, config.tracker_options, registry),
                   on_error=config.train.tracker_errors, say=say)

    @property
    def names(self) -> list[str]:
        return [name for name, _t in self.active]

    def _failure(self, spec: TrackerSpec, exc: BaseException, when: str) -> str:
        need = f" (needs {' '.join(spec.requires)}: pip install {' '.join(spec.requires)})" if spec.requires else ""
        return f"tracker {spec.name!r} failed to {when}: {_describe(exc)}{need}"

    def start(self, run: TrackerRun) -> str | None:
        """Build and start every tracker. Returns the one-line error when a tracker failed and the policy is
        ``stop`` (the started ones are closed again), else ``None`` (failures reported as warnings)."""
        state_path = Path(run.output_dir) / STATE_FILE
        saved = _read_state(state_path) if run.resumed_step is not None else {}
        states: dict[str, Any] = {}
        for spec, options in self.selected:
            tracker_run = TrackerRun(run.output_dir, run.name, run.config, run.resumed_step,
                                     dict(saved.get(spec.name) or {}))
            try:
                tracker = spec.load_factory()(**options)
                tracker.start(tracker_run)
            except Exception as exc:  # noqa: BLE001 - a third-party tracker may raise anything
                if spec.name == ALWAYS_ON:
                    raise
                message = self._failure(spec, exc, "start")
                if self.on_error == "stop":
                    self.finish("failed")
                    return f"{message}; set train.tracker_errors=warn to train without it"
                self.say(f"warning: {message}; training continues without it (train.tracker_errors=warn)")
                continue
            self.active.append((spec.name, tracker))
            states[spec.name] = tracker_run.state
        _write_state(state_path, {**saved, **{k: v for k, v in states.items() if v}})
        return None

    def _each(self, call: Callable[[Any], None], when: str) -> None:
        for name, tracker in list(self.active):
            try:
                call(tracker)
            except Exception as exc:  # noqa: BLE001
                if name == ALWAYS_ON:
                    raise
                spec = next(s for s, _o in self.selected if s.name == name)
                self.say(f"warning: {self._failure(spec, exc, when)}; it is dropped for the rest of the run")
                self.active = [(n, t) for n, t in self.active if n != name]

    def log(self, step: int, split: str, metrics: Mapping[str, Any]) -> None:
        values = scalars(metrics)
        self._each(lambda t: t.log(step, split, values), f"log step {step}")

    def event(self, step: int, name: str, info: Mapping[str, Any]) -> None:
        self._each(lambda t: t.event(step, name, dict(info)), f"record the {name} event")

    def finish(self, status: str) -> None:
        self._each(lambda t: t.finish(status), "finish")
        self.active = []


def _read_state(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _write_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)

