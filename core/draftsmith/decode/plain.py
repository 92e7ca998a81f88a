"""Plain target decoding (batch 1, HF DynamicCache): the reference for losslessness and speed.

It uses the same forward call shape, cache and :func:`~draftsmith.decode.sampling.pick_token` as the
speculative engine, so the speed comparison measures speculation, not two different loops.
"""

from __future__ import annotations

import functools
import inspect
import time
from typing import Any, Iterable

import torch

from ..errors import ConfigError
from .cache import new_cache
from .sampling import SamplingConfig, pick_token
from .stats import GenerationResult


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock timers measure it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def supports_logits_to_keep(model: torch.nn.Module) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def cache_kwargs(model: torch.nn.Module, cache: Any) -> dict[str, Any]:
    """``{<cache argument>: cache, "use_cache": True}``: transformers ≥ 5.24 names the KV-cache argument ``cache``
    (``past_key_values`` still works there but warns, and goes in 5.40); earlier 5.x releases only know
    ``past_key_values``."""
    return {_cache_argument(type(model)): cache, "use_cache": True}


@functools.lru_cache(maxsize=None)
def _cache_argument(model_class: type) -> str:  # once per class: decoding calls this for every target forward
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def prefill(model: torch.nn.Module, prompt_ids: torch.Tensor, cache: Any) -> Any:
    """Run the prompt through the target; only the last position's logits are computed when the model allows."""
    kwargs = {"logits_to_keep": 1} if supports_logits_to_keep(model) else {}
    return model(input_ids=prompt_ids[None], **cache_kwargs(model, cache), **kwargs)


def as_prompt(prompt_ids: Any, device: torch.device) -> torch.Tensor:
    """A 1-D long tensor of prompt ids on ``device`` (accepts lists, (n,) or (1, n) tensors)."""
    ids = torch.as_tensor(prompt_ids, dtype=torch.long)
    if ids.dim() == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.dim() != 1:
        raise ConfigError(f"prompt ids must be 1-D (batch size 1), got shape {tuple(ids.shape)}")
    if ids.numel() == 0:
        raise ConfigError("empty prompt: at least one token is needed to start decoding")
    return ids.to(device)


def check_max_new_tokens(max_new_tokens: int) -> int:
    if int(max_new_tokens) != max_new_tokens or max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be a positive integer, got {max_new_tokens}")
    return int(max_new_tokens)


@torch.no_grad()
def generate_plain(model: torch.nn.Module, prompt_ids: Any, max_new_tokens: int,
                   sampling: SamplingConfig | None = None, eos_token_ids: Iterable[int] = (),
                   generator: torch.Generator | None = None) -> GenerationResult:
    """Decode one token per target forward until EOS (included in the output) or ``max_new_tokens``."""
    sampling = sampling or SamplingConfig()
    max_new_tokens = check_max_new_tokens(max_new_tokens)
    device = model_device(model)
    ids = as_prompt(prompt_ids, device)
    eos = set(int(e) for e in eos_token_ids)
    synchronize(device)
    start = time.perf_counter()
    cache = new_cache(model)
    token = pick_token(prefill(model, ids, cache).logits[0, -1], sampling, generator)
    tokens = [int(token)]
    while len(tokens) < max_new_tokens and tokens[-1] not in eos:
        out = model(input_ids=token.view(1, 1), **cache_kwargs(model, cache))
        token = pick_token(out.logits[0, -1], sampling, generator)
        tokens.append(int(token))
    synchronize(device)
    elapsed = time.perf_counter() - start
    return GenerationResult(tokens=tokens, stop_reason="eos" if tokens[-1] in eos else "length",
                            total_time=elapsed)
