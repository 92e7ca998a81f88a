"""Learning-rate schedule: linear warmup, then cosine decay to ``min_lr_ratio`` of the peak."""

from __future__ import annotations

import math


def lr_factor(step: int, max_steps: int, warmup_ratio: float, min_lr_ratio: float) -> float:
    """Multiplier of the peak LR for optimizer step ``step`` (0-based)."""
    warmup = int(round(max_steps * warmup_ratio))
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    decay_steps = max(1, max_steps - warmup)
    progress = min(1.0, (step - warmup) / decay_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer, max_steps: int, warmup_ratio: float, min_lr_ratio: float):
    import functools

    from torch.optim.lr_scheduler import LambdaLR

    if not 0.0 <= warmup_ratio < 1.0:
        from ..errors import ConfigError

        raise ConfigError(f"train.warmup_ratio must be in [0, 1), got {warmup_ratio}")
    fn = functools.partial(lr_factor, max_steps=max_steps, warmup_ratio=warmup_ratio, min_lr_ratio=min_lr_ratio)
    return LambdaLR(optimizer, fn)
