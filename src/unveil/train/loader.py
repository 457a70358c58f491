"""Batches of uint8 images from an in-memory tensor, in a reproducible order.

The order of epoch ``e`` is a permutation drawn from ``(seed, e)``, so a resumed run that skips
the first ``s`` batches sees exactly the batches the uninterrupted run would have seen. Each
rank takes every ``world``-th index of the permutation (as DistributedSampler does).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor


class TensorBatches:
    """Iterate ``(images, labels)`` batches; ``drop_last`` so every step has the same shape."""

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int, seed: int, rank: int = 0,
                 world: int = 1, shuffle: bool = True, drop_last: bool = True):
        self.images, self.labels = images, labels
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.shuffle, self.drop_last = shuffle, drop_last
        per_rank = len(images) // world
        self.steps_per_epoch = per_rank // batch_size if drop_last else -(-per_rank // batch_size)

    def __len__(self) -> int:
        return self.steps_per_epoch

    def indices(self, epoch: int) -> Tensor:
        n = len(self.images)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        per_rank = n // self.world
        return order[self.rank : per_rank * self.world : self.world]

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield the batches of ``epoch`` from ``start_step`` on (for exact resume)."""
        idx = self.indices(epoch)
        pin = torch.cuda.is_available()
        for step in range(start_step, self.steps_per_epoch):
            sel = idx[step * self.batch_size : (step + 1) * self.batch_size]
            images, labels = self.images[sel], self.labels[sel]
            if pin:
                images, labels = images.pin_memory(), labels.pin_memory()
            yield images, labels
