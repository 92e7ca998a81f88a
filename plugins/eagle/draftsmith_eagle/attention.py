"""Attention kernels and caches of the EAGLE drafts.

* grouped-query SDPA is core's :func:`draftsmith.nn.attention.sdpa_gqa`.
* :func:`ttt_attention` — EAGLE-3 training-time-test attention, vectorised (no Python loop over steps or key
  blocks). At TTT step ``s`` a query at position ``t`` attends causally to the step-0 keys ``K_0[:t]`` *and* to the
  same position ``t`` of every later step's keys ``K_1[t] .. K_s[t]`` — the keys its own draft chain produced.
  The ``s`` diagonal scores are computed by one einsum and fed to a single fused SDPA call as ``s`` extra keys:
  query and key get ``s`` extra channels, extra key ``i`` is the unit vector ``e_i`` (so its score is exactly the
  diagonal score ``q_t·K_i[t]``), and its value is ``e_i`` too, so the SDPA output's extra channels are the
  softmax weights of the diagonal keys, used to mix ``V_1[t] .. V_s[t]``. One softmax spans all ``T + s`` keys,
  computed inside the fused kernel (fp32 accumulation) instead of a materialised ``(B, h, T, T + s)`` fp32
  tensor as in NeMo AutoModel's eager path.
* :class:`KVCache` (incremental drafting, croppable) and :class:`TTTCache` (training unroll); both expose
  per-layer views with ``attend(q, k, v, mask, scale)`` so attention modules stay cache-agnostic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from draftsmith.nn.attention import repeat_kv as _repeat_kv, sdpa_gqa  # noqa: F401  (public names)
from draftsmith.nn.kv_cache import DraftKVCache

from .masks import lower_right_causal


def ttt_attention(q: torch.Tensor, k0: torch.Tensor, v0: torch.Tensor, diag_k: torch.Tensor | None,
                  diag_v: torch.Tensor | None, visibility: torch.Tensor | None, scale: float) -> torch.Tensor:
    """EAGLE-3 TTT attention (see module docstring).

    ``q (B, h, L, D)`` for ``L`` query slots; ``k0/v0 (B, kv, T, D)`` step-0 keys/values of the whole sequence;
    ``diag_k/diag_v (s, B, kv, L, D)`` the query slots' own keys/values of steps ``1..s`` (the current step
    included), or None at step 0; ``visibility`` boolean ``(B|1, 1, L, T)`` over the step-0 keys (None = causal,
    only when ``L == T``). Returns ``(B, h, L, D)``.
    """
    if diag_k is None:
        return sdpa_gqa(q, k0, v0, visibility, is_causal=visibility is None, scale=scale)
    s = diag_k.shape[0]
    b, h, tq, d = q.shape
    kv, tk = k0.shape[1], k0.shape[2]
    g = h // kv
    width = -(-s // 8) * 8  # extra channels, padded to a multiple of 8 (fused kernels want aligned head dims)
    raw = torch.einsum("bkgtd,sbktd->bkgts", q.view(b, kv, g, tq, d), diag_k).reshape(b, h, tq, s)  # q_t·K_i[t]
    q_aug = torch.cat([q, F.pad(raw, (0, width - s))], dim=-1)  # (B, h, L, D+W)
    unit = torch.eye(s, width, dtype=q.dtype, device=q.device).expand(b, kv, s, width)  # extra key/value i = e_i
    head = torch.cat([q.new_zeros(b, kv, s, d), unit], dim=-1)  # (B, kv, s, D+W)
    k_aug = torch.cat([head, F.pad(k0, (0, width))], dim=2)  # (B, kv, s+T, D+W)
    v_aug = torch.cat([head, F.pad(v0, (0, width))], dim=2)  # (B, kv, s+T, D+W)
    block = visibility if visibility is not None else lower_right_causal(tq, tk, device=q.device)
    extra = torch.ones(*block.shape[:-1], s, dtype=torch.bool, device=q.device)
    mask = torch.cat([extra, block], dim=-1)  # (.., L, s+T): the diagonal keys are always visible
    o = sdpa_gqa(q_aug, k_aug, v_aug, mask, scale=scale)  # (B, h, L, D+W)
    p_diag = o[..., d:d + s].reshape(b, kv, g, tq, s)  # softmax weight of each diagonal key
    mixed = torch.einsum("bkgts,sbktd->bkgtd", p_diag, diag_v).reshape(b, h, tq, d)
    return o[..., :d] + mixed


class _LayerView:
    def __init__(self, cache, index: int) -> None:
        self.cache, self.index = cache, index

    def attend(self, q, k, v, mask, scale):
        return self.cache._attend(self.index, q, k, v, mask, scale)


class KVCache(DraftKVCache):
    """Core's croppable :class:`~draftsmith.nn.kv_cache.DraftKVCache` for incremental drafting, with per-layer
    views. Queries appended at the end see every cached key unless a mask says otherwise (``(.., Tq, L + Tq)``
    boolean, e.g. a draft tree's ancestry)."""

    def layer(self, index: int) -> _LayerView:
        return _LayerView(self, index)

    def _attend(self, i, q, k, v, mask, scale):
        k, v = self.append(i, k, v)  # (B, kv, L + Tq, D)
        if mask is None:
            mask = lower_right_causal(q.shape[2], k.shape[2], device=q.device)
        return sdpa_gqa(q, k, v, mask, scale=scale)


class TTTCache:
    """Per-layer step-0 keys/values and the later steps' keys/values of one TTT unroll (one batch).

    ``step`` is the number of completed draft steps; the model shifts rotary positions by it and bumps it after
    each forward. Gradients flow through every cached tensor (later steps learn from earlier ones).

    ``slots`` (set by the model for one step, ``(B, L)`` sequence positions) restricts a step after the first to
    the chains that still matter: only their queries are computed. Later steps' keys/values are stored at their
    sequence positions (``(B, kv, T, D)``, zero elsewhere) so each step gathers exactly its slots' own diagonal.
    """

    def __init__(self, num_layers: int) -> None:
        self.step = 0
        self.slots: torch.Tensor | None = None
        self.k0: list[torch.Tensor | None] = [None] * num_layers
        self.v0: list[torch.Tensor | None] = [None] * num_layers
        self.diag_k: list[list[torch.Tensor]] = [[] for _ in range(num_layers)]
        self.diag_v: list[list[torch.Tensor]] = [[] for _ in range(num_layers)]

    def layer(self, index: int) -> _LayerView:
        return _LayerView(self, index)

    def _attend(self, i, q, k, v, visibility, scale):
        if self.k0[i] is None:
            if self.slots is not None:
                raise ValueError("the first TTT step computes every position (its keys are everyone's context)")
            self.k0[i], self.v0[i] = k, v
            return ttt_attention(q, k, v, None, None, visibility, scale)
        if self.slots is None:
            self.diag_k[i].append(k)
            self.diag_v[i].append(v)
            return ttt_attention(q, self.k0[i], self.v0[i], torch.stack(self.diag_k[i]),
                                 torch.stack(self.diag_v[i]), visibility, scale)
        b, kv, _, d = k.shape
        index = self.slots[:, None, :, None].expand(b, kv, -1, d)  # (B, kv, L, D)
        full = self.k0[i].shape[2]
        self.diag_k[i].append(k.new_zeros(b, kv, full, d).scatter(2, index, k))
        self.diag_v[i].append(v.new_zeros(b, kv, full, d).scatter(2, index, v))
        gather = lambda xs: torch.stack(xs).gather(3, index[None].expand(len(xs), -1, -1, -1, -1))  # noqa: E731
        return ttt_attention(q, self.k0[i], self.v0[i], gather(self.diag_k[i]), gather(self.diag_v[i]),
                             visibility, scale)
