"""Torch side of the data: rows of samples as tensors, the padding collate, and the offline heads' embedding.

Batches are right padded to the longest row: ``input_ids``, ``attention_mask``, ``loss_mask`` (B, T) and, for
packed rows, ``position_ids`` (B, T) restarting at 0 for every document (padding continues the last document's
positions so it never opens a new one). With offline features the batch also carries ``features``:
``{layer id | "final": (B, T, H)}``, zero padded.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from .samples import Sample


class RowDataset(Dataset):
    """Item ``i`` = the samples of row ``i`` concatenated (one sample per row unless packing)."""

    def __init__(self, samples: Sequence[Sample], rows: Sequence[Sequence[int]], *, packed: bool = False,
                 cache: Any = None, feature_keys: Sequence[Any] = ()) -> None:
        self.samples, self.rows, self.packed = samples, [list(r) for r in rows], packed
        self.cache, self.feature_keys = cache, list(feature_keys)

    def __len__(self) -> int:
        return len(self.rows)

    def num_tokens(self, i: int) -> int:
        return sum(len(self.samples[j]) for j in self.rows[i])

    def __getitem__(self, i: int) -> dict[str, Any]:
        parts = [self.samples[j] for j in self.rows[i]]
        item: dict[str, Any] = {
            "input_ids": torch.from_numpy(np.concatenate([p.input_ids for p in parts])),
            "loss_mask": torch.from_numpy(np.concatenate([p.loss_mask for p in parts]).astype(np.int64)),
        }
        if self.packed:
            item["position_ids"] = torch.cat([torch.arange(len(p)) for p in parts])
        if self.cache is not None:
            feats = [self.cache.features(j, self.feature_keys) for j in self.rows[i]]
            item["features"] = {k: torch.cat([f[k] for f in feats]) for k in self.feature_keys}
        return item


def collate(items: Sequence[dict[str, Any]], pad_token_id: int = 0) -> dict[str, Any]:
    """Right-pad a list of items into a batch (see the module docstring)."""
    lengths = [len(it["input_ids"]) for it in items]
    B, T = len(items), max(lengths)
    input_ids = torch.full((B, T), int(pad_token_id), dtype=torch.long)
    attention_mask = torch.zeros((B, T), dtype=torch.long)
    loss_mask = torch.zeros((B, T), dtype=torch.long)
    for b, (it, n) in enumerate(zip(items, lengths)):
        input_ids[b, :n] = it["input_ids"]
        attention_mask[b, :n] = 1
        loss_mask[b, :n] = it["loss_mask"]
    batch: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask}
    if "position_ids" in items[0]:
        position_ids = torch.zeros((B, T), dtype=torch.long)
        for b, (it, n) in enumerate(zip(items, lengths)):
            position_ids[b, :n] = it["position_ids"]
            last = int(it["position_ids"][-1])
            position_ids[b, n:] = torch.arange(last + 1, last + 1 + T - n)
        batch["position_ids"] = position_ids
    if "features" in items[0]:
        feats = {}
        for key, first in items[0]["features"].items():
            out = first.new_zeros((B, T, first.shape[-1]))
            for b, (it, n) in enumerate(zip(items, lengths)):
                out[b, :n] = it["features"][key]
            feats[key] = out
        batch["features"] = feats
    return batch


class ScaledEmbedding(nn.Embedding):
    """A plain embedding table, optionally multiplied by a constant (targets such as Gemma scale by √H)."""

    embed_scale: float | None = None

    @classmethod
    def from_weight(cls, weight: torch.Tensor, scale: float | None = None) -> "ScaledEmbedding":
        emb = cls(weight.shape[0], weight.shape[1], device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            emb.weight.copy_(weight)
        emb.embed_scale = scale
        return emb

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = super().forward(input_ids)
        return out * self.embed_scale if self.embed_scale is not None else out
