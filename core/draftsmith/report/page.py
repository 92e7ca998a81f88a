"""The report's HTML page: one self-contained file (inline CSS, the plots as base64 ``data:`` URIs) so it can be
mailed or attached to an issue as is. Every piece of text from the inputs goes through ``html.escape``.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import math
from typing import Any, Sequence

from .series import EvalResult, RunData, as_number, position_key

# Shown first in the final-metrics table, in this order; other numeric keys follow alphabetically.
HEADLINE_KEYS = ("loss", "accuracy", "tau_sim", "tau_replay", "tau_analytic", "accept_len", "accept_rate",
                 "lr", "grad_norm", "tokens_per_s", "supervised_tokens", "target_time_share", "tokens",
                 "replay_rounds", "replay_sequences", "replay_truncated", "epoch")
SUMMARY_KEYS = ("method", "target.path", "data.train", "data.eval", "data.seq_len", "data.packing",
                "data.max_samples", "train.max_steps", "train.batch_size", "train.grad_accum", "train.lr",
                "train.warmup_ratio", "train.min_lr_ratio", "train.precision", "train.offline_features",
                "train.init_from", "train.resume", "distributed.strategy")
SECTIONS_IN_FULL = ("draft", "method_options")  # every key of these goes to the summary

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 1240px;
       color: #222; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd;
       padding-bottom: 4px; }
.sub { color: #555; margin-top: 0; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.cols { display: flex; gap: 28px; flex-wrap: wrap; align-items: flex-start; }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(540px, 1fr)); gap: 18px; }
figure { margin: 0; border: 1px solid #e4e4e4; border-radius: 4px; padding: 8px; background: #fff; }
figure.wide { grid-column: 1 / -1; }
figure img { max-width: 100%; height: auto; display: block; margin: 0 auto; }
figcaption { font-size: 12.5px; color: #444; margin-top: 6px; }
.note { background: #fff8e1; border-left: 3px solid #f0b400; padding: 4px 10px; font-size: 13px; margin: 4px 0; }
.skipped { color: #666; font-size: 13px; }
.bad { color: #b00020; font-weight: 600; } .good { color: #1b7a1b; }
details pre { font-size: 12px; background: #f8f8f8; padding: 8px; overflow-x: auto; }
code { font-size: 12.5px; }
"""


@dataclasses.dataclass
class Plot:
    """One image of the page: its file, title and caption; ``png`` None when skipped (``reason`` says why)."""

    file: str
    title: str
    caption: str
    png: bytes | None = None
    reason: str = ""
    wide: bool = False


def fmt(value: Any) -> str:
    number = as_number(value)
    if number is None:
        return "" if value is None else str(value)
    if not math.isfinite(number):
        return str(number)
    if isinstance(value, int) or (number.is_integer() and abs(number) >= 10):
        return f"{int(number):,}"
    if abs(number) >= 1000:
        return f"{number:,.0f}"
    if 0 < abs(number) < 1e-3:
        return f"{number:.3e}"
    return f"{number:.4g}"


def _e(value: Any) -> str:
    return html.escape(str(value))


def _config_value(config: dict | None, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return dataclasses.MISSING
        node = node[part]
    return node


def config_summary(config: dict | None) -> list[tuple[str, Any]]:
    if not config:
        return []
    rows = []
    for key in SUMMARY_KEYS:
        value = _config_value(config, key)
        if value is not dataclasses.MISSING and value not in (None, [], {}):
            rows.append((key, value))
    for section in SECTIONS_IN_FULL:
        for key, value in (config.get(section) or {}).items():
            rows.append((f"{section}.{key}", value))
    return rows


def _short(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def final_metric_rows(run: RunData) -> list[tuple[str, str, str]]:
    """(metric, final train value, final eval value); a per-position family is one row of its values by k."""
    finals = {split: run.final(split) or {} for split in ("train", "eval")}
    keys = list(dict.fromkeys(k for split in ("train", "eval") for k in run.keys(split)))
    plain = [k for k in keys if position_key(k) is None]
    ordered = [k for k in HEADLINE_KEYS if k in plain] + sorted(k for k in plain if k not in HEADLINE_KEYS)
    rows = [(k, fmt(finals["train"].get(k)), fmt(finals["eval"].get(k))) for k in ordered]
    families: dict[str, dict[int, str]] = {}
    for k in keys:
        family, pos = position_key(k) or (None, 0)
        if family:
            families.setdefault(family, {})[pos] = k
    for family, by_pos in families.items():
        pos = sorted(by_pos)
        cells = [" · ".join(fmt(finals[s].get(by_pos[p])) or "–" for p in pos) if any(
            by_pos[p] in finals[s] for p in pos) else "" for s in ("train", "eval")]
        rows.append((f"{family} (k = {pos[0]}…{pos[-1]})", *cells))
    return rows


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[int] = ()) -> str:
    """An HTML table; ``numeric`` columns are right-aligned. Cells come escaped (some carry markup)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(f'<td class="num">{cell}</td>' if i in numeric else f"<td>{cell}</td>"
                        for i, cell in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _lossless_cell(text: str) -> str:
    cls = {"passed": "good", "FAILED": "bad"}.get(text, "")
    return f'<span class="{cls}">{_e(text)}</span>' if cls else _e(text)


def _times(x: float | None) -> str:
    return f"{x:.2f}×" if x is not None and math.isfinite(x) else "n/a"


def eval_rows(evals: Sequence[EvalResult]) -> list[list[str]]:
    rows = []
    for e in evals:
        speed, bound = _times(e.speedup), _times(e.speedup_bound)
        setting = f"{fmt(e.prompts)} prompts × {fmt(e.max_new_tokens)} tokens, {e.sampling}, " \
                  f"{fmt(e.num_draft_tokens)} drafts/round"
        rows.append([f"<b>{_e(e.label)}</b>", _e(e.method or "?"), _e(fmt(e.tau)), _e(fmt(e.acceptance_rate)),
                     _e(" · ".join(f"{a:.2f}" for a in e.conditional_acceptance)), _e(speed), _e(bound),
                     _e(fmt(e.tokens_per_second)), _e(fmt(e.target_tokens_per_second)), _lossless_cell(e.lossless),
                     f"<code>{_e(e.draft or '?')}</code><br>{_e(setting)}<br><code>{_e(e.path)}</code>"])
    return rows


def _figure_html(plot: Plot) -> str:
    data = base64.b64encode(plot.png).decode("ascii")
    cls = ' class="wide"' if plot.wide else ""
    return (f'<figure{cls} id="{_e(plot.file)}"><img src="data:image/png;base64,{data}" alt="{_e(plot.title)}">'
            f"<figcaption><b>{_e(plot.title)}.</b> {_e(plot.caption)} <code>{_e(plot.file)}</code></figcaption>"
            f"</figure>")


def _plots_html(plots: Sequence[Plot]) -> str:
    shown = sorted((p for p in plots if p.png is not None), key=lambda p: p.wide)  # wide ones below: no holes
    skipped = [p for p in plots if p.png is None]
    out = f'<div class="plots">{"".join(_figure_html(p) for p in shown)}</div>' if shown else ""
    if skipped:
        out += '<p class="skipped">Not plotted: ' + "; ".join(
            f"{_e(p.title)} ({_e(p.reason)})" for p in skipped) + ".</p>"
    return out


def render(run: RunData, evals: Sequence[EvalResult], plots: Sequence[Plot], version: str) -> str:
    method, target = run.method or "?", run.target or "?"
    last, max_steps = run.last_step, run.max_steps
    steps = f"{fmt(last)}" + (f" of {fmt(max_steps)}" if max_steps else "")
    if max_steps and last is not None and last < max_steps:
        steps += " (not finished: stopped early or still running)"
    counts = ", ".join(f"{len(run.split(s))} {s}" for s in run.records)
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>draftsmith report — {_e(run.run_dir.name or run.run_dir)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>draftsmith report: {_e(method)} draft of <code>{_e(target)}</code></h1>",
        f'<p class="sub">run <code>{_e(run.run_dir)}</code> · steps {_e(steps)} · records: {_e(counts)}'
        + (f" · {len(run.resumes)} resume(s) at step {_e(', '.join(str(r['step']) for r in run.resumes))}"
           if run.resumes else "") + f" · draftsmith {_e(version)}</p>",
    ]
    parts += [f'<p class="note">{_e(n)}</p>' for n in run.notes]
    summary = config_summary(run.config)
    final_rows = [[_e(m), _e(t), _e(v)] for m, t, v in final_metric_rows(run)]
    train_final, eval_final = run.final("train"), run.final("eval")
    parts.append('<div class="cols"><div>')
    parts.append("<h2>Final metrics</h2>")
    parts.append(_table(["metric", f"train (step {train_final['step']})" if train_final else "train (none)",
                         f"eval (step {eval_final['step']})" if eval_final else "eval (none)"], final_rows, numeric=(1, 2)))
    if eval_final is None:
        parts.append('<p class="skipped">No eval records: the run had no eval split or stopped before its first '
                     "evaluation (train.eval_every).</p>")
    parts.append("</div><div>")
    parts.append("<h2>Config</h2>")
    if summary:
        parts.append(_table(["key", "value"], [[_e(k), _e(_short(v))] for k, v in summary]))
    else:
        parts.append('<p class="skipped">No config.yaml in the run directory.</p>')
    if run.config_text:
        parts.append(f"<details><summary>full config.yaml</summary><pre>{_e(run.config_text)}</pre></details>")
    parts.append("</div></div>")
    run_plots = [p for p in plots if not p.file.startswith("eval_")]
    eval_plots = [p for p in plots if p.file.startswith("eval_")]
    parts.append("<h2>Evaluations (draftsmith eval)</h2>")
    if evals:
        parts.append(_table(["draft", "method", "τ", "acceptance rate", "acceptance per position k = 1, 2, …",
                             "speedup", "bound", "tok/s", "target tok/s", "lossless", "draft path · setting · file"],
                            eval_rows(evals), numeric=(2, 3, 4, 5, 6, 7, 8)))
        parts.append(_plots_html(eval_plots))
    else:
        parts.append('<p class="skipped">No eval files: compare drafts with <code>draftsmith report RUN_DIR --eval '
                     "A.json --eval B.json</code>, each the output of <code>draftsmith eval --json</code>.</p>")
    parts.append("<h2>Training curves</h2>")
    parts.append(_plots_html(run_plots))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
