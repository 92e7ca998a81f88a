"""The block-drafter backbone (DFlash, DSpark): target-context fusion, the layer stack, final norm, rotary.

``fc`` (m·H → H, no bias) + ``hidden_norm`` fuse the m captured target layers into one context row per position;
the fused context is injected into every :class:`~draftsmith.nn.block_layers.BlockDecoderLayer`. The mixin lets a
``PreTrainedModel`` own these submodules directly, so saved tensor names are the engines' flat ``layers.*``,
``fc.weight``, ``hidden_norm.weight``, ``norm.weight``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .block_layers import BlockDecoderLayer, head_dim_of
from .kv_cache import DraftKVCache
from .norm import RMSNorm
from .rotary import RotaryEmbedding


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
        self.rotary_emb = RotaryEmbedding(config, head_dim_of(config))

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
