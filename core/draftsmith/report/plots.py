"""The report's figures, built with matplotlib's object API (``Figure``, no pyplot: no global state, no GUI
backend; ``savefig`` renders with Agg).

Each function returns a ``Figure`` or None when its data are absent, so the page can say what it skipped and the
tests can read the plotted values back. Every line of a run plot carries ``gid = "<split>/<metrics.jsonl key>"``
(resume markers: ``"resume/<step>"``); every bar container of an eval plot carries the draft's label, or the
quantity's name, as its label. Non-finite values are drawn as gaps (NaN) — matplotlib would otherwise stretch
an axis to infinity.
"""

from __future__ import annotations

import math
from typing import Sequence

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .series import FAMILY_MEANING, EvalResult, RunData, Series

TRAIN_COLOR, EVAL_COLOR = "C0", "C1"
RUN_FIGSIZE = (7.2, 3.9)
DPI = 100
TAU_KEYS = (("tau_sim", "simulated τ (teacher-forced)"), ("tau_replay", "replayed greedy τ"),
            ("tau_analytic", "analytic τ (Σ Π α)"))


def _finite(values: Sequence[float]) -> list[float]:
    return [v if math.isfinite(v) else math.nan for v in values]


def _highest(values, floor: float) -> float:
    """The largest finite value, at least ``floor`` (axis limits)."""
    return max([floor, *(v for v in values if math.isfinite(v))])


def _figure(figsize=RUN_FIGSIZE) -> Figure:
    return Figure(figsize=figsize, dpi=DPI, layout="constrained")


def _plot(ax, series: Series, label: str, color: str, **kw):
    style = {"marker": "o", "markersize": 3.5} if series.split == "eval" or len(series.steps) <= 20 else {}
    (line,) = ax.plot(series.steps, _finite(series.values), label=label, color=color, **{**style, **kw})
    line.set_gid(f"{series.split}/{series.key}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return line


def _mark_resumes(ax, run: RunData) -> None:
    for i, event in enumerate(run.resumes):
        line = ax.axvline(event["step"], color="0.45", linestyle=":", linewidth=1.2,
                          label="resume" if i == 0 else None)
        line.set_gid(f"resume/{event['step']}")


def _legend(ax, *more_axes) -> None:
    handles, labels = ax.get_legend_handles_labels()
    for other in more_axes:
        h, lab = other.get_legend_handles_labels()
        handles, labels = handles + h, labels + lab
    if handles:
        ax.legend(handles, labels, fontsize=8, loc="best", framealpha=0.85)


def loss_figure(run: RunData) -> Figure | None:
    """Train and eval loss over steps; the learning rate on a secondary axis."""
    train, evals, lr = run.series("train", "loss"), run.series("eval", "loss"), run.series("train", "lr")
    if train is None and evals is None:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    if train is not None:
        _plot(ax, train, "train loss", TRAIN_COLOR)
    if evals is not None:
        _plot(ax, evals, "eval loss", EVAL_COLOR)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    _mark_resumes(ax, run)
    more = []
    if lr is not None:
        ax_lr = ax.twinx()
        _plot(ax_lr, lr, "learning rate", "0.5", linestyle="--", linewidth=1, marker=None)
        ax_lr.set_ylabel("learning rate")
        ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        more.append(ax_lr)
    _legend(ax, *more)
    ax.set_title("loss and learning rate")
    return fig


def throughput_figure(run: RunData) -> Figure | None:
    """Training tokens per second; the share of step time spent in the target forward on a secondary axis."""
    tps, share = run.series("train", "tokens_per_s"), run.series("train", "target_time_share")
    if tps is None:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    _plot(ax, tps, "tokens/s", TRAIN_COLOR)
    ax.set_xlabel("step")
    ax.set_ylabel("supervised tokens / s")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    _mark_resumes(ax, run)
    more = []
    if share is not None:
        ax_share = ax.twinx()
        _plot(ax_share, share, "target time share", "0.5", linestyle="--", linewidth=1, marker=None)
        ax_share.set_ylim(0, 1)
        ax_share.set_ylabel("target forward share of step time")
        more.append(ax_share)
    _legend(ax, *more)
    ax.set_title("training throughput")
    return fig


def acceptance_figure(run: RunData) -> Figure | None:
    """Per-position acceptance over steps: one row per key family, a train and an eval panel, a line per k (the
    same colour for the same k in every panel; one legend below)."""
    by_split = {split: run.acceptance(split) for split in ("train", "eval")}
    families = list(dict.fromkeys([*by_split["train"], *by_split["eval"]]))
    if not families:
        return None
    splits = [s for s in ("train", "eval") if any(by_split[s].get(f) for f in families)]
    all_series = [s for split in by_split.values() for fam in split.values() for s in fam.values()]
    top = max(k for split in by_split.values() for fam in split.values() for k in fam)
    width = RUN_FIGSIZE[0] if len(families) == 1 else 4.6 * len(splits) + 0.6
    fig = _figure((width, 3.3 * len(families) + 0.6))
    axes = fig.subplots(len(families), len(splits), squeeze=False, sharex=True, sharey=True)
    cmap = _cmap()
    ylim = min(1.02, max(0.1, 1.15 * _highest([v for s in all_series for v in s.values], 0.0)))
    legend: dict[str, object] = {}
    for row, family in enumerate(families):
        for col, split in enumerate(splits):
            ax = axes[row][col]
            positions = by_split[split].get(family, {})
            for k, series in positions.items():
                legend.setdefault(f"k={k}", _plot(ax, series, f"k={k}", cmap(0.85 * (k - 1) / max(top - 1, 1))))
            if not positions:
                ax.text(0.5, 0.5, f"no {split} {family}", transform=ax.transAxes, ha="center", va="center",
                        color="0.4")
            _mark_resumes(ax, run)
            ax.set_title(f"{split}: {family}", fontsize=10)
            ax.grid(alpha=0.3)
            ax.set_ylim(0, ylim)
            if col == 0:
                ax.set_ylabel(FAMILY_MEANING.get(family, family).split(" (")[0], fontsize=8)
            if row == len(families) - 1:
                ax.set_xlabel("step")
    labels = sorted(legend, key=lambda label: int(label[2:]))
    handles = [legend[label] for label in labels]
    if run.resumes:
        resume = [line for ax in fig.axes for line in ax.get_lines() if line.get_label() == "resume"][:1]
        handles, labels = handles + resume, labels + ["resume"] * len(resume)
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 9), fontsize=7,
               title="draft position", title_fontsize=7)
    fig.suptitle("acceptance per position k", fontsize=11)
    return fig


def _cmap():
    from matplotlib import colormaps

    return colormaps["viridis"]


def tau_figure(run: RunData) -> Figure | None:
    """τ over steps: simulated τ of train and eval, replayed greedy τ of eval (and DSpark's analytic τ)."""
    found = [(s, meaning) for key, meaning in TAU_KEYS for s in (run.series("train", key), run.series("eval", key))
             if s is not None]
    if not found:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    styles = {"tau_sim": "-", "tau_replay": "--", "tau_analytic": "-."}
    for series, meaning in found:
        color = TRAIN_COLOR if series.split == "train" else EVAL_COLOR
        _plot(ax, series, f"{series.split} {series.key} — {meaning}", color, linestyle=styles[series.key])
    ax.set_xlabel("step")
    ax.set_ylabel("τ (tokens per round)")
    ax.grid(alpha=0.3)
    _mark_resumes(ax, run)
    _legend(ax)
    ax.set_title("acceptance length τ")
    return fig


# -- eval files, side by side ----------------------------------------------------------------------------------
def _draft_colors(evals: Sequence[EvalResult]) -> list[str]:
    return [f"C{i % 10}" for i in range(len(evals))]


def eval_acceptance_figure(evals: Sequence[EvalResult]) -> Figure | None:
    """Conditional acceptance per position: one group per position k, one bar per draft."""
    evals = [e for e in evals if e.conditional_acceptance]
    if not evals:
        return None
    positions = max(len(e.conditional_acceptance) for e in evals)
    fig = _figure((min(12.0, max(RUN_FIGSIZE[0], 1.5 + 0.3 * positions * len(evals))), RUN_FIGSIZE[1]))
    ax = fig.add_subplot()
    width = 0.8 / len(evals)
    for i, (e, color) in enumerate(zip(evals, _draft_colors(evals))):
        xs = [k + 1 + (i - (len(evals) - 1) / 2) * width for k in range(len(e.conditional_acceptance))]
        bars = ax.bar(xs, _finite(e.conditional_acceptance), width=width * 0.95, color=color, label=e.label)
        if positions * len(evals) <= 24:  # values readable on the bars (a 0 bar is otherwise invisible)
            ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks(range(1, positions + 1))
    ax.set_xlabel("draft position k")
    ax.set_ylabel("P(accept k | accepted < k)")
    ax.set_ylim(0, 1.25)  # headroom for the legend above the bars
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", ncol=min(len(evals), 4), framealpha=0.9)
    ax.set_title("conditional acceptance per position (draftsmith eval)")
    return fig


def eval_speed_figure(evals: Sequence[EvalResult]) -> Figure | None:
    """τ and speedup over the target, one bar per draft (the speedup's physical bound as a marker)."""
    if not evals:
        return None
    labels, colors = [e.label for e in evals], _draft_colors(evals)
    fig = _figure((max(RUN_FIGSIZE[0], 2.4 + 1.3 * len(evals)), RUN_FIGSIZE[1]))
    ax_tau, ax_speed = fig.subplots(1, 2)
    xs = list(range(len(evals)))
    bars = ax_tau.bar(xs, _finite([e.tau for e in evals]), color=colors, label="tau")
    ax_tau.bar_label(bars, fmt="%.2f", fontsize=8)
    ax_tau.set_ylabel("τ (tokens per round)")
    ax_tau.set_title("mean acceptance length τ", fontsize=10)
    speedups = [e.speedup if e.speedup is not None else math.nan for e in evals]
    bars = ax_speed.bar(xs, _finite(speedups), color=colors, label="speedup")
    # values inside the bars: the bound's mark sits on top of them
    ax_speed.bar_label(bars, labels=["" if not math.isfinite(s) else f"{s:.2f}×" for s in speedups], fontsize=8,
                       label_type="center", color="white")
    for x, s in zip(xs, speedups):
        if not math.isfinite(s):
            ax_speed.text(x, 0.02, "n/a", ha="center", va="bottom", fontsize=8, color="0.3")
    bounds = [e.speedup_bound if e.speedup_bound is not None else math.nan for e in evals]
    if any(math.isfinite(b) for b in bounds):
        ax_speed.scatter(xs, _finite(bounds), marker="_", s=400, color="k", zorder=3,
                         label="bound τ·t_target/t_round")
        ax_speed.legend(fontsize=7, loc="upper right")
    ax_speed.axhline(1.0, color="0.4", linewidth=0.8, linestyle="--")
    top = _highest(speedups + bounds, 1.0)
    ax_speed.set_ylim(0, 1.3 * top)
    ax_speed.set_ylabel("speedup over target decoding")
    ax_speed.set_title("speedup (tokens/s ÷ target tokens/s)", fontsize=10)
    ax_tau.set_ylim(0, 1.15 * _highest([e.tau for e in evals], 1.0))
    for ax in (ax_tau, ax_speed):
        ax.set_xticks(xs, labels, rotation=15 if len(evals) > 3 else 0, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    return fig
