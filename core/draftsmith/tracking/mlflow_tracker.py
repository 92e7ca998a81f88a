"""The ``mlflow`` tracker: an MLflow run through ``MlflowClient`` (no global MLflow state is touched)."""

from __future__ import annotations

import os
import re
import time
from typing import Any, Mapping

from .spec import TrackerRun

_BAD_NAME_CHARS = re.compile(r"[^/\w.\- ]")  # what MLflow accepts in metric and param names (colons aside)
MAX_PARAM_VALUE = 6000  # MLflow's limit on a param value
PARAMS_PER_BATCH = 100


def metric_name(name: str) -> str:
    """``name`` with the characters MLflow refuses replaced (``accept_rate@1`` → ``accept_rate_1``)."""
    return _BAD_NAME_CHARS.sub("_", name)


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config → ``{"train.lr": "0.002", ...}`` (MLflow params are flat strings)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[metric_name(name)] = str(value)[:MAX_PARAM_VALUE]
    return out


def _is_file_store(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file:")


class MlflowTracker:
    """Scalars as ``<split>/<metric>`` at the optimizer step; the config as params (flattened) and as the
    ``config.yaml`` artifact. ``tracking_uri`` unset: ``$MLFLOW_TRACKING_URI``, else a local file store at
    ``<output_dir>/mlruns`` (MLflow 3 keeps its file store behind ``MLFLOW_ALLOW_FILE_STORE``, which is set for a
    file store chosen here or named by the user). A resumed run continues the same MLflow run (its id is kept in
    ``trackers.json``); params, which MLflow never lets change, are logged only by the first start.
    """

    def __init__(self, tracking_uri: str | None = None, experiment: str = "draftsmith", run_name: str | None = None,
                 tags: Mapping[str, Any] | None = None) -> None:
        self.tracking_uri, self.experiment, self.run_name = tracking_uri, experiment, run_name
        self.tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self.client: Any = None
        self.run_id: str | None = None

    def start(self, run: TrackerRun) -> None:
        import yaml
        from mlflow.tracking import MlflowClient

        uri = self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or (run.output_dir / "mlruns").resolve().as_uri()
        if _is_file_store(uri):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(self.experiment)
        experiment_id = experiment.experiment_id if experiment is not None else client.create_experiment(self.experiment)
        previous = run.state.get("run_id")
        if previous and _exists(client, previous):
            self.run_id = previous
            client.update_run(previous, status="RUNNING")
            return
        created = client.create_run(experiment_id, run_name=self.run_name or run.name, tags=self.tags)
        self.run_id = run.state["run_id"] = created.info.run_id
        from mlflow.entities import Param

        params = [Param(k, v) for k, v in flatten(run.config).items()]
        for i in range(0, len(params), PARAMS_PER_BATCH):
            client.log_batch(self.run_id, params=params[i:i + PARAMS_PER_BATCH])
        client.log_text(self.run_id, yaml.safe_dump(run.config, sort_keys=False), "config.yaml")

    def log(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(metric_name(f"{split}/{k}"), float(v), now, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def event(self, step: int, name: str, info: Mapping[str, Any]) -> None:
        self.client.set_tag(self.run_id, f"event.{metric_name(name)}", f"step {step}: {dict(info)}"[:5000])

    def finish(self, status: str) -> None:
        if self.client is not None and self.run_id is not None:
            self.client.set_terminated(self.run_id, "FINISHED" if status == "completed" else "FAILED")
            self.run_id = None


def _exists(client: Any, run_id: str) -> bool:
    try:
        client.get_run(run_id)
    except Exception:  # noqa: BLE001 - MlflowException(RESOURCE_DOES_NOT_EXIST) for a deleted store
        return False
    return True
