"""Side by side with a real peer trainer: draftsmith vs NeMo AutoModel 0.7.0's own DFlash / DSpark, same budget.

    .peers/nemo-automodel-0.7.0/bin/python benchmarks/nemo_side_by_side.py --method dflash|dspark
        [--steps 300] [--seed 0] [--max-prompts N] [--nemo-anchors nemo|ours] [--json-out FILE]

Both sides train on the demo config (``examples/configs/<method>-tiny.yaml``: target ``examples/tiny-target``,
``examples/data/train.jsonl``, draft size, target layers, block size, anchors, γ, lr, warmup+cosine schedule,
batch, steps, seed), then both drafts are measured by the same evaluator, ``draftsmith eval --check-lossless`` on
``examples/data/prompts-heldout.jsonl`` (64 new tokens, greedy). The script prints τ, the first-position
acceptance and the training wall/CPU time of both.

* **ours**: ``draftsmith train <config> --max-steps N --output-dir DIR --set train.seed=S --set
  method_options.seed=S`` in a subprocess (its in-training eval at the last step and its checkpoints included).
* **NeMo**: a subprocess of this script (``--nemo-train``) builds draftsmith's own run set-up (``build_setup``:
  target, data, tokenizer, and the draftsmith draft built with ``train.seed``), iterates draftsmith's own
  micro-batches (``Trainer._micro_batches``: same rows, same order) and target features (``OnlineFeatures``:
  same forward hooks), and trains NeMo's modules on them: DFlash = ``dflash.draft_qwen3.Qwen3DFlashDraftModel``
  + ``dflash.core.DFlashTrainerModule`` (its ``DFlashDecayLoss``; the target's frozen ``embed_tokens`` /
  ``lm_head``), DSpark = ``dspark.config.build_draft_config`` + ``dspark.draft_qwen3.Qwen3DSparkModel`` +
  ``dspark.core.DSparkTrainerModule`` (``compute_dspark_loss``). Optimizer and schedule are draftsmith's
  trainer's: AdamW (config lr, betas, eps, weight decay) over the trainable parameters, gradient clip at
  ``train.clip``, ``schedule.make_scheduler`` (linear warmup, cosine to ``min_lr_ratio``). Initial weights:
  draftsmith's initial draft (same seed) loaded into NeMo's module — the tensor names are identical for both
  methods, so the map is the identity both ways (checked strictly: no missing or unexpected key). Anchors: NeMo's
  own sampler (``torch.rand`` on the global RNG, seeded as draftsmith's trainer seeds it) by default;
  ``--nemo-anchors ours`` hands NeMo draftsmith's anchor draws (same stream as our objective) every step instead.
  Attention: NeMo's dense-mask ``sdpa`` path (its ``flex_attention`` has no CPU backward). After training, NeMo's
  state dict is loaded back into the draftsmith draft (identity map, strict) and saved with ``save_pretrained``.

Before training, one batch is scored by both losses with the same weights and anchors (a check that the two
objectives agree on this target). Run it with the venv ``scripts/install_peers.sh`` builds; the NeMo package is a
benchmark dependency only.
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
TARGET = "examples/tiny-target"
PROMPTS = "examples/data/prompts-heldout.jsonl"


# -- NeMo side (subprocess) --------------------------------------------------------------------------------------
class _Args(dict):
    """The recipe's ``model_args`` (attribute access + ``in``), as NeMo's config builders read it."""

    __getattr__ = dict.__getitem__


def _strict_load(module, state) -> None:
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"state dict does not map onto {type(module).__name__}: missing {missing}, "
                           f"unexpected {unexpected}")


def _nemo_dflash(setup, attention: str):
    from nemo_automodel.components.speculative.dflash import core as nemo_core
    from nemo_automodel.components.speculative.dflash import draft_qwen3 as nemo_draft

    draft, objective, cfg = setup.draft, setup.objective, setup.draft.config
    from draftsmith_dflash.registry import OBJECTIVE_OPTIONS

    ids, mask_id = list(draft.target_layer_ids), int(draft.mask_token_id)
    gamma = dict(setup.config.method_options).get("loss_decay_gamma", OBJECTIVE_OPTIONS["loss_decay_gamma"])
    config = nemo_draft.build_qwen3_dflash_draft_config(
        setup.target_config, num_draft_layers=int(cfg.num_hidden_layers),
        num_target_layers=int(setup.target_config.num_hidden_layers), block_size=int(draft.block_size),
        attention_backend=attention,
        dflash_config={"mask_token_id": mask_id, "target_layer_ids": ids})
    model = nemo_draft.Qwen3DFlashDraftModel(config)
    _strict_load(model, draft.state_dict())
    model.train()
    heads = objective.heads
    trainer = nemo_core.DFlashTrainerModule(model, heads.lm_head, heads.embed_tokens, mask_id,
                                            block_size=int(draft.block_size), attention_backend=attention,
                                            num_anchors=int(objective.num_anchors), loss_decay_gamma=gamma)
    mo = dict(setup.config.method_options)
    options = {"loss_decay_gamma": gamma, "first_slot_weight": mo.get("first_slot_weight", 1.0),
               "kd_weight": objective.kd_weight}
    if options["first_slot_weight"] != 1.0 or options["kd_weight"] > 0:
        print(f"note: our objective has {options}; NeMo's DFlashDecayLoss has neither term", file=sys.stderr)

    def step(batch, feats):
        mask = batch["loss_mask"] * batch["attention_mask"]
        return trainer(batch["input_ids"], feats.stacked(ids), mask).loss

    def use_anchors(fn):  # fn(mask) -> (anchors, keep) or None for NeMo's own sampler
        from draftsmith_dflash.anchors import anchor_candidates

        if fn is None:
            trainer.__dict__.pop("_sample_anchor_positions", None)
        else:
            trainer._sample_anchor_positions = lambda seq_len, loss_mask, device, doc_remaining=None: fn(
                anchor_candidates(loss_mask.bool(), int(draft.block_size)))
    return model, step, use_anchors, options


def _nemo_dspark(setup, attention: str):
    from nemo_automodel.components.speculative.dspark import config as nemo_config
    from nemo_automodel.components.speculative.dspark import core as nemo_core
    from nemo_automodel.components.speculative.dspark import draft_qwen3 as nemo_draft

    draft, objective, cfg = setup.draft, setup.objective, setup.draft.config
    ids = list(cfg.target_layer_ids)
    args = _Args(num_draft_layers=int(cfg.num_hidden_layers), target_layer_ids=ids,
                 confidence_head_alpha=objective.conf_alpha,
                 confidence_head_with_markov=bool(getattr(cfg, "confidence_head_with_markov", True)),
                 markov_rank=int(cfg.markov_rank), markov_head_type=getattr(cfg, "markov_head_type", "vanilla"),
                 block_size=int(cfg.block_size), mask_token_id=int(cfg.mask_token_id),
                 num_anchors=int(objective.num_anchors))
    config = nemo_config.build_draft_config(setup.target_config, args)
    config._attn_implementation = attention
    model = nemo_draft.Qwen3DSparkModel(config)
    _strict_load(model, draft.state_dict())
    model.set_embedding_head_trainable(False)
    model.train()
    trainer = nemo_core.DSparkTrainerModule(model, loss_decay_gamma=objective.loss_decay_gamma,
                                            ce_loss_alpha=objective.ce_alpha, l1_loss_alpha=objective.l1_alpha,
                                            confidence_head_alpha=objective.conf_alpha)
    own_sampler = nemo_draft.sample_anchor_positions

    def step(batch, feats):
        mask = batch["loss_mask"] * batch["attention_mask"]
        return trainer(batch["input_ids"], feats.stacked(ids), mask, feats.final_hidden).loss

    def use_anchors(fn):
        if fn is None:
            nemo_draft.sample_anchor_positions = own_sampler
        else:
            nemo_draft.sample_anchor_positions = lambda *, loss_mask, **_: fn(loss_mask.bool())
    options = {"loss_decay_gamma": objective.loss_decay_gamma,
               "first_slot_weight": dict(setup.config.method_options).get("first_slot_weight", 1.0)}
    if options["first_slot_weight"] != 1.0:  # the same-batch losses then differ by design
        print(f"note: our objective has {options}; NeMo's compute_dspark_loss has no first-slot weight",
              file=sys.stderr)
    return model, step, use_anchors, options


def nemo_train(args) -> int:
    """Train NeMo's draft on draftsmith's batches/features; save it as a draftsmith draft; write a JSON summary."""
    import torch

    from draftsmith.train.config import load_config
    from draftsmith.train.distributed import DistInfo
    from draftsmith.train.features import OnlineFeatures, move_batch
    from draftsmith.train.schedule import make_scheduler
    from draftsmith.train.setup import build_setup
    from draftsmith.train.trainer import Trainer
    from draftsmith.train import checkpointing as ckpt

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = load_config(REPO / "examples" / "configs" / f"{args.method}-tiny.yaml",
                         [f"train.max_steps={args.steps}", f"train.seed={args.seed}",
                          f"method_options.seed={args.seed}", f"train.output_dir={out}"])
    info = DistInfo()
    t = config.train
    trainer = Trainer(config, info)  # used for its data position only (no loop, no checkpoints)
    trainer.global_batch = t.batch_size * t.grad_accum
    setup = build_setup(config, info, trainer.device, log=lambda s: print(s, file=sys.stderr, flush=True))
    trainer.setup = setup
    trainer._loaders(setup)
    if args.method not in ("dflash", "dspark"):
        raise SystemExit(f"--method {args.method}: only dflash and dspark")
    builder = _nemo_dflash if args.method == "dflash" else _nemo_dspark
    attention = "flex_attention" if trainer.device.type == "cuda" else "sdpa"
    model, nemo_step, use_anchors, our_options = builder(setup, attention)
    model.to(trainer.device)
    objective = setup.objective
    features = OnlineFeatures(setup.target, setup.request)
    batches = trainer._micro_batches()

    if args.method == "dflash":
        def our_draw(candidates):
            return objective.draw_anchors(candidates)
    else:
        def our_draw(mask):
            return objective.draw_anchors(mask)

    # 1. the same batch, weights and anchors through both losses (our objective's stream rewound afterwards)
    first_raw = next(batches)
    trainer.epoch, trainer.rows_in_epoch = 0, 0
    batch = move_batch(first_raw, trainer.device)
    feats = features(batch)
    saved = objective.run_state()
    with torch.no_grad():
        objective.load_run_state({"calls": 0})
        ours0 = float(objective(batch, feats).loss)
        objective.load_run_state({"calls": 0})
        use_anchors(our_draw)
        nemo0 = float(nemo_step(batch, feats))
    objective.load_run_state(saved)
    use_anchors(None)
    print(f"same batch, weights and anchors: loss ours {ours0:.6f} nemo {nemo0:.6f}", file=sys.stderr, flush=True)
    batches = trainer._micro_batches()  # rewound to the start of epoch 0

    # 2. the loop: draftsmith's optimizer, schedule, clip and seeding; NeMo's forward + loss
    params = [p for p in model.parameters() if p.requires_grad]
    ours_trainable = sum(p.numel() for p in setup.draft.parameters() if p.requires_grad)
    nemo_trainable = sum(p.numel() for p in params)
    optimizer = torch.optim.AdamW(params, lr=t.lr, betas=tuple(t.betas), eps=t.eps, weight_decay=t.weight_decay)
    scheduler = make_scheduler(optimizer, t.max_steps, t.warmup_ratio, t.min_lr_ratio)
    trainer._seed()  # random/numpy/torch seeded as draftsmith's trainer does (NeMo's anchor draws use torch.rand)
    use_anchors(our_draw if args.nemo_anchors == "ours" else None)
    max_norm = t.clip if t.clip > 0 else float("inf")
    log, window, tokens = [], [], 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for step in range(t.max_steps):
        losses = []
        for _ in range(t.grad_accum):
            batch = move_batch(next(batches), trainer.device)
            tokens += int(batch["attention_mask"].sum())
            loss = nemo_step(batch, features(batch)).float()
            (loss / t.grad_accum).backward()
            losses.append(float(loss.detach()))
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if not all(map(lambda v: v == v and abs(v) != float("inf"), losses)) or not torch.isfinite(norm):
            raise SystemExit(f"non-finite loss/grad at step {step + 1}: {losses} {float(norm)}")
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        window.extend(losses)
        if (step + 1) % t.log_every == 0 or step + 1 == t.max_steps:
            log.append({"step": step + 1, "loss": sum(window) / len(window)})
            print(f"nemo step {step + 1}: loss {log[-1]['loss']:.4f}", file=sys.stderr, flush=True)
            window = []
    loop_wall, loop_cpu = time.perf_counter() - wall0, time.process_time() - cpu0

    # 3. back into draftsmith's draft (identity name map, strict), saved with save_pretrained
    state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    _strict_load(setup.draft, state)
    final = out / "final"
    ckpt.save_draft(setup.draft, final)
    summary = {"final": str(final), "loss_same_batch": {"ours": ours0, "nemo": nemo0}, "log": log,
               "loop_seconds": loop_wall, "loop_cpu_seconds": loop_cpu, "tokens_per_s": tokens / loop_wall,
               "trainable_params": {"ours": ours_trainable, "nemo": nemo_trainable}, "attention": attention,
               "anchors": args.nemo_anchors, "our_objective_options": our_options}
    (out / "nemo_train.json").write_text(json.dumps(summary, indent=2))
    return 0


# -- driver ------------------------------------------------------------------------------------------------------
def _timed(cmd: list[str], log_path: Path) -> tuple[int, float, float]:
    print("+ " + " ".join(cmd), flush=True)
    t0, u0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log_path, "w") as log:
        rc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode
    u1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (u1.ru_utime + u1.ru_stime) - (u0.ru_utime + u0.ru_stime)
    return rc, time.perf_counter() - t0, cpu


def _evaluate(draft: Path, max_prompts: int, max_new_tokens: int, log_path: Path) -> dict:
    cmd = [sys.executable, "-m", "draftsmith", "eval", "--target", TARGET, "--draft", str(draft), "--prompts",
           PROMPTS, "--max-new-tokens", str(max_new_tokens), "--check-lossless", "--json"]
    if max_prompts > 0:
        cmd += ["--max-prompts", str(max_prompts)]
    print("+ " + " ".join(cmd), flush=True)
    res = subprocess.run(cmd, cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    log_path.write_text(res.stderr)
    if res.returncode != 0 or not res.stdout.strip():
        raise SystemExit(f"eval of {draft} failed (rc {res.returncode}); see {log_path}")
    return json.loads(res.stdout)


def _our_log(run_dir: Path) -> tuple[list[dict], float | None]:
    path = run_dir / "metrics.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []
    train = [{"step": r["step"], "loss": r["loss"]} for r in rows if r.get("split") == "train" and "loss" in r]
    tok = [r["tokens_per_s"] for r in rows if r.get("split") == "train" and r.get("tokens_per_s")]
    return train, (sum(tok) / len(tok) if tok else None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", required=True, choices=("dflash", "dspark"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-prompts", type=int, default=0, help="held-out prompts to evaluate (0 = all 320)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--nemo-anchors", choices=("nemo", "ours"), default="nemo",
                        help="NeMo trains with its own anchor sampler (default) or draftsmith's anchor draws")
    parser.add_argument("--out", default="runs/nemo-side-by-side", help="run directories go under this")
    parser.add_argument("--skip-ours", action="store_true", help="reuse an existing run of ours (same --out)")
    parser.add_argument("--eval-only", action="store_true",
                        help="reuse both trained drafts (same --out, --steps, --seed) and only evaluate them")
    parser.add_argument("--json-out", help="write the figures to this JSON file")
    parser.add_argument("--nemo-train", action="store_true", help=argparse.SUPPRESS)  # the NeMo subprocess
    parser.add_argument("--output-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.nemo_train:
        return nemo_train(args)
    try:
        import nemo_automodel  # noqa: F401
    except ImportError:
        parser.error("nemo_automodel is not importable: run with .peers/nemo-automodel-0.7.0/bin/python "
                     "(scripts/install_peers.sh builds it)")
    from importlib.metadata import version

    tag = f"{args.method}-s{args.seed}-{args.steps}" + ("-ouranchors" if args.nemo_anchors == "ours" else "")
    base = Path(args.out)
    ours_dir, nemo_dir = base / f"ours-{args.method}-s{args.seed}-{args.steps}", base / f"nemo-{tag}"
    base.mkdir(parents=True, exist_ok=True)
    config = f"examples/configs/{args.method}-tiny.yaml"
    results = {"method": args.method, "steps": args.steps, "seed": args.seed, "nemo_automodel": version(
        "nemo-automodel"), "max_prompts": args.max_prompts or 320, "max_new_tokens": args.max_new_tokens,
        "threads": os.environ.get("OMP_NUM_THREADS"), "nemo_anchors": args.nemo_anchors}

    if not (args.skip_ours or args.eval_only):
        train = [sys.executable, "-m", "draftsmith", "train", config, "--output-dir", str(ours_dir), "--max-steps",
                 str(args.steps), "--set", f"train.seed={args.seed}", "--set", f"method_options.seed={args.seed}",
                 "--set", "train.overwrite=true", "--set", "train.progress=false"]
        rc, wall, cpu = _timed(train, base / f"ours-{tag}.log")
        if rc != 0:
            raise SystemExit(f"draftsmith train failed (rc {rc}); see {base / f'ours-{tag}.log'}")
        (ours_dir / "process_times.json").write_text(json.dumps({"wall": wall, "cpu": cpu}))
    times = json.loads((ours_dir / "process_times.json").read_text())
    our_log, our_tok = _our_log(ours_dir)
    results["ours"] = {"train_wall_s": times["wall"], "train_cpu_s": times["cpu"], "tokens_per_s": our_tok,
                       "loss_log": our_log}

    nemo = [sys.executable, __file__, "--nemo-train", "--method", args.method, "--steps", str(args.steps), "--seed",
            str(args.seed), "--nemo-anchors", args.nemo_anchors, "--output-dir", str(nemo_dir)]
    if not args.eval_only:
        rc, wall, cpu = _timed(nemo, base / f"nemo-{tag}.log")
        if rc != 0:
            raise SystemExit(f"NeMo training failed (rc {rc}); see {base / f'nemo-{tag}.log'}")
        (nemo_dir / "process_times.json").write_text(json.dumps({"wall": wall, "cpu": cpu}))
    times = json.loads((nemo_dir / "process_times.json").read_text())
    wall, cpu = times["wall"], times["cpu"]
    summary = json.loads((nemo_dir / "nemo_train.json").read_text())
    results["nemo"] = {"train_wall_s": wall, "train_cpu_s": cpu, "loop_wall_s": summary["loop_seconds"],
                       "loop_cpu_s": summary["loop_cpu_seconds"], "tokens_per_s": summary["tokens_per_s"],
                       "loss_log": summary["log"], "attention": summary["attention"],
                       "trainable_params": summary["trainable_params"]}
    results["loss_same_batch"] = summary["loss_same_batch"]

    for side, draft in (("ours", ours_dir / "final"), ("nemo", nemo_dir / "final")):
        report = _evaluate(draft, args.max_prompts, args.max_new_tokens,
                           base / f"eval-{side}-{tag}-p{args.max_prompts or 320}.log")
        acc = report.get("conditional_acceptance") or []
        results[side].update(tau=report["tau"], first_acceptance=acc[0] if acc else None, acceptance=acc,
                             lossless=report["lossless"]["ok"], prompts=report["prompts"])

    o, n = results["ours"], results["nemo"]
    print(f"\n{args.method} seed {args.seed}, {args.steps} steps, nemo-automodel {results['nemo_automodel']} "
          f"(NeMo anchors: {args.nemo_anchors}), {o['prompts']} held-out prompts x {args.max_new_tokens} tokens")
    print(f"same-batch loss (same weights, anchors): ours {results['loss_same_batch']['ours']:.6f} "
          f"nemo {results['loss_same_batch']['nemo']:.6f}")
    print(f"{'':6s} {'tau':>6s} {'acc@1':>6s} {'final loss':>10s} {'train wall/CPU s':>17s}  lossless")
    for name, r in (("ours", o), ("nemo", n)):
        last = r["loss_log"][-1]["loss"] if r["loss_log"] else float("nan")
        print(f"{name:6s} {r['tau']:6.3f} {r['first_acceptance']:6.3f} {last:10.4f} "
              f"{r['train_wall_s']:8.0f}/{r['train_cpu_s']:<8.0f}  {r['lossless']}")
    print(f"nemo training loop alone: {n['loop_wall_s']:.0f} s wall / {n['loop_cpu_s']:.0f} s CPU")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))
    return 0 if o["lossless"] and n["lossless"] else 1


if __name__ == "__main__":
    sys.exit(main())
