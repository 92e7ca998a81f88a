"""Data pipeline: JSONL formats, assistant-only masks (generation tags and prefix re-rendering), validation with
file:line, drop/warn rules, truncation, packing with per-document positions, collate, token counts, eval split,
and the inspect-data audit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from draftsmith.data.chat import ChatEncoder, resolve_template
from draftsmith.data.dataset import RowDataset, collate
from draftsmith.data.packing import pack_rows, single_rows
from draftsmith.data.records import read_records
from draftsmith.data.samples import load_samples, split_eval, token_counts
from draftsmith.errors import ConfigError, DataError

from support.tiny import CHATML_GEN, CHATML_PLAIN, make_target, make_tokenizer

CHAT = [
    {"role": "system", "content": "sys"},
    {"role": "user", "content": "ab"},
    {"role": "assistant", "content": "cd"},
    {"role": "user", "content": "e"},
    {"role": "assistant", "content": "fg"},
]


def write_jsonl(path: Path, rows: list) -> Path:
    with open(path, "w") as fh:
        for row in rows:
            fh.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def supervised_text(tok, ids, mask) -> str:
    return tok.decode([i for i, m in zip(ids, mask) if m])


# -- masks ---------------------------------------------------------------------------------------------------------
def test_generation_tag_mask_supervises_exactly_the_assistant_turns(tok):
    enc = ChatEncoder(tok, CHATML_GEN)
    assert enc.mode == "generation"
    ids, mask = enc.encode(CHAT)
    assert len(ids) == len(mask)
    assert supervised_text(tok, ids, mask) == "cd<|im_end|>fg<|im_end|>"
    # the prompt side is never supervised
    assert "sys" not in supervised_text(tok, ids, mask) and "ab" not in supervised_text(tok, ids, mask)


def test_prefix_rerendering_matches_generation_tags_up_to_the_template_suffix(tok):
    gen_ids, gen_mask = ChatEncoder(tok, CHATML_GEN).encode(CHAT)
    enc = ChatEncoder(tok, CHATML_PLAIN)
    assert enc.mode == "prefix"
    ids, mask = enc.encode(CHAT)
    assert ids == gen_ids  # same rendering
    # prefix re-rendering also supervises what the template appends after the turn (here the newline)
    assert supervised_text(tok, ids, mask) == "cd<|im_end|>\nfg<|im_end|>\n"
    extra = [i for i, (a, b) in enumerate(zip(gen_mask, mask)) if a != b]
    assert all(gen_mask[i] == 0 and mask[i] == 1 and tok.decode([ids[i]]) == "\n" for i in extra)
    assert len(extra) == 2


def test_prefix_rerendering_refuses_templates_that_rewrite_history(tok):
    # renders assistant turns differently once a later turn follows: prefixes are not prefixes
    template = ("{%- for m in messages %}{%- if m['role'] == 'assistant' and not loop.last %}"
                "{{- '<|im_start|>assistant\\n<|im_end|>\\n' }}{%- else %}"
                "{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{%- endif %}"
                "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
    with pytest.raises(ValueError, match="generation"):
        ChatEncoder(tok, template).encode(CHAT)


def test_missing_chat_template_is_a_clear_error():
    tok = make_tokenizer(chat_template=None)
    assert resolve_template(tok) is None
    with pytest.raises(ConfigError, match="chat template"):
        ChatEncoder(tok, None)


# -- formats and validation --------------------------------------------------------------------------------------
def test_openai_sharegpt_and_pretokenised_lines(tmp_path, tok):
    sharegpt = {"conversations": [{"from": "system", "value": "sys"}, {"from": "human", "value": "ab"},
                                  {"from": "gpt", "value": "cd"}, {"from": "human", "value": "e"},
                                  {"from": "gpt", "value": "fg"}]}
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                          {"role": "assistant", "content": "cd"}]}
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": CHAT}, sharegpt, parts,
                                              {"input_ids": [5, 6, 7, 8], "loss_mask": [0, 0, 1, 1]}])
    samples, report = load_samples(path, tok, seq_len=512, vocab_size=len(tok))
    assert len(samples) == 4 and report.chat_samples == 3 and report.token_samples == 1
    assert np.array_equal(samples[0].input_ids, samples[1].input_ids)  # ShareGPT == OpenAI form
    assert np.array_equal(samples[0].loss_mask, samples[1].loss_mask)
    assert supervised_text(tok, samples[2].input_ids.tolist(), samples[2].loss_mask) == "cd<|im_end|>"
    assert samples[3].input_ids.tolist() == [5, 6, 7, 8] and samples[3].loss_mask.tolist() == [0, 0, 1, 1]
    assert samples[0].source == f"{path}:1" and samples[3].source == f"{path}:4"


BAD_LINES = [
    ("{not json", "invalid JSON"),
    ('["a list"]', "expected a JSON object"),
    ('{"text": "no known key"}', "no 'messages'"),
    ('{"messages": []}', "is empty"),
    ('{"messages": [{"role": "wizard", "content": "x"}]}', "unknown role"),
    ('{"conversations": [{"from": "alien", "value": "x"}]}', "unknown ShareGPT speaker"),
    ('{"input_ids": [1, 2, 3]}', "no 'loss_mask'"),
    ('{"input_ids": [1, 2, 3], "loss_mask": [1, 1]}', "'loss_mask' has 2 entries"),
    ('{"input_ids": [1, 2, 3], "loss_mask": [1, 2, 1]}', "must be 0 or 1"),
    ('{"input_ids": [1, 9999], "loss_mask": [1, 1]}', "outside the target vocabulary"),
]


@pytest.mark.parametrize("line,reason", BAD_LINES)
def test_malformed_lines_name_file_and_line(tmp_path, tok, line, reason):
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": CHAT}, "", line])
    with pytest.raises(DataError) as err:
        load_samples(path, tok, seq_len=512, vocab_size=len(tok))
    assert str(err.value).startswith(f"{path}:3: ")  # blank line 2 still counts
    assert reason in str(err.value)


def test_skip_mode_counts_bad_lines_and_keeps_the_rest(tmp_path, tok):
    path = write_jsonl(tmp_path / "d.jsonl", [line for line, _ in BAD_LINES] + [{"messages": CHAT}])
    samples, report = load_samples(path, tok, seq_len=512, on_bad_data="skip", vocab_size=len(tok))
    assert len(samples) == 1 and report.read.bad_lines == len(BAD_LINES)
    assert any("skipped 10 malformed" in w for w in report.warnings())


def test_all_zero_masks_are_dropped_and_counted_all_ones_warned(tmp_path, tok):
    rows = [{"messages": [{"role": "user", "content": "no answer"}]},  # no assistant turn -> all zero
            {"input_ids": [4, 5, 6], "loss_mask": [0, 0, 0]},
            {"messages": CHAT}]
    samples, report = load_samples(write_jsonl(tmp_path / "d.jsonl", rows), tok, seq_len=512)
    assert len(samples) == 1 and report.dropped_no_supervision == 2
    assert "2 with an all-zero loss mask dropped" in report.summary()
    # a template that renders only the assistant text supervises everything: kept but warned
    only = "{%- for m in messages %}{%- generation %}{{- m['content'] }}{%- endgeneration %}{%- endfor %}"
    samples, report = load_samples(write_jsonl(tmp_path / "e.jsonl", [{"messages": CHAT}]), tok, seq_len=512,
                                   chat_template=only)
    assert report.all_ones_chat == 1 and "all-ones loss mask" in report.warnings()[0]


def test_empty_and_all_masked_datasets_are_errors(tmp_path, tok):
    with pytest.raises(DataError, match="is empty"):
        load_samples(write_jsonl(tmp_path / "empty.jsonl", []), tok, seq_len=64)
    masked = write_jsonl(tmp_path / "masked.jsonl", [{"input_ids": [1, 2, 3], "loss_mask": [0, 0, 0]}] * 3)
    with pytest.raises(DataError, match="all 3 samples have an all-zero loss mask"):
        load_samples(masked, tok, seq_len=64)
    with pytest.raises(DataError, match="does not exist"):
        load_samples(tmp_path / "missing.jsonl", tok, seq_len=64)


def test_truncation_and_supervision_lost_to_truncation(tmp_path, tok):
    long_question = [{"role": "user", "content": "x" * 30}, {"role": "assistant", "content": "y" * 30}]
    short = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]  # 23 tokens
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": long_question}, {"messages": short}])
    samples, report = load_samples(path, tok, seq_len=25)
    # the first answer starts after token 25: truncation leaves it no supervision, so it is dropped
    assert report.truncated == 1 and report.dropped_no_supervision == 1 and len(samples) == 1
    assert supervised_text(tok, samples[0].input_ids.tolist(), samples[0].loss_mask) == "b<|im_end|>"
    samples, report = load_samples(path, tok, seq_len=60)  # the answer starts at token 49
    assert [len(s) for s in samples] == [60, 23] and report.truncated == 1
    assert supervised_text(tok, samples[0].input_ids.tolist(), samples[0].loss_mask) == "y" * 11


def test_directories_expand_to_their_jsonl_files(tmp_path, tok):
    d = tmp_path / "data"
    d.mkdir()
    write_jsonl(d / "a.jsonl", [{"messages": CHAT}])
    write_jsonl(d / "b.jsonl", [{"input_ids": [1, 2], "loss_mask": [0, 1]}])
    records = list(read_records([d]))
    assert [r.source.split("/")[-1] for r in records] == ["a.jsonl:1", "b.jsonl:1"]


# -- counts, split, packing, collate ---------------------------------------------------------------------------
def test_token_counts_count_supervised_tokens_only(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"input_ids": [1, 2, 3, 3], "loss_mask": [0, 1, 1, 1]},
                                              {"input_ids": [3, 4], "loss_mask": [1, 0]}])
    samples, _ = load_samples(path, None, seq_len=16, vocab_size=8)
    counts = token_counts(samples, 8)
    assert counts.tolist() == [0, 0, 1, 3, 0, 0, 0, 0]


def test_eval_split_is_deterministic_disjoint_and_capped():
    train, held = split_eval(100, 0.1, 0, seed=3)
    assert len(held) == 10 and not set(train) & set(held) and sorted(train + held) == list(range(100))
    assert split_eval(100, 0.1, 0, seed=3) == (train, held)
    assert split_eval(100, 0.1, 0, seed=4)[1] != held
    assert len(split_eval(100, 0.5, 7, seed=0)[1]) == 7
    assert split_eval(10, 0.05, 0, seed=0)[1] == []
    with pytest.raises(ConfigError):
        split_eval(10, 1.5, 0, seed=0)


def test_packing_fills_rows_and_restarts_positions_per_document(tmp_path):
    rows = [{"input_ids": list(range(1, n + 1)), "loss_mask": [1] * n} for n in (5, 3, 7, 2, 6)]
    samples, _ = load_samples(write_jsonl(tmp_path / "d.jsonl", rows), None, seq_len=10)
    packed = pack_rows(range(5), [len(s) for s in samples], 10, seed=0)
    assert sorted(i for r in packed for i in r) == [0, 1, 2, 3, 4]
    assert all(sum(len(samples[i]) for i in r) <= 10 for r in packed)
    assert len(packed) < 5
    ds = RowDataset(samples, packed, packed=True)
    item = ds[0]
    expected = torch.cat([torch.arange(len(samples[i])) for i in packed[0]])
    assert torch.equal(item["position_ids"], expected)
    assert torch.equal(item["input_ids"], torch.cat([torch.from_numpy(samples[i].input_ids) for i in packed[0]]))
    batch = collate([ds[i] for i in range(len(ds))], pad_token_id=0)
    n0 = len(item["input_ids"])
    T_ = batch["input_ids"].shape[1]
    for b in range(len(ds)):
        n = int(batch["attention_mask"][b].sum())
        pos = batch["position_ids"][b]
        # padding continues the last document's positions (it never opens a new document)
        assert torch.equal(pos[n:], torch.arange(int(pos[n - 1]) + 1, int(pos[n - 1]) + 1 + T_ - n))
        assert batch["loss_mask"][b, n:].sum() == 0 and (batch["input_ids"][b, n:] == 0).all()
    assert int(batch["attention_mask"][0].sum()) == n0


def test_collate_right_pads_single_rows(tmp_path):
    rows = [{"input_ids": [3, 4, 5], "loss_mask": [0, 1, 1]}, {"input_ids": [6, 7], "loss_mask": [1, 1]}]
    samples, _ = load_samples(write_jsonl(tmp_path / "d.jsonl", rows), None, seq_len=8)
    batch = collate([RowDataset(samples, single_rows([0, 1]))[i] for i in range(2)], pad_token_id=9)
    assert batch["input_ids"].tolist() == [[3, 4, 5], [6, 7, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["loss_mask"].tolist() == [[0, 1, 1], [1, 1, 0]]
    assert "position_ids" not in batch


# -- inspect-data --------------------------------------------------------------------------------------------------
def test_inspect_data_highlights_supervised_spans(tmp_path, capsys):
    from draftsmith.cli import run_command

    target = make_target(tmp_path / "tgt")
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": CHAT},
                                              {"messages": [{"role": "user", "content": "only a question"}]}])
    assert run_command(["inspect-data", "--target", str(target), "--data", str(path), "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert "\u27e6cd<|im_end|>\u27e7" in out and "\u27e6fg<|im_end|>\u27e7" in out
    assert "<|im_start|>user\nab<|im_end|>" in out  # the prompt is shown, not highlighted
    assert "1 all-zero mask" in out and "usable samples 1" in out
    assert run_command(["inspect-data", "--target", str(target), "--data", str(path), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["dropped_all_zero_mask"] == 1 and stats["mask_source"] == "generation"
    assert stats["supervised_tokens"] == 6  # c d <|im_end|> f g <|im_end|>
