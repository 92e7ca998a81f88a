"""Atomic training checkpoints and finding the latest valid one.

``<output_dir>/checkpoints/step_00000500/``::

    draft/config.json, draft/model.safetensors   the draft (save_pretrained; loadable with draftsmith.load_draft)
    objective.safetensors                        tensors of an nn.Module objective outside the draft (if any)
    trainer_state.pt                             optimizer, scheduler, per-rank RNG, objective state (our own
                                                 tensors and plain containers only; loaded with weights_only=True)
    meta.json                                    step, data position, world size, config — written last

Everything is written into ``checkpoints/.tmp-step_…`` and renamed into place with ``os.replace``, so a run
killed at any moment leaves either a complete checkpoint or none; a directory without a readable
``meta.json`` is never considered valid.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import TrainingError

STEP_PREFIX = "step_"
META = "meta.json"
STATE = "trainer_state.pt"


def checkpoint_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def step_dir(output_dir: str | Path, step: int) -> Path:
    return checkpoint_dir(output_dir) / f"{STEP_PREFIX}{step:08d}"


def read_meta(path: Path) -> dict[str, Any] | None:
    """The checkpoint's meta, or None when it is incomplete or unreadable."""
    try:
        meta = json.loads((path / META).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    required = [path / STATE, path / "draft" / "config.json"]
    if not meta.get("complete") or not all(p.is_file() for p in required):
        return None
    if not any(p.suffix == ".safetensors" for p in (path / "draft").iterdir()):
        return None
    return meta


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Valid checkpoints as (step, path), oldest first."""
    root = checkpoint_dir(output_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith(STEP_PREFIX):
            meta = read_meta(p)
            if meta is not None:
                found.append((int(meta["step"]), p))
    return sorted(found)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def resolve_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """The checkpoint to resume from: ``latest`` (None when the run has none yet) or an explicit directory."""
    if not resume:
        return None
    if resume in ("latest", "true", "True", "auto"):
        return latest_checkpoint(output_dir)
    path = Path(resume)
    if read_meta(path) is None:
        raise TrainingError(f"resume checkpoint {str(path)!r} is missing or incomplete (no valid {META})")
    return path


# -- RNG -----------------------------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and plain values (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": _to_plain(random.getstate()),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_from_plain(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _to_plain(obj: Any) -> Any:
    return [_to_plain(x) for x in obj] if isinstance(obj, (tuple, list)) else obj


def _from_plain(obj: Any) -> Any:
    return tuple(_from_plain(x) for x in obj) if isinstance(obj, list) else obj


# -- save / load -----------------------------------------------------------------------------------------------
def save_checkpoint(output_dir: str | Path, step: int, *, draft_writer: Any, trainer_state: dict[str, Any],
                    meta: dict[str, Any], objective_tensors: dict[str, torch.Tensor] | None = None,
                    keep: int = 0) -> Path:
    """Write a checkpoint atomically (call on the main rank only); prune old ones down to ``keep``."""
    final = step_dir(output_dir, step)
    tmp = checkpoint_dir(output_dir) / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    draft_writer(tmp / "draft")
    if objective_tensors:
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous() for k, v in objective_tensors.items()},
                  str(tmp / "objective.safetensors"))
    torch.save(trainer_state, tmp / STATE)
    meta = {**meta, "step": step, "complete": True, "saved_at": time.time()}
    (tmp / META).write_text(json.dumps(meta, indent=2, default=str))
    _fsync_dir(tmp)
    if final.exists():  # a re-run of the same step (e.g. after a resume): replace it whole
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    if keep:
        for _s, path in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(path, ignore_errors=True)
    return final


def _fsync_dir(path: Path) -> None:
    for p in path.rglob("*"):
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())


def load_trainer_state(path: Path) -> dict[str, Any]:
    return torch.load(path / STATE, map_location="cpu", weights_only=True)


def load_draft_weights(draft: torch.nn.Module, path: Path) -> None:
    """Load a checkpoint's draft weights into ``draft`` in place, refusing missing or unexpected tensors."""
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for file in sorted((path / "draft").glob("*.safetensors")):
        state.update(load_file(str(file)))
    own = draft.state_dict()
    missing = [k for k in own if k not in state and not _is_tied(draft, k, state)]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise TrainingError(f"checkpoint {path} does not match the draft: missing {missing[:5]}, "
                            f"unexpected {unexpected[:5]}")
    draft.load_state_dict(state, strict=False)


def _is_tied(draft: torch.nn.Module, key: str, state: dict[str, torch.Tensor]) -> bool:
    """A tensor save_pretrained dropped because it shares storage with a saved one."""
    own = dict(draft.named_parameters(remove_duplicate=False))
    if key not in own:
        return False
    ptr = own[key].data_ptr()
    return any(k in state and p.data_ptr() == ptr for k, p in own.items() if k != key)


def load_objective_tensors(module: torch.nn.Module, path: Path) -> None:
    file = path / "objective.safetensors"
    if file.is_file():
        from safetensors.torch import load_file

        module.load_state_dict(load_file(str(file)), strict=False)


# -- what a checkpoint holds, gathered from (and restored into) a live, possibly sharded, run --------------------
def full_draft_state(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The full draft state dict under FSDP (a collective: call on every rank); None when the draft is whole."""
    from .distributed import is_fsdp

    if not is_fsdp(model):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k[len("draft."):]: v for k, v in full.items() if k.startswith("draft.")}


def optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state (gathered in full under FSDP: a collective)."""
    from .distributed import is_fsdp

    if not is_fsdp(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True,
                                                                               cpu_offload=True))


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    from .distributed import is_fsdp

    if not is_fsdp(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def save_draft(draft: torch.nn.Module, directory: Path, state: dict[str, torch.Tensor] | None = None) -> None:
    """``save_pretrained`` (config.json + model.safetensors), from a gathered state dict when given."""
    if state is None:
        draft.save_pretrained(str(directory))
    else:
        draft.save_pretrained(str(directory), state_dict=state)


def objective_tensors(objective: Any, draft: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """Tensors of an ``nn.Module`` objective that are not the draft's (saved beside the draft)."""
    if not isinstance(objective, torch.nn.Module):
        return None
    draft_ids = {id(t) for t in draft.state_dict(keep_vars=True).values()}
    return {k: v for k, v in objective.state_dict(keep_vars=True).items() if id(v) not in draft_ids} or None


def check_compatible(path: Path, meta: dict[str, Any], method: str, global_batch: int) -> None:
    if meta.get("method") != method:
        raise TrainingError(f"checkpoint {path} was trained with method {meta.get('method')!r}, this run uses "
                            f"{method!r}")
    if meta["global_batch"] != global_batch:
        raise TrainingError(f"checkpoint {path} used a global batch of {meta['global_batch']} rows per optimizer "
                            f"step, this run {global_batch} (train.batch_size × processes × train.grad_accum); "
                            f"resuming would change the data order")
