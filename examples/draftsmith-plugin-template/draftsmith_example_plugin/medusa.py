"""The ``medusa`` method's training objective and drafting procedure (draftsmith's Objective/Drafter contracts)."""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F

from draftsmith.method import ObjectiveOutput, Proposal, TargetFeatures, TargetHeads, TargetRequest


class MedusaObjective:
    """Cross-entropy of head k (predicting token t + 2 + k) against the data, on supervised targets only."""

    def __init__(self, draft: Any, heads: TargetHeads, **_options: Any) -> None:
        self.draft = draft
        draft.bind_lm_head(heads.lm_head)

    def target_request(self) -> TargetRequest:
        return TargetRequest(final_hidden=True)

    def __call__(self, batch: Mapping[str, torch.Tensor], features: TargetFeatures) -> ObjectiveOutput:
        ids, mask = batch["input_ids"], batch["loss_mask"].bool() & batch["attention_mask"].bool()
        logits = self.draft(features.final_hidden)  # (B, T, K, V)
        losses, correct, count = [], 0, 0
        for k in range(logits.shape[2]):
            shift = k + 2  # head k at position t predicts token t + 2 + k
            if ids.shape[1] <= shift:
                break
            pred = logits[:, : -shift, k]  # (B, T - shift, V)
            labels, valid = ids[:, shift:], mask[:, shift:]
            if valid.any():
                losses.append(F.cross_entropy(pred[valid], labels[valid]))
                correct += int((pred[valid].argmax(-1) == labels[valid]).sum())
                count += int(valid.sum())
        if not losses:
            zero = logits.sum() * 0.0
            return ObjectiveOutput(zero, {"accuracy": 0.0}, 0)
        loss = torch.stack(losses).mean()
        return ObjectiveOutput(loss, {"accuracy": correct / max(count, 1)}, count)


class MedusaDrafter:
    """Chain drafting: the target's own next-token prediction is the anchor; head k proposes anchor + 1 + k."""

    def __init__(self, draft: Any, heads: TargetHeads, **_options: Any) -> None:
        self.draft = draft
        draft.bind_lm_head(heads.lm_head)
        self.last_hidden: torch.Tensor | None = None

    def target_request(self) -> TargetRequest:
        return TargetRequest(final_hidden=True)

    def start(self, prompt_ids: torch.Tensor, features: TargetFeatures) -> None:
        self.last_hidden = features.final_hidden[:, -1:]  # hidden of the position before the anchor

    @torch.no_grad()
    def propose(self, anchor: int, num_tokens: int, temperature: float = 0.0,
                generator: torch.Generator | None = None) -> Proposal:
        logits = self.draft(self.last_hidden)[0, 0, :num_tokens].float()  # (k, V)
        if temperature > 0:
            probs = torch.softmax(logits / temperature, dim=-1)
            tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            return Proposal(tokens=tokens, probs=probs)
        return Proposal(tokens=logits.argmax(-1))

    def commit(self, tokens: torch.Tensor, features: TargetFeatures) -> None:
        self.last_hidden = features.final_hidden[:, -1:]
