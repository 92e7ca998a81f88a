"""Time one training step (forward + backward of the draft, objective included, optimizer step excluded).

Usage: python benchmarks/train_step.py --method {eagle3,eagle1,dflash,dspark} [--steps 3] [--device cuda
       --dtype bfloat16] [--vs nemo]

Shapes are fixed by ../shared/BENCHMARKS.md. Only method-agnostic contracts are used: the draft comes from the
registry (`spec.build`), the loss from the method's registered Objective, and the target features are random
tensors shaped by the objective's `target_request()` (so no target model is run). The last two lines are
`peak_rss_mb <M>` and `<method> step median <seconds>s tokens/s <N>`.

``--vs nemo`` (eagle3, dflash, dspark) adds the same step of the real NeMo AutoModel package, when ``nemo_automodel``
is importable (the environment ``scripts/install_peers.sh`` builds: run this script with
``.peers/nemo-automodel-0.7.0/bin/python``): NeMo's own draft module and trainer module (``nemo_peers.py``) with
draftsmith's starting weights and anchors, both steps timed interleaved (round robin, ``--steps`` rounds after a
warm-up each) and, on CPU, each one's peak memory measured alone in a subprocess (``--only``: the peak RSS of its
timed steps above the RSS before them, ``VmHWM`` reset after the warm-up). It prints both losses, NeMo's
``tokens/s``, the ratio ``ours / nemo`` and both peaks, then the two contract lines for draftsmith. Without the
package it says so and falls back to the re-implementations of NeMo's step in ``plugins/*/benchmarks/``
(``nemo_dense_reference.py``, ``nemo_eager_step.py``), labelled "re-implementation, not the package" — not a
measurement of NeMo.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import statistics
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

import draftsmith
from draftsmith.benchmarking import interleaved_times, reset_peak_rss, rss_mb, step_timer
from draftsmith.method import TargetFeatures, TargetHeads

# Common reference target (Qwen3/Llama-shaped; only its config is needed).
TARGET = dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8, num_key_value_heads=2, head_dim=64,
              vocab_size=8192, num_hidden_layers=36, tie_word_embeddings=False, max_position_embeddings=4096)

# Per-method reference shapes: batch, seq, draft options (spec.build), objective options.
SHAPES = {
    "eagle3": dict(batch=2, seq=512, draft=dict(num_draft_layers=1, draft_vocab_size=2048),
                   objective=dict(ttt_steps=7)),
    "eagle1": dict(batch=2, seq=512, draft=dict(num_draft_layers=1), objective=dict(feature_noise=False)),
    "dflash": dict(batch=1, seq=1024, draft=dict(num_draft_layers=5, target_layer_ids=[1, 9, 17, 25, 33],
                                                  block_size=16, mask_token_id=8191),
                   objective=dict(num_anchors=128, loss_decay_gamma=7.0)),
    "dspark": dict(batch=1, seq=1024, draft=dict(num_draft_layers=5, target_layer_ids=[1, 9, 17, 25, 33],
                                                  block_size=7, mask_token_id=8191, markov_rank=256,
                                                  markov_head_type="vanilla", enable_confidence_head=True,
                                                  confidence_head_with_markov=True),
                   objective=dict(num_anchors=128, loss_decay_gamma=4.0)),
}


def build(method: str, device: torch.device, dtype: torch.dtype, backend: str | None = None):
    from transformers import Qwen3Config

    shape = SHAPES[method]
    target_config = Qwen3Config(**TARGET)
    target_config.architectures = ["Qwen3ForCausalLM"]
    spec = draftsmith.resolve_draft_spec(method, target_config.architectures)
    method_spec = draftsmith.get_method(method)
    draft = spec.build(target_config, **shape["draft"]).to(device)
    embed = nn.Embedding(TARGET["vocab_size"], TARGET["hidden_size"]).to(device).requires_grad_(False)
    lm_head = nn.Linear(TARGET["hidden_size"], TARGET["vocab_size"], bias=False).to(device).requires_grad_(False)
    heads = TargetHeads(embed_tokens=embed, lm_head=lm_head, vocab_size=TARGET["vocab_size"], pad_token_id=0,
                        eos_token_ids=(1,))
    options = {**method_spec.default_options, **shape["objective"]}
    if backend is not None:  # the block drafters' training attention (dflash, dspark)
        options["attention_backend"] = backend
    objective = method_spec.load_objective()(draft, heads, **options)
    if hasattr(objective, "prepare"):
        g = torch.Generator().manual_seed(0)
        objective.prepare(torch.randint(0, 1000, (TARGET["vocab_size"],), generator=g))
    draft.train()
    return draft, objective, shape


def make_batch(objective, shape, device: torch.device, dtype: torch.dtype):
    g = torch.Generator().manual_seed(1)
    b, s, h = shape["batch"], shape["seq"], TARGET["hidden_size"]
    ids = torch.randint(2, TARGET["vocab_size"] - 1, (b, s), generator=g).to(device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "loss_mask": torch.ones_like(ids)}
    request = objective.target_request()
    hidden = {i: torch.randn(b, s, h, generator=g).to(device, dtype) for i in request.layer_ids}
    final = torch.randn(b, s, h, generator=g).to(device, dtype) if request.final_hidden else None
    return batch, TargetFeatures(hidden_states=hidden, final_hidden=final)


HERE = Path(__file__).resolve().parent
PLUGINS = HERE.parent / "plugins"
# Without the package: the re-implementations of NeMo's step (timing baselines written from its description)
FALLBACKS = {"dspark": PLUGINS / "dspark" / "benchmarks" / "nemo_dense_reference.py",
             "dflash": PLUGINS / "dflash" / "benchmarks" / "nemo_dense_reference.py",
             "eagle3": PLUGINS / "eagle" / "benchmarks" / "nemo_eager_step.py"}


def _load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def peer(method: str, draft, objective, shape, batch, features, device: torch.device):
    """``(label, loss_fn, module)`` of NeMo's step: the real package when importable, else the labelled
    re-implementation (which runs on draftsmith's own draft module)."""
    nemo_peers = _load_module("nemo_peers", HERE / "nemo_peers.py")
    version = nemo_peers.available()
    if version is not None:
        attention = "flex_attention" if device.type == "cuda" else "sdpa"  # flex has no CPU backward (torch 2.13)
        fn, module = nemo_peers.BUILDERS[method](TARGET, shape, draft, objective, batch, features, attention)
        shown = "eager (the recipe default)" if method == "eagle3" else attention  # EAGLE-3's draft: eager / FA2
        return f"nemo-automodel {version} (the package; draft attention {shown})", fn, module
    print("nemo_automodel is NOT installed (build .peers/ with scripts/install_peers.sh and run this script with "
          ".peers/nemo-automodel-0.7.0/bin/python): falling back to a re-implementation, not the package")
    ref = _load_module(f"nemo_ref_{method}", FALLBACKS[method])
    label = f"{FALLBACKS[method].relative_to(HERE.parent)} (re-implementation, not the package)"
    if method == "eagle3":
        aux = torch.cat([features.hidden_states[i] for i in draft.config.target_layer_ids], dim=-1)
        return label, lambda: ref.nemo_eager_loss(draft, objective.heads.lm_head, batch, aux, features.final_hidden,
                                                  objective.ttt_steps), draft
    if method == "dflash":
        from draftsmith_dflash.anchors import anchor_candidates

        objective.load_run_state({"calls": 0})
        anchors, keep = objective.draw_anchors(anchor_candidates(batch["loss_mask"].bool(), draft.block_size))
        hidden = features.stacked(draft.target_layer_ids)
        return label, lambda: ref.nemo_dense_loss(draft, objective.heads, batch["input_ids"], batch["loss_mask"],
                                                  hidden, anchors, keep, shape["objective"]["loss_decay_gamma"]), draft
    objective.load_run_state({"calls": 0})
    anchors, keep = objective.draw_anchors(batch["loss_mask"].bool())
    hidden = features.stacked(draft.config.target_layer_ids)
    return label, lambda: ref.nemo_dense_loss(draft, batch["input_ids"], batch["loss_mask"], hidden,
                                              features.final_hidden, anchors, keep,
                                              shape["objective"]["loss_decay_gamma"]), draft


def _ours(objective, batch, features):
    """draftsmith's step, drawing the same anchors (call 0) every step as the peer's."""
    def loss():
        if hasattr(objective, "load_run_state"):
            objective.load_run_state({"calls": 0})
        return objective(batch, features).loss
    return loss


def _alone(args, side: str) -> dict:
    cmd = [sys.executable, __file__, "--method", args.method, "--vs", args.vs, "--only", side, "--steps", "2",
           "--threads", str(args.threads), "--device", args.device, "--dtype", args.dtype]
    if args.backend:
        cmd += ["--backend", args.backend]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# Ops that make the host wait for the device (a CUDA sync): data-dependent shapes and scalar reads.
HOST_SYNC_OPS = ("aten::_local_scalar_dense", "aten::nonzero")


def profile_step(timed, loss_fn, device: torch.device, rows: int = 12) -> None:
    """One warmed-up step under ``torch.profiler``: how many ops it runs (each a kernel launch on CUDA, where a
    small-shape step is launch-bound), how many wait for the device, and the top ops."""
    from torch.profiler import ProfilerActivity, profile

    timed(loss_fn)  # warm-up
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        timed(loss_fn)
    events = prof.key_averages()
    syncs = {e.key: e.count for e in events if e.key in HOST_SYNC_OPS}
    print(f"profile ops {sum(e.count for e in events)} host_syncs {syncs}")
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(events.table(sort_by=key, row_limit=rows, max_name_column_width=60))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", required=True, choices=sorted(SHAPES))
    parser.add_argument("--steps", type=int, default=3, help="timed steps (>= 2), after one warm-up step")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--vs", choices=["nemo"], help="also time NeMo AutoModel's step (eagle3, dflash, dspark)")
    parser.add_argument("--backend", help="dflash/dspark: draftsmith's block attention_backend (default: the "
                        "method's default; see draftsmith.nn.block_mask.ATTENTION_BACKENDS)")
    parser.add_argument("--profile", action="store_true",
                        help="also print a torch.profiler summary of one of draftsmith's steps (op and host-sync "
                             "counts, top ops by device or CPU time)")
    parser.add_argument("--only", choices=["ours", "nemo"], help=argparse.SUPPRESS)  # --vs: one side alone (JSON)
    args = parser.parse_args()
    if args.backend and args.method not in ("dflash", "dspark"):
        parser.error("--backend applies to dflash and dspark")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.vs and args.method not in FALLBACKS:
        parser.error(f"--vs nemo compares {sorted(FALLBACKS)}")
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    draft, objective, shape = build(args.method, device, dtype, args.backend)
    batch, features = make_batch(objective, shape, device, dtype)
    tokens = shape["batch"] * shape["seq"]
    if args.profile:
        profile_step(step_timer(device, dtype, draft), _ours(objective, batch, features), device)
    if args.vs:
        return compare(args, draft, objective, shape, batch, features, device, dtype, tokens)
    timed = step_timer(device, dtype, draft)
    loss_fn = lambda: objective(batch, features).loss  # noqa: E731

    timed(loss_fn)  # warm-up (allocations, kernels)
    times = [timed(loss_fn) for _ in range(max(args.steps, 2))]
    median = statistics.median(times)
    params = sum(p.numel() for p in draft.parameters() if p.requires_grad)
    print(f"method {args.method} device {args.device} dtype {args.dtype} batch {shape['batch']} seq {shape['seq']} "
          f"trainable_params {params} times {[round(t, 4) for t in times]}")
    if device.type == "cuda":
        print(f"peak_cuda_mb {torch.cuda.max_memory_allocated() / 2**20:.0f}")
    print(f"peak_rss_mb {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")
    print(f"{args.method} step median {median:.4f}s tokens/s {tokens / median:.0f}")


def compare(args, draft, objective, shape, batch, features, device, dtype, tokens) -> None:
    ours = _ours(objective, batch, features)
    if args.only == "ours":  # alone: no peer module built in this process
        fns, module = {"ours": ours}, draft
    else:
        label, theirs, peer_module = peer(args.method, draft, objective, shape, batch, features, device)
        fns, module = {"ours": ours, "nemo": theirs}, nn.ModuleList([draft, peer_module])
    timed = step_timer(device, dtype, module)  # zeroes both sides' gradients after each step
    if args.only:
        fn = fns[args.only]
        timed(fn)  # warm-up
        base, before = rss_mb("VmRSS"), rss_mb("VmHWM")
        reset_peak_rss()
        times = [timed(fn) for _ in range(max(args.steps, 2))]
        after = rss_mb("VmHWM")  # (ru_maxrss would carry the parent's peak across fork + exec)
        print(json.dumps({"side": args.only, "median_s": statistics.median(times), "step_peak_mb": after - base,
                          "peak_rss_mb": max(before, after)}))
        return
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    with torch.no_grad(), autocast:
        losses = {name: float(fn()) for name, fn in fns.items()}
    for fn in fns.values():
        timed(fn)  # warm-up
    times, peak = interleaved_times(fns, max(args.steps, 2), timed, device)
    total_peak = {}
    if device.type == "cpu":
        for side in fns:
            alone = _alone(args, side)
            peak[side], total_peak[side] = alone["step_peak_mb"], alone["peak_rss_mb"]
    med = {name: statistics.median(t) for name, t in times.items()}
    unit = "step peak RSS above the pre-step RSS, alone" if device.type == "cpu" else "peak CUDA allocated"
    print(f"method {args.method} device {args.device} dtype {args.dtype} threads {torch.get_num_threads()} batch "
          f"{shape['batch']} seq {shape['seq']} (medians of {max(args.steps, 2)} interleaved steps, same weights and "
          f"anchors)")
    print(f"vs {label}")
    print(f"loss ours {losses['ours']:.6f} nemo {losses['nemo']:.6f}")
    for name in fns:
        print(f"{name:4s} step median {med[name]:.4f}s tokens/s {tokens / med[name]:.0f} "
              f"times {[round(t, 4) for t in times[name]]} peak_mb {peak.get(name, float('nan')):.0f} ({unit})")
    ratio_mem = peak["ours"] / peak["nemo"] if peak.get("nemo") else float("nan")
    print(f"ratio ours/nemo tokens/s x{med['nemo'] / med['ours']:.2f}  peak memory x{ratio_mem:.2f}")
    if device.type == "cuda":
        print(f"peak_cuda_mb {peak['ours']:.0f}")
    if total_peak:
        print(f"process peak RSS alone: ours {total_peak['ours']:.0f} MB, nemo {total_peak['nemo']:.0f} MB "
              f"(nemo's process also holds draftsmith's draft, the source of its weights)")
    rss = total_peak.get("ours", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(f"peak_rss_mb {rss:.0f}")
    print(f"{args.method} step median {med['ours']:.4f}s tokens/s {tokens / med['ours']:.0f}")


if __name__ == "__main__":
    main()
