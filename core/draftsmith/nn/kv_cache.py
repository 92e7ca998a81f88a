"""A small per-layer key/value cache for drafts, with crop (roll back to a committed length).

Block drafters (DFlash, DSpark) keep only *context* keys/values here — the target features of committed
positions, projected by each draft layer's own ``k_proj``/``v_proj`` (+ ``k_norm`` and rotary). Keys and values
of a drafted block are never worth keeping: the next round re-drafts from the new anchor. ``crop(n)`` drops
everything at positions ``>= n`` (e.g. after a caller appended speculative rows); ``reset()`` starts a new
request.

Layout per layer: ``(B, num_kv_heads, L, head_dim)``, keys already rotated at their absolute positions.
"""

from __future__ import annotations

import torch


class DraftKVCache:
    """Append-only per-layer K/V store with :meth:`crop`; all layers always hold the same length."""

    def __init__(self, num_layers: int) -> None:
        if num_layers < 1:
            raise ValueError(f"DraftKVCache needs at least one layer, got {num_layers}")
        self.num_layers = num_layers
        self._keys: list[torch.Tensor | None] = [None] * num_layers
        self._values: list[torch.Tensor | None] = [None] * num_layers

    def __len__(self) -> int:
        return self.length

    @property
    def length(self) -> int:
        """Number of cached positions (0 when empty)."""
        k = self._keys[0]
        return 0 if k is None else int(k.shape[-2])

    def get(self, layer_idx: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The cached ``(keys, values)`` of a layer (``(None, None)`` when empty)."""
        return self._keys[layer_idx], self._values[layer_idx]

    def append(self, layer_idx: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``(B, Hk, L_new, D)`` keys/values to a layer; returns the layer's full cached keys/values."""
        if keys.shape != values.shape:
            raise ValueError(f"keys {tuple(keys.shape)} and values {tuple(values.shape)} must have the same shape")
        old_k, old_v = self._keys[layer_idx], self._values[layer_idx]
        if old_k is None:
            new_k, new_v = keys, values
        else:
            if old_k.shape[:2] != keys.shape[:2] or old_k.shape[-1] != keys.shape[-1]:
                raise ValueError(f"cannot append keys {tuple(keys.shape)} to a cache holding {tuple(old_k.shape)}")
            new_k, new_v = torch.cat([old_k, keys], dim=-2), torch.cat([old_v, values], dim=-2)
        self._keys[layer_idx], self._values[layer_idx] = new_k, new_v
        return new_k, new_v

    def crop(self, length: int) -> None:
        """Keep only the first ``length`` positions of every layer (no-op if already that short)."""
        if length < 0:
            raise ValueError(f"cannot crop a draft cache to a negative length ({length})")
        if length > self.length:
            raise ValueError(f"cannot crop a draft cache of length {self.length} to {length}: crop only shortens")
        for i in range(self.num_layers):
            if self._keys[i] is not None:
                self._keys[i] = self._keys[i][..., :length, :]
                self._values[i] = self._values[i][..., :length, :]

    def reset(self) -> None:
        self._keys = [None] * self.num_layers
        self._values = [None] * self.num_layers
