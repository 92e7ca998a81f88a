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

from ..errors import ConfigError, DraftsmithError
from ..method import MethodSpec, TargetHeads, TargetRequest
from .config import RunConfig
from .distributed import DistInfo, shard_target

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclasses.dataclass
class DataSplits:
    train: list[Any]  # Sample
    eval: list[Any]
    report: Any = None  # DataReport of the train files (online)
    eval_report: Any = None
    cache_train: Any = None  # CacheSplit (offline)
    cache_eval: Any = None
    train_index: list[int] | None = None  # sample ids in the cache split (offline, after the eval hold-out)
    eval_index: list[int] | None = None


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


def load_target_tokenizer(path: str | Path, *, trust_remote_code: bool = False) -> Any:
    """The target's tokenizer; a directory without tokenizer files is an error (transformers 5 would
    otherwise build an empty tokenizer from the model type alone)."""
    from ..data.features import TOKENIZER_FILES
    from ..target import load_tokenizer

    if not any((Path(path) / name).is_file() for name in TOKENIZER_FILES):
        raise ConfigError(f"target {str(path)!r} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...); "
                          f"copy the tokenizer into the target directory")
    return load_tokenizer(path, trust_remote_code=trust_remote_code)


class LazyTokenizer:
    """The target tokenizer, loaded on first use: pre-tokenised data never needs one."""

    def __init__(self, path: str, trust_remote_code: bool) -> None:
        self.path, self.trust_remote_code = path, trust_remote_code
        self._tok: Any = None
        self._error: Exception | None = None

    def get(self) -> Any:
        if self._tok is None and self._error is None:
            try:
                self._tok = load_target_tokenizer(self.path, trust_remote_code=self.trust_remote_code)
            except DraftsmithError as exc:
                self._error = exc
        if self._error is not None:
            raise self._error
        return self._tok

    def get_or_none(self) -> Any:
        try:
            return self.get()
        except DraftsmithError:
            return None


def chat_template_text(config: RunConfig, tokenizer: LazyTokenizer) -> str | None:
    from ..data.chat import resolve_template

    if config.data.chat_template:
        return resolve_template(None, config.data.chat_template)
    tok = tokenizer.get_or_none()
    return resolve_template(tok) if tok is not None else None


def load_split_samples(files: list[str], config: RunConfig, tokenizer: LazyTokenizer, vocab_size: int,
                       template: str | None, max_samples: int = 0) -> tuple[list[Any], Any]:
    from ..data.samples import load_samples

    return load_samples(files, _LazyProxy(tokenizer), seq_len=config.data.seq_len, on_bad_data=config.data.on_bad_data,
                        vocab_size=vocab_size, chat_template=template, max_samples=max_samples)


class _LazyProxy:
    """Stands in for a tokenizer until a chat record needs it (then loads it, or raises its load error)."""

    def __init__(self, lazy: LazyTokenizer) -> None:
        object.__setattr__(self, "_lazy", lazy)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lazy.get(), name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._lazy.get()(*args, **kwargs)


def vocab_size_of(target_config: Any) -> int:
    from ..conventions import text_config

    return int(text_config(target_config).vocab_size)


def build_draft(spec: Any, target_config: Any, options: dict[str, Any], seed: int,
                method: MethodSpec | None = None) -> nn.Module:
    """The draft, built by the registered spec from the user's ``draft:`` options (checked against the method's
    declared draft options when ``method`` is given)."""
    if method is not None:
        options = method.draft_kwargs(options)
    torch.manual_seed(seed)  # same initial draft on every rank and every run with this seed
    try:
        draft = spec.build(target_config, **options)
    except TypeError as exc:
        if "unexpected keyword" in str(exc) or "got an unexpected" in str(exc):
            raise ConfigError(f"draft options {sorted(options)}: {exc} (config section 'draft')") from None
        raise
    return draft.float()


def build_objective(method: MethodSpec, draft: nn.Module, heads: TargetHeads, options: dict[str, Any]) -> Any:
    merged = method.objective_kwargs(options)  # declared defaults + the user's method_options, validated
    cls = method.load_objective()
    try:
        return cls(draft, heads, **merged)
    except TypeError as exc:
        if "unexpected keyword" in str(exc):
            raise ConfigError(f"method_options for {method.name!r}: {exc}") from None
        raise


def build_setup(config: RunConfig, info: DistInfo, device: torch.device, *,
                load_data: bool = True, log: Callable[[str], None] = lambda s: None) -> Setup:
    """Target/cache, tokenizer, data, draft and objective for ``config`` (see the module docstring)."""
    from ..target import load_target, target_heads

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
    cache = None
    if offline:
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

    draft = build_draft(spec, target_config, dict(config.draft), config.train.seed, method).to(device)
    objective = build_objective(method, draft, heads, dict(config.method_options))
    request = objective.target_request()
    setup = Setup(config=config, dist=info, device=device, method=method, spec=spec, target_config=target_config,
                  target=target, tokenizer=tokenizer, chat_template=template, heads=heads, draft=draft,
                  objective=objective, request=request, target_dtype=dtype, cache=cache, data=data)
    if cache is not None:
        check_cache(setup)
        if load_data:
            setup.data = build_data(config, tokenizer, template, cache, vocab, log)
    return setup


def _own_heads(heads: TargetHeads) -> TargetHeads:
    """Unsharded copies of the target's embedding and lm_head (taken before the target is sharded)."""
    import copy

    return dataclasses.replace(heads, embed_tokens=copy.deepcopy(heads.embed_tokens),
                               lm_head=copy.deepcopy(heads.lm_head))


def expected_manifest(setup: Setup) -> dict[str, Any]:
    """The manifest fields a feature cache must have for this run."""
    from .. import __version__
    from ..checkpoint import LAYER_ID_CONVENTION
    from ..data.features import sha256_text, target_identity

    cfg = setup.config
    return {
        "draftsmith_version": __version__,
        **target_identity(cfg.target.path),
        "layer_ids": list(setup.request.layer_ids),
        "final_hidden": bool(setup.request.final_hidden),
        "layer_id_convention": LAYER_ID_CONVENTION,
        "seq_len": cfg.data.seq_len,
        "chat_template_sha256": sha256_text(setup.chat_template),
        "on_bad_data": cfg.data.on_bad_data,
        "max_samples": cfg.data.max_samples,
    }


def check_cache(setup: Setup) -> None:
    """Refuse a feature cache built for a different run (the error names the field)."""
    from ..data.features import ManifestMismatch, check_manifest, data_identity
    from ..data.records import expand_paths

    cache, cfg = setup.cache, setup.config
    where = f"offline features {str(cache.path)!r}"
    check_manifest(cache.manifest, expected_manifest(setup), where=where)
    for split, files in (("train", cfg.data.train), ("eval", cfg.data.eval)):
        if not files:
            continue
        if not cache.has_split(split):
            raise ManifestMismatch(f"{where}: field 'splits.{split}' is missing, the run has {split} data {files}")
        want = data_identity(expand_paths(files))["data_sha256"]
        if cache.manifest["splits"][split].get("data_sha256") != want:
            raise ManifestMismatch(f"{where}: field 'splits.{split}.data_sha256' differs from the run's "
                                   f"data.{split} files {files}; the cache was built from other data")


def build_data(cfg: RunConfig, tokenizer: LazyTokenizer, template: str | None, cache: Any, vocab: int,
               log: Callable[[str], None]) -> DataSplits:
    from ..data.samples import split_eval

    if cache is not None:
        train_split = cache.split("train")
        train_all = train_split.samples()
        eval_split = cache.split("eval") if cache.has_split("eval") else None
        if eval_split is not None:
            train_idx, eval_idx = list(range(len(train_all))), list(range(len(eval_split)))
            eval_samples = eval_split.samples()
        else:
            train_idx, eval_idx = split_eval(len(train_all), cfg.data.eval_fraction, cfg.data.max_eval_samples,
                                             cfg.train.seed)
            eval_samples = [train_all[i] for i in eval_idx]
        return DataSplits(train=[train_all[i] for i in train_idx], eval=eval_samples, cache_train=train_split,
                          cache_eval=eval_split or train_split, train_index=train_idx, eval_index=eval_idx)

    samples, report = load_split_samples(cfg.data.train, cfg, tokenizer, vocab, template, cfg.data.max_samples)
    log(f"data: {report.summary()}")
    for w in report.warnings():
        log(f"warning: {w}")
    if cfg.data.eval:
        eval_samples, eval_report = load_split_samples(cfg.data.eval, cfg, tokenizer, vocab, template)
        log(f"eval data: {eval_report.summary()}")
        return DataSplits(train=samples, eval=eval_samples, report=report, eval_report=eval_report)
    train_idx, eval_idx = split_eval(len(samples), cfg.data.eval_fraction, cfg.data.max_eval_samples, cfg.train.seed)
    if eval_idx:
        log(f"eval: holding out {len(eval_idx)} of {len(samples)} samples (data.eval_fraction="
            f"{cfg.data.eval_fraction})")
    return DataSplits(train=[samples[i] for i in train_idx], eval=[samples[i] for i in eval_idx], report=report)
