"""Deterministic batch streams keyed by iteration.

Every batch is a pure function of (seed, stream, iteration): the order is a per-epoch permutation and
each sample's augmentation seed is derived from its global position. A run resumed at iteration t
therefore sees exactly the batches the uninterrupted run would have seen, whatever the number of
data-loader workers, with no sampler state to save.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def sample_seed(seed: int, stream: int, position: int) -> int:
    return int(np.random.SeedSequence([seed, stream, position]).generate_state(1)[0])


class IterationBatchSampler(Sampler):
    """Yields lists of (index, augmentation_seed) for iterations start..total-1.

    With ``rank``/``world_size`` each rank takes a disjoint slice of the global batch, so a
    distributed run of the same global batch sees the same samples as a single-process run."""

    def __init__(self, n: int, batch_size: int, seed: int, stream: int, start: int, total: int,
                 rank: int = 0, world_size: int = 1):
        if n <= 0:
            raise ValueError("empty dataset")
        self.n, self.bs, self.seed, self.stream = n, batch_size, seed, stream
        self.start, self.total, self.rank, self.world = start, total, rank, world_size
        self._perm_cache: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perm_cache:
            self._perm_cache = {epoch: np.random.default_rng([self.seed, self.stream, epoch]).permutation(self.n)}
        return self._perm_cache[epoch]

    def batch(self, it: int) -> list[tuple[int, int]]:
        out = []
        for j in range(self.bs):
            pos = it * self.bs + j
            if j % self.world != self.rank:
                continue
            idx = int(self._perm(pos // self.n)[pos % self.n])
            out.append((idx, sample_seed(self.seed, self.stream, pos)))
        return out

    def __iter__(self):
        for it in range(self.start, self.total):
            yield self.batch(it)

    def __len__(self) -> int:
        return max(0, self.total - self.start)


def make_stream(dataset: Dataset, batch_size: int, seed: int, stream: int, start: int, total: int,
                workers: int = 0, rank: int = 0, world_size: int = 1):
    """An iterator of collated batches for iterations start..total-1."""
    sampler = IterationBatchSampler(len(dataset), batch_size, seed, stream, start, total, rank, world_size)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                        persistent_workers=False, pin_memory=torch.cuda.is_available())
    return iter(loader)
