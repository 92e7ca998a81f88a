"""The ``wandb`` tracker: a Weights & Biases run (online, offline or disabled — W&B's own ``mode``)."""

from __future__ import annotations

from typing import Any, Mapping

from .spec import TrackerRun, default_output

STEP_KEY = "trainer/step"


class WandbTracker:
    """Scalars as ``<split>/<metric>`` against a ``trainer/step`` axis; the resolved config as the run config.

    The optimizer step is a logged metric (``define_metric``), not W&B's own monotonic ``step``, so the records a
    resumed run writes again for steps a killed run had already logged are kept instead of rejected. The W&B run
    id is stored in ``trackers.json``: a resumed draftsmith run continues the same W&B run (``resume="allow"``).
    """

    def __init__(self, project: str = "draftsmith", entity: str | None = None, name: str | None = None,
                 group: str | None = None, tags: list[str] | None = None, notes: str | None = None,
                 mode: str | None = None, dir: str | None = None) -> None:  # noqa: A002 - W&B's own name
        self.kwargs = {"project": project, "entity": entity, "name": name, "group": group,
                       "tags": list(tags or []), "notes": notes, "mode": mode}
        self.dir = dir
        self.run: Any = None

    def start(self, run: TrackerRun) -> None:
        import wandb

        path = default_output(run, self.dir, "")
        path.mkdir(parents=True, exist_ok=True)
        kwargs = {k: v for k, v in self.kwargs.items() if v not in (None, [])}
        kwargs.setdefault("name", run.name)
        if run.state.get("run_id"):
            kwargs.update(id=run.state["run_id"], resume="allow")
        # console="off": W&B would otherwise wrap stdout/stderr, and with them the run's progress bar; quiet: no
        # summary table at the end (the run's own lines say it), W&B's warnings and sync hint stay.
        self.run = wandb.init(dir=str(path), config=run.config, settings=wandb.Settings(console="off", quiet=True),
                              **kwargs)
        run.state["run_id"] = self.run.id
        self.run.define_metric(STEP_KEY)
        for split in ("train", "eval"):
            self.run.define_metric(f"{split}/*", step_metric=STEP_KEY)

    def log(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        self.run.log({STEP_KEY: step, **{f"{split}/{k}": v for k, v in metrics.items()}})

    def event(self, step: int, name: str, info: Mapping[str, Any]) -> None:
        self.run.log({STEP_KEY: step, f"events/{name}": 1})

    def finish(self, status: str) -> None:
        if self.run is not None:
            self.run.finish(exit_code=0 if status == "completed" else 1)
            self.run = None
