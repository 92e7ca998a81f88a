"""Probe every (method, target family) pair on a tiny target built from config: does it capture, train and stay
lossless? Prints one row per pair — the facts behind docs/coverage.md and the registrations (issue 16).

For each family of :func:`draftsmith.testing.known_tiny_architectures` and each method:

1. build the tiny target (SDPA, or eager where transformers refuses SDPA for the family);
2. build the method's draft for it — the registered spec, or, for a family the method does not register yet,
   the spec it registers for Qwen3 (registered in-process for the probe only: that is what is being probed);
3. capture the target features the objective asks for and take ``--steps`` optimizer steps on the target's own
   greedy continuations of random prompts (``loss`` first → last);
4. greedy speculative decoding of those prompts must equal the target's greedy output token for token (the
   core invariant); τ is reported.

    python benchmarks/coverage_probe.py [--methods eagle3,dflash] [--archs Gemma3ForCausalLM,...] [--json]

Status per pair: ``ok`` (loss fell, lossless), ``no-learn`` (lossless, loss did not fall), ``LOSSY`` (outputs
differ: a correctness bug), ``error`` (the first line of the exception, and the stage it happened in).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback

import torch

METHODS = ("eagle1", "eagle3", "dflash", "dspark")
DRAFT_OPTIONS = {"dflash": {"mask_token_id": 127, "num_draft_layers": 1, "block_size": 8},
                 "dspark": {"mask_token_id": 127, "num_draft_layers": 1, "block_size": 6, "markov_rank": 16}}
OBJECTIVE_OPTIONS = {"dflash": {"num_anchors": 16}, "dspark": {"num_anchors": 16}, "eagle3": {"ttt_steps": 4},
                     "eagle1": {}}
PROMPT_LEN, NEW_TOKENS = 6, 32


def tiny(arch: str):
    from draftsmith.testing import make_tiny_target, tiny_target_config

    config = tiny_target_config(arch)
    try:
        return make_tiny_target(config, attn_implementation="sdpa", head_scale=4.0), "sdpa"
    except ValueError:  # transformers refuses SDPA for this family (gpt-oss sinks, Gemma 2 soft-capping, ...)
        return make_tiny_target(config, attn_implementation="eager", head_scale=4.0), "eager"


def spec_for(method: str, arch: str):
    import draftsmith

    registry = draftsmith.get_registry()
    if arch in registry.architectures(method):
        return registry.resolve(method, [arch]), True
    base = registry.resolve(method, ["Qwen3ForCausalLM"])
    draftsmith.register_draft(draftsmith.DraftSpec(method=method, architectures=(arch,), draft_cls=base.draft_cls))
    return registry.resolve(method, [arch]), False


def probe(method: str, arch: str, steps: int, model) -> dict:
    import draftsmith
    from draftsmith.decode import DecodeStats, SpeculativeDecoder, generate_plain
    from draftsmith.target import run_target, target_heads

    row = {"method": method, "architecture": arch, "registered": None, "status": "error", "stage": "draft"}
    try:
        spec, row["registered"] = spec_for(method, arch)
        torch.manual_seed(0)
        draft = spec.build(model.config, **DRAFT_OPTIONS.get(method, {})).float().train()
        row["stage"] = "data"
        g = torch.Generator().manual_seed(0)
        prompts = [torch.randint(3, 127, (PROMPT_LEN,), generator=g) for _ in range(4)]
        gens = [generate_plain(model, p, NEW_TOKENS, eos_token_ids=()).tokens for p in prompts]
        seqs = torch.stack([torch.cat([p, torch.tensor(x)]) for p, x in zip(prompts, gens)])  # (B, T)
        loss_mask = torch.zeros_like(seqs)
        loss_mask[:, PROMPT_LEN:] = 1
        batch = {"input_ids": seqs, "attention_mask": torch.ones_like(seqs), "loss_mask": loss_mask}
        row["stage"] = "capture"
        m = draftsmith.get_method(method)
        heads = target_heads(model)
        objective = m.load_objective()(draft, heads, **{**m.default_options, **DRAFT_OPTIONS.get(method, {}),
                                                        **OBJECTIVE_OPTIONS[method]})
        if hasattr(objective, "prepare"):
            objective.prepare(torch.bincount(seqs[loss_mask.bool()], minlength=model.config.vocab_size))
        features, _ = run_target(model, objective.target_request(), seqs, attention_mask=batch["attention_mask"])
        row["stage"] = "train"
        opt = torch.optim.AdamW([p for p in draft.parameters() if p.requires_grad], lr=5e-3)
        losses = []
        for _ in range(steps):
            loss = objective(batch, features).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        row["loss_first"], row["loss_last"] = losses[0], losses[-1]
        row["stage"] = "decode"
        drafter = m.load_drafter()(draft.eval(), heads)
        gamma = OBJECTIVE_OPTIONS["eagle3"]["ttt_steps"] if method == "eagle3" else None
        stats, lossless = DecodeStats(), True
        for prompt, gen in zip(prompts, gens):
            out = SpeculativeDecoder(model, drafter, num_draft_tokens=gamma, eos_token_ids=()).generate(prompt,
                                                                                                      NEW_TOKENS)
            lossless &= out.tokens == gen
            stats.add(out)
        row["tau"] = stats.tau
        row["stage"] = None
        row["status"] = ("LOSSY" if not lossless else "ok" if losses[-1] < losses[0] * 0.99 else "no-learn")
    except Exception as exc:  # noqa: BLE001 - a probe reports every failure, it never stops
        lines = str(exc).strip().splitlines()
        where = traceback.extract_tb(exc.__traceback__)[-1]
        row["error"] = f"{type(exc).__name__}: {lines[0] if lines else ''} ({where.filename.rsplit('/', 1)[-1]}:" \
                       f"{where.lineno})"
    return row


def main(argv=None) -> int:
    from draftsmith.testing import known_tiny_architectures

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--archs", default=None, help="comma-separated architectures (default: every tiny family)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    archs = args.archs.split(",") if args.archs else known_tiny_architectures()
    rows = []
    for arch in archs:
        start = time.perf_counter()
        try:
            model, attn = tiny(arch)
        except Exception as exc:  # noqa: BLE001
            rows += [{"method": m, "architecture": arch, "status": "error", "stage": "target",
                      "error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"} for m in args.methods.split(",")]
            continue
        for method in args.methods.split(","):
            row = probe(method, arch, args.steps, model)
            row["attention"] = attn
            rows.append(row)
            if not args.json:
                tau = f"{row['tau']:.2f}" if "tau" in row else "-"
                loss = f"{row['loss_first']:.2f}→{row['loss_last']:.2f}" if "loss_last" in row else "-"
                print(f"{arch:28s} {method:7s} {row['status']:8s} reg={str(row['registered'])[0]} {attn:5s} "
                      f"loss {loss:12s} τ {tau:5s} {row.get('error', '')[:150]}", flush=True)
        if not args.json:
            print(f"  ({time.perf_counter() - start:.1f} s)", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
