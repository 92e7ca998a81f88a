"""DSpark's Markov (sequential) head: a low-rank additive logit bias conditioned on the previous token.

The draft distribution of block slot k is ``softmax(U_k + B_k)`` with ``U_k = lm_head(h_k)`` from the parallel
pass and ``B_k = W2 · φ_k`` (methods.md §3.2). Because the bias is additive on logits, the adjusted
distribution is an exact softmax and can be handed to the rejection sampler as ``q``.

Every variant factors as ``B_k = W2(φ_k)`` with a rank-``r`` feature ``φ_k`` that is cheap to compute:

* ``vanilla``: ``φ_k = W1[x_{k-1}]`` (depends on the previous token only);
* ``gated``:   ``φ_k = σ(gate_proj([h_k; W1[x_{k-1}]])) ⊙ W1[x_{k-1}]``;
* ``rnn``:     ``s_k = σ(g)⊙s_{k-1} + (1-σ(g))⊙tanh(c)``, ``φ_k = tanh(o)`` with ``(g, c, o) =
  joint_proj([s_{k-1}; W1[x_{k-1}]; h_k])`` and ``s_0 = 0``.

Splitting ``features`` from ``W2`` lets the loss apply ``W2`` chunk by chunk (fused with ``lm_head``) without
ever materialising vocab-sized tensors for the whole batch. Parameter names follow NeMo AutoModel
(``markov_w1``, ``markov_w2``, ``gate_proj``, ``joint_proj``).
"""

from __future__ import annotations

import torch
from torch import nn

from draftsmith.errors import ConfigError

MARKOV_HEAD_TYPES = ("vanilla", "gated", "rnn")


class VanillaMarkovHead(nn.Module):
    """``B(x_{k-1}) = W2 · W1[x_{k-1}]`` — a rank-r bigram table (the DSpark default) and the base of the other
    variants: ``markov_w1`` (V, r) embeds the previous token, ``markov_w2`` (r → V) maps features to logits."""

    def __init__(self, vocab_size: int, hidden_size: int, rank: int) -> None:
        super().__init__()
        if rank <= 0:
            raise ConfigError(f"markov rank must be positive, got {rank}")
        self.vocab_size, self.hidden_size, self.rank = vocab_size, hidden_size, rank
        self.markov_w1 = nn.Embedding(vocab_size, rank)
        self.markov_w2 = nn.Linear(rank, vocab_size, bias=False)
        self.markov_w2.zero_init = True  # read by the draft's _init_weights (see reset_parameters)
        self.reset_parameters()

    def reset_parameters(self, std: float = 0.02) -> None:
        """W1 ~ N(0, std); W2 = 0, so a fresh head leaves the parallel drafter's logits unchanged (like LoRA's
        zero-initialised up-projection) and training grows the bias from there."""
        nn.init.normal_(self.markov_w1.weight, std=std)
        nn.init.zeros_(self.markov_w2.weight)

    def embed_prev(self, prev_ids: torch.Tensor) -> torch.Tensor:
        """``W1[prev]``: (...) -> (..., r); also the Markov part of the confidence-head input."""
        return self.markov_w1(prev_ids)

    def features(self, hidden: torch.Tensor, prev_ids: torch.Tensor) -> torch.Tensor:
        """Teacher-forced features of a whole block: hidden (..., γ, H), prev (..., γ) -> φ (..., γ, r)."""
        return self.embed_prev(prev_ids)

    def step(self, hidden: torch.Tensor, prev_ids: torch.Tensor, state: torch.Tensor | None
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One left-to-right step at inference: hidden (N, H), prev (N,) -> (φ (N, r), new state)."""
        return self.features(hidden.unsqueeze(-2), prev_ids.unsqueeze(-1)).squeeze(-2), state

    def bias(self, phi: torch.Tensor) -> torch.Tensor:
        """The additive logit bias ``W2 · φ``: (..., r) -> (..., V)."""
        return self.markov_w2(phi)

    def forward(self, hidden: torch.Tensor, prev_ids: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logit bias for a block: (..., γ, H), (..., γ) -> (..., γ, V)."""
        return self.bias(self.features(hidden, prev_ids))

    def extra_repr(self) -> str:
        return f"vocab={self.vocab_size}, rank={self.rank}"


MarkovHead = VanillaMarkovHead  # the common interface (every variant subclasses the vanilla head)


class GatedMarkovHead(VanillaMarkovHead):
    """The bigram feature gated by the slot's hidden state: ``σ(gate_proj([h; e])) ⊙ e``."""

    def __init__(self, vocab_size: int, hidden_size: int, rank: int) -> None:
        super().__init__(vocab_size, hidden_size, rank)
        self.gate_proj = nn.Linear(hidden_size + rank, rank, bias=True)

    def features(self, hidden: torch.Tensor, prev_ids: torch.Tensor) -> torch.Tensor:
        e = self.embed_prev(prev_ids)  # (..., γ, r)
        gate = torch.sigmoid(self.gate_proj(torch.cat([hidden, e.to(hidden.dtype)], dim=-1)))  # (..., γ, r)
        return gate * e


class RNNMarkovHead(VanillaMarkovHead):
    """A gated recurrent state over the block, so slot k sees all earlier tokens, not just ``x_{k-1}``."""

    def __init__(self, vocab_size: int, hidden_size: int, rank: int) -> None:
        super().__init__(vocab_size, hidden_size, rank)
        self.joint_proj = nn.Linear(2 * rank + hidden_size, 3 * rank, bias=True)

    def step(self, hidden: torch.Tensor, prev_ids: torch.Tensor, state: torch.Tensor | None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.embed_prev(prev_ids)  # (N, r)
        if state is None:
            state = e.new_zeros(e.shape)
        gate, cand, out = self.joint_proj(torch.cat([state, e, hidden.to(e.dtype)], dim=-1)).chunk(3, dim=-1)
        gate = torch.sigmoid(gate)
        state = gate * state + (1.0 - gate) * torch.tanh(cand)  # (N, r)
        return torch.tanh(out), state

    def features(self, hidden: torch.Tensor, prev_ids: torch.Tensor) -> torch.Tensor:
        lead = prev_ids.shape[:-1]
        h = hidden.reshape(-1, hidden.shape[-2], hidden.shape[-1])  # (N, γ, H)
        p = prev_ids.reshape(-1, prev_ids.shape[-1])  # (N, γ)
        state, phis = None, []
        for k in range(p.shape[1]):  # unrolled over the (short) block
            phi, state = self.step(h[:, k], p[:, k], state)
            phis.append(phi)
        return torch.stack(phis, dim=1).reshape(*lead, p.shape[-1], self.rank)  # (..., γ, r)


_HEADS = {"vanilla": VanillaMarkovHead, "gated": GatedMarkovHead, "rnn": RNNMarkovHead}


def build_markov_head(head_type: str, vocab_size: int, hidden_size: int, rank: int) -> MarkovHead:
    """The Markov head named ``head_type`` (one of :data:`MARKOV_HEAD_TYPES`)."""
    if head_type not in _HEADS:
        raise ConfigError(f"unknown markov_head_type {head_type!r}; expected one of {list(MARKOV_HEAD_TYPES)}")
    return _HEADS[head_type](vocab_size, hidden_size, rank)
