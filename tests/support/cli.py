"""Subprocesses of the tests: environments, the ``draftsmith`` CLI, a free local port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from support import REPO


def clean_env() -> dict:
    """This environment without any ``DRAFTSMITH_*`` setting (no strict mode, no disabled plugins)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("DRAFTSMITH_")}


def subprocess_env() -> dict:
    """Environment for CLI subprocesses: this checkout first on the path, one thread per process."""
    env = clean_env()
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "core"), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def run_cli(args, env=None, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    """``python -m draftsmith <args>`` in a subprocess, output captured as text."""
    return subprocess.run([sys.executable, "-m", "draftsmith", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
