"""Block-diffusion masks shared by DFlash and DSpark: where each block sits and what it may see.

A block drafter predicts a whole block of tokens in one forward pass. The block holds the anchor token (the last
committed token) followed by mask tokens; its queries attend to (a) the *target's* hidden states of positions
strictly before the anchor — the "context", injected as extra keys/values of every draft layer — and (b) the
other slots of the same block (bidirectionally by default). In training many blocks (one per sampled anchor) run
in one batched forward, laid out as::

    KV = [context 0..S-1 | block_0 (B slots) | block_1 | ... | block_{N-1}]      (S + N·B keys)
    Q  = [block_0 | block_1 | ... | block_{N-1}]                                (N·B queries)

Query (block n, slot k) with anchor ``a`` sees context position ``kv`` iff ``kv < a`` (∧ ``(a + k) − kv < W`` with
a sliding window ``W``, ∧ same packed document, ∧ the block is kept) and slot ``j`` of its own block iff ``j <= k``
when causal (JetSpec variant), always otherwise.

* :class:`BlockLayout` → ``dense_mask()`` bool ``(Bt, 1, N·B, S + N·B)``, ``context_mask()`` ``(Bt, N·B, S)``,
  ``block_mask()`` ``(B, B)``, ``attention_mask(backend)`` (:data:`ATTENTION_BACKENDS`): ``"auto"`` one of the
  others by device (:func:`resolve_backend`), ``"sdpa"`` the dense mask (reference), ``"grouped"`` a
  :class:`GroupedBlockMask`, ``"blockwise"`` a :class:`BlockwiseMask` (consumed by :mod:`draftsmith.nn.attention`).
  Padding blocks (keep False) see no context but keep their in-block attention, so no row is all-masked (SDPA
  would give NaN).
* :func:`build_block_mask`, :func:`additive_mask`, :func:`block_position_ids` (slot k at ``pos(a) + k``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

ATTENTION_BACKENDS = ("auto", "sdpa", "grouped", "blockwise")


def resolve_backend(backend: str, device: torch.device) -> str:
    """``"auto"`` → the fastest exact backend measured on ``device`` (``benchmarks/train_step.py --backend``), any
    other name unchanged. On CUDA a small-shape step is launch-bound (an H200 step at the BENCHMARKS.md DSpark shape
    ran 5 ms of kernels in 37 ms), so one dense SDPA call per layer (``"sdpa"``) beats ``"grouped"``'s 16 calls
    and its per-group host syncs by 2.3×; on the CPU the kernels dominate and ``"grouped"`` skips most of the
    masked-out product (1.75–1.9× the dense path)."""
    if backend != "auto":
        return backend
    return "sdpa" if device.type == "cuda" else "grouped"


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

        * ``"auto"`` → one of the below by the anchors' device (:func:`resolve_backend`);
        * ``"sdpa"`` → the dense bool mask (the reference path);
        * ``"grouped"`` → a :class:`GroupedBlockMask`: consecutive blocks in groups of ``blocks_per_group``, each
          group one SDPA call over only the context its anchors can see (``kv < max anchor``) and its own
          blocks — most of the dense product is masked-out work (other blocks, context past the anchor);
        * ``"blockwise"`` → a :class:`BlockwiseMask`: explicit scores of the context and of the own block, one
          softmax (no SDPA kernel; exact, memory-heavy).
        """
        backend = resolve_backend(backend, self.anchors.device)
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



@dataclasses.dataclass
class GroupedBlockMask:
    """The block mask cut into query groups (training only: keys are ``[context | all blocks]``).

    ``groups``: ``(q_start, q_end, ctx_len, mask)`` per group of consecutive blocks; its queries are rows
    ``q_start:q_end``, its keys the first ``ctx_len`` context rows then its own block rows, ``mask`` the dense
    bool mask ``(Bt, 1, q_end − q_start, ctx_len + q_end − q_start)`` over those keys.
    """

    groups: list[tuple[int, int, int, torch.Tensor]]


@dataclasses.dataclass
class BlockwiseMask:
    """The block mask in structured form (training only: the keys are ``[context | all blocks]``).

    ``context``: ``(Bt, N·B, S)`` bool; ``block``: ``(B, B)`` bool in-block pattern shared by every block.
    """

    context: torch.Tensor
    block: torch.Tensor
    block_size: int


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
