"""Columnar training data: parquet files, Arrow IPC files and ``datasets`` ``save_to_disk`` directories.

:mod:`.records` reads JSON text itself; these formats go through the ``datasets`` library instead, and three
things about them live here rather than there:

* **streaming** — a parquet or ``*.arrow`` file is read with ``datasets.load_dataset(kind, data_files=...,
  streaming=True)``: record batches stream from the local file and nothing is converted or copied into the
  Hugging Face cache (the one thing written there is an empty lock file). A ``save_to_disk`` directory is
  memory-mapped in place by ``datasets.load_from_disk``. ``datasets`` is imported only when such a file is met,
  with ``HF_DATASETS_OFFLINE`` / ``HF_HUB_OFFLINE`` set for the call when unset: nothing is fetched from the hub.
* **None-filling** — an Arrow struct column has one set of fields for every row, so a message written without
  ``tool_calls`` or ``name`` reads back with ``"tool_calls": None, "name": None`` (and a tool schema gets every
  other tool's parameters as ``None``). :func:`plain_row` drops every None-valued key — of the row and of the
  dicts inside it — so the row is what was written, and chat templates never see keys set to None. Arrays
  (numpy, from a dataset saved with a numpy format) become lists; a ``tools`` column stored as a JSON string
  (usual for columnar data, as tool schemas differ in shape) is decoded.
* **row sources** — each row comes with its 1-based row number, for ``file:row N`` in error messages.

Torch-free; pyarrow (a dependency of ``datasets``) only reads the schema, so a broken file or one without any
known column is one clear error before any row is read.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
from pathlib import Path
from typing import Any, Iterator

from ..errors import DataError

SUFFIXES = (".parquet", ".arrow")
DATASET_FILES = ("state.json", "dataset_info.json")  # a Dataset.save_to_disk directory (metadata, not data)
DATASET_DICT_FILE = "dataset_dict.json"  # a DatasetDict.save_to_disk directory: one sub-directory per split
KNOWN_COLUMNS = ("messages", "conversations", "input_ids")
INSTALL_HINT = "pip install 'draftsmith[datasets]'"


def is_columnar_file(path: Path) -> bool:
    return path.suffix in SUFFIXES


def is_dataset_dir(path: Path) -> bool:
    """A directory written by ``Dataset.save_to_disk`` (its ``state.json`` / ``dataset_info.json``)."""
    return any((path / name).is_file() for name in DATASET_FILES)


def is_dataset_dict_dir(path: Path) -> bool:
    return (path / DATASET_DICT_FILE).is_file()


def dataset_dict_error(path: Path) -> DataError:
    """A DatasetDict directory holds several splits: the user names one."""
    try:
        splits = [str(s) for s in json.loads((path / DATASET_DICT_FILE).read_text(encoding="utf-8"))["splits"]]
    except (OSError, ValueError, KeyError, TypeError):
        splits = sorted(q.name for q in path.iterdir() if q.is_dir() and is_dataset_dir(q))
    example = path / splits[0] if splits else path / "SPLIT"
    return DataError(f"{str(path)!r} is a DatasetDict saved with save_to_disk (splits: "
                     f"{', '.join(splits) or 'none found'}); point the data path at one split directory, "
                     f"e.g. {str(example)!r}")


def dataset_dir_files(path: Path) -> list[Path]:
    """The Arrow shards of a ``save_to_disk`` directory (what identifies its data), sorted."""
    return sorted(q for q in path.glob("*.arrow") if q.is_file())


def rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(row number from 1, plain row)`` of a parquet / arrow file or a ``save_to_disk`` directory."""
    kind = "save_to_disk directory" if path.is_dir() else f"{path.suffix[1:]} file"
    try:
        dataset = _open(path, kind)
        for n, row in enumerate(dataset, 1):
            yield n, plain_row(row)
    except DataError:
        raise
    except Exception as exc:  # pyarrow / datasets failing on the file itself: one line, never a traceback
        raise DataError(f"{path}: cannot read this {kind} ({_first_line(exc)})") from None


def _open(path: Path, kind: str) -> Any:
    with _offline():
        try:
            import datasets
        except ImportError:
            raise DataError(f"{path}: reading a {kind} needs the `datasets` library: {INSTALL_HINT}") from None
        if path.is_dir():
            if is_dataset_dict_dir(path):
                raise dataset_dict_error(path)
            dataset = datasets.load_from_disk(str(path)).with_format(None)  # python objects, whatever was saved
            columns = dataset.column_names
        else:
            columns = _schema_columns(path)
            dataset = datasets.load_dataset(path.suffix[1:], data_files=[glob.escape(str(path))], split="train",
                                            streaming=True)
    if not any(c in columns for c in KNOWN_COLUMNS):
        raise DataError(f"{path}: no 'messages', 'conversations' or 'input_ids' column (columns: "
                        f"{', '.join(columns) or 'none'}); draftsmith reads OpenAI messages, ShareGPT "
                        f"conversations or input_ids + loss_mask")
    return dataset


def _schema_columns(path: Path) -> list[str]:
    import pyarrow as pa

    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    with pa.memory_map(str(path)) as source:  # an Arrow IPC stream (what save_to_disk writes) or file
        try:
            return list(pa.ipc.open_stream(source).schema.names)
        except pa.ArrowInvalid:
            source.seek(0)
            return list(pa.ipc.open_file(source).schema.names)


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """No hub access while ``datasets`` is imported and opens a file (only variables that are unset)."""
    unset = [k for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE") if k not in os.environ]
    for k in unset:
        os.environ[k] = "1"
    try:
        yield
    finally:
        for k in unset:
            os.environ.pop(k, None)


def plain_row(row: dict[str, Any]) -> dict[str, Any]:
    """The row without None-valued keys (at any depth), arrays as lists and a JSON-string ``tools`` decoded."""
    out = _plain(row)
    tools = out.get("tools")
    if isinstance(tools, str):
        try:
            out["tools"] = json.loads(tools)
        except json.JSONDecodeError:
            pass  # left a string: parse_line says "'tools' must be a list"
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy arrays and scalars
        return _plain(value.tolist())
    return value


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
