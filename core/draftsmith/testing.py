"""Tiny real targets and batches for testing drafts (first-party plugins and third-party ones alike).

Everything is built from config, seeded and fp32 on the CPU — nothing is downloaded:

* :func:`tiny_target_config` — a real transformers config of a supported architecture at a tiny size
  (vocab 128, hidden 64, 4 heads / 2 KV heads, head_dim 16 where the architecture decouples it);
* :func:`make_tiny_target` — the randomly initialised ``AutoModelForCausalLM`` of such a config, frozen, with
  an optionally sharpened output head (clear argmax margins make greedy tests meaningful);
* :func:`make_batch` — a training batch (``input_ids``, ``attention_mask``, ``loss_mask``) with a prompt
  prefix excluded from the loss and optional right padding on the last row;
* :func:`scramble` — larger-than-init random weights for a draft, so positions and steps differ clearly.

Imports torch and transformers (never imported by the CLI's light paths).
"""

from __future__ import annotations

from typing import Any

import torch

TINY_SIZES = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256)
# architectures whose config decouples head_dim from hidden_size / heads
_DECOUPLED_HEAD_DIM = ("Qwen3ForCausalLM", "Qwen3MoeForCausalLM", "MistralForCausalLM", "GptOssForCausalLM")


def tiny_target_config(arch: str = "Qwen3ForCausalLM", num_layers: int = 4, **overrides: Any):
    """A tiny transformers config of ``arch`` (``Qwen3``, ``Qwen3Moe``, ``Llama``, ``Qwen2``, ``Mistral``,
    ``Phi3``, ``GptOss`` ``…ForCausalLM``, and the families of :mod:`draftsmith.tiny_families`: Mixtral, Qwen2-MoE,
    Qwen3-Next, Qwen3.5, Gemma 2/3/4, DeepSeek-V3/V4, GLM-4 MoE, OLMo 2/3, Granite, SmolLM3, Ernie 4.5, Hunyuan,
    MiniMax-M2); ``overrides`` replace any field."""
    import transformers

    kw: dict[str, Any] = {**TINY_SIZES, "num_hidden_layers": num_layers, "architectures": [arch], **overrides}
    if arch in _DECOUPLED_HEAD_DIM:
        kw.setdefault("head_dim", 16)
    extra = {
        "Qwen3MoeForCausalLM": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                    decoder_sparse_step=1),
        "MistralForCausalLM": dict(sliding_window=None),
        "GptOssForCausalLM": dict(num_local_experts=4, num_experts_per_tok=2, intermediate_size=64),
        "Phi3ForCausalLM": dict(pad_token_id=0),  # Phi-3's default pad id (32000) lies outside the tiny vocab
    }.get(arch, {})
    config_class = {"Qwen3ForCausalLM": "Qwen3Config", "Qwen3MoeForCausalLM": "Qwen3MoeConfig",
                    "LlamaForCausalLM": "LlamaConfig", "Qwen2ForCausalLM": "Qwen2Config",
                    "MistralForCausalLM": "MistralConfig", "Phi3ForCausalLM": "Phi3Config",
                    "GptOssForCausalLM": "GptOssConfig"}.get(arch)
    if config_class is None:
        from .tiny_families import SPECIAL_IDS, TINY_FAMILIES

        if arch not in TINY_FAMILIES:
            raise KeyError(f"no tiny config for {arch!r}; known: {', '.join(sorted(known_tiny_architectures()))}")
        config_class, extra = TINY_FAMILIES[arch]
        kw = {**SPECIAL_IDS, **kw}
    return getattr(transformers, config_class)(**{**kw, **{k: v for k, v in extra.items() if k not in overrides}})


_CORE_TINY = ("Qwen3ForCausalLM", "Qwen3MoeForCausalLM", "LlamaForCausalLM", "Qwen2ForCausalLM",
              "MistralForCausalLM", "Phi3ForCausalLM", "GptOssForCausalLM")


def known_tiny_architectures() -> list[str]:
    """Every architecture :func:`tiny_target_config` can build (the coverage matrix's rows)."""
    from .tiny_families import TINY_FAMILIES

    return list(_CORE_TINY) + list(TINY_FAMILIES)


def make_tiny_target(config: Any, seed: int = 0, *, attn_implementation: str | None = None,
                     head_scale: float = 1.0) -> torch.nn.Module:
    """The frozen, eval-mode fp32 target of ``config`` (seeded init); ``head_scale`` multiplies the output
    embedding (> 1: sharper distributions than the near-uniform random init). ``attn_implementation="auto"``:
    SDPA, or eager for the families transformers refuses SDPA for (gpt-oss, Gemma 2)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    kwargs = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    if attn_implementation == "auto":  # as load_target: SDPA where transformers offers it for the family
        kwargs["attn_implementation"] = "sdpa"
    try:
        model = AutoModelForCausalLM.from_config(config, **kwargs)
    except ValueError as exc:
        from .target import sdpa_refused

        if attn_implementation != "auto" or not sdpa_refused(exc):
            raise
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    model = model.float().eval()
    if head_scale != 1.0:
        with torch.no_grad():
            model.get_output_embeddings().weight.mul_(head_scale)
    return model.requires_grad_(False)


def make_batch(batch: int = 2, length: int = 24, prompt: int = 5, seed: int = 3, pad: int = 0, *,
               low: int = 3, high: int = 120) -> dict[str, torch.Tensor]:
    """``input_ids`` uniform in ``[low, high)``, ``attention_mask`` all ones, ``loss_mask`` zero on the first
    ``prompt`` positions; ``pad`` > 0 right-pads the last row (ids 0, masks 0) by that many positions."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(low, high, (batch, length), generator=g)  # (B, T)
    attn = torch.ones_like(ids)
    loss = torch.ones_like(ids)
    loss[:, :prompt] = 0
    if pad:
        attn[-1, -pad:] = 0
        loss[-1, -pad:] = 0
        ids[-1, -pad:] = 0
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": loss}


def scramble(draft: torch.nn.Module, seed: int = 1, scale: float = 0.15, *, skip: tuple[str, ...] = ("embed_tokens",),
             norms: bool = True) -> torch.nn.Module:
    """Replace every 2-D weight (except names containing one of ``skip``) by ``N(0, scale²)`` draws and, with
    ``norms``, every 1-D norm weight by ``1 + N(0, 0.01)``; seeded, in place. Returns ``draft``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in draft.named_parameters():
            if p.dim() == 2 and not any(s in name for s in skip):
                p.copy_(torch.randn(p.shape, generator=g) * scale)
            elif norms and p.dim() == 1 and "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
    return draft


def edit_config_json(directory: Any, **changes: Any) -> Any:
    """Rewrite ``directory/config.json`` with ``changes`` (a value of ``None`` removes the key) — to turn a good
    export into the broken one a reader or ``check-export`` must refuse. Returns the directory."""
    import json
    from pathlib import Path

    path = Path(directory) / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config))
    return directory
