"""Tiny targets and DSpark drafts for the plugin's tests (fp32, CPU, seeded, nothing downloaded)."""

from __future__ import annotations

import types

import pytest
import torch

from draftsmith.testing import make_batch, make_tiny_target, scramble, tiny_target_config

SPECIAL_IDS = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
MASK_ID = 127


def target_config(arch: str = "Qwen3ForCausalLM", num_layers: int = 4, **kw):
    return tiny_target_config(arch, num_layers, **{**SPECIAL_IDS, **kw})


def make_target(config, seed: int = 0):
    # sharper target distributions than the 0.02 init (clear argmax margins)
    return make_tiny_target(config, seed, attn_implementation="auto", head_scale=8.0)


def make_draft(tc, seed: int = 1, scale: float = 0.2, **options):
    """A DSpark draft with the target's embedding/head copied in and larger-than-init random weights, so
    slots, positions and the Markov/confidence heads all matter numerically."""
    from draftsmith_dspark.draft_qwen3 import Qwen3DSparkModel

    options.setdefault("mask_token_id", MASK_ID)
    options.setdefault("num_draft_layers", 2)
    options.setdefault("markov_rank", 16)
    options.setdefault("num_anchors", 8)
    torch.manual_seed(seed)
    draft = Qwen3DSparkModel(Qwen3DSparkModel.build_draft_config(tc, **options))
    return scramble(draft, seed, scale, skip=("embed_tokens", "lm_head"), norms=False).float()


@pytest.fixture(scope="session")
def tiny():
    """The helpers above, as a namespace (pytest's importlib mode cannot import conftest directly)."""
    return types.SimpleNamespace(target_config=target_config, make_target=make_target, make_draft=make_draft,
                                 make_batch=make_batch, MASK_ID=MASK_ID,
                                 ARCHS=("Qwen3ForCausalLM", "Qwen3MoeForCausalLM", "LlamaForCausalLM",
                                        "Qwen2ForCausalLM", "MistralForCausalLM"))


@pytest.fixture(scope="session")
def qwen3_target():
    return make_target(target_config("Qwen3ForCausalLM"))
