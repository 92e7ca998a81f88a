"""``draftsmith prepare-features``: run the target once over the data and store what the method needs.

Uses the same config as ``draftsmith train`` (so the captured layers are exactly the ones the run's objective
requests), writes shards + ``heads.safetensors`` + ``manifest.json`` (last: a cache without a manifest is never
used) and reports bytes per sample. Under ``torchrun`` every rank captures a strided share of the samples and
rank 0 writes the manifest.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from .. import __version__
from ..errors import ConfigError
from .config import RunConfig
from .distributed import all_gather_objects, barrier, broadcast_object, init_distributed, resolve_device, shutdown
from .setup import build_setup, expected_manifest, load_split_samples, vocab_size_of


def _batches(lengths: list[int], order: list[int], batch_tokens: int) -> list[list[int]]:
    """Length-sorted batches whose padded size (rows × longest) stays within ``batch_tokens``."""
    order = sorted(order, key=lambda i: -lengths[i])
    out, cur = [], []
    for i in order:
        if cur and (len(cur) + 1) * lengths[cur[0]] > batch_tokens:
            out.append(cur)
            cur = []
        cur.append(i)
    if cur:
        out.append(cur)
    return out


def prepare_features(config: RunConfig, out: str | Path, *, dtype: str = "bfloat16", batch_tokens: int = 16384,
                     shard_mb: int = 256, overwrite: bool = False,
                     log: Callable[[str], None] = print) -> dict[str, Any]:
    info = init_distributed(config.distributed.backend, config.train.device)
    main_log = log if info.is_main else (lambda _message: None)
    try:
        manifest = _prepare(config, Path(out), info, dtype, batch_tokens, shard_mb, overwrite, main_log)
    except BaseException:
        shutdown(clean=False)
        raise
    shutdown()
    return manifest


def _prepare(config: RunConfig, out: Path, info: Any, dtype: str, batch_tokens: int, shard_mb: int,
             overwrite: bool, log: Callable[[str], None]) -> dict[str, Any]:
    from ..data.dataset import collate
    from ..data.features import (FORMAT, FORMAT_VERSION, MANIFEST, STORAGE_DTYPES, ShardWriter, data_identity,
                                 save_heads, write_json_atomic)
    from ..data.records import expand_paths
    from ..target import run_target

    if dtype not in STORAGE_DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(STORAGE_DTYPES)}, got {dtype!r}")
    if not config.data.train:
        raise ConfigError("no data given: pass --data FILE.jsonl (config key 'data.train')")
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, offline_features=None))
    error = None
    if info.is_main and (out / MANIFEST).exists():
        if overwrite:
            for child in ("train", "eval"):
                shutil.rmtree(out / child, ignore_errors=True)
            (out / MANIFEST).unlink()
        else:
            error = f"{out} already holds a feature cache; pass --overwrite to rebuild it"
    error = broadcast_object(error)
    if error:
        raise ConfigError(error)
    barrier()

    device = resolve_device(config.train.device, info)
    setup = build_setup(config, info, device, load_data=False, log=log)
    vocab = vocab_size_of(setup.target_config)
    keys = list(setup.request.layer_ids) + (["final"] if setup.request.final_hidden else [])
    pad = setup.heads.pad_token_id if setup.heads.pad_token_id is not None else 0
    splits: dict[str, Any] = {}
    for split, files in (("train", config.data.train), ("eval", config.data.eval)):
        if not files:
            continue
        samples, report = load_split_samples(files, config, setup.tokenizer, vocab, setup.chat_template,
                                             config.data.max_samples if split == "train" else 0)
        log(f"{split}: {report.summary()}")
        for w in report.warnings():
            log(f"warning: {w}")
        writer = ShardWriter(out, split, dtype, rank=info.rank, shard_bytes=shard_mb << 20)
        lengths = [len(s) for s in samples]
        mine = list(range(info.rank, len(samples), info.world_size))
        batches = _batches(lengths, mine, batch_tokens)
        # Every rank runs the target equally often: a sharded target (target.shard) all-gathers its weights in
        # each forward, and unequal counts would deadlock. Extra forwards rerun a one-token dummy.
        rounds = max(all_gather_objects(len(batches)))
        for r in range(rounds):
            if r >= len(batches):
                run_target(setup.target, setup.request, torch.full((1, 1), pad, device=device), use_cache=False)
                continue
            idx = batches[r]
            items = [{"input_ids": torch.from_numpy(samples[i].input_ids),
                      "loss_mask": torch.from_numpy(samples[i].loss_mask.astype("int64"))} for i in idx]
            batch = collate(items, pad)
            feats, _ = run_target(setup.target, setup.request, batch["input_ids"].to(device),
                                  attention_mask=batch["attention_mask"].to(device), use_cache=False)
            for row, i in enumerate(idx):
                n = lengths[i]
                captured = {k: (feats.final_hidden if k == "final" else feats.hidden_states[k])[row, :n]
                            for k in keys}
                writer.add(i, samples[i].input_ids, samples[i].loss_mask, captured)
        shards = [s for rank_shards in all_gather_objects(writer.close()) for s in rank_shards]
        splits[split] = {**data_identity(expand_paths(files)), "num_samples": len(samples),
                         "num_tokens": int(sum(lengths)), "shards": shards}
    manifest: dict[str, Any] = {}
    if info.is_main:
        heads = save_heads(out, setup.heads, setup.target_dtype)
        total = sum(s["bytes"] for sp in splits.values() for s in sp["shards"])
        n_samples = sum(sp["num_samples"] for sp in splits.values())
        n_tokens = sum(sp["num_tokens"] for sp in splits.values())
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            **expected_manifest(setup),
            "draftsmith_version": __version__,
            "method": config.method,
            "target_architectures": list(getattr(setup.target_config, "architectures", None) or []),
            "hidden_size": int(setup.heads.embed_tokens.weight.shape[1]),
            "dtype": dtype,
            "heads": heads,
            "splits": splits,
            "bytes": total,
            "bytes_per_sample": total / max(1, n_samples),
            "bytes_per_token": total / max(1, n_tokens),
        }
        write_json_atomic(out / MANIFEST, manifest)
        log(f"wrote {n_samples} samples ({n_tokens} tokens) to {out}: {_human(total)} in "
            f"{sum(len(sp['shards']) for sp in splits.values())} shard(s), "
            f"{_human(manifest['bytes_per_sample'])}/sample, {manifest['bytes_per_token']:.0f} B/token ({dtype})")
    barrier()
    return manifest


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1024
    return f"{n:.1f} TiB"
