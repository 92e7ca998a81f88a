"""Tiny targets, EAGLE drafts and batches for the plugin's tests (fp32, CPU, seeded, nothing downloaded)."""

from __future__ import annotations

import types

import pytest
import torch

from draftsmith.testing import make_batch as _make_batch, make_tiny_target, scramble, tiny_target_config

SPECIAL_IDS = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)


def target_config(arch: str = "Qwen3ForCausalLM", num_layers: int = 8, **kw):
    return tiny_target_config(arch, num_layers, **{**SPECIAL_IDS, **kw})


def make_target(config, seed: int = 0):
    # eager attention: the HF reference the parity tests compare against; sharper distributions than the init
    return make_tiny_target(config, seed, attn_implementation="eager", head_scale=8.0)


def make_eagle3(tc, seed: int = 1, **options):
    from draftsmith_eagle.draft_gpt_oss import GptOssEagle3DraftModel
    from draftsmith_eagle.draft_llama import LlamaEagle3DraftModel

    cls = GptOssEagle3DraftModel if tc.model_type == "gpt_oss" else LlamaEagle3DraftModel
    options.setdefault("draft_vocab_size", 64)
    torch.manual_seed(seed)
    return scramble(cls(cls.build_draft_config(tc, **options)), seed)


def make_eagle1(tc, seed: int = 1, **options):
    from draftsmith_eagle.draft_llama_v12 import LlamaEagleDraftModel

    torch.manual_seed(seed)
    return scramble(LlamaEagleDraftModel(LlamaEagleDraftModel.build_draft_config(tc, **options)), seed)


def make_batch(batch: int = 2, length: int = 24, prompt: int = 5, seed: int = 3, pad: int = 0, vocab: int = 128):
    return _make_batch(batch, length, prompt, seed, pad, high=vocab)


def features_of(target, batch, request):
    from draftsmith.target import run_target

    feats, _ = run_target(target, request, batch["input_ids"], batch.get("attention_mask"),
                          batch.get("position_ids"))
    return feats


def heads_of(target):
    from draftsmith.target import target_heads

    return target_heads(target)


@pytest.fixture
def eagle():
    """The helpers above (test modules cannot import this conftest under --import-mode=importlib)."""
    return types.SimpleNamespace(target_config=target_config, make_target=make_target, make_eagle3=make_eagle3,
                                 make_eagle1=make_eagle1, make_batch=make_batch, features_of=features_of,
                                 heads_of=heads_of, scramble=scramble)
