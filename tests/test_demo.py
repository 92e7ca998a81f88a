"""CI smoke test of the README's demo path: train a draft on the shipped demo target for a handful of steps,
then evaluate it with lossless speculative decoding; τ must be reported and the output identical to greedy."""

import json
import subprocess
import sys

import pytest

from support import REPO


@pytest.mark.parametrize("method", ["eagle3", "dflash"])
def test_demo_path_end_to_end(tmp_path, cli_env, method):
    figures = tmp_path / "figures.json"
    cmd = [sys.executable, str(REPO / "scripts" / "demo.py"), "--method", method, "--max-steps", "3",
           "--max-prompts", "2", "--max-new-tokens", "12", "--output-dir", str(tmp_path / "run"),
           "--json-out", str(figures), "--set", "data.max_eval_samples=4", "--set", "train.eval_every=0",
           "--set", "train.batch_size=2"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=cli_env, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    data = json.loads(figures.read_text())
    assert data["lossless"] is True
    assert 1.0 <= data["tau"] and data["speedup"] > 0
    assert data["train_steps"] == 3 and data["threads"] == 1
    assert 0 < data["train_cpu_seconds"] and 0 < data["train_seconds"]
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
    assert f"demo {method}: trained in" in out.stdout and "held-out greedy τ =" in out.stdout
