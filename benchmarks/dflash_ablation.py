"""DFlash ablation on the demo target (and a smaller DSpark one, ``--method dspark``): one factor at a time from a
pinned baseline, and stacked on the shipped demo config, at equal budget; the table in docs/methods/<method>.md
(between its ``ablation`` markers) written from the runs' own figures.

    python benchmarks/dflash_ablation.py [--method dflash|dspark] [--variants baseline,depth-1,...] [--jobs 2]
        [--max-steps 300] [--reuse]

Each variant is ``draftsmith train examples/configs/<method>-tiny.yaml`` with the method's pinned baseline and a few
more ``--set`` overrides (same data, seed and steps; one torch thread). The figures come from the run's final
held-out evaluation (128 conversations of examples/data/heldout.jsonl, the target's own greedy answers):
``tau_replay`` is greedy speculative decoding replayed along those answers — the τ ``draftsmith eval`` measures
when the answers are the target's greedy output — and (DFlash) ``acc_0`` the first drafted slot's accuracy.
``--reuse`` rebuilds the table from earlier runs. Training CPU time is the run's own (children's user + system).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- ablation:begin -->", "<!-- ablation:end -->"

# The ablation's baseline is pinned here, not read from the demo config: the shipped demo config took the
# ablation's winner (γ 2, slot 1 × 3), and a table whose baseline moves with it would compare nothing. Baseline:
# 2 draft layers reading target layers [1, 3, 4], block 8, 64 anchors per sequence, the paper's γ 4 for block 8,
# slot 1 unweighted, lr 2e-3 with cosine to 0.1 × lr (the trainer default), no KD.
BASELINE = ["method_options.loss_decay_gamma=4.0", "method_options.first_slot_weight=1.0"]
# The shipped demo config's objective (examples/configs/dflash-tiny.yaml), for the variants stacked on it.
DEMO = ["method_options.loss_decay_gamma=2.0", "method_options.first_slot_weight=3.0"]

# name -> (what changes, --set overrides on top of BASELINE; later --set wins).
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "baseline": ("γ 4, slot 1 × 1 (the demo config before this ablation)", []),
    "seed-1": ("baseline, seed 1 (the seed spread)", ["train.seed=1", "method_options.seed=1"]),
    "layers-high": ("target layers [4, 5, 6]", ["draft.target_layer_ids=[4,5,6]"]),
    "layers-5": ("target layers [0, 2, 3, 5, 6]", ["draft.target_layer_ids=[0,2,3,5,6]"]),
    "depth-1": ("1 draft layer", ["draft.num_draft_layers=1"]),
    "depth-4": ("4 draft layers", ["draft.num_draft_layers=4"]),
    "anchors-16": ("16 anchors per sequence", ["method_options.num_anchors=16"]),
    "anchors-all": ("every valid anchor (512 cap)", ["method_options.num_anchors=512"]),
    "block-4": ("block size 4", ["draft.block_size=4"]),
    "block-16": ("block size 16", ["draft.block_size=16"]),
    "lr-5e-3": ("lr 5e-3", ["train.lr=5.0e-3"]),
    "lr-1e-3": ("lr 1e-3", ["train.lr=1.0e-3"]),
    "min-lr-0": ("cosine to 0", ["train.min_lr_ratio=0.0"]),
    "gamma-2": ("γ 2 (first slots weigh more)", ["method_options.loss_decay_gamma=2.0"]),
    "gamma-7": ("γ 7 (the plugin default)", ["method_options.loss_decay_gamma=7.0"]),
    "gamma-uniform": ("uniform slot weights", ["method_options.loss_decay_gamma=null"]),
    "first-slot-3": ("slot 1 weighted × 3", ["method_options.first_slot_weight=3.0"]),
    "first-slot-10": ("slot 1 weighted × 10", ["method_options.first_slot_weight=10.0"]),
    "kd-1": ("+ KD term, weight 1", ["method_options.kd_weight=1.0"]),
    # the shipped demo config, and single factors stacked on it
    "demo": ("slot 1 × 3 and γ 2 (the shipped demo config)", DEMO),
    "demo-seed-1": ("demo, seed 1", [*DEMO, "train.seed=1", "method_options.seed=1"]),
    "demo-first-10": ("demo with slot 1 × 10", [*DEMO, "method_options.first_slot_weight=10.0"]),
    "demo-block-4": ("demo with block size 4", [*DEMO, "draft.block_size=4"]),
    "demo-layers-high": ("demo reading target layers [4, 5, 6]", [*DEMO, "draft.target_layer_ids=[4,5,6]"]),
    "demo-kd-1": ("demo + KD term, weight 1", [*DEMO, "method_options.kd_weight=1.0"]),
    "demo-anchors-16": ("demo with 16 anchors per sequence", [*DEMO, "method_options.num_anchors=16"]),
    # equal CPU time instead of equal steps: 16 anchors halve the step's cost, so twice the steps cost the same
    "demo-anchors-16-600": ("demo, 16 anchors, 600 steps (≈ the demo's CPU time)",
                            [*DEMO, "method_options.num_anchors=16", "train.max_steps=600"]),
    "demo-600": ("demo, 600 steps (the issue's 10 CPU-minute budget)", [*DEMO, "train.max_steps=600"]),
    "demo-anchors-16-1200": ("demo, 16 anchors, 1200 steps (≈ demo-600's CPU time)",
                             [*DEMO, "method_options.num_anchors=16", "train.max_steps=1200"]),
}


# DSpark (γ_d weights exp(−k/γ_d) from k = 0, so its γ_d 4 / 2 weigh slots like DFlash's γ 4 / 2): whether the
# first-slot lever DFlash's ablation found carries over. Same pinned-baseline rule.
DSPARK_BASELINE = ["method_options.loss_decay_gamma=4.0", "method_options.first_slot_weight=1.0"]
DSPARK_DEMO = ["method_options.loss_decay_gamma=2.0", "method_options.first_slot_weight=3.0"]  # dspark-tiny.yaml
DSPARK_VARIANTS: dict[str, tuple[str, list[str]]] = {
    "baseline": ("γ_d 4, slot 1 × 1 (paper / NeMo objective; the demo config before this ablation)", []),
    "seed-1": ("baseline, seed 1 (the seed spread)", ["train.seed=1", "method_options.seed=1"]),
    "gamma-2": ("γ_d 2", ["method_options.loss_decay_gamma=2.0"]),
    "first-slot-3": ("slot 1 weighted × 3", ["method_options.first_slot_weight=3.0"]),
    "first-3-gamma-2": ("slot 1 × 3 and γ_d 2 (the shipped demo config, as DFlash's)",
                        ["method_options.first_slot_weight=3.0", "method_options.loss_decay_gamma=2.0"]),
}


@dataclasses.dataclass(frozen=True)
class Ablation:
    config: Path
    doc: Path
    baseline: list[str]
    demo: list[str]
    variants: dict[str, tuple[str, list[str]]]


ABLATIONS = {
    "dflash": Ablation(REPO / "examples" / "configs" / "dflash-tiny.yaml", REPO / "docs" / "methods" / "dflash.md",
                       BASELINE, DEMO, VARIANTS),
    "dspark": Ablation(REPO / "examples" / "configs" / "dspark-tiny.yaml", REPO / "docs" / "methods" / "dspark.md",
                       DSPARK_BASELINE, DSPARK_DEMO, DSPARK_VARIANTS),
}


def run_variant(ab: Ablation, name: str, runs: Path, max_steps: int, threads: int) -> dict:
    _, overrides = ab.variants[name]
    out = runs / name
    cmd = [sys.executable, "-m", "draftsmith", "train", str(ab.config), "--output-dir", str(out), "--max-steps",
           str(max_steps), "--set", f"train.eval_every={max_steps}", "--set", "train.save_every=0",
           "--set", "train.progress=false"]
    for item in [*ab.baseline, *overrides]:
        cmd += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    print("+ " + " ".join(cmd), flush=True)
    # one child per variant: its CPU time is read from a wrapper's RUSAGE_CHILDREN, not this process's
    # (several variants run at once under --jobs)
    wrapper = ("import resource, subprocess, sys, json, time; t = time.perf_counter(); "
               "code = subprocess.run(sys.argv[1:]).returncode; "
               "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
               "print(json.dumps({'code': code, 'wall': time.perf_counter() - t, 'cpu': u.ru_utime + u.ru_stime}))")
    done = subprocess.run([sys.executable, "-c", wrapper, *cmd], cwd=REPO, env=env, text=True, check=False,
                          stdout=subprocess.PIPE)
    usage = json.loads(done.stdout.strip().splitlines()[-1])
    if usage["code"] != 0:
        raise SystemExit(f"dflash_ablation: variant {name} failed (exit {usage['code']})")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    final = [r for r in rows if r.get("split") == "eval"][-1]
    train_rows = [r for r in rows if r.get("split") == "train"]
    ce_key = "ce" if "ce" in final else "ce_loss"  # DFlash / DSpark metric names
    figures = {"variant": name, "steps": int(final.get("step", max_steps)), "tau_replay": final["tau_replay"], "acc_0": final.get("acc_0"),
               "eval_ce": final[ce_key], "train_ce": train_rows[-1][ce_key], "train_wall": usage["wall"],
               "train_cpu": usage["cpu"], "threads": threads}
    (runs / f"{name}.json").write_text(json.dumps(figures, indent=2))
    return figures


def reference_of(name: str) -> str:
    """The row a variant's Δτ is taken against: ``demo`` for the variants stacked on it, else ``baseline``."""
    return "demo" if name.startswith("demo-") else "baseline"


def table(ab: Ablation, rows: list[dict], command: str) -> str:
    by_name = {r["variant"]: r for r in rows}
    lines = [(f"Generated by `{command}` on {time.strftime('%Y-%m-%d')} ({platform.processor() or platform.machine()}, "
             f"{rows[0]['threads']} torch thread per run, fp32 CPU, {rows[0]['steps']} steps × batch 8 unless the "
             f"change says otherwise, seed 0). "
             f"τ: greedy speculative decoding replayed along 128 held-out answers of the target (the run's final "
             f"evaluation); slot-1 acc: the first drafted token's accuracy there; Δτ against the baseline, "
             f"for the demo-* rows against the demo row."),
             "", "| variant | change | held-out τ | Δτ | slot-1 acc | eval CE | train CPU min |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        base = by_name.get(reference_of(r["variant"]))
        delta = f"{r['tau_replay'] - base['tau_replay']:+.3f}" if base and base is not r else "—"
        acc = "—" if r.get("acc_0") is None else f"{r['acc_0']:.3f}"
        lines.append(f"| {r['variant']} | {ab.variants[r['variant']][0]} | {r['tau_replay']:.3f} | {delta} | "
                     f"{acc} | {r['eval_ce']:.3f} | {r['train_cpu'] / 60:.1f} |")
    return "\n".join(lines)


def write_doc(path: Path, text: str) -> None:
    doc = path.read_text()
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"dflash_ablation: {path} has no {BEGIN} ... {END} markers")
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")


def check_demo_matches_config(ab: Ablation) -> None:
    """The ``demo`` overrides must be what the shipped demo config holds, or the demo rows describe another config."""
    import yaml

    shipped = yaml.safe_load(ab.config.read_text()).get("method_options") or {}
    for item in ab.demo:
        key, value = item.split("=", 1)
        name = key.split(".", 1)[1]
        if float(shipped.get(name, "nan")) != float(value):
            raise SystemExit(f"dflash_ablation: DEMO sets {name}={value} but {ab.config.name} ships "
                             f"{shipped.get(name)!r}; update DEMO or the config")
    for name in ("loss_decay_gamma", "first_slot_weight"):  # a baseline key the shipped config does not override
        if name in shipped and not any(item.startswith(f"method_options.{name}=") for item in ab.demo):
            raise SystemExit(f"dflash_ablation: {ab.config.name} sets {name} but the ablation's demo does not")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=sorted(ABLATIONS), default="dflash")
    parser.add_argument("--variants", default=None, help="comma-separated (default: all of the method's); dflash: "
                        f"{', '.join(VARIANTS)}; dspark: {', '.join(DSPARK_VARIANTS)}")
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--jobs", type=int, default=1, help="variants trained at the same time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--runs-dir", default=None, help="default runs/<method>-ablation")
    parser.add_argument("--reuse", action="store_true", help="reuse figures of variants already run")
    parser.add_argument("--no-doc", action="store_true", help="print the table, leave docs/methods/dflash.md alone")
    args = parser.parse_args()
    ab = ABLATIONS[args.method]
    names = args.variants.split(",") if args.variants else list(ab.variants)
    unknown = [n for n in names if n not in ab.variants]
    if unknown:
        parser.error(f"unknown {args.method} variant(s) {unknown}; choose from {list(ab.variants)}")
    check_demo_matches_config(ab)
    runs = Path(args.runs_dir or REPO / "runs" / f"{args.method}-ablation")
    runs.mkdir(parents=True, exist_ok=True)
    todo = [n for n in names if not (args.reuse and (runs / f"{n}.json").is_file())]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        list(pool.map(lambda n: run_variant(ab, n, runs, args.max_steps, args.threads), todo))
    rows = [json.loads((runs / f"{n}.json").read_text()) for n in names]
    command = (f"python benchmarks/dflash_ablation.py --method {args.method} --max-steps {args.max_steps}"
               f"{f' --jobs {args.jobs}' if args.jobs > 1 else ''}")
    text = table(ab, rows, command)
    print(text)
    if not args.no_doc:
        write_doc(ab.doc, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
