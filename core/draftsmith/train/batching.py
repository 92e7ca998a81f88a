"""Datasets and resumable, data-parallel-consistent micro-batches for the trainer."""

from __future__ import annotations

import functools
import math
from typing import Any

from torch.utils.data import DataLoader, DistributedSampler

from .distributed import DistInfo


class EpochBatches:
    """This rank's micro-batches of row indices, epoch by epoch, resumable at any micro-batch.

    Uses ``DistributedSampler`` (seeded per epoch): rank r's k-th micro-batch holds global positions
    ``k·B·W + r + j·W``, so the union over ranks of the k-th micro-batches is the same block of the epoch's
    permutation as a single process with batch ``B·W`` would take — runs with different world sizes and the
    same global batch see identical data.
    """

    def __init__(self, num_rows: int, batch_size: int, info: DistInfo, seed: int, *, shuffle: bool,
                 drop_last: bool) -> None:
        self.batch_size, self.drop_last = batch_size, drop_last
        self.sampler = DistributedSampler(range(num_rows), num_replicas=info.world_size, rank=info.rank,
                                          shuffle=shuffle, seed=seed, drop_last=drop_last and info.enabled)

    def epoch(self, epoch: int, start: int = 0) -> list[list[int]]:
        self.sampler.set_epoch(epoch)
        idx = list(self.sampler)
        n = len(idx) // self.batch_size if self.drop_last else math.ceil(len(idx) / self.batch_size)
        return [idx[i * self.batch_size:(i + 1) * self.batch_size] for i in range(start, n)]

    def __len__(self) -> int:
        return len(self.epoch(0))


class CacheSamples:
    """Samples of a feature-cache split, indexed by cache sample id."""

    def __init__(self, split: Any) -> None:
        self._samples = split.samples()

    def __getitem__(self, i: int) -> Any:
        return self._samples[i]


def row_datasets(setup: Any) -> tuple[Any, Any]:
    """(train, eval) :class:`~draftsmith.data.dataset.RowDataset` of a setup (eval is None without a split)."""
    from ..data.dataset import RowDataset
    from ..data.packing import pack_rows, single_rows

    cfg, data = setup.config, setup.data
    keys: list[Any] = []
    if setup.cache is not None:
        keys = list(setup.request.layer_ids) + (["final"] if setup.request.final_hidden else [])

    def dataset(samples: list[Any], cache: Any, index: list[int] | None) -> RowDataset:
        ids = list(range(len(samples)))
        rows = (pack_rows(ids, [len(s) for s in samples], cfg.data.seq_len, cfg.train.seed)
                if cfg.data.packing else single_rows(ids))
        if cache is not None and index is not None:  # rows name positions in the split: map them to cache ids
            rows = [[index[i] for i in r] for r in rows]
            return RowDataset(CacheSamples(cache), rows, packed=cfg.data.packing, cache=cache, feature_keys=keys)
        return RowDataset(samples, rows, packed=cfg.data.packing)

    train = dataset(data.train, data.cache_train, data.train_index)
    evaluation = dataset(data.eval, data.cache_eval, data.eval_index) if data.eval else None
    return train, evaluation


def make_loader(dataset: Any, batches: list[list[int]], pad_token_id: int, num_workers: int) -> DataLoader:
    from ..data.dataset import collate

    # a partial, not a lambda: picklable for spawn/forkserver workers
    return DataLoader(dataset, batch_sampler=batches, num_workers=num_workers,
                      collate_fn=functools.partial(collate, pad_token_id=pad_token_id))
