"""The ``medusa`` drafting procedure (draftsmith's Drafter contract, ``draftsmith.method.Drafter``)."""

from __future__ import annotations

from typing import Any

import torch

from draftsmith.conventions import check_option_names
from draftsmith.method import Proposal, TargetFeatures, TargetHeads, TargetRequest

from .registry import DRAFTER_OPTIONS


class MedusaDrafter:
    """Chain drafting: the target's own next-token prediction is the anchor; head k proposes anchor + 1 + k."""

    def __init__(self, draft: Any, heads: TargetHeads, **options: Any) -> None:
        check_option_names("MedusaDrafter", options, DRAFTER_OPTIONS)
        self.draft = draft
        draft.bind_lm_head(heads.lm_head)
        self.default_num_tokens = int(draft.config.num_heads)  # one draft per head (SuggestsNumTokens)
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
