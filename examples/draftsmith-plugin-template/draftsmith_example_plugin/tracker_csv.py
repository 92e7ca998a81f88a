"""A third-party experiment tracker: every scalar as a row of ``<output_dir>/<file>`` (step, split, name, value).

Registered in ``plugin.py`` through ``draftsmith_register_trackers``; selected with ``train.trackers: [csv]``
and configured with ``tracker_options: {csv: {file: scalars.csv}}``.
"""

from __future__ import annotations

import csv
from pathlib import Path


class CsvTracker:
    def __init__(self, file: str = "scalars.csv") -> None:
        self.file = file
        self._fh = None
        self._rows = None

    def start(self, run) -> None:
        path = Path(run.output_dir) / self.file
        if run.resumed_step is not None and path.is_file():  # drop the rows the resumed run writes again
            with open(path, newline="") as fh:
                kept = [r for r in csv.reader(fh)][1:]
            kept = [r for r in kept if int(r[0]) <= run.resumed_step]
        else:
            kept = []
        self._fh = open(path, "w", newline="")
        self._rows = csv.writer(self._fh)
        self._rows.writerow(["step", "split", "name", "value"])
        self._rows.writerows(kept)

    def log(self, step, split, metrics) -> None:
        self._rows.writerows([step, split, name, repr(float(value))] for name, value in metrics.items())
        self._fh.flush()

    def event(self, step, name, info) -> None:
        pass  # scalars only

    def finish(self, status) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
