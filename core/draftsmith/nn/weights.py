"""Reading and writing weights across sharding: FSDP2 / tensor-parallel ``DTensor`` weights and plain tensors.

Drafts copy or reference the target's embedding and ``lm_head``; under FSDP those are ``DTensor`` shards, so every
copy goes through :func:`full_tensor` (gather) and, into a sharded draft, :func:`copy_full_tensor` (scatter with
the destination's own mesh and placements).
"""

from __future__ import annotations

from typing import Any

import torch


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind a possibly sharded (``DTensor``) weight; a plain tensor is returned as is."""
    gather = getattr(t, "full_tensor", None)
    return gather() if callable(gather) else t


def weight_of(module_or_tensor: Any) -> torch.Tensor:
    """``module.weight`` (or the tensor itself), gathered to a full tensor when sharded."""
    weight = getattr(module_or_tensor, "weight", module_or_tensor)
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"expected an nn.Embedding/nn.Linear or a tensor, got {type(module_or_tensor).__name__}")
    return full_tensor(weight)


def copy_full_tensor(dst: torch.Tensor, src: torch.Tensor) -> None:
    """``dst.copy_(src)`` across sharding: a DTensor ``src`` is gathered first; a DTensor ``dst`` receives the full
    tensor distributed with its own mesh and placements. Shapes must match."""
    src = full_tensor(src.detach())
    if tuple(src.shape) != tuple(dst.shape):
        raise ValueError(f"cannot copy a tensor of shape {tuple(src.shape)} into one of shape {tuple(dst.shape)}")
    with torch.no_grad():
        if hasattr(dst, "device_mesh"):
            from torch.distributed.tensor import distribute_tensor

            dst.copy_(distribute_tensor(src.to(dst.dtype), dst.device_mesh, dst.placements))
        else:
            dst.copy_(src.to(device=dst.device, dtype=dst.dtype))


def unwrap_model(model: Any) -> Any:
    """The module inside DDP / FSDP / compile wrappers (``.module`` / ``._orig_mod`` chains)."""
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            break
        model = inner
    return model


def non_finite_tensors(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of floating tensors holding NaN or ±inf."""
    return [name for name, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
