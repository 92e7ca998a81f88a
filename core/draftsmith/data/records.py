"""Reading training data: JSONL lines, JSON arrays, parquet / arrow rows → validated, normalised records.

Files: ``*.jsonl`` (one JSON object per line; any file that is not one of the others is read this way), ``*.json``
(a top-level JSON array of records when it starts with ``[``, else JSON lines), ``*.parquet`` and ``*.arrow``
files and ``datasets`` ``save_to_disk`` directories (:mod:`.columnar`), or directories mixing them.
Three record formats are accepted (mixed files are fine):

* OpenAI ``{"messages": [{"role": ..., "content": ...}, ...], "tools": [...]?}``;
* ShareGPT ``{"conversations": [{"from": "human"|"gpt"|"system"|..., "value": ...}, ...]}`` (or OpenAI-style
  role/content items under ``conversations``), converted to OpenAI messages;
* pre-tokenised ``{"input_ids": [...], "loss_mask": [...]}`` (equal lengths, mask of 0/1).

A malformed record is a :class:`BadLine` carrying ``file:line`` (``file:row N`` for array items and columnar
rows) and the reason; ``on_bad_data="error"`` raises it as a :class:`~draftsmith.errors.DataError`, ``"skip"``
counts it. Torch-free.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from ..errors import DataError
from . import columnar

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

    source: str  # "file:line", or "file:row N" for a JSON-array item or a columnar row
    messages: list[dict[str, Any]] | None = None
    tools: list[Any] | None = None
    input_ids: list[int] | None = None
    loss_mask: list[int] | None = None

    @property
    def is_chat(self) -> bool:
        return self.messages is not None


class BadLine(DataError):
    """A malformed data line; the message starts with ``file:line``."""


DATA_SUFFIXES = (".jsonl", ".json", *columnar.SUFFIXES)  # what a directory is searched for


def data_sources(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    """What :func:`read_records` reads, in order: data files and ``save_to_disk`` directories.

    A directory is a ``save_to_disk`` dataset itself, or is searched (recursively, sorted by path) for
    ``*.jsonl``, ``*.json``, ``*.parquet`` and ``*.arrow`` files and ``save_to_disk`` datasets — each dataset one
    source: its shards and metadata files are not read on their own.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    sources: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            sources.extend(_directory_sources(p))
        elif p.is_file():
            sources.append(p)
        else:
            raise DataError(f"data file {str(p)!r} does not exist{hub_hint(str(p))}")
    return sources


def expand_paths(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    """The data files behind :func:`data_sources` (a ``save_to_disk`` directory stands for its ``*.arrow``
    shards): what identifies the data, e.g. in the feature cache's manifest."""
    files: list[Path] = []
    for source in data_sources(paths):
        files.extend(columnar.dataset_dir_files(source) if source.is_dir() else [source])
    return files


def _directory_sources(root: Path) -> list[Path]:
    if columnar.is_dataset_dict_dir(root):
        raise columnar.dataset_dict_error(root)
    if columnar.is_dataset_dir(root):
        return [root]
    for meta in sorted(root.rglob(columnar.DATASET_DICT_FILE)):
        raise columnar.dataset_dict_error(meta.parent)
    dataset_dirs = {meta.parent for name in columnar.DATASET_FILES for meta in root.rglob(name)}
    dataset_dirs = {d for d in dataset_dirs if not any(e in d.parents for e in dataset_dirs)}  # outermost only
    files = [q for q in root.rglob("*") if q.suffix in DATA_SUFFIXES and q.is_file()
             and not any(d in q.parents for d in dataset_dirs)]
    found = sorted(files + list(dataset_dirs))
    if not found:
        raise DataError(f"data directory {str(root)!r} contains no *.jsonl, *.json, *.parquet or *.arrow files")
    return found


_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def hub_hint(path: str, key: str = "the data path") -> str:
    """For a missing data path that looks like a hub dataset name (``owner/name``, no data-file suffix, no local
    ``owner`` directory): how to get it, as a clause to append to the error; else ``""``."""
    if not _HUB_NAME.fullmatch(path) or path.endswith(DATA_SUFFIXES) or Path(path.split("/")[0]).exists():
        return ""
    return (f"; draftsmith reads local files only — if {path!r} is a Hugging Face hub dataset, download it with "
            f"`hf download --repo-type dataset {path} --local-dir DIR` and point {key} at DIR (or at the files "
            f"of one split in it)")


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
    """Records of every non-blank line (array item, row) of the data sources, in order."""
    if on_bad_data not in ("error", "skip"):
        raise DataError(f"on_bad_data must be 'error' or 'skip', got {on_bad_data!r}")
    stats = stats if stats is not None else ReadStats()
    for path in data_sources(paths):
        stats.files += 1
        for source, obj in _objects(path):
            stats.lines += 1
            try:
                if isinstance(obj, BadLine):  # a line that is not JSON
                    raise obj
                record = parse_line(obj, source)
            except BadLine as bad:
                if on_bad_data == "error":
                    raise
                stats.bad_lines += 1
                if len(stats.first_bad) < 3:
                    stats.first_bad.append(str(bad))
                continue
            yield record


def _objects(path: Path) -> Iterator[tuple[str, Any]]:
    """``(source, decoded object)`` of each non-blank line, JSON-array item or columnar row of one source; a
    line that is not JSON comes as its :class:`BadLine`."""
    if path.is_dir() or columnar.is_columnar_file(path):
        for n, row in columnar.rows(path):
            yield f"{path}:row {n}", row
    elif path.suffix == ".json" and _is_json_array(path):
        for n, item in enumerate(_json_array(path), 1):
            yield f"{path}:row {n}", item
    else:
        for lineno, line in _lines(path):
            source = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                obj = BadLine(f"{source}: invalid JSON ({exc.msg} at column {exc.colno})")
            yield source, obj


def _lines(path: Path) -> Iterable[tuple[int, str]]:
    try:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if line.strip():
                    yield lineno, line
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _is_json_array(path: Path) -> bool:
    """Whether the file's first non-blank character (after a UTF-8 byte-order mark) is ``[``."""
    with open(path, "rb") as fh:
        head = fh.read(4096).removeprefix(b"\xef\xbb\xbf")
        while head and not head.lstrip():
            head = fh.read(4096)
    return head.lstrip()[:1] == b"["


def _json_array(path: Path) -> list[Any]:
    try:
        items = json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON array ({exc.msg} at line {exc.lineno} column {exc.colno}); a .json "
                        f"file starting with '[' is read as one array of records") from None
    return items
