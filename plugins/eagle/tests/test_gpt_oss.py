"""The gpt-oss EAGLE-3 draft uses the target's own YaRN rotary (concentration included)."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close
from transformers.models.gpt_oss.modeling_gpt_oss import GptOssRotaryEmbedding, apply_rotary_pos_emb

import draftsmith
from draftsmith.errors import ConfigError
from draftsmith.nn.rotary import apply_rotary


def test_rotary_equals_the_targets_up_to_8192(eagle):
    tc = eagle.target_config("GptOssForCausalLM")
    assert tc.rope_parameters["rope_type"] == "yarn" and tc.rope_parameters["factor"] == 32.0
    draft = eagle.make_eagle3(tc)
    assert type(draft).__name__ == "GptOssEagle3DraftModel"
    ref = GptOssRotaryEmbedding(tc)
    assert ref.attention_scaling != 1.0  # YaRN concentration 0.1·ln(32) + 1
    assert draft.rotary_emb.attention_scaling == pytest.approx(ref.attention_scaling)
    pos = torch.arange(0, 8193)[None]
    x = torch.zeros(1, 8193, 16)
    cos, sin = draft.rotary_emb(x, pos)  # (1, T, 16): duplicated halves (Llama rotate_half form)
    ref_cos, ref_sin = ref(x, pos)  # (1, T, 8): gpt-oss keeps the half
    assert_close(cos[..., :8], ref_cos, atol=1e-5, rtol=0)
    assert_close(cos[..., 8:], ref_cos, atol=1e-5, rtol=0)
    assert_close(sin[..., :8], ref_sin, atol=1e-5, rtol=0)
    q, k = torch.randn(2, 1, 4, 8193, 16, generator=torch.Generator().manual_seed(0))
    ref_q, ref_k = apply_rotary_pos_emb(q, k, ref_cos, ref_sin)
    assert_close(apply_rotary(q, cos, sin), ref_q, atol=1e-5, rtol=1e-5)
    assert_close(apply_rotary(k, cos, sin), ref_k, atol=1e-5, rtol=1e-5)


def test_gpt_oss_draft_layout_and_errors(eagle, tmp_path):
    tc = eagle.target_config("GptOssForCausalLM")
    draft = eagle.make_eagle3(tc)
    assert draft.midlayer.self_attn.q_proj.bias is not None  # gpt-oss has attention_bias
    draft.save_pretrained(tmp_path)
    loaded = draftsmith.load_draft(tmp_path)
    assert type(loaded).__name__ == "GptOssEagle3DraftModel"
    assert loaded.config.rope_parameters["rope_type"] == "yarn"
    assert loaded.rotary_emb.attention_scaling == pytest.approx(draft.rotary_emb.attention_scaling)
    spec = draftsmith.resolve_draft_spec("eagle3", ["GptOssForCausalLM"])
    bad = eagle.target_config("GptOssForCausalLM")
    bad.partial_rotary_factor = 0.5
    with pytest.raises(ConfigError, match="partial_rotary_factor"):
        spec.build_config(bad)
