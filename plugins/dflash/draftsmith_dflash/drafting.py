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

from draftsmith.errors import ConfigError
from draftsmith.method import Proposal, TargetFeatures, TargetHeads, TargetRequest

from .objective import bind_heads
from .options import check_matches_draft, check_options


class DFlashDrafter:
    """``DFlashDrafter(draft, heads)``: the :class:`draftsmith.method.Drafter` protocol for DFlash drafts."""

    def __init__(self, draft: Any, heads: TargetHeads, *, attention_backend: str = "sdpa", **options: Any) -> None:
        check_options("DFlashDrafter", options)
        check_matches_draft("DFlashDrafter", options, draft.config)
        del attention_backend  # one block against a visible prefix: plain SDPA is exact and cheapest here
        self.draft, self.heads = draft, heads
        bind_heads(draft, heads)
        self.block_size = draft.block_size
        self.cache = draft.new_cache()
        self.committed = 0  # positions whose target features are known (cached or pending)
        self._pending: list[torch.Tensor] = []  # (1, c, m·H) feature rows not in the cache yet

    def target_request(self) -> TargetRequest:
        return TargetRequest(layer_ids=tuple(self.draft.target_layer_ids))

    @property
    def max_tokens(self) -> int:
        """Drafts per pass: ``block_size − 1`` (slot 0 holds the anchor)."""
        return self.block_size - 1

    def _features(self, features: TargetFeatures, length: int, what: str) -> torch.Tensor:
        rows = features.stacked(self.draft.target_layer_ids)  # (1, T, m·H)
        if rows.dim() != 3 or rows.shape[0] != 1:
            raise ConfigError(f"DFlashDrafter decodes one request at a time; {what} features have shape "
                              f"{tuple(rows.shape)}")
        if rows.shape[1] != length:
            raise ConfigError(f"{what}: {length} tokens but features for {rows.shape[1]} positions")
        return rows

    def start(self, prompt_ids: torch.Tensor, features: TargetFeatures) -> None:
        """A new request: forget everything and take the prompt's target features (positions ``0..n−1``)."""
        n = int(prompt_ids.reshape(-1).shape[0])
        if n < 1:
            raise ConfigError("DFlashDrafter.start needs a non-empty prompt")
        self.cache.reset()
        self._pending = [self._features(features, n, "start")]
        self.committed = n

    @torch.no_grad()
    def propose(self, anchor: int, num_tokens: int, temperature: float = 0.0,
                generator: torch.Generator | None = None) -> Proposal:
        """Draft ``min(num_tokens, block_size − 1)`` tokens after ``anchor`` (the token at position
        ``committed``) in one pass."""
        if num_tokens < 1:
            raise ConfigError(f"num_tokens must be >= 1, got {num_tokens}")
        if temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {temperature}")
        if self.committed == 0:
            raise ConfigError("DFlashDrafter.propose called before start()")
        draft, bs, n = self.draft, self.block_size, self.committed
        k = min(num_tokens, bs - 1)
        device = draft.fc.weight.device
        ids = torch.full((1, bs), draft.mask_token_id, dtype=torch.long, device=device)
        ids[0, 0] = int(anchor)
        positions = torch.arange(n, n + bs, device=device).unsqueeze(0)  # (1, B): slot k at n + k
        pending = torch.cat(self._pending, dim=1).to(device) if self._pending else None  # (1, c, m·H)
        mask = None  # bidirectional block over a fully visible prefix: no mask needed
        if draft.config.causal or draft.config.draft_sliding_window is not None:
            mask = draft.block_layout(torch.tensor([[n]], device=device), n).dense_mask()
        hidden = draft(draft.embed_tokens(ids), positions, pending, None, mask, self.cache)  # (1, B, H)
        self._pending = []
        if self.cache.length != n:  # the cache must hold exactly the committed context
            raise RuntimeError(f"draft cache length {self.cache.length} != committed length {n}")
        logits = draft.compute_logits(hidden[0, 1:1 + k]).float()  # (k, V): slot j predicts position n + j
        if temperature == 0:
            return Proposal(tokens=logits.argmax(dim=-1))
        probs = torch.softmax(logits / temperature, dim=-1)
        src = probs if generator is None or generator.device == probs.device else probs.to(generator.device)
        tokens = torch.multinomial(src, 1, generator=generator).reshape(-1).to(probs.device)  # one draw per slot
        return Proposal(tokens=tokens, probs=probs)

    def commit(self, tokens: torch.Tensor, features: TargetFeatures) -> None:
        """The committed tokens (anchor + accepted drafts) and their target features: they become context of
        the next pass (projected then). Rejected drafts left no state."""
        count = int(tokens.reshape(-1).shape[0])
        if count < 1:
            raise ConfigError("DFlashDrafter.commit needs at least the anchor token")
        self._pending.append(self._features(features, count, "commit"))
        self.committed += count

