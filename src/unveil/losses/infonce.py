"""MoCo's InfoNCE against a queue of negatives, and the queue itself.

``info_nce(q, k, queue)``: for each query the positive is its key, the negatives are the queue's
keys; logits ``[q·k, q·queue] / τ`` with the positive first, cross-entropy to index 0 (MoCo,
Un-Mix and MixDet all use this form). The queue is a module holding a ``(K, D)`` buffer of
L2-normalised keys and a pointer, so both travel in ``state_dict`` (exact resume). Keys are
gathered from every rank before they are enqueued, so every rank holds the same queue (as the
MoCo code): DDP must not broadcast buffers over it, which a method says with
``ddp_broadcast_buffers = False``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import dist


def info_nce(q: Tensor, k: Tensor, queue: Tensor, temperature: float = 0.1) -> Tensor:
    """Mean InfoNCE of queries ``q`` (B, D) with positive keys ``k`` (B, D) and negatives ``queue`` (K, D).

    ``q`` and ``k`` are normalised here (float32); ``queue`` is used as stored (already normalised).
    ``k`` is a constant unless the caller keeps its graph (the key encoder runs under no_grad).
    """
    q, k = F.normalize(q.float(), dim=1), F.normalize(k.float(), dim=1)
    positive = (q * k).sum(dim=1, keepdim=True)
    negative = q @ queue.detach().float().clone().T  # a copy: the queue is written in place before backward
    logits = torch.cat([positive, negative], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


class KeyQueue(nn.Module):
    """A FIFO of ``size`` normalised ``dim``-d keys (random at start, as MoCo) and its write pointer.

    ``enqueue`` gathers the keys of every rank (rank order) and writes them at the pointer,
    wrapping around; with one process it writes the local keys.
    """

    def __init__(self, dim: int, size: int = 4096, generator: torch.Generator | None = None):
        super().__init__()
        if size < 1:
            raise ValueError(f"queue size must be >= 1, got {size}")
        self.register_buffer("keys", F.normalize(torch.randn(size, dim, generator=generator), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.keys.shape[0]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        """Take the saved queue's length: the engine fits a queue to small data (``fit_queue_to_data``) while the
        run's config keeps the recipe's length, so a loaded run must adopt the length it trained with."""
        saved = state_dict.get(prefix + "keys")
        if saved is not None and saved.ndim == 2 and saved.shape[1] == self.keys.shape[1]:
            self.keys = torch.empty_like(saved, device=self.keys.device, dtype=self.keys.dtype)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> int:
        """Write ``keys`` (gathered from every rank) at the pointer; returns how many were written."""
        keys = dist.gather_no_grad(F.normalize(keys.detach().float(), dim=1))
        n = keys.shape[0]
        if n >= self.size:  # more keys than room: keep the newest
            keys, n = keys[-self.size :], self.size
        idx = (self.ptr + torch.arange(n, device=self.keys.device)) % self.size
        self.keys.index_copy_(0, idx, keys.to(self.keys.dtype))
        self.ptr.copy_((self.ptr + n) % self.size)
        return n


@torch.no_grad()
def fill_from_data(batches: Iterable[Tensor], size: int, enqueue_batch: Callable[[Tensor], int]) -> None:
    """Fill a ``size``-key queue with keys of real images before the first step: ``enqueue_batch(images)``
    enqueues one batch's keys and returns how many it wrote; batches are drawn until ``size`` keys are in.

    Why: a queue that starts as random unit vectors (MoCo's code) makes the first ``size / batch`` steps
    contrast every query with negatives no image resembles, which the loss satisfies by aligning all
    outputs; the queue then fills with near-identical keys. On 5,000 CIFAR-10 images at τ 0.1 MoCo never
    left that state (queue keys' mean cosine 0.9999, loss at log(K + 1)); with a queue of real keys the
    same run does not collapse (docs/results.md, "Learning parity, fifth session")."""
    written, source = 0, iter(batches)
    while written < size:
        images = next(source, None)
        if images is None:  # fewer batches than the queue needs: it keeps its random tail
            return
        written += enqueue_batch(images)
