"""End-to-end training throughput: target feature capture + draft step, online and offline.

Usage:
  python benchmarks/train_throughput.py --method eagle3 --target examples/tiny-target [--data chats.jsonl]
      [--config examples/configs/eagle3-tiny.yaml] [--set draft.x=y ...] [--steps 10] [--batch-size 4]
      [--seq-len 512] [--device cuda] [--modes online,offline]

Builds everything exactly as ``draftsmith train`` does (same config schema, setup, data, objective), then times
``--steps`` optimizer steps after ``--warmup`` untimed ones. Per mode it prints the training tokens/s (all
non-pad tokens through target capture + draft forward/backward + AdamW) and the share of the step spent getting
target features (the target forward online; reading and moving cached features offline) versus the draft.
Offline mode first runs ``prepare-features`` into a temporary directory and reports its time and bytes/sample.
Each mode's line ends with the process's peak memory (``peak_rss_mb``; ``peak_cuda_mb``, the allocator's peak
for that mode, on GPU). Without ``--data``, synthetic pre-tokenised samples (random tokens, the last 3/4 supervised) are used. GPU when
available (bf16 target, bf16 autocast), else CPU fp32.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "core"))


def synthetic_data(path: Path, vocab: int, num: int, seq_len: int, seed: int = 0) -> Path:
    g = torch.Generator().manual_seed(seed)
    with open(path, "w") as fh:
        for _ in range(num):
            ids = torch.randint(4, vocab, (seq_len,), generator=g).tolist()
            mask = [0] * (seq_len // 4) + [1] * (seq_len - seq_len // 4)
            fh.write(json.dumps({"input_ids": ids, "loss_mask": mask}) + "\n")
    return path


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_mode(config, device: torch.device, steps: int, warmup: int) -> dict:
    from draftsmith.data.dataset import RowDataset, collate
    from draftsmith.data.packing import single_rows
    from draftsmith.train.distributed import DistInfo, ObjectiveModule
    from draftsmith.train.features import OfflineFeatures, OnlineFeatures, move_batch
    from draftsmith.train.setup import build_setup

    setup = build_setup(config, DistInfo(), device)
    data = setup.data
    keys = list(setup.request.layer_ids) + (["final"] if setup.request.final_hidden else [])
    if setup.cache is not None:
        rows = [[data.train_index[i]] for i in range(len(data.train))]
        dataset = RowDataset(data.cache_train.samples(), rows, cache=data.cache_train, feature_keys=keys)
        source = OfflineFeatures(setup.request, device, setup.target_dtype)
    else:
        dataset = RowDataset(data.train, single_rows(range(len(data.train))))
        source = OnlineFeatures(setup.target, setup.request)
    if hasattr(setup.objective, "prepare"):
        from draftsmith.data.samples import token_counts

        setup.objective.prepare(torch.from_numpy(token_counts(data.train, int(setup.heads.vocab_size))).to(device))
    module = ObjectiveModule(setup.draft, setup.objective)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.train.lr)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else torch.autocast("cpu", enabled=False))
    bs = config.train.batch_size
    feature_s = total_s = 0.0
    tokens = 0
    for step in range(warmup + steps):
        idx = [(step * bs + j) % len(dataset) for j in range(bs)]
        sync(device)
        t0 = time.perf_counter()
        raw = collate([dataset[i] for i in idx], setup.heads.pad_token_id or 0)  # reading the cache: feature time
        batch = move_batch(raw, device)
        feats = source(raw if setup.cache is not None else batch)
        sync(device)
        t1 = time.perf_counter()
        with autocast:
            out = module(batch, feats)
        out.loss.float().backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        t2 = time.perf_counter()
        if step >= warmup:
            feature_s += t1 - t0
            total_s += t2 - t0
            tokens += int(batch["attention_mask"].sum())
    return {"tokens_per_s": tokens / total_s, "step_s": total_s / steps, "feature_share": feature_s / total_s,
            "draft_share": 1 - feature_s / total_s, **peak_memory(device)}


def peak_memory(device: torch.device) -> dict:
    """This process's peak memory so far: resident set (MiB) and, on CUDA, the allocator's peak (MiB)."""
    import resource

    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # Linux reports KiB
    if device.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--data", help="JSONL training data (default: synthetic pre-tokenised samples)")
    parser.add_argument("--config", help="a draftsmith train YAML (draft / method options)")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--modes", default="online,offline")
    parser.add_argument("--feature-dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import dataclasses

    from draftsmith.train.config import load_config
    from draftsmith.train.distributed import DistInfo, resolve_device
    from draftsmith.train.prepare import prepare_features

    device = resolve_device(args.device, DistInfo())
    tmp = Path(tempfile.mkdtemp(prefix="draftsmith-throughput-"))
    data = args.data
    if data is None:
        vocab = json.loads((Path(args.target) / "config.json").read_text()).get("vocab_size", 1000)
        data = str(synthetic_data(tmp / "synthetic.jsonl", vocab, args.num_samples, args.seq_len))
    base = {"method": args.method, "target.path": args.target, "data.train": [data], "data.seq_len": args.seq_len,
            "data.eval_fraction": 0.0, "train.batch_size": args.batch_size, "train.output_dir": str(tmp / "run"),
            "train.device": args.device}
    config = load_config(args.config, args.overrides, base=base)
    print(f"device {device}, method {args.method}, target {args.target}, batch {args.batch_size} x "
          f"seq<={args.seq_len}, {args.steps} timed steps after {args.warmup} warm-up")
    for mode in args.modes.split(","):
        run_config = config
        if mode == "offline":
            out = tmp / "features"
            t0 = time.perf_counter()
            manifest = prepare_features(config, out, dtype=args.feature_dtype, log=lambda s: None)
            print(f"prepare-features: {time.perf_counter() - t0:.2f}s, {manifest['bytes_per_sample'] / 1024:.1f} "
                  f"KiB/sample ({args.feature_dtype})")
            run_config = dataclasses.replace(config, train=dataclasses.replace(config.train,
                                                                               offline_features=str(out)))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        r = time_mode(run_config, device, args.steps, args.warmup)
        cuda = f"  peak_cuda_mb {r['peak_cuda_mb']:.0f}" if "peak_cuda_mb" in r else ""
        print(f"{mode:>8}: {r['tokens_per_s']:10.0f} tokens/s  step {r['step_s'] * 1000:8.1f} ms  "
              f"target/features {r['feature_share']:6.1%}  draft {r['draft_share']:6.1%}  "
              f"peak_rss_mb {r['peak_rss_mb']:.0f}{cuda}")


if __name__ == "__main__":
    main()
