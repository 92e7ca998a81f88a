"""Median wall time of `draftsmith list-drafts --json` next to a bare `python -c pass`.

Usage: python benchmarks/cli_startup.py [--runs N]
Target (issue 2): within 0.25 s of the bare interpreter; and no torch/transformers import.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def median_time(cmd: list[str], runs: int) -> float:
    subprocess.run(cmd, capture_output=True, check=True)  # warm the filesystem cache
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    bare = median_time([sys.executable, "-c", "pass"], args.runs)
    cli = median_time([sys.executable, "-m", "draftsmith", "list-drafts", "--json"], args.runs)
    imported = subprocess.run(
        [sys.executable, "-c", "import sys; from draftsmith.cli import run_command; import io, contextlib; "
         "f = io.StringIO();\nwith contextlib.redirect_stdout(f): run_command(['list-drafts', '--json'])\n"
         "print(','.join(m for m in ('torch', 'transformers') if m in sys.modules) or 'none')"],
        capture_output=True, text=True).stdout.strip()
    print(f"runs {args.runs}")
    print(f"python -c pass median {bare:.3f}s")
    print(f"draftsmith list-drafts --json median {cli:.3f}s")
    print(f"heavy modules imported: {imported}")
    print(f"cli_startup overhead {cli - bare:.3f}s (target <= 0.250s)")


if __name__ == "__main__":
    main()
