"""A torch ``Dataset`` over a feature store, for training temporal heads (attention, GRU, ...) in torch.

Kept apart from the reader so that reading a store never needs torch. Items are
``(frames, label_index)``: ``frames`` a float32 tensor (T, D) — or (D',) with ``pool`` — and
``label_index`` an int64 index into ``dataset.classes`` (-1 for an unlabeled clip). Clips may have
different T (fps sampling); ``pad_collate`` batches them with a length vector.

Items are read lazily (``FeatureStore.frames``: one shard in memory at a time). ``ShardOrderSampler``
shuffles shards, then clips within each shard, so an epoch reads each shard once instead of once per clip.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..errors import ConfigError


class FrameSource(Protocol):
    """What a dataset reads of a store (``FeatureStore`` is one): this module never opens one, so ``reader``
    imports it (``FeatureStore.torch_dataset``) and not the other way round."""

    @property
    def labels(self) -> list[str]: ...

    @property
    def splits(self) -> list[str]: ...

    def frames(self, i: int) -> np.ndarray: ...

    def clip_shards(self) -> np.ndarray: ...


class ClipDataset(Dataset):
    """Clips of a store (optionally one split), each as its per-frame embeddings and label index."""

    def __init__(
        self,
        store: FrameSource,
        *,
        split: str | None = None,
        pool: Callable[[np.ndarray], np.ndarray] | None = None,
        classes: Sequence[str] | None = None,
    ):
        self.store = store
        labels = self.store.labels
        if split is not None and split not in ("train", "val", "test", ""):
            raise ConfigError(f"split={split!r}: allowed values are train, val, test, '' (unsplit) or None (all)")
        self.indices = np.array(
            [i for i, s in enumerate(self.store.splits) if split is None or s == split], dtype=np.int64
        )
        self.classes = list(classes) if classes is not None else sorted({x for x in labels if x})
        lookup = {c: k for k, c in enumerate(self.classes)}
        self.targets = np.array([lookup.get(labels[i], -1) for i in self.indices], dtype=np.int64)
        self.pool = pool

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int]:
        x = self.store.frames(int(self.indices[k]))
        if self.pool is not None:
            x = self.pool(x)
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), int(self.targets[k])


class ShardOrderSampler(Sampler[int]):
    """Dataset positions in a shuffled shard order, shuffled within each shard (a new order per epoch)."""

    def __init__(self, dataset: ClipDataset, *, shuffle: bool = True, seed: int = 0):
        self.dataset, self.shuffle, self.seed, self.epoch = dataset, shuffle, seed, 0
        self.shard = dataset.store.clip_shards()[dataset.indices] if len(dataset) else np.zeros(0, np.int64)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        shards = np.unique(self.shard)
        if self.shuffle:
            rng.shuffle(shards)
        for s in shards:
            pos = np.flatnonzero(self.shard == s)
            if self.shuffle:
                rng.shuffle(pos)
            yield from (int(p) for p in pos)


def pad_collate(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, T_max, D) zero-padded frames, (B,) lengths, (B,) label indices."""
    frames = [b[0] for b in batch]
    lengths = torch.tensor([len(f) for f in frames], dtype=torch.int64)
    out = torch.zeros(len(frames), int(lengths.max()) if len(frames) else 0, frames[0].shape[-1] if frames else 0)
    for i, f in enumerate(frames):
        out[i, : len(f)] = f
    return out, lengths, torch.tensor([b[1] for b in batch], dtype=torch.int64)
