"""A block drafter's ``mask_token_id`` left unset comes from the target tokenizer's declared ``mask_token``."""

from __future__ import annotations

import json

import pytest

from draftsmith.errors import ConfigError

from support.tiny import make_chat_data, make_target, make_tokenizer
from support.train import run_train, toy_config


def _target(tmp_path, mask_token):
    target = make_target(tmp_path / "target", "qwen3", num_layers=4, tokenizer=False)
    tok = make_tokenizer()
    if mask_token is not None:
        tok.mask_token = mask_token  # declared (an existing special token, as real tokenizers do)
    tok.save_pretrained(target)
    return target, tok


def _train(tmp_path, target, method):
    data = make_chat_data(tmp_path / "d.jsonl", n=16)
    draft = {"num_draft_layers": 1, "block_size": 3}
    options = {"num_anchors": 4}
    cfg = toy_config(tmp_path, target, data, method=method, draft=draft, method_options=options,
                     **{"train.max_steps": 1, "data.seq_len": 48})
    return run_train(cfg).final_dir


@pytest.mark.parametrize("method", ["dflash", "dspark"])
def test_the_tokenizers_mask_token_is_used_and_recorded(tmp_path, method):
    target, tok = _target(tmp_path, "<|mask|>")
    final = _train(tmp_path, target, method)
    cfg = json.loads((final / "config.json").read_text())
    mask = (cfg.get("dflash_config") or {}).get("mask_token_id", cfg.get("mask_token_id"))
    assert mask == tok.mask_token_id == tok.convert_tokens_to_ids("<|mask|>")


def test_a_declared_mask_token_is_still_validated(tmp_path):
    target, _tok = _target(tmp_path, "<|pad|>")  # the pad token: would never be predicted apart from padding
    with pytest.raises(ConfigError, match="pad token"):
        _train(tmp_path, target, "dflash")


def test_without_a_declared_mask_token_the_error_says_so(tmp_path):
    target, _tok = _target(tmp_path, None)
    with pytest.raises(ConfigError, match="declares none"):
        _train(tmp_path, target, "dflash")
