"""The loss-mask audit behind ``draftsmith inspect-data``: a sample with its supervised spans highlighted and
statistics over the whole file, so a template that supervises the prompt (or nothing) is caught before training.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .samples import DataReport, Sample

GREEN, RESET = "\033[1;32m", "\033[0m"
OPEN, CLOSE = "\u27e6", "\u27e7"  # ⟦ supervised ⟧ when colour is off


def spans(mask: np.ndarray) -> list[tuple[int, int, bool]]:
    """Maximal runs of equal mask values as (start, end, supervised)."""
    out, start = [], 0
    for i in range(1, len(mask) + 1):
        if i == len(mask) or mask[i] != mask[start]:
            out.append((start, i, bool(mask[start])))
            start = i
    return out


def render(sample: Sample, tokenizer: Any, *, color: bool) -> str:
    """The sample's text, supervised runs in green (or between ⟦ ⟧)."""
    parts = []
    for start, end, supervised in spans(sample.loss_mask):
        ids = sample.input_ids[start:end].tolist()
        text = tokenizer.decode(ids, skip_special_tokens=False) if tokenizer is not None else " ".join(map(str, ids))
        if supervised:
            text = f"{GREEN}{text}{RESET}" if color else f"{OPEN}{text}{CLOSE}"
        parts.append(text)
    return "".join(parts)


def statistics(samples: Sequence[Sample], report: DataReport) -> dict[str, Any]:
    fractions = np.array([s.loss_mask.mean() for s in samples]) if samples else np.zeros(1)
    lengths = np.array([len(s) for s in samples]) if samples else np.zeros(1)
    runs = [sum(1 for _a, _b, sup in spans(s.loss_mask) if sup) for s in samples]
    return {
        "files": report.read.files,
        "lines": report.read.lines,
        "samples": report.samples,
        "malformed_skipped": report.read.bad_lines,
        "dropped_all_zero_mask": report.dropped_no_supervision,
        "dropped_too_short": report.dropped_too_short,
        "truncated": report.truncated,
        "all_ones_mask_chat_samples": report.all_ones_chat,
        "mask_source": report.mask_mode,
        "tokens": report.tokens,
        "supervised_tokens": report.supervised_tokens,
        "supervised_fraction": report.supervised_tokens / report.tokens if report.tokens else 0.0,
        "per_sample_supervised_fraction": {"min": float(fractions.min()), "median": float(np.median(fractions)),
                                           "max": float(fractions.max())},
        "length": {"min": int(lengths.min()), "median": float(np.median(lengths)), "max": int(lengths.max())},
        "supervised_spans_per_sample": {"min": min(runs, default=0), "max": max(runs, default=0)},
        "warnings": report.warnings(),
    }


def format_statistics(stats: dict[str, Any]) -> str:
    frac = stats["per_sample_supervised_fraction"]
    length = stats["length"]
    lines = [
        f"files {stats['files']}, lines {stats['lines']}, usable samples {stats['samples']}",
        f"dropped: {stats['dropped_all_zero_mask']} all-zero mask, {stats['dropped_too_short']} too short, "
        f"{stats['malformed_skipped']} malformed; truncated {stats['truncated']}",
        f"tokens {stats['tokens']}, supervised {stats['supervised_tokens']} ({stats['supervised_fraction']:.1%}); "
        f"per sample min {frac['min']:.1%} / median {frac['median']:.1%} / max {frac['max']:.1%}",
        f"length min {length['min']} / median {length['median']:.0f} / max {length['max']}; supervised spans per "
        f"sample {stats['supervised_spans_per_sample']['min']}..{stats['supervised_spans_per_sample']['max']}",
    ]
    if stats["mask_source"]:
        lines.append("assistant mask from " + ("{% generation %} tags" if stats["mask_source"] == "generation"
                                               else "prefix re-rendering (no generation tags in the template)"))
    lines += [f"warning: {w}" for w in stats["warnings"]]
    return "\n".join(lines)
