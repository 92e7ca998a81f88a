"""Saved drafts: the native engine layout, load_draft round trips, engine exports."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from torch.testing import assert_close

import draftsmith
from draftsmith.errors import ConfigError
from draftsmith_eagle.export import export_native, export_sglang, export_speculators, export_vllm

LAYER = ["input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
         "post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def _keys(path):
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        return set(f.keys())


def test_eagle3_native_layout_and_round_trip(eagle, tmp_path):
    tc = eagle.target_config(rope_theta=1e6)
    draft = eagle.make_eagle3(tc, draft_vocab_size=48, num_hidden_layers=2, fc_norm=True)
    draft.set_vocab_mapping(torch.randperm(128, generator=torch.Generator().manual_seed(0))[:48])
    draft.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLMEagle3"] and cfg["model_type"] == "llama"
    assert (cfg["num_hidden_layers"], cfg["draft_vocab_size"], cfg["vocab_size"]) == (2, 48, 128)
    assert cfg["target_hidden_size"] == 64 and cfg["tie_word_embeddings"] is False
    assert cfg["rope_theta"] == 1e6 and cfg["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [1, 3, 4]
    assert cfg["draftsmith"]["draft_class"] == "draftsmith_eagle.draft_llama:LlamaEagle3DraftModel"
    assert cfg["draftsmith"]["target_layer_ids"] == [1, 3, 4]
    expected = {"embed_tokens.weight", "fc.weight", "norm.weight", "lm_head.weight", "d2t", "t2d",
                "midlayer.hidden_norm.weight", "fc_norm.0.weight", "fc_norm.1.weight", "fc_norm.2.weight"}
    expected |= {f"midlayer.{n}.weight" for n in LAYER} | {f"additional_layers.0.{n}.weight" for n in LAYER}
    assert _keys(tmp_path) == expected
    loaded = draftsmith.load_draft(tmp_path)
    assert type(loaded) is type(draft)
    ours, theirs = draft.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    ids = torch.randint(0, 128, (1, 7))
    aux = torch.randn(1, 7, 192)
    draft.eval()
    assert_close(loaded.compute_logits(loaded(ids, loaded.project_hidden_states(aux))),
                 draft.compute_logits(draft(ids, draft.project_hidden_states(aux))))


def test_eagle1_round_trip(eagle, tmp_path):
    tc = eagle.target_config()
    draft = eagle.make_eagle1(tc, draft_num_hidden_layers=2, fc_bias=True)
    export_native(draft, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaEagleDraftModel"]
    assert cfg["num_hidden_layers"] == cfg["draft_num_hidden_layers"] == 2
    assert cfg["draftsmith"]["method"] == "eagle1"
    expected = {"embed_tokens.weight", "fc.weight", "fc.bias", "norm.weight"}
    expected |= {f"layers.{i}.{n}.weight" for i in range(2) for n in LAYER}
    assert _keys(tmp_path) == expected  # no lm_head: logits come from the target's
    loaded = draftsmith.load_draft(tmp_path)
    ids, feats = torch.randint(0, 128, (2, 6)), torch.randn(2, 6, 64)
    draft.eval()
    assert_close(loaded(ids, feats), draft(ids, feats))
    with pytest.raises(ConfigError, match="EAGLE-3"):
        export_vllm(draft, tmp_path / "v")


def test_engine_exports(eagle, tmp_path):
    tc = eagle.target_config()
    draft = eagle.make_eagle3(tc, num_hidden_layers=2, target_layer_ids=[-1, 2, 5])
    export_vllm(draft, tmp_path / "vllm")
    cfg = json.loads((tmp_path / "vllm" / "config.json").read_text())
    # vLLM: input-of-layer ids under the top-level key it reads first; its own architecture name; no top-level
    # target_layer_ids (its fallback would read them +1)
    assert cfg["eagle_aux_hidden_state_layer_ids"] == [0, 3, 6] and "target_layer_ids" not in cfg
    assert cfg["architectures"] == ["Eagle3LlamaForCausalLM"] and "draftsmith" not in cfg
    assert cfg["norm_before_residual"] is False and "norm_output" not in cfg
    assert cfg["draftsmith_export"]["target_layer_ids"] == [-1, 2, 5]
    keys = _keys(tmp_path / "vllm")
    assert "layers.0.hidden_norm.weight" in keys and "layers.1.mlp.up_proj.weight" in keys
    assert not any(k.startswith(("midlayer", "additional_layers", "model.")) for k in keys)
    assert draftsmith.checkpoint.read_draft_metadata(tmp_path / "vllm")["format"] == "vllm"  # read by its reader
    with pytest.raises(ConfigError, match="holds one draft layer"):  # SGLang/SpecForge would skip layer 1
        export_sglang(draft, tmp_path / "sglang")
    one = eagle.make_eagle3(tc, target_layer_ids=[-1, 2, 5], draft_vocab_size=128)  # full vocabulary
    export_sglang(one, tmp_path / "sglang")
    cfg = json.loads((tmp_path / "sglang" / "config.json").read_text())
    assert cfg["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [-1, 2, 5]  # SGLang: output of layer k
    assert "norm_output" not in cfg and "fc_norm" not in cfg  # SpecForge reads norm_output with another meaning
    keys = _keys(tmp_path / "sglang")
    assert "midlayer.self_attn.q_proj.weight" in keys and {"d2t", "t2d"} <= keys  # identity maps for SpecForge
    with pytest.raises(ConfigError, match="norm_output"):
        export_sglang(eagle.make_eagle3(tc, norm_output=True), tmp_path / "s31")
    with pytest.raises(ConfigError, match="exactly 3"):
        export_sglang(eagle.make_eagle3(tc, target_layer_ids=[1, 3]), tmp_path / "s2")
    last = eagle.make_eagle3(tc, target_layer_ids=[1, 3, 7])  # the last decoder layer: not servable by vLLM
    for export in (export_vllm, export_sglang, export_native, export_speculators):  # no engine captures it
        with pytest.raises(ConfigError, match="reserved"):
            export(last, tmp_path / "bad")
