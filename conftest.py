"""Fixtures for every test of the checkout (tests/ and plugins/*/tests)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _one_thread_per_worker():
    """Tests use tiny tensors: on a 2-core machine running 2 pytest workers, extra intra-op threads only add
    contention (a 20-token decode went from 0.15 s to 6 s with 2 threads per worker)."""
    import torch

    torch.set_num_threads(1)
    yield
