"""Qwen3DFlashDraftModel: config derived from the target, mask-token validation, heads by reference, the
native checkpoint layout, save/load round trip through draftsmith.load_draft."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

import draftsmith
from draftsmith.errors import ConfigError, DraftsmithError
from draftsmith_dflash.draft_qwen3 import Qwen3DFlashConfig, Qwen3DFlashDraftModel
from draftsmith_dflash.export import check_native_checkpoint, export_native


def test_config_reads_target_dims_and_defaults(dflash):
    tc = dflash.target_config("Qwen3ForCausalLM", 36, rope_parameters={"rope_type": "default", "rope_theta": 5e5})
    cfg = Qwen3DFlashDraftModel.build_draft_config(tc, mask_token_id=5)
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (64, 4, 2, 16)
    assert cfg.num_hidden_layers == 5 and cfg.block_size == 16 and cfg.num_target_layers == 36
    assert cfg.target_layer_ids == [1, 9, 17, 25, 33] and cfg.mask_token_id == 5
    assert cfg.rope_parameters["rope_theta"] == 5e5 and cfg.layer_types == ["full_attention"] * 5
    assert cfg.architectures == ["DFlashDraftModel"] and cfg.model_type == "qwen3"
    assert cfg.draftsmith["method"] == "dflash" and cfg.draftsmith["target_layer_ids"] == [1, 9, 17, 25, 33]
    assert cfg.draftsmith["target_architectures"] == ["Qwen3ForCausalLM"]


@pytest.mark.parametrize("kwargs, depth", [
    ({}, 5), ({"num_draft_layers": 3}, 3), ({"num_hidden_layers": 3}, 3), ({"num_draft_layers": None}, 5),
    ({"num_draft_layers": None, "num_hidden_layers": 3}, 3), ({"num_draft_layers": 3, "num_hidden_layers": 3}, 3),
])
def test_draft_depth_has_two_names_and_unset_falls_back(dflash, kwargs, depth):
    # an explicit None (e.g. `num_draft_layers:` left empty in YAML) is unset, as before the option tables
    cfg = Qwen3DFlashDraftModel.build_draft_config(dflash.target_config("Qwen3ForCausalLM", 36), mask_token_id=5,
                                                   **kwargs)
    assert cfg.num_hidden_layers == depth and len(cfg.target_layer_ids) == depth
    with pytest.raises(ConfigError, match="disagree"):
        Qwen3DFlashDraftModel.build_draft_config(dflash.target_config(), mask_token_id=5, num_draft_layers=2,
                                                 num_hidden_layers=3)


def test_config_from_llama_keeps_its_rope_and_mlp_bias(dflash):
    rope = {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    tc = dflash.target_config("LlamaForCausalLM", 8, rope_parameters=rope, mlp_bias=True)
    draft = Qwen3DFlashDraftModel(Qwen3DFlashDraftModel.build_draft_config(tc, mask_token_id=5, num_draft_layers=3))
    assert draft.config.rope_parameters["rope_type"] == "llama3"
    assert draft.layers[0].mlp.gate_proj.bias is not None
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    torch.testing.assert_close(draft.rotary_emb.inv_freq, LlamaRotaryEmbedding(tc).inv_freq)


@pytest.mark.parametrize("kwargs, match", [
    ({}, "needs `mask_token_id`"), ({"mask_token_id": 128}, "outside the target vocab"),
    ({"mask_token_id": -1}, "outside the target vocab"), ({"mask_token_id": 0}, "pad token"),
    ({"mask_token_id": 2}, "eos token"), ({"mask_token_id": "7"}, "must be an int"),
    ({"mask_token_id": 7, "block_size": 1}, "block_size"),
    ({"mask_token_id": 7, "target_layer_ids": [1, 1]}, "distinct"),
    ({"mask_token_id": 7, "target_layer_ids": [4]}, "out of range for a 4-layer target"),
    ({"mask_token_id": 7, "blocksize": 8}, "unknown DFlash option"),
    ({"mask_token_id": 7, "sliding_window": 0}, "sliding_window"),
])
def test_config_validation_messages(dflash, kwargs, match):
    tc = dflash.target_config(pad_token_id=0, eos_token_id=[2, 3])
    with pytest.raises(ConfigError, match=match):
        Qwen3DFlashDraftModel.build_draft_config(tc, **kwargs)


def test_method_options_pass_through_build(dflash):
    cfg = Qwen3DFlashDraftModel.build_draft_config(dflash.target_config(), mask_token_id=7, num_anchors=64,
                                                   loss_decay_gamma=4.0)
    assert cfg.target_layer_ids == [0, 1, 2, 3]  # shallow 4-layer target, 5 draft layers


def test_no_embedding_or_lm_head_in_the_draft(dflash):
    s = dflash.make_setup()
    s.draft.bind_target_heads(s.heads.embed_tokens, s.heads.lm_head)
    names = set(s.draft.state_dict())
    assert not any("embed" in n or "lm_head" in n for n in names)
    params = list(s.draft.parameters())
    assert not any(p is s.heads.embed_tokens.weight or p is s.heads.lm_head.weight for p in params)
    assert sum(p.numel() for p in params) == sum(t.numel() for t in s.draft.state_dict().values())
    s.draft.to(torch.float64)
    assert s.heads.lm_head.weight.dtype == torch.float32  # target heads are not moved with the draft
    ids = torch.tensor([[3, 127]])
    torch.testing.assert_close(s.draft.embed_tokens(ids), s.heads.embed_tokens(ids).double())


def test_unbound_heads_give_a_clear_error(dflash):
    draft = dflash.make_draft(dflash.target_config())
    with pytest.raises(ConfigError, match="bind_target_heads"):
        draft.embed_tokens(torch.tensor([[1]]))


def test_forward_shapes_and_width_check(dflash):
    draft = dflash.make_draft(dflash.target_config(), block_size=4, num_draft_layers=2)
    m = len(draft.target_layer_ids)
    out = draft(torch.randn(2, 8, 64), torch.arange(8).expand(2, -1), torch.randn(2, 10, m * 64))
    assert out.shape == (2, 8, 64)
    with pytest.raises(ConfigError, match="width"):
        draft(torch.randn(1, 4, 64), torch.arange(4)[None], torch.randn(1, 3, 64))


def test_rope_stays_fp32_after_bf16_cast(dflash):
    draft = dflash.make_draft(dflash.target_config()).to(torch.bfloat16).to(torch.float16)
    assert draft.rotary_emb.inv_freq.dtype == torch.float32 and draft.fc.weight.dtype == torch.float16


def test_native_checkpoint_layout_and_load_draft_round_trip(dflash, tmp_path):
    s = dflash.make_setup(num_draft_layers=2, block_size=4)
    out = export_native(s.draft, tmp_path / "dflash")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["DFlashDraftModel"] and config["model_type"] == "qwen3"
    assert config["block_size"] == 4 and config["num_target_layers"] == 4 and config["num_hidden_layers"] == 2
    assert config["dflash_config"] == {"block_size": 4, "mask_token_id": 127, "target_layer_ids": [1, 2]}
    assert config["layer_types"] == ["full_attention"] * 2 and config["head_dim"] == 16
    assert config["draftsmith"]["layer_id_convention"] == "output-of-layer"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert {"fc.weight", "hidden_norm.weight", "norm.weight", "layers.1.self_attn.k_norm.weight"} <= names
    assert all(n.startswith(("layers.", "fc.", "hidden_norm.", "norm.")) for n in names)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.get_tensor("fc.weight").shape == (64, 2 * 64)

    loaded = draftsmith.load_draft(out)
    assert type(loaded).__name__ == "Qwen3DFlashDraftModel" and not loaded.training
    for (n1, t1), (n2, t2) in zip(sorted(s.draft.state_dict().items()), sorted(loaded.state_dict().items())):
        assert n1 == n2 and torch.equal(t1, t2)
    x, ctx = torch.randn(1, 4, 64), torch.randn(1, 6, 128)
    pos = torch.arange(6, 10)[None]
    torch.testing.assert_close(loaded.rotary_emb.inv_freq, s.draft.rotary_emb.inv_freq)  # rebuilt on load
    torch.testing.assert_close(loaded(x, pos, ctx), s.draft.eval()(x, pos, ctx))


def test_variants_round_trip(dflash, tmp_path):
    tc = dflash.target_config(num_layers=8)
    draft = dflash.make_draft(tc, causal=True, sliding_window=6, block_size=5)
    draft.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["dflash_config"]["causal"] is True and cfg["layer_types"] == ["sliding_attention"] * 2
    assert cfg["sliding_window"] == 6 and cfg["is_causal"] is True
    loaded = Qwen3DFlashDraftModel.from_pretrained(tmp_path)
    assert loaded.config.causal and loaded.config.draft_sliding_window == 6
    layout = loaded.block_layout(torch.tensor([[9]]), 10)
    assert layout.causal and layout.sliding_window == 6


def test_config_accepts_top_level_engine_keys():
    cfg = Qwen3DFlashConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=16, block_size=8,
                            mask_token_id=100, target_layer_ids=[1, 3])
    assert cfg.dflash_config == {"mask_token_id": 100, "target_layer_ids": [1, 3], "block_size": 8}
    cfg.check_dflash()


def test_check_native_checkpoint_reports_problems(dflash, tmp_path):
    dflash.make_draft(dflash.target_config()).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["architectures"] = ["Qwen3DFlashDraftModel"]
    del cfg["dflash_config"]["target_layer_ids"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DraftsmithError, match="architectures.*target_layer_ids"):
        check_native_checkpoint(tmp_path)


def test_check_native_checkpoint_without_config_is_a_one_line_error(tmp_path):
    with pytest.raises(DraftsmithError, match="has no config.json"):
        check_native_checkpoint(tmp_path)


def test_export_refuses_non_finite_weights(dflash, tmp_path):
    draft = dflash.make_draft(dflash.target_config())
    with torch.no_grad():
        draft.norm.weight[0] = float("nan")
    with pytest.raises(DraftsmithError, match="non-finite"):
        export_native(draft, tmp_path)


def test_sglang_export_refuses_drafts_whose_block_attention_sglang_would_change(dflash, tmp_path):
    """SGLang reads in-block causality from layer_types only (issue 12, observation 9)."""
    from draftsmith_dflash.export import export_sglang

    tc = dflash.target_config()
    with pytest.raises(ConfigError, match="would run its blocks bidirectionally"):
        export_sglang(dflash.make_draft(tc, causal=True), tmp_path / "causal")
    with pytest.raises(ConfigError, match="would run its blocks causally"):
        export_sglang(dflash.make_draft(tc, sliding_window=8), tmp_path / "sliding")
    export_sglang(dflash.make_draft(tc, causal=True, sliding_window=8), tmp_path / "causal-sliding")
    cfg = json.loads((tmp_path / "causal-sliding" / "config.json").read_text())
    assert set(cfg["layer_types"]) == {"sliding_attention"}
    export_sglang(dflash.make_draft(tc), tmp_path / "plain")
    check_native_checkpoint(tmp_path / "plain")
