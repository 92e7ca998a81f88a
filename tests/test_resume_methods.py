"""Kill -9 mid-run, then ``draftsmith train --resume``, for every first-party method: the final weights equal an
uninterrupted run's bit for bit. Every stateful random draw (EAGLE-1's feature noise, DFlash/DSpark anchors) has
one resumable home (``run_state``), so nothing may drift.

Both runs are subprocesses with the same environment (one thread), so their arithmetic is identical; the killed
run's steps are slowed by a launcher that wraps the method objective's ``forward`` (or ``__call__``) with a
sleep, so the kill lands
after a checkpoint and before the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from draftsmith.train import checkpointing as ckpt

from support import REPO
from support.cli import subprocess_env
from support.tiny import make_chat_data, make_target
from support.train import load_weights, read_metrics, toy_config

STEPS, SAVE_EVERY = 6, 2
# draft options and method options of a tiny draft per method (as in test_train_methods.py)
METHODS = {
    "eagle1": ({}, {"feature_noise": 0.1}),
    "eagle3": ({}, {"ttt_steps": 2}),
    "dflash": ({"mask_token_id": 3, "num_draft_layers": 1, "block_size": 4}, {"num_anchors": 8}),
    "dspark": ({"mask_token_id": 3, "num_draft_layers": 1, "block_size": 4, "markov_rank": 8}, {"num_anchors": 8}),
}

LAUNCHER = """\
import os, sys, time
sys.path[:0] = [{core!r}]
import draftsmith
delay = float(os.environ.get("DRAFTSMITH_TEST_STEP_DELAY", "0"))
if delay:
    cls = draftsmith.get_method(sys.argv[1]).load_objective()
    name = "forward" if hasattr(cls, "forward") else "__call__"  # an nn.Module, or a plain callable objective
    step = getattr(cls, name)
    def slow_step(self, *args, **kwargs):
        time.sleep(delay)
        return step(self, *args, **kwargs)
    setattr(cls, name, slow_step)
from draftsmith.cli import main
main(sys.argv[2:])
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    script = root / "slow_cli.py"
    script.write_text(LAUNCHER.format(core=str(REPO / "core")))
    return {"data": make_chat_data(root / "d.jsonl", n=16), "target": make_target(root / "qwen3", "qwen3",
                                                                                    num_layers=6),
            "launcher": script}


def _train(world, method, config: Path, *extra, delay: float = 0.0, wait: bool = True):
    env = subprocess_env()
    if delay:
        env["DRAFTSMITH_TEST_STEP_DELAY"] = str(delay)
    cmd = [sys.executable, str(world["launcher"]), method, "train", str(config), *extra]
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)


def _config(tmp_path: Path, world, method: str, name: str) -> tuple[Path, Path]:
    draft, options = METHODS[method]
    cfg = toy_config(tmp_path / name, world["target"], world["data"], method=method, draft=draft,
                     method_options=options,
                     **{"train.max_steps": STEPS, "train.save_every": SAVE_EVERY, "train.keep_checkpoints": 0,
                        "train.lr": 1e-2, "train.batch_size": 2, "data.seq_len": 64, "data.eval_fraction": 0.25,
                        "train.eval_every": 3})
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(cfg))
    return path, Path(cfg["train"]["output_dir"])


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
def test_sigkill_and_resume_reach_the_uninterrupted_weights(tmp_path, world, method):
    ref_cfg, ref_out = _config(tmp_path, world, method, "ref")
    killed_cfg, out = _config(tmp_path, world, method, "killed")
    proc = _train(world, method, killed_cfg, delay=0.5, wait=False)  # runs while the reference trains
    reference = _train(world, method, ref_cfg)
    assert reference.returncode == 0, reference.stderr[-2000:]

    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not ckpt.list_checkpoints(out):
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = [s for s, _ in ckpt.list_checkpoints(out)]
    assert done and done[-1] < STEPS and not (out / "final").exists(), done

    resumed = _train(world, method, killed_cfg, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from {ckpt.step_dir(out, done[-1])} at step {done[-1]}" in resumed.stderr
    want, got = load_weights(ref_out / "final"), load_weights(out / "final")
    assert sorted(want) == sorted(got)
    drift = {k: (got[k].double() - want[k].double()).abs().max().item() for k in want
             if not torch.equal(got[k], want[k])}
    assert not drift, f"{method}: resumed weights differ from the uninterrupted run's: {drift}"
    # both runs logged the same training losses at every step
    losses = lambda d: {r["step"]: r["loss"] for r in read_metrics(d) if r.get("split") == "train"}  # noqa: E731
    assert losses(out) == losses(ref_out)
