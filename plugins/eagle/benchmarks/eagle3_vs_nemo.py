"""EAGLE-3 training step: draftsmith's objective vs a NeMo-AutoModel-style eager step, same draft, same shape.

Usage (repo root): python plugins/eagle/benchmarks/eagle3_vs_nemo.py [--steps 5] [--device cuda --dtype bfloat16]

Uses the reference shape of benchmarks/train_step.py (hidden 512, 8 heads / 2 KV heads, head_dim 64, seq 512,
batch 2, target vocab 8192, draft vocab 2048, TTT 7). The two steps alternate (so machine load hits both alike);
prints each one's median forward+backward time, tokens/s, and the speed-up. Figures only: never a test.

The "NeMo" side here is ``nemo_eager_step.py``, a re-implementation (not the package). The real NeMo AutoModel
package (``LlamaEagle3DraftModel`` + ``Eagle3TrainerModule``) is timed by ``benchmarks/train_step.py --method
eagle3 --vs nemo``, run from ``.peers/nemo-automodel-0.7.0`` (``scripts/install_peers.sh``).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
from pathlib import Path

import torch

from draftsmith.benchmarking import step_timer

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--draft-vocab", type=int, default=0,
                        help="override the draft vocab (8192 = no compression: every target argmax is in vocab)")
    parser.add_argument("--dense", action="store_true",
                        help="compute every chain at every TTT step (skip_dead_chains=False): kernels only")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    train_step = _load("train_step", REPO / "benchmarks" / "train_step.py")
    nemo = _load("nemo_eager_step", HERE / "nemo_eager_step.py")
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    if args.draft_vocab:
        train_step.SHAPES["eagle3"]["draft"]["draft_vocab_size"] = args.draft_vocab
    draft, objective, shape = train_step.build("eagle3", device, dtype)
    objective.skip_dead_chains = not args.dense
    batch, features = train_step.make_batch(objective, shape, device, dtype)
    aux = torch.cat([features.hidden_states[i] for i in draft.config.target_layer_ids], dim=-1)
    ttt = objective.ttt_steps
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    timed = step_timer(device, dtype, draft)

    ours = lambda: objective(batch, features).loss  # noqa: E731
    theirs = lambda: nemo.nemo_eager_loss(draft, objective.heads.lm_head, batch, aux,  # noqa: E731
                                          features.final_hidden, ttt)
    with torch.no_grad(), autocast:
        a, b = ours().item(), theirs().item()
    print(f"loss draftsmith {a:.6f} nemo-eager {b:.6f} (same weights and data; they differ only by the label "
          f"alignment: draftsmith gates predictions on the predicted token's loss_mask)")
    timed(ours), timed(theirs)  # warm-up
    t_ours, t_theirs = [], []
    for _ in range(max(args.steps, 2)):
        t_ours.append(timed(ours))
        t_theirs.append(timed(theirs))
    tokens = shape["batch"] * shape["seq"]
    mo, mt = statistics.median(t_ours), statistics.median(t_theirs)
    print(f"device {args.device} dtype {args.dtype} threads {torch.get_num_threads()} ttt {ttt} "
          f"skip_dead_chains {objective.skip_dead_chains} draft_vocab {draft.config.draft_vocab_size}")
    print(f"draftsmith  step median {mo:.4f}s tokens/s {tokens / mo:.0f}  times {[round(t, 3) for t in t_ours]}")
    print(f"nemo-eager  step median {mt:.4f}s tokens/s {tokens / mt:.0f}  times {[round(t, 3) for t in t_theirs]}")
    print(f"speed-up {mt / mo:.2f}x")


if __name__ == "__main__":
    main()
