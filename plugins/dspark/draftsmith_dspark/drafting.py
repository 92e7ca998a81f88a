"""DSpark drafting for speculative decoding (batch 1; the Drafter protocol of ``draftsmith.method``).

One round (methods.md §3.7): the block ``[x_0, MASK × (γ−1)]`` at positions ``start..start+γ−1`` runs through
the backbone once, with the not-yet-cached context rows (committed tokens' target features) appended to the
draft's K/V cache on the way; the block's own keys/values never enter the cache, so after the pass the cache
holds exactly the ``start`` committed positions (the DFlash "crop to start"). Then ``U = lm_head(h)`` for all γ
slots and the Markov head runs left to right: slot k's distribution is ``softmax((U_k + W2·φ(x_{k−1}))/T)``,
the token drawn from it becomes ``x_k`` — so the ``q`` handed to the rejection sampler is exactly the
distribution each draft was drawn from. The confidence head scores each slot from ``[h_k; W1[x_{k−1}]]``; an
optional static threshold cuts the proposal at the first slot with ``σ(c_k/T_k) < θ``.

Exactly consistent with the training forward: a block anchored at ``a`` sees context ``< a`` and slot
positions ``a + k`` in both (tested: batched training logits == incremental drafting logits).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch

from draftsmith.method import Proposal, TargetFeatures, TargetHeads, TargetRequest

from .config import DRAFT_OPTIONS
from .loss import OBJECTIVE_DEFAULTS
from .sampling import sample_token
from .scheduling import apply_sts, static_threshold_length

DRAFTER_OPTIONS = ("confidence_threshold", "confidence_temperatures")


@dataclasses.dataclass
class MarkovDraft:
    tokens: torch.Tensor  # (γ,) drafted ids
    probs: torch.Tensor | None  # (γ, V) the q each token was drawn from (None: greedy)
    logits: torch.Tensor  # (γ, V) Markov-adjusted logits (before temperature)
    confidence: torch.Tensor | None  # (γ,) confidence logits (uncalibrated)


@torch.no_grad()
def markov_decode(draft: Any, hidden: torch.Tensor, anchor: int, temperature: float = 0.0,
                  generator: torch.Generator | None = None, forced: Sequence[int] | None = None) -> MarkovDraft:
    """The sequential stage over one block: hidden (γ, H) final-normed slot states -> drafts.

    ``forced`` replaces each drawn token by the given one before it conditions the next slot (teacher
    forcing, used to score data and to check training/drafting consistency)."""
    base = draft.lm_head(hidden)  # (γ, V) parallel-pass logits U
    markov, conf_head = draft.markov_head, draft.confidence_head
    prev = torch.tensor([anchor], device=hidden.device)
    state = None
    tokens, probs, logits, conf = [], [], [], []
    for k in range(hidden.shape[0]):
        h_k = hidden[k:k + 1]  # (1, H)
        z = base[k:k + 1]
        if markov is not None:
            phi, state = markov.step(h_k, prev, state)  # (1, r)
            z = z + markov.bias(phi).to(z.dtype)
        if conf_head is not None:
            conf.append(conf_head(h_k, markov.embed_prev(prev) if conf_head.uses_markov else None))
        tok, q = sample_token(z, temperature, generator)  # (1,), (1, V) | None
        if forced is not None:
            tok = torch.tensor([int(forced[k])], device=hidden.device)
        tokens.append(tok)
        logits.append(z)
        if q is not None:
            probs.append(q)
        prev = tok
    return MarkovDraft(tokens=torch.cat(tokens), probs=torch.cat(probs) if probs else None,
                       logits=torch.cat(logits), confidence=torch.cat(conf) if conf else None)


class DSparkDrafter:
    """Drives a :class:`~draftsmith_dspark.draft_qwen3.Qwen3DSparkModel` through decoding rounds.

    Options: ``confidence_threshold`` (θ in (0, 1]: shorten each proposal at the first slot whose calibrated
    confidence is below θ; needs a confidence head), ``confidence_temperatures`` (γ STS temperatures from
    :func:`~draftsmith_dspark.scheduling.fit_sts_temperatures`). Method / objective options are accepted and
    ignored (the draft's config fixes γ, the mask id and the feature layers).
    """

    def __init__(self, draft: Any, heads: TargetHeads | None = None, *, confidence_threshold: float | None = None,
                 confidence_temperatures: Sequence[float] | None = None, **options: Any) -> None:
        unknown = sorted(set(options) - set(DRAFT_OPTIONS) - set(OBJECTIVE_DEFAULTS))
        if unknown:
            raise ValueError(f"unknown DSpark drafting option(s) {unknown}; known: {list(DRAFTER_OPTIONS)}")
        cfg = draft.config
        if heads is not None and int(heads.vocab_size) != int(cfg.vocab_size):
            raise ValueError(f"target vocab {heads.vocab_size} != draft vocab {cfg.vocab_size}")
        if confidence_threshold is not None:
            if draft.confidence_head is None:
                raise ValueError("confidence_threshold needs a draft with a confidence head")
            if not 0.0 < float(confidence_threshold) <= 1.0:
                raise ValueError(f"confidence_threshold must be in (0, 1], got {confidence_threshold}")
        self.temperatures = None
        if confidence_temperatures is not None:
            self.temperatures = torch.as_tensor(confidence_temperatures, dtype=torch.float32)
            if self.temperatures.shape != (cfg.block_size,) or bool((self.temperatures <= 0).any()):
                raise ValueError(f"confidence_temperatures must be {cfg.block_size} positive numbers")
        self.draft, self.heads = draft, heads
        self.block_size, self.mask_token_id = int(cfg.block_size), int(cfg.mask_token_id)
        self.layer_ids = tuple(cfg.target_layer_ids)
        self.threshold = confidence_threshold
        self.cache = None
        self._pending: torch.Tensor | None = None  # (1, C, m·H) committed features not yet in the cache
        self._length = 0  # committed positions (= the next anchor's position)
        self.last_confidence: torch.Tensor | None = None  # (γ,) calibrated σ(c_k / T_k) of the last round

    def target_request(self) -> TargetRequest:
        return TargetRequest(layer_ids=self.layer_ids, final_hidden=False)

    def _rows(self, features: TargetFeatures, count: int) -> torch.Tensor:
        rows = features.stacked(self.layer_ids)  # (1, L, m·H)
        if rows.dim() != 3 or rows.shape[0] != 1 or rows.shape[1] != count:
            raise ValueError(f"expected features for {count} positions of one sequence, got {tuple(rows.shape)}")
        param = self.draft.fc.weight
        return rows.to(device=param.device, dtype=param.dtype)

    def start(self, prompt_ids: torch.Tensor, features: TargetFeatures) -> None:
        """New request: the prompt's target features (positions 0..n−1) become the draft context."""
        n = int(prompt_ids.reshape(-1).shape[0])
        self.cache = self.draft.new_cache()
        self._pending = self._rows(features, n)
        self._length = n

    @torch.no_grad()
    def block_hidden(self, anchor: int) -> torch.Tensor:
        """The backbone pass for the block anchored at the next position: (γ, H) final-normed states."""
        if self.cache is None:
            raise RuntimeError("call start(prompt_ids, features) before propose()")
        start, gamma = self._length, self.block_size
        device = self.draft.fc.weight.device
        ids = torch.full((1, gamma), self.mask_token_id, dtype=torch.long, device=device)
        ids[0, 0] = int(anchor)
        positions = torch.arange(start, start + gamma, device=device)[None]  # (1, γ)
        pending = self._pending
        ctx_pos = None
        if pending is not None:
            ctx_pos = torch.arange(self.cache.length, self.cache.length + pending.shape[1], device=device)[None]
        hidden = self.draft.backbone_forward(self.draft.embed_tokens(ids), positions, pending, ctx_pos,
                                             attention_mask=None, cache=self.cache)  # (1, γ, H)
        self._pending = None
        self.cache.crop(start)  # the cache holds the committed context only (block K/V were never stored)
        return hidden[0]

    @torch.no_grad()
    def propose(self, anchor: int, num_tokens: int, temperature: float = 0.0,
                generator: torch.Generator | None = None) -> Proposal:
        """Up to ``min(num_tokens, γ)`` drafts (fewer when the confidence threshold cuts the block)."""
        if num_tokens < 0:
            raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
        out = markov_decode(self.draft, self.block_hidden(anchor), int(anchor), temperature, generator)
        n = min(int(num_tokens), self.block_size)
        self.last_confidence = None
        if out.confidence is not None:
            logits = out.confidence if self.temperatures is None else apply_sts(
                out.confidence, self.temperatures.to(out.confidence.device))
            self.last_confidence = torch.sigmoid(logits)
            if self.threshold is not None:
                n = min(n, static_threshold_length(logits, self.threshold))
        return Proposal(tokens=out.tokens[:n], probs=out.probs[:n] if out.probs is not None else None)

    def commit(self, tokens: torch.Tensor, features: TargetFeatures) -> None:
        """Committed tokens (anchor + accepted drafts, bonus excluded) and their target features: they become
        context for the next round; nothing of rejected drafts was kept."""
        if self.cache is None:
            raise RuntimeError("call start(prompt_ids, features) before commit()")
        n = int(tokens.reshape(-1).shape[0])
        if n < 1:
            raise ValueError("commit needs at least the anchor token")
        rows = self._rows(features, n)
        self._pending = rows if self._pending is None else torch.cat([self._pending, rows], dim=1)
        self._length += n

    @property
    def committed_length(self) -> int:
        return self._length
