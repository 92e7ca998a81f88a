"""Everything a run needs, built from a :class:`~draftsmith.train.config.RunConfig`.

Order: check the config → target config and draft spec (registry) → tokenizer → data → target (online) or
feature cache (offline) → draft (``spec.build``) → objective (``MethodSpec.load_objective()``) → its
:class:`TargetRequest`. Shared by ``draftsmith train``, ``draftsmith prepare-features`` and the throughput
benchmark. Core stays method-agnostic: nothing here looks at the method's name.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..errors import ConfigError
from ..method import MethodSpec, TargetHeads, TargetRequest
from .config import RunConfig
from .data_setup import (DataSplits, LazyTokenizer, build_data, chat_template_text, check_cache,  # noqa: F401
                         expected_manifest, load_split_samples, load_target_tokenizer)
from .distributed import DistInfo, shard_target

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclasses.dataclass
class Setup:
    config: RunConfig
    dist: DistInfo
    device: torch.device
    method: MethodSpec
    spec: Any
    target_config: Any
    target: nn.Module | None
    tokenizer: Any
    chat_template: str | None
    heads: TargetHeads
    draft: nn.Module
    objective: Any
    request: TargetRequest
    target_dtype: torch.dtype
    cache: Any = None  # FeatureCache when training offline
    data: DataSplits | None = None
    final_norm: nn.Module | None = None  # only with build_setup(heads_only=True)


def require(config: RunConfig, *, need_data: bool = True) -> None:
    """Missing essentials, named by their CLI flag and config key (torch-free checks in config.py)."""
    from .config import check_required

    check_required(config, need_data=need_data)


def target_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ConfigError(f"target.dtype must be auto, float32, bfloat16 or float16, got {name!r}")
    return DTYPES[name]


def load_target_config(path: str, *, trust_remote_code: bool, need_weights: bool) -> Any:
    from transformers import AutoConfig

    from ..target import check_target_dir

    if need_weights:
        check_target_dir(path)
    else:  # offline: the weights are not read, only the config (and tokenizer)
        p = Path(path)
        if not p.is_dir():
            raise ConfigError(f"target path {path!r} does not exist" if not p.exists()
                              else f"target path {path!r} is not a directory")
        if not (p / "config.json").is_file():
            raise ConfigError(f"target {path!r} has no config.json")
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"cannot read the target config in {path!r}: {str(exc).splitlines()[0]}") from None


def resolve_spec(method_name: str, target_config: Any) -> tuple[MethodSpec, Any]:
    import draftsmith

    method = draftsmith.get_method(method_name)
    archs = list(getattr(target_config, "architectures", None) or [])
    return method, draftsmith.resolve_draft_spec(method_name, archs)


def vocab_size_of(target_config: Any) -> int:
    from ..conventions import text_config

    return int(text_config(target_config).vocab_size)


def mask_token_from_tokenizer(method: MethodSpec, options: dict[str, Any], tokenizer: LazyTokenizer,
                              log: Callable[[str], None]) -> dict[str, Any]:
    """A draft option ``mask_token_id`` left unset is the tokenizer's declared ``mask_token`` (HF
    ``tokenizer.mask_token_id``), for methods that declare that option; the draft builder still validates it (in
    the vocab, not pad/eos). Without a declared mask token the options are unchanged and the builder's error
    stands."""
    if "mask_token_id" not in (method.draft_options or {}) or options.get("mask_token_id") is not None:
        return options
    tok = tokenizer.get_or_none()
    mask = getattr(tok, "mask_token_id", None) if tok is not None else None
    if mask is None:
        return options
    log(f"draft: mask_token_id {int(mask)} = the tokenizer's mask token {tok.mask_token!r}")
    return {**options, "mask_token_id": int(mask)}


def build_draft(spec: Any, target_config: Any, options: dict[str, Any], seed: int) -> nn.Module:
    """The draft, built by the registered spec from its options (routed by ``MethodSpec.route_options``)."""
    torch.manual_seed(seed)  # same initial draft on every rank and every run with this seed
    try:
        draft = spec.build(target_config, **options)
    except TypeError as exc:
        if "unexpected keyword" in str(exc) or "got an unexpected" in str(exc):
            raise ConfigError(f"draft options {sorted(options)}: {exc} (config section 'draft')") from None
        raise
    return draft.float()


def build_objective(method: MethodSpec, draft: nn.Module, heads: TargetHeads, options: dict[str, Any]) -> Any:
    merged = method.objective_kwargs(options)  # declared defaults + the given options, checked
    cls = method.load_objective()
    try:
        return cls(draft, heads, **merged)
    except TypeError as exc:
        if "unexpected keyword" in str(exc):
            raise ConfigError(f"method_options for {method.name!r}: {exc}") from None
        raise


def build_setup(config: RunConfig, info: DistInfo, device: torch.device, *,
                load_data: bool = True, heads_only: bool = False, log: Callable[[str], None] = lambda s: None
                ) -> Setup:
    """Target/cache, tokenizer, data, draft and objective for ``config`` (see the module docstring).

    ``heads_only``: load only the target's heads and final norm (``setup.target`` stays None, the norm is
    ``setup.final_norm``), for importing features captured elsewhere."""
    from ..target import load_target, load_target_heads, target_heads

    require(config, need_data=load_data)
    offline = config.train.offline_features
    target_config = load_target_config(config.target.path, trust_remote_code=config.target.trust_remote_code,
                                       need_weights=not offline)
    method, spec = resolve_spec(config.method, target_config)
    tokenizer = LazyTokenizer(config.target.path, config.target.trust_remote_code)
    template = chat_template_text(config, tokenizer)
    dtype = target_dtype(config.target.dtype, device)
    vocab = vocab_size_of(target_config)

    data = None
    if load_data and not offline:  # data problems surface before a (possibly huge) target is loaded
        data = build_data(config, tokenizer, template, None, vocab, log)
    cache = final_norm = None
    if heads_only and not offline:
        heads, final_norm = load_target_heads(config.target.path, dtype=dtype, device=device,
                                              trust_remote_code=config.target.trust_remote_code)
        target = None
    elif offline:
        from ..data.features import FeatureCache

        cache = FeatureCache(offline)
        heads = cache.heads(device)
        target = None
    else:
        target = load_target(config.target.path, dtype=dtype, device=device,
                             trust_remote_code=config.target.trust_remote_code,
                             attn_implementation=config.target.attn_implementation)
        heads = target_heads(target)
        if config.target.shard and info.enabled:
            heads = _own_heads(heads)  # drafts copy/reference full tables, never the shards
            shard_target(target, info)

    draft_options, objective_options = method.route_options(config.draft, config.method_options)
    if not config.train.init_from:
        draft_options = mask_token_from_tokenizer(method, draft_options, tokenizer, log)
    if config.train.init_from:
        from .warm_start import warm_start_draft

        draft = warm_start_draft(config.train.init_from, method, spec, target_config, draft_options).to(device)
    else:
        draft = build_draft(spec, target_config, draft_options, config.train.seed).to(device)
    objective = build_objective(method, draft, heads, objective_options)
    request = objective.target_request()
    _warn_unservable_layers(request, target_config, log)
    setup = Setup(config=config, dist=info, device=device, method=method, spec=spec, target_config=target_config,
                  target=target, tokenizer=tokenizer, chat_template=template, heads=heads, draft=draft,
                  objective=objective, request=request, target_dtype=dtype, cache=cache, data=data,
                  final_norm=final_norm)
    if cache is not None:
        check_cache(setup)
        if load_data:
            setup.data = build_data(config, tokenizer, template, cache, vocab, log)
    return setup


def _warn_unservable_layers(request: Any, target_config: Any, log: Callable[[str], None]) -> None:
    """One line at the start of a run whose captured layers include the last decoder layer's output: it trains
    and evaluates, but no serving engine captures it (DSpark's default rule, NeMo's, ends there), so every
    engine export would refuse the draft after training."""
    from ..conventions import num_target_layers

    last = num_target_layers(target_config) - 1
    if last in request.layer_ids:
        log(f"warning: the draft reads target layer {last}, the last decoder layer's output: no serving engine "
            f"captures it, so `draftsmith export` to vllm/sglang/speculators will refuse this draft; set "
            f"draft.target_layer_ids to ids <= {last - 1} to serve it (captured: {list(request.layer_ids)})")


def _own_heads(heads: TargetHeads) -> TargetHeads:
    """Unsharded copies of the target's embedding and lm_head (taken before the target is sharded)."""
    import copy

    return dataclasses.replace(heads, embed_tokens=copy.deepcopy(heads.embed_tokens),
                               lm_head=copy.deepcopy(heads.lm_head))
