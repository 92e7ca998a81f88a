"""Decoding bookkeeping shared by the block drafters (DFlash, DSpark): committed context, one pass per block.

State of one request (batch 1): a :class:`~draftsmith.nn.kv_cache.DraftKVCache` holding the committed positions'
target features projected by every draft layer's own k/v projections, plus the features of newly committed
positions not projected yet (*pending*). A pass runs the block ``[anchor, MASK × (B−1)]`` at positions
``n .. n+B−1`` (``n`` = committed length) against the cache, appending the pending rows on the way; the block's
own keys/values are never cached, so after every pass the cache holds exactly the committed length (the state
z-lab reaches by cropping its cache back to ``start`` after each draft pass). Rejected drafts leave no state.

A method's drafter subclasses :class:`BlockDrafterBase` and implements ``propose`` from :meth:`block_hidden`.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..errors import ConfigError, DraftsmithError
from ..method import TargetFeatures, TargetRequest


class BlockDrafterBase:
    """``start`` / ``commit`` / ``target_request`` of the Drafter protocol for a block-drafter backbone.

    ``draft`` provides ``backbone_forward``, ``new_cache``, ``fc`` (the fusion layer: its device and dtype are the
    draft's) and ``embed_tokens(ids)``; ``layer_ids`` are the captured target layers, ``block_size`` the slots of a
    pass (anchor included), ``mask_token_id`` fills the draft slots.
    """

    def __init__(self, draft: Any, layer_ids: Sequence[int], block_size: int, mask_token_id: int) -> None:
        self.draft = draft
        self.layer_ids = tuple(int(i) for i in layer_ids)
        self.block_size, self.mask_token_id = int(block_size), int(mask_token_id)
        self.cache = draft.new_cache()
        self._pending: list[torch.Tensor] = []  # (1, c, m·H) committed feature rows not in the cache yet
        self._length = 0  # committed positions = the next anchor's position
        self._started = False

    def target_request(self) -> TargetRequest:
        return TargetRequest(layer_ids=self.layer_ids)

    @property
    def committed_length(self) -> int:
        return self._length

    def _rows(self, features: TargetFeatures, count: int, what: str) -> torch.Tensor:
        rows = features.stacked(self.layer_ids)  # (1, L, m·H)
        if rows.dim() != 3 or rows.shape[0] != 1:
            raise ConfigError(f"{type(self).__name__} decodes one request at a time; {what} features have shape "
                              f"{tuple(rows.shape)}")
        if rows.shape[1] != count:
            raise ConfigError(f"{what}: {count} tokens but features for {rows.shape[1]} positions")
        param = self.draft.fc.weight
        return rows.to(device=param.device, dtype=param.dtype)

    def start(self, prompt_ids: torch.Tensor, features: TargetFeatures) -> None:
        """A new request: forget everything and take the prompt's target features (positions ``0..n−1``)."""
        n = int(prompt_ids.reshape(-1).shape[0])
        if n < 1:
            raise ConfigError(f"{type(self).__name__}.start needs a non-empty prompt")
        self.cache.reset()
        self._pending = [self._rows(features, n, "start")]
        self._length, self._started = n, True

    def commit(self, tokens: torch.Tensor, features: TargetFeatures) -> None:
        """The committed tokens (anchor + accepted drafts, bonus excluded) and their target features: they become
        context of the next pass (projected then)."""
        if not self._started:
            raise ConfigError(f"{type(self).__name__}.commit called before start()")
        count = int(tokens.reshape(-1).shape[0])
        if count < 1:
            raise ConfigError(f"{type(self).__name__}.commit needs at least the anchor token")
        self._pending.append(self._rows(features, count, "commit"))
        self._length += count

    @torch.no_grad()
    def block_hidden(self, anchor: int, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """One backbone pass of the block anchored at the next position → ``(B, H)`` final-normed slot states.

        ``attention_mask``: a dense bool mask over ``[committed context | block]`` (causal or windowed variants),
        or ``None`` (every slot sees the whole committed context and the whole block)."""
        if not self._started:
            raise ConfigError(f"{type(self).__name__}.propose called before start()")
        draft, n, bs = self.draft, self._length, self.block_size
        device = draft.fc.weight.device
        ids = torch.full((1, bs), self.mask_token_id, dtype=torch.long, device=device)
        ids[0, 0] = int(anchor)
        positions = torch.arange(n, n + bs, device=device)[None]  # (1, B): slot k at n + k
        pending = torch.cat(self._pending, dim=1) if self._pending else None  # (1, c, m·H)
        hidden = draft.backbone_forward(draft.embed_tokens(ids), positions, pending, None, attention_mask,
                                        self.cache)  # (1, B, H)
        self._pending = []
        if self.cache.length != n:  # the block's keys/values never enter the cache
            raise DraftsmithError(f"draft cache length {self.cache.length} != committed length {n}")
        return hidden[0]
