"""The method-agnostic training loop behind ``draftsmith train``.

Per optimizer step: ``grad_accum`` micro-batches, each = target features (online hooks or offline cache) →
``objective(batch, features)`` inside the DDP/FSDP-wrapped :class:`ObjectiveModule` → backward (gradient sync
only on the last micro-batch); a non-finite loss on any rank stops the run before the optimizer touches the
weights; then clip, AdamW, warmup+cosine LR. The main rank logs, evaluates, checkpoints (atomically) and
writes the final draft with ``save_pretrained`` to ``<output_dir>/final``.

Resuming restores draft weights, optimizer, scheduler, every rank's RNG and the data position, so a run
killed at any point and resumed ends with the same weights as one that never stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from ..errors import ConfigError, TrainingError
from . import checkpointing as ckpt
from .config import RunConfig, dump_yaml, to_dict
from .distributed import (DistInfo, ObjectiveModule, all_gather_objects, all_reduce_sum, barrier, broadcast_object,
                          init_distributed, is_fsdp, no_sync, resolve_device, shutdown, wrap_model)
from .evaluation import evaluate
from .features import OfflineFeatures, OnlineFeatures, move_batch
from .progress import RunLog
from .schedule import make_scheduler
from .setup import Setup, build_setup

TOKEN_COUNTS = "token_counts.safetensors"


@dataclasses.dataclass
class TrainResult:
    output_dir: Path
    final_dir: Path | None
    step: int
    train_metrics: dict[str, Any]
    eval_metrics: dict[str, Any] | None


def train(config: RunConfig) -> TrainResult:
    """Run (or resume) the training job ``config`` describes; see the module docstring."""
    info = init_distributed(config.distributed.backend, config.train.device)
    try:
        return Trainer(config, info).run()
    finally:
        shutdown()


def _check(config: RunConfig) -> None:
    t = config.train
    for name in ("max_steps", "batch_size", "grad_accum"):
        if getattr(t, name) < 1:
            raise ConfigError(f"train.{name} must be >= 1, got {getattr(t, name)}")
    if t.lr <= 0:
        raise ConfigError(f"train.lr must be > 0, got {t.lr}")
    if len(t.betas) != 2:
        raise ConfigError(f"train.betas must be two numbers, got {t.betas}")


class _Batches:
    """This rank's micro-batches of row indices, epoch by epoch, resumable at any global row position.

    Uses ``DistributedSampler`` (seeded per epoch): rank r's k-th micro-batch holds global positions
    ``k·B·W + r + j·W``, so the union over ranks of the k-th micro-batches is the same block of the epoch's
    permutation as a single process with batch ``B·W`` would take — runs with different world sizes and the
    same global batch see identical data.
    """

    def __init__(self, num_rows: int, batch_size: int, info: DistInfo, seed: int, *, shuffle: bool,
                 drop_last: bool) -> None:
        self.batch_size, self.info, self.drop_last = batch_size, info, drop_last
        self.sampler = DistributedSampler(range(num_rows), num_replicas=info.world_size, rank=info.rank,
                                          shuffle=shuffle, seed=seed, drop_last=drop_last and info.enabled)

    def epoch(self, epoch: int, start: int = 0) -> list[list[int]]:
        self.sampler.set_epoch(epoch)
        idx = list(self.sampler)
        n = len(idx) // self.batch_size if self.drop_last else math.ceil(len(idx) / self.batch_size)
        return [idx[i * self.batch_size:(i + 1) * self.batch_size] for i in range(start, n)]

    def __len__(self) -> int:
        return len(self.epoch(0))


class Trainer:
    def __init__(self, config: RunConfig, info: DistInfo) -> None:
        _check(config)
        self.config, self.info = config, info
        self.device = resolve_device(config.train.device, info)
        self.output_dir = Path(config.train.output_dir)
        self.resume_from = self._resume_decision()
        self.step = 0
        self.rows_in_epoch, self.epoch = 0, 0  # data position: global rows consumed in the current epoch
        self.log: RunLog | None = None

    # -- set-up ---------------------------------------------------------------------------------------------
    def _resume_decision(self) -> Path | None:
        """Rank 0 decides (resume point or refusal) and every rank follows, so no rank hangs on an error."""
        decision: tuple[str, Any] = ("ok", None)
        if self.info.is_main:
            try:
                path = ckpt.resolve_resume(self.config.train.resume, self.output_dir)
                if path is None and ckpt.list_checkpoints(self.output_dir):
                    if not self.config.train.overwrite:
                        raise TrainingError(
                            f"{self.output_dir} already holds checkpoints; pass --resume to continue that run, "
                            f"--set train.overwrite=true to start over, or another --output-dir")
                    shutil.rmtree(ckpt.checkpoint_dir(self.output_dir))
                    for name in ("metrics.jsonl", TOKEN_COUNTS):
                        (self.output_dir / name).unlink(missing_ok=True)
                decision = ("ok", str(path) if path else None)
            except TrainingError as exc:
                decision = ("error", str(exc))
        status, value = broadcast_object(decision)
        if status == "error":
            raise TrainingError(value)
        return Path(value) if value else None

    def _log(self, message: str) -> None:
        if self.log is not None:
            self.log.info(message)
        elif self.info.is_main:
            import sys

            print(message, file=sys.stderr, flush=True)

    def _autocast(self) -> contextlib.AbstractContextManager:
        precision = self.config.train.precision
        if self.device.type == "cuda" and precision in ("auto", "bf16"):
            return torch.autocast("cuda", dtype=torch.bfloat16)
        if precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _token_counts(self, setup: Setup) -> torch.Tensor:
        """Supervised-token frequencies of the train split, cached beside the run."""
        from safetensors.torch import load_file, save_file

        from ..data.samples import token_counts

        path = self.output_dir / TOKEN_COUNTS
        vocab = int(setup.heads.vocab_size)
        if self.resume_from is not None and path.is_file():
            counts = load_file(str(path))["counts"]
            if counts.numel() == vocab:
                return counts
        counts = torch.from_numpy(token_counts(setup.data.train, vocab))
        if self.info.is_main:
            tmp = path.with_name(f".{path.name}.tmp")
            save_file({"counts": counts}, str(tmp))
            os.replace(tmp, path)
        return counts

    def _seed(self) -> None:
        seed = self.config.train.seed + self.info.rank
        random.seed(seed)
        np.random.seed(seed % (2 ** 32))
        torch.manual_seed(seed)

    def _loaders(self, setup: Setup) -> None:
        from ..data.dataset import RowDataset
        from ..data.packing import pack_rows, single_rows

        cfg, data = self.config, setup.data
        keys = []
        if setup.cache is not None:
            keys = list(setup.request.layer_ids) + (["final"] if setup.request.final_hidden else [])

        def dataset(samples: list[Any], cache: Any, index: list[int] | None) -> RowDataset:
            ids = list(range(len(samples)))
            rows = (pack_rows(ids, [len(s) for s in samples], cfg.data.seq_len, cfg.train.seed)
                    if cfg.data.packing else single_rows(ids))
            if cache is not None and index is not None:  # rows name positions in the split: map to cache ids
                rows = [[index[i] for i in r] for r in rows]
                return RowDataset(_CacheSamples(cache), rows, packed=cfg.data.packing, cache=cache, feature_keys=keys)
            return RowDataset(samples, rows, packed=cfg.data.packing)

        self.train_set = dataset(data.train, data.cache_train, data.train_index)
        self.eval_set = dataset(data.eval, data.cache_eval, data.eval_index) if data.eval else None
        self.train_batches = _Batches(len(self.train_set), cfg.train.batch_size, self.info, cfg.train.seed,
                                      shuffle=True, drop_last=True)
        self.batches_per_epoch = len(self.train_batches)
        if self.batches_per_epoch == 0:
            raise ConfigError(f"the train split has {len(self.train_set)} rows, fewer than one global batch "
                              f"(train.batch_size {cfg.train.batch_size} × {self.info.world_size} processes)")
        pad = setup.heads.pad_token_id
        self.pad_id = int(pad) if pad is not None else 0

    def _loader(self, dataset: Any, batches: list[list[int]]) -> DataLoader:
        import functools

        from ..data.dataset import collate

        # a partial, not a lambda: picklable for spawn/forkserver workers
        return DataLoader(dataset, batch_sampler=batches, num_workers=self.config.data.num_workers,
                          collate_fn=functools.partial(collate, pad_token_id=self.pad_id))

    def _micro_batches(self) -> Iterator[dict[str, Any]]:
        """Endless micro-batches from the current data position; keeps the position up to date."""
        global_batch = self.config.train.batch_size * self.info.world_size
        while True:
            start = self.rows_in_epoch // global_batch
            for batch in self._loader(self.train_set, self.train_batches.epoch(self.epoch, start)):
                self.rows_in_epoch += global_batch
                yield batch
            self.epoch += 1
            self.rows_in_epoch = 0

    # -- checkpoints ----------------------------------------------------------------------------------------
    def _draft_state(self) -> dict[str, torch.Tensor] | None:
        """Full draft state dict on the main rank (a collective under FSDP)."""
        if is_fsdp(self.model):
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True,
                                                                              cpu_offload=True))
            return {k[len("draft."):]: v for k, v in full.items() if k.startswith("draft.")}
        return None

    def _optim_state(self) -> dict[str, Any]:
        if is_fsdp(self.model):
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            return get_optimizer_state_dict(self.model, self.optimizer,
                                            options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return self.optimizer.state_dict()

    def _save_draft(self, directory: Path, state: dict[str, torch.Tensor] | None) -> None:
        draft = self.setup.draft
        if state is None:
            draft.save_pretrained(str(directory))
        else:
            draft.save_pretrained(str(directory), state_dict=state)

    def save(self) -> None:
        state = self._draft_state()
        optim = self._optim_state()
        rngs = all_gather_objects(ckpt.rng_state())
        if self.info.is_main:
            obj = self.setup.objective
            trainer_state = {"optimizer": optim, "scheduler": self.scheduler.state_dict(), "rng": rngs,
                             "step": self.step}
            if not isinstance(obj, torch.nn.Module) and callable(getattr(obj, "state_dict", None)):
                trainer_state["objective"] = obj.state_dict()
            meta = {"epoch": self.epoch, "rows_in_epoch": self.rows_in_epoch, "world_size": self.info.world_size,
                    "global_batch": self.global_batch, "method": self.config.method,
                    "target": self.config.target.path, "config": to_dict(self.config)}
            extra = self._objective_tensors()
            path = ckpt.save_checkpoint(self.output_dir, self.step, trainer_state=trainer_state, meta=meta,
                                        draft_writer=lambda d: self._save_draft(d, state),
                                        objective_tensors=extra, keep=self.config.train.keep_checkpoints)
            self._log(f"checkpoint: {path}")
        barrier()
        self.last_saved = self.step

    def _objective_tensors(self) -> dict[str, torch.Tensor] | None:
        obj = self.setup.objective
        if not isinstance(obj, torch.nn.Module):
            return None
        draft_ids = {id(t) for t in self.setup.draft.state_dict(keep_vars=True).values()}
        return {k: v for k, v in obj.state_dict(keep_vars=True).items() if id(v) not in draft_ids} or None

    def _restore(self, path: Path) -> None:
        """Weights before wrapping; optimizer/scheduler/RNG/data after (see run())."""
        meta = ckpt.read_meta(path)
        if meta.get("method") != self.config.method:
            raise TrainingError(f"checkpoint {path} was trained with method {meta.get('method')!r}, "
                                f"this run uses {self.config.method!r}")
        if meta["global_batch"] != self.global_batch:
            raise TrainingError(f"checkpoint {path} used a global batch of {meta['global_batch']} rows per "
                                f"optimizer step, this run {self.global_batch} (train.batch_size × processes × "
                                f"train.grad_accum); resuming would change the data order")
        ckpt.load_draft_weights(self.setup.draft, path)
        if isinstance(self.setup.objective, torch.nn.Module):
            ckpt.load_objective_tensors(self.setup.objective, path)
        self._resume_meta = meta

    def _restore_state(self, path: Path) -> None:
        state = ckpt.load_trainer_state(path)
        if is_fsdp(self.model):
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"],
                                     options=StateDictOptions(full_state_dict=True))
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        rngs = state["rng"]
        ckpt.set_rng_state(rngs[self.info.rank] if self.info.rank < len(rngs) else rngs[0])
        if "objective" in state and callable(getattr(self.setup.objective, "load_state_dict", None)):
            self.setup.objective.load_state_dict(state["objective"])
        self.step = int(state["step"])
        self.epoch, self.rows_in_epoch = int(self._resume_meta["epoch"]), int(self._resume_meta["rows_in_epoch"])
        self.last_saved = self.step

    # -- the loop -------------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # per-save "Writing model shards" bars would drown the run's own
        cfg = self.config
        if self.info.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        barrier()
        self.global_batch = cfg.train.batch_size * self.info.world_size * cfg.train.grad_accum
        self.setup = setup = build_setup(cfg, self.info, self.device, log=self._log)
        self._loaders(setup)
        counts = self._token_counts(setup)
        if hasattr(setup.objective, "prepare"):
            setup.objective.prepare(counts.to(self.device))
        if self.resume_from is not None:
            self._restore(self.resume_from)

        module = ObjectiveModule(setup.draft, setup.objective)
        self.model = wrap_model(module, self.info, cfg.distributed.strategy, self.device,
                                find_unused_parameters=cfg.distributed.find_unused_parameters)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise TrainingError(f"the {cfg.method!r} draft has no trainable parameters")
        t = cfg.train
        self.optimizer = torch.optim.AdamW(params, lr=t.lr, betas=tuple(t.betas), eps=t.eps,
                                           weight_decay=t.weight_decay)
        self.scheduler = make_scheduler(self.optimizer, t.max_steps, t.warmup_ratio, t.min_lr_ratio)
        self._seed()
        self.last_saved = -1
        if self.resume_from is not None:
            self._restore_state(self.resume_from)
        self.features = (OfflineFeatures(setup.request, self.device, setup.target_dtype) if setup.cache is not None
                         else OnlineFeatures(setup.target, setup.request))
        if self.info.is_main:
            (self.output_dir / "config.yaml").write_text(dump_yaml(cfg))
        self.log = RunLog(self.output_dir, enabled=self.info.is_main, progress=t.progress, total=t.max_steps,
                          initial=self.step)
        try:
            return self._loop()
        finally:
            self.log.close()

    def _describe_start(self) -> None:
        s = self.setup
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        where = f"offline features {s.cache.path}" if s.cache is not None else "online target"
        self._log(f"train: method {self.config.method}, draft {s.spec.draft_class_path} ({trainable:,} trainable "
                  f"params), layers {list(s.request.layer_ids)}{' + final' if s.request.final_hidden else ''} "
                  f"from {where}, {len(self.train_set)} rows, {self.batches_per_epoch} micro-batches/epoch, "
                  f"{self.info.world_size} process(es) on {self.device}")
        if self.resume_from is None and self.config.train.resume:
            self._log(f"no checkpoint in {self.output_dir} yet: starting a fresh run")
        if self.resume_from is not None:
            self._log(f"resumed from {self.resume_from} at step {self.step}")
            self.log.record({"event": "resume", "step": self.step, "checkpoint": str(self.resume_from)})

    def _loop(self) -> TrainResult:
        cfg, t = self.config, self.config.train
        self._describe_start()
        batches = self._micro_batches()
        window = _Window()
        train_metrics: dict[str, Any] = {}
        eval_metrics: dict[str, Any] | None = None
        while self.step < t.max_steps:
            step_start = time.perf_counter()
            target_before = self.features.seconds
            losses = []
            for micro in range(t.grad_accum):
                raw = next(batches)
                batch = move_batch(raw, self.device)
                feats = self.features(raw if self.setup.cache is not None else batch)
                with no_sync(self.model, micro == t.grad_accum - 1), self._autocast():
                    out = self.model(batch, feats)
                loss = out.loss.float()
                (loss / t.grad_accum).backward()
                losses.append(loss.detach())
                window.add(out, batch)
            norm = self._clip()
            self._stop_if_non_finite(torch.stack(losses), norm)  # one host sync per step
            lr = self.scheduler.get_last_lr()[0]  # the LR this step used
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            window.finish_step(norm, time.perf_counter() - step_start, self.features.seconds - target_before)
            if self.step % t.log_every == 0 or self.step == t.max_steps:
                train_metrics = window.reduce()
                self.log.record({"step": self.step, "split": "train", "lr": lr,
                                 "epoch": self.epoch, **train_metrics})
                window = _Window()
            self.log.advance(1, {"loss": train_metrics.get("loss", float("nan"))})
            last = self.step == t.max_steps
            if self.eval_set is not None and ((t.eval_every and self.step % t.eval_every == 0) or last):
                eval_metrics = self.evaluate()
            if (t.save_every and self.step % t.save_every == 0) or last:
                self.save()
        final = self._save_final()
        return TrainResult(self.output_dir, final, self.step, train_metrics, eval_metrics)

    def _clip(self) -> torch.Tensor:
        params = [p for p in self.model.parameters() if p.requires_grad]
        max_norm = self.config.train.clip if self.config.train.clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if hasattr(norm, "full_tensor"):  # FSDP2 DTensor
            norm = norm.full_tensor()
        return norm.detach()

    def _stop_if_non_finite(self, losses: torch.Tensor, norm: torch.Tensor) -> None:
        """Stop (on every rank) before the optimizer step if any rank saw a non-finite loss or gradient norm."""
        flags = torch.stack([(~torch.isfinite(losses)).any(), ~torch.isfinite(norm)]).float()
        flags = all_reduce_sum(_on_comm_device(flags.to(self.device)))
        loss_bad, norm_bad = (bool(f) for f in flags.tolist())
        if not (loss_bad or norm_bad):
            return
        if loss_bad:
            local = [v for v in losses.tolist() if not math.isfinite(v)]
            what = f"loss is {local[0]}" if local else "loss is non-finite on another rank"
        else:
            what = f"gradient norm is {float(norm)}"
        good = ckpt.latest_checkpoint(self.output_dir) if self.info.is_main else None
        kept = f"the last good checkpoint is {good}" if good else "no checkpoint was written yet"
        raise TrainingError(f"{what} at step {self.step + 1}; stopped before updating the weights ({kept}). "
                            f"Lower train.lr, check the data, or resume from the checkpoint.")

    def evaluate(self) -> dict[str, Any]:
        eval_batches = _Batches(len(self.eval_set), self.config.train.batch_size, self.info, 0, shuffle=False,
                                drop_last=False)
        loader = self._loader(self.eval_set, eval_batches.epoch(0))
        source = self.features
        feats = (lambda raw: source(raw)) if self.setup.cache is not None else \
            (lambda raw: source(move_batch(raw, self.device)))
        metrics = evaluate(self.model, self.setup.draft, self.setup.objective, loader, feats,
                           lambda raw: move_batch(raw, self.device), self._autocast,
                           self.config.train.eval_batches)
        self.log.record({"step": self.step, "split": "eval", **metrics})
        shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "tokens")
        self._log(f"eval @ step {self.step}: {shown}")
        return metrics

    def _save_final(self) -> Path | None:
        state = self._draft_state()
        final = self.output_dir / "final"
        if self.info.is_main:
            tmp = self.output_dir / f".tmp-final-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            self._save_draft(tmp, state)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            self._log(f"final draft: {final} (load with draftsmith.load_draft)")
        barrier()
        return final


class _CacheSamples:
    """Sample lookup by cache id for :class:`RowDataset` when rows hold cache ids."""

    def __init__(self, split: Any) -> None:
        self._samples = split.samples()

    def __getitem__(self, i: int) -> Any:
        return self._samples[i]


class _Window:
    """Metric sums over the micro-batches since the last log line, kept on the device (no host sync per
    micro-batch) and all-reduced when read."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.totals: torch.Tensor | None = None  # loss sum, micro-batches, tokens, supervised tokens
        self.norms: list[torch.Tensor] = []
        self.seconds = self.target_seconds = 0.0

    def add(self, out: Any, batch: dict[str, Any]) -> None:
        loss = out.loss.detach().double()
        n = torch.as_tensor(out.num_tokens, dtype=torch.float64, device=loss.device)
        row = torch.stack([loss, torch.ones_like(loss), batch["attention_mask"].sum().double(), n])
        self.totals = row if self.totals is None else self.totals + row
        for key, value in out.metrics.items():
            v = torch.as_tensor(value.detach() if torch.is_tensor(value) else value, dtype=torch.float64,
                                device=loss.device) * n
            self.sums[key] = self.sums[key] + v if key in self.sums else v

    def finish_step(self, norm: torch.Tensor, seconds: float, target_seconds: float) -> None:
        self.norms.append(norm.double())
        self.seconds += seconds
        self.target_seconds += target_seconds

    def reduce(self) -> dict[str, Any]:
        keys = sorted(self.sums)
        vec = torch.stack([self.sums[k] for k in keys] + list(self.totals.unbind()))
        vals = all_reduce_sum(_on_comm_device(vec)).tolist()
        loss_sum, micro, tokens, sup = vals[-4:]
        out = {k: v / sup if sup else float("nan") for k, v in zip(keys, vals[:-4])}
        out["loss"] = loss_sum / micro if micro else float("nan")
        out["grad_norm"] = float(torch.stack(self.norms).mean())
        out["tokens_per_s"] = tokens / self.seconds if self.seconds else float("nan")  # all ranks' tokens
        out["supervised_tokens"] = sup
        out["target_time_share"] = self.target_seconds / self.seconds if self.seconds else float("nan")
        return out


def _on_comm_device(t: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return t.cuda()
    return t
