"""Attention kernels of the drafts: grouped-query SDPA and the structured block-attention forms.

* :func:`sdpa_gqa` — ``F.scaled_dot_product_attention`` for ``q (B, Hq, Tq, D)``, ``k/v (B, Hk, Tk, D)``: SDPA's own
  GQA (``enable_gqa``) where it is fast; on CUDA with a mask, where ``enable_gqa`` + mask falls back to the math
  kernel, the KV heads are repeated instead (:func:`repeat_kv`, HF ``repeat_kv`` layout).
* :func:`grouped_attention` / :func:`blockwise_attention` — block-drafter training attention for the
  :class:`~draftsmith.nn.block_mask.GroupedBlockMask` / :class:`~draftsmith.nn.block_mask.BlockwiseMask` forms
  (exactly the dense-mask result, tested with gradients).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .block_mask import BlockwiseMask, GroupedBlockMask


def repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """``(B, Hk, T, D) -> (B, Hk·groups, T, D)``: each KV head repeated for its query group."""
    if groups == 1:
        return x
    b, kv, t, d = x.shape
    return x[:, :, None].expand(b, kv, groups, t, d).reshape(b, kv * groups, t, d)


def sdpa_gqa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None, *,
             is_causal: bool = False, scale: float | None = None) -> torch.Tensor:
    """SDPA with GQA; ``mask`` is a boolean visibility (True = attend) or an additive float mask, broadcastable
    to ``(B, Hq, Tq, Tk)``; ``is_causal`` applies only without a mask. Returns ``(B, Hq, Tq, D)``."""
    groups = q.shape[1] // k.shape[1]
    native_gqa = groups > 1
    if native_gqa and mask is not None and q.device.type == "cuda":
        k, v, native_gqa = repeat_kv(k, groups), repeat_kv(v, groups), False
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal and mask is None,
                                          scale=scale, enable_gqa=native_gqa)


def masked_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                scale: float) -> torch.Tensor:
    """:func:`sdpa_gqa` with a mask (or ``None`` = every query sees every key) and an explicit scale."""
    return sdpa_gqa(q, k, v, mask, scale=scale)


def grouped_attention(q: torch.Tensor, k_ctx: torch.Tensor | None, v_ctx: torch.Tensor | None,
                      k_blk: torch.Tensor, v_blk: torch.Tensor, mask: GroupedBlockMask, scale: float) -> torch.Tensor:
    """One SDPA call per group of blocks over ``[context[:ctx_len] | the group's blocks]``; (Bt, Hq, N·B, D)."""
    outs = []
    for q_start, q_end, ctx_len, group_mask in mask.groups:
        k, v = k_blk[:, :, q_start:q_end], v_blk[:, :, q_start:q_end]
        if ctx_len and k_ctx is not None:
            k = torch.cat([k_ctx[:, :, :ctx_len], k], dim=2)
            v = torch.cat([v_ctx[:, :, :ctx_len], v], dim=2)
        outs.append(masked_sdpa(q[:, :, q_start:q_end], k, v, group_mask, scale))
    return torch.cat(outs, dim=2)



def blockwise_attention(q: torch.Tensor, k_ctx: torch.Tensor | None, v_ctx: torch.Tensor | None,
                        k_blk: torch.Tensor, v_blk: torch.Tensor, mask: BlockwiseMask, scale: float) -> torch.Tensor:
    """Block attention without the dense ``N·B × (S + N·B)`` product: each query scores the context keys and
    only its own block's ``B`` keys; one softmax over both (exactly the dense-mask result).

    ``q`` (Bt, Hq, N·B, D); ``k/v_ctx`` (Bt, Hk, S, D) or None; ``k/v_blk`` (Bt, Hk, N·B, D). GQA without
    repeating keys: query heads are grouped per key head. Returns (Bt, Hq, N·B, D).
    """
    bt, hq, nq, d = q.shape
    hk, bs = k_blk.shape[1], mask.block_size
    g, n = hq // hk, nq // bs
    qg = q.contiguous().view(bt, hk, g, n, bs, d)  # (Bt, Hk, g, N, B, D)
    s_blk = torch.matmul(qg, k_blk.reshape(bt, hk, 1, n, bs, d).transpose(-1, -2)) * scale  # (Bt, Hk, g, N, B, B)
    s_blk = s_blk.masked_fill(~mask.block, float("-inf"))
    if k_ctx is None or k_ctx.shape[2] == 0:
        p_blk = torch.softmax(s_blk, dim=-1, dtype=torch.float32).to(q.dtype)
        return torch.matmul(p_blk, v_blk.reshape(bt, hk, 1, n, bs, d)).reshape(bt, hq, nq, d)
    s = k_ctx.shape[2]
    s_ctx = torch.matmul(qg.view(bt, hk, g * nq, d), k_ctx.transpose(-1, -2)) * scale  # (Bt, Hk, g·N·B, S)
    s_ctx = s_ctx.view(bt, hk, g, n, bs, s).masked_fill(~mask.context.reshape(bt, 1, 1, n, bs, s), float("-inf"))
    p = torch.softmax(torch.cat([s_ctx, s_blk], dim=-1), dim=-1, dtype=torch.float32).to(q.dtype)
    p_ctx, p_blk = p.split([s, bs], dim=-1)
    out = torch.matmul(p_ctx.reshape(bt, hk, g * nq, s), v_ctx).view(bt, hk, g, n, bs, d)  # context part
    out = out + torch.matmul(p_blk, v_blk.reshape(bt, hk, 1, n, bs, d))  # own-block part
    return out.reshape(bt, hq, nq, d)
