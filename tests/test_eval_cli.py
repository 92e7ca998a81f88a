"""`draftsmith eval` end to end on a tiny saved target + tokenizer and a saved in-test torch draft (run in
process, so the test method registered here is visible to the CLI)."""

from __future__ import annotations

import json

import pytest
import torch

from draftsmith.cli import run_command
from draftsmith.decode import generate_plain
from draftsmith.decode.prompts import encode_prompt, read_prompts
from draftsmith.decode.testing import save_tiny_target
from draftsmith.target import load_tokenizer

from support.decode import register_toy_method, toy_draft_for

PROMPTS = [
    {"messages": [{"role": "user", "content": "what is the time of day"}]},
    {"messages": [{"role": "system", "content": "you are good"}, {"role": "user", "content": "tell me a word"},
                  {"role": "assistant", "content": "dropped: the turn to generate"}]},
    {"text": "the people of the water"},
    {"text": "one two three"},
]


@pytest.fixture
def setup(tmp_path):
    target_dir, draft_dir, prompts = tmp_path / "target", tmp_path / "draft", tmp_path / "prompts.jsonl"
    model = save_tiny_target(target_dir)
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    tok = load_tokenizer(target_dir)
    reference = []
    for p in read_prompts(prompts):
        ids = encode_prompt(p, tok)
        reference += ids + generate_plain(model, ids, 24, eos_token_ids=(2,)).tokens
    toy_draft_for(model, reference).save_pretrained(draft_dir)
    register_toy_method()
    return target_dir, draft_dir, prompts


def _eval(setup, *extra):
    target, draft, prompts = setup
    return run_command(["eval", "--target", str(target), "--draft", str(draft), "--prompts", str(prompts),
                        "--max-new-tokens", "24", "--device", "cpu", *extra])


def test_eval_prints_the_report(setup, capsys):
    assert _eval(setup, "--check-lossless", "-k", "4") == 0
    out = capsys.readouterr().out
    for needle in ("mean acceptance length τ", "acceptance per position", "drafted / accepted tokens",
                   "speculative decoding", "target decoding", "speedup", "lossless check", "passed"):
        assert needle in out, out


def test_eval_json_report(setup, capsys):
    assert _eval(setup, "--json", "--check-lossless", "-k", "3") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["method"] == "toychain" and info["prompts"] == len(PROMPTS)
    assert info["num_draft_tokens"] == 3
    assert 1.0 <= info["tau"] <= 4.0 and info["tau"] > 1.2  # the toy draft knows the target's habits
    assert info["generated_tokens"] == info["target_generated_tokens"]  # greedy: same outputs
    assert abs(info["generations"] + info["tau"] * info["rounds"] - info["generated_tokens"]) < 1e-6
    assert 0 < info["accepted_tokens"] <= info["drafted_tokens"]
    assert 1 <= len(info["conditional_acceptance"]) <= 3
    assert all(0 <= a <= 1 for a in info["conditional_acceptance"])
    assert info["tokens_per_second"] > 0 and info["target_tokens_per_second"] > 0 and info["speedup"] > 0
    assert info["lossless"] == {"checked": True, "ok": True, "compared_tokens": info["generated_tokens"],
                                "first_mismatch": None}


def test_eval_sampling_with_lossless_check(setup, capsys):
    assert _eval(setup, "--json", "--temperature", "0.8", "--top-p", "0.9", "--top-k", "20",
                 "--check-lossless", "--max-prompts", "2") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["sampling"] == {"temperature": 0.8, "top_p": 0.9, "top_k": 20}
    assert info["prompts"] == 2 and info["lossless"]["ok"] is True


def test_check_lossless_fails_loudly_on_a_difference(setup, capsys, monkeypatch):
    """A verifier that accepts every draft is not lossless: eval must exit non-zero naming prompt/position."""
    import draftsmith.decode.engine as engine
    from draftsmith.decode.verify import Verification

    def accept_all(logits, drafts, tree):
        n, k = drafts.shape
        steps = torch.arange(k)
        return Verification(torch.full((n,), k), steps.expand(n, k), logits[:, -1].argmax(-1),
                            torch.ones(n, k, dtype=torch.bool))

    monkeypatch.setattr(engine, "verify_greedy", accept_all)
    assert _eval(setup, "--check-lossless") == 1
    captured = capsys.readouterr()
    assert "lossless check FAILED: prompt 1 (line 1 of" in captured.err
    assert "differs at generated token" in captured.err


@pytest.mark.parametrize("args,message", [
    (["--method", "dflash"], "does not use toychain drafts"),
    (["--drafter-option", "novalue"], "--drafter-option expects KEY=VALUE"),
    (["--temperature", "-1"], "temperature must be >= 0"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
])
def test_bad_arguments_are_one_line_errors(setup, capsys, args, message):
    assert _eval(setup, *args) != 0
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_bad_prompt_file_names_the_line(setup, capsys, tmp_path):
    target, draft, _ = setup
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(PROMPTS[0]) + "\n\n{\"messages\": [{\"role\": \"user\"}]}\n")
    assert run_command(["eval", "--target", str(target), "--draft", str(draft), "--prompts", str(bad)]) == 1
    assert f"{bad}:3: message 0 must be an object with string 'role' and 'content'" in capsys.readouterr().err


def test_missing_draft_and_wrong_target(setup, capsys, tmp_path):
    target, draft, prompts = setup
    assert run_command(["eval", "--target", str(target), "--draft", str(tmp_path / "nope"), "--prompts",
                        str(prompts)]) == 1
    assert "does not exist" in capsys.readouterr().err
    other = tmp_path / "other-target"
    save_tiny_target(other, num_layers=3)
    assert run_command(["eval", "--target", str(other), "--draft", str(draft), "--prompts", str(prompts)]) == 1
    assert "was built for a 4-layer target; this target has 3 layers" in capsys.readouterr().err
