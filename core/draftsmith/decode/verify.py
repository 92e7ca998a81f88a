"""Lossless verification of a draft proposal against the target's distributions (chains and trees).

Every function here is vectorised over a leading trial dimension ``N``: the engine calls it with ``N = 1``; the
Monte-Carlo tests call it with ``N = 10^5`` to check that the output distribution equals the target's.

Nodes: node 0 is the anchor (last committed token), node ``i + 1`` is draft ``i``. Row ``j`` of the target's
verification logits predicts the token that follows node ``j``.

Rules (methods.md §1):

* **greedy**: walk from the anchor, following the child whose token equals the target's argmax at the current
  node; the first target argmax without a matching child is the bonus/correction token.
* **sampling, chain with draft probabilities** (the standard rejection sampler): accept draft ``x_k`` with
  probability ``min(1, p_k(x_k)/q_k(x_k))``; at the first rejection sample from ``normalise(max(p_k − q_k, 0))``;
  if all drafts are accepted sample the bonus from ``p`` of the last node. Lossless because ``x_k ~ q_k``
  (the :class:`~draftsmith.method.Proposal` contract).
* **sampling, trees or drafts without probabilities**: the target samples its own token at every node and the
  walk follows the matching child (DDTree's rule). This is lossless for any candidate set — a tree's siblings
  are chosen by ranking, not drawn from ``q``, so ``min(1, p/q)`` would bias the output there — and equals
  rejection sampling with a one-hot ``q`` for deterministic drafts.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from ..errors import DraftsmithError
from .sampling import sample


@dataclasses.dataclass(frozen=True)
class DraftTree:
    """Shape of a proposal: ``parents[i]`` is the draft that draft ``i`` follows (``-1`` = the anchor)."""

    parents: tuple[int, ...]
    depths: tuple[int, ...]  # depth of each draft; the anchor's children have depth 1
    is_chain: bool

    @classmethod
    def chain(cls, num_tokens: int) -> "DraftTree":
        return cls(tuple(range(-1, num_tokens - 1)), tuple(range(1, num_tokens + 1)), True)

    @classmethod
    def from_parents(cls, parents: Sequence[int] | torch.Tensor | None, num_tokens: int) -> "DraftTree":
        if parents is None:
            return cls.chain(num_tokens)
        parents = [int(p) for p in (parents.tolist() if isinstance(parents, torch.Tensor) else parents)]
        if len(parents) != num_tokens:
            raise DraftsmithError(f"proposal has {num_tokens} tokens but {len(parents)} parents")
        depths: list[int] = []
        for i, p in enumerate(parents):
            if not -1 <= p < i:
                raise DraftsmithError(f"proposal parents must list every node after its parent (-1 = anchor); "
                                      f"node {i} has parent {p}")
            depths.append(1 if p == -1 else depths[p] + 1)
        return cls(tuple(parents), tuple(depths), parents == list(range(-1, num_tokens - 1)))

    @property
    def num_tokens(self) -> int:
        return len(self.parents)

    @property
    def max_depth(self) -> int:
        return max(self.depths, default=0)

    def children_matrix(self, device: torch.device | str | None = None) -> torch.Tensor:
        """(k + 1, k) bool: ``[j, i]`` is True when draft ``i`` is a child of node ``j`` (node 0 = anchor)."""
        k = self.num_tokens
        m = torch.zeros(k + 1, k, dtype=torch.bool)
        if k:
            m[torch.tensor(self.parents) + 1, torch.arange(k)] = True
        return m.to(device)

    def ancestor_matrix(self, device: torch.device | str | None = None) -> torch.Tensor:
        """(k + 1, k + 1) bool: ``[j, i]`` is True when node ``i`` is node ``j`` or one of its ancestors."""
        k = self.num_tokens
        m = torch.eye(k + 1, dtype=torch.bool)
        m[:, 0] = True  # every node descends from the anchor
        for i, p in enumerate(self.parents):
            if p >= 0:
                m[i + 1] |= m[p + 1]
        return m.to(device)


@dataclasses.dataclass
class Verification:
    """Outcome of verifying one proposal per trial (leading dim ``N``)."""

    num_accepted: torch.Tensor  # (N,) long: drafts accepted
    path: torch.Tensor  # (N, D) long: accepted draft indices in order, -1 after the last (D = tree depth)
    next_token: torch.Tensor  # (N,) long: correction at the first rejection, or the bonus token
    offered: torch.Tensor  # (N, D) bool: a draft at depth d + 1 existed once d drafts were accepted


def _walk(tree: DraftTree, picks: torch.Tensor, draft_tokens: torch.Tensor) -> Verification:
    """Follow, from the anchor, the child whose token equals the target's pick at the current node."""
    n, k = draft_tokens.shape
    device = draft_tokens.device
    if tree.is_chain:  # vectorised: no loop over depth
        match = draft_tokens == picks[:, :k]  # (N, k)
        accepted = match.long().cumprod(dim=-1).sum(dim=-1)  # (N,)
        steps = torch.arange(k, device=device)
        path = torch.where(steps < accepted[:, None], steps, torch.full_like(steps, -1))  # (N, k)
        offered = steps[None, :] <= accepted[:, None]  # depth d+1 offered iff d drafts accepted (d < k)
        return Verification(accepted, path, picks.gather(1, accepted[:, None]).squeeze(1), offered)
    children = tree.children_matrix(device)  # (k+1, k)
    parent_node = torch.tensor(tree.parents, device=device) + 1  # (k,)
    match = draft_tokens == picks[:, parent_node]  # (N, k): draft i equals the target's pick at its parent
    depth = tree.max_depth
    cur = torch.zeros(n, dtype=torch.long, device=device)
    alive = torch.ones(n, dtype=torch.bool, device=device)
    path = torch.full((n, depth), -1, dtype=torch.long, device=device)
    offered = torch.zeros((n, depth), dtype=torch.bool, device=device)
    for d in range(depth):
        kids = children[cur]  # (N, k)
        offered[:, d] = kids.any(dim=-1) & alive
        candidates = kids & match & alive[:, None]
        found = candidates.any(dim=-1)
        first = candidates.int().argmax(dim=-1)  # the first matching child (duplicate siblings: first wins)
        path[:, d] = torch.where(found, first, path[:, d])
        cur = torch.where(found, first + 1, cur)
        alive = found
    accepted = (path >= 0).sum(dim=-1)
    return Verification(accepted, path, picks.gather(1, cur[:, None]).squeeze(1), offered)


def verify_greedy(target_logits: torch.Tensor, draft_tokens: torch.Tensor, tree: DraftTree) -> Verification:
    """Greedy verification. ``target_logits`` (N, k+1, V) (or argmax ids (N, k+1)), ``draft_tokens`` (N, k)."""
    picks = target_logits.argmax(dim=-1) if target_logits.is_floating_point() else target_logits
    return _walk(tree, picks, draft_tokens)


def verify_sampling(target_probs: torch.Tensor, draft_tokens: torch.Tensor, tree: DraftTree,
                    draft_probs: torch.Tensor | None = None, generator: torch.Generator | None = None
                    ) -> Verification:
    """Verification at temperature > 0.

    ``target_probs`` (N, k+1, V) are the target's sampling distributions (after temperature/top-k/top-p);
    ``draft_probs`` (N, k, V) the distributions the chain's drafts were drawn from (None: deterministic drafts).
    """
    n, k = draft_tokens.shape
    if draft_probs is None or not tree.is_chain:
        return _walk(tree, sample(target_probs, generator), draft_tokens)
    device = draft_tokens.device
    p_x = target_probs[:, :k].gather(-1, draft_tokens[..., None]).squeeze(-1)  # (N, k)
    q_x = draft_probs.gather(-1, draft_tokens[..., None]).squeeze(-1).to(p_x.dtype)  # (N, k)
    u = torch.rand((n, k), generator=generator, device=device)
    ok = u * q_x < p_x  # accept with probability min(1, p/q)
    accepted = ok.long().cumprod(dim=-1).sum(dim=-1)  # (N,)
    rows = torch.arange(n, device=device)
    p_row = target_probs[rows, accepted]  # (N, V)
    # q of the first rejected draft; past the last draft q is 0, so the "residual" is p itself (bonus token)
    q_ext = torch.cat([draft_probs.to(p_x.dtype), draft_probs.new_zeros(n, 1, draft_probs.shape[-1]).to(p_x.dtype)],
                      dim=1)
    residual = (p_row - q_ext[rows, accepted]).clamp_min(0.0)
    mass = residual.sum(dim=-1, keepdim=True)
    # p == q leaves no residual mass, but then rejection has probability 0: fall back to p for safety
    residual = torch.where(mass > 0, residual / mass.clamp_min(1e-30), p_row)
    steps = torch.arange(k, device=device)
    path = torch.where(steps < accepted[:, None], steps, torch.full_like(steps, -1))
    offered = steps[None, :] <= accepted[:, None]
    return Verification(accepted, path, sample(residual, generator), offered)
