"""Method-agnostic speculative decoding (batch 1): the engine owns the target, a method's Drafter drafts.

One round (methods.md §2.5, §3.7; the Drafter protocol in :mod:`draftsmith.method`):

1. ``drafter.propose(anchor, k)`` → draft tokens (a chain, or a tree given by ``parents``);
2. one target forward over ``[anchor, drafts]`` with the KV cache — chains at positions ``start .. start + k``,
   trees at ``start + depth`` with an ancestor-only 4-D mask — while forward hooks capture the features the
   drafter asked for (no second target pass);
3. lossless verification (:mod:`draftsmith.decode.verify`) → accepted path + bonus/correction token;
4. the target cache is cropped (chain) or compacted (tree) to the committed tokens, and
   ``drafter.commit([anchor, accepted...], their features)``; the bonus token becomes the next anchor.

EOS inside a block ends generation at the EOS (later accepted drafts are dropped); the length limit caps the
draft count and truncates the last round's commit, so the output always equals plain decoding's.
"""

from __future__ import annotations

import time
from typing import Any, Iterable

import torch

from ..errors import ConfigError, DraftsmithError
from ..method import Proposal, SuggestsNumTokens, TargetFeatures
from ..target import FeatureCapture, target_heads
from . import cache as kv
from .plain import (as_prompt, cache_kwargs, check_max_new_tokens, model_device, prefill, supports_logits_to_keep,
                    synchronize)
from .sampling import SamplingConfig, pick_token, target_distribution
from .stats import GenerationResult, RoundRecord
from .verify import DraftTree, Verification, verify_greedy, verify_sampling

# Used when neither the user nor the drafter says how many drafts to ask per round.
DEFAULT_NUM_DRAFT_TOKENS = 7


def default_num_tokens(drafter: Any) -> int:
    """Drafts per round when the user does not say: the drafter's ``default_num_tokens`` (the optional
    :class:`~draftsmith.method.SuggestsNumTokens` capability), else DEFAULT_NUM_DRAFT_TOKENS."""
    if isinstance(drafter, SuggestsNumTokens):
        value = drafter.default_num_tokens
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
    return DEFAULT_NUM_DRAFT_TOKENS


def select_features(features: TargetFeatures, rows: list[int]) -> TargetFeatures:
    """The features of the given positions (dim 1) of a verification forward."""
    if rows == list(range(len(rows))):
        pick = (lambda t: t[:, : len(rows)])  # a prefix: views, no copy
    else:
        index = None

        def pick(t: torch.Tensor) -> torch.Tensor:
            nonlocal index
            if index is None or index.device != t.device:
                index = torch.tensor(rows, dtype=torch.long, device=t.device)
            return t.index_select(1, index)
    return TargetFeatures(
        hidden_states={i: pick(h) for i, h in features.hidden_states.items()},
        final_hidden=pick(features.final_hidden) if features.final_hidden is not None else None,
    )


class SpeculativeDecoder:
    """Speculative decoding of one request at a time with any registered method's drafter.

    ``num_draft_tokens`` (γ) is the number of drafts asked per round (a tree drafter reads it as its node
    budget); ``eos_token_ids`` default to the target's (config + generation config).
    """

    def __init__(self, target: torch.nn.Module, drafter: Any, *, sampling: SamplingConfig | None = None,
                 num_draft_tokens: int | None = None, eos_token_ids: Iterable[int] | None = None,
                 seed: int = 0) -> None:
        self.target, self.drafter = target, drafter
        self.sampling = sampling or SamplingConfig()
        gamma = num_draft_tokens or default_num_tokens(drafter)
        if int(gamma) != gamma or gamma < 1:
            raise ConfigError(f"num_draft_tokens must be a positive integer, got {gamma}")
        self.num_draft_tokens = int(gamma)
        self.request = drafter.target_request()
        self.capture = FeatureCapture(target, self.request)
        self.device = model_device(target)
        if eos_token_ids is None:
            eos_token_ids = target_heads(target).eos_token_ids
        self.eos = frozenset(int(e) for e in eos_token_ids)
        self.vocab_size = int(target.get_output_embeddings().weight.shape[0])
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    # ----------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompt_ids: Any, max_new_tokens: int) -> GenerationResult:
        max_new_tokens = check_max_new_tokens(max_new_tokens)
        ids = as_prompt(prompt_ids, self.device)
        synchronize(self.device)
        start = time.perf_counter()
        cache = kv.new_cache(self.target)
        with self.capture:
            first = pick_token(prefill(self.target, ids, cache).logits[0, -1], self.sampling, self.generator)
            tokens = [int(first)]
            kv.enable_rollback(cache, self.num_draft_tokens + 1)  # a round verifies at most k + 1 rows
            if tokens[-1] not in self.eos and max_new_tokens > 1:
                self.drafter.start(ids, self.capture.features())
            synchronize(self.device)
            prefill_time = time.perf_counter() - start
            rounds: list[RoundRecord] = []
            while tokens[-1] not in self.eos and len(tokens) < max_new_tokens:
                rounds.append(self._round(tokens, ids.numel(), cache, max_new_tokens))
        synchronize(self.device)
        return GenerationResult(tokens=tokens, stop_reason="eos" if tokens[-1] in self.eos else "length",
                                total_time=time.perf_counter() - start, prefill_time=prefill_time, rounds=rounds)

    # ----------------------------------------------------------------------------------------------------
    def _round(self, tokens: list[int], prompt_len: int, cache: Any, max_new_tokens: int) -> RoundRecord:
        """One draft → verify → commit round; appends the committed tokens to ``tokens``."""
        anchor = tokens[-1]
        past = prompt_len + len(tokens) - 1  # the anchor is not in the target cache yet
        remaining = max_new_tokens - len(tokens)
        k = min(self.num_draft_tokens, remaining)

        t0 = time.perf_counter()  # the previous round (or the prefill) ended with a synchronisation
        proposal = self.drafter.propose(anchor, k, self.sampling.temperature, self.generator)
        draft_ids, tree, draft_probs = self._check(proposal, k)  # reads the tokens: synchronises
        t1 = time.perf_counter()

        linear = kv.has_recurrent_layers(cache)
        # linear-attention state: transformers >= 5.25 records what its crop needs (enable_rollback); older ones
        # cannot crop it, so keep a copy to restore and recompute from after a rejection
        exact_crop = linear and kv.recurrent_rollback_depth(cache) >= tree.num_tokens + 1
        recurrent = kv.snapshot_recurrent(cache) if linear and not exact_crop else None
        if linear and not tree.is_chain:
            raise DraftsmithError("tree verification cannot run on a target with linear-attention layers (their "
                                  "recurrent state sees every node in order, not the tree's ancestors); use chain "
                                  "drafting (e.g. eagle1 instead of eagle2)")
        v = self._verify(anchor, past, draft_ids, tree, draft_probs, cache)
        # one device→host transfer for everything the bookkeeping needs
        summary = torch.cat([v.num_accepted[:1], v.next_token[:1], v.offered[0].sum().view(1), v.path[0]]).tolist()
        accepted, next_token, offered, path = summary[0], summary[1], summary[2], summary[3:3 + summary[0]]
        new = [draft_ids[i] for i in path] + [next_token]
        # cut at the first EOS and at the length limit: exactly what plain decoding would have produced
        for j, t in enumerate(new):
            if t in self.eos:
                new = new[: j + 1]
                break
        new = new[:remaining]
        keep = [0] + [i + 1 for i in path]  # verification rows of the anchor and the accepted drafts
        features = select_features(self.capture.features(), keep)
        if recurrent is not None and len(keep) < tree.num_tokens + 1:
            self._recompute(cache, recurrent, past, [anchor] + [draft_ids[i] for i in path])
        else:
            kv.compact(cache, tree.num_tokens + 1, keep)
        tokens.extend(new)
        t2 = time.perf_counter()

        if tokens[-1] not in self.eos and len(tokens) < max_new_tokens:
            committed = torch.tensor([anchor] + [draft_ids[i] for i in path], dtype=torch.long, device=self.device)
            self.drafter.commit(committed, features)
        synchronize(self.device)
        t3 = time.perf_counter()
        return RoundRecord(drafted=tree.num_tokens, accepted=accepted, committed=len(new), offered_depths=offered,
                           draft_time=(t1 - t0) + (t3 - t2), verify_time=t2 - t1)

    def _recompute(self, cache: Any, snapshot: Any, past: int, committed: list[int]) -> None:
        """After a rejection on a target with linear-attention layers: restore the state from before the
        verification forward and run the committed tokens (anchor + accepted drafts) through the target again."""
        kv.rewind_recurrent(cache, snapshot, past)
        ids = torch.tensor([committed], dtype=torch.long, device=self.device)  # (1, a + 1)
        positions = torch.arange(past, past + len(committed), device=self.device)[None]
        kwargs = {"logits_to_keep": 1} if supports_logits_to_keep(self.target) else {}
        self.target(input_ids=ids, position_ids=positions, **cache_kwargs(self.target, cache), **kwargs)
        kv.crop(cache, past + len(committed))  # linear layers drop the conv history recorded for rollback

    def _verify(self, anchor: int, past: int, draft_ids: list[int], tree: DraftTree,
                draft_probs: torch.Tensor | None, cache: Any) -> Verification:
        m = tree.num_tokens + 1
        input_ids = torch.tensor([[anchor, *draft_ids]], dtype=torch.long, device=self.device)  # (1, m)
        if tree.is_chain:
            positions = torch.arange(past, past + m, device=self.device)[None]  # (1, m)
            mask = None  # causal with the cache: HF builds it
        else:
            depths = torch.tensor([0, *tree.depths], device=self.device)  # (m,) the anchor at depth 0
            positions = (past + depths)[None]  # (1, m): a node sits at start + its depth
            mask = kv.tree_attention_mask(tree.ancestor_matrix(self.device), depths, past, self.target, cache,
                                          self._dtype())
        out = self.target(input_ids=input_ids, position_ids=positions, attention_mask=mask,
                          **cache_kwargs(self.target, cache))
        logits = out.logits  # (1, m, V)
        drafts = input_ids[:, 1:]  # (1, m - 1)
        if self.sampling.greedy:
            return verify_greedy(logits, drafts, tree)
        probs = target_distribution(logits, self.sampling)
        return verify_sampling(probs, drafts, tree, None if draft_probs is None else draft_probs[None],
                               self.generator)

    def _dtype(self) -> torch.dtype:
        return next(self.target.parameters()).dtype

    def _check(self, proposal: Any, k: int) -> tuple[list[int], DraftTree, torch.Tensor | None]:
        """Validate a drafter's Proposal: clear errors instead of silent garbage."""
        name = type(self.drafter).__name__
        if not isinstance(proposal, Proposal):
            raise DraftsmithError(f"{name}.propose must return a draftsmith.method.Proposal, "
                                  f"got {type(proposal).__name__}")
        toks = proposal.tokens
        if not isinstance(toks, torch.Tensor) or toks.dim() != 1 or toks.is_floating_point():
            raise DraftsmithError(f"{name}.propose returned tokens of shape "
                                  f"{tuple(getattr(toks, 'shape', ()))}; expected a 1-D tensor of token ids")
        ids = [int(t) for t in toks.tolist()]  # may be empty: the round then verifies the anchor alone
        vocab = self.vocab_size
        if ids and (min(ids) < 0 or max(ids) >= vocab):
            raise DraftsmithError(f"{name}.propose returned token ids outside the target vocab [0, {vocab})")
        tree = DraftTree.from_parents(proposal.parents, len(ids))
        if tree.is_chain and len(ids) > k:
            raise DraftsmithError(f"{name}.propose returned a chain of {len(ids)} tokens; {k} were asked")
        probs = proposal.probs
        if probs is not None and tuple(probs.shape) != (len(ids), vocab):
            raise DraftsmithError(f"{name}.propose returned probs of shape {tuple(probs.shape)}; expected "
                                  f"({len(ids)}, {vocab}) (one target-vocab distribution per draft)")
        # probs None at temperature > 0: deterministic drafts, verified by sample-and-match (= one-hot q)
        return ids, tree, probs
