"""``draftsmith import-features``: turn features a serving engine captured into a draftsmith feature cache.

The run's config decides what is needed, exactly as for ``prepare-features`` (the objective's captured layers
and whether it reads the final hidden state); the engine's files supply it (see
:mod:`draftsmith.data.engine_features` for speculators' layout and the layer-id mapping). The output is an
ordinary cache — shards, ``heads.safetensors``, ``manifest.json`` written last — so ``draftsmith train
--offline-features`` reads it like one it captured itself. The target's weights are not run: only its heads
and final norm are loaded (the final hidden state is the final norm of the last layer's output, which the
engine stores before the norm). Samples follow the data rules of the run (``data.seq_len`` truncation, an
all-zero loss mask dropped, ``data.on_bad_data``); the manifest records the source under ``source``.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .. import __version__
from ..errors import ConfigError, DataError
from .config import RunConfig
from .distributed import DistInfo, resolve_device
from .setup import build_setup, expected_manifest, vocab_size_of


def import_features(config: RunConfig, source: str | Path, engine_layer_ids: Sequence[int], out: str | Path, *,
                    source_format: str = "speculators", hidden_states_dir: str | Path | None = None,
                    dtype: str = "bfloat16", shard_mb: int = 256, overwrite: bool = False,
                    log: Callable[[str], None] = print) -> dict[str, Any]:
    from ..conventions import num_target_layers
    from ..data.engine_features import SPECULATORS, SpeculatorsFeatures, engine_slots, missing_keys
    from ..data.features import (FORMAT, FORMAT_VERSION, MANIFEST, STORAGE_DTYPES, ShardWriter, data_identity,
                                 save_heads, write_json_atomic)
    from ..data.samples import DataReport, finish_sample

    if source_format != SPECULATORS:
        raise ConfigError(f"--format must be {SPECULATORS!r} (the one engine layout read today), got "
                          f"{source_format!r}")
    if dtype not in STORAGE_DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(STORAGE_DTYPES)}, got {dtype!r}")
    out = Path(out)
    if (out / MANIFEST).exists():
        if not overwrite:
            raise ConfigError(f"{out} already holds a feature cache; pass --overwrite to rebuild it")
        for child in ("train", "eval"):
            shutil.rmtree(out / child, ignore_errors=True)
        (out / MANIFEST).unlink()
    reader = SpeculatorsFeatures(source, hidden_states_dir)  # a bad source fails before the target is read
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, offline_features=None))
    device = resolve_device(config.train.device, DistInfo())
    setup = build_setup(config, DistInfo(), device, load_data=False, heads_only=True, log=log)
    num_layers = num_target_layers(setup.target_config)
    slots = engine_slots(engine_layer_ids, num_layers)
    lacking = missing_keys(slots, setup.request.layer_ids, setup.request.final_hidden, num_layers)
    if lacking:
        raise ConfigError(f"the engine features (engine ids {list(engine_layer_ids)}) lack {lacking}, which the "
                          f"{config.method} run reads (layers {list(setup.request.layer_ids)}"
                          f"{' + final hidden' if setup.request.final_hidden else ''}); capture them, or set "
                          f"draft.target_layer_ids to layers the files hold")
    keys = list(setup.request.layer_ids) + (["final"] if setup.request.final_hidden else [])
    hidden_size = int(setup.heads.embed_tokens.weight.shape[1])
    vocab = vocab_size_of(setup.target_config)
    norm = setup.final_norm
    norm_params = list(norm.parameters())
    norm_dtype = norm_params[0].dtype if norm_params else setup.target_dtype  # a weightless norm runs as the target

    writer = ShardWriter(out, "train", dtype, shard_bytes=shard_mb << 20)
    report, kept = DataReport(), 0
    report.read.files = len(reader.data_files)
    for row, record in reader.rows():
        report.read.lines += 1
        try:
            sample = reader.read(row, record, len(engine_layer_ids), hidden_size, vocab)
        except DataError as exc:
            if config.data.on_bad_data == "error":
                raise
            report.read.bad_lines += 1
            report.read.first_bad.append(str(exc))
            continue
        finished = finish_sample(sample.input_ids.tolist(), sample.loss_mask.tolist(), f"{reader.path}#{row}",
                           config.data.seq_len, False, report)  # seq_len truncation, all-zero masks dropped
        if finished is None:
            continue
        n = len(finished.input_ids)
        captured = {}
        for key in keys:
            slot = sample.hidden[:n, slots[key]]  # (n, H)
            if key == "final":
                with torch.no_grad():
                    slot = norm(slot.to(device, norm_dtype)[None])[0]  # the engine stores it before the norm
            captured[key] = slot
        writer.add(kept, finished.input_ids, finished.loss_mask, captured)
        kept += 1
        if config.data.max_samples and kept >= config.data.max_samples:
            break
    if not kept:
        first = f" (first: {report.read.first_bad[0]})" if report.read.first_bad else ""
        raise DataError(f"no usable samples in {reader.path}: {report.read.lines} rows, {report.read.bad_lines} "
                        f"bad{first}, {report.dropped_no_supervision} with an all-zero loss mask, "
                        f"{report.dropped_too_short} too short")
    shards = writer.close()
    heads = save_heads(out, setup.heads, setup.target_dtype)
    total = sum(s["bytes"] for s in shards)
    n_tokens = sum(s["num_tokens"] for s in shards)
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        **expected_manifest(setup),
        "draftsmith_version": __version__,
        "method": config.method,
        "target_architectures": list(getattr(setup.target_config, "architectures", None) or []),
        "hidden_size": hidden_size,
        "dtype": dtype,
        "heads": heads,
        "source": {"format": source_format, "path": str(reader.path.resolve()),
                   "hidden_states": str(reader.hidden_dir.resolve()), "engine_layer_ids": list(engine_layer_ids),
                   "rows": report.read.lines, "bad_rows": report.read.bad_lines},
        "splits": {"train": {**data_identity(reader.data_files), "num_samples": kept, "num_tokens": n_tokens,
                             "shards": shards}},
        "bytes": total,
        "bytes_per_sample": total / kept,
        "bytes_per_token": total / max(1, n_tokens),
    }
    write_json_atomic(out / MANIFEST, manifest)
    first = f" (first: {report.read.first_bad[0]})" if report.read.first_bad else ""
    log(f"imported {report.summary().replace(' lines ', ' rows ')}{first} from {reader.path} into {out}: layers "
        f"{list(setup.request.layer_ids)}{' + final hidden' if setup.request.final_hidden else ''}, "
        f"{total / kept / 1024:.1f} KiB/sample ({dtype})")
    return manifest
