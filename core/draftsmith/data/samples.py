"""Tokenised samples: records → ``(input_ids, loss_mask)`` with truncation, validation and a report.

Rules (the loss-mask problems users hit most):

* a sample whose mask is all zero (no assistant turn, or truncated before it) teaches nothing: dropped, counted;
* a chat sample whose mask is all ones usually means a template without assistant markers: kept, warned;
* samples are truncated to ``seq_len``; samples shorter than 2 tokens are dropped;
* pre-tokenised ids must lie inside the target vocabulary.

Torch-free (numpy arrays); the tokenizer is only needed for chat records.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError, DataError
from .chat import ChatEncoder
from .records import BadLine, ReadStats, read_records


@dataclasses.dataclass
class Sample:
    input_ids: np.ndarray  # (L,) int64
    loss_mask: np.ndarray  # (L,) uint8, 1 = supervised token (unshifted)
    source: str  # "file:line"

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


@dataclasses.dataclass
class DataReport:
    """What happened to every line: kept, skipped, dropped, truncated, warned."""

    read: ReadStats = dataclasses.field(default_factory=ReadStats)
    samples: int = 0
    chat_samples: int = 0
    token_samples: int = 0
    dropped_no_supervision: int = 0
    dropped_too_short: int = 0
    truncated: int = 0
    all_ones_chat: int = 0
    tokens: int = 0
    supervised_tokens: int = 0
    mask_mode: str | None = None  # "generation" | "prefix" | None (no chat data)

    def summary(self) -> str:
        frac = self.supervised_tokens / self.tokens if self.tokens else 0.0
        parts = [f"{self.samples} samples from {self.read.lines} lines in {self.read.files} file(s)",
                 f"{self.tokens} tokens, {self.supervised_tokens} supervised ({frac:.1%})"]
        if self.mask_mode:
            source = "generation tags" if self.mask_mode == "generation" else "prefix re-rendering"
            parts.append(f"assistant mask from {source}")
        dropped = []
        if self.read.bad_lines:
            dropped.append(f"{self.read.bad_lines} malformed skipped")
        if self.dropped_no_supervision:
            dropped.append(f"{self.dropped_no_supervision} with an all-zero loss mask dropped")
        if self.dropped_too_short:
            dropped.append(f"{self.dropped_too_short} shorter than 2 tokens dropped")
        if self.truncated:
            dropped.append(f"{self.truncated} truncated")
        return "; ".join(parts + dropped)

    def warnings(self) -> list[str]:
        out = []
        if self.all_ones_chat:
            out.append(f"{self.all_ones_chat} chat sample(s) have an all-ones loss mask: the chat template probably "
                       f"does not separate assistant turns (system/user tokens are being supervised)")
        if self.read.bad_lines:
            out.append(f"skipped {self.read.bad_lines} malformed line(s), e.g. {self.read.first_bad[0]}")
        return out


def load_samples(paths: str | Path | Sequence[str | Path], tokenizer: Any = None, *, seq_len: int,
                 on_bad_data: str = "error", vocab_size: int | None = None, chat_template: str | None = None,
                 max_samples: int = 0, chat_template_kwargs: dict | None = None) -> tuple[list[Sample], DataReport]:
    """Tokenised, validated samples of the data files and the report of what was dropped or warned.

    ``chat_template`` is the template text (see :func:`draftsmith.data.chat.resolve_template`); ``None`` uses
    the tokenizer's own; ``chat_template_kwargs`` are the keywords it reads (``enable_thinking``). Raises
    :class:`DataError` when nothing usable remains.
    """
    if seq_len < 2:
        raise ConfigError(f"seq_len must be at least 2, got {seq_len}")
    report = DataReport()
    samples: list[Sample] = []
    encoder: ChatEncoder | None = None
    for record in read_records(paths, on_bad_data=on_bad_data, stats=report.read):
        try:
            if record.is_chat:
                if encoder is None:
                    encoder = _encoder(tokenizer, chat_template, chat_template_kwargs)
                    report.mask_mode = encoder.mode
                try:
                    ids, mask = encoder.encode(record.messages, record.tools)
                except ConfigError:
                    raise
                except Exception as exc:  # a template error on this conversation
                    raise BadLine(f"{record.source}: cannot render with the chat template: "
                                  f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
            else:
                ids, mask = record.input_ids, record.loss_mask
                if vocab_size is not None and max(ids) >= vocab_size:
                    raise BadLine(f"{record.source}: token id {max(ids)} is outside the target vocabulary "
                                  f"(size {vocab_size})")
        except BadLine as bad:
            if on_bad_data == "error":
                raise
            report.read.bad_lines += 1
            if len(report.read.first_bad) < 3:
                report.read.first_bad.append(str(bad))
            continue
        sample = finish_sample(ids, mask, record.source, seq_len, record.is_chat, report)
        if sample is not None:
            samples.append(sample)
            if max_samples and len(samples) >= max_samples:
                break
    if not samples:
        raise DataError(_empty_message(paths, report))
    return samples, report


def _encoder(tokenizer: Any, chat_template: str | None, template_kwargs: dict | None = None) -> ChatEncoder:
    if tokenizer is None:
        raise ConfigError("chat data needs the target's tokenizer, but none is available")
    from .chat import resolve_template

    return ChatEncoder(tokenizer, chat_template or resolve_template(tokenizer), template_kwargs)


def finish_sample(ids: list[int], mask: list[int], source: str, seq_len: int, is_chat: bool,
            report: DataReport) -> Sample | None:
    if len(ids) != len(mask):  # a template/tokenizer inconsistency, never expected
        raise DataError(f"{source}: {len(ids)} tokens but {len(mask)} mask entries")
    if len(ids) > seq_len:
        ids, mask = ids[:seq_len], mask[:seq_len]
        report.truncated += 1
    if len(ids) < 2:
        report.dropped_too_short += 1
        return None
    mask_arr = np.asarray(mask, dtype=np.uint8)
    supervised = int(mask_arr.sum())
    if supervised == 0:
        report.dropped_no_supervision += 1
        return None
    if is_chat and supervised == len(mask_arr):
        report.all_ones_chat += 1
    report.samples += 1
    report.chat_samples += int(is_chat)
    report.token_samples += int(not is_chat)
    report.tokens += len(ids)
    report.supervised_tokens += supervised
    return Sample(np.asarray(ids, dtype=np.int64), mask_arr, source)


def _empty_message(paths: Any, report: DataReport) -> str:
    where = ", ".join(str(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths))
    if report.read.lines == 0:
        return f"dataset {where} is empty (no non-blank lines)"
    if report.dropped_no_supervision and not report.dropped_too_short and not report.read.bad_lines:
        hint = ("the chat template marks no assistant tokens" if report.mask_mode
                else "every loss_mask is all zeros")
        return (f"no usable samples in {where}: all {report.dropped_no_supervision} samples have an all-zero loss "
                f"mask ({hint}; chats need an assistant turn within seq_len)")
    return (f"no usable samples in {where}: {report.read.lines} lines, {report.read.bad_lines} malformed, "
            f"{report.dropped_no_supervision} with an all-zero loss mask, {report.dropped_too_short} too short")


def token_counts(samples: Sequence[Sample], vocab_size: int) -> np.ndarray:
    """Supervised-token frequencies over the target vocabulary (1-D int64), for ``Objective.prepare``."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for s in samples:
        ids = s.input_ids[s.loss_mask.astype(bool)]
        if ids.size and ids.max() >= vocab_size:
            raise DataError(f"{s.source}: token id {int(ids.max())} is outside the vocabulary (size {vocab_size})")
        counts += np.bincount(ids, minlength=vocab_size)
    return counts


def split_eval(num_samples: int, fraction: float, max_eval: int, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic (train indices, eval indices) holding out ``fraction`` of the samples (capped)."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"data.eval_fraction must be in [0, 1), got {fraction}")
    n_eval = int(num_samples * fraction)
    if max_eval:
        n_eval = min(n_eval, max_eval)
    if n_eval == 0:
        return list(range(num_samples)), []
    order = np.random.default_rng(seed).permutation(num_samples)
    held = sorted(int(i) for i in order[:n_eval])
    held_set = set(held)
    return [i for i in range(num_samples) if i not in held_set], held
