"""Reading back what the experiment trackers wrote, with each tracker's own reader.

* TensorBoard: ``EventAccumulator`` (tensorboard's reader; it applies ``purge_step`` as TensorBoard does);
* W&B (offline): the run's transaction log ``run-<id>.wandb`` decoded into wandb's own protobuf ``Record``
  messages. wandb >= 0.2x dropped its Python reader of that file; the framing is LevelDB's log format (32 KiB
  blocks, 7-byte record headers: crc32c, length, type full/first/middle/last) after a 7-byte file header;
* MLflow: ``MlflowClient`` on the run's tracking URI.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def tensorboard_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def tensorboard_text(log_dir: Path, tag: str) -> list[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    acc.Reload()
    return [b.decode() for e in acc.Tensors(tag) for b in e.tensor_proto.string_val]


def wandb_records(path: Path) -> list:
    """wandb ``Record`` protobufs of one transaction log, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    pos, chunks, pending = 7, [], b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # block trailer
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:  # zero padding to the end of the block
            pos += left
            continue
        body = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == FULL:
            chunks.append(body)
        elif kind == FIRST:
            pending = body
        elif kind == MIDDLE:
            pending += body
        elif kind == LAST:
            chunks.append(pending + body)
    records = []
    for chunk in chunks:
        record = pb.Record()
        record.ParseFromString(chunk)
        records.append(record)
    return records


def wandb_run(run_dir: Path) -> dict:
    """``{"run_id", "config": {...}, "history": [{key: value}]}`` of every offline run under ``run_dir/wandb``,
    keyed by run id (a resumed run writes a second directory for the same id)."""
    runs: dict[str, dict] = {}
    for log in sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb")):
        for record in wandb_records(log):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run = runs.setdefault(record.run.run_id, {"run_id": record.run.run_id, "config": {}, "history": [],
                                                          "project": record.run.project, "logs": 0})
                run["logs"] += 1
                run["config"].update({u.key: json.loads(u.value_json) for u in record.run.config.update})
                current = run
            elif kind == "history":
                current["history"].append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                           for item in record.history.item})
    return runs


def mlflow_client(uri: str):
    import os

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)
