"""``draftsmith report``: one HTML page with the plots of a training run and, side by side, the eval results of
several drafts.

:func:`build_report` reads the run (:mod:`.series`, torch-free), draws the figures (:mod:`.plots`, matplotlib —
imported only here, so the rest of draftsmith never needs it) and writes ``index.html`` (:mod:`.page`, images
embedded as data URIs) plus the PNG files beside it. Torch is never imported.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

from ..errors import ConfigError
from .series import EvalResult, RunData, read_evals, read_run

__all__ = ["build_report", "read_run", "read_evals", "RunData", "EvalResult", "INSTALL_HINT", "PLOT_FILES"]

INSTALL_HINT = "pip install 'draftsmith[report]' (or pip install matplotlib)"
# every PNG the report may write; a file of a plot skipped this time is removed so the folder matches the page
PLOT_FILES = ("loss.png", "throughput.png", "acceptance.png", "tau.png", "eval_acceptance.png", "eval_speed.png")


def require_matplotlib():
    try:
        import matplotlib
        import matplotlib.figure
    except ImportError as exc:
        raise ConfigError(f"draftsmith report needs matplotlib ({exc}): {INSTALL_HINT}") from None
    return matplotlib


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")  # a bare Figure renders with the Agg canvas
    return buf.getvalue()


def make_plots(run: RunData, evals: Sequence[EvalResult]):
    """The page's plots in order, each with its PNG or the reason it is absent."""
    from . import plots as P
    from .page import Plot

    has_resumes = " Dotted vertical lines: resumes from a checkpoint." if run.resumes else ""
    wanted = [
        ("loss.png", "Loss and learning rate", P.loss_figure, (run,),
         "Training loss at every logged step and held-out loss at every evaluation; the learning-rate schedule "
         "(warmup, cosine decay) on the right axis." + has_resumes, "no loss in metrics.jsonl"),
        ("tau.png", "Acceptance length τ", P.tau_figure, (run,),
         "τ = tokens committed per speculative round (1 + accepted drafts). tau_sim: simulated from the "
         "teacher-forced per-position accuracy (train and eval); tau_replay: greedy speculative decoding replayed "
         "on the held-out sequences (eval; exact when they are the target's own greedy output)." + has_resumes,
         "no tau_sim / tau_replay in metrics.jsonl"),
        ("acceptance.png", "Acceptance per position", P.acceptance_figure, (run,),
         "One line per draft position k (1 = the first drafted token), train and eval. EAGLE acc_k counts TTT "
         "steps from 0 and DFlash/DSpark acc_k drafted slots from 0, both shown here as k + 1; DSpark's "
         "accept_rate@k (mean α at slot k) is already 1-based. Later positions falling off is normal: "
         "position k only counts when the draft got k - 1 right." + has_resumes,
         "no per-position keys (acc_k, accept_rate@k, acc@k) in metrics.jsonl"),
        ("throughput.png", "Training throughput", P.throughput_figure, (run,),
         "Supervised tokens per second of the training step; dashed: the share of step time spent in the target "
         "forward that produces the features (online training)." + has_resumes,
         "no tokens_per_s in metrics.jsonl"),
        ("eval_acceptance.png", "Conditional acceptance per position, by draft", P.eval_acceptance_figure, (evals,),
         ("From draftsmith eval: P(the draft at position k is accepted | positions < k were), one group per "
          "position, one bar per draft (the labels of the eval table)."),
         "no --eval files" if not evals else "no conditional acceptance in the eval files"),
        ("eval_speed.png", "τ and speedup, by draft", P.eval_speed_figure, (evals,),
         ("From draftsmith eval: mean acceptance length τ, and measured speedup = speculative tokens/s ÷ plain "
          "target tokens/s on the same prompts (black mark: the physical bound τ · t_target / t_round; dashed "
          "line: no speedup)."), "no --eval files"),
    ]
    out = []
    for file, title, make, args, caption, absent in wanted:
        fig = make(*args)
        plot = Plot(file, title, caption, wide=fig is not None and fig.get_figwidth() > 1.3 * P.RUN_FIGSIZE[0])
        if fig is None:
            plot.reason = absent
        else:
            plot.png = _png(fig)
        out.append(plot)
    return out


def build_report(run_dir: str | Path, evals: Sequence[str | Path] = (), out: str | Path | None = None) -> Path:
    """Write ``<out>/index.html`` (default ``<run_dir>/report``) and the PNGs beside it; returns the page's path.

    Bad input raises :class:`~draftsmith.errors.DraftsmithError` (one line): a missing run directory or
    ``metrics.jsonl``, a malformed metrics line (``file:line``), a malformed eval file, no matplotlib.
    """
    run = read_run(run_dir)
    results = read_evals(list(evals))
    require_matplotlib()
    out_dir = Path(out) if out is not None else Path(run_dir) / "report"
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {str(out_dir)!r} exists and is not a directory")
    plots = make_plots(run, results)
    from .. import __version__
    from .page import render

    out_dir.mkdir(parents=True, exist_ok=True)
    for plot in plots:
        path = out_dir / plot.file
        if plot.png is not None:
            path.write_bytes(plot.png)
        elif path.is_file():
            path.unlink()
    index = out_dir / "index.html"
    tmp = out_dir / ".index.html.tmp"
    tmp.write_text(render(run, results, plots, __version__), encoding="utf-8")
    tmp.replace(index)
    return index
