"""draftsmith.conventions: the one reading of a target config that every draft and core use (DESIGN §6)."""

from __future__ import annotations

import json
import types

import pytest
import transformers as tf

from draftsmith.conventions import (DEFAULT_MAX_POSITION_EMBEDDINGS, architectures_of, draft_fields, eos_token_ids,
                                    num_target_layers, partial_rotary_factor, read_config_json, rope_parameters_of,
                                    text_config, validate_layer_ids, validate_mask_token_for,
                                    validate_mask_token_id)
from draftsmith.errors import ConfigError

SMALL = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, vocab_size=100,
             num_hidden_layers=3)


def test_text_config_unwraps_multimodal_wrappers_and_keeps_plain_configs():
    llama = tf.LlamaConfig(**SMALL)
    assert text_config(llama) is llama
    llava = tf.LlavaConfig(text_config=llama.to_dict())
    assert isinstance(text_config(llava), tf.LlamaConfig) and num_target_layers(llava) == 3
    plain = types.SimpleNamespace(num_hidden_layers=5)  # no get_text_config at all
    assert text_config(plain) is plain and num_target_layers(plain) == 5


def test_draft_fields_copy_the_target_sizes_and_conventions():
    qwen = tf.Qwen3Config(**SMALL, head_dim=24, attention_bias=True, rms_norm_eps=1e-5, max_position_embeddings=777,
                          pad_token_id=0, eos_token_id=[1, 2])
    f = draft_fields(qwen)
    assert (f["hidden_size"], f["intermediate_size"], f["num_attention_heads"], f["num_key_value_heads"],
            f["head_dim"], f["vocab_size"]) == (64, 128, 4, 2, 24, 100)
    assert f["attention_bias"] is True and f["mlp_bias"] is False and f["rms_norm_eps"] == 1e-5
    assert f["max_position_embeddings"] == 777 and f["eos_token_id"] == [1, 2] and f["pad_token_id"] == 0
    assert f["rope_parameters"]["rope_type"] == "default" and "partial_rotary_factor" not in f


def test_draft_fields_keep_partial_rotary_in_both_places_and_yarn_keys():
    phi = tf.Phi3Config(**SMALL, partial_rotary_factor=0.5)
    assert partial_rotary_factor(phi) == 0.5
    f = draft_fields(phi)
    assert f["partial_rotary_factor"] == 0.5 and f["rope_parameters"]["partial_rotary_factor"] == 0.5
    yarn = tf.GptOssConfig(**{**SMALL, "intermediate_size": 64}, num_local_experts=2, num_experts_per_tok=1,
                           pad_token_id=0, eos_token_id=1)
    rope = draft_fields(yarn)["rope_parameters"]
    assert rope["rope_type"] == "yarn" and rope["factor"] == yarn.rope_parameters["factor"]
    assert rope["original_max_position_embeddings"] == yarn.rope_parameters["original_max_position_embeddings"]


def test_draft_fields_defaults_and_errors():
    bare = types.SimpleNamespace(**SMALL)
    f = draft_fields(bare)
    assert f["max_position_embeddings"] == DEFAULT_MAX_POSITION_EMBEDDINGS == 32768
    assert f["hidden_act"] == "silu" and f["head_dim"] == 16 and f["rope_parameters"]["rope_theta"] == 10000.0
    gemma_like = types.SimpleNamespace(**SMALL, hidden_activation="gelu_pytorch_tanh")
    assert draft_fields(gemma_like)["hidden_act"] == "gelu_pytorch_tanh"
    with pytest.raises(ConfigError, match="no 'intermediate_size'"):
        draft_fields(types.SimpleNamespace(**{k: v for k, v in SMALL.items() if k != "intermediate_size"}))
    with pytest.raises(ConfigError, match="not a multiple"):
        draft_fields(types.SimpleNamespace(**{**SMALL, "num_key_value_heads": 3}))


def test_rope_parameters_normalise_older_rope_scaling():
    old = types.SimpleNamespace(rope_theta=5e5, rope_scaling={"type": "linear", "factor": 2.0})
    assert rope_parameters_of(old) == {"rope_theta": 5e5, "rope_type": "linear", "factor": 2.0}
    assert rope_parameters_of(types.SimpleNamespace()) == {"rope_theta": 10000.0, "rope_type": "default"}


@pytest.mark.parametrize("ids, kwargs, error", [
    ([1, 1], {}, "duplicates"), ([6], {}, "out of range"), ([-2], {}, "out of range"), ([True], {}, "integers"),
    (["1"], {}, "integers"), ([1.0], {}, "integers"), ([], {}, "must not be empty"), ("12", {}, "list of integers"),
    ([3, 1], {"increasing": True}, "strictly increasing"),
])
def test_layer_ids_rules(ids, kwargs, error):
    with pytest.raises(ConfigError, match=error):
        validate_layer_ids(ids, 6, **kwargs)


def test_layer_ids_accepted_forms():
    import numpy as np
    import torch

    assert validate_layer_ids([-1, 0, 5], 6) == [-1, 0, 5]
    assert validate_layer_ids(np.array([3, 1]), 6) == [3, 1]  # order is the draft's: kept
    assert validate_layer_ids(torch.tensor([2, 4]), 6, increasing=True) == [2, 4]
    assert validate_layer_ids([], 6, allow_empty=True) == []
    with pytest.raises(ConfigError, match="aux_layer_ids"):
        validate_layer_ids([9], 6, name="aux_layer_ids")


def test_mask_token_rules():
    assert validate_mask_token_id(7, 10, pad_token_id=0, eos_token_ids=(1,)) == 7
    for bad, match in ((None, "needs `mask_token_id`"), (True, "must be an int"), (10, "outside the target vocab"),
                       (0, "pad token"), (1, "eos token")):
        with pytest.raises(ConfigError, match=match):
            validate_mask_token_id(bad, 10, pad_token_id=0, eos_token_ids=(1,), method="DSpark")
    target = tf.Qwen3Config(**SMALL, pad_token_id=5, eos_token_id=[6, 7])
    assert eos_token_ids(target) == (6, 7)
    with pytest.raises(ConfigError, match="eos"):
        validate_mask_token_for(7, target)
    assert validate_mask_token_for(99, target) == 99


def test_read_config_json_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_config_json(tmp_path / "nope", what="target path")
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is not a directory"):
        read_config_json(tmp_path / "f")
    with pytest.raises(ConfigError, match="has no config.json"):
        read_config_json(tmp_path)
    (tmp_path / "config.json").write_text("{oops")
    with pytest.raises(ConfigError, match="invalid JSON"):
        read_config_json(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    assert architectures_of(read_config_json(tmp_path)) == ["LlamaForCausalLM"]
    with pytest.raises(ConfigError, match="no 'architectures' list"):
        architectures_of({"architectures": []})
