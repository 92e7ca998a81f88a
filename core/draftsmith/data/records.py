"""Reading training data: JSONL lines → validated, normalised records.

Three line formats are accepted (one per line, mixed files are fine):

* OpenAI ``{"messages": [{"role": ..., "content": ...}, ...], "tools": [...]?}``;
* ShareGPT ``{"conversations": [{"from": "human"|"gpt"|"system"|..., "value": ...}, ...]}`` (or OpenAI-style
  role/content items under ``conversations``), converted to OpenAI messages;
* pre-tokenised ``{"input_ids": [...], "loss_mask": [...]}`` (equal lengths, mask of 0/1).

A malformed line is a :class:`BadLine` carrying ``file:line`` and the reason; ``on_bad_data="error"`` raises it
as a :class:`~draftsmith.errors.DataError`, ``"skip"`` counts it. Torch-free.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from ..errors import DataError

ROLES = ("system", "developer", "user", "assistant", "tool")
# ShareGPT speaker names → OpenAI roles.
SHAREGPT_ROLES = {
    "system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
    "chatgpt": "assistant", "bard": "assistant", "bing": "assistant", "model": "assistant",
    "tool": "tool", "function": "tool", "observation": "tool", "function_response": "tool",
}


@dataclasses.dataclass
class Record:
    """One usable line: a chat (``messages``) or a pre-tokenised sample (``input_ids`` + ``loss_mask``)."""

    source: str  # "file:line"
    messages: list[dict[str, Any]] | None = None
    tools: list[Any] | None = None
    input_ids: list[int] | None = None
    loss_mask: list[int] | None = None

    @property
    def is_chat(self) -> bool:
        return self.messages is not None


class BadLine(DataError):
    """A malformed data line; the message starts with ``file:line``."""


def expand_paths(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    """Data files from paths that may be files or directories (every ``*.jsonl`` / ``*.json`` inside, sorted)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.suffix in (".jsonl", ".json") and q.is_file())
            if not found:
                raise DataError(f"data directory {str(p)!r} contains no *.jsonl files")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"data file {str(p)!r} does not exist")
    return files


def _text(content: Any, where: str) -> str:
    """Message content as a string: OpenAI content-part lists are joined from their text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and part.get("type", "text") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                raise ValueError(f"{where}: only text content parts are supported, got {str(part)[:60]!r}")
        return "".join(parts)
    raise ValueError(f"{where}: content must be a string or a list of text parts, got {type(content).__name__}")


def _openai_messages(items: Any, key: str) -> list[dict[str, Any]]:
    if not isinstance(items, list):
        raise ValueError(f"'{key}' must be a list of messages, got {type(items).__name__}")
    if not items:
        raise ValueError(f"'{key}' is empty")
    out = []
    for i, msg in enumerate(items):
        where = f"{key}[{i}]"
        if not isinstance(msg, dict):
            raise ValueError(f"{where} must be an object, got {type(msg).__name__}")
        if "role" in msg:
            role = msg["role"]
            if role not in ROLES:
                raise ValueError(f"{where}: unknown role {role!r} (expected one of {', '.join(ROLES)})")
            if "content" not in msg and not msg.get("tool_calls"):
                raise ValueError(f"{where}: message has no 'content'")
            message = dict(msg)
            message["content"] = _text(msg.get("content"), where)
        elif "from" in msg:  # ShareGPT
            speaker = str(msg["from"]).lower()
            if speaker not in SHAREGPT_ROLES:
                raise ValueError(f"{where}: unknown ShareGPT speaker {msg['from']!r} "
                                 f"(expected one of {', '.join(sorted(SHAREGPT_ROLES))})")
            if "value" not in msg:
                raise ValueError(f"{where}: ShareGPT turn has no 'value'")
            message = {"role": SHAREGPT_ROLES[speaker], "content": _text(msg["value"], where)}
        else:
            raise ValueError(f"{where}: a message needs 'role' and 'content' (or ShareGPT 'from' and 'value')")
        out.append(message)
    return out


def _token_list(values: Any, key: str, *, binary: bool = False) -> list[int]:
    if not isinstance(values, list) or not values:
        raise ValueError(f"'{key}' must be a non-empty list of integers")
    for i, v in enumerate(values):
        if isinstance(v, bool):
            if binary:  # true/false are fine in a mask
                continue
            raise ValueError(f"'{key}'[{i}] is not an integer: {v!r}")
        if not isinstance(v, int):
            raise ValueError(f"'{key}'[{i}] is not an integer: {v!r}")
        if binary and v not in (0, 1):
            raise ValueError(f"'{key}'[{i}] must be 0 or 1, got {v!r}")
        if v < 0:
            raise ValueError(f"'{key}'[{i}] is negative: {v}")
    return [int(v) for v in values]


def parse_line(obj: Any, source: str) -> Record:
    """A validated :class:`Record` from one decoded JSON line (raises :class:`BadLine`)."""
    try:
        if not isinstance(obj, dict):
            raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
        if "input_ids" in obj:
            ids = _token_list(obj["input_ids"], "input_ids")
            if "loss_mask" not in obj:
                raise ValueError("pre-tokenised sample has 'input_ids' but no 'loss_mask'")
            mask = _token_list(obj["loss_mask"], "loss_mask", binary=True)
            if len(mask) != len(ids):
                raise ValueError(f"'loss_mask' has {len(mask)} entries but 'input_ids' has {len(ids)}")
            return Record(source, input_ids=ids, loss_mask=mask)
        for key in ("messages", "conversations"):
            if key in obj:
                tools = obj.get("tools")
                if tools is not None and not isinstance(tools, list):
                    raise ValueError("'tools' must be a list")
                return Record(source, messages=_openai_messages(obj[key], key), tools=tools)
        raise ValueError(f"no 'messages', 'conversations' or 'input_ids' key (keys: {sorted(obj)[:6]})")
    except ValueError as exc:
        raise BadLine(f"{source}: {exc}") from None


@dataclasses.dataclass
class ReadStats:
    files: int = 0
    lines: int = 0  # non-blank lines
    bad_lines: int = 0  # skipped malformed lines (on_bad_data=skip)
    first_bad: list[str] = dataclasses.field(default_factory=list)  # a few examples for the report


def read_records(paths: str | Path | Sequence[str | Path], *, on_bad_data: str = "error",
                 stats: ReadStats | None = None) -> Iterator[Record]:
    """Records of every non-blank line of the data files, in order."""
    if on_bad_data not in ("error", "skip"):
        raise DataError(f"on_bad_data must be 'error' or 'skip', got {on_bad_data!r}")
    stats = stats if stats is not None else ReadStats()
    for path in expand_paths(paths):
        stats.files += 1
        for lineno, line in _lines(path):
            stats.lines += 1
            source = f"{path}:{lineno}"
            try:
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise BadLine(f"{source}: invalid JSON ({exc.msg} at column {exc.colno})") from None
                record = parse_line(obj, source)
            except BadLine as bad:
                if on_bad_data == "error":
                    raise
                stats.bad_lines += 1
                if len(stats.first_bad) < 3:
                    stats.first_bad.append(str(bad))
                continue
            yield record


def _lines(path: Path) -> Iterable[tuple[int, str]]:
    try:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if line.strip():
                    yield lineno, line
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
