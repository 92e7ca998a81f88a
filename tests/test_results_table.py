"""benchmarks/results_table.py writes docs/results.md from the figures scripts/demo.py recorded (--reuse path:
no training here; the demo test covers producing the figures)."""

import json
import subprocess
import sys

from support import REPO


def _figures(method, tau, lossless=True):
    return {"method": method, "threads": 1, "train_steps": 600, "train_seconds": 300.0, "train_cpu_seconds": 290.0,
            "train_tokens_per_s": 1234.5, "tau": tau, "conditional_acceptance": [0.6, 0.5], "speedup": 0.8,
            "tokens_per_second": 100.0, "target_tokens_per_second": 125.0, "lossless": lossless,
            "checkpoint_bytes": 3 * 2**20, "prompts": 100, "max_new_tokens": 64}


def test_table_is_rendered_from_recorded_figures(tmp_path):
    (tmp_path / "results-eagle3.json").write_text(json.dumps(_figures("eagle3", 2.75)))
    (tmp_path / "results-dflash.json").write_text(json.dumps(_figures("dflash", 2.5, lossless=False)))
    out = tmp_path / "results.md"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "results_table.py"), "--methods", "eagle3,dflash",
                           "--reuse", "--runs-dir", str(tmp_path), "--out", str(out), "--note", "test conditions"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| eagle3") or line.startswith("| dflash")]
    assert rows == [
        "| eagle3 | 600 | 5.0 / 4.8 min | 1234 | 2.75 | 0.60 0.50 | 0.80× | yes | 3.0 MiB |",
        "| dflash | 600 | 5.0 / 4.8 min | 1234 | 2.50 | 0.60 0.50 | 0.80× | NO | 3.0 MiB |",
    ]
    assert "--methods eagle3,dflash" in text and "1 torch thread(s) per run" in text
    assert text.rstrip().endswith("Conditions: test conditions")
