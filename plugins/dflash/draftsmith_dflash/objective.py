"""DFlash training objective (methods.md §2.3–2.4): sampled anchors, one batched block forward, decayed CE.

Per sequence, up to ``num_anchors`` anchors are drawn uniformly without replacement among positions with
``loss_mask[a]`` and a whole block inside the sequence (seeded from ``seed``, the data-parallel rank and the
call count, so runs and resumptions are reproducible and ranks draw different anchors). All blocks of the
batch run in one forward with the block mask (context strictly before the anchor, own block bidirectional).
Slot ``k >= 1`` predicts ``y[a + k]`` through the frozen target ``lm_head``; the loss is the hard-label
cross-entropy weighted by ``exp(−(k−1)/γ)`` (slot 1 also × ``first_slot_weight``) and normalised by ``Σ weight·mask`` of the micro-batch (the
DFlash/NeMo convention). An optional KD term (``kd_weight > 0``, off by default) adds the KL from the target's
own next-token distribution at ``a + k − 1`` to the draft's, as Model-Optimizer's self-logit distillation offers.

Metrics: ``loss``, ``ce``, ``accuracy`` (argmax == label over supervised slots), ``accept_len`` (per block,
leading correct slots + 1, over blocks with a supervised slot) and ``tau_sim`` (= ``accept_len``), ``acc_k``
(accuracy of drafted slot k + 1, :func:`~draftsmith_dflash.anchors.slot_accuracy`), ``kd``
when enabled, ``num_blocks``.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from draftsmith.conventions import check_option_names, validate_mask_token_id
from draftsmith.errors import ConfigError
from draftsmith.method import ObjectiveOutput, TargetFeatures, TargetHeads, TargetRequest
from draftsmith.nn.block_attention import ATTENTION_BACKENDS, block_position_ids
from draftsmith.nn.documents import packed_document_ids
from draftsmith.nn.random_stream import RandomStream

from .anchors import (accept_lengths, anchor_candidates, block_input_ids, block_labels, sample_anchors,
                      slot_accuracy)
from .config import check_matches_draft
from .loss import decay_weights, decayed_cross_entropy, distillation_kl
from .registry import DRAFT_OPTIONS, OBJECTIVE_OPTIONS


def bind_heads(draft: Any, heads: TargetHeads) -> None:
    """Validate the mask token against the target's heads and bind the heads into the draft by reference."""
    validate_mask_token_id(draft.mask_token_id, heads.vocab_size, pad_token_id=heads.pad_token_id,
                           eos_token_ids=heads.eos_token_ids, method="DFlash")
    draft.bind_target_heads(heads.embed_tokens, heads.lm_head)


class DFlashObjective:
    """``DFlashObjective(draft, heads, **options)`` — options :data:`~draftsmith_dflash.registry.OBJECTIVE_OPTIONS`
    (``num_anchors`` 512, ``loss_decay_gamma`` 7.0, ``first_slot_weight`` 1.0, ``kd_weight`` 0.0, ``kd_temperature`` 1.0, ``seed`` 0,
    ``attention_backend`` "auto"); draft options are accepted and checked against the draft. See the module
    docstring.

    The objective owns the anchor draws: a :class:`~draftsmith.nn.random_stream.RandomStream` seeded by ``seed``
    (draw i of rank r from ``(seed, r, i)``) whose position :meth:`run_state` saves in training checkpoints.

    ``attention_backend``: ``"sdpa"`` (one dense block mask — the reference), ``"grouped"`` (the same dense masks
    cut per group of blocks to the context they can see, one SDPA call each; equal results, ~2× faster CPU steps
    at the reference shape), ``"blockwise"``, or ``"auto"`` (default: grouped on CPU, sdpa on CUDA, where the
    launch-bound step favours one call per layer — :func:`draftsmith.nn.block_mask.resolve_backend`); see
    :mod:`draftsmith.nn.block_attention`."""

    def __init__(self, draft: Any, heads: TargetHeads, **options: Any) -> None:
        check_option_names("DFlashObjective", options, set(OBJECTIVE_OPTIONS) | set(DRAFT_OPTIONS), kind="DFlash")
        check_matches_draft("DFlashObjective", options, draft.config)
        opts = {**OBJECTIVE_OPTIONS, **{k: v for k, v in options.items() if k in OBJECTIVE_OPTIONS}}
        num_anchors, attention_backend = opts["num_anchors"], opts["attention_backend"]
        kd_weight, kd_temperature = opts["kd_weight"], opts["kd_temperature"]
        if isinstance(num_anchors, bool) or not isinstance(num_anchors, int) or num_anchors < 1:
            raise ConfigError(f"num_anchors must be a positive int, got {num_anchors!r}")
        if attention_backend not in ATTENTION_BACKENDS:
            raise ConfigError(f"unknown block attention backend {attention_backend!r}; choose from "
                              f"{list(ATTENTION_BACKENDS)}")
        if kd_weight < 0 or kd_temperature <= 0:
            raise ConfigError(f"kd_weight must be >= 0 and kd_temperature > 0, got {kd_weight}, {kd_temperature}")
        self.draft, self.heads = draft, heads
        bind_heads(draft, heads)
        self.block_size = draft.block_size
        self.num_anchors = num_anchors
        self.kd_weight, self.kd_temperature = float(kd_weight), float(kd_temperature)
        self.attention_backend = attention_backend
        first = opts["first_slot_weight"]
        if isinstance(first, bool) or not isinstance(first, (int, float)) or not first > 0:
            raise ConfigError(f"first_slot_weight must be a number > 0, got {first!r}")
        self.slot_weights = decay_weights(self.block_size, opts["loss_decay_gamma"])  # (B,), 0 for the anchor slot
        self.slot_weights[1] *= float(first)
        self.anchor_stream = RandomStream(int(opts["seed"]))

    def target_request(self) -> TargetRequest:
        return TargetRequest(layer_ids=tuple(self.draft.target_layer_ids), final_hidden=self.kd_weight > 0)

    def run_state(self) -> dict[str, int]:
        """The anchor stream's position (``{"calls": n}``; the same on every rank, each rank drawing its own)."""
        return self.anchor_stream.state_dict()

    def load_run_state(self, state: Mapping[str, Any]) -> None:
        self.anchor_stream.load_state_dict(state)

    def draw_anchors(self, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The next draw: up to ``num_anchors`` anchors per row among ``valid (B, T)`` → ``anchors``, ``keep``
        ``(B, N)``."""
        return sample_anchors(valid, self.num_anchors, self.anchor_stream.next_generator())

    # ------------------------------------------------------------------------------------------------------

    def _forward_blocks(self, batch: Mapping[str, torch.Tensor], features: TargetFeatures, anchors: torch.Tensor,
                        keep: torch.Tensor, document_ids: torch.Tensor | None) -> torch.Tensor:
        """Hidden states ``(B, N, B, H)`` of every block in one forward."""
        draft, bs = self.draft, self.block_size
        input_ids = batch["input_ids"]
        b, t = input_ids.shape
        position_ids = batch.get("position_ids")
        noise = draft.embed_tokens(block_input_ids(input_ids, anchors, keep, bs, draft.mask_token_id))  # (B, N·B, H)
        block_pos = block_position_ids(anchors, bs, position_ids)  # (B, N·B)
        ctx_pos = position_ids if position_ids is not None else torch.arange(t, device=input_ids.device).expand(b, -1)
        target_hidden = features.stacked(draft.target_layer_ids)  # (B, T, m·H)
        layout = draft.block_layout(anchors, t, keep=keep, document_ids=document_ids)
        mask = layout.attention_mask(self.attention_backend)
        hidden = draft(noise, block_pos, target_hidden, ctx_pos, mask)  # (B, N·B, H)
        return hidden.view(b, anchors.shape[1], bs, -1)

    def _zero_output(self) -> ObjectiveOutput:
        # No supervised block in this micro-batch: a zero loss that still touches every trainable parameter,
        # so data-parallel gradient reduction sees the same parameters on every rank.
        zero = torch.stack([p.sum() for p in self.draft.parameters() if p.requires_grad]).sum() * 0.0
        metrics = {"loss": 0.0, "ce": 0.0, "accuracy": 0.0, "accept_len": 0.0, "tau_sim": 0.0, "num_blocks": 0,
                   **{f"acc_{k}": 0.0 for k in range(self.block_size - 1)}}
        return ObjectiveOutput(loss=zero, metrics=metrics, num_tokens=0)

    def __call__(self, batch: Mapping[str, torch.Tensor], features: TargetFeatures) -> ObjectiveOutput:
        input_ids, loss_mask = batch["input_ids"], batch["loss_mask"]
        if input_ids.shape != loss_mask.shape:
            raise ConfigError(f"input_ids {tuple(input_ids.shape)} and loss_mask {tuple(loss_mask.shape)} differ")
        position_ids = batch.get("position_ids")
        docs = packed_document_ids(position_ids)
        if "attention_mask" in batch:
            loss_mask = loss_mask.bool() & batch["attention_mask"].bool()
        valid = anchor_candidates(loss_mask, self.block_size, docs)
        anchors, keep = self.draw_anchors(valid)  # (B, N)
        labels, mask = block_labels(input_ids, loss_mask, anchors, keep, self.block_size, docs)  # (B, N, B)
        if not mask.any():
            return self._zero_output()

        hidden = self._forward_blocks(batch, features, anchors, keep, docs)  # (B, N, B, H)
        sel = mask.nonzero(as_tuple=True)  # supervised slots only: no logits for anchors or padding
        logits = self.draft.compute_logits(hidden[sel]).float()  # (M, V)
        weights = self.slot_weights.to(logits.device)[sel[2]]  # (M,)
        ce_loss = decayed_cross_entropy(logits, labels[sel], weights)
        loss = ce_loss
        metrics: dict[str, Any] = {}
        if self.kd_weight > 0:
            kd = self._kd(logits, features, anchors, sel)  # (M,)
            kd_loss = (weights * kd).sum() / weights.sum()
            loss = loss + self.kd_weight * kd_loss
            metrics["kd"] = kd_loss.detach()

        with torch.no_grad():
            correct = torch.zeros_like(mask)
            correct[sel] = logits.argmax(dim=-1) == labels[sel]
            blocks = mask.any(dim=-1)  # (B, N) blocks with >= 1 supervised slot
            accept = accept_lengths(correct, mask)[blocks].float() + 1.0
            metrics.update(loss=loss.detach(), ce=ce_loss.detach(),
                           accuracy=correct[sel].float().mean(), accept_len=accept.mean(), tau_sim=accept.mean(),
                           num_blocks=int(blocks.sum()))
            # acc_k: accuracy of drafted slot k + 1 (0-based like EAGLE's acc_k), the curve trackers plot
            metrics.update({f"acc_{k}": a for k, a in enumerate(slot_accuracy(correct, mask))})
        return ObjectiveOutput(loss=loss, metrics=metrics, num_tokens=int(sel[0].numel()))

    def _kd(self, logits: torch.Tensor, features: TargetFeatures, anchors: torch.Tensor,
            sel: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Per-slot KL(p_target ‖ p_draft) at temperature τ (× τ²); the target's distribution for token
        ``a + k`` is its lm_head at position ``a + k − 1``."""
        if features.final_hidden is None:
            raise ConfigError("kd_weight > 0 needs the target's final hidden states (TargetRequest.final_hidden)")
        b_idx, n_idx, k_idx = sel
        src = anchors[b_idx, n_idx] + k_idx - 1  # (M,)
        with torch.no_grad():
            teacher = self.heads.target_logits(features.final_hidden[b_idx, src])  # (M, V) as the target's
        return distillation_kl(logits, teacher, self.kd_temperature)

    # ------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def acceptance_lengths(self, batch: Mapping[str, torch.Tensor], features: TargetFeatures) -> torch.Tensor:
        """``(B, T)`` long: for every usable anchor ``a`` (a real token with a next token in the row), how many
        greedy drafts in a row from a block anchored at ``a`` equal the batch's tokens; −1 elsewhere."""
        input_ids = batch["input_ids"]
        b, t = input_ids.shape
        real = batch["attention_mask"].bool() if "attention_mask" in batch else torch.ones_like(input_ids).bool()
        position_ids = batch.get("position_ids")
        docs = packed_document_ids(position_ids)
        nxt = torch.zeros_like(real)
        nxt[:, :-1] = real[:, 1:]
        if docs is not None:
            nxt[:, :-1] &= docs[:, 1:] == docs[:, :-1]
        usable = real & nxt
        out = torch.full((b, t), -1, dtype=torch.long, device=input_ids.device)
        positions = torch.arange(t, device=input_ids.device)
        for start in range(0, t, self.num_anchors):  # every position is an anchor; chunked to bound memory
            anchors = positions[start:start + self.num_anchors].expand(b, -1).contiguous()  # (B, n)
            keep = usable[:, start:start + self.num_anchors]
            if not keep.any():
                continue
            labels, mask = block_labels(input_ids, real, anchors, keep, self.block_size, docs)
            hidden = self._forward_blocks(batch, features, anchors, keep, docs)
            pred = self.draft.compute_logits(hidden).argmax(dim=-1)  # (B, n, B)
            counts = accept_lengths(pred == labels, mask)
            out[:, start:start + self.num_anchors] = torch.where(keep, counts, torch.full_like(counts, -1))
        return out
