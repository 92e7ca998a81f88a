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

from draftsmith.conventions import check_option_names
from draftsmith.decode.sampling import SamplingConfig, sample, target_distribution
from draftsmith.errors import ConfigError
from draftsmith.method import Proposal, TargetHeads
from draftsmith.nn.block_drafter import BlockDrafterBase

from .registry import DRAFT_OPTIONS, DRAFTER_OPTIONS, OBJECTIVE_OPTIONS
from .scheduling import apply_sts, static_threshold_length


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
    forcing, used to score data and to check training/drafting consistency). At ``temperature`` 0 each slot
    takes the argmax (no distribution); otherwise it samples from ``softmax(z_k / T)``, the ``q`` recorded."""
    sampling = SamplingConfig(temperature=float(temperature))
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
        q = None if sampling.greedy else target_distribution(z, sampling)  # (1, V) fp32
        tok = z.argmax(-1) if q is None else sample(q, generator)  # (1,)
        if forced is not None:
            tok = torch.tensor([int(forced[k])], device=hidden.device)
        tokens.append(tok)
        logits.append(z)
        if q is not None:
            probs.append(q)
        prev = tok
    return MarkovDraft(tokens=torch.cat(tokens), probs=torch.cat(probs) if probs else None,
                       logits=torch.cat(logits), confidence=torch.cat(conf) if conf else None)


class DSparkDrafter(BlockDrafterBase):
    """Drives a :class:`~draftsmith_dspark.draft_qwen3.Qwen3DSparkModel` through decoding rounds (``start`` /
    ``commit`` / ``block_hidden`` bookkeeping: :class:`~draftsmith.nn.block_drafter.BlockDrafterBase`).

    Options (:data:`~draftsmith_dspark.registry.DRAFTER_OPTIONS`): ``confidence_threshold`` (θ in (0, 1]: shorten
    each proposal at the first slot whose calibrated confidence is below θ; needs a confidence head),
    ``confidence_temperatures`` (γ STS temperatures from :func:`~draftsmith_dspark.scheduling.fit_sts_temperatures`).
    Draft / objective options are accepted and ignored (the draft's config fixes γ, the mask id and the feature
    layers). ``default_num_tokens`` = γ: a round asks for the whole block unless the user says otherwise.
    """

    def __init__(self, draft: Any, heads: TargetHeads | None = None, *, confidence_threshold: float | None = None,
                 confidence_temperatures: Sequence[float] | None = None, **options: Any) -> None:
        check_option_names("DSpark drafter", options,
                           set(DRAFTER_OPTIONS) | set(DRAFT_OPTIONS) | set(OBJECTIVE_OPTIONS))
        cfg = draft.config
        if heads is not None and int(heads.vocab_size) != int(cfg.vocab_size):
            raise ConfigError(f"target vocab {heads.vocab_size} != draft vocab {cfg.vocab_size}")
        if confidence_threshold is not None:
            if draft.confidence_head is None:
                raise ConfigError("confidence_threshold needs a draft with a confidence head")
            if not 0.0 < float(confidence_threshold) <= 1.0:
                raise ConfigError(f"confidence_threshold must be in (0, 1], got {confidence_threshold}")
        self.temperatures = None
        if confidence_temperatures is not None:
            self.temperatures = torch.as_tensor(confidence_temperatures, dtype=torch.float32)
            if self.temperatures.shape != (cfg.block_size,) or bool((self.temperatures <= 0).any()):
                raise ConfigError(f"confidence_temperatures must be {cfg.block_size} positive numbers")
        super().__init__(draft, cfg.target_layer_ids, cfg.block_size, cfg.mask_token_id)
        self.heads = heads
        self.default_num_tokens = self.block_size
        self.threshold = confidence_threshold
        self.last_confidence: torch.Tensor | None = None  # (γ,) calibrated σ(c_k / T_k) of the last round

    @torch.no_grad()
    def propose(self, anchor: int, num_tokens: int, temperature: float = 0.0,
                generator: torch.Generator | None = None) -> Proposal:
        """Up to ``min(num_tokens, γ)`` drafts (fewer when the confidence threshold cuts the block)."""
        if num_tokens < 0:
            raise ConfigError(f"num_tokens must be >= 0, got {num_tokens}")
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
