"""Decoding-time drafting for EAGLE drafts (batch 1): chains (EAGLE-1, EAGLE-3) and EAGLE-2 dynamic trees.

A draft *slot* at absolute position ``t`` pairs a token with a feature: committed slots pair ``x_{t+1}`` with the
target's feature at ``t`` (EAGLE-3: the fused aux layers; EAGLE-1: the post-norm final hidden), drafted slots pair
a drafted token with the draft's own previous output (EAGLE-3: its hidden state, fed past ``fc`` exactly as in the
TTT unroll; EAGLE-1: its predicted feature, fed through ``fc`` as in training). The draft keeps its own KV cache of
committed slots; every proposal starts with the *anchor slot* (the anchor token + the feature of the last committed
position, which becomes a committed slot) and drops its drafted slots before returning. So cache contents, rotary
positions and attention equal the training forward's: a chain from slot ``t`` reproduces TTT steps ``0..k-1`` of
slot ``t`` (tests check both, fp32).
"""

from __future__ import annotations

from typing import Any

import torch

from draftsmith.conventions import check_option_names
from draftsmith.errors import ConfigError, DraftsmithError
from draftsmith.method import Proposal, TargetFeatures, TargetHeads, TargetRequest
from draftsmith.nn.weights import unwrap_model

from .draft_llama import LlamaEagle3DraftModel
from .draft_llama_v12 import LlamaEagleDraftModel
from .registry import CHAIN_DRAFTER_OPTIONS, TREE_DRAFTER_OPTIONS


class _EagleDrafter:
    default_num_tokens = 7

    def __init__(self, draft: Any, heads: TargetHeads, **options: Any) -> None:
        check_option_names(type(self).__name__, options, CHAIN_DRAFTER_OPTIONS)
        draft = unwrap_model(draft)
        if isinstance(draft, LlamaEagle3DraftModel):
            self.eagle3 = True
        elif isinstance(draft, LlamaEagleDraftModel):
            self.eagle3 = False
            draft.bind_lm_head(heads.lm_head)
        else:
            raise ConfigError(f"{type(self).__name__} drafts with EAGLE drafts, got {type(draft).__name__}")
        self.draft, self.heads = draft.eval(), heads
        self.vocab_size = int(heads.vocab_size)
        self.cache, self.pending, self.length = None, None, 0

    def target_request(self) -> TargetRequest:
        if self.eagle3:
            return TargetRequest(layer_ids=tuple(self.draft.config.target_layer_ids))
        return TargetRequest(final_hidden=True)

    def _features(self, features: TargetFeatures) -> torch.Tensor:
        if self.eagle3:
            return torch.cat([features.hidden_states[i] for i in self.draft.config.target_layer_ids], dim=-1)
        if features.final_hidden is None:
            raise DraftsmithError("EAGLE-1 drafting needs the target's final_hidden for every committed position")
        return features.final_hidden

    def _step(self, tokens: torch.Tensor, inputs: torch.Tensor, committed: bool,
              mask: torch.Tensor | None = None, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Append slots (tokens ``(1, q)``; ``inputs`` = target features when ``committed``, else the draft's own
        previous outputs) to the cache; returns their outputs ``(1, q, H)``."""
        d = self.draft
        inputs = inputs.to(device=d.fc.weight.device)
        if self.eagle3:
            hidden = d.project_hidden_states(inputs) if committed else inputs
            return d(tokens, hidden, attention_mask=mask, position_ids=positions, cache_hidden=self.cache)
        return d(tokens, inputs, attention_mask=mask, position_ids=positions, cache=self.cache)

    def _logprobs(self, out: torch.Tensor, temperature: float) -> torch.Tensor:
        """``(n, V_target)`` log-probabilities of the next token (-inf outside the draft vocab)."""
        logits = self.draft.compute_logits(out).float()
        if temperature > 0:
            logits = logits / temperature
        logp = logits.log_softmax(-1)
        if self.eagle3 and self.draft.compresses_vocab:
            full = logp.new_full((logp.shape[0], self.vocab_size), float("-inf"))
            full[:, self.draft.selected_token_ids()] = logp
            logp = full
        return logp

    @torch.no_grad()
    def start(self, prompt_ids: torch.Tensor, features: TargetFeatures) -> None:
        ids = prompt_ids.reshape(1, -1).to(self.draft.fc.weight.device)
        feats = self._features(features)  # (1, n, ·)
        if feats.shape[1] != ids.shape[1]:
            raise DraftsmithError(f"start: features cover {feats.shape[1]} positions, the prompt has {ids.shape[1]}")
        self.cache = self.draft.new_cache()
        if ids.shape[1] > 1:
            self._step(ids[:, 1:], feats[:, :-1], committed=True)  # slots 0..n-2
        self.length, self.pending = ids.shape[1] - 1, feats[:, -1:]

    @torch.no_grad()
    def commit(self, tokens: torch.Tensor, features: TargetFeatures) -> None:
        tokens = tokens.reshape(1, -1).to(self.draft.fc.weight.device)
        feats = self._features(features)
        if feats.shape[1] != tokens.shape[1]:
            raise DraftsmithError(f"commit: features cover {feats.shape[1]} positions, {tokens.shape[1]} tokens")
        if tokens.shape[1] > 1:  # the anchor's slot was committed by propose; pair the accepted drafts now
            self._step(tokens[:, 1:], feats[:, :-1], committed=True)
        self.length += tokens.shape[1] - 1
        self.pending = feats[:, -1:]

    def _anchor_slot(self, anchor: int) -> torch.Tensor:
        if self.cache is None:
            raise DraftsmithError("propose() before start()")
        device = self.draft.fc.weight.device
        out = self._step(torch.tensor([[anchor]], device=device), self.pending, committed=True)  # (1, 1, H)
        self.length += 1
        return out


class EagleChainDrafter(_EagleDrafter):
    """Chain drafting: each step feeds the previous drafted token and the draft's own output."""

    @torch.no_grad()
    def propose(self, anchor: int, num_tokens: int, temperature: float = 0.0,
                generator: torch.Generator | None = None) -> Proposal:
        out = self._anchor_slot(anchor)
        tokens, probs = [], []
        for i in range(num_tokens):
            logp = self._logprobs(out[:, -1], temperature)[0]  # (V,)
            if temperature > 0:
                q = logp.exp()  # (V,) zero outside the draft vocab
                if generator is not None:
                    q = q.to(generator.device)
                token = int(torch.multinomial(q, 1, generator=generator))
                probs.append(q)
            else:
                token = int(logp.argmax())
            tokens.append(token)
            if i + 1 < num_tokens:
                out = self._step(torch.tensor([[token]], device=out.device), out[:, -1:], committed=False)
        self.cache.crop(self.length)
        device = generator.device if generator is not None else out.device
        return Proposal(tokens=torch.tensor(tokens, dtype=torch.long, device=device),
                        probs=torch.stack(probs).to(device) if probs else None)


class EagleTreeDrafter(_EagleDrafter):
    """EAGLE-2 dynamic draft tree. Depth 1 holds the anchor slot's ``top_k`` tokens; at each further depth the
    ``top_k`` newest nodes with the highest cumulative draft log-probability are expanded together (one draft
    forward, each node attending to the committed cache, its ancestors and itself), each adding its ``top_k``
    children. The ``num_tokens`` best nodes overall by cumulative log-probability (ties: shallower first, so every
    chosen node's ancestors are chosen) form the proposal, parents before children. The tree is deterministic, so
    at temperature > 0 the engine verifies it by sample-and-match (``probs`` is None)."""

    default_num_tokens = 24

    def __init__(self, draft: Any, heads: TargetHeads, **options: Any) -> None:
        check_option_names(type(self).__name__, options, TREE_DRAFTER_OPTIONS)
        opts = {**TREE_DRAFTER_OPTIONS, **options}
        super().__init__(draft, heads)
        top_k, max_depth = opts["top_k"], opts["max_depth"]
        if int(top_k) < 1 or int(max_depth) < 1:
            raise ConfigError(f"top_k and max_depth must be >= 1, got {top_k}, {max_depth}")
        self.top_k, self.max_depth = int(top_k), int(max_depth)

    @torch.no_grad()
    def propose(self, anchor: int, num_tokens: int, temperature: float = 0.0,
                generator: torch.Generator | None = None) -> Proposal:
        root = self._anchor_slot(anchor)  # (1, 1, H)
        if num_tokens < 1:
            self.cache.crop(self.length)
            return Proposal(tokens=torch.zeros(0, dtype=torch.long), parents=torch.zeros(0, dtype=torch.long))
        device, base = root.device, self.length  # committed slots: positions 0..base-1 (anchor slot = base-1)
        tokens, parents, scores, depths, slot_of = [], [], [], [], []  # slot_of: tree-cache index once expanded
        frontier = self._children(root[0], torch.zeros(1, device=device), [-1], tokens, parents, scores, depths,
                                  slot_of, temperature)
        expanded: list[int] = []  # node id per tree-cache slot
        for depth in range(2, min(self.max_depth, num_tokens) + 1):  # deeper nodes could never be chosen
            if not frontier:
                break
            best = sorted(frontier, key=lambda i: -scores[i])[: self.top_k]
            for i in best:
                slot_of[i] = len(expanded)
                expanded.append(i)
            mask = self._tree_mask(best, parents, slot_of, base, len(expanded), device)
            ids = torch.tensor([[tokens[i] for i in best]], device=device)
            inputs = torch.stack([self._node_out[parents[i]] for i in best])[None]  # parents' outputs (1, m, H)
            positions = torch.full((1, len(best)), base - 1 + depth - 1, device=device)
            out = self._step(ids, inputs, committed=False, mask=mask, positions=positions)[0]  # (m, H)
            frontier = self._children(out, torch.tensor([scores[i] for i in best], device=device), best, tokens,
                                      parents, scores, depths, slot_of, temperature)
        self.cache.crop(self.length)
        keep = sorted(range(len(tokens)), key=lambda i: (-scores[i], depths[i], i))[:num_tokens]
        keep.sort(key=lambda i: (depths[i], i))  # parents before children
        index = {node: j for j, node in enumerate(keep)}
        out_device = generator.device if generator is not None else device
        return Proposal(tokens=torch.tensor([tokens[i] for i in keep], dtype=torch.long, device=out_device),
                        parents=torch.tensor([index[parents[i]] if parents[i] >= 0 else -1 for i in keep],
                                             dtype=torch.long, device=out_device))

    def _children(self, outputs, parent_scores, parent_ids, tokens, parents, scores, depths, slot_of, temperature):
        """Add the ``top_k`` children of each expanded node; remember each node's output for its children."""
        if parent_ids == [-1]:
            self._node_out = {-1: outputs[0]}
        else:
            self._node_out.update({p: o for p, o in zip(parent_ids, outputs)})
        logp = self._logprobs(outputs, temperature)  # (m, V)
        top = logp.topk(min(self.top_k, logp.shape[-1]), dim=-1)
        new = []
        for row, parent in enumerate(parent_ids):
            for lp, tok in zip(top.values[row].tolist(), top.indices[row].tolist()):
                if lp == float("-inf"):
                    continue
                new.append(len(tokens))
                tokens.append(tok)
                parents.append(parent)
                scores.append(float(parent_scores[row]) + lp)
                depths.append(1 if parent < 0 else depths[parent] + 1)
                slot_of.append(-1)
        return new

    @staticmethod
    def _tree_mask(best, parents, slot_of, base, num_slots, device) -> torch.Tensor:
        """``(1, 1, m, base + num_slots)``: committed slots, plus each query's expanded ancestors and itself."""
        mask = torch.zeros(1, 1, len(best), base + num_slots, dtype=torch.bool, device=device)
        mask[..., :base] = True
        for row, node in enumerate(best):
            while node >= 0:
                if slot_of[node] >= 0:
                    mask[0, 0, row, base + slot_of[node]] = True
                node = parents[node]
        return mask
