"""The method-agnostic trainer behind ``draftsmith train``.

Submodules: ``config`` (the schema, torch-free), ``setup`` (target, data, draft and objective from a config),
``trainer`` (the loop), ``checkpointing``, ``distributed``, ``features`` (online/offline target features),
``evaluation``, ``schedule``, ``logging``. This package module itself imports nothing heavy.
"""

from __future__ import annotations

from typing import Any


def train(config: Any) -> Any:
    """Run a training job described by a :class:`draftsmith.train.config.RunConfig`; returns the result."""
    from .trainer import train as _train

    return _train(config)


__all__ = ["train"]
