"""torchrun on CPU with gloo: 2 processes reach the same draft as 1 process with the same global batch — with the
draft in DDP, and in FSDP2 (with the target sharded too) through a checkpoint/resume — and a 2-rank
prepare-features writes the same features as one rank."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from draftsmith.train.config import from_dict

from support.cli import free_port, subprocess_env
from support.tiny import make_chat_data, make_target
from support.train import finite, launcher, load_weights, read_metrics, register_toy, toy_config

STEPS = 4


def torchrun(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), str(launcher(tmp_path)), *args]
    res = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def config(root: Path, world: dict, name: str, batch_size: int, **extra) -> dict:
    # constant LR (no warmup, min_lr_ratio 1): a run stopped at step 2 and resumed to 4 follows the same schedule
    return toy_config(root, world["target"], world["data"], **{
        "train.max_steps": STEPS, "train.batch_size": batch_size, "train.output_dir": str(root / name),
        "train.min_lr_ratio": 1.0, "train.save_every": 2, "train.keep_checkpoints": 0, "data.eval_fraction": 0.2,
        "train.eval_every": 2, **extra})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny target, data, and the single-process reference run (global batch 4)."""
    import draftsmith
    from draftsmith.train.trainer import train

    root = tmp_path_factory.mktemp("dist")
    w = {"root": root, "target": make_target(root / "tgt"), "data": make_chat_data(root / "d.jsonl", n=24)}
    draftsmith.reset_plugins()
    register_toy()
    train(from_dict(config(root, w, "reference", batch_size=4)))
    w["reference"] = root / "reference"
    return w


def assert_same_run(run: Path, reference: Path) -> None:
    want, got = load_weights(reference / "final"), load_weights(run / "final")
    assert sorted(want) == sorted(got)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=2e-5)
    # the logged, all-reduced metrics agree too (loss, accuracy, eval incl. replay τ)
    ref = {(r["step"], r["split"]): r for r in read_metrics(reference) if "split" in r}
    for r in read_metrics(run):
        if "split" not in r:
            continue
        for key in ("loss", "accuracy", "tau_replay"):
            if key in r:
                assert r[key] == pytest.approx(ref[(r["step"], r["split"])][key], rel=1e-4), (r["step"], key)


def test_ddp_two_processes_equal_one_process(tmp_path, world, toy):
    """Global batch 4 as 2 processes x 1 row x 2 accumulated micro-batches (gradient sync skipped on the first)
    == 1 process x 2 rows x 2 micro-batches: rank r's k-th micro-batch is row 2k+r of the same permutation."""
    from draftsmith.train.trainer import train

    train(from_dict(config(tmp_path, world, "one", batch_size=2, **{"train.grad_accum": 2})))
    path = tmp_path / "ddp.yaml"
    path.write_text(json.dumps(config(tmp_path, world, "ddp", batch_size=1, **{"train.grad_accum": 2,
                                                                                "train.trackers": ["tensorboard"]})))
    res = torchrun(tmp_path, "train", str(path))
    assert "2 process(es)" in res.stderr
    assert res.stdout.count("trained 4 steps") == 1  # rank-0 output only
    assert_same_run(tmp_path / "ddp", tmp_path / "one")
    # trackers run on rank 0 only: one event file, holding the all-reduced metrics of metrics.jsonl
    from support.trackers import tensorboard_scalars

    assert len(list((tmp_path / "ddp" / "tensorboard").iterdir())) == 1
    losses = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "ddp") if r.get("split") == "train"}
    assert dict(tensorboard_scalars(tmp_path / "ddp" / "tensorboard")["train/loss"]) == pytest.approx(losses, rel=1e-6)


def test_fsdp_with_sharded_target_resumes_and_equals_one_process(tmp_path, world):
    cfg = config(tmp_path, world, "fsdp", batch_size=2, **{"distributed.strategy": "fsdp", "target.shard": True})
    path = tmp_path / "fsdp.yaml"
    path.write_text(json.dumps(cfg))
    torchrun(tmp_path, "train", str(path), "--max-steps", "2")
    res = torchrun(tmp_path, "train", str(path), "--resume")
    assert "at step 2" in res.stderr
    assert_same_run(tmp_path / "fsdp", world["reference"])


def test_prepare_features_on_two_ranks_matches_one_rank(tmp_path, world):
    import draftsmith
    from draftsmith.data.features import FeatureCache
    from draftsmith.train.prepare import prepare_features

    draftsmith.reset_plugins()
    register_toy()
    cfg = toy_config(tmp_path, world["target"], world["data"])
    prepare_features(from_dict(cfg), tmp_path / "one", dtype="float32", log=lambda s: None)
    path = tmp_path / "p.yaml"
    path.write_text(json.dumps(cfg))
    # sharded target + small batches: ranks get different numbers of batches and must still run the target
    # equally often (FSDP all-gathers in every forward)
    torchrun(tmp_path, "prepare-features", str(path), "--out", str(tmp_path / "two"), "--dtype", "float32",
             "--set", "target.shard=true", "--batch-tokens", "250")
    one, two = FeatureCache(tmp_path / "one"), FeatureCache(tmp_path / "two")
    shards = [s["file"] for s in two.manifest["splits"]["train"]["shards"]]
    assert any("-R00-" in f for f in shards) and any("-R01-" in f for f in shards)
    a, b = one.split("train"), two.split("train")
    assert len(a) == len(b) == 24
    for i in range(24):
        sa, sb = a.samples()[i], b.samples()[i]
        assert (sa.input_ids == sb.input_ids).all() and (sa.loss_mask == sb.loss_mask).all()
        fa, fb = a.features(i, [1, 2]), b.features(i, [1, 2])
        for k in (1, 2):
            torch.testing.assert_close(fb[k], fa[k], rtol=1e-5, atol=1e-5)  # padding differs per rank's batches
    for field in ("layer_ids", "seq_len", "target_config_sha256", "chat_template_sha256"):
        assert one.manifest[field] == two.manifest[field]


def test_fsdp_with_a_method_that_calls_the_draft_a_data_dependent_number_of_times(tmp_path, world):
    """DFlash skips the draft forward for a micro-batch without supervised blocks and evaluates anchors in
    length-dependent chunks, so ranks call the draft different numbers of times: FSDP must not deadlock."""
    import draftsmith

    try:
        draftsmith.get_method("dflash").load_objective()
    except Exception as exc:
        pytest.fail(f"dflash objective does not import: {exc}")
    target = make_target(tmp_path / "tgt6", num_layers=6)
    cfg = toy_config(tmp_path, target, world["data"], method="dflash",
                     draft={"mask_token_id": 3, "num_draft_layers": 2, "block_size": 4},
                     method_options={"num_anchors": 8},
                     **{"train.max_steps": 3, "train.batch_size": 2, "train.eval_every": 1,
                        "data.eval_fraction": 0.2, "distributed.strategy": "fsdp"})
    path = tmp_path / "dflash.yaml"
    path.write_text(json.dumps(cfg))
    res = torchrun(tmp_path, "train", str(path))
    evals = [r for r in read_metrics(tmp_path / "run") if r.get("split") == "eval"]
    assert [r["step"] for r in evals] == [1, 2, 3] and all(finite(r["tau_replay"]) for r in evals), res.stderr[-2000:]
