"""DSpark training-step benchmark: draftsmith's objective (per attention backend) vs NeMo AutoModel's dense-mask
path as *re-implemented* in ``nemo_dense_reference.py`` (not the package) at the reference shape of ../shared/BENCHMARKS.md: target hidden 512
(intermediate 2048, 8 heads / 2 KV heads, head_dim 64, vocab 8192, 36 layers), captured layers
[1, 9, 17, 25, 33], 5 draft layers, batch 1, seq 1024, 128 anchors, γ = 7, Markov vanilla rank 256, confidence
head with Markov features, γ_decay 4, mask id 8191.

One step = forward + backward of the draft with the loss (optimizer step excluded), same anchors and weights
for every variant. Variants run interleaved (round robin) so machine load hits them alike; the median step
time per variant is reported with tokens/s (= batch × seq / median) and the ratio to the dense reference.
Peak memory: CUDA max allocated per variant; on CPU each variant also runs alone in a subprocess (``--only``):
the peak RSS of its steps above the RSS before them (``VmHWM`` reset after a warm-up step).

    python plugins/dspark/benchmarks/train_step.py [--steps 5] [--threads N] [--device cuda --dtype bfloat16]

The comparison with the real NeMo AutoModel package (its own draft and trainer modules) is
``benchmarks/train_step.py --method dspark --vs nemo``, run from ``.peers/nemo-automodel-0.7.0``
(``scripts/install_peers.sh``); this script compares attention backends against the re-implementation.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nemo_dense_reference import nemo_dense_loss  # noqa: E402

import draftsmith  # noqa: E402
from draftsmith.benchmarking import interleaved_times, reset_peak_rss, rss_mb, step_timer  # noqa: E402
from draftsmith.method import TargetFeatures, TargetHeads  # noqa: E402

TARGET = dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8, num_key_value_heads=2, head_dim=64,
              vocab_size=8192, num_hidden_layers=36, tie_word_embeddings=False, max_position_embeddings=4096)
DRAFT = dict(num_draft_layers=5, target_layer_ids=[1, 9, 17, 25, 33], block_size=7, mask_token_id=8191,
             markov_rank=256, markov_head_type="vanilla", enable_confidence_head=True,
             confidence_head_with_markov=True)
BATCH, SEQ, ANCHORS, DECAY = 1, 1024, 128, 4.0
BACKENDS = ("sdpa", "grouped", "blockwise")


def setup(device: torch.device):
    from transformers import Qwen3Config

    tc = Qwen3Config(**TARGET, architectures=["Qwen3ForCausalLM"])
    torch.manual_seed(0)
    draft = draftsmith.resolve_draft_spec("dspark", tc.architectures).build(tc, **DRAFT).to(device).train()
    with torch.no_grad():  # a trained-looking Markov head (a fresh one is zero)
        draft.markov_head.markov_w2.weight.normal_(std=0.02)
    embed = nn.Embedding(TARGET["vocab_size"], TARGET["hidden_size"]).to(device).requires_grad_(False)
    lm_head = nn.Linear(TARGET["hidden_size"], TARGET["vocab_size"], bias=False).to(device).requires_grad_(False)
    heads = TargetHeads(embed_tokens=embed, lm_head=lm_head, vocab_size=TARGET["vocab_size"], pad_token_id=0,
                        eos_token_ids=(1,))
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, TARGET["vocab_size"] - 1, (BATCH, SEQ), generator=g).to(device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "loss_mask": torch.ones_like(ids)}
    hidden = {i: torch.randn(BATCH, SEQ, TARGET["hidden_size"], generator=g).to(device)
              for i in DRAFT["target_layer_ids"]}
    final = torch.randn(BATCH, SEQ, TARGET["hidden_size"], generator=g).to(device)
    return draft, heads, batch, TargetFeatures(hidden_states=hidden, final_hidden=final)


def make_variants(draft, heads, batch, features, device):
    from draftsmith_dspark.objective import DSparkObjective

    def ours(backend):
        objective = DSparkObjective(draft, heads, num_anchors=ANCHORS, loss_decay_gamma=DECAY,
                                    attention_backend=backend)

        def run():
            objective.load_run_state({"calls": 0})  # the same anchors every step
            return objective(batch, features).loss
        return run, objective

    variants, probe = {}, None
    for backend in BACKENDS:
        variants[f"draftsmith_{backend}"], probe = ours(backend)
    probe.load_run_state({"calls": 0})  # the anchors every draftsmith variant draws
    anchors, keep = probe.draw_anchors(batch["loss_mask"].bool())
    anchors, keep = anchors.to(device), keep.to(device)
    target_hidden = features.stacked(DRAFT["target_layer_ids"])
    return {"nemo_dense_sdpa": lambda: nemo_dense_loss(draft, batch["input_ids"], batch["loss_mask"], target_hidden,
                                                       features.final_hidden, anchors, keep, DECAY),
            **variants}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--only", help="run one variant alone (prints its peak RSS as JSON)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    draft, heads, batch, features = setup(device)
    variants = make_variants(draft, heads, batch, features, device)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    step = step_timer(device, dtype, draft)

    if args.only:
        fn = variants[args.only]
        step(fn)  # warm-up
        base = rss_mb("VmRSS")
        reset_peak_rss()
        times = [step(fn) for _ in range(args.steps)]
        print(json.dumps({"variant": args.only, "median_s": statistics.median(times),
                          "step_peak_mb": rss_mb("VmHWM") - base,
                          "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
        return

    losses = {}
    for name, fn in variants.items():  # warm-up and a numeric cross-check (same anchors, same weights)
        with autocast:
            losses[name] = float(fn().detach())
        step(fn)
    times, peak = interleaved_times(variants, args.steps, step, device)
    if device.type == "cpu":
        for name in variants:
            cmd = [sys.executable, __file__, "--only", name, "--steps", "2", "--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            peak[name] = json.loads(out.stdout.strip().splitlines()[-1])["step_peak_mb"]
    base = statistics.median(times["nemo_dense_sdpa"])
    print(f"dspark train step: device {args.device} dtype {args.dtype} threads {torch.get_num_threads()} batch "
          f"{BATCH} seq {SEQ} anchors {ANCHORS} γ {DRAFT['block_size']} (medians of {args.steps} interleaved steps)")
    for name in variants:
        med = statistics.median(times[name])
        mem = f"+{peak[name]:.0f} MB" if name in peak else "n/a"
        print(f"  {name:22s} {med:8.4f}s  tokens/s {BATCH * SEQ / med:9.0f}  x{base / med:5.2f} vs dense  "
              f"peak {mem:>9s}  loss {losses[name]:.5f}")


if __name__ == "__main__":
    main()
