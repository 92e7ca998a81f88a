"""The ``tensorboard`` tracker: event files through ``torch.utils.tensorboard`` (needs the tensorboard package)."""

from __future__ import annotations

from typing import Any, Mapping

from .spec import TrackerRun, default_output


class TensorBoardTracker:
    """Scalars as ``<split>/<metric>`` tags at the optimizer step; the resolved config as a text summary.

    A resumed run opens the writer with ``purge_step = resumed_step + 1``: TensorBoard's reader then discards the
    events a killed run wrote after the checkpoint, which the resumed run writes again.
    """

    def __init__(self, log_dir: str | None = None) -> None:
        self.log_dir = log_dir
        self.writer: Any = None

    def start(self, run: TrackerRun) -> None:
        import yaml
        from torch.utils.tensorboard import SummaryWriter

        path = default_output(run, self.log_dir, "tensorboard")
        purge = run.resumed_step + 1 if run.resumed_step is not None else None
        self.writer = SummaryWriter(log_dir=str(path), purge_step=purge)
        text = yaml.safe_dump(run.config, sort_keys=False)
        # TensorBoard renders text summaries as markdown: indent four spaces for a code block.
        self.writer.add_text("config", "\n".join("    " + line for line in text.splitlines()),
                             global_step=run.resumed_step or 0)
        self.writer.flush()

    def log(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(f"{split}/{key}", float(value), global_step=step)
        self.writer.flush()

    def event(self, step: int, name: str, info: Mapping[str, Any]) -> None:
        detail = ", ".join(f"{k} {v}" for k, v in info.items())
        self.writer.add_text("events", f"{name} at step {step}" + (f": {detail}" if detail else ""), global_step=step)
        self.writer.flush()

    def finish(self, status: str) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
