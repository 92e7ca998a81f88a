"""The whole main job on the embedded demo target: train a draft, then measure it with lossless speculative decoding.

    python scripts/demo.py [--method eagle3|eagle1|dflash|dspark] [--max-steps N] [--max-prompts N]

Runs `draftsmith train examples/configs/<method>-tiny.yaml` (online target features) and then
`draftsmith eval --check-lossless` on the held-out prompts, and prints τ and the speedup. `bash scripts/demo.sh`
installs everything first. `--json-out FILE` writes the figures (benchmarks/results_table.py collects them).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METHODS = ("eagle3", "eagle1", "dflash", "dspark")


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    print("+ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=None)


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="eagle3", choices=METHODS)
    parser.add_argument("--max-steps", type=int, help="override the config's train.max_steps")
    parser.add_argument("--max-prompts", type=int, default=100, help="held-out prompts to evaluate (0 = all)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--output-dir", help="run directory (default runs/demo-<method>)")
    parser.add_argument("--json-out", help="write the demo's figures to this JSON file")
    parser.add_argument("--set", action="append", default=[], help="extra `draftsmith train --set` overrides")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads for training and eval (default 1: with tiny models, more "
                             "threads only add contention on small CPUs; 0 = torch's default)")
    args = parser.parse_args()
    if args.threads > 0:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the draftsmith subprocesses

    out_dir = Path(args.output_dir or f"runs/demo-{args.method}")
    config = REPO / "examples" / "configs" / f"{args.method}-tiny.yaml"
    train = [sys.executable, "-m", "draftsmith", "train", str(config), "--output-dir", str(out_dir)]
    if args.max_steps is not None:
        train += ["--max-steps", str(args.max_steps)]
    for item in args.set:
        train += ["--set", item]
    t0, usage0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    if run(train).returncode != 0:
        print("demo: training failed", file=sys.stderr)
        return 1
    train_seconds = time.perf_counter() - t0
    usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU time (user + system) of the training process: on a shared machine, wall time also counts neighbours
    train_cpu_seconds = (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime)

    draft = out_dir / "final"
    evaluate = [sys.executable, "-m", "draftsmith", "eval", "--target", "examples/tiny-target", "--draft",
                str(draft), "--prompts", "examples/data/prompts-heldout.jsonl", "--max-new-tokens",
                str(args.max_new_tokens), "--check-lossless", "--json"]
    if args.max_prompts > 0:
        evaluate += ["--max-prompts", str(args.max_prompts)]
    result = run(evaluate)
    if result.returncode != 0 or not result.stdout.strip():
        print("demo: evaluation failed (see above)", file=sys.stderr)
        return 1
    report = json.loads(result.stdout)
    run_dir = out_dir if out_dir.is_absolute() else REPO / out_dir
    metrics = read_metrics(run_dir / "metrics.jsonl")
    tok_s = [m["tokens_per_s"] for m in metrics if m.get("tokens_per_s")]
    steps = [m["step"] for m in metrics if "step" in m]
    size = sum(p.stat().st_size for p in (run_dir / "final").glob("*") if p.is_file())
    figures = {
        "method": args.method,
        "threads": args.threads,
        "train_steps": max(steps) if steps else None,
        "train_seconds": round(train_seconds, 1),
        "train_cpu_seconds": round(train_cpu_seconds, 1),
        "train_tokens_per_s": round(sum(tok_s) / len(tok_s), 1) if tok_s else None,
        "tau": report["tau"],
        "conditional_acceptance": report["conditional_acceptance"],
        "speedup": report["speedup"],
        "tokens_per_second": report["tokens_per_second"],
        "target_tokens_per_second": report["target_tokens_per_second"],
        "lossless": report["lossless"]["ok"],
        "checkpoint_bytes": size,
        "prompts": report["prompts"],
        "max_new_tokens": args.max_new_tokens,
    }
    print(f"\ndemo {args.method}: trained in {train_seconds / 60:.1f} min ({train_cpu_seconds / 60:.1f} CPU-min); "
          f"held-out greedy τ = {report['tau']:.2f}, speedup {report['speedup']:.2f}× on CPU, "
          f"lossless: {report['lossless']['ok']}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(figures, indent=2))
    return 0 if report["lossless"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
