"""Training objectives of EAGLE-1/2 and EAGLE-3 (registered in plugin.py; built as ``Objective(draft, heads, **opts)``).

Both are ``nn.Module``s owning the draft (the target heads are held unregistered): wrap the *objective* in DDP so
the whole unroll runs inside one forward. Losses are normalised per supervised prediction with data-parallel-global
denominators when ``torch.distributed`` is initialised (local sum / global count × world size, so DDP's gradient
averaging yields the global mean). Label alignment and masks: loss.py. Option tables (defaults): registry.py.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from draftsmith.conventions import check_option_names
from draftsmith.errors import ConfigError, DataError
from draftsmith.method import ObjectiveOutput, TargetFeatures, TargetHeads, TargetRequest
from draftsmith.nn.random_stream import RandomStream

from .loss import (batch_tensors, chain_counts, global_sum, prediction_validity, shift_left, simulated_tau,
                     soft_cross_entropy, step_weights, world_size)
from .masks import causal_visibility
from .registry import EAGLE1_OBJECTIVE_OPTIONS, EAGLE3_OBJECTIVE_OPTIONS
from .vocab import select_draft_vocab


def _features(features: TargetFeatures, key: str) -> torch.Tensor:
    t = features.final_hidden if key == "final_hidden" else features.hidden_states.get(key)
    if t is None:
        have = sorted(features.hidden_states)
        raise DataError(f"EAGLE objective needs target feature {key!r}; got layers {have}, final_hidden="
                        f"{features.final_hidden is not None}")
    return t


def _anchor_lengths(run: torch.Tensor, attn: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    """Per-slot greedy run lengths -> per-anchor ``(B, T)`` (``Objective.acceptance_lengths``): anchor ``a`` drafts
    from slot ``a-1`` (token ``x_a`` + the features of ``a-1``); -1 where there is no such slot in ``a``'s
    document."""
    out = torch.full_like(run, -1)
    usable = attn[:, 1:] & attn[:, :-1]
    if pos is not None:
        usable = usable & (pos[:, 1:] > pos[:, :-1])  # a new document starts at a: no slot a-1 for it
    out[:, 1:] = torch.where(usable, run[:, :-1], -1)
    return out


class _EagleObjective(nn.Module):
    def __init__(self, draft: nn.Module, heads: TargetHeads, freeze_embeddings: bool = True) -> None:
        super().__init__()
        self.draft = draft
        object.__setattr__(self, "heads", heads)  # frozen target heads: never trained, saved or DDP-synced
        self.model.copy_embeddings_from_target(heads.embed_tokens)
        if freeze_embeddings:
            self.model.freeze_embeddings()

    @property
    def model(self) -> nn.Module:
        """The draft itself, also when ``self.draft`` was replaced by a DDP/FSDP wrapper."""
        return getattr(self.draft, "module", self.draft)

    @torch.no_grad()
    def _target_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Target logits ``(N, V)`` (fp32) of post-norm hidden rows ``(N, H)``: the target ``lm_head`` and the
        scale / soft-cap its forward applies after it (Granite, Cohere, Gemma 2)."""
        return self.heads.target_logits(hidden)  # incl. the target's logit scale / soft-cap


class Eagle1Objective(_EagleObjective):
    """EAGLE-1/2: ``hidden_loss_weight`` · SmoothL1(predicted, target next post-norm feature) (mean over H, then
    over supervised predictions) + ``token_loss_weight`` · soft CE of the draft's logits (through the target
    ``lm_head``) against the target distribution. ``feature_noise`` adds U(-a, a) to the input features while
    training (EAGLE's robustness trick; NeMo's default a = 0.1), drawn from a resumable stream seeded by ``seed``
    (:class:`~draftsmith.nn.random_stream.RandomStream`, position in :meth:`run_state`). Metric: top-1 ``accuracy`` vs the target argmax.
    """

    def __init__(self, draft: nn.Module, heads: TargetHeads, **options: Any) -> None:
        check_option_names("Eagle1Objective", options, EAGLE1_OBJECTIVE_OPTIONS)
        opts = {**EAGLE1_OBJECTIVE_OPTIONS, **options}
        super().__init__(draft, heads, opts["freeze_embeddings"])
        self.model.bind_lm_head(heads.lm_head)
        self.hidden_loss_weight = float(opts["hidden_loss_weight"])
        self.token_loss_weight = float(opts["token_loss_weight"])
        if opts["feature_noise"] < 0:
            raise ConfigError(f"feature_noise must be >= 0, got {opts['feature_noise']}")
        self.feature_noise = float(opts["feature_noise"])
        # the noise draws' one resumable home: draw i of rank r from (seed, r, i), position saved by run_state
        self.noise_stream = RandomStream(int(opts["seed"]))
        self.num_draft_tokens = int(opts["num_draft_tokens"])  # chain length acceptance_lengths evaluates

    def run_state(self) -> dict[str, int]:
        """The feature-noise stream's position (``{"calls": n}``): a resumed run draws the same noise."""
        return self.noise_stream.state_dict()

    def load_run_state(self, state: Mapping[str, Any]) -> None:
        self.noise_stream.load_state_dict(state)

    def target_request(self) -> TargetRequest:
        return TargetRequest(layer_ids=(), final_hidden=True)

    def forward(self, batch: Mapping[str, torch.Tensor], features: TargetFeatures) -> ObjectiveOutput:
        ids, attn, loss_mask, pos = batch_tensors(batch)
        feats = _features(features, "final_hidden")  # (B, T, H) post-norm: the lm_head input
        valid = prediction_validity(attn, loss_mask, pos, steps=1)[0]  # (B, T)
        inputs = feats
        if self.training and self.feature_noise > 0:
            inputs = feats + self.noise_stream.uniform_like(feats, -self.feature_noise, self.feature_noise)
        pred = self.draft(shift_left(ids, 1), inputs, attention_mask=causal_visibility(attn, pos),
                          position_ids=pos)  # (B, T, H): predicted f_{t+1}
        target = shift_left(feats, 1)[valid].to(pred.dtype)  # (N, H)
        pred = pred[valid]  # (N, H)
        n_global = global_sum(valid.sum().float()).clamp_min(1.0)
        scale = world_size() / n_global
        hidden_loss = F.smooth_l1_loss(pred.float(), target.float(), reduction="none").mean(-1).sum() * scale
        target_logits = self._target_logits(target)  # (N, V)
        pred_logits = self.model.compute_logits(pred)  # (N, V)
        token_loss = soft_cross_entropy(pred_logits, target_logits.softmax(-1)).sum() * scale
        loss = self.hidden_loss_weight * hidden_loss + self.token_loss_weight * token_loss
        correct = global_sum((pred_logits.argmax(-1) == target_logits.argmax(-1)).sum().float())
        return ObjectiveOutput(loss=loss, num_tokens=int(valid.sum()), metrics={
            "accuracy": (correct / n_global).item(),
            "hidden_loss": (hidden_loss.detach() / world_size()).item(),
            "token_loss": (token_loss.detach() / world_size()).item(),
        })

    @torch.no_grad()
    def acceptance_lengths(self, batch: Mapping[str, torch.Tensor], features: TargetFeatures) -> torch.Tensor:
        """``(B, T)`` long: drafts greedy chain drafting from each anchor gets right in a row against the batch's
        tokens (up to ``num_draft_tokens``), -1 where ``a`` is no anchor. All chains unroll at once (TTT
        attention), each step feeding the draft's own predicted features exactly as decoding does; while the
        drafts are right the drafted tokens are the batch's, so the result equals real greedy drafting."""
        model = self.model
        ids, attn, _, pos = batch_tensors(batch)
        inputs = _features(features, "final_hidden")
        vis, cache = causal_visibility(attn, pos), model.new_ttt_cache()
        exists = prediction_validity(attn, torch.ones_like(attn), pos, self.num_draft_tokens)
        alive, run = torch.ones_like(attn), torch.zeros_like(ids)
        for k in range(self.num_draft_tokens):
            inputs = self.draft(shift_left(ids, k + 1), inputs, attention_mask=vis, position_ids=pos, cache=cache)
            alive = alive & exists[k] & (model.compute_logits(inputs).argmax(-1) == shift_left(ids, k + 2))
            run = run + alive.long()
        return _anchor_lengths(run, attn, pos)


class Eagle3Objective(_EagleObjective):
    """EAGLE-3 training-time test: ``ttt_steps`` unrolled draft steps (default 7), each a soft CE against the target
    distribution restricted to the draft vocab, over predictions whose target argmax is in the draft vocab; step
    ``i`` weighted ``ttt_decay^i`` normalised by the weights' sum. Metrics: ``accuracy`` (all steps), ``acc_{i}``
    per step, and ``tau_sim = 1 + Σ_k hits_k / chains_k`` (chains correct through depth k+1 over chains supervised
    through depth k; a target outside the draft vocab breaks the chain). ``logits_chunk_size`` bounds the target
    rows whose full-vocab logits exist at once (256 rows × 152k vocab ≈ 155 MB fp32)."""

    def __init__(self, draft: nn.Module, heads: TargetHeads, **options: Any) -> None:
        check_option_names("Eagle3Objective", options, EAGLE3_OBJECTIVE_OPTIONS)
        opts = {**EAGLE3_OBJECTIVE_OPTIONS, **options}
        ttt_steps, num_aux_layers, draft_vocab_size = opts["ttt_steps"], opts["num_aux_layers"], opts["draft_vocab_size"]
        if isinstance(ttt_steps, bool) or not isinstance(ttt_steps, int) or ttt_steps < 1:
            raise ConfigError(f"ttt_steps must be an integer >= 1, got {ttt_steps!r}")
        super().__init__(draft, heads, opts["freeze_embeddings"])
        cfg = self.model.config
        if num_aux_layers is not None and int(num_aux_layers) != cfg.num_aux_hidden_states:
            raise ConfigError(f"num_aux_layers={num_aux_layers} but the draft fuses {cfg.num_aux_hidden_states} "
                              f"target layers {cfg.target_layer_ids}; rebuild the draft with that option")
        if draft_vocab_size is not None and int(draft_vocab_size) != cfg.draft_vocab_size:
            raise ConfigError(f"draft_vocab_size={draft_vocab_size} but the draft's lm_head has "
                              f"{cfg.draft_vocab_size} rows; pass it as a draft option")
        if heads.vocab_size != cfg.vocab_size:
            raise ConfigError(f"target vocab {heads.vocab_size} != draft config vocab_size {cfg.vocab_size}")
        self.ttt_steps, self.weights = ttt_steps, step_weights(ttt_steps, float(opts["ttt_decay"]))
        self.logits_chunk_size = int(opts["logits_chunk_size"])
        self.num_draft_tokens = int(opts["num_draft_tokens"] or ttt_steps)  # chain length acceptance_lengths evaluates
        self.skip_dead_chains = bool(opts["skip_dead_chains"])

    def target_request(self) -> TargetRequest:
        return TargetRequest(layer_ids=tuple(self.model.config.target_layer_ids), final_hidden=True)

    def prepare(self, token_counts: torch.Tensor) -> None:
        """Choose the draft vocabulary from supervised-token counts ``(V,)`` (vocab.py) and set ``d2t``/``t2d``."""
        model, cfg = self.model, self.model.config
        if torch.as_tensor(token_counts).numel() != cfg.vocab_size:
            raise ConfigError(f"token_counts has {torch.as_tensor(token_counts).numel()} entries, the target vocab "
                              f"has {cfg.vocab_size}")
        specials = [cfg.bos_token_id, *self.heads.eos_token_ids, self.heads.pad_token_id,
                    getattr(cfg, "unk_token_id", None)]
        model.set_vocab_mapping(select_draft_vocab(token_counts, cfg.draft_vocab_size, specials))

    @torch.no_grad()
    def _target_rows(self, final_hidden: torch.Tensor, need: torch.Tensor):
        """Target argmax (full vocab) and draft-vocab distribution of the rows ``need`` marks, chunked so the
        ``(rows, V)`` logits never exist at once. Returns (row map (B·T,) with -1 for skipped rows, top (N,),
        in-draft-vocab (N,), probs (N, Vd))."""
        model = self.model
        flat = final_hidden.reshape(-1, final_hidden.shape[-1])
        idx = need.flatten().nonzero().squeeze(1)
        selected = model.selected_token_ids().to(flat.device) if model.compresses_vocab else None
        tops, probs = [], []
        for chunk in idx.split(self.logits_chunk_size):
            logits = self._target_logits(flat[chunk])  # (c, V)
            tops.append(logits.argmax(-1))
            probs.append((logits if selected is None else logits.index_select(-1, selected)).softmax(-1))
        top = torch.cat(tops) if tops else idx.new_zeros(0)
        vd = model.config.draft_vocab_size
        prob = torch.cat(probs) if probs else flat.new_zeros(0, vd, dtype=torch.float32)
        in_vocab = model.t2d[top] if selected is not None else torch.ones_like(top, dtype=torch.bool)
        rowmap = torch.full((flat.shape[0],), -1, dtype=torch.long, device=flat.device)
        rowmap[idx] = torch.arange(idx.numel(), device=flat.device)
        return rowmap, top, in_vocab, prob

    def _live_chains(self, kept: list[torch.Tensor], b: int, t: int) -> list[torch.Tensor | None]:
        """Per step ``k``: the ``(B, L)`` slots whose chain still has a supervised prediction at some step
        ``>= k`` (their padding, when rows differ, are distinct dead slots), or None when every slot is live.
        Steps after the first compute only these chains: the others' outputs feed nothing that is scored."""
        scored = torch.zeros(len(kept), b * t, dtype=torch.bool, device=kept[0].device)
        for k, flat in enumerate(kept):
            scored[k, flat] = True
        live = scored.flip(0).cumsum(0).flip(0).bool().view(len(kept), b, t)  # any scored step >= k
        out: list[torch.Tensor | None] = []
        for k in range(len(kept)):
            width = int(live[k].sum(-1).max())
            if width == t:
                out.append(None)
                continue
            order = torch.sort((~live[k]).to(torch.uint8), dim=1, stable=True).indices  # live slots first
            out.append(order[:, :width])
        return out

    def forward(self, batch: Mapping[str, torch.Tensor], features: TargetFeatures) -> ObjectiveOutput:
        model, k_steps = self.model, self.ttt_steps
        ids, attn, loss_mask, pos = batch_tensors(batch)
        b, t = ids.shape
        aux = torch.cat([_features(features, i) for i in model.config.target_layer_ids], dim=-1)  # (B, T, k·H)
        valid = prediction_validity(attn, loss_mask, pos, k_steps).flatten(1)  # (K, B·T) supervised predictions
        rowmap, top, in_vocab, probs = self._target_rows(_features(features, "final_hidden"),
                                                         shift_left(attn & loss_mask, 1))
        # step k, slot t reads the target row t+k+1 (its distribution over x_{t+k+2})
        slots = [valid[k].nonzero().squeeze(1) for k in range(k_steps)]
        rows = [rowmap[s + k + 1] for k, s in enumerate(slots)]
        keep = [in_vocab[r] for r in rows]
        counts = global_sum(torch.stack([kp.sum() for kp in keep]).float())  # (K,) global loss denominators
        live = self._live_chains([s[kp] for s, kp in zip(slots, keep)], b, t) if self.skip_dead_chains else None
        vis = causal_visibility(attn, pos)
        hidden = model.project_hidden_states(aux)  # (B, T, H)
        cache = model.new_ttt_cache()
        loss = hidden.new_zeros((), dtype=torch.float32)
        correct = torch.zeros_like(valid)  # (K, B·T): greedy draft == target argmax, where supervised
        for k in range(k_steps):
            live_slots = live[k] if live is not None and k > 0 else None
            if live_slots is not None and live_slots.shape[1] == 0:
                break  # no supervised prediction left on any chain (step 0 already touched every parameter)
            hidden = self.draft(input_ids=shift_left(ids, k + 1), projected_hidden_states=hidden,
                                attention_mask=vis, position_ids=pos, cache_hidden=cache,
                                slots=live_slots)  # (B, T, H), zeros off the live chains
            sl, rw = slots[k][keep[k]], rows[k][keep[k]]
            logits = model.compute_logits(hidden.reshape(b * t, -1)[sl])  # (N_k, Vd)
            step_sum = soft_cross_entropy(logits, probs[rw]).sum()
            loss = loss + self.weights[k] * step_sum * (world_size() / counts[k].clamp_min(1.0))
            correct[k, sl] = model.draft_to_target(logits.detach().argmax(-1)) == top[rw]
        hits, chains = chain_counts(correct, valid)
        stats = global_sum(torch.stack([correct.sum(-1), hits, chains]).float())  # (3, K)
        acc = stats[0] / counts.clamp_min(1.0)
        metrics = {"accuracy": (stats[0].sum() / counts.sum().clamp_min(1.0)).item(),
                   "tau_sim": simulated_tau(stats[1], stats[2])}
        metrics.update({f"acc_{k}": acc[k].item() for k in range(k_steps)})
        return ObjectiveOutput(loss=loss, metrics=metrics, num_tokens=int(valid[0].sum()))

    @torch.no_grad()
    def acceptance_lengths(self, batch: Mapping[str, torch.Tensor], features: TargetFeatures) -> torch.Tensor:
        """``(B, T)`` long: drafts greedy chain drafting from each anchor gets right in a row against the batch's
        tokens (up to ``num_draft_tokens``), -1 where ``a`` is no anchor. The teacher-forced TTT unroll is exact
        here: while the drafts are right, the drafted tokens are the batch's tokens."""
        model = self.model
        ids, attn, _, pos = batch_tensors(batch)
        aux = torch.cat([_features(features, i) for i in model.config.target_layer_ids], dim=-1)
        vis, cache = causal_visibility(attn, pos), model.new_ttt_cache()
        exists = prediction_validity(attn, torch.ones_like(attn), pos, self.num_draft_tokens)
        hidden = model.project_hidden_states(aux)
        alive, run = torch.ones_like(attn), torch.zeros_like(ids)
        for k in range(self.num_draft_tokens):
            hidden = self.draft(input_ids=shift_left(ids, k + 1), projected_hidden_states=hidden,
                                attention_mask=vis, position_ids=pos, cache_hidden=cache)
            guess = model.draft_to_target(model.compute_logits(hidden).argmax(-1))
            alive = alive & exists[k] & (guess == shift_left(ids, k + 2))
            run = run + alive.long()
        return _anchor_lengths(run, attn, pos)
