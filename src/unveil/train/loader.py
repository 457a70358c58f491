"""Batches of uint8 images from a tensor (in RAM or memory-mapped from the disk cache), in a
reproducible order, gathered ahead of the step by a background thread.

The order of epoch ``e`` is a permutation drawn from ``(seed, e)``, so a resumed run that skips
the first ``s`` batches sees exactly the batches the uninterrupted run would have seen. Each
rank takes every ``world``-th index of the permutation (as DistributedSampler does), so a rank
reads only its own rows: from a memory-mapped cache, only their pages.

Why a thread and not DataLoader workers: a batch is one ``index_select`` of uint8 rows (the views
are made later, on the device, in batch). The gather releases the GIL, so a thread overlaps it
(and the page faults of a cold disk cache) with the step, without worker processes that would
each map the cache and pickle batches back. On CUDA the thread gathers straight into pinned
(page-locked) memory, and the step's copy to the GPU is ``non_blocking``; PyTorch's caching host
allocator keeps a pinned block from being reused until the copy that reads it has finished.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

_DONE = object()


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

    def _gather(self, sel: Tensor, pin: bool) -> tuple[Tensor, Tensor]:
        """Rows ``sel`` of the images and labels, gathered into fresh (pinned) tensors."""
        images = torch.empty((len(sel), *self.images.shape[1:]), dtype=self.images.dtype, pin_memory=pin)
        labels = torch.empty((len(sel),), dtype=self.labels.dtype, pin_memory=pin)
        # index_select with out=: one gather straight into the buffer, the GIL released meanwhile
        torch.index_select(self.images, 0, sel, out=images)
        torch.index_select(self.labels, 0, sel, out=labels)
        return images, labels

    def _selections(self, epoch: int, start_step: int) -> Iterator[Tensor]:
        idx = self.indices(epoch)
        for step in range(start_step, self.steps_per_epoch):
            yield idx[step * self.batch_size : (step + 1) * self.batch_size]

    def epoch(self, epoch: int, start_step: int = 0, pin: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield the batches of ``epoch`` from ``start_step`` on (for exact resume), in this thread."""
        for sel in self._selections(epoch, start_step):
            yield self._gather(sel, pin)

    def device_batches(self, epoch: int, start_step: int, device: torch.device,
                       prefetch: int = 2) -> Iterator[tuple[Tensor, Tensor]]:
        """The batches of ``epoch`` from ``start_step`` on, already on ``device``.

        A background thread gathers up to ``prefetch`` batches ahead (0: gather in this thread).
        The order is that of ``epoch``: the thread changes when a batch is read, never which.
        Leaving the loop early (``break``, an exception) stops the thread.
        """
        pin = device.type == "cuda"
        source = self.epoch(epoch, start_step, pin) if prefetch <= 0 else _ahead(
            lambda: self.epoch(epoch, start_step, pin), prefetch)
        for images, labels in source:
            if device.type != "cpu":
                images = images.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
            yield images, labels


def _ahead(make: Callable[[], Iterator], depth: int) -> Iterator:
    """Run the iterator ``make()`` in a daemon thread, ``depth`` items ahead of the consumer.

    An exception in the thread is raised in the consumer at the item where it happened.
    """
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def fill() -> None:
        try:
            for item in make():
                while not stop.is_set():
                    try:
                        ready.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            ready.put(_DONE)
        except BaseException as exc:  # handed to the consumer, which raises it
            ready.put(exc)

    thread = threading.Thread(target=fill, name="unveil-batches", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a thread waiting on a full queue, then let it see `stop`
            try:
                ready.get_nowait()
            except queue.Empty:
                pass
            thread.join(timeout=0.05)
