"""Time one training step (forward + backward of the draft, objective included, optimizer step excluded).

Usage: python benchmarks/train_step.py --method {eagle3,eagle1,dflash,dspark} [--steps 3] [--device cuda
       --dtype bfloat16]

Shapes are fixed by ../shared/BENCHMARKS.md. Only method-agnostic contracts are used: the draft comes from the
registry (`spec.build`), the loss from the method's registered Objective, and the target features are random
tensors shaped by the objective's `target_request()` (so no target model is run). The last two lines are
`peak_rss_mb <M>` and `<method> step median <seconds>s tokens/s <N>`.
"""

from __future__ import annotations

import argparse
import resource
import statistics

import torch
from torch import nn

import draftsmith
from draftsmith.benchmarking import step_timer
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


def build(method: str, device: torch.device, dtype: torch.dtype):
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", required=True, choices=sorted(SHAPES))
    parser.add_argument("--steps", type=int, default=3, help="timed steps (>= 2), after one warm-up step")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    draft, objective, shape = build(args.method, device, dtype)
    batch, features = make_batch(objective, shape, device, dtype)
    timed = step_timer(device, dtype, draft)
    loss_fn = lambda: objective(batch, features).loss  # noqa: E731

    timed(loss_fn)  # warm-up (allocations, kernels)
    times = [timed(loss_fn) for _ in range(max(args.steps, 2))]
    median = statistics.median(times)
    tokens = shape["batch"] * shape["seq"]
    params = sum(p.numel() for p in draft.parameters() if p.requires_grad)
    print(f"method {args.method} device {args.device} dtype {args.dtype} batch {shape['batch']} seq {shape['seq']} "
          f"trainable_params {params} times {[round(t, 4) for t in times]}")
    if device.type == "cuda":
        print(f"peak_cuda_mb {torch.cuda.max_memory_allocated() / 2**20:.0f}")
    print(f"peak_rss_mb {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")
    print(f"{args.method} step median {median:.4f}s tokens/s {tokens / median:.0f}")


if __name__ == "__main__":
    main()
