"""Tiny targets and DFlash drafts for the plugin's tests (fp32, CPU, seeded, nothing downloaded)."""

from __future__ import annotations

import types

import pytest
import torch
from transformers import (AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config,
                          Qwen3MoeConfig)

COMMON = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=256)
MASK_ID = 127


def target_config(arch: str = "Qwen3ForCausalLM", num_layers: int = 4, **kw):
    kw = {**COMMON, "num_hidden_layers": num_layers, "architectures": [arch], **kw}
    if arch == "Qwen3ForCausalLM":
        return Qwen3Config(head_dim=16, **kw)
    if arch == "Qwen3MoeForCausalLM":
        return Qwen3MoeConfig(head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                              decoder_sparse_step=1, **kw)
    if arch == "LlamaForCausalLM":
        return LlamaConfig(**kw)
    if arch == "Qwen2ForCausalLM":
        return Qwen2Config(**kw)
    if arch == "MistralForCausalLM":
        return MistralConfig(sliding_window=None, **kw)
    raise KeyError(arch)


def make_target(config, seed: int = 0):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    model.requires_grad_(False)
    return model


def make_draft(tc, seed: int = 1, **options):
    from draftsmith_dflash.draft_qwen3 import Qwen3DFlashDraftModel

    options.setdefault("mask_token_id", MASK_ID)
    options.setdefault("block_size", 4)
    options.setdefault("num_draft_layers", 2)
    torch.manual_seed(seed)
    draft = Qwen3DFlashDraftModel(Qwen3DFlashDraftModel.build_draft_config(tc, **options))
    # larger random weights than the 0.02 init so drafts differ clearly between positions
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in draft.named_parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.15)
    return draft


def make_setup(arch: str = "Qwen3ForCausalLM", num_layers: int = 4, **draft_options):
    from draftsmith.target import target_heads

    tc = target_config(arch, num_layers)
    target = make_target(tc)
    draft = make_draft(tc, **draft_options)
    return types.SimpleNamespace(tc=tc, target=target, draft=draft, heads=target_heads(target))


def make_batch(batch: int = 2, length: int = 20, prompt: int = 5, seed: int = 3, pad: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 120, (batch, length), generator=g)
    attn = torch.ones_like(ids)
    loss = torch.ones_like(ids)
    loss[:, :prompt] = 0
    if pad:
        attn[-1, -pad:] = 0
        loss[-1, -pad:] = 0
        ids[-1, -pad:] = 0
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": loss}


@pytest.fixture
def setup():
    return make_setup()


@pytest.fixture
def dflash():
    """The helpers above (test modules cannot import this conftest under --import-mode=importlib)."""
    return types.SimpleNamespace(MASK_ID=MASK_ID, target_config=target_config, make_target=make_target,
                                 make_draft=make_draft, make_setup=make_setup, make_batch=make_batch)
