"""Parity of the draft layers with transformers' own Llama/Qwen3 layers; masks; fp32 rotary across casts."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.testing import assert_close
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaDecoderLayer, LlamaMLP, LlamaRotaryEmbedding
from transformers.models.qwen3.modeling_qwen3 import Qwen3Attention, Qwen3MLP, Qwen3RotaryEmbedding

from draftsmith_eagle.draft_llama_v12 import (EagleLlamaAttention, EagleLlamaDecoderLayer, EagleLlamaMLP,
                                              _build_causal_mask, _repeat_kv)
from draftsmith_eagle.masks import causal_visibility


def _randomize(*modules, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in modules:
        for p in m.parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def _inputs(config, rotary_cls, t=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, t, config.hidden_size, generator=g)
    attn = torch.ones(2, t, dtype=torch.long)
    attn[1, -3:] = 0  # right padding in row 1
    pos = torch.arange(t)[None].expand(2, t)
    cos, sin = rotary_cls(config)(x, pos)
    return x, attn, (cos, sin)


@pytest.mark.parametrize("bias", [False, True])
def test_attention_mlp_layer_match_llama(bias):
    cfg = LlamaConfig(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
                      attention_bias=bias, mlp_bias=bias, rms_norm_eps=1e-5)
    cfg._attn_implementation = "eager"
    x, attn, rope = _inputs(cfg, LlamaRotaryEmbedding)
    additive = _build_causal_mask(attn, torch.float32)

    ours, ref = EagleLlamaAttention(cfg), LlamaAttention(cfg, layer_idx=0)
    ref.load_state_dict(ours.state_dict())
    _randomize(ours)
    ref.load_state_dict(ours.state_dict())
    assert_close(ours(x, rope, causal_visibility(attn, allow_none=False)), ref(x, rope, additive)[0])
    assert_close(ours(x, rope, additive), ref(x, rope, additive)[0])  # an additive mask works as well

    mlp, ref_mlp = EagleLlamaMLP(cfg), LlamaMLP(cfg)
    _randomize(mlp)
    ref_mlp.load_state_dict(mlp.state_dict())
    assert_close(mlp(x), ref_mlp(x))

    layer, ref_layer = EagleLlamaDecoderLayer(cfg), LlamaDecoderLayer(cfg, layer_idx=0)
    _randomize(layer, seed=3)
    ref_layer.load_state_dict(layer.state_dict())
    assert_close(layer(x, rope, causal_visibility(attn, allow_none=False)),
                 ref_layer(x, attention_mask=additive, position_embeddings=rope))


def test_attention_mlp_match_qwen3(eagle):
    """Qwen3's decoupled head_dim and GQA; the EAGLE draft has no QK-norm, so Qwen3's is set to identity."""
    tc = eagle.target_config("Qwen3ForCausalLM", hidden_size=48, head_dim=24)
    tc._attn_implementation = "eager"
    from draftsmith_eagle.draft_llama import LlamaEagle3DraftModel

    cfg = LlamaEagle3DraftModel.build_draft_config(tc)
    x, attn, rope = _inputs(tc, Qwen3RotaryEmbedding)
    ours, ref = EagleLlamaAttention(cfg), Qwen3Attention(tc, layer_idx=0)
    ref.q_norm, ref.k_norm = nn.Identity(), nn.Identity()
    _randomize(ours)
    ref.load_state_dict(ours.state_dict())
    assert ours.q_proj.weight.shape == (4 * 24, 48)
    additive = _build_causal_mask(attn, torch.float32)
    assert_close(ours(x, rope, causal_visibility(attn, allow_none=False)), ref(x, rope, additive)[0])
    mlp, ref_mlp = EagleLlamaMLP(cfg), Qwen3MLP(tc)
    _randomize(mlp)
    ref_mlp.load_state_dict(mlp.state_dict())
    assert_close(mlp(x), ref_mlp(x))


def test_repeat_kv_and_causal_fast_path():
    k = torch.randn(2, 2, 5, 4)
    r = _repeat_kv(k, 3)
    assert r.shape == (2, 6, 5, 4) and torch.equal(r[:, 0], k[:, 0]) and torch.equal(r[:, 2], k[:, 0])
    assert torch.equal(r[:, 3], k[:, 1])
    # right padding: plain causal attention is exact for every real query, so no mask is built
    attn = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    assert causal_visibility(attn) is None
    assert causal_visibility(None, torch.arange(4)[None]) is None


def test_mask_semantics():
    attn = torch.tensor([[0, 1, 1, 1]])  # left padding: the fast path is not exact, a mask is built
    vis = causal_visibility(attn)
    assert vis.shape == (1, 1, 4, 4)
    assert vis[0, 0].tolist() == [[True, False, False, False],  # a pad row keeps its own diagonal (no NaN)
                                  [False, True, False, False],
                                  [False, True, True, False],
                                  [False, True, True, True]]
    add = _build_causal_mask(torch.tensor([[1, 1, 0]]), torch.float32)
    low = torch.finfo(torch.float32).min
    assert add[0, 0].tolist() == [[0, low, low], [0, 0, low], [0, 0, 0]]
    # packed rows: documents restart where position_ids stop increasing
    pos = torch.tensor([[0, 1, 2, 0, 1]])
    vis = causal_visibility(None, pos)
    assert vis[0, 0, 4].tolist() == [False, False, False, True, True]
    assert vis[0, 0, 2].tolist() == [True, True, True, False, False]


@pytest.mark.parametrize("which", ["eagle1", "eagle3"])
def test_inv_freq_stays_fp32(eagle, which, tmp_path):
    import draftsmith

    tc = eagle.target_config(rope_theta=5e5)
    draft = eagle.make_eagle3(tc) if which == "eagle3" else eagle.make_eagle1(tc)
    exact = draft.rotary_emb.inv_freq.clone()
    assert exact.dtype == torch.float32
    draft.to(torch.bfloat16)
    assert draft.rotary_emb.inv_freq.dtype == torch.float32 and torch.equal(draft.rotary_emb.inv_freq, exact)
    draft.half().float().to(torch.bfloat16).double().to(torch.bfloat16)
    assert torch.equal(draft.rotary_emb.inv_freq, exact)
    assert draft.embed_tokens.weight.dtype == torch.bfloat16
    draft.save_pretrained(tmp_path)
    loaded = draftsmith.load_draft(tmp_path, dtype=torch.bfloat16)
    assert loaded.rotary_emb.inv_freq.dtype == torch.float32 and torch.equal(loaded.rotary_emb.inv_freq, exact)


def test_partial_rotary_target(eagle, tmp_path):
    """A dense target with partial rotary: the draft rotates the same fraction of each head, also after loading."""
    import draftsmith
    from draftsmith_eagle.draft_llama import LlamaEagle3DraftModel

    tc = eagle.target_config("Qwen3ForCausalLM")
    tc.partial_rotary_factor = 0.5
    cfg = LlamaEagle3DraftModel.build_draft_config(tc)
    assert cfg.partial_rotary_factor == 0.5 and cfg.rope_parameters["partial_rotary_factor"] == 0.5
    draft = LlamaEagle3DraftModel(cfg)
    assert draft.rotary_emb.inv_freq.numel() == 4  # head_dim 16 × 0.5 / 2
    cos, _ = draft.rotary_emb(torch.randn(1, 5, 64), torch.arange(5)[None])
    assert cos.shape == (1, 5, 8)
    draft.save_pretrained(tmp_path)
    loaded = draftsmith.load_draft(tmp_path)
    assert loaded.config.partial_rotary_factor == 0.5
    assert torch.equal(loaded.rotary_emb.inv_freq, draft.rotary_emb.inv_freq)
