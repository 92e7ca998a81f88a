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


def one_rank_features(tmp_path: Path, world: dict) -> Path:
    """The single-process feature cache of the toy run in ``tmp_path/one``; the run's config file (returned) for
    the multi-rank run to compare with."""
    import draftsmith
    from draftsmith.train.prepare import prepare_features

    draftsmith.reset_plugins()
    register_toy()
    cfg = toy_config(tmp_path, world["target"], world["data"])
    prepare_features(from_dict(cfg), tmp_path / "one", dtype="float32", log=lambda s: None)
    path = tmp_path / "p.yaml"
    path.write_text(json.dumps(cfg))
    return path


def assert_same_features(one_dir: Path, two_dir: Path) -> None:
    """Two ranks' cache (one manifest, shards from both) holds the one-rank cache's samples and features."""
    from draftsmith.data.features import FeatureCache

    one, two = FeatureCache(one_dir), FeatureCache(two_dir)
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


def test_prepare_features_on_two_ranks_matches_one_rank(tmp_path, world):
    path = one_rank_features(tmp_path, world)
    # sharded target + small batches: ranks get different numbers of batches and must still run the target
    # equally often (FSDP all-gathers in every forward)
    torchrun(tmp_path, "prepare-features", str(path), "--out", str(tmp_path / "two"), "--dtype", "float32",
             "--set", "target.shard=true", "--batch-tokens", "250")
    assert_same_features(tmp_path / "one", tmp_path / "two")


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


# -- two nodes on one host: two torchrun launchers, c10d rendezvous on 127.0.0.1 ---------------------------------
def two_nodes(tmp_path: Path, *args: str, delay: float = 0.0) -> list[subprocess.Popen]:
    """``torchrun --nnodes 2 --nproc-per-node 1`` twice (node agents meeting at a c10d rendezvous), as a
    multi-node job runs them (docs/scaling.md); each in its own session so a test can kill a whole node."""
    import uuid

    env = subprocess_env()
    if delay:
        env["DRAFTSMITH_TEST_STEP_DELAY"] = str(delay)
    endpoint, job = f"127.0.0.1:{free_port()}", f"draftsmith-test-{uuid.uuid4().hex[:8]}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", job, "--max-restarts", "0",
           str(launcher(tmp_path)), *args]
    return [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                             start_new_session=True) for _node in range(2)]


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every process below it. torchrun's workers do not stay in the agent's process group,
    and orphaned workers of two killed agents would go on training together."""
    import os
    import signal

    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    todo, tree = [pid], []
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(parents.get(p, []))
    for p in reversed(tree):  # the workers first, so no agent is left to notice and restart them
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def finish(nodes: list[subprocess.Popen]) -> list[tuple[str, str]]:
    outs = [node.communicate(timeout=400) for node in nodes]
    for node, (_out, err) in zip(nodes, outs):
        assert node.returncode == 0, err[-3000:]
    return outs


def test_two_nodes_equal_one_process(tmp_path, world, toy):
    """2 nodes x 1 process x 1 row x 2 micro-batches == 1 process x 2 rows x 2 micro-batches (global batch 4)."""
    from draftsmith.train.trainer import train

    train(from_dict(config(tmp_path, world, "one", batch_size=2, **{"train.grad_accum": 2})))
    path = tmp_path / "nodes.yaml"
    path.write_text(json.dumps(config(tmp_path, world, "nodes", batch_size=1, **{"train.grad_accum": 2})))
    outs = finish(two_nodes(tmp_path, "train", str(path)))
    assert sum(out.count("trained 4 steps") for out, _err in outs) == 1  # global rank 0 only
    assert any("2 process(es)" in err for _out, err in outs)
    assert_same_run(tmp_path / "nodes", tmp_path / "one")


def test_two_nodes_killed_mid_run_resume_to_the_uninterrupted_weights(tmp_path, world):
    """SIGKILL both nodes after the step-2 checkpoint, relaunch both with --resume: the weights and the logged
    metrics equal the single-process reference (global batch 4)."""
    import time

    from draftsmith.train import checkpointing as ckpt

    path = tmp_path / "killed.yaml"
    path.write_text(json.dumps(config(tmp_path, world, "killed", batch_size=2)))
    nodes = two_nodes(tmp_path, "train", str(path), delay=2.0)  # steps 3-4 take >= 4 s: the kill lands first
    deadline = time.time() + 300
    while time.time() < deadline and not ckpt.list_checkpoints(tmp_path / "killed"):
        assert all(n.poll() is None for n in nodes), nodes[0].communicate()[1][-3000:]
        time.sleep(0.2)
    for node in nodes:  # the whole node: agent and worker
        kill_tree(node.pid)
    for node in nodes:
        node.communicate(timeout=60)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "killed")] == [2]  # killed before the end
    outs = finish(two_nodes(tmp_path, "train", str(path), "--resume"))
    assert any("at step 2" in err for _out, err in outs)
    assert_same_run(tmp_path / "killed", world["reference"])


@pytest.mark.parametrize("shard", [False, True], ids=["replicated-target", "sharded-target"])
def test_prepare_features_on_two_nodes_matches_one_rank(tmp_path, world, shard):
    """Both nodes write shards into one manifest; with ``target.shard`` the FSDP2-sharded target all-gathers across
    the nodes in every forward (small batches: the nodes run different numbers of real batches)."""
    path = one_rank_features(tmp_path, world)
    extra = ["--set", "target.shard=true", "--batch-tokens", "250"] if shard else []
    finish(two_nodes(tmp_path, "prepare-features", str(path), "--out", str(tmp_path / "two"), "--dtype", "float32",
                     *extra))
    assert_same_features(tmp_path / "one", tmp_path / "two")  # both nodes wrote shards into one manifest
