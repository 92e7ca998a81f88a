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


def load_state_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], where: Any, *,
                      skip_prefixes: tuple[str, ...] = ("rotary_emb.",)) -> None:
    """Load ``state`` (a checkpoint read by a format's reader) into ``model`` with every tensor accounted for:
    no parameter or buffer left out, no tensor of the file unused, every shape as the config says — else one
    DraftsmithError naming ``where`` and the first offenders. Floating tensors are loaded as fp32; buffers whose
    name starts with ``skip_prefixes`` (rotary frequencies, rebuilt from the config) are not read."""
    from ..errors import DraftsmithError

    own = {n: t for n, t in model.state_dict().items() if not n.startswith(skip_prefixes)}
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise DraftsmithError(f"{where}: tensors do not match the {type(model).__name__} this config builds: "
                              f"missing {missing[:6]}, unexpected {unexpected[:6]}")
    shapes = [f"{n} {tuple(t.shape)} vs {tuple(own[n].shape)}" for n, t in state.items()
              if tuple(t.shape) != tuple(own[n].shape)]
    if shapes:
        raise DraftsmithError(f"{where}: tensor shapes do not match the config: {shapes[:4]}")
    model.load_state_dict({n: t.float() if t.is_floating_point() else t for n, t in state.items()}, strict=False)
