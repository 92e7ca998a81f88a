"""Where a batch's target features come from: the live target (online) or the feature cache (offline).

Both return exactly what the objective's :class:`~draftsmith.method.TargetRequest` asks for, on the training
device, in the dtype the target computes in, so an objective cannot tell them apart (a test checks that the
online and offline losses of the same batch agree).
"""

from __future__ import annotations

import inspect
import time
from typing import Any

import torch
from torch import nn

from ..method import TargetFeatures, TargetRequest
from ..target import run_target


class OnlineFeatures:
    """Runs the frozen target on each batch and captures the requested layers with forward hooks."""

    def __init__(self, target: nn.Module, request: TargetRequest) -> None:
        self.target, self.request = target, request
        params = inspect.signature(target.forward).parameters
        self._extra: dict[str, Any] = {}
        if "use_cache" in params:
            self._extra["use_cache"] = False
        if "logits_to_keep" in params:  # nobody reads the target's (B, T, V) logits: compute one position
            self._extra["logits_to_keep"] = 1
        self.seconds = 0.0  # time spent in the target (for throughput reports)

    def __call__(self, batch: dict[str, Any]) -> TargetFeatures:
        start = time.perf_counter()
        packed = "position_ids" in batch
        # Packed rows: no 2-D mask, so transformers derives a block-causal mask from the position resets.
        # Right-padded rows: padding sits after every real token, so the causal mask already hides it.
        features, _ = run_target(self.target, self.request, batch["input_ids"],
                                 attention_mask=None if packed else batch["attention_mask"],
                                 position_ids=batch.get("position_ids"), **self._extra)
        if batch["input_ids"].is_cuda:
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - start
        return features


class OfflineFeatures:
    """Features read from the cache by the data loader (``batch['features']``), moved and cast."""

    def __init__(self, request: TargetRequest, device: torch.device, dtype: torch.dtype) -> None:
        self.request, self.device, self.dtype = request, device, dtype
        self.seconds = 0.0

    def __call__(self, batch: dict[str, Any]) -> TargetFeatures:
        start = time.perf_counter()
        feats = batch["features"]
        cast = {k: v.to(self.device, self.dtype, non_blocking=True) for k, v in feats.items()}
        out = TargetFeatures(hidden_states={i: cast[i] for i in self.request.layer_ids},
                             final_hidden=cast["final"] if self.request.final_hidden else None)
        self.seconds += time.perf_counter() - start
        return out


def move_batch(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The model inputs of a collated batch on ``device`` (features stay for the feature source)."""
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
            for k, v in batch.items() if k != "features"}
