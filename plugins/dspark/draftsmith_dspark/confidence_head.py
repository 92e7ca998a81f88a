"""DSpark's confidence head: one logit per block slot predicting that the draft there survives verification.

``c_k = σ(proj([h_k ; W1[x_{k-1}]]))`` (methods.md §3.3) — with ``confidence_head_with_markov`` the Markov
head's previous-token embedding joins the final-normed backbone state, otherwise ``h_k`` alone. It predicts
the *conditional* acceptance of slot k given slots 1..k−1 were accepted; prefix survival is the cumulative
product. Trained with BCE against the detached analytic acceptance ``clamp(1 − ½‖p_d − p_t‖₁, 0, 1)``.
Gradients of that term reach the backbone and ``W1`` (the reference code detaches nothing but the target).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from draftsmith.errors import DataError


class ConfidenceHead(nn.Module):
    """``proj: Linear(H [+ r] → 1)`` with bias; logits are returned in fp32 (they feed BCE and σ)."""

    def __init__(self, hidden_size: int, markov_rank: int = 0) -> None:
        super().__init__()
        self.hidden_size, self.markov_rank = hidden_size, markov_rank
        self.proj = nn.Linear(hidden_size + markov_rank, 1, bias=True)

    @property
    def uses_markov(self) -> bool:
        return self.markov_rank > 0

    def forward(self, hidden: torch.Tensor, prev_embedding: torch.Tensor | None = None) -> torch.Tensor:
        """hidden (..., H), prev_embedding ``W1[x_{k-1}]`` (..., r) when built with a Markov rank -> (...) fp32."""
        if self.uses_markov:
            if prev_embedding is None:
                raise DataError("this confidence head was built with Markov features: pass W1[prev]")
            x = torch.cat([hidden.float(), prev_embedding.float()], dim=-1)  # (..., H + r)
        else:
            if prev_embedding is not None:
                raise DataError("this confidence head was built without Markov features (h_k only)")
            x = hidden.float()  # (..., H)
        return F.linear(x, self.proj.weight.float(), self.proj.bias.float()).squeeze(-1)
