"""Tiny targets and DSpark drafts for the plugin's tests (fp32, CPU, seeded, nothing downloaded)."""

from __future__ import annotations

import types

import pytest
import torch
from transformers import (AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config,
                          Qwen3MoeConfig)

COMMON = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0,
              tie_word_embeddings=False)
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
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    with torch.no_grad():  # sharper target distributions than the 0.02 init (clear argmax margins)
        model.get_output_embeddings().weight.mul_(8.0)
    return model.float().eval().requires_grad_(False)


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
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in draft.named_parameters():
            if p.dim() == 2 and "embed_tokens" not in name and "lm_head" not in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    return draft.float()


def make_batch(batch: int = 2, length: int = 24, prompt: int = 5, seed: int = 3, pad: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 120, (batch, length), generator=g)
    attn = torch.ones_like(ids)
    loss = torch.ones_like(ids)
    loss[:, :prompt] = 0
    if pad:
        attn[-1, -pad:] = 0
        loss[-1, -pad:] = 0
        ids[-1, -pad:] = 0
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": loss}


@pytest.fixture(autouse=True)
def _single_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared, loaded CPU OpenMP spin-waiting makes
    each small matmul ~100x slower; restored after each test so other suites are unaffected."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
