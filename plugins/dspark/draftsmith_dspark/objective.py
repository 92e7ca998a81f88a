"""The DSpark training objective (the ``Objective`` contract of ``draftsmith.method``).

Per micro-batch: sample up to ``num_anchors`` blocks per sequence, run the draft over all of them at once
(:meth:`Qwen3DSparkModel.forward_hidden`), and score the supervised slots with the fused chunked loss —
``0.1·CE + 0.9·L1 + 1.0·BCE(confidence)`` with ``exp(−k/γ_d)`` slot weights and global DP denominators. The
teacher for slot k is the target's distribution at ``anchor + k``: ``heads.lm_head(final_hidden)`` there, with
the scale / soft-cap the target's forward applies after its lm_head (``heads.adjust_logits``).

:meth:`DSparkObjective.acceptance_lengths` (the optional Objective method): every position as an anchor, the
greedy drafts of each block scored against the batch's tokens (for core's exact greedy trajectory replay).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from draftsmith.conventions import check_option_names, validate_mask_token_id
from draftsmith.errors import ConfigError, DataError
from draftsmith.method import ObjectiveOutput, TargetFeatures, TargetHeads, TargetRequest
from draftsmith.nn.block_mask import ATTENTION_BACKENDS
from draftsmith.nn.documents import packed_document_ids
from draftsmith.nn.random_stream import RandomStream

from .anchors import anchor_candidates, sample_block_anchors
from .loss import default_chunk_size, fused_dspark_loss
from .registry import DRAFT_OPTIONS, OBJECTIVE_OPTIONS

# draft options that, given to the objective too, must agree with the draft's config
_DRAFT_KEYS_CHECKED = ("block_size", "markov_rank", "markov_head_type", "mask_token_id", "target_layer_ids")


class DSparkObjective:
    """Options: :data:`~draftsmith_dspark.registry.OBJECTIVE_OPTIONS` (= the method's objective table) —
    ``loss_decay_gamma`` 4.0 (None = uniform), ``first_slot_weight`` 1.0 (slot 1's weight multiplier, in all three
    terms), ``ce_loss_alpha`` 0.1, ``l1_loss_alpha`` 0.9,
    ``confidence_head_alpha`` 1.0, ``loss_chunk_size`` None (slots per vocab chunk; None =
    ``loss.default_chunk_size(V)``: 128 at Qwen3's vocab, 1024 at V = 8192), ``seed`` 0 (anchor draws),
    ``attention_backend`` "auto" (grouped on CPU, sdpa on CUDA: ``draftsmith.nn.block_mask.resolve_backend``),
    ``num_anchors`` None (= the draft config's, 512). Draft options (``block_size``, ``markov_rank``, ...) belong
    to the draft; given here they must agree with the draft's config.

    The objective owns the anchor draws: a :class:`~draftsmith.nn.random_stream.RandomStream` seeded by ``seed``
    (draw i of rank r from ``(seed, r, i)``: different on every rank, reproducible) whose position
    :meth:`run_state` saves in training checkpoints, so a resumed run draws the same anchors."""

    def __init__(self, draft: Any, heads: TargetHeads, **options: Any) -> None:
        check_option_names("DSpark objective", options, set(OBJECTIVE_OPTIONS) | set(DRAFT_OPTIONS))
        cfg = draft.config
        for key in _DRAFT_KEYS_CHECKED:
            if options.get(key) is not None and options[key] != getattr(cfg, key):
                raise ConfigError(f"DSpark objective option {key}={options[key]!r} contradicts the draft's config "
                                  f"({getattr(cfg, key)!r}); set it as a draft option")
        if int(heads.vocab_size) != int(cfg.vocab_size):
            raise ConfigError(f"target vocab {heads.vocab_size} != draft vocab {cfg.vocab_size}")
        # the heads may know eos ids the target config did not
        validate_mask_token_id(cfg.mask_token_id, int(heads.vocab_size), pad_token_id=heads.pad_token_id,
                               eos_token_ids=heads.eos_token_ids, method="DSpark")
        opts = {k: options.get(k, v) for k, v in OBJECTIVE_OPTIONS.items()}
        self.draft, self.heads = draft, heads
        self.loss_decay_gamma = opts["loss_decay_gamma"]
        first = opts["first_slot_weight"]
        if isinstance(first, bool) or not isinstance(first, (int, float)) or not first > 0:
            raise ConfigError(f"first_slot_weight must be a number > 0, got {first!r}")
        self.first_slot_weight = float(first)
        self.ce_alpha = float(opts["ce_loss_alpha"])
        self.l1_alpha = float(opts["l1_loss_alpha"])
        self.conf_alpha = float(opts["confidence_head_alpha"]) if draft.confidence_head is not None else 0.0
        self.chunk_size = int(opts["loss_chunk_size"] or default_chunk_size(cfg.vocab_size))
        self.num_anchors = int(opts["num_anchors"] or cfg.num_anchors)
        self.attention_backend = str(opts["attention_backend"])
        self.anchor_stream = RandomStream(int(opts["seed"]))
        if min(self.ce_alpha, self.l1_alpha, self.conf_alpha) < 0 or self.ce_alpha + self.l1_alpha == 0:
            raise ConfigError("loss weights must be >= 0 with ce_loss_alpha + l1_loss_alpha > 0")
        if self.num_anchors < 1 or self.chunk_size < 1:
            raise ConfigError("num_anchors and loss_chunk_size must be >= 1")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ConfigError(f"attention_backend must be one of {list(ATTENTION_BACKENDS)}, "
                              f"got {self.attention_backend!r}")
        # DSpark drafts own frozen copies of the target's embedding and head (saved with the draft)
        draft.copy_embeddings_from_target(heads.embed_tokens, heads.lm_head)
        if cfg.freeze_embeddings:
            draft.freeze_embeddings()

    # -- anchor draws: resumable, different on every data-parallel rank ------------------------------------------
    def run_state(self) -> dict[str, int]:
        """The anchor stream's position (``{"calls": n}``, the layout checkpoints saved before)."""
        return self.anchor_stream.state_dict()

    def load_run_state(self, state: Mapping[str, Any]) -> None:
        self.anchor_stream.load_state_dict(state)

    def draw_anchors(self, loss_mask: torch.Tensor, position_ids: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """The next draw of :func:`~draftsmith_dspark.anchors.sample_block_anchors` (``num_anchors`` columns;
        packed rows: anchor and first label in the same document) → ``anchors``, ``block_keep_mask`` (B, A)."""
        return sample_block_anchors(loss_mask, self.num_anchors, self.anchor_stream.next_generator(),
                                    doc_ids=packed_document_ids(position_ids))

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
            raise DataError("DSpark's TV/confidence terms need features.final_hidden (target post-norm states)")
        draft = self.draft
        position_ids = batch.get("position_ids")
        anchors, keep = self.draw_anchors(loss_mask, position_ids)  # (B, A) each
        out = draft.forward_hidden(input_ids, features.stacked(draft.config.target_layer_ids), loss_mask,
                                   anchors=anchors, block_keep_mask=keep, position_ids=position_ids,
                                   attention_backend=self.attention_backend)
        markov = draft.markov_head
        res = fused_dspark_loss(
            out.hidden, out.target_ids, out.eval_mask, out.block_keep_mask, draft.lm_head.weight,
            phi=out.markov_features, w2=markov.markov_w2.weight if markov is not None else None,
            teacher_hidden=features.final_hidden if self.needs_teacher else None,
            teacher_positions=out.teacher_positions, teacher_weight=self.heads.lm_head.weight,
            teacher_transform=self.heads.adjust_logits,
            confidence_pred=out.confidence_pred, loss_decay_gamma=self.loss_decay_gamma,
            first_slot_weight=self.first_slot_weight, ce_loss_alpha=self.ce_alpha, l1_loss_alpha=self.l1_alpha, confidence_head_alpha=self.conf_alpha,
            chunk_size=self.chunk_size)
        return ObjectiveOutput(loss=res.loss, metrics=res.metrics, num_tokens=res.num_tokens)

    # -- acceptance lengths for core's greedy trajectory replay --------------------------------------------------
    @torch.no_grad()
    def acceptance_lengths(self, batch: Mapping[str, torch.Tensor], features: TargetFeatures) -> torch.Tensor:
        """``(B, T)`` long: for every usable anchor ``a`` (a real token whose next token is real and, packed, in
        the same document), how many of the γ greedy drafts of the block ``[x_a, MASK × (γ−1)]`` equal
        ``x_{a+1}, x_{a+2}, …`` in a row (stopping at the first miss and at the row's / document's end); −1
        elsewhere.

        Greedy drafting (:func:`~draftsmith_dspark.drafting.markov_decode` at T = 0) draws slot k as
        ``argmax(U_k + W2·φ(prev))`` with ``prev`` the previously *drafted* token. On the leading run of
        correct drafts the drafted tokens are exactly the data tokens, so the teacher-forced forward (prev =
        data token) gives the same argmaxes there and its leading-correct count is the greedy count. Every
        position is an anchor; the forward runs ``num_anchors`` blocks at a time. A drafter confidence
        threshold (a decoding option, unknown here) is not applied: the counts are those of full-γ proposals."""
        input_ids = batch["input_ids"]
        b, t = input_ids.shape
        device = input_ids.device
        attention_mask = batch.get("attention_mask")
        real = (attention_mask.bool() if attention_mask is not None
                else torch.ones_like(input_ids, dtype=torch.bool))
        out = torch.full((b, t), -1, dtype=torch.long, device=device)
        if t < 2:
            return out
        position_ids = batch.get("position_ids")
        usable = torch.zeros_like(real)
        usable[:, :-1] = anchor_candidates(real, packed_document_ids(position_ids))  # real anchor with a real next token (same document)
        draft = self.draft
        context = features.stacked(draft.config.target_layer_ids)  # (B, T, m·H)
        gamma, vocab = int(draft.config.block_size), int(draft.config.vocab_size)
        # slots whose logits are materialised at once (bounds the (.., γ, V) logits at large vocabularies)
        slice_anchors = max(1, (1 << 26) // max(1, b * gamma * vocab))
        positions = torch.arange(t, device=device)
        width = self.num_anchors
        for start in range(0, t - 1, width):  # the last position is never usable
            anchors = positions[start:start + width].expand(b, -1).contiguous()  # (B, n)
            keep = usable[:, start:start + width].contiguous()
            if not keep.any():
                continue
            fwd = draft.forward_hidden(input_ids, context, real, anchors=anchors, block_keep_mask=keep,
                                       position_ids=position_ids, attention_backend=self.attention_backend)
            counts = torch.zeros_like(anchors)
            for s in range(0, anchors.shape[1], slice_anchors):
                sl = slice(s, s + slice_anchors)
                phi = fwd.markov_features[:, sl] if fwd.markov_features is not None else None
                pred = draft.compute_logits(fwd.hidden[:, sl], phi).argmax(dim=-1)  # (B, n', γ)
                hit = (pred == fwd.target_ids[:, sl]) & fwd.eval_mask[:, sl]  # eval_mask: a prefix per block
                counts[:, sl] = torch.cumprod(hit.to(torch.long), dim=-1).sum(dim=-1)
            out[:, start:start + width] = torch.where(keep, counts, torch.full_like(counts, -1))
        return out
