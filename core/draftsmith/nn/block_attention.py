"""Block-diffusion drafting blocks shared by DFlash and DSpark, in one namespace (a stable import path).

The pieces live by role: :mod:`draftsmith.nn.block_mask` (layouts and masks), :mod:`draftsmith.nn.attention`
(SDPA with GQA, grouped/blockwise block attention), :mod:`draftsmith.nn.block_layers` (KV-injection attention,
decoder layer), :mod:`draftsmith.nn.mlp` (SwiGLU), :mod:`draftsmith.nn.block_backbone` (context fusion + layer
stack). Later changes to these names are additive only.
"""

from __future__ import annotations

from .attention import blockwise_attention, grouped_attention, masked_sdpa, sdpa_gqa
from .block_backbone import BlockBackboneMixin, BlockDraftBackbone
from .block_layers import BlockDecoderLayer, KVInjectionAttention, PositionEmbeddings, head_dim_of
from .block_mask import (ATTENTION_BACKENDS, BlockLayout, BlockwiseMask, GroupedBlockMask, additive_mask,
                         block_position_ids, build_block_mask)
from .kv_cache import DraftKVCache
from .mlp import SwiGLUMLP

__all__ = [
    "ATTENTION_BACKENDS", "BlockLayout", "GroupedBlockMask", "BlockwiseMask", "build_block_mask", "additive_mask",
    "block_position_ids", "masked_sdpa", "sdpa_gqa", "grouped_attention", "blockwise_attention",
    "KVInjectionAttention", "SwiGLUMLP", "BlockDecoderLayer", "BlockBackboneMixin", "BlockDraftBackbone",
    "DraftKVCache", "PositionEmbeddings", "head_dim_of",
]
