"""Process groups, device placement and draft wrapping under ``torchrun``.

One process per device. The draft is replicated with DDP (default) or sharded with FSDP2 ``fully_shard`` (optimizer
state and gradients sharded; parameters gathered for each objective call);
the target is replicated (or FSDP2-sharded on GPU with ``target.shard``). Core never calls the draft
directly: the method's objective does. So what DDP/FSDP wraps is an :class:`ObjectiveModule` — the draft as a
registered submodule plus the objective — and the whole objective call runs inside the wrapper's forward,
which is exactly what DDP needs to synchronise gradients and FSDP needs to gather parameters for any draft
method the objective calls.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from datetime import timedelta
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError


@dataclasses.dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(backend: str = "auto", device: str = "auto") -> DistInfo:
    """Join the process group torchrun set up (``WORLD_SIZE`` > 1); a no-op for a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device != "cpu"
        if backend == "auto":
            backend = "nccl" if use_cuda else "gloo"
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank)


def resolve_device(name: str, info: DistInfo) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device is 'cuda' but no GPU is available")
        return torch.device("cuda", info.local_rank)
    if name == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"train.device must be auto, cpu or cuda, got {name!r}")


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def on_comm_device(t: torch.Tensor) -> torch.Tensor:
    """``t`` where the process group can reduce it (NCCL reduces CUDA tensors only)."""
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return t.cuda()
    return t


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's data-parallel rank (0 without ``torch.distributed``)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The data-parallel world size (1 without ``torch.distributed``)."""
    return dist.get_world_size() if is_distributed() else 1


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum ``values`` over ranks in place (identity on one process); returns it."""
    if is_distributed():
        dist.all_reduce(values)
    return values


def global_sum(t: torch.Tensor) -> torch.Tensor:
    """A detached copy of ``t`` summed over data-parallel ranks (objectives' global loss denominators)."""
    return all_reduce_sum(on_comm_device(t.detach().clone())).to(t.device)


def all_gather_objects(obj: Any) -> list[Any]:
    if dist.is_available() and dist.is_initialized():
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if dist.is_available() and dist.is_initialized():
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]
    return obj


def shutdown(*, clean: bool = True) -> None:
    """Leave the process group. After a clean run every rank first meets at a barrier: tearing gloo down while
    a peer still talks to it aborted a rank at exit under load. After an error there is no barrier — the other
    ranks may be blocked in a different collective, and waiting for them would turn the error into a hang."""
    if dist.is_available() and dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()


class ObjectiveModule(nn.Module):
    """The draft (a registered submodule) and the objective, called as one forward.

    An objective that is itself an ``nn.Module`` (with parameters of its own) is registered too; parameters
    shared with the draft are counted once.
    """

    def __init__(self, draft: nn.Module, objective: Any) -> None:
        super().__init__()
        self.draft = draft
        if isinstance(objective, nn.Module):
            self.objective = objective
        else:
            object.__setattr__(self, "objective", objective)

    def forward(self, batch: dict[str, Any], features: Any, call: str = "__call__") -> Any:
        """``objective.<call>(batch, features)``: the loss by default; evaluation also runs the optional
        ``acceptance_lengths`` through here so FSDP has the parameters gathered."""
        return getattr(self.objective, call)(batch, features)


def decoder_blocks(module: nn.Module) -> list[nn.Module]:
    """The repeated blocks (members of ``ModuleList``s of 2+ same-typed modules) of a draft, for FSDP units."""
    blocks = []
    for child in module.modules():
        if isinstance(child, nn.ModuleList) and len(child) > 0 and len({type(m) for m in child}) == 1:
            if any(p.requires_grad for m in child for p in m.parameters()):
                blocks.extend(child)
    return blocks


def wrap_model(module: ObjectiveModule, info: DistInfo, strategy: str, device: torch.device, *,
               find_unused_parameters: bool = False, shard_blocks: bool = False) -> nn.Module:
    """DDP or FSDP2 around the objective module; the module itself when running on one process."""
    if not info.enabled:
        return module
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        kwargs: dict[str, Any] = {"broadcast_buffers": False, "find_unused_parameters": find_unused_parameters}
        if device.type == "cuda":
            kwargs["device_ids"] = [device.index]
        return DDP(module, **kwargs)
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        # By default one FSDP unit: the root, gathered once per objective call. Objectives call the draft a
        # data-dependent number of times (no supervised block in a micro-batch, chunked evaluation, ...), and
        # per-block units would then issue different numbers of all-gathers on different ranks and deadlock.
        # ``shard_blocks`` adds a unit per repeated draft block (less memory for deep drafts) for methods that
        # call every block exactly once per objective call on every rank.
        if shard_blocks:
            for block in decoder_blocks(module.draft):
                fully_shard(block)
        fully_shard(module)
        return module
    raise ConfigError(f"distributed.strategy must be ddp or fsdp, got {strategy!r}")


def shard_target(target: nn.Module, info: DistInfo) -> None:
    """FSDP2-shard a frozen target (inference only): each decoder layer, then the root."""
    if not info.enabled:
        return
    from torch.distributed.fsdp import fully_shard

    from ..target import find_decoder_layers

    for layer in find_decoder_layers(target):
        fully_shard(layer)
    fully_shard(target)


def no_sync(model: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """Skip the gradient all-reduce on non-final micro-batches of an accumulation step."""
    if sync:
        return contextlib.nullcontext()
    if hasattr(model, "no_sync"):  # DDP
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        return _fsdp_no_sync(model)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _fsdp_no_sync(model: nn.Module) -> Iterator[None]:
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def unwrap(model: nn.Module) -> ObjectiveModule:
    return model.module if hasattr(model, "module") and isinstance(model.module, ObjectiveModule) else model


def is_fsdp(model: nn.Module) -> bool:
    return hasattr(model, "set_requires_gradient_sync")
