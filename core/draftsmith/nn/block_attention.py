"""Block-diffusion drafting blocks shared by DFlash and DSpark: block masks and KV-injection attention.

A block drafter predicts a whole block of tokens in one forward pass. The block holds the anchor token (the
last committed token) followed by mask tokens; its queries attend to (a) the *target's* hidden states of
positions strictly before the anchor — the "context", injected as extra keys/values of every draft layer —
and (b) the other slots of the same block (bidirectionally by default). In training many blocks (one per
sampled anchor) run in one batched forward, laid out as::

    KV = [context 0..S-1 | block_0 (B slots) | block_1 | ... | block_{N-1}]      (S + N·B keys)
    Q  = [block_0 | block_1 | ... | block_{N-1}]                                (N·B queries)

Public API (stable; later changes are additive only):

* :class:`BlockLayout` — anchors ``(Bt, N)``, block size, context length, optional keep mask (padding anchors),
  ``causal`` (in-block ``j <= i``, JetSpec variant), ``sliding_window`` (context visible only if
  ``(anchor + k) - kv < W``), ``document_ids`` (packing: context only inside the anchor's document).
  ``layout.dense_mask()`` → bool ``(Bt, 1, N·B, S + N·B)``, True = attend; ``layout.context_mask()`` → bool
  ``(Bt, N·B, S)``; ``layout.block_mask()`` → bool ``(B, B)``; ``layout.attention_mask(backend)`` → what the
  layers take for an attention backend (:data:`ATTENTION_BACKENDS`): ``"sdpa"`` the dense mask (reference),
  ``"grouped"`` a :class:`GroupedBlockMask` (one SDPA call per group of blocks over only the context its anchors
  can see — exact, much less masked-out work), ``"blockwise"`` a :class:`BlockwiseMask` (explicit context and
  own-block scores, one softmax). All give the dense-mask result (tested with gradients).
* :func:`build_block_mask` — the same dense mask from plain arguments. Padding blocks (keep False) see no
  context but keep their in-block attention, so no row is all-masked (SDPA would give NaN).
* :func:`additive_mask` — bool mask → 0 / −inf float mask. :func:`masked_sdpa` — SDPA with GQA (repeats KV
  heads on CUDA when a mask is given, where ``enable_gqa`` + mask would fall back to the math kernel).
* :func:`block_position_ids` — slot positions ``anchor + k`` (or ``position_ids[anchor] + k`` when packed).
* :class:`KVInjectionAttention` — Qwen3-style attention (q/k/v/o, per-head ``q_norm``/``k_norm``, GQA, rotary)
  whose queries come from the block only and whose keys/values are ``[k/v_proj(context); k/v_proj(block)]``
  with the layer's *own* projections (+ ``k_norm`` on both). With a :class:`~draftsmith.nn.kv_cache.DraftKVCache`
  the context keys/values are appended to the cache (incremental drafting) and the block's are not; the
  ``attention_mask`` is then a dense mask over ``[cached + new context | block]`` or ``None``.
* :class:`SwiGLUMLP`, :class:`BlockDecoderLayer` — pre-RMSNorm layer: ``h + attn(norm(h), context)`` then
  ``h + mlp(norm(h))``; the context is *not* normed by the layer (it arrives normed by ``hidden_norm``).
* :class:`BlockBackboneMixin` / :class:`BlockDraftBackbone` — ``fc`` (m·H → H, no bias) + ``hidden_norm`` context
  fusion, the layer stack, final ``norm``, rotary. The mixin lets a ``PreTrainedModel`` own these submodules
  directly, so saved tensor names are the engines' flat ``layers.*``, ``fc.weight``, ``hidden_norm.weight``,
  ``norm.weight``.

Sizes come from a ``PretrainedConfig``: ``hidden_size``, ``num_attention_heads``, ``num_key_value_heads``,
``head_dim``, ``attention_bias``, ``mlp_bias``, ``rms_norm_eps``, ``intermediate_size``, ``hidden_act`` and the
rope parameters (see :mod:`draftsmith.nn.rotary`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .kv_cache import DraftKVCache
from .norm import RMSNorm
from .rotary import RotaryEmbedding, apply_rotary

PositionEmbeddings = tuple[torch.Tensor, torch.Tensor]  # (cos, sin), each (B, T, head_dim)
ATTENTION_BACKENDS = ("sdpa", "grouped", "blockwise")


# ----------------------------------------------------------------------------------------------------------
# Masks
# ----------------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class BlockLayout:
    """Where each block sits and what it may see; builds the masks for any attention backend.

    ``anchors``: ``(Bt, N)`` long, the context index of each block's anchor (slot 0). ``keep``: ``(Bt, N)`` bool,
    False for padding anchors (default all True). ``document_ids``: ``(Bt, S)`` ints, packing document of every
    context position (an anchor's document is ``document_ids[b, anchor]``).
    """

    anchors: torch.Tensor
    block_size: int
    context_len: int
    keep: torch.Tensor | None = None
    causal: bool = False
    sliding_window: int | None = None
    document_ids: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.anchors.dim() != 2:
            raise ValueError(f"anchors must be (batch, num_blocks), got shape {tuple(self.anchors.shape)}")
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if self.context_len < 0:
            raise ValueError(f"context_len must be >= 0, got {self.context_len}")
        if self.keep is not None and self.keep.shape != self.anchors.shape:
            raise ValueError(f"keep {tuple(self.keep.shape)} must match anchors {tuple(self.anchors.shape)}")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"sliding_window must be >= 1, got {self.sliding_window}")
        if self.document_ids is not None and (self.document_ids.dim() != 2
                                              or self.document_ids.shape[0] != self.anchors.shape[0]
                                              or self.document_ids.shape[1] != self.context_len):
            raise ValueError(f"document_ids must be (batch, context_len) = ({self.anchors.shape[0]}, "
                             f"{self.context_len}), got {tuple(self.document_ids.shape)}")

    @property
    def num_blocks(self) -> int:
        return int(self.anchors.shape[1])

    @property
    def num_queries(self) -> int:
        return self.num_blocks * self.block_size

    def context_mask(self) -> torch.Tensor:
        """``(Bt, N·B, S)`` bool: query (block n, slot k) may attend context position kv."""
        anchors = self.anchors.long()
        bt, n = anchors.shape
        bs, s = self.block_size, self.context_len
        kv = torch.arange(s, device=anchors.device)  # (S,)
        a = anchors[:, :, None, None]  # (Bt, N, 1, 1)
        visible = kv.view(1, 1, 1, s) < a  # strictly before the anchor: its own target state is not known yet
        visible = visible.expand(bt, n, bs, s)
        if self.sliding_window is not None:
            slot = torch.arange(bs, device=anchors.device).view(1, 1, bs, 1)
            visible = visible & ((a + slot) - kv.view(1, 1, 1, s) < self.sliding_window)
        if self.keep is not None:
            visible = visible & self.keep[:, :, None, None].bool()
        if self.document_ids is not None and s > 0:
            docs = self.document_ids
            anchor_doc = docs.gather(1, anchors.clamp(0, s - 1))  # (Bt, N)
            visible = visible & (docs[:, None, None, :] == anchor_doc[:, :, None, None])
        return visible.reshape(bt, n * bs, s)

    def attention_mask(self, backend: str = "sdpa", blocks_per_group: int = 8) -> Any:
        """What to pass as ``attention_mask`` to the layers for an attention ``backend``:

        * ``"sdpa"`` → the dense bool mask (the reference path);
        * ``"grouped"`` → a :class:`GroupedBlockMask`: consecutive blocks in groups of ``blocks_per_group``, each
          group one SDPA call over only the context its anchors can see (``kv < max anchor``) and its own
          blocks — most of the dense product is masked-out work (other blocks, context past the anchor);
        * ``"blockwise"`` → a :class:`BlockwiseMask`: explicit scores of the context and of the own block, one
          softmax (no SDPA kernel; exact, memory-heavy).
        """
        if backend == "sdpa":
            return self.dense_mask()
        if backend == "grouped":
            return self.grouped_mask(blocks_per_group)
        if backend == "blockwise":
            return BlockwiseMask(self.context_mask(), self.block_mask(), self.block_size)
        raise ValueError(f"unknown block attention backend {backend!r}; choose from {list(ATTENTION_BACKENDS)}")

    def grouped_mask(self, blocks_per_group: int = 8) -> "GroupedBlockMask":
        if blocks_per_group < 1:
            raise ValueError(f"blocks_per_group must be >= 1, got {blocks_per_group}")
        groups = []
        for lo in range(0, self.num_blocks, blocks_per_group):
            hi = min(lo + blocks_per_group, self.num_blocks)
            anchors = self.anchors[:, lo:hi]
            keep = self.keep[:, lo:hi] if self.keep is not None else None
            # no query of the group sees context at or past its largest anchor: cut the keys there
            ctx_len = int((anchors if keep is None else anchors * keep).max()) if self.context_len else 0
            sub = BlockLayout(anchors, self.block_size, ctx_len, keep=keep, causal=self.causal,
                              sliding_window=self.sliding_window,
                              document_ids=None if self.document_ids is None else self.document_ids[:, :ctx_len])
            groups.append((lo * self.block_size, hi * self.block_size, ctx_len, sub.dense_mask()))
        return GroupedBlockMask(groups)

    def block_mask(self, device: torch.device | None = None) -> torch.Tensor:
        """``(B, B)`` bool in-block visibility: all True, or lower-triangular when ``causal``."""
        device = device if device is not None else self.anchors.device
        full = torch.ones(self.block_size, self.block_size, dtype=torch.bool, device=device)
        return full.tril() if self.causal else full

    def dense_mask(self) -> torch.Tensor:
        """``(Bt, 1, N·B, S + N·B)`` bool, True = attend (context part, then block-diagonal own-block part)."""
        bt, n = self.anchors.shape
        bs = self.block_size
        ctx = self.context_mask()  # (Bt, N·B, S)
        own = torch.block_diag(*([self.block_mask()] * n)) if n > 0 else \
            torch.zeros(0, 0, dtype=torch.bool, device=self.anchors.device)  # (N·B, N·B)
        own = own.unsqueeze(0).expand(bt, n * bs, n * bs)
        return torch.cat([ctx, own], dim=-1).unsqueeze(1)


def masked_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                scale: float) -> torch.Tensor:
    """SDPA with GQA. On CUDA a mask plus ``enable_gqa`` falls back to the slow math kernel, so KV heads are
    repeated there instead; elsewhere SDPA's own GQA avoids the copy."""
    if q.shape[1] == k.shape[1]:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    if mask is not None and q.device.type == "cuda":
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)


@dataclasses.dataclass
class GroupedBlockMask:
    """The block mask cut into query groups (training only: keys are ``[context | all blocks]``).

    ``groups``: ``(q_start, q_end, ctx_len, mask)`` per group of consecutive blocks; its queries are rows
    ``q_start:q_end``, its keys the first ``ctx_len`` context rows then its own block rows, ``mask`` the dense
    bool mask ``(Bt, 1, q_end − q_start, ctx_len + q_end − q_start)`` over those keys.
    """

    groups: list[tuple[int, int, int, torch.Tensor]]


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


@dataclasses.dataclass
class BlockwiseMask:
    """The block mask in structured form (training only: the keys are ``[context | all blocks]``).

    ``context``: ``(Bt, N·B, S)`` bool; ``block``: ``(B, B)`` bool in-block pattern shared by every block.
    """

    context: torch.Tensor
    block: torch.Tensor
    block_size: int


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


def build_block_mask(anchors: torch.Tensor, block_size: int, context_len: int, *, keep: torch.Tensor | None = None,
                     causal: bool = False, sliding_window: int | None = None,
                     document_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Dense bool block mask ``(Bt, 1, N·B, S + N·B)`` (True = attend); see :class:`BlockLayout`."""
    return BlockLayout(anchors, block_size, context_len, keep=keep, causal=causal, sliding_window=sliding_window,
                       document_ids=document_ids).dense_mask()


def additive_mask(mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Bool mask (True = attend) → additive float mask (0 = attend, −inf = masked)."""
    out = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return out.masked_fill(~mask.bool(), float("-inf"))


def block_position_ids(anchors: torch.Tensor, block_size: int,
                       position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """``(Bt, N·B)`` slot positions: slot k of the block anchored at a sits at ``pos(a) + k``, where
    ``pos(a) = a`` or ``position_ids[b, a]`` (packed rows restart positions per document)."""
    anchors = anchors.long()
    base = anchors if position_ids is None else position_ids.long().gather(1, anchors.clamp_min(0))
    slots = torch.arange(block_size, device=anchors.device)
    return (base[:, :, None] + slots).reshape(anchors.shape[0], -1)


# ----------------------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------------------

def _head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


class KVInjectionAttention(nn.Module):
    """Qwen3-style attention whose keys/values are ``[context; block]`` and queries the block only.

    Main difference with Qwen3Attention: the context rows (already fused target features) only pass through
    ``k_proj``/``v_proj`` (+ ``k_norm``, rotary at their own positions) — they produce no queries and are not
    updated by the layer.
    """

    def __init__(self, config: Any, layer_idx: int = 0) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.head_dim = _head_dim(config)
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = getattr(config, "num_key_value_heads", None) or self.num_heads
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_attention_heads ({self.num_heads}) must be a multiple of "
                             f"num_key_value_heads ({self.num_kv_heads})")
        self.scaling = self.head_dim ** -0.5
        bias = bool(getattr(config, "attention_bias", False))
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=bias)
        eps = getattr(config, "rms_norm_eps", 1e-6)
        self.q_norm = RMSNorm(self.head_dim, eps=eps)  # per head, over head_dim (Qwen3)
        self.k_norm = RMSNorm(self.head_dim, eps=eps)

    def project_kv(self, x: torch.Tensor, position_embeddings: PositionEmbeddings) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys/values ``(B, Hk, T, D)`` of rows ``x`` ``(B, T, H)``: k_proj → k_norm → rotary; v_proj."""
        b, t, _ = x.shape
        k = self.k_norm(self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = position_embeddings
        return apply_rotary(k, cos, sin), v

    def forward(self, hidden_states: torch.Tensor, context: torch.Tensor | None,
                position_embeddings: PositionEmbeddings, context_position_embeddings: PositionEmbeddings | None = None,
                attention_mask: torch.Tensor | None = None, cache: DraftKVCache | None = None) -> torch.Tensor:
        """``hidden_states`` (B, Q, H) block rows; ``context`` (B, C, H) fused target features (C may be 0 or
        ``None``); ``position_embeddings`` for the block rows, ``context_position_embeddings`` for the context rows.
        ``attention_mask``: bool (True = attend) or additive float, ``(B, 1, Q, C_total + Q)`` where ``C_total``
        includes cached rows; ``None`` = every query sees every key. Returns (B, Q, H)."""
        b, q_len, _ = hidden_states.shape
        q = self.q_norm(self.q_proj(hidden_states).view(b, q_len, self.num_heads, self.head_dim)).transpose(1, 2)
        cos, sin = position_embeddings
        q = apply_rotary(q, cos, sin)  # (B, Hq, Q, D)
        k_blk, v_blk = self.project_kv(hidden_states, position_embeddings)  # (B, Hk, Q, D)

        k_ctx = v_ctx = None
        if context is not None and context.shape[1] > 0:
            if context_position_embeddings is None:
                raise ValueError("context rows need context_position_embeddings")
            k_ctx, v_ctx = self.project_kv(context, context_position_embeddings)  # (B, Hk, C, D)
        if cache is not None:
            if k_ctx is not None:
                k_ctx, v_ctx = cache.append(self.layer_idx, k_ctx, v_ctx)
            else:
                k_ctx, v_ctx = cache.get(self.layer_idx)
        if isinstance(attention_mask, (BlockwiseMask, GroupedBlockMask)):
            k = v = None  # keys stay split: context and blocks are scored separately
        elif k_ctx is not None:
            k, v = torch.cat([k_ctx, k_blk], dim=2), torch.cat([v_ctx, v_blk], dim=2)  # (B, Hk, C+Q, D)
        else:
            k, v = k_blk, v_blk

        if isinstance(attention_mask, (BlockwiseMask, GroupedBlockMask)):
            if cache is not None:
                raise ValueError("the grouped/blockwise backends are for training forwards; decode with a dense "
                                 "mask or None")
            structured = blockwise_attention if isinstance(attention_mask, BlockwiseMask) else grouped_attention
            out = structured(q, k_ctx, v_ctx, k_blk, v_blk, attention_mask, self.scaling)
        else:
            out = masked_sdpa(q, k, v, attention_mask, self.scaling)  # (B, Hq, Q, D)
        out = out.transpose(1, 2).reshape(b, q_len, self.num_heads * self.head_dim)
        return self.o_proj(out)


class SwiGLUMLP(nn.Module):
    """``down(act(gate(x)) * up(x))`` (Llama/Qwen3 MLP)."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        from transformers.activations import ACT2FN

        bias = bool(getattr(config, "mlp_bias", False))
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=bias)
        self.act_fn = ACT2FN[getattr(config, "hidden_act", "silu")]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class BlockDecoderLayer(nn.Module):
    """Pre-RMSNorm decoder layer with KV-injection attention and a SwiGLU MLP (Qwen3DecoderLayer numerics)."""

    def __init__(self, config: Any, layer_idx: int = 0) -> None:
        super().__init__()
        eps = getattr(config, "rms_norm_eps", 1e-6)
        self.self_attn = KVInjectionAttention(config, layer_idx)
        self.mlp = SwiGLUMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=eps)

    def forward(self, hidden_states: torch.Tensor, context: torch.Tensor | None,
                position_embeddings: PositionEmbeddings, context_position_embeddings: PositionEmbeddings | None = None,
                attention_mask: torch.Tensor | None = None, cache: DraftKVCache | None = None) -> torch.Tensor:
        h = hidden_states  # (B, Q, H)
        h = h + self.self_attn(self.input_layernorm(h), context, position_embeddings, context_position_embeddings,
                               attention_mask, cache)
        return h + self.mlp(self.post_attention_layernorm(h))


# ----------------------------------------------------------------------------------------------------------
# Backbone
# ----------------------------------------------------------------------------------------------------------

class BlockBackboneMixin:
    """The block-drafter backbone as a mixin for an ``nn.Module`` (e.g. a ``PreTrainedModel``).

    Call :meth:`_init_block_backbone` from ``__init__``; it creates ``fc``, ``hidden_norm``, ``layers``, ``norm``
    and ``rotary_emb`` on the module itself (flat tensor names, as serving engines expect).
    """

    def _init_block_backbone(self, config: Any, num_context_layers: int, num_layers: int | None = None) -> None:
        if num_context_layers < 1:
            raise ValueError(f"a block drafter needs at least one target context layer, got {num_context_layers}")
        hidden = config.hidden_size
        num_layers = num_layers if num_layers is not None else config.num_hidden_layers
        eps = getattr(config, "rms_norm_eps", 1e-6)
        self.num_context_layers = num_context_layers
        self.fc = nn.Linear(num_context_layers * hidden, hidden, bias=False)
        self.hidden_norm = RMSNorm(hidden, eps=eps)
        self.layers = nn.ModuleList(BlockDecoderLayer(config, i) for i in range(num_layers))
        self.norm = RMSNorm(hidden, eps=eps)
        self.rotary_emb = RotaryEmbedding(config, _head_dim(config))

    def _init_weights(self, module: nn.Module) -> None:
        """``PreTrainedModel`` hook; see :meth:`RotaryEmbedding.reset_inv_freq`."""
        if isinstance(module, RotaryEmbedding):
            module.reset_inv_freq()
            return
        super()._init_weights(module)  # type: ignore[misc]

    def new_cache(self) -> DraftKVCache:
        """An empty context K/V cache sized for this backbone."""
        return DraftKVCache(len(self.layers))

    def project_context(self, target_hidden: torch.Tensor) -> torch.Tensor:
        """``(B, C, m·H)`` concatenated target layers → ``(B, C, H)`` fused context ``hidden_norm(fc(x))``."""
        return self.hidden_norm(self.fc(target_hidden))

    def backbone_forward(self, noise_embedding: torch.Tensor, position_ids: torch.Tensor,
                         target_hidden: torch.Tensor | None = None, context_position_ids: torch.Tensor | None = None,
                         attention_mask: torch.Tensor | None = None, cache: DraftKVCache | None = None) -> torch.Tensor:
        """Run the block rows through every layer; returns ``norm(h)`` ``(B, Q, H)``.

        ``noise_embedding`` (B, Q, H): target embeddings of the block tokens (anchor, mask, ...);
        ``position_ids`` (B, Q) their positions; ``target_hidden`` (B, C, m·H) the new context rows (all of
        them in training; only not-yet-cached ones when decoding with ``cache``) at ``context_position_ids``
        (B, C) (default ``0..C-1``, or continuing after the cache). The fused context is computed once and
        injected into every layer (it is not updated layer to layer).
        """
        h = noise_embedding  # (B, Q, H)
        pos_emb = self.rotary_emb(h, position_ids)  # (cos, sin) each (B, Q, D)
        context = ctx_pos_emb = None
        if target_hidden is not None and target_hidden.shape[1] > 0:
            context = self.project_context(target_hidden).to(h.dtype)  # (B, C, H)
            if context_position_ids is None:
                start = cache.length if cache is not None else 0
                context_position_ids = torch.arange(start, start + context.shape[1], device=h.device)
                context_position_ids = context_position_ids.unsqueeze(0).expand(context.shape[0], -1)
            ctx_pos_emb = self.rotary_emb(h, context_position_ids)  # (B, C, D)
        for layer in self.layers:
            h = layer(h, context, pos_emb, ctx_pos_emb, attention_mask, cache)
        return self.norm(h)


class BlockDraftBackbone(BlockBackboneMixin, nn.Module):
    """Standalone block-drafter backbone (``fc`` + ``hidden_norm`` + layers + ``norm``)."""

    def __init__(self, config: Any, num_context_layers: int, num_layers: int | None = None) -> None:
        nn.Module.__init__(self)
        self._init_block_backbone(config, num_context_layers, num_layers)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.backbone_forward(*args, **kwargs)


__all__ = [
    "ATTENTION_BACKENDS", "BlockLayout", "GroupedBlockMask", "BlockwiseMask", "build_block_mask", "additive_mask",
    "block_position_ids", "masked_sdpa", "grouped_attention", "blockwise_attention", "KVInjectionAttention",
    "SwiGLUMLP",
    "BlockDecoderLayer", "BlockBackboneMixin", "BlockDraftBackbone", "DraftKVCache", "PositionEmbeddings",
]
