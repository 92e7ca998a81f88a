"""Shared test fixtures. Every test starts and ends with a fresh plugin manager, so in-process registrations
(`draftsmith.register_draft` / `register_method`) never leak between tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def _one_thread_per_worker():
    """Tests use tiny tensors: on a 2-core machine running 2 pytest workers, extra intra-op threads only add
    contention (a 20-token decode went from 0.15 s to 6 s with 2 threads per worker)."""
    import torch

    torch.set_num_threads(1)
    yield


@pytest.fixture(autouse=True)
def _fresh_plugins():
    import draftsmith

    draftsmith.reset_plugins()
    yield
    draftsmith.reset_plugins()


@pytest.fixture
def cli_env():
    """Environment for running the `draftsmith` CLI in a subprocess (no strict mode, no disabled plugins)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRAFTSMITH_")}
    return env


def run_cli(args, env=None, cwd=None, timeout=300):
    import subprocess

    return subprocess.run([sys.executable, "-m", "draftsmith", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=timeout)
