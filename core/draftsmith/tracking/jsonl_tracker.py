"""The ``jsonl`` tracker: ``<output_dir>/metrics.jsonl``, one JSON object per record — the run's own record."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

from .spec import TrackerRun

METRICS_FILE = "metrics.jsonl"


def _plain(value: Any) -> Any:
    """``value`` with every non-finite float, at any depth, as the string ``"nan"`` / ``"inf"`` / ``"-inf"``: JSON
    has no NaN or infinity (Python writes bare ``NaN``, which strict parsers reject). ``draftsmith report`` and
    the trackers read the strings back as floats. Also what ``draftsmith eval --json`` writes."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


json_plain = _plain  # public name for other JSON writers


class JsonlTracker:
    """Train/eval records ``{"step", "split", **metrics}`` and events ``{"event", "step", **info}``, flushed per
    line. On resume the records a killed run wrote after the checkpoint are dropped first (they are redone)."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self._fh: Any = None

    def start(self, run: TrackerRun) -> None:
        self.path = Path(run.output_dir) / METRICS_FILE
        if run.resumed_step is not None:
            truncate_after(self.path, run.resumed_step)
        self._fh = open(self.path, "a")

    def _write(self, record: dict[str, Any]) -> None:
        self._fh.write(json.dumps({k: _plain(v) for k, v in record.items()}) + "\n")
        self._fh.flush()

    def log(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        self._write({"step": step, "split": split, **metrics})

    def event(self, step: int, name: str, info: Mapping[str, Any]) -> None:
        self._write({"event": name, "step": step, **info})

    def finish(self, status: str) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def truncate_after(path: Path, step: int) -> None:
    """Drop the records a killed run logged after ``step`` (the checkpoint it resumes from), atomically."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)
