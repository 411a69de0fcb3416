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
                 rank: int = 0, world_size: int = 1, choose=None):
        if n <= 0:
            raise ValueError("empty dataset")
        self.n, self.bs, self.seed, self.stream = n, batch_size, seed, stream
        self.start, self.total, self.rank, self.world = start, total, rank, world_size
        self.choose = choose  # optional (seed, stream, position) -> index, e.g. RareClassSampling
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
            if self.choose is not None:
                idx = int(self.choose(self.seed, self.stream, pos))
            else:
                idx = int(self._perm(pos // self.n)[pos % self.n])
            out.append((idx, sample_seed(self.seed, self.stream, pos)))
        return out

    def __iter__(self):
        for it in range(self.start, self.total):
            yield self.batch(it)

    def __len__(self) -> int:
        return max(0, self.total - self.start)


class RareClassSampling:
    """DAFormer's rare-class sampling: draw a class c with probability softmax((1 - f_c) / T) over the
    classes present in the data (f_c = the class's share of labelled pixels), then an image that
    holds at least ``min_pixels`` pixels of c, uniformly. Rare classes (small f_c) are drawn far more
    often than their share, which is what lifts their IoU in self-training.

    ``counts``: (n_images, C) per-image class pixel counts, as prepare-data writes them. Each draw
    is a pure function of (seed, stream, position), like the plain stream, so resume stays exact."""

    def __init__(self, counts, temperature: float = 0.01, min_pixels: int = 3000):
        counts = np.asarray(counts, dtype=np.int64)
        if counts.ndim != 2 or counts.shape[0] == 0:
            raise ValueError("rare-class sampling needs per-image class counts of at least one image")
        if not temperature > 0:
            raise ValueError(f"rare-class sampling temperature must be > 0, got {temperature}")
        self.classes, self.probs = rare_class_probabilities(counts.sum(0), temperature)
        # images per class; a class with no image above min_pixels falls back to any image holding it
        self.images = []
        for c in self.classes:
            has = np.flatnonzero(counts[:, c] >= max(1, min_pixels))
            self.images.append(has if has.size else np.flatnonzero(counts[:, c] > 0))

    def __call__(self, seed: int, stream: int, position: int) -> int:
        rng = np.random.default_rng([seed, stream, position, 7])
        k = rng.choice(len(self.classes), p=self.probs)
        return int(rng.choice(self.images[k]))


def rare_class_probabilities(total_counts, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """(classes present, their sampling probabilities) from per-class pixel totals."""
    total = np.asarray(total_counts, dtype=np.float64)
    present = np.flatnonzero(total > 0)
    if present.size == 0:
        raise ValueError("no labelled pixels: rare-class sampling has no class to draw")
    freq = total[present] / total[present].sum()
    logits = (1.0 - freq) / temperature
    p = np.exp(logits - logits.max())  # stable softmax: T = 0.01 puts logits near 100
    return present, p / p.sum()


def make_stream(dataset: Dataset, batch_size: int, seed: int, stream: int, start: int, total: int,
                workers: int = 0, rank: int = 0, world_size: int = 1, choose=None):
    """An iterator of collated batches for iterations start..total-1 (``choose``: see the sampler)."""
    sampler = IterationBatchSampler(len(dataset), batch_size, seed, stream, start, total, rank, world_size, choose)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                        persistent_workers=False, pin_memory=torch.cuda.is_available())
    return iter(loader)
