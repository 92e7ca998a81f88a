"""Run output on the main rank: metrics JSONL, console lines and the tqdm progress bar (with ETA)."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any


def _plain(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    return value


class RunLog:
    """Writes ``metrics.jsonl`` and prints progress; silent on non-main ranks."""

    def __init__(self, output_dir: str | Path, *, enabled: bool, progress: bool, total: int, initial: int) -> None:
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self._fh = open(self.path, "a") if enabled else None
        self._bar = None
        if enabled and progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True,
                             file=sys.stderr)
        self.start = time.time()

    def info(self, message: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def record(self, record: dict[str, Any]) -> None:
        if self._fh is None:
            return
        record = {k: _plain(v) for k, v in record.items()}
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()

    def advance(self, steps: int = 1, postfix: dict[str, Any] | None = None) -> None:
        if self._bar is not None:
            self._bar.update(steps)
            if postfix:
                self._bar.set_postfix({k: f"{_plain(v):.4g}" if isinstance(_plain(v), float) else v
                                       for k, v in postfix.items()}, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._fh is not None:
            self._fh.close()
            self._fh = None
