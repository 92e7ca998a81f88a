"""Core's built-in plugin module: the trackers every installation has (registered like any plugin's)."""

from __future__ import annotations

from ..hookspecs import hookimpl
from .spec import TrackerSpec


@hookimpl
def draftsmith_register_trackers(registry):
    registry.register_tracker(TrackerSpec(
        "jsonl", "draftsmith.tracking.jsonl_tracker:JsonlTracker",
        summary="metrics.jsonl in the run directory (always on: resume and `draftsmith report` read it)"))
    registry.register_tracker(TrackerSpec(
        "tensorboard", "draftsmith.tracking.tensorboard_tracker:TensorBoardTracker",
        options={"log_dir": None}, requires=("tensorboard",),
        summary="TensorBoard event files (default <output_dir>/tensorboard; a resumed run purges the steps it redoes)"))
    registry.register_tracker(TrackerSpec(
        "wandb", "draftsmith.tracking.wandb_tracker:WandbTracker",
        options={"project": "draftsmith", "entity": None, "name": None, "group": None, "tags": [], "notes": None,
                 "mode": None, "dir": None},
        requires=("wandb",),
        summary="Weights & Biases run (mode online/offline/disabled; files under <output_dir>/wandb; resume "
                "continues the same run)"))
    registry.register_tracker(TrackerSpec(
        "mlflow", "draftsmith.tracking.mlflow_tracker:MlflowTracker",
        options={"tracking_uri": None, "experiment": "draftsmith", "run_name": None, "tags": {}},
        requires=("mlflow-skinny",),
        summary="MLflow run (tracking_uri, else $MLFLOW_TRACKING_URI, else a file store at <output_dir>/mlruns)"))
