"""Periodic evaluation on the held-out split: the method's own metrics, plus the greedy trajectory-replay τ.

Every metric an objective reports is averaged over the split weighted by its ``num_tokens`` (summed over
data-parallel ranks). The loss is the mean of the per-batch losses over batches and ranks — exactly the quantity
data-parallel training optimises, whichever normalisation (local or global denominators) the method uses.
When the objective provides ``acceptance_lengths`` and :mod:`draftsmith.decode.estimate` is available,
``tau_replay`` is the acceptance length greedy speculative decoding would reach on these sequences — exact when
the held-out data are the target's own greedy output (``draftsmith regenerate``).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable

import torch

from ..method import ReportsAcceptanceLengths
from .distributed import all_reduce_sum


def _replay_module() -> Any:
    try:
        from ..decode import estimate
    except ImportError:
        return None
    return estimate if hasattr(estimate, "replay_greedy") else None


@torch.no_grad()
def evaluate(model: torch.nn.Module, draft: torch.nn.Module, objective: Any, batches: Iterable[dict[str, Any]],
             features: Callable[[dict[str, Any]], Any], move: Callable[[dict[str, Any]], dict[str, Any]],
             autocast: Callable[[], contextlib.AbstractContextManager], max_batches: int = 0) -> dict[str, float]:
    """Token-weighted means of loss and metrics over ``batches`` (all ranks), plus replay τ if available."""
    was_training = draft.training
    draft.eval()
    estimate = _replay_module() if isinstance(objective, ReportsAcceptanceLengths) else None
    replay = estimate.ReplayStats() if estimate is not None else None
    sums: dict[str, float] = {}
    tokens, loss_sum, num_batches = 0.0, 0.0, 0.0
    for i, raw in enumerate(batches):
        if max_batches and i >= max_batches:
            break
        batch = move(raw)
        feats = features(raw)
        with autocast():
            out = model(batch, feats)
        n = float(out.num_tokens)
        tokens += n
        loss_sum += float(out.loss.detach().float())
        num_batches += 1
        for key, value in out.metrics.items():
            sums[key] = sums.get(key, 0.0) + float(value) * n
        if replay is not None:
            with autocast():
                lengths = model(batch, feats, call="acceptance_lengths")
            estimate.replay_greedy(lengths, batch["loss_mask"], batch.get("attention_mask"), stats=replay)
    keys = sorted(sums)
    device = next((p.device for p in draft.parameters()), torch.device("cpu"))
    vec = torch.tensor([sums[k] for k in keys] + [loss_sum, num_batches, tokens], dtype=torch.float64,
                       device=device)
    vec = all_reduce_sum(vec)
    total = float(vec[-1])
    result = {k: float(v) / total if total else float("nan") for k, v in zip(keys, vec[:-3].tolist())}
    result["loss"] = float(vec[-3]) / float(vec[-2]) if float(vec[-2]) else float("nan")
    result["tokens"] = total
    if replay is not None:
        replay.all_reduce()
        result.update({k: v for k, v in replay.to_dict().items() if not isinstance(v, list)})
    if was_training:
        draft.train()
    return result
