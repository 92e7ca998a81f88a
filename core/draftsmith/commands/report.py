"""`draftsmith report`: an HTML page with the plots of a training run, and eval results of drafts side by side."""

from __future__ import annotations

HELP = "HTML report of a training run (loss, lr, τ, acceptance per position, tokens/s) and of eval results"
DESCRIPTION = """Write a self-contained HTML page (plots embedded, PNG files beside it) of a `draftsmith train`
output directory: loss and learning rate, tokens/s, acceptance per position over steps (train and eval), τ
over steps (tau_sim, tau_replay), the final metrics and the run's config; resumes are marked.

  draftsmith report runs/e3
  draftsmith report runs/e3 --eval e3.json --eval dspark.json --out reports/compare

--eval takes the JSON printed by `draftsmith eval --json ... > FILE.json` (repeatable): the page then shows an
eval table (τ, acceptance rate, speedup, tok/s, lossless) and plots the drafts side by side (acceptance per
position, τ and speedup). Needs matplotlib: pip install 'draftsmith[report]'."""


def add_arguments(parser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a `draftsmith train` output directory (metrics.jsonl, "
                                                           "config.yaml)")
    parser.add_argument("--eval", action="append", default=[], metavar="EVAL.json", dest="evals",
                        help="output of `draftsmith eval --json` for a draft to compare (repeatable)")
    parser.add_argument("--out", default=None, metavar="DIR", help="where to write index.html and the PNGs "
                                                                   "(default RUN_DIR/report)")


def run(args) -> int:
    from draftsmith.report import PLOT_FILES, build_report

    index = build_report(args.run_dir, evals=args.evals, out=args.out)
    images = [name for name in PLOT_FILES if (index.parent / name).is_file()]
    print(f"{index} ({len(images)} plots: {', '.join(images)})")
    return 0
