"""Training data in the formats users have: parquet, Arrow IPC (stream and file), ``datasets`` save_to_disk
directories, JSON-array files and directories mixing them give exactly the samples of the equivalent JSONL
(Arrow's None-filled struct fields dropped, bool/int8 masks, numpy-formatted datasets); errors name
``file:row N``, skip mode counts; DatasetDict directories, files without known columns, hub dataset names and a
missing ``datasets`` library are one clear line; the CLI (inspect-data, a short eagle3 run) reads parquet."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import datasets
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from draftsmith.data.features import data_identity
from draftsmith.data.inspect import statistics
from draftsmith.data.records import ReadStats, data_sources, expand_paths, read_records
from draftsmith.data.samples import load_samples
from draftsmith.errors import ConfigError, DataError

from support import REPO
from support.cli import run_cli, subprocess_env
from support.tiny import CHATML_GEN, make_tokenizer

TINY_TARGET = REPO / "examples" / "tiny-target"
COLUMNS = ("messages", "tools", "conversations", "input_ids", "loss_mask")


def _tool(name: str, arg: str) -> dict:
    return {"type": "function", "function": {"name": name, "description": f"{name} tool", "parameters": {
        "type": "object", "properties": {arg: {"type": "string"}}, "required": [arg]}}}


# Every record format in one file, as a columnar writer stores them: the rows do not share their keys, so Arrow
# fills the absent ones (columns, message fields, tool-schema properties) with None.
ROWS = [
    {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi", "name": "ann"},
                  {"role": "assistant", "content": "hello"}],
     "tools": [_tool("weather", "city")]},
    {"messages": [{"role": "user", "content": "look it up"},
                  {"role": "assistant", "content": "",
                   "tool_calls": [{"id": "c1", "type": "function",
                                   "function": {"name": "search", "arguments": "{\"query\": \"x\"}"}}]},
                  {"role": "tool", "content": "found x"}, {"role": "assistant", "content": "it is x"}],
     "tools": [_tool("search", "query")]},
    {"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]},
    {"input_ids": [5, 6, 7, 8], "loss_mask": [0, 1, 1, 1]},
    {"messages": [{"role": "user", "content": "bye"}, {"role": "assistant", "content": "see you"}]},
]

# ChatML that renders a message's `name` when the key is present and the tools as JSON: a None-valued `name`
# would fail to render, a None-filled tool schema would change the tokens.
NAMED = ("{%- if tools %}{{- '<|im_start|>tools\\n' + (tools | tojson) + '<|im_end|>\\n' }}{%- endif %}"
         + CHATML_GEN.replace("'<|im_start|>' + message['role'] + '\\n'",
                              "'<|im_start|>' + message['role'] + ((' ' + message['name']) if message['name'] "
                              "is defined else '') + '\\n'"))


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def table(rows: list) -> pa.Table:
    # (from_pylist would take its columns from the first row only) every column any row has
    names = dict.fromkeys(k for r in rows for k in r)
    return pa.Table.from_pydict({n: [r.get(n) for r in rows] for n in names})


def write_parquet(path: Path, rows: list) -> Path:
    pq.write_table(table(rows), path)
    return path


def write_arrow(path: Path, rows: list, *, stream: bool = True) -> Path:
    table_ = table(rows)
    with pa.OSFile(str(path), "wb") as sink:
        writer = (pa.ipc.new_stream if stream else pa.ipc.new_file)(sink, table_.schema)
        writer.write_table(table_)
        writer.close()
    return path


def hf_dataset(rows: list) -> datasets.Dataset:
    # from_list takes its columns from the first row: give every row every column (None where absent)
    return datasets.Dataset.from_list([{c: r.get(c) for c in COLUMNS} for r in rows])


WRITERS = {
    "parquet (pyarrow)": lambda d, rows: write_parquet(d / "data.parquet", rows),
    "parquet (datasets)": lambda d, rows: (hf_dataset(rows).to_parquet(str(d / "data.parquet")), d / "data.parquet")[1],
    "arrow stream": lambda d, rows: write_arrow(d / "data.arrow", rows),
    "arrow file": lambda d, rows: write_arrow(d / "data.arrow", rows, stream=False),
    "save_to_disk": lambda d, rows: (hf_dataset(rows).save_to_disk(str(d / "saved")), d / "saved")[1],
    "json array": lambda d, rows: ((d / "data.json").write_text(json.dumps(rows, indent=2)), d / "data.json")[1],
}


def samples_of(path, tok, **kw):
    samples, report = load_samples(path, tok, seq_len=512, vocab_size=len(tok), chat_template=NAMED, **kw)
    return [(s.source.rsplit(":", 1)[-1], s.input_ids.tolist(), s.loss_mask.tolist()) for s in samples], report


# -- same samples as JSONL -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def from_jsonl(tmp_path_factory, tok):
    got, _ = samples_of(write_jsonl(tmp_path_factory.mktemp("jsonl") / "data.jsonl", ROWS), tok)
    return [(int(line), ids, mask) for line, ids, mask in got]


@pytest.mark.parametrize("kind", list(WRITERS))
def test_every_format_gives_the_samples_of_the_equivalent_jsonl(tmp_path, tok, from_jsonl, kind):
    path = WRITERS[kind](tmp_path, ROWS)
    got, report = samples_of(path, tok)
    assert [(int(src.removeprefix("row ")), ids, mask) for src, ids, mask in got] == from_jsonl
    assert all(src.startswith("row ") for src, _, _ in got)
    assert report.read.files == 1 and report.read.lines == len(ROWS) and report.read.bad_lines == 0


def test_arrow_none_filling_is_dropped_from_rows_messages_and_tools(tmp_path):
    path = write_parquet(tmp_path / "d.parquet", ROWS)
    # the pitfall is real: Arrow hands back every struct field of every message
    raw = pq.read_table(path).to_pylist()
    assert raw[0]["messages"][0]["tool_calls"] is None and raw[2]["messages"] is None
    records = list(read_records(path))
    want = list(read_records(write_jsonl(tmp_path / "d.jsonl", ROWS)))
    assert [(r.messages, r.tools, r.input_ids, r.loss_mask) for r in records] == \
        [(r.messages, r.tools, r.input_ids, r.loss_mask) for r in want]
    assert records[0].messages[1] == {"role": "user", "content": "hi", "name": "ann"}
    assert records[0].tools[0]["function"]["parameters"]["properties"] == {"city": {"type": "string"}}


def test_tools_stored_as_a_json_string_are_decoded(tmp_path):
    rows = [{"messages": r["messages"], "tools": json.dumps(r["tools"])} for r in ROWS[:2]]
    records = list(read_records(write_parquet(tmp_path / "d.parquet", rows)))
    assert [r.tools for r in records] == [ROWS[0]["tools"], ROWS[1]["tools"]]


def test_bool_and_int8_masks_and_numpy_formatted_datasets(tmp_path, tok):
    ids = pa.array([[5, 6, 7], [8, 9, 10, 11]], pa.list_(pa.int32()))
    want = [[0, 1, 1], [1, 0, 1, 1]]
    for name, mask in (("bool", pa.array([[bool(v) for v in m] for m in want], pa.list_(pa.bool_()))),
                       ("int8", pa.array(want, pa.list_(pa.int8())))):
        path = tmp_path / f"{name}.parquet"
        pq.write_table(pa.table({"input_ids": ids, "loss_mask": mask}), path)
        got, _ = samples_of(path, tok)
        assert [m for _, _, m in got] == want and [i for _, i, _ in got] == ids.to_pylist(), name
    # a dataset saved with a numpy format comes back as numpy arrays unless reset: rows are plain lists
    saved = tmp_path / "np"
    datasets.Dataset.from_dict({"input_ids": ids.to_pylist(), "loss_mask": want}).with_format("numpy") \
        .save_to_disk(str(saved))
    assert type(datasets.load_from_disk(str(saved))[0]["input_ids"]).__module__ == "numpy"
    records = list(read_records(saved))
    assert [r.loss_mask for r in records] == want and all(type(r.input_ids) is list for r in records)
    # pandas-written parquet (int64 lists, bool masks)
    pd.DataFrame({"input_ids": ids.to_pylist(), "loss_mask": [[bool(v) for v in m] for m in want]}) \
        .to_parquet(tmp_path / "pd.parquet")
    assert [r.loss_mask for r in read_records(tmp_path / "pd.parquet")] == want


# -- errors and skipping -------------------------------------------------------------------------------------------
def _numbered_rows(n: int, bad: dict[int, dict]) -> list[dict]:
    return [bad.get(i, {"input_ids": [5, 6, i], "loss_mask": [0, 1, 1]}) for i in range(1, n + 1)]


def test_bad_rows_name_file_and_row_and_skip_mode_counts_them(tmp_path, tok):
    bad = {5: {"input_ids": [5, 6], "loss_mask": [0, 1, 1]},
           17: {"messages": [{"role": "wizard", "content": "x"}]}}
    path = write_parquet(tmp_path / "train.parquet", _numbered_rows(20, bad))
    with pytest.raises(DataError) as err:
        load_samples(path, tok, seq_len=64)
    assert str(err.value) == f"{path}:row 5: 'loss_mask' has 3 entries but 'input_ids' has 2"
    samples, report = load_samples(path, tok, seq_len=64, on_bad_data="skip")
    assert len(samples) == 18 and report.read.lines == 20 and report.read.bad_lines == 2
    assert report.read.first_bad[1].startswith(f"{path}:row 17: messages[0]: unknown role 'wizard'")
    assert any("skipped 2 malformed" in w for w in report.warnings())
    arr = tmp_path / "d.json"
    arr.write_text(json.dumps(_numbered_rows(3, {2: {"input_ids": [1, -2], "loss_mask": [1, 1]}})))
    with pytest.raises(DataError, match=rf"^{arr}:row 2: 'input_ids'\[1\] is negative: -2$"):
        list(read_records(arr))


def test_files_without_known_columns_and_broken_files_are_one_line(tmp_path):
    path = write_parquet(tmp_path / "qa.parquet", [{"question": "q", "answer": "a"}])
    for mode in ("error", "skip"):
        with pytest.raises(DataError) as err:
            list(read_records(path, on_bad_data=mode))
        assert str(err.value).startswith(f"{path}: no 'messages', 'conversations' or 'input_ids' column "
                                         f"(columns: question, answer)")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=rf"^{broken}: cannot read this parquet file \(") as err:
        list(read_records(broken))
    assert "\n" not in str(err.value)
    bad_array = tmp_path / "bad.json"
    bad_array.write_text('[{"messages": []},\n  {oops}]')
    with pytest.raises(DataError, match=r"bad.json: invalid JSON array \(.* at line 2 column 4\)"):
        list(read_records(bad_array, on_bad_data="skip"))


# -- JSON files, directories, save_to_disk -------------------------------------------------------------------------
def test_json_files_are_arrays_or_json_lines(tmp_path):
    arr = tmp_path / "sharegpt.json"
    arr.write_bytes(b"\xef\xbb\xbf\n  " + json.dumps([ROWS[2], ROWS[4]], indent=1).encode())  # BOM, leading space
    assert [r.source for r in read_records(arr)] == [f"{arr}:row 1", f"{arr}:row 2"]
    lines = write_jsonl(tmp_path / "lines.json", [ROWS[2], ROWS[4]])  # a .json file of JSON lines: still lines
    assert [r.source for r in read_records(lines)] == [f"{lines}:1", f"{lines}:2"]


def test_mixed_directories_and_save_to_disk_datasets(tmp_path):
    d = tmp_path / "data"
    (d / "sub").mkdir(parents=True)
    write_jsonl(d / "a.jsonl", [ROWS[0]])
    (d / "b.json").write_text(json.dumps([ROWS[2]]))
    write_parquet(d / "c.parquet", [ROWS[3]])
    write_arrow(d / "sub" / "d.arrow", [ROWS[4]])
    hf_dataset(ROWS[:2]).save_to_disk(str(d / "sub" / "saved"))
    (d / "notes.txt").write_text("not data")
    saved = d / "sub" / "saved"
    assert {p.name for p in saved.iterdir()} == {"state.json", "dataset_info.json", "data-00000-of-00001.arrow"}
    # the dataset is one source: its shard and its metadata json files are not read on their own
    assert data_sources(d) == [d / "a.jsonl", d / "b.json", d / "c.parquet", d / "sub" / "d.arrow", saved]
    assert expand_paths(d)[-1] == saved / "data-00000-of-00001.arrow"  # what the feature cache hashes
    assert len(data_identity(expand_paths(d))["data_files"]) == 5
    stats = ReadStats()
    sources = [r.source.removeprefix(f"{d}/") for r in read_records(d, stats=stats)]
    assert sources == ["a.jsonl:1", "b.json:row 1", "c.parquet:row 1", "sub/d.arrow:row 1", "sub/saved:row 1",
                       "sub/saved:row 2"]
    assert stats.files == 5 and stats.lines == 6
    assert [r.source for r in read_records(saved)] == [f"{saved}:row 1", f"{saved}:row 2"]  # pointed at itself
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.md").write_text("x")
    with pytest.raises(DataError, match=r"contains no \*.jsonl, \*.json, \*.parquet or \*.arrow files"):
        data_sources(empty)


def test_a_dataset_dict_asks_for_one_split(tmp_path):
    dd = tmp_path / "ultrachat"
    datasets.DatasetDict({"train_sft": hf_dataset(ROWS[:1]), "test_sft": hf_dataset(ROWS[1:2])}).save_to_disk(str(dd))
    for given in (dd, tmp_path):  # the DatasetDict itself, or a directory holding one
        with pytest.raises(DataError) as err:
            data_sources(given)
        assert str(err.value) == (f"{str(dd)!r} is a DatasetDict saved with save_to_disk (splits: train_sft, "
                                  f"test_sft); point the data path at one split directory, e.g. "
                                  f"{str(dd / 'train_sft')!r}")
    assert [r.source for r in read_records(dd / "test_sft")] == [f"{dd / 'test_sft'}:row 1"]


# -- hub names, offline, missing datasets --------------------------------------------------------------------------
def test_a_hub_dataset_name_says_local_files_only(tmp_path, monkeypatch):
    from draftsmith.train.config import check_required, from_dict

    monkeypatch.chdir(tmp_path)
    hint = ("draftsmith reads local files only — if 'HuggingFaceH4/ultrachat_200k' is a Hugging Face hub dataset, "
            "download it with `hf download --repo-type dataset HuggingFaceH4/ultrachat_200k --local-dir DIR` and "
            "point {key} at DIR")
    with pytest.raises(DataError) as err:
        list(read_records(["HuggingFaceH4/ultrachat_200k"]))
    assert str(err.value).startswith("data file 'HuggingFaceH4/ultrachat_200k' does not exist; "
                                     + hint.format(key="the data path"))
    (tmp_path / "target").mkdir()
    for key in ("train", "eval"):
        write_jsonl(tmp_path / "a.jsonl", [ROWS[4]])
        data = {"train": ["a.jsonl"], key: ["HuggingFaceH4/ultrachat_200k"]}
        cfg = from_dict({"method": "eagle3", "target": {"path": "target"}, "data": data})
        with pytest.raises(ConfigError) as err:
            check_required(cfg)
        assert hint.format(key=f"data.{key}") in str(err.value) and "\n" not in str(err.value)
    # plain missing files (a data suffix, or a local first directory) get no hub hint
    (tmp_path / "data").mkdir()
    for missing in ("data/train", "owner/train.jsonl"):
        with pytest.raises(DataError) as err:
            data_sources([missing])
        assert str(err.value) == f"data file {missing!r} does not exist"


def test_without_datasets_columnar_files_say_how_to_install_and_jsonl_still_reads(tmp_path, monkeypatch):
    path = write_parquet(tmp_path / "d.parquet", ROWS)
    jsonl = write_jsonl(tmp_path / "d.jsonl", ROWS)
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` raises ImportError
    with pytest.raises(DataError) as err:
        list(read_records(path))
    assert str(err.value) == (f"{path}: reading a parquet file needs the `datasets` library: "
                              f"pip install 'draftsmith[datasets]'")
    arr = tmp_path / "d.json"
    arr.write_text(json.dumps(ROWS))
    assert len(list(read_records([jsonl, arr]))) == 2 * len(ROWS)  # text formats never need datasets


def test_datasets_is_imported_only_for_columnar_files_offline_and_nothing_is_cached(tmp_path):
    path = write_parquet(tmp_path / "d.parquet", ROWS)
    jsonl = write_jsonl(tmp_path / "d.jsonl", ROWS)
    code = (
        "import os, sys\n"
        "from draftsmith.data.records import read_records\n"
        f"assert len(list(read_records({str(jsonl)!r}))) == 5\n"
        "assert 'datasets' not in sys.modules\n"
        f"assert len(list(read_records({str(path)!r}))) == 5\n"
        "import datasets\n"
        "assert datasets.config.HF_HUB_OFFLINE\n"
        "assert 'HF_HUB_OFFLINE' not in os.environ and 'HF_DATASETS_OFFLINE' not in os.environ\n")
    env = {k: v for k, v in subprocess_env().items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    env["HF_HOME"] = str(tmp_path / "hf")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    cached = [p for p in (tmp_path / "hf").rglob("*") if p.is_file() and p.stat().st_size > 0]
    assert cached == []  # streamed from the file: no Arrow copy in the HF cache (at most empty lock files)


# -- the CLI -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_parquet(tmp_path_factory):
    rows = [json.loads(line) for line in (TINY_TARGET / "heldout-samples.jsonl").read_text().splitlines()]
    root = tmp_path_factory.mktemp("cli")
    return write_parquet(root / "chats.parquet", rows), TINY_TARGET / "heldout-samples.jsonl"


def test_inspect_data_on_parquet_matches_the_jsonl(tiny_parquet, cli_env):
    from draftsmith.train.setup import load_target_tokenizer

    parquet, jsonl = tiny_parquet
    out = run_cli(["inspect-data", "--target", str(TINY_TARGET), "--data", str(parquet), "--json"],
                  env=cli_env, timeout=120)
    assert out.returncode == 0, out.stderr
    samples, report = load_samples(jsonl, load_target_tokenizer(TINY_TARGET), seq_len=2048)
    want = statistics(samples, report)
    assert json.loads(out.stdout) == want and want["supervised_tokens"] > 0


def test_a_short_eagle3_run_trains_from_parquet(tiny_parquet, tmp_path):
    parquet, _ = tiny_parquet
    res = run_cli(["train", "--method", "eagle3", "--target", str(TINY_TARGET), "--data", str(parquet),
                   "--max-steps", "2", "--seq-len", "128", "--batch-size", "2", "--output-dir", str(tmp_path / "run"),
                   "--set", "train.eval_every=0", "--set", "train.log_every=1", "--set", "method_options.ttt_steps=2"],
                  env=subprocess_env(), timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "data: 8 samples from 8 lines in 1 file(s)" in res.stdout + res.stderr
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if json.loads(line).get("split") == "train"]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
