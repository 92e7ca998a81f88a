"""The data side of a run's setup: the target tokenizer (loaded lazily), chat template, samples and splits, and
the offline feature cache's manifest check. Split from :mod:`draftsmith.train.setup`, which builds the models."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError, DraftsmithError
from .config import RunConfig


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
                        vocab_size=vocab_size, chat_template=template, max_samples=max_samples,
                        chat_template_kwargs=config.data.chat_template_kwargs)


class _LazyProxy:
    """Stands in for a tokenizer until a chat record needs it (then loads it, or raises its load error)."""

    def __init__(self, lazy: LazyTokenizer) -> None:
        object.__setattr__(self, "_lazy", lazy)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lazy.get(), name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._lazy.get()(*args, **kwargs)


def expected_manifest(setup: Any) -> dict[str, Any]:
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
        "chat_template_kwargs": dict(cfg.data.chat_template_kwargs),
        "on_bad_data": cfg.data.on_bad_data,
        "max_samples": cfg.data.max_samples,
    }


def check_cache(setup: Any) -> None:
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
