"""EAGLE-3 training-time test: the vectorised TTT attention and unroll equal naive per-step/per-key references."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

import draftsmith_eagle.attention as attention_mod
from draftsmith_eagle.attention import ttt_attention
from draftsmith_eagle.loss import shift_left
from draftsmith_eagle.masks import causal_visibility


def naive_attention(q, k0, v0, diag_k, diag_v, visible, scale):
    """Query (b, head, t) attends to the visible step-0 keys and to K_i[t] of every later step: one key at a time."""
    b_, h, t_, d = q.shape
    groups = h // k0.shape[1]
    out = torch.zeros_like(q)
    for b in range(b_):
        for head in range(h):
            kvh = head // groups
            for t in range(t_):
                keys = [k0[b, kvh, j] for j in range(t_) if visible[b, t, j]]
                vals = [v0[b, kvh, j] for j in range(t_) if visible[b, t, j]]
                for i in range(diag_k.shape[0] if diag_k is not None else 0):
                    keys.append(diag_k[i, b, kvh, t])
                    vals.append(diag_v[i, b, kvh, t])
                w = torch.softmax(torch.stack([q[b, head, t] @ k for k in keys]) * scale, dim=0)
                out[b, head, t] = sum(wi * v for wi, v in zip(w, vals))
    return out


@pytest.mark.parametrize("steps", [0, 1, 3])
@pytest.mark.parametrize("padded", [False, True])
def test_ttt_attention_equals_naive(steps, padded):
    g = torch.Generator().manual_seed(steps)
    b, h, kv, t, d = 2, 4, 2, 6, 8
    q = torch.randn(b, h, t, d, generator=g, requires_grad=True)
    k0, v0 = (torch.randn(b, kv, t, d, generator=g, requires_grad=True) for _ in range(2))
    dk, dv = ((torch.randn(steps, b, kv, t, d, generator=g, requires_grad=True) if steps else None)
              for _ in range(2))
    attn = torch.ones(b, t, dtype=torch.long)
    if padded:
        attn[1, :2] = 0  # left padding: an explicit visibility mask is needed
    vis = causal_visibility(attn)
    full = causal_visibility(attn, allow_none=False)[:, 0]
    ours = ttt_attention(q, k0, v0, dk, dv, vis, d ** -0.5)
    ref = naive_attention(q, k0, v0, dk, dv, full, d ** -0.5)
    assert_close(ours, ref)
    inputs = [x for x in (q, k0, v0, dk, dv) if x is not None]
    upstream = torch.randn(ours.shape, generator=g)
    for a, r in zip(torch.autograd.grad(ours, inputs, upstream), torch.autograd.grad(ref, inputs, upstream)):
        assert_close(a, r)


def _rotate(x, positions, inv_freq):
    freqs = positions[..., None].float() * inv_freq
    cos, sin = torch.cat([freqs, freqs], -1).cos()[:, None], torch.cat([freqs, freqs], -1).sin()[:, None]
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def naive_unroll(model, ids, aux, attn, steps):
    """The TTT recurrence written out: per-step K/V lists, the step-0 block plus one diagonal column per later
    step appended in a Python loop (SpecForge-style), rotary positions shifted by the step."""
    layers = [model.midlayer, *getattr(model, "additional_layers", [])]
    hidden = model.project_hidden_states(aux)
    b, t = ids.shape
    pos = torch.arange(t)[None].expand(b, t)
    mask = torch.where(causal_visibility(attn, allow_none=False), 0.0, float("-inf"))
    caches = [([], []) for _ in layers]
    inv_freq = model.rotary_emb.inv_freq
    outs = []
    for s in range(steps):
        embeds = model.embed_tokens(shift_left(ids, s + 1))
        for li, layer in enumerate(layers):
            a = layer.self_attn
            x = (torch.cat([layer.input_layernorm(embeds), layer.hidden_norm(hidden)], -1) if li == 0
                 else layer.input_layernorm(hidden))
            q = a.q_proj(x).view(b, t, a.num_heads, a.head_dim).transpose(1, 2)
            k = a.k_proj(x).view(b, t, a.num_key_value_heads, a.head_dim).transpose(1, 2)
            v = a.v_proj(x).view(b, t, a.num_key_value_heads, a.head_dim).transpose(1, 2)
            q, k = _rotate(q, pos + s, inv_freq), _rotate(k, pos + s, inv_freq)
            g = a.num_key_value_groups
            ks, vs = caches[li]
            ks.append(k.repeat_interleave(g, 1))
            vs.append(v.repeat_interleave(g, 1))
            cols = [q @ ks[0].transpose(-1, -2) * a.scaling + mask]
            for i in range(1, len(ks)):
                cols.append((q * ks[i]).sum(-1, keepdim=True) * a.scaling)
            p = torch.softmax(torch.cat(cols, -1), -1)
            o = p[..., :t] @ vs[0]
            for i in range(1, len(vs)):
                o = o + p[..., t + i - 1:t + i] * vs[i]
            hidden = hidden + a.o_proj(o.transpose(1, 2).reshape(b, t, -1))
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        outs.append(hidden)
    return outs


@pytest.mark.parametrize("depth", [1, 2])
def test_unroll_equals_naive_reference(eagle, depth):
    tc = eagle.target_config()
    model = eagle.make_eagle3(tc, num_hidden_layers=depth)
    batch = eagle.make_batch(length=10, pad=3)
    ids, attn = batch["input_ids"], batch["attention_mask"]
    aux = torch.randn(2, 10, 3 * 64, generator=torch.Generator().manual_seed(0))
    steps = 4
    ref = naive_unroll(model, ids, aux, attn, steps)
    cache, hidden = model.new_ttt_cache(), model.project_hidden_states(aux)
    real = attn.bool()
    for s in range(steps):
        hidden = model(shift_left(ids, s + 1), hidden, attention_mask=attn, cache_hidden=cache)
        assert cache.step == s + 1 and len(cache.diag_k[0]) == s
        # pad queries differ by design (their rows are never used); fp32 summation order differs
        assert_close(hidden[real], ref[s][real], rtol=1e-4, atol=1e-4)


def test_unroll_is_vectorised_and_recurrent(eagle, monkeypatch):
    """One fused SDPA call per layer and step, whatever the step; step s>0 depends on earlier steps' keys."""
    tc = eagle.target_config()
    model = eagle.make_eagle3(tc)
    ids = eagle.make_batch(length=8)["input_ids"]
    aux = torch.randn(2, 8, 3 * 64, generator=torch.Generator().manual_seed(1))
    calls = []
    real_sdpa = attention_mod.F.scaled_dot_product_attention
    monkeypatch.setattr(attention_mod.F, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(a[1].shape[2]) or real_sdpa(*a, **k))
    cache, h0 = model.new_ttt_cache(), model.project_hidden_states(aux)
    hidden = h0
    outs = []
    for s in range(4):
        hidden = model(shift_left(ids, s + 1), hidden, cache_hidden=cache)
        outs.append(hidden)
    assert calls == [8, 9, 10, 11]  # keys: T step-0 keys + s diagonal keys, in one call
    # multi-step != independent single steps: step 1 on a fresh cache (no step-0 keys) differs
    alone = model(shift_left(ids, 2), outs[0], position_ids=torch.arange(8)[None] + 1)
    assert not torch.allclose(alone, outs[1], atol=1e-4)
    # step 1 attends step 0's keys: changing step-0 inputs at the last position changes step 1 there
    aux2 = aux.clone()
    aux2[:, -1] += 1.0
    cache2 = model.new_ttt_cache()
    h = model(shift_left(ids, 1), model.project_hidden_states(aux2), cache_hidden=cache2)
    h = model(shift_left(ids, 2), outs[0], cache_hidden=cache2)  # same hidden input, other step-0 keys
    assert not torch.allclose(h[:, -1], outs[1][:, -1], atol=1e-4)
    assert_close(h[:, :-1], outs[1][:, :-1])  # causal: earlier positions never see the last step-0 key
    assert torch.isfinite(outs[-1]).all()
