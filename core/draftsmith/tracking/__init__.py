"""Experiment trackers: where a training run's scalars and resolved config go.

A tracker is a plugin like any other: a distribution registers a :class:`TrackerSpec` through the
``draftsmith_register_trackers`` hook, and a run selects trackers by name with ``train.trackers``. Core ships
four, registered by its own built-in plugin module (:mod:`draftsmith.tracking.builtin`): ``jsonl``
(``metrics.jsonl``, always on: resume and ``draftsmith report`` read it), ``tensorboard``, ``wandb`` and
``mlflow``. Every tracker receives the same records — the train scalars every ``train.log_every`` steps (loss,
lr, tokens/s, grad norm, the method's per-position acceptance and simulated τ), the eval scalars (replayed τ and
the method's metrics) and events such as a resume — on the main rank only (:class:`RunTrackers`).

Torch-free: ``draftsmith train`` checks tracker names and options before importing torch.
"""

from .spec import Tracker, TrackerRun, TrackerSpec
from .fanout import RunTrackers, check_tracker_config

__all__ = ["RunTrackers", "Tracker", "TrackerRun", "TrackerSpec", "check_tracker_config"]
