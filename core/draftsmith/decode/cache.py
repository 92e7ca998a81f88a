"""The target's KV cache during speculative decoding: HF ``DynamicCache`` cropped or compacted after each round.

A chain round appends ``k + 1`` rows (anchor + drafts) and keeps the anchor and the accepted prefix: a crop.
A tree round appends one row per node and keeps the anchor and the accepted path, which need not be contiguous:
the kept rows are gathered into place (compaction), so the cache again holds exactly the committed tokens.

Linear-attention layers (Qwen3-Next, Qwen3.5: gated delta rule) hold a recurrent state with no sequence axis.
transformers' ``crop`` rolls back only their convolution window, not the recurrent state, which after a
verification forward already includes the rejected drafts — greedy speculative decoding then drifts from the
target's own output (measured on a tiny Qwen3.5: the state after a 3-token forward cropped by 2 gives logits off
by 1.7e-2, enough to flip argmaxes). So for such targets the engine snapshots those layers before verifying and,
after a rejection, restores them and re-runs the committed tokens (:func:`snapshot_recurrent`,
:func:`rewind_recurrent`): one extra target forward of ``accepted + 1`` tokens per rejected round.

transformers 5.25 lets those layers keep their last ``n`` recurrent states for an exact crop
(``activate_past_recording(recurrent_states_to_keep=n)``) — and its forward fails on the default ``None``, and its
crop on a history shorter than the crop. :func:`enable_rollback` passes the verification length where that argument
exists, and the engine then crops those layers like the others (no snapshot, no recompute forward); older
versions keep the snapshot-and-recompute path.
"""

from __future__ import annotations

import inspect
from typing import Any, Sequence

import torch

from ..conventions import text_config
from ..errors import DraftsmithError


def new_cache(model: Any) -> Any:
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


def records_recurrent_history(cache: Any) -> bool:
    """Whether the cache's linear-attention layers can keep recurrent states for an exact crop (transformers
    ≥ 5.25: ``activate_past_recording(recurrent_states_to_keep=n)``)."""
    for layer in getattr(cache, "layers", ()):
        activate = getattr(layer, "activate_past_recording", None)
        if activate is not None and "recurrent_states_to_keep" in inspect.signature(activate).parameters:
            return True
    return False


def enable_rollback(cache: Any, max_rollback: int = 0) -> None:
    """Let sliding-window / recurrent layers roll back (HF only keeps what a crop can undo once asked to).
    Called after the prefill, as transformers' own assisted decoding does, to avoid a prefill memory spike.
    ``max_rollback``: the most positions one crop will remove (the verification length), recorded as recurrent
    states where transformers supports it (:func:`records_recurrent_history`)."""
    if not hasattr(cache, "activate_past_recording"):
        return
    if records_recurrent_history(cache):
        cache.activate_past_recording(recurrent_states_to_keep=int(max_rollback))
    else:
        cache.activate_past_recording()


def cache_length(cache: Any) -> int:
    return int(cache.get_seq_length())


def crop(cache: Any, length: int) -> None:
    """Keep the first ``length`` positions. Always called after a verification forward: sliding-window layers
    also use it to shrink back to their window."""
    remove = cache_length(cache) - length
    if remove < 0:
        raise DraftsmithError(f"cannot crop a cache of {cache_length(cache)} positions to {length}")
    cache.crop(-remove)


def compact(cache: Any, block_len: int, keep: Sequence[int]) -> None:
    """Keep, of the last ``block_len`` cached positions, only the rows ``keep`` (in that order)."""
    keep = list(keep)
    if keep == list(range(len(keep))):  # a prefix of the block: a plain crop
        crop(cache, cache_length(cache) - block_len + len(keep))
        return
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    index = None
    for layer in cache.layers:
        if type(layer) not in (DynamicLayer, DynamicSlidingWindowLayer):
            raise DraftsmithError(f"tree verification cannot compact a {type(layer).__name__} cache layer "
                                  f"(only full or sliding-window attention); use chain drafting for this target")
        if not layer.is_initialized or layer.keys is None or layer.keys.numel() == 0:
            continue
        if index is None or index.device != layer.keys.device:
            index = torch.tensor(keep, dtype=torch.long, device=layer.keys.device)
        # the block is the last block_len rows in both layer kinds (sliding layers record the past until cropped)
        head_k, block_k = layer.keys[..., :-block_len, :], layer.keys[..., -block_len:, :]
        head_v, block_v = layer.values[..., :-block_len, :], layer.values[..., -block_len:, :]
        layer.keys = torch.cat([head_k, block_k.index_select(-2, index)], dim=-2)
        layer.values = torch.cat([head_v, block_v.index_select(-2, index)], dim=-2)
        if isinstance(layer, DynamicSlidingWindowLayer):
            layer.cumulative_length -= block_len - len(keep)
    cache.crop(0)  # sliding layers shrink back to their window


def _recurrent_layers(cache: Any) -> list[Any]:
    return [layer for layer in getattr(cache, "layers", ()) if hasattr(layer, "recurrent_states")]


def has_recurrent_layers(cache: Any) -> bool:
    """Whether the cache holds linear-attention layers (a recurrent state with no sequence axis)."""
    return bool(_recurrent_layers(cache))


def recurrent_rollback_depth(cache: Any) -> int:
    """How many positions a crop can exactly undo in every linear-attention layer: the recurrent states each one
    records (transformers >= 5.25, after :func:`enable_rollback`), 0 where none are recorded."""
    depths = [int(getattr(layer, "recurrent_states_to_keep", 0) or 0) if getattr(layer, "record_past", False) else 0
              for layer in _recurrent_layers(cache)]
    return min(depths, default=0)


def snapshot_recurrent(cache: Any) -> list[tuple[dict, dict, dict]] | None:
    """Copies of every linear-attention layer's conv / recurrent states (dicts keyed by state index, as
    transformers keeps them), or None when the cache has no such layer."""
    layers = _recurrent_layers(cache)
    if not layers:
        return None
    clone = (lambda t: t.clone() if torch.is_tensor(t) else t)
    return [({i: clone(t) for i, t in layer.conv_states.items()},
             {i: clone(t) for i, t in layer.recurrent_states.items()},
             dict(layer.has_previous_state)) for layer in layers]


def rewind_recurrent(cache: Any, snapshot: list[tuple[dict, dict, dict]], length: int) -> None:
    """Back to the state before the verification forward: attention layers cropped to ``length`` positions,
    linear-attention layers restored from ``snapshot``. The caller then re-runs the committed tokens."""
    crop(cache, length)
    for layer, (conv, recurrent, previous) in zip(_recurrent_layers(cache), snapshot):
        for i, t in conv.items():
            layer.conv_states[i] = t
        for i, t in recurrent.items():
            if torch.is_tensor(layer.recurrent_states.get(i)) and torch.is_tensor(t):
                layer.recurrent_states[i].copy_(t)  # in place: the layer keeps a static address for CUDA graphs
            else:
                layer.recurrent_states[i] = t
        layer.has_previous_state.update(previous)


def _text_config(model: Any) -> Any:
    return text_config(model.config)


def _as_attention_mask(visible: torch.Tensor, model: Any, dtype: torch.dtype) -> torch.Tensor:
    """(m, n) bool "may attend" → the 4-D mask format of the target's attention implementation."""
    impl = getattr(model.config, "_attn_implementation", None) or "eager"
    if impl == "sdpa":
        return visible[None, None]  # SDPA takes a boolean mask
    if impl == "eager":
        mask = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
        return mask.masked_fill(~visible, torch.finfo(dtype).min)[None, None]
    raise DraftsmithError(f"tree verification needs a custom 4-D attention mask, which attn_implementation "
                          f"{impl!r} does not take; load the target with attn_implementation='sdpa' or 'eager'")


def tree_attention_mask(ancestors: torch.Tensor, depths: torch.Tensor, past_len: int, model: Any, cache: Any,
                        dtype: torch.dtype) -> Any:
    """Mask for verifying ``m`` tree nodes in one pass: every node sees the committed context and, among the
    nodes, only itself and its ancestors (``ancestors`` (m, m) bool; ``depths`` (m,), anchor = 0).

    Full-attention layers get (1, 1, m, past_len + m). Sliding-window layers (their cache holds only the last
    context rows) get a mask over those rows that also hides what lies beyond the window from deeper nodes.
    Models with per-layer ``layer_types`` take a ``{layer type: mask}`` dict as ``attention_mask``; models
    whose layers all slide (e.g. Mistral) take the sliding mask itself."""
    from transformers.cache_utils import DynamicSlidingWindowLayer

    device = ancestors.device
    m = ancestors.shape[0]
    full = torch.cat([torch.ones(m, past_len, dtype=torch.bool, device=device), ancestors], dim=1)
    sliding_layer = next((lay for lay in cache.layers if isinstance(lay, DynamicSlidingWindowLayer)), None)
    if sliding_layer is None:
        return _as_attention_mask(full, model, dtype)
    window = int(sliding_layer.sliding_window)
    context = int(sliding_layer.keys.shape[-2]) if sliding_layer.is_initialized else past_len
    ctx_pos = torch.arange(past_len - context, past_len, device=device)  # positions the layer still holds
    node_pos = past_len + depths.to(device)  # (m,)
    ctx_visible = (node_pos[:, None] - ctx_pos[None, :]) < window  # (m, context)
    node_visible = ancestors & ((node_pos[:, None] - node_pos[None, :]) < window)  # (m, m)
    sliding = _as_attention_mask(torch.cat([ctx_visible, node_visible], dim=1), model, dtype)
    layer_types = getattr(_text_config(model), "layer_types", None)
    if layer_types is None:
        return sliding
    masks = {}
    for kind in set(layer_types):
        if kind not in ("full_attention", "sliding_attention"):
            raise DraftsmithError(f"tree verification does not support {kind!r} layers; use chain drafting")
        masks[kind] = sliding if kind == "sliding_attention" else _as_attention_mask(full, model, dtype)
    return masks
