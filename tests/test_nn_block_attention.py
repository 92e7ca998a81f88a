"""draftsmith.nn.block_attention: block masks (methods.md §6 item 8), KV-injection attention parity with
transformers' Qwen3 layers, the context cache, and the batched-blocks == per-block invariant."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen3Config
from transformers.models.qwen3.modeling_qwen3 import Qwen3Attention, Qwen3DecoderLayer, Qwen3RotaryEmbedding

from draftsmith.nn.block_attention import (BlockDraftBackbone, BlockLayout, KVInjectionAttention, BlockDecoderLayer,
                                           additive_mask, block_position_ids, build_block_mask)
from draftsmith.nn.kv_cache import DraftKVCache


def tiny_config(**kw) -> Qwen3Config:
    base = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6)
    base.update(kw)
    cfg = Qwen3Config(**base)
    cfg._attn_implementation = "eager"
    return cfg


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if p.dim() == 1 else 0.0))


# ---------------------------------------------------------------------------------------------- masks

def test_mask_reference_s8_b4_anchors_2_5():
    mask = build_block_mask(torch.tensor([[2, 5]]), block_size=4, context_len=8)
    assert mask.shape == (1, 1, 8, 16) and mask.dtype == torch.bool
    m = mask[0, 0]
    for row in range(4):  # block 0: ctx {0, 1} + noise cols 8..11
        assert m[row].nonzero().flatten().tolist() == [0, 1, 8, 9, 10, 11]
    for row in range(4, 8):  # block 1: ctx {0..4} + noise cols 12..15
        assert m[row].nonzero().flatten().tolist() == [0, 1, 2, 3, 4, 12, 13, 14, 15]
    assert m.sum(-1).tolist() == [2 + 4] * 4 + [5 + 4] * 4  # per-row count = a_b + B
    assert int(m.sum()) == 60


def test_mask_causal_variant_row_counts():
    m = build_block_mask(torch.tensor([[2, 5]]), 4, 8, causal=True)[0, 0]
    counts = m.sum(-1).tolist()
    assert counts == [2 + k + 1 for k in range(4)] + [5 + k + 1 for k in range(4)]  # a_b + k + 1
    assert m[5, 12:16].tolist() == [True, True, False, False]


def test_mask_padding_blocks_keep_in_block_attention_and_sdpa_has_no_nan():
    keep = torch.tensor([[True, False]])
    m = build_block_mask(torch.tensor([[3, 0]]), 4, 8, keep=keep)[0, 0]
    assert m[4:, :8].sum() == 0  # padding block sees no context
    assert m[4:, 12:].all() and m[4:, 8:12].sum() == 0  # ... but its own block
    assert (m.sum(-1) > 0).all()
    q, k = torch.randn(1, 2, 8, 16), torch.randn(1, 2, 16, 16)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, k, attn_mask=m[None, None])
    assert torch.isfinite(out).all()


def test_mask_anchor_zero_sees_only_its_block():
    m = build_block_mask(torch.tensor([[0]]), 3, 5)[0, 0]
    assert m[:, :5].sum() == 0 and m[:, 5:].all()


def test_mask_sliding_window_matches_explicit_rule():
    anchors, bs, s, w = torch.tensor([[3, 6]]), 3, 8, 4
    m = build_block_mask(anchors, bs, s, sliding_window=w)[0, 0]
    for n, a in enumerate(anchors[0].tolist()):
        for k in range(bs):
            for kv in range(s):
                assert bool(m[n * bs + k, kv]) == (kv < a and (a + k) - kv < w)


def test_mask_document_restriction():
    docs = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])
    m = build_block_mask(torch.tensor([[2, 6]]), 2, 8, document_ids=docs)[0, 0]
    assert m[0, :8].nonzero().flatten().tolist() == [0, 1]
    assert m[2, :8].nonzero().flatten().tolist() == [3, 4, 5]  # anchor 6 in doc 1: context 3..5 only


def test_mask_batch_rows_are_independent():
    anchors = torch.tensor([[1, 4], [2, 3]])
    m = build_block_mask(anchors, 2, 6)
    for b in range(2):
        assert torch.equal(m[b], build_block_mask(anchors[b:b + 1], 2, 6)[0])


def test_block_layout_validation_messages():
    with pytest.raises(ValueError, match="anchors must be"):
        BlockLayout(torch.tensor([1, 2]), 4, 8)
    with pytest.raises(ValueError, match="keep"):
        BlockLayout(torch.tensor([[1, 2]]), 4, 8, keep=torch.tensor([[True]]))
    with pytest.raises(ValueError, match="document_ids"):
        BlockLayout(torch.tensor([[1]]), 4, 8, document_ids=torch.zeros(1, 3, dtype=torch.long))


def test_additive_mask_and_positions():
    m = torch.tensor([[True, False]])
    assert additive_mask(m).tolist() == [[0.0, float("-inf")]]
    pos = block_position_ids(torch.tensor([[2, 5]]), 4)
    assert pos.tolist() == [[2, 3, 4, 5, 5, 6, 7, 8]]
    packed = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4]])
    assert block_position_ids(torch.tensor([[4]]), 3, packed).tolist() == [[1, 2, 3]]


# ---------------------------------------------------------------------------------------------- parity with HF

def _hf_rotary(cfg, x, pos):
    return Qwen3RotaryEmbedding(cfg)(x, pos)


def test_attention_matches_qwen3_attention_without_context():
    cfg = tiny_config()
    torch.manual_seed(0)
    ours, ref = KVInjectionAttention(cfg, 0), Qwen3Attention(cfg, 0)
    _randomise(ours)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 5, 64)
    pos = torch.arange(3, 8).expand(2, -1)
    pe = _hf_rotary(cfg, x, pos)
    full = torch.zeros(2, 1, 5, 5)  # bidirectional
    expected, _ = ref(x, pe, full)
    torch.testing.assert_close(ours(x, None, pe), expected)


def test_attention_context_rows_use_the_layer_k_v_projections():
    cfg = tiny_config()
    ours, ref = KVInjectionAttention(cfg, 0), Qwen3Attention(cfg, 0)
    _randomise(ours, 1)
    ref.load_state_dict(ours.state_dict())
    ctx, blk = torch.randn(1, 6, 64), torch.randn(1, 3, 64)
    pos = torch.arange(9)[None]
    pe = _hf_rotary(cfg, blk, pos)
    # Qwen3 over [ctx; blk] with every key visible; its last 3 rows are the block queries
    expected, _ = ref(torch.cat([ctx, blk], 1), pe, torch.zeros(1, 1, 9, 9))
    got = ours(blk, ctx, (pe[0][:, 6:], pe[1][:, 6:]), (pe[0][:, :6], pe[1][:, :6]))
    torch.testing.assert_close(got, expected[:, 6:])


def test_decoder_layer_matches_qwen3_decoder_layer():
    cfg = tiny_config(attention_bias=True)
    ours, ref = BlockDecoderLayer(cfg, 0), Qwen3DecoderLayer(cfg, 0)
    _randomise(ours, 2)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 4, 64)
    pos = torch.arange(4).expand(2, -1)
    pe = _hf_rotary(cfg, x, pos)
    torch.testing.assert_close(ours(x, None, pe), ref(x, attention_mask=torch.zeros(2, 1, 4, 4),
                                                      position_embeddings=pe))


def test_dense_mask_bool_and_additive_agree():
    cfg = tiny_config()
    attn = KVInjectionAttention(cfg, 0)
    _randomise(attn, 3)
    ctx, blk = torch.randn(1, 8, 64), torch.randn(1, 8, 64)
    mask = build_block_mask(torch.tensor([[2, 5]]), 4, 8)
    rot = BlockDraftBackbone(cfg, 1).rotary_emb
    pe_b = rot(blk, block_position_ids(torch.tensor([[2, 5]]), 4))
    pe_c = rot(ctx, torch.arange(8)[None])
    a = attn(blk, ctx, pe_b, pe_c, mask)
    b = attn(blk, ctx, pe_b, pe_c, additive_mask(mask))
    torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------------------------- cache + backbone

def test_cache_append_crop_reset():
    cache = DraftKVCache(2)
    assert cache.length == 0
    k = torch.randn(1, 2, 3, 4)
    cache.append(0, k, k)
    cache.append(1, k, k)
    full, _ = cache.append(0, k[:, :, :1], k[:, :, :1])
    assert full.shape[-2] == 4
    cache.append(1, k[:, :, :1], k[:, :, :1])
    cache.crop(2)
    assert cache.length == 2 and cache.get(1)[0].shape[-2] == 2
    with pytest.raises(ValueError, match="only shortens"):
        cache.crop(5)
    cache.reset()
    assert cache.length == 0


def _backbone(seed=0, **kw):
    cfg = tiny_config(**kw)
    torch.manual_seed(seed)
    bb = BlockDraftBackbone(cfg, num_context_layers=2)
    _randomise(bb, seed)
    return bb.eval()


def test_batched_blocks_equal_per_block_incremental_with_cache():
    bb = _backbone()
    s, bs = 10, 4
    target_hidden = torch.randn(1, s, 128)
    anchors = torch.tensor([[2, 3, 6]])
    noise = torch.randn(1, 3 * bs, 64)
    mask = build_block_mask(anchors, bs, s)
    pos = block_position_ids(anchors, bs)
    batched = bb(noise, pos, target_hidden, torch.arange(s)[None], mask)  # (1, 12, 64)

    cache, cached = bb.new_cache(), 0
    for n, a in enumerate(anchors[0].tolist()):
        # feed the context rows not cached yet (positions cached..a-1), then draft the block at a
        inc = bb(noise[:, n * bs:(n + 1) * bs], pos[:, n * bs:(n + 1) * bs], target_hidden[:, cached:a],
                 None, None, cache)
        cached = a
        assert cache.length == a
        torch.testing.assert_close(inc, batched[:, n * bs:(n + 1) * bs], rtol=1e-5, atol=1e-5)


def test_backbone_gqa_and_padding_blocks_finite_with_grad():
    bb = _backbone(1, num_key_value_heads=1)
    bb.train()
    anchors, keep = torch.tensor([[1, 0]]), torch.tensor([[True, False]])
    mask = build_block_mask(anchors, 3, 5, keep=keep)
    out = bb(torch.randn(1, 6, 64), block_position_ids(anchors, 3), torch.randn(1, 5, 128), None, mask)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in bb.parameters() if p.grad is not None)
    assert bb.fc.weight.grad is not None and bb.fc.weight.grad.abs().sum() > 0


def test_backbone_state_dict_names_and_fp32_rope():
    bb = _backbone()
    names = set(bb.state_dict())
    assert {"fc.weight", "hidden_norm.weight", "norm.weight", "layers.0.self_attn.q_norm.weight",
            "layers.1.mlp.down_proj.weight", "layers.0.input_layernorm.weight"} <= names
    assert not any("rotary" in n for n in names)
    bb = bb.to(torch.bfloat16)
    assert bb.rotary_emb.inv_freq.dtype == torch.float32
    assert bb.fc.weight.dtype == torch.bfloat16


def test_backbone_rejects_no_context_layers():
    with pytest.raises(ValueError, match="at least one target context layer"):
        BlockDraftBackbone(tiny_config(), 0)


# ---------------------------------------------------------------------------------------------- backends

@pytest.mark.parametrize("kw", [dict(), dict(causal=True), dict(sliding_window=3),
                                dict(document_ids=torch.tensor([[0] * 4 + [1] * 6, [0] * 10]))])
@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_structured_backends_equal_dense_sdpa_with_gradients(kw, kv_heads):
    bb = _backbone(4, num_key_value_heads=kv_heads)
    anchors = torch.tensor([[1, 5, 6], [0, 2, 0]])
    keep = torch.tensor([[True, True, True], [True, True, False]])
    layout = BlockLayout(anchors, 3, 10, keep=keep, **kw)
    noise, ctx = torch.randn(2, 9, 64), torch.randn(2, 10, 128)
    pos = block_position_ids(anchors, 3)
    outs, grads = [], []
    for backend in ("sdpa", "blockwise", "grouped"):
        bb.zero_grad()
        out = bb(noise, pos, ctx, None, layout.attention_mask(backend))
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outs.append(out.detach())
        grads.append({n: p.grad.clone() for n, p in bb.named_parameters()})
    for other in (1, 2):
        torch.testing.assert_close(outs[other], outs[0], rtol=1e-5, atol=1e-5)
        for name in grads[0]:
            torch.testing.assert_close(grads[other][name], grads[0][name], rtol=1e-4, atol=1e-4)


def test_grouped_mask_cuts_context_at_the_group_anchor():
    layout = BlockLayout(torch.tensor([[2, 5, 9, 0]]), 2, 12, keep=torch.tensor([[True, True, True, False]]))
    groups = layout.grouped_mask(blocks_per_group=2).groups
    assert [(g[0], g[1], g[2]) for g in groups] == [(0, 4, 5), (4, 8, 9)]  # padding anchor does not widen
    dense = layout.dense_mask()[0, 0]
    for q0, q1, c, m in groups:  # each group mask is the dense mask restricted to its keys
        assert torch.equal(m[0, 0, :, :c], dense[q0:q1, :c])
        assert torch.equal(m[0, 0, :, c:], dense[q0:q1, 12 + q0:12 + q1])
        assert not dense[q0:q1, c:12].any()  # nothing visible was cut
    with pytest.raises(ValueError, match="blocks_per_group"):
        layout.grouped_mask(0)


def test_blockwise_without_context_and_unknown_backend():
    bb = _backbone()
    layout = BlockLayout(torch.tensor([[0, 0]]), 2, 0)
    noise, pos = torch.randn(1, 4, 64), torch.tensor([[0, 1, 0, 1]])
    for backend in ("blockwise", "grouped"):
        torch.testing.assert_close(bb(noise, pos, None, None, layout.attention_mask(backend)),
                                   bb(noise, pos, None, None, layout.attention_mask("sdpa")))
    with pytest.raises(ValueError, match="unknown block attention backend"):
        layout.attention_mask("magic")
    with pytest.raises(ValueError, match="training forwards"):
        bb(noise, pos, torch.randn(1, 2, 128), None, layout.attention_mask("blockwise"), bb.new_cache())


def test_auto_backend_picks_grouped_on_cpu_and_dense_sdpa_on_cuda():
    from draftsmith.nn.block_mask import ATTENTION_BACKENDS, GroupedBlockMask, resolve_backend

    assert "auto" in ATTENTION_BACKENDS
    assert resolve_backend("auto", torch.device("cpu")) == "grouped"
    assert resolve_backend("auto", torch.device("cuda")) == "sdpa"  # a name only: no GPU needed
    assert [resolve_backend(b, torch.device("cuda")) for b in ("sdpa", "grouped", "blockwise")] == \
        ["sdpa", "grouped", "blockwise"]  # explicit choices are kept
    layout = BlockLayout(torch.tensor([[1, 4]]), 2, 6)
    auto, grouped = layout.attention_mask("auto"), layout.attention_mask("grouped")
    assert isinstance(auto, GroupedBlockMask)
    assert all(torch.equal(a[3], g[3]) and a[:3] == g[:3] for a, g in zip(auto.groups, grouped.groups))
