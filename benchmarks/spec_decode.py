"""Speculative decoding benchmark: τ, tokens/s and speedup per method, with the physical bound next to it.

Usage:
    python benchmarks/spec_decode.py                  # demo target + every saved draft found under examples/, runs/
    python benchmarks/spec_decode.py --draft runs/eagle3-tiny/final --draft runs/dflash-tiny/final
    python benchmarks/spec_decode.py --random-drafts --oracle          # engine overhead (τ ≈ 1 / τ = γ + 1)
    python benchmarks/spec_decode.py --synthetic 1b --oracle --device cuda --dtype bfloat16   # GPU efficiency

Rows:
* a saved draft: its method's drafter (the method is read from the draft's ``draftsmith`` block);
* ``random:<method>`` (``--random-drafts``): an untrained draft of every installed method — τ ≈ 1, so the row
  shows what drafting + verification cost when nothing is accepted;
* ``oracle`` (``--oracle``): drafts are the target's own greedy continuation (precomputed), so τ = γ + 1 (less
  only in rounds that reach EOS or the length limit, where the oracle has nothing right to propose) and the
  draft costs ~nothing: ``speedup / τ`` then measures the engine's efficiency. Issue 7's aim: on a GPU target
  >= 20× the draft's cost, speedup >= 0.7·τ.

Every row decodes every prompt speculatively and plainly in the same run (greedy unless --temperature), checks
the greedy outputs are identical, and reports ``bound = τ · t_target / (t_verify + t_draft)``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import draftsmith
from draftsmith.decode import SamplingConfig, generate_plain
from draftsmith.decode.evaluate import run_eval
from draftsmith.decode.testing import OracleDrafter
from draftsmith.target import target_heads

REPO = Path(__file__).resolve().parents[1]
FALLBACK_PROMPTS = ["What does `textwrap.dedent` do?", "Write the function `quote` from module `shlex`.",
                    "Explain `heapq.heappush`.", "How is `statistics.median` implemented?"]
SYNTHETIC = {  # random Qwen3 targets for engine-efficiency runs without a checkpoint
    "tiny": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=64, vocab_size=8192),
    "small": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=16,
                  num_key_value_heads=8, head_dim=64, vocab_size=32000),
    "1b": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=20, num_attention_heads=16,
               num_key_value_heads=8, head_dim=128, vocab_size=32000),
}


class PrecomputedOracle(OracleDrafter):
    """The oracle for many prompts: ``start`` looks up the target's greedy continuation of this prompt."""

    def __init__(self, references: dict[tuple[int, ...], list[int]], vocab_size: int) -> None:
        super().__init__(reference=[], vocab_size=vocab_size)
        self.references = references

    def start(self, prompt_ids, features) -> None:
        self.reference = self.references[tuple(prompt_ids.tolist())]
        super().start(prompt_ids, features)


def find_drafts(roots: list[Path]) -> list[Path]:
    found = []
    for root in roots:
        for config in sorted(root.glob("**/config.json")) if root.is_dir() else []:
            try:
                if "draftsmith" in json.loads(config.read_text()):
                    found.append(config.parent)
            except (json.JSONDecodeError, OSError):
                continue
    return found


def load_prompts(args, tokenizer) -> list[list[int]]:
    from draftsmith.decode.prompts import Prompt, encode_prompt, read_prompts

    path = Path(args.prompts) if args.prompts else REPO / "examples/data/prompts-heldout.jsonl"
    if path.is_file():
        prompts = read_prompts(path, args.max_prompts)
    else:
        print(f"# no prompt file at {path}: using {len(FALLBACK_PROMPTS)} built-in prompts", file=sys.stderr)
        prompts = [Prompt(line=i + 1, messages=[{"role": "user", "content": t}])
                   for i, t in enumerate(FALLBACK_PROMPTS)]
    if tokenizer is None:  # synthetic target: random token prompts
        g = torch.Generator().manual_seed(0)
        return [torch.randint(10, 1000, (32,), generator=g).tolist() for _ in range(args.max_prompts or 8)]
    if not getattr(tokenizer, "chat_template", None):
        prompts = [Prompt(line=p.line, text=p.text or p.messages[-1]["content"]) for p in prompts]
    return [encode_prompt(p, tokenizer) for p in prompts]


def load_target_and_tokenizer(args):
    from draftsmith.target import load_target, load_tokenizer

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    if args.synthetic:
        from transformers import AutoModelForCausalLM, Qwen3Config

        config = Qwen3Config(**SYNTHETIC[args.synthetic], tie_word_embeddings=False, eos_token_id=None)
        config.architectures = ["Qwen3ForCausalLM"]
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").to(args.device, dtype)
        return model.eval().requires_grad_(False), None
    target = Path(args.target)
    if not (target / "config.json").is_file():
        sys.exit(f"no target at {target} (build the demo target with scripts/make_tiny_target.py, pass --target, "
                 f"or use --synthetic {{{','.join(SYNTHETIC)}}})")
    return load_target(target, dtype=dtype, device=args.device), load_tokenizer(target)


def rows_to_run(args, model):
    """(name, drafter factory) pairs."""
    heads = target_heads(model)
    rows = []
    drafts = [Path(d) for d in args.draft] or ([] if args.synthetic else
                                              find_drafts([REPO / "examples", REPO / "runs"]))
    for path in drafts:
        block = json.loads((path / "config.json").read_text())["draftsmith"]
        method = draftsmith.get_method(block["method"])
        draft = draftsmith.load_draft(path, dtype=model.dtype, device=args.device)
        rows.append((f"{block['method']}:{path.name if path.name != 'final' else path.parent.name}",
                     lambda d=draft, m=method: m.load_drafter()(d, heads)))
    if args.random_drafts:
        for name in ("eagle1", "eagle3", "dflash", "dspark"):
            try:
                method = draftsmith.get_method(name)
                spec = draftsmith.resolve_draft_spec(name, model.config.architectures)
                options = {"mask_token_id": heads.vocab_size - 1} if name in ("dflash", "dspark") else {}
                torch.manual_seed(0)
                draft = spec.build(model.config, **options).to(args.device, model.dtype).eval()
                drafter_cls = method.load_drafter()
            except Exception as exc:  # a method not installed / not serving this architecture
                print(f"# random:{name} skipped: {exc}", file=sys.stderr)
                continue
            rows.append((f"random:{name}", lambda d=draft, c=drafter_cls: c(d, heads)))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default=str(REPO / "examples/tiny-target"))
    p.add_argument("--synthetic", choices=sorted(SYNTHETIC), help="random Qwen3 target instead of a checkpoint")
    p.add_argument("--draft", action="append", default=[], help="saved draft directory (repeatable)")
    p.add_argument("--prompts", default=None)
    p.add_argument("--max-prompts", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--num-draft-tokens", "-k", type=int, default=None)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--random-drafts", action="store_true")
    p.add_argument("--oracle", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tokenizer = load_target_and_tokenizer(args)
    prompts = load_prompts(args, tokenizer)
    eos = () if tokenizer is None else sorted(set(target_heads(model).eos_token_ids) | (
        {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()))
    sampling = SamplingConfig(temperature=args.temperature)
    rows = rows_to_run(args, model)
    if args.oracle:
        refs = {tuple(ids): ids + generate_plain(model, ids, args.max_new_tokens + 1, eos_token_ids=eos).tokens
                for ids in prompts}
        rows.append(("oracle", lambda: PrecomputedOracle(refs, target_heads(model).vocab_size)))
    if not rows:
        sys.exit("nothing to benchmark: no saved drafts found (pass --draft DIR, --random-drafts or --oracle)")

    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    params = sum(p.numel() for p in model.parameters())
    print(f"# target {args.synthetic or args.target} ({params / 1e6:.1f} M params) on {device_name} {args.dtype}, "
          f"{len(prompts)} prompts × {args.max_new_tokens} new tokens, {sampling.describe()}")
    results = []
    header = f"{'draft':<28} {'γ':>3} {'τ':>6} {'spec tok/s':>11} {'target tok/s':>13} {'speedup':>8} " \
             f"{'bound':>6} {'speedup/τ':>9}  acceptance per position"
    if not args.json:
        print(header)
    for name, make in rows:
        report = run_eval(model, make(), prompts, max_new_tokens=args.max_new_tokens, sampling=sampling,
                          num_draft_tokens=args.num_draft_tokens, eos_token_ids=eos,
                          check_lossless=sampling.greedy)
        info = {"draft": name, **report.to_dict()}
        results.append(info)
        if args.json:
            continue
        acc = " ".join(f"{a:.2f}" for a in info["conditional_acceptance"][:8])
        ok = "" if info["lossless"]["ok"] in (True, None) else "  LOSSLESS CHECK FAILED"
        print(f"{name:<28} {info['num_draft_tokens']:>3} {info['tau']:>6.2f} {info['tokens_per_second']:>11.1f} "
              f"{info['target_tokens_per_second']:>13.1f} {info['speedup']:>7.2f}× {info['speedup_bound']:>5.2f}× "
              f"{info['speedup'] / info['tau']:>9.2f}  {acc}{ok}")
    if args.json:
        print(json.dumps({"target": args.synthetic or args.target, "device": device_name, "dtype": args.dtype,
                          "params": params, "rows": results}, indent=2, default=str))


if __name__ == "__main__":
    main()
