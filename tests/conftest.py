"""Shared test fixtures. Every test starts and ends with a fresh plugin manager, so in-process registrations
(`draftsmith.register_draft` / `register_method`) never leak between tests. Shared helpers (not fixtures) live in
the ``support`` package beside this file; the one-thread fixture in the checkout's root conftest.py."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _fresh_plugins():
    import draftsmith

    draftsmith.reset_plugins()
    yield
    draftsmith.reset_plugins()


@pytest.fixture
def cli_env():
    """Environment for running the `draftsmith` CLI in a subprocess (no strict mode, no disabled plugins)."""
    from support.cli import clean_env

    return clean_env()


@pytest.fixture
def toy():
    """The toy training method (support.train) registered in this test's fresh plugin manager."""
    from support.train import register_toy

    register_toy()
