"""The ``medusa`` training objective (draftsmith's Objective contract, ``draftsmith.method.Objective``)."""

from __future__ import annotations

from typing import Any, Mapping

import torch

from draftsmith.conventions import check_option_names
from draftsmith.method import ObjectiveOutput, TargetFeatures, TargetHeads, TargetRequest

from .registry import OBJECTIVE_OPTIONS
from .loss import medusa_loss


class MedusaObjective:
    """Cross-entropy of head k (predicting token t + 2 + k) against the data, on supervised targets only."""

    def __init__(self, draft: Any, heads: TargetHeads, **options: Any) -> None:
        check_option_names("MedusaObjective", options, OBJECTIVE_OPTIONS)
        self.draft = draft
        draft.bind_lm_head(heads.lm_head)

    def target_request(self) -> TargetRequest:
        return TargetRequest(final_hidden=True)

    def __call__(self, batch: Mapping[str, torch.Tensor], features: TargetFeatures) -> ObjectiveOutput:
        ids = batch["input_ids"]
        mask = batch["loss_mask"].bool() & batch["attention_mask"].bool()
        logits = self.draft(features.final_hidden)  # (B, T, K, V)
        loss, correct, count = medusa_loss(logits, ids, mask)
        if loss is None:  # nothing supervised: a zero that still touches every parameter (DDP)
            return ObjectiveOutput(logits.sum() * 0.0, {"accuracy": 0.0}, 0)
        return ObjectiveOutput(loss, {"accuracy": correct / max(count, 1)}, count)
