"""Timing and memory helpers of the benchmark scripts (``benchmarks/`` and ``plugins/*/benchmarks/``), so every
script measures a training step the same way (../shared/BENCHMARKS.md):

* :func:`step_timer` — one training step = forward (under autocast) + backward of the returned loss, wall
  clock with CUDA synchronised on both ends, gradients dropped afterwards (the optimizer step is excluded);
* :func:`interleaved_times` — several variants timed round robin, so machine load hits them alike;
* :func:`rss_mb` / :func:`reset_peak_rss` — current and peak resident memory of this process (Linux), the CPU
  stand-in for CUDA's max-allocated counter.
"""

from __future__ import annotations

import time
from typing import Callable, Mapping

import torch


def step_timer(device: torch.device, dtype: torch.dtype, module: torch.nn.Module
               ) -> Callable[[Callable[[], torch.Tensor]], float]:
    """``timed(loss_fn) -> seconds`` of one forward + backward; ``module``'s gradients are zeroed after it."""
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def timed(loss_fn: Callable[[], torch.Tensor]) -> float:
        sync()
        t0 = time.perf_counter()
        with autocast:
            loss = loss_fn()
        loss.backward()
        sync()
        module.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    return timed


def interleaved_times(variants: Mapping[str, Callable[[], torch.Tensor]], steps: int,
                      timed: Callable[[Callable[[], torch.Tensor]], float], device: torch.device
                      ) -> tuple[dict[str, list[float]], dict[str, float]]:
    """``steps`` rounds over ``variants`` (name → loss function): per-variant step times and, on CUDA, the peak
    allocated MB of each variant's last step."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    peak: dict[str, float] = {}
    for _ in range(steps):
        for name, fn in variants.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            times[name].append(timed(fn))
            if device.type == "cuda":
                peak[name] = torch.cuda.max_memory_allocated() / 2**20
    return times, peak


def rss_mb(field: str = "VmRSS") -> float:
    """``VmRSS`` (current) or ``VmHWM`` (peak since the last :func:`reset_peak_rss`) of this process, in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak_rss() -> None:
    """Reset ``VmHWM`` to the current RSS (Linux ``clear_refs`` 5)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
