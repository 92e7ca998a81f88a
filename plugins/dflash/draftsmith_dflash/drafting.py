"""DFlash drafting for speculative decoding (batch 1): one draft pass per block (methods.md §2.5).

State: a context K/V cache of the committed positions (target features projected by every draft layer's own
k/v projections) plus the features of newly committed positions not projected yet. ``propose`` runs the
block ``[anchor, MASK × (B−1)]`` at positions ``n .. n+B−1`` (``n`` = committed length) against the cache,
appending the pending context rows on the way; the block's own keys/values are never cached, so after every
pass the cache holds exactly the committed length — the same state z-lab reaches by cropping its cache back
to ``start`` after each draft pass. Drafts are the argmax (greedy) or samples of ``softmax(logits / T)`` per
slot, independently; their distributions are returned for rejection sampling.
"""

from __future__ import annotations

from typing import Any

import torch

from draftsmith.conventions import check_option_names
from draftsmith.errors import ConfigError
from draftsmith.method import Proposal, TargetHeads
from draftsmith.nn.block_drafter import BlockDrafterBase

from .config import check_matches_draft
from .objective import bind_heads
from .registry import DRAFT_OPTIONS, DRAFTER_OPTIONS, OBJECTIVE_OPTIONS


class DFlashDrafter(BlockDrafterBase):
    """``DFlashDrafter(draft, heads)``: the :class:`draftsmith.method.Drafter` protocol for DFlash drafts
    (``start`` / ``commit`` / ``block_hidden`` bookkeeping: :class:`~draftsmith.nn.block_drafter.BlockDrafterBase`).

    Options: :data:`~draftsmith_dflash.registry.DRAFTER_OPTIONS`; draft / objective options are accepted and
    checked against the draft. ``default_num_tokens`` = ``block_size − 1``: a round asks for the whole block."""

    def __init__(self, draft: Any, heads: TargetHeads, **options: Any) -> None:
        check_option_names("DFlashDrafter", options, set(DRAFTER_OPTIONS) | set(DRAFT_OPTIONS) | set(OBJECTIVE_OPTIONS),
                           kind="DFlash")
        check_matches_draft("DFlashDrafter", options, draft.config)
        # attention_backend: one block against a visible prefix, so plain SDPA is exact and cheapest here
        bind_heads(draft, heads)
        super().__init__(draft, draft.target_layer_ids, draft.block_size, draft.mask_token_id)
        self.heads = heads
        self.default_num_tokens = self.block_size - 1

    @property
    def committed(self) -> int:
        """Positions whose target features are known (cached or pending) = the next anchor's position."""
        return self.committed_length

    @property
    def max_tokens(self) -> int:
        """Drafts per pass: ``block_size − 1`` (slot 0 holds the anchor)."""
        return self.block_size - 1

    @torch.no_grad()
    def propose(self, anchor: int, num_tokens: int, temperature: float = 0.0,
                generator: torch.Generator | None = None) -> Proposal:
        """Draft ``min(num_tokens, block_size − 1)`` tokens after ``anchor`` (the token at position
        ``committed``) in one pass."""
        if num_tokens < 1:
            raise ConfigError(f"num_tokens must be >= 1, got {num_tokens}")
        if temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {temperature}")
        draft, n = self.draft, self.committed_length
        k = min(num_tokens, self.block_size - 1)
        mask = None  # bidirectional block over a fully visible prefix: no mask needed
        if draft.config.causal or draft.config.draft_sliding_window is not None:
            mask = draft.block_layout(torch.tensor([[n]], device=draft.fc.weight.device), n).dense_mask()
        hidden = self.block_hidden(anchor, mask)  # (B, H)
        logits = draft.compute_logits(hidden[1:1 + k]).float()  # (k, V): slot j predicts position n + j
        if temperature == 0:
            return Proposal(tokens=logits.argmax(dim=-1))
        probs = torch.softmax(logits / temperature, dim=-1)
        src = probs if generator is None or generator.device == probs.device else probs.to(generator.device)
        tokens = torch.multinomial(src, 1, generator=generator).reshape(-1).to(probs.device)  # one draw per slot
        return Proposal(tokens=tokens, probs=probs)
