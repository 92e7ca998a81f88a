"""Tiny targets, EAGLE drafts and batches for the plugin's tests (fp32, CPU, seeded, nothing downloaded)."""

from __future__ import annotations

import types

import pytest
import torch
from transformers import (AutoModelForCausalLM, GptOssConfig, LlamaConfig, MistralConfig, Phi3Config, Qwen2Config,
                          Qwen3Config, Qwen3MoeConfig)

COMMON = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def target_config(arch: str = "Qwen3ForCausalLM", num_layers: int = 8, **kw):
    kw = {**COMMON, "num_hidden_layers": num_layers, "architectures": [arch], **kw}
    if arch in ("Qwen3ForCausalLM", "Qwen3MoeForCausalLM", "MistralForCausalLM", "GptOssForCausalLM"):
        kw.setdefault("head_dim", 16)
    if arch == "Qwen3ForCausalLM":
        return Qwen3Config(**kw)
    if arch == "Qwen3MoeForCausalLM":
        return Qwen3MoeConfig(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, **kw)
    if arch == "LlamaForCausalLM":
        return LlamaConfig(**kw)
    if arch == "Qwen2ForCausalLM":
        return Qwen2Config(**kw)
    if arch == "MistralForCausalLM":
        return MistralConfig(sliding_window=None, **kw)
    if arch == "Phi3ForCausalLM":
        return Phi3Config(**kw)
    if arch == "GptOssForCausalLM":
        return GptOssConfig(num_local_experts=4, num_experts_per_tok=2, **{**kw, "intermediate_size": 64})
    raise KeyError(arch)


def make_target(config, seed: int = 0):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():  # sharper target distributions than the near-uniform random init
        model.get_output_embeddings().weight.mul_(8.0)
    return model.requires_grad_(False)


def scramble(draft, seed: int = 1, scale: float = 0.15):
    """Larger random weights than the 0.02 init, so positions and steps differ clearly (norms stay at 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in draft.named_parameters():
            if p.dim() == 2 and "embed_tokens" not in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
            elif p.dim() == 1 and "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
    return draft


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
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, length), generator=g)
    attn = torch.ones_like(ids)
    loss = torch.ones_like(ids)
    loss[:, :prompt] = 0
    if pad:
        attn[-1, -pad:] = 0
        loss[-1, -pad:] = 0
        ids[-1, -pad:] = 0
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": loss}


def features_of(target, batch, request):
    from draftsmith.target import run_target

    feats, _ = run_target(target, request, batch["input_ids"], batch.get("attention_mask"),
                          batch.get("position_ids"))
    return feats


def heads_of(target):
    from draftsmith.target import target_heads

    return target_heads(target)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread. With several threads on a shared 2-core machine, every small op pays
    for thread hand-offs (a 20-token decode went from 0.15 s to 6 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def eagle():
    """The helpers above (test modules cannot import this conftest under --import-mode=importlib)."""
    return types.SimpleNamespace(target_config=target_config, make_target=make_target, make_eagle3=make_eagle3,
                                 make_eagle1=make_eagle1, make_batch=make_batch, features_of=features_of,
                                 heads_of=heads_of, scramble=scramble)
