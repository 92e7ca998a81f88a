"""`draftsmith regenerate`: target-written assistant turns, batched with left padding, resumable."""

from __future__ import annotations

import json

import pytest
import torch

from draftsmith.cli import run_command
from draftsmith.decode import generate_plain
from draftsmith.decode.prompts import encode_prompt, read_prompts
from draftsmith.decode.testing import save_tiny_target
from draftsmith.target import load_tokenizer

PROMPTS = [
    {"messages": [{"role": "user", "content": "what is the time of day"}]},
    {"messages": [{"role": "user", "content": "tell me"}, {"role": "assistant", "content": "old answer"}]},
    {"text": "the people of the water and the long day"},
    {"id": "custom-id", "text": "one two"},
    {"messages": [{"role": "system", "content": "be good"}, {"role": "user", "content": "say a word"}]},
]


@pytest.fixture
def target(tmp_path):
    path = tmp_path / "target"
    model = save_tiny_target(path)
    # make EOS win wherever the (frequent) word "more" would: some generations stop early, some run to the limit
    more = load_tokenizer(path).convert_tokens_to_ids("more")
    with torch.no_grad():
        model.get_output_embeddings().weight[2] = 1.05 * model.get_output_embeddings().weight[more]
    model.save_pretrained(path)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    return path, model, prompts


def _regen(path, prompts, out, *extra):
    return run_command(["regenerate", "--target", str(path), "--prompts", str(prompts), "--out", str(out),
                        "--max-new-tokens", "12", "--device", "cpu", *extra])


def _expected(path, model, prompts):
    """Unbatched plain greedy decoding of every prompt (text prompts as one user turn)."""
    tok = load_tokenizer(path)
    out = []
    for p in read_prompts(prompts):
        if not p.is_chat:
            p.messages, p.text = [{"role": "user", "content": p.text}], None
        tokens = generate_plain(model, encode_prompt(p, tok), 12, eos_token_ids=(2,)).tokens
        stop = tokens[-1] == 2
        out.append((tok.decode(tokens[:-1] if stop else tokens, skip_special_tokens=True), stop))
    return out


def test_regenerate_greedy_batched_equals_plain_decoding(target, tmp_path, capsys):
    path, model, prompts = target
    out = tmp_path / "data" / "regen.jsonl"
    assert _regen(path, prompts, out, "--batch-size", "2") == 0
    captured = capsys.readouterr()
    assert "wrote 5 conversations" in captured.out
    # stderr is not a terminal here: a progress line per batch of 2 instead of a tqdm bar
    progress = [line.split("  ")[0] for line in captured.err.splitlines() if line.startswith("regenerate: ")]
    assert progress == ["regenerate: 2/5 prompts", "regenerate: 4/5 prompts", "regenerate: 5/5 prompts"]
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 5
    for record, prompt, (text, stopped) in zip(lines, PROMPTS, _expected(path, model, prompts)):
        msgs = record["messages"]
        assert msgs[-1]["role"] == "assistant" and msgs[-1]["content"] == text
        assert record["finish_reason"] == ("stop" if stopped else "length")
        if "messages" in prompt:  # the old assistant turn was replaced
            assert msgs[:-1] == [m for m in prompt["messages"] if m["content"] != "old answer"]
        else:
            assert msgs[:-1] == [{"role": "user", "content": prompt["text"]}]
    assert {r["finish_reason"] for r in lines} == {"stop", "length"}
    assert lines[3]["id"] == "custom-id"
    assert len({r["id"] for r in lines}) == 5


def test_regenerate_resumes_and_drops_a_partial_line(target, tmp_path, capsys):
    path, model, prompts = target
    out = tmp_path / "regen.jsonl"
    assert _regen(path, prompts, out, "--max-prompts", "2") == 0
    first = out.read_text()
    assert len(first.splitlines()) == 2
    with out.open("a") as f:
        f.write('{"id": "crash-mid-wri')  # a run killed while writing
    capsys.readouterr()
    assert _regen(path, prompts, out, "--batch-size", "3") == 0
    captured = capsys.readouterr()
    assert "wrote 3 conversations" in captured.out and "2 prompts skipped" in captured.out
    assert "dropping an incomplete last line" in captured.err
    text = out.read_text()
    assert text.startswith(first) and len(text.splitlines()) == 5 and "crash" not in text
    assert _regen(path, prompts, out) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_regenerate_sampling(target, tmp_path):
    path, _model, prompts = target
    out = tmp_path / "sampled.jsonl"
    assert _regen(path, prompts, out, "--temperature", "1.0", "--top-p", "0.9", "--seed", "3") == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 5 and all(r["messages"][-1]["role"] == "assistant" for r in lines)


def test_regenerate_errors(target, tmp_path, capsys):
    path, _model, prompts = target
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text("not json\n")
    assert _regen(path, prompts, foreign) == 1
    assert "not a line written by draftsmith regenerate" in capsys.readouterr().err
    no_template = tmp_path / "plain-target"
    save_tiny_target(no_template, chat_template=False)
    assert _regen(no_template, prompts, tmp_path / "x.jsonl") == 1
    assert "needs a chat template" in capsys.readouterr().err
