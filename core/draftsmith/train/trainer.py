"""The method-agnostic training loop behind ``draftsmith train``.

Per optimizer step: ``grad_accum`` micro-batches, each = target features (online hooks or offline cache) →
``objective(batch, features)`` inside the DDP/FSDP-wrapped :class:`ObjectiveModule` → backward (gradient sync
only on the last micro-batch); a non-finite loss on any rank stops the run before the optimizer touches the
weights; then clip, AdamW, warmup+cosine LR. The main rank logs, evaluates, checkpoints (atomically) and
writes the final draft with ``save_pretrained`` to ``<output_dir>/final``.

Resuming restores draft weights, optimizer, scheduler, every rank's RNG and the data position, so a run
killed at any point and resumed ends with the same weights as one that never stopped.

Longer than most modules (~390 lines) because the loop, its checkpoint save/restore and its data position are one
state machine; the pieces that stand alone (checkpoint files, distributed wrapping, evaluation, progress, batching)
live in their own modules.
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

from ..errors import ConfigError, DraftsmithError, TrainingError
from ..method import HasRunState, PreparesFromTokenCounts
from ..tracking import RunTrackers, TrackerRun
from ..tracking.fanout import STATE_FILE as TRACKER_STATE
from . import checkpointing as ckpt
from .config import RunConfig, dump_yaml, to_dict
from .batching import EpochBatches, make_loader, row_datasets
from .distributed import (DistInfo, ObjectiveModule, all_gather_objects, all_reduce_sum, barrier, broadcast_object,
                          init_distributed, no_sync, on_comm_device, resolve_device, shutdown, wrap_model)
from .evaluation import evaluate
from .features import OfflineFeatures, OnlineFeatures, move_batch
from .progress import MetricWindow, RunLog
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
        result = Trainer(config, info).run()
    except BaseException:
        shutdown(clean=False)
        raise
    shutdown()
    return result


def _check(config: RunConfig) -> None:
    t = config.train
    for name in ("max_steps", "batch_size", "grad_accum"):
        if getattr(t, name) < 1:
            raise ConfigError(f"train.{name} must be >= 1, got {getattr(t, name)}")
    if t.lr <= 0:
        raise ConfigError(f"train.lr must be > 0, got {t.lr}")
    if len(t.betas) != 2:
        raise ConfigError(f"train.betas must be two numbers, got {t.betas}")


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
                    for name in ("metrics.jsonl", TOKEN_COUNTS, TRACKER_STATE):
                        (self.output_dir / name).unlink(missing_ok=True)
                    # the default TensorBoard dir: a fresh run's events must not mix with the old run's
                    shutil.rmtree(self.output_dir / "tensorboard", ignore_errors=True)
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
        cfg = self.config
        self.train_set, self.eval_set = row_datasets(setup)
        self.train_batches = EpochBatches(len(self.train_set), cfg.train.batch_size, self.info, cfg.train.seed,
                                          shuffle=True, drop_last=True)
        self.batches_per_epoch = len(self.train_batches)
        if self.batches_per_epoch == 0:
            raise ConfigError(f"the train split has {len(self.train_set)} rows, fewer than one global batch "
                              f"(train.batch_size {cfg.train.batch_size} × {self.info.world_size} processes)")
        pad = setup.heads.pad_token_id
        self.pad_id = int(pad) if pad is not None else 0

    def _loader(self, dataset: Any, batches: list[list[int]]) -> Any:
        return make_loader(dataset, batches, self.pad_id, self.config.data.num_workers)

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
    def save(self) -> None:
        """A checkpoint of the current step (collectives on every rank; the main rank writes)."""
        state = ckpt.full_draft_state(self.model)
        optim = ckpt.optimizer_state(self.model, self.optimizer)
        rngs = all_gather_objects(ckpt.rng_state())
        if self.info.is_main:
            obj = self.setup.objective
            trainer_state = {"optimizer": optim, "scheduler": self.scheduler.state_dict(), "rng": rngs,
                             "step": self.step}
            if isinstance(obj, HasRunState):
                trainer_state["objective"] = obj.run_state()
            meta = {"epoch": self.epoch, "rows_in_epoch": self.rows_in_epoch, "world_size": self.info.world_size,
                    "global_batch": self.global_batch, "method": self.config.method,
                    "target": self.config.target.path, "config": to_dict(self.config)}
            path = ckpt.save_checkpoint(self.output_dir, self.step, trainer_state=trainer_state, meta=meta,
                                        draft_writer=lambda d: ckpt.save_draft(self.setup.draft, d, state),
                                        objective_tensors=ckpt.objective_tensors(obj, self.setup.draft),
                                        keep=self.config.train.keep_checkpoints)
            self._log(f"checkpoint: {path}")
        barrier()

    def _restore_weights(self, path: Path) -> None:
        """Draft (and objective) tensors, before the model is wrapped."""
        self._resume_meta = ckpt.read_meta(path)
        ckpt.check_compatible(path, self._resume_meta, self.config.method, self.global_batch)
        ckpt.load_draft_weights(self.setup.draft, path)
        if isinstance(self.setup.objective, torch.nn.Module):
            ckpt.load_objective_tensors(self.setup.objective, path)

    def _restore_state(self, path: Path) -> None:
        """Optimizer, scheduler, RNG, objective state and data position, after the model is wrapped."""
        state = ckpt.load_trainer_state(path)
        ckpt.load_optimizer_state(self.model, self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        rngs = state["rng"]
        ckpt.set_rng_state(rngs[self.info.rank] if self.info.rank < len(rngs) else rngs[0])
        if "objective" in state and isinstance(self.setup.objective, HasRunState):
            self.setup.objective.load_run_state(state["objective"])
        self.step = int(state["step"])
        self.epoch, self.rows_in_epoch = int(self._resume_meta["epoch"]), int(self._resume_meta["rows_in_epoch"])

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
        if isinstance(setup.objective, PreparesFromTokenCounts):
            setup.objective.prepare(counts.to(self.device))
        if self.resume_from is not None:
            self._restore_weights(self.resume_from)

        module = ObjectiveModule(setup.draft, setup.objective)
        self.model = wrap_model(module, self.info, cfg.distributed.strategy, self.device,
                                find_unused_parameters=cfg.distributed.find_unused_parameters,
                                shard_blocks=cfg.distributed.fsdp_shard_blocks)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise TrainingError(f"the {cfg.method!r} draft has no trainable parameters")
        t = cfg.train
        self.optimizer = torch.optim.AdamW(params, lr=t.lr, betas=tuple(t.betas), eps=t.eps,
                                           weight_decay=t.weight_decay)
        self.scheduler = make_scheduler(self.optimizer, t.max_steps, t.warmup_ratio, t.min_lr_ratio)
        self._seed()
        if self.resume_from is not None:
            self._restore_state(self.resume_from)
        self.features = (OfflineFeatures(setup.request, self.device, setup.target_dtype) if setup.cache is not None
                         else OnlineFeatures(setup.target, setup.request))
        if self.info.is_main:
            (self.output_dir / "config.yaml").write_text(dump_yaml(cfg))
        self.log = RunLog(enabled=self.info.is_main, progress=t.progress, total=t.max_steps, initial=self.step,
                          trackers=self._start_trackers())
        try:
            result = self._loop()
        except BaseException:
            self.log.close("failed")
            raise
        self.log.close("completed")
        return result

    def _start_trackers(self) -> RunTrackers | None:
        """The run's trackers, started on the main rank; a start failure under ``tracker_errors: stop`` stops
        every rank (the decision is broadcast, so no rank waits in a collective for one that left)."""
        trackers, error = None, None
        if self.info.is_main:
            try:
                trackers = RunTrackers.from_config(self.config, say=self._log)
                run = TrackerRun(self.output_dir, self.output_dir.resolve().name, to_dict(self.config),
                                 self.step if self.resume_from is not None else None)
                error = trackers.start(run)
            except Exception as exc:  # noqa: BLE001 - reported on every rank below
                error = str(exc) if isinstance(exc, DraftsmithError) else f"{type(exc).__name__}: {exc}"
        error = broadcast_object(error)
        if error:
            raise TrainingError(error)
        return trackers

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
        t = self.config.train
        self._describe_start()
        batches = self._micro_batches()
        window = MetricWindow()
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
            log_now = self.step % t.log_every == 0 or self.step == t.max_steps
            if log_now:
                train_metrics, window = window.reduce(), MetricWindow()
            self.log.advance(1, {"loss": train_metrics["loss"]} if "loss" in train_metrics else None)
            if log_now:
                self.log.record({"step": self.step, "split": "train", "lr": lr, "epoch": self.epoch,
                                 **train_metrics})
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
        flags = all_reduce_sum(on_comm_device(flags.to(self.device)))
        loss_bad, norm_bad = (bool(f) for f in flags.tolist())
        if not (loss_bad or norm_bad):
            return
        if loss_bad:
            local = [v for v in losses.tolist() if not math.isfinite(v)]
            what = f"loss is {local[0]}" if local else "loss is non-finite on another rank"
        else:
            what = f"gradient norm is {float(norm)}"
        good = broadcast_object(ckpt.latest_checkpoint(self.output_dir) if self.info.is_main else None)
        kept = f"the last good checkpoint is {good}" if good else "no checkpoint was written yet"
        raise TrainingError(f"{what} at step {self.step + 1}; stopped before updating the weights ({kept}). "
                            f"Lower train.lr, check the data, or resume from the checkpoint.")

    def evaluate(self) -> dict[str, Any]:
        eval_batches = EpochBatches(len(self.eval_set), self.config.train.batch_size, self.info, 0, shuffle=False,
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

    def _save_final(self) -> Path:
        state = ckpt.full_draft_state(self.model)
        final = self.output_dir / "final"
        if self.info.is_main:
            tmp = self.output_dir / f".tmp-final-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            ckpt.save_draft(self.setup.draft, tmp, state)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            self._log(f"final draft: {final} (load with draftsmith.load_draft)")
        barrier()
        return final

