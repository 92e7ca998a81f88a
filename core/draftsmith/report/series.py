"""What ``draftsmith report`` reads: a run directory's ``metrics.jsonl`` and ``config.yaml`` and the JSON files of
``draftsmith eval --json``, turned into named series and eval results.

Torch-free and matplotlib-free on purpose: reading and validating the inputs is the part that fails on bad input,
so it fails fast with one clear line (``file:line`` for a malformed record) before anything heavy is imported, and
the tests can check the plotted values against what this module read.

Per-position acceptance comes under different names per method — EAGLE ``acc_0, acc_1, ...`` (0-based TTT step),
DFlash/DSpark ``acc_k`` (0-based drafted slot), DSpark ``accept_rate@1, ...`` (1-based slot, mean α), others
``acc@k`` — so every family is normalised here to a 1-based position ``k`` and plotted per family.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"

# (pattern, family name shown on the page, offset added to the number to make it a 1-based position)
POSITION_FAMILIES = (
    (re.compile(r"^acc_(\d+)$"), "acc_k", 1),
    (re.compile(r"^acc@(\d+)$"), "acc@k", 0),
    (re.compile(r"^accept_rate@(\d+)$"), "accept_rate@k", 0),
)
FAMILY_MEANING = {
    "acc_k": "accuracy of the draft at position k (teacher-forced)",
    "acc@k": "acceptance at position k",
    "accept_rate@k": "mean acceptance probability α at slot k",
}
NON_FINITE = {"nan": math.nan, "+nan": math.nan, "-nan": math.nan, "inf": math.inf, "+inf": math.inf,
              "infinity": math.inf, "+infinity": math.inf, "-inf": -math.inf, "-infinity": -math.inf}


def as_number(value: Any) -> float | None:
    """A metric value as a float: numbers, and the strings the jsonl tracker writes for non-finite values."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        return NON_FINITE.get(value.strip().lower())
    return None


def position_key(key: str) -> tuple[str, int] | None:
    """``(family, 1-based position)`` of a per-position acceptance key, else None."""
    for pattern, family, offset in POSITION_FAMILIES:
        m = pattern.match(key)
        if m:
            return family, int(m.group(1)) + offset
    return None


@dataclasses.dataclass
class Series:
    """One metric of one split over steps (non-finite values kept as they were logged)."""

    key: str  # the metrics.jsonl key, e.g. "loss", "acc_0", "accept_rate@3"
    split: str  # "train" or "eval"
    steps: list[int]
    values: list[float]

    @property
    def non_finite(self) -> int:
        return sum(not math.isfinite(v) for v in self.values)


@dataclasses.dataclass
class RunData:
    """A training run as the report sees it."""

    run_dir: Path
    records: dict[str, list[dict[str, Any]]]  # split -> records, sorted by step, one per step
    events: list[dict[str, Any]]
    config: dict[str, Any] | None
    config_text: str | None
    notes: list[str] = dataclasses.field(default_factory=list)  # things the page should say (skipped line...)

    @property
    def method(self) -> str | None:
        return _get(self.config, "method")

    @property
    def target(self) -> str | None:
        return _get(self.config, "target", "path")

    @property
    def max_steps(self) -> int | None:
        return _get(self.config, "train", "max_steps")

    @property
    def last_step(self) -> int | None:
        steps = [r["step"] for recs in self.records.values() for r in recs]
        return max(steps) if steps else None

    @property
    def resumes(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == "resume"]

    def split(self, name: str) -> list[dict[str, Any]]:
        return self.records.get(name, [])

    def series(self, split: str, key: str) -> Series | None:
        """``key`` over the records of ``split`` that carry it as a number; None when none does."""
        steps, values = [], []
        for record in self.split(split):
            value = as_number(record.get(key))
            if value is not None:
                steps.append(record["step"])
                values.append(value)
        return Series(key, split, steps, values) if steps else None

    def keys(self, split: str) -> list[str]:
        """Numeric keys of ``split`` in first-seen order."""
        seen: dict[str, None] = {}
        for record in self.split(split):
            for key, value in record.items():
                if key not in ("step", "split") and as_number(value) is not None:
                    seen.setdefault(key, None)
        return list(seen)

    def acceptance(self, split: str) -> dict[str, dict[int, Series]]:
        """Per-position acceptance of ``split``: family -> 1-based position -> series (positions sorted)."""
        out: dict[str, dict[int, Series]] = {}
        for key in self.keys(split):
            found = position_key(key)
            if found is not None:
                family, k = found
                series = self.series(split, key)
                if series is not None:
                    out.setdefault(family, {})[k] = series
        return {family: dict(sorted(by_k.items())) for family, by_k in out.items()}

    def final(self, split: str) -> dict[str, Any] | None:
        records = self.split(split)
        return records[-1] if records else None


def _get(mapping: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(mapping, dict):
            return None
        mapping = mapping.get(key)
    return mapping


def read_metrics(path: Path) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]], list[str]]:
    """Records by split, events, and notes. A malformed line is a :class:`DataError` naming ``file:line``; an
    unterminated last line that does not parse (a run writing it right now) is skipped with a note. A step
    logged twice in a split (redone after a resume) keeps its later record."""
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    by_split: dict[str, dict[int, dict[str, Any]]] = {}
    events: list[dict[str, Any]] = []
    notes: list[str] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines) and not text.endswith("\n"):
                notes.append(f"{where}: incomplete last line skipped (is the run still writing it?)")
                continue
            raise DataError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
        step = record.get("step")
        if isinstance(step, bool) or not isinstance(step, int):
            raise DataError(f"{where}: 'step' must be an integer, got {step!r}")
        if "event" in record:
            events.append(record)
            continue
        split = record.get("split")
        if not isinstance(split, str) or not split:
            raise DataError(f"{where}: a record needs 'split' (train/eval) or 'event', got {sorted(record)[:6]}")
        by_split.setdefault(split, {})[step] = record
    records = {split: [recs[s] for s in sorted(recs)] for split, recs in by_split.items()}
    return records, events, notes


def read_config(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    if not path.is_file():
        return None, None
    import yaml

    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if values is not None and not isinstance(values, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of config sections")
    return values or {}, text


def read_run(run_dir: str | Path) -> RunData:
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise ConfigError(f"run directory {str(run_dir)!r} does not exist")
    if not run_dir.is_dir():
        raise ConfigError(f"{str(run_dir)!r} is not a directory (expected a `draftsmith train` output directory)")
    metrics = run_dir / METRICS_FILE
    if not metrics.is_file():
        raise DataError(f"{run_dir}: no {METRICS_FILE} (is it a `draftsmith train` output directory?)")
    records, events, notes = read_metrics(metrics)
    if not records:
        raise DataError(f"{metrics}: no train or eval records yet (the first is written at step train.log_every)")
    config, config_text = read_config(run_dir / CONFIG_FILE)
    if config is None:
        notes.append(f"{run_dir / CONFIG_FILE} not found: method, target and config summary unknown")
    return RunData(run_dir, records, events, config, config_text, notes)


# -- eval JSON files ---------------------------------------------------------------------------------------------
GENERIC_DIR_NAMES = {"final", "draft", "model", "export", "exported", "checkpoints", "checkpoint", "best", "last",
                     "latest", "output", "outputs", "out"}
STEP_DIR = re.compile(r"^step[_-]?0*(\d+)$")


@dataclasses.dataclass
class EvalResult:
    """One ``draftsmith eval --json`` report."""

    path: Path
    label: str  # short unique name on the plots (set by read_evals)
    method: str | None
    draft: str | None
    target: str | None
    tau: float
    conditional_acceptance: list[float]
    acceptance_rate: float | None
    tokens_per_second: float | None
    target_tokens_per_second: float | None
    speedup: float | None
    speedup_bound: float | None
    lossless: str  # "passed", "FAILED" or "not checked"
    prompts: int | None
    max_new_tokens: int | None
    num_draft_tokens: int | None
    sampling: str


def _sampling_text(sampling: Any) -> str:
    if not isinstance(sampling, dict):
        return "?"
    t = as_number(sampling.get("temperature"))
    if t is None or t == 0:
        return "greedy"
    return f"T={t:g}, top-p {sampling.get('top_p')}, top-k {sampling.get('top_k')}"


def _lossless_text(lossless: Any) -> str:
    if not isinstance(lossless, dict) or not lossless.get("checked"):
        return "not checked"
    return "passed" if lossless.get("ok") else "FAILED"


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def read_eval(path: str | Path) -> EvalResult:
    path = Path(path)
    hint = "expected the output of `draftsmith eval --json` (stdout only)"
    if not path.is_file():
        raise DataError(f"eval file {str(path)!r} does not exist" if not path.exists()
                        else f"eval file {str(path)!r} is not a file")
    try:
        info = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); {hint}") \
            from None
    if not isinstance(info, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(info).__name__}; {hint}")
    missing = [k for k in ("tau", "conditional_acceptance") if k not in info]
    if missing:
        raise DataError(f"{path}: not a `draftsmith eval --json` report (missing {', '.join(map(repr, missing))})")
    tau = as_number(info["tau"])
    if tau is None:
        raise DataError(f"{path}: 'tau' must be a number, got {info['tau']!r}")
    ca = info["conditional_acceptance"]
    if not isinstance(ca, list) or any(as_number(a) is None for a in ca):
        raise DataError(f"{path}: 'conditional_acceptance' must be a list of numbers, got {ca!r:.80}")
    number = (lambda key: as_number(info.get(key)))
    return EvalResult(
        path=path, label="", method=info.get("method") if isinstance(info.get("method"), str) else None,
        draft=str(info["draft"]) if info.get("draft") is not None else None,
        target=str(info["target"]) if info.get("target") is not None else None,
        tau=tau, conditional_acceptance=[as_number(a) for a in ca], acceptance_rate=number("acceptance_rate"),
        tokens_per_second=number("tokens_per_second"), target_tokens_per_second=number("target_tokens_per_second"),
        speedup=number("speedup"), speedup_bound=number("speedup_bound"), lossless=_lossless_text(info.get("lossless")),
        prompts=_int_or_none(info.get("prompts")), max_new_tokens=_int_or_none(info.get("max_new_tokens")),
        num_draft_tokens=_int_or_none(info.get("num_draft_tokens")), sampling=_sampling_text(info.get("sampling")))


def draft_name(draft: str | None) -> str:
    """The meaningful last part of a draft path: ``runs/e3/final`` → ``e3``,
    ``runs/e3/checkpoints/step_00000030`` → ``e3@30``; "" when nothing meaningful is left."""
    if not draft:
        return ""
    parts = [p for p in Path(draft).parts if p not in ("/", "", ".", "..")]
    step = ""
    while parts:
        last = parts[-1]
        m = STEP_DIR.match(last)
        if m and not step:
            step = f"@{int(m.group(1))}"
        elif last.lower() not in GENERIC_DIR_NAMES:
            return last + step
        parts.pop()
    return step.lstrip("@") and f"step{step}"


def assign_labels(evals: list[EvalResult]) -> None:
    """Short labels, unique: the draft's name (else its method), then + method, then + a counter."""
    base = [draft_name(e.draft) or e.method or e.path.stem for e in evals]
    labels = list(base)
    for i, e in enumerate(evals):
        if base.count(base[i]) > 1 and e.method and e.method != base[i]:
            labels[i] = f"{base[i]} ({e.method})"
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):
        if labels.count(label) > 1:
            seen[label] = seen.get(label, 0) + 1
            labels[i] = f"{label} #{seen[label]}"
    for e, label in zip(evals, labels):
        e.label = label


def read_evals(paths: list[str | Path] | tuple[str | Path, ...]) -> list[EvalResult]:
    evals = [read_eval(p) for p in paths]
    assign_labels(evals)
    return evals
