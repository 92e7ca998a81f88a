"""Reasoning chats (Qwen3-style ``<think>`` blocks): the loss mask supervises exactly what the target generates.

With the built-in ``qwen3-thinking`` template (generation tags) and the chat-template keyword ``enable_thinking``:
in thinking mode the target generates its think block (empty or not) and its answer, both supervised; with
``enable_thinking=false`` the template writes an empty block into the generation prompt, so only the answer is.
Past assistant turns lose their reasoning (as Qwen3's template drops it). ``inspect-data`` shows it; offline caches
know the keywords they were built with; ``regenerate`` keeps a generated think block as ``reasoning_content``
(what servers with a reasoning parser return, and what the template renders back).
"""

from __future__ import annotations

import json

import pytest

from draftsmith.data.chat import BUILTIN_TEMPLATES, QWEN3_THINKING_WITH_GENERATION, ChatEncoder, resolve_template

from support.cli import run_cli, subprocess_env
from support.tiny import make_target, make_tokenizer

TEMPLATE = QWEN3_THINKING_WITH_GENERATION


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer(TEMPLATE)


def _supervised(tok, messages, **kwargs) -> tuple[str, str]:
    """``(rendered text, the concatenated supervised text)`` of a conversation."""
    ids, mask = ChatEncoder(tok, TEMPLATE, kwargs).encode(messages)
    return tok.decode(ids), "".join(tok.decode([i]) for i, m in zip(ids, mask) if m)


def _generation_prompt(tok, messages, **kwargs) -> str:
    return tok.apply_chat_template(messages, chat_template=TEMPLATE, tokenize=False, add_generation_prompt=True,
                                   **kwargs)


USER = {"role": "user", "content": "2+2?"}


def test_thinking_mode_supervises_the_think_block_and_the_answer(tok):
    messages = [USER, {"role": "assistant", "content": "4", "reasoning_content": "two and two"}]
    text, supervised = _supervised(tok, messages)
    assert supervised == "<think>\ntwo and two\n</think>\n\n4<|im_end|>"
    # exactly what the target generates after its generation prompt
    assert text.startswith(_generation_prompt(tok, [USER]) + supervised)


def test_thinking_mode_without_reasoning_supervises_the_empty_block_the_target_generates(tok):
    _text, supervised = _supervised(tok, [USER, {"role": "assistant", "content": "4"}])
    assert supervised == "<think>\n\n</think>\n\n4<|im_end|>"


def test_thinking_off_puts_the_empty_block_in_the_prompt_not_the_mask(tok):
    text, supervised = _supervised(tok, [USER, {"role": "assistant", "content": "4"}], enable_thinking=False)
    prompt = _generation_prompt(tok, [USER], enable_thinking=False)
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert supervised == "4<|im_end|>" and text.startswith(prompt + supervised)


def test_past_turns_lose_their_reasoning_the_last_keeps_it(tok):
    messages = [USER, {"role": "assistant", "content": "4", "reasoning_content": "old thoughts"},
                {"role": "user", "content": "and 3+3?"},
                {"role": "assistant", "content": "6", "reasoning_content": "three and three"}]
    text, supervised = _supervised(tok, messages)
    assert "old thoughts" not in text and "three and three" in text
    assert supervised == "4<|im_end|><think>\nthree and three\n</think>\n\n6<|im_end|>"


def test_reasoning_with_thinking_off_is_an_error_not_a_silent_mask(tok):
    with pytest.raises(Exception, match="enable_thinking=false"):
        ChatEncoder(tok, TEMPLATE, {"enable_thinking": False}).encode(
            [USER, {"role": "assistant", "content": "4", "reasoning_content": "x"}])


def test_the_builtin_names_resolve():
    assert resolve_template(None, "qwen3-thinking") == TEMPLATE and set(BUILTIN_TEMPLATES) == {"chatml",
                                                                                                 "qwen3-thinking"}


def test_inspect_data_shows_the_supervised_think_block(tmp_path):
    target = make_target(tmp_path / "tgt")
    data = tmp_path / "r.jsonl"
    data.write_text(json.dumps({"messages": [USER, {"role": "assistant", "content": "4",
                                                    "reasoning_content": "two and two"}]}) + "\n"
                    + json.dumps({"messages": [USER, {"role": "assistant", "content": "5"}]}) + "\n")
    env = subprocess_env()
    res = run_cli(["inspect-data", "--target", str(target), "--data", str(data), "--chat-template", "qwen3-thinking",
                   "--color", "never"], env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "⟦<think>\ntwo and two\n</think>\n\n4<|im_end|>⟧" in res.stdout
    args = ["inspect-data", "--target", str(target), "--chat-template", "qwen3-thinking",
            "--chat-template-kwargs", '{"enable_thinking": false}', "--color", "never"]
    res = run_cli([*args, "--data", str(data)], env=env)  # line 1 thought, but thinking is off: one line
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1 and "r.jsonl:1" in res.stderr
    plain = tmp_path / "plain.jsonl"
    plain.write_text(data.read_text().splitlines()[1] + "\n")
    res = run_cli([*args, "--data", str(plain)], env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "<think>\n\n</think>\n\n⟦5<|im_end|>⟧" in res.stdout
    res = run_cli(["inspect-data", "--target", str(target), "--data", str(data), "--chat-template-kwargs", "[1]"],
                  env=env)
    assert res.returncode == 2 and "expected a JSON object" in res.stderr


def test_offline_caches_know_their_template_keywords():
    from draftsmith.data.features import FORMAT, FORMAT_VERSION, ManifestMismatch, check_manifest

    base = {"format": FORMAT, "format_version": FORMAT_VERSION}
    check_manifest(base, {"chat_template_kwargs": {}}, where="c")  # a cache from before the field
    check_manifest({**base, "chat_template_kwargs": {"enable_thinking": False}},
                   {"chat_template_kwargs": {"enable_thinking": False}}, where="c")
    with pytest.raises(ManifestMismatch, match="chat_template_kwargs"):
        check_manifest({**base, "chat_template_kwargs": {"enable_thinking": False}}, {"chat_template_kwargs": {}},
                       where="c")


@pytest.mark.parametrize("text,turn", [
    ("<think>\nsum it\n</think>\n\n4", {"role": "assistant", "content": "4", "reasoning_content": "sum it"}),
    ("<think>\n\n</think>\n\n4", {"role": "assistant", "content": "4"}),
    ("4 is </think> odd", {"role": "assistant", "content": "4 is </think> odd"}),
    ("plain", {"role": "assistant", "content": "plain"})])
def test_regenerate_keeps_a_generated_think_block_as_reasoning_content(text, turn):
    from draftsmith.commands.regenerate import assistant_turn

    assert assistant_turn(text) == turn


def test_a_served_reasoning_is_kept_as_returned():
    from draftsmith.data.endpoint import _record
    from draftsmith.decode.prompts import Prompt

    prompt = Prompt(line=1, messages=[USER], id="p")
    body = {"choices": [{"message": {"role": "assistant", "content": "4", "reasoning_content": "two and two"},
                         "finish_reason": "stop"}], "usage": {"completion_tokens": 9}}
    assert _record(prompt, body) == {"id": "p", "finish_reason": "stop", "num_tokens": 9, "messages": [
        USER, {"role": "assistant", "content": "4", "reasoning_content": "two and two"}]}


def test_training_data_with_thinking_off_loads_through_the_config(tmp_path, tok):
    from draftsmith.data.samples import load_samples

    data = tmp_path / "r.jsonl"
    data.write_text(json.dumps({"messages": [USER, {"role": "assistant", "content": "4"}]}) + "\n")
    (on,), _ = load_samples([data], tok, seq_len=128, chat_template=TEMPLATE)
    (off,), _ = load_samples([data], tok, seq_len=128, chat_template=TEMPLATE,
                             chat_template_kwargs={"enable_thinking": False})
    assert int(on.loss_mask.sum()) == len("<think>\n\n</think>\n\n4") + 1  # characters + <|im_end|>
    assert int(off.loss_mask.sum()) == 2 and len(off) == len(on)
