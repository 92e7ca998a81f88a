"""Tiny targets and DFlash drafts for the plugin's tests (fp32, CPU, seeded, nothing downloaded)."""

from __future__ import annotations

import types

import pytest
import torch

from draftsmith.testing import make_batch as _make_batch, make_tiny_target, scramble, tiny_target_config

MASK_ID = 127


def target_config(arch: str = "Qwen3ForCausalLM", num_layers: int = 4, **kw):
    return tiny_target_config(arch, num_layers, **kw)


def make_target(config, seed: int = 0):
    return make_tiny_target(config, seed)


def make_draft(tc, seed: int = 1, **options):
    from draftsmith_dflash.draft_qwen3 import Qwen3DFlashDraftModel

    options.setdefault("mask_token_id", MASK_ID)
    options.setdefault("block_size", 4)
    options.setdefault("num_draft_layers", 2)
    torch.manual_seed(seed)
    draft = Qwen3DFlashDraftModel(Qwen3DFlashDraftModel.build_draft_config(tc, **options))
    # larger random weights than the 0.02 init so drafts differ clearly between positions
    return scramble(draft, seed, 0.15, skip=(), norms=False)


def make_setup(arch: str = "Qwen3ForCausalLM", num_layers: int = 4, **draft_options):
    from draftsmith.target import target_heads

    tc = target_config(arch, num_layers)
    target = make_target(tc)
    draft = make_draft(tc, **draft_options)
    return types.SimpleNamespace(tc=tc, target=target, draft=draft, heads=target_heads(target))


def make_batch(batch: int = 2, length: int = 20, prompt: int = 5, seed: int = 3, pad: int = 0):
    return _make_batch(batch, length, prompt, seed, pad, low=0, high=120)


@pytest.fixture
def setup():
    return make_setup()


@pytest.fixture
def dflash():
    """The helpers above (test modules cannot import this conftest under --import-mode=importlib)."""
    return types.SimpleNamespace(MASK_ID=MASK_ID, target_config=target_config, make_target=make_target,
                                 make_draft=make_draft, make_setup=make_setup, make_batch=make_batch)
