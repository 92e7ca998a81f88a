"""The DSpark training objective (the ``Objective`` contract of ``draftsmith.method``).

Per micro-batch: sample up to ``num_anchors`` blocks per sequence, run the draft over all of them at once
(:meth:`Qwen3DSparkModel.forward_hidden`), and score the supervised slots with the fused chunked loss —
``0.1·CE + 0.9·L1 + 1.0·BCE(confidence)`` with ``exp(−k/γ_d)`` slot weights and global DP denominators. The
teacher for slot k is the target's distribution at ``anchor + k``: ``heads.lm_head(final_hidden)`` there.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping

import torch

from draftsmith.errors import ConfigError
from draftsmith.method import ObjectiveOutput, TargetFeatures, TargetHeads, TargetRequest

from .config import DRAFT_OPTIONS
from .loss import LOSS_DEFAULTS, fused_dspark_loss


class DSparkObjective:
    """Options (defaults): ``loss_decay_gamma`` 4.0 (None = uniform), ``ce_loss_alpha`` 0.1,
    ``l1_loss_alpha`` 0.9, ``confidence_head_alpha`` 1.0, ``loss_chunk_size`` 128 (slots per vocab chunk),
    ``num_anchors`` (default: the draft config's). Draft-structure options (``block_size``, ``markov_rank``,
    ...) are accepted because they arrive in the same dict, but the draft's config is authoritative (a
    contradicting value is reported with a warning)."""

    def __init__(self, draft: Any, heads: TargetHeads, **options: Any) -> None:
        unknown = sorted(set(options) - set(LOSS_DEFAULTS) - set(DRAFT_OPTIONS))
        if unknown:
            raise ConfigError(f"unknown DSpark objective option(s) {unknown}; known: "
                              f"{sorted(LOSS_DEFAULTS)} + num_anchors")
        cfg = draft.config
        for key in ("block_size", "markov_rank", "markov_head_type", "mask_token_id", "target_layer_ids"):
            if options.get(key) is not None and options[key] != getattr(cfg, key):
                # method defaults arrive here too, so a mismatch may not be the user's doing: warn, don't fail
                warnings.warn(f"DSpark objective option {key}={options[key]!r} differs from the draft's config "
                              f"({getattr(cfg, key)!r}); the draft's value is used (set it as a draft option)",
                              stacklevel=2)
        if int(heads.vocab_size) != int(cfg.vocab_size):
            raise ConfigError(f"target vocab {heads.vocab_size} != draft vocab {cfg.vocab_size}")
        opts = {k: options.get(k, v) for k, v in LOSS_DEFAULTS.items()}
        self.draft, self.heads = draft, heads
        self.loss_decay_gamma = opts["loss_decay_gamma"]
        self.ce_alpha = float(opts["ce_loss_alpha"])
        self.l1_alpha = float(opts["l1_loss_alpha"])
        self.conf_alpha = float(opts["confidence_head_alpha"]) if draft.confidence_head is not None else 0.0
        self.chunk_size = int(opts["loss_chunk_size"])
        self.num_anchors = int(options.get("num_anchors") or cfg.num_anchors)
        if min(self.ce_alpha, self.l1_alpha, self.conf_alpha) < 0 or self.ce_alpha + self.l1_alpha == 0:
            raise ConfigError("loss weights must be >= 0 with ce_loss_alpha + l1_loss_alpha > 0")
        if self.num_anchors < 1 or self.chunk_size < 1:
            raise ConfigError("num_anchors and loss_chunk_size must be >= 1")
        # DSpark drafts own frozen copies of the target's embedding and head (saved with the draft)
        draft.copy_embeddings_from_target(heads.embed_tokens, heads.lm_head)
        if cfg.freeze_embeddings:
            draft.freeze_embeddings()

    @property
    def needs_teacher(self) -> bool:
        return self.l1_alpha > 0 or self.conf_alpha > 0

    def target_request(self) -> TargetRequest:
        return TargetRequest(layer_ids=tuple(self.draft.config.target_layer_ids), final_hidden=self.needs_teacher)

    def __call__(self, batch: Mapping[str, torch.Tensor], features: TargetFeatures) -> ObjectiveOutput:
        input_ids = batch["input_ids"]
        loss_mask = batch["loss_mask"].bool()
        if "attention_mask" in batch and batch["attention_mask"] is not None:
            loss_mask = loss_mask & batch["attention_mask"].bool()  # never supervise or anchor on padding
        if self.needs_teacher and features.final_hidden is None:
            raise ValueError("DSpark's TV/confidence terms need features.final_hidden (target post-norm states)")
        draft = self.draft
        out = draft.forward_hidden(input_ids, features.stacked(draft.config.target_layer_ids), loss_mask,
                                   features.final_hidden if self.needs_teacher else None,
                                   position_ids=batch.get("position_ids"), num_anchors=self.num_anchors)
        markov = draft.markov_head
        res = fused_dspark_loss(
            out.hidden, out.target_ids, out.eval_mask, out.block_keep_mask, draft.lm_head.weight,
            phi=out.markov_features, w2=markov.markov_w2.weight if markov is not None else None,
            teacher_hidden=out.teacher_hidden, teacher_weight=self.heads.lm_head.weight,
            confidence_pred=out.confidence_pred, loss_decay_gamma=self.loss_decay_gamma,
            ce_loss_alpha=self.ce_alpha, l1_loss_alpha=self.l1_alpha, confidence_head_alpha=self.conf_alpha,
            chunk_size=self.chunk_size)
        return ObjectiveOutput(loss=res.loss, metrics=res.metrics, num_tokens=res.num_tokens)
