"""The per-epoch monitor: weighted kNN on embeddings, or classification accuracy; on data without
labels, nearest-neighbour (and, for autoencoders, reconstruction) grids instead of numbers.

Sized to stay cheap: with ``monitor_train_size/monitor_test_size: auto`` the bank is a quarter of
the training set (at least 64, at most 10,000) and the queries a twentieth (at least 32, at most
2,000), i.e. about 0.3 forward passes per training image, against about 6 per image in a two-view
epoch (~5 %).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..eval.features import extract
from ..eval.knn import knn_accuracy
from ..precision import autocast

NEIGHBOURS_PNG = "neighbours.png"
NEIGHBOURS_UNTRAINED_PNG = "neighbours_untrained.png"
RECON_PNG = "recon.png"


def fixed_subset(n: int, size: int | None, seed: int = 0) -> Tensor:
    """The same subset every epoch and every run, so monitor numbers are comparable."""
    if not size or size >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size].sort().values


def monitor_sizes(t: dict[str, Any], n_train: int, n_test: int) -> tuple[int, int]:
    """(bank, queries): ``auto`` scales with the training set; ``None`` means every image.

    The classify monitor (supervised training, fine-tuning) is the evaluation itself, so its auto
    query set stays the earlier fixed 5,000 test images."""
    bank, query = t["monitor_train_size"], t["monitor_test_size"]
    # Floors of 1,000 bank images and 250 queries (or every image, where a folder has fewer): encoding
    # them takes seconds, and a kNN score from a few dozen images (the old floors of 64 and 32) is noise.
    if bank == "auto":
        bank = min(10_000, max(1_000, n_train // 4))
    if query == "auto":
        query = 5_000 if t["monitor"] == "classify" else min(2_000, max(250, n_train // 20))
    return min(bank or n_train, n_train), min(query or n_test, n_test)


def has_labels(dataset: Any) -> bool:
    return dataset.num_classes > 0 and bool((dataset.train.labels >= 0).any())


@torch.no_grad()
def classify_accuracy(method: nn.Module, images: Tensor, labels: Tensor, device: torch.device,
                      precision: str, batch_size: int = 512) -> dict[str, float]:
    correct1 = correct5 = 0
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].to(device)
        y = labels[i : i + batch_size].to(device)
        with autocast(device, precision):
            logits = method.classify(x).float()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += (top[:, 0] == y).sum().item()
        correct5 += (top == y[:, None]).any(dim=1).sum().item()
    n = max(1, len(images))
    return {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n}


def unlabelled_figures(method: nn.Module, dataset: Any, t: dict[str, Any], device: torch.device, precision: str,
                       run_dir: Path, epoch: int, n_queries: int = 8, untrained: bool = False) -> dict[str, Any]:
    """Nearest-neighbour grid (and reconstruction grid for autoencoders) of fixed test images;
    ``untrained``: the same grid before the first step, the baseline to compare the others with."""
    from ..viz.neighbours import neighbour_grid

    n_bank, _ = monitor_sizes(t, len(dataset.train.images), len(dataset.test.images))
    bank_images = dataset.train.images[fixed_subset(len(dataset.train.images), n_bank)]
    queries = dataset.test.images[fixed_subset(len(dataset.test.images), n_queries, seed=1)]
    bank = extract(method.embed, bank_images, device, precision)
    query = extract(method.embed, queries, device, precision)
    when = "untrained encoder (compare with neighbours.png)" if untrained else f"epoch {epoch}"
    title = f"{when}: nearest of {len(bank_images)} training images (encoder features, cosine)"
    name = NEIGHBOURS_UNTRAINED_PNG if untrained else NEIGHBOURS_PNG
    neighbour_grid(queries, bank_images, query, bank, run_dir / name, title=title)
    row: dict[str, Any] = {"figures": name}
    if untrained:
        return row
    if method.implements("reconstruct"):
        from ..viz.reconstruct import reconstruction_grid

        reconstruction_grid(method, queries.to(device), torch.Generator(device=device).manual_seed(0),
                            run_dir / RECON_PNG)
        row["figures"] += f" {RECON_PNG}"
    return row


def run_monitor(method: nn.Module, dataset: Any, t: dict[str, Any], device: torch.device,
                precision: str) -> dict[str, float]:
    """kNN (bank: fixed training subset, queries: fixed test subset) or classify accuracy."""
    method.eval()
    n_bank, n_query = monitor_sizes(t, len(dataset.train.images), len(dataset.test.images))
    test_idx = fixed_subset(len(dataset.test.images), n_query)
    test_x, test_y = dataset.test.images[test_idx], dataset.test.labels[test_idx]
    if t["monitor"] == "classify":
        acc = classify_accuracy(method, test_x, test_y, device, precision)
        return {f"test_{k}": v for k, v in acc.items()}
    train_idx = fixed_subset(len(dataset.train.images), n_bank)
    bank = extract(method.embed, dataset.train.images[train_idx], device, precision)
    query = extract(method.embed, test_x, device, precision)
    acc = knn_accuracy(bank, dataset.train.labels[train_idx], query, test_y, dataset.num_classes,
                       k=t["knn_k"], temperature=t["knn_t"])
    return {f"knn_{k}": v for k, v in acc.items() if k == "top1" or dataset.num_classes > 5}  # top-5 of <= 5 classes is 100
