"""Probe a (method, target family) pair on a tiny target built from config: capture, train, lossless.

What backs a registration (docs/coverage.md, ``benchmarks/coverage_probe.py``, tests/test_coverage_matrix.py):

1. the tiny target of the family (:func:`draftsmith.testing.tiny_target_config`), SDPA or, where transformers
   refuses SDPA for the family, eager;
2. the method's draft for it — the registered spec, or, for a family the method does not register, the spec it
   registers for Qwen3 (registered in-process: that is what is probed);
3. the target features the objective asks for, captured with forward hooks, and ``steps`` optimizer steps on the
   target's own greedy continuations of random prompts (loss first → last);
4. greedy speculative decoding of those prompts equal to the target's greedy output, token for token;
5. (``exports=True``) every format the method writes: the export passes ``check-export`` as its engine reads it,
   against the target saved to disk (capturable ids, mask token, the target's embedding), and reads back
   (``draftsmith.load_draft``) as a draft that drafts exactly what the trained one drafts on the first prompt.
   Per format (``row["exports"]``): ``ok``, ``refused`` (the writer refuses this family, with its reason — e.g. a
   layout that rotates the whole head for a partial-rotary target), or ``problem`` (check-export's lines, or a
   read-back that drafts differently: a bug).

Status: ``ok`` (loss fell by 1 % or more, lossless, and no export ``problem``), ``no-learn`` (lossless, loss flat),
``LOSSY`` (a correctness bug), ``EXPORT`` (an export problem), ``error`` (the first line of the exception and the
stage it happened in).
"""

from __future__ import annotations

import inspect
import tempfile
import traceback
from pathlib import Path

import torch

PROMPT_LEN, NEW_TOKENS = 6, 32


def tiny_family_target(arch: str):
    """``(model, attention implementation)``: the frozen tiny target of ``arch`` with a sharpened head."""
    from draftsmith.testing import make_tiny_target, tiny_target_config

    from draftsmith.conventions import output_logit_transform

    config = tiny_target_config(arch, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    # as sharp after the family's own logit scale (Granite: ÷ logits_scaling) as every other tiny target
    head_scale = 4.0 / output_logit_transform(config)[0]
    # SDPA, or eager where transformers refuses SDPA for the family (gpt-oss sinks, Gemma 2 soft-capping)
    model = make_tiny_target(config, attn_implementation="auto", head_scale=head_scale)
    return model, model.config._attn_implementation


def spec_for(method: str, arch: str):
    """``(spec, registered)``: the registered spec of (method, arch), else Qwen3's spec registered for ``arch``
    in this process."""
    import draftsmith

    registry = draftsmith.get_registry()
    if arch in registry.architectures(method):
        return registry.resolve(method, [arch]), True
    base = registry.resolve(method, ["Qwen3ForCausalLM"])
    draftsmith.register_draft(draftsmith.DraftSpec(method=method, architectures=(arch,), draft_cls=base.draft_cls))
    return registry.resolve(method, [arch]), False


def probe(method: str, arch: str, model, *, draft_options: dict | None = None, objective_options: dict | None = None,
          steps: int = 30, exports: bool = True) -> dict:
    """One row of the coverage matrix for ``model`` (see the module docstring); never raises."""
    import draftsmith
    from draftsmith.decode import DecodeStats, SpeculativeDecoder, generate_plain
    from draftsmith.target import run_target, target_heads

    row = {"method": method, "architecture": arch, "registered": None, "status": "error", "stage": "draft"}
    try:
        spec, row["registered"] = spec_for(method, arch)
        torch.manual_seed(0)
        draft = spec.build(model.config, **(draft_options or {})).float().train()
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
        # the run config's routing: draft options the objective also reads (DFlash's block_size) reach it
        objective = m.load_objective()(draft, heads, **m.route_options(draft_options, objective_options)[1])
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
        gamma = (objective_options or {}).get("ttt_steps")  # a chain no deeper than the TTT unroll trained
        stats, lossless, runs = DecodeStats(), True, []
        for prompt, gen in zip(prompts, gens):
            out = SpeculativeDecoder(model, drafter, num_draft_tokens=gamma, eos_token_ids=()).generate(prompt,
                                                                                                      NEW_TOKENS)
            lossless &= out.tokens == gen
            stats.add(out)
            runs.append(out)
        row["tau"] = stats.tau
        status = "LOSSY" if not lossless else "ok" if losses[-1] < losses[0] * 0.99 else "no-learn"
        if exports:
            row["stage"] = "export"
            row["exports"] = export_checks(method, draft, model, heads, prompts[0], runs[0], gamma)
            if status == "ok" and any(v.startswith("problem") for v in row["exports"].values()):
                status = "EXPORT"
        row["stage"] = None
        row["status"] = status
    except Exception as exc:  # noqa: BLE001 - a probe reports every failure, it never stops
        lines = str(exc).strip().splitlines()
        where = traceback.extract_tb(exc.__traceback__)[-1]
        row["error"] = f"{type(exc).__name__}: {lines[0] if lines else ''} ({where.filename.rsplit('/', 1)[-1]}:" \
                       f"{where.lineno})"
    return row


def writer_options(writer, target_dir) -> dict:
    """The keyword options to call a format writer with: ``target`` for the formats that name their verifier
    (speculators), nothing for the others (whose writers refuse unknown options)."""
    return {"target": str(target_dir)} if "target" in inspect.signature(writer).parameters else {}


def _rounds(out) -> list[tuple[int, int]]:
    return [(r.drafted, r.accepted) for r in out.rounds]


def export_checks(method: str, draft, model, heads, prompt: torch.Tensor, reference, gamma) -> dict[str, str]:
    """Per format ``method`` writes: ``ok`` / ``refused: why`` / ``problem: what`` (see the module docstring).
    ``reference`` is the trained draft's decode of ``prompt``; the read-back draft must draft the same rounds."""
    import draftsmith
    from draftsmith.decode import SpeculativeDecoder
    from draftsmith.errors import ConfigError
    from draftsmith.export_check import FORMAT_ENGINE, check_export

    m = draftsmith.get_method(method)
    results: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="draftsmith-coverage-") as tmp:
        target_dir = Path(tmp) / "target"
        model.save_pretrained(target_dir)
        # what `draftsmith train` records of a target loaded from a directory (layouts without the target's
        # embedding / head read them back from there)
        block = getattr(draft.config, "draftsmith", None)
        if isinstance(block, dict) and not block.get("target_name_or_path"):
            draft.config.draftsmith = {**block, "target_name_or_path": str(target_dir)}
        for name, fmt in sorted(draftsmith.get_registry().formats(method).items()):
            if fmt.writer is None:
                continue
            out = Path(tmp) / name
            try:
                writer = fmt.load_writer()
                writer(draft, out, **writer_options(writer, target_dir))
            except ConfigError as exc:  # the writer refuses this family, and says why
                results[name] = f"refused: {str(exc).splitlines()[0]}"
                continue
            # draftsmith's own layout is read by draftsmith only: read back, not judged by an engine's rules
            problems = [] if name == "native" else \
                check_export(out, engine=FORMAT_ENGINE.get(name), target=str(target_dir))[1]
            if problems:
                results[name] = "problem: " + "; ".join(problems)
                continue
            again = draftsmith.load_draft(out).float().eval()
            replay = SpeculativeDecoder(model, m.load_drafter()(again, heads), num_draft_tokens=gamma,
                                        eos_token_ids=()).generate(prompt, NEW_TOKENS)
            if replay.tokens != reference.tokens or _rounds(replay) != _rounds(reference):
                results[name] = "problem: the draft read back from the export drafts differently"
            else:
                results[name] = "ok"
    return results
