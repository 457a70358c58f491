"""The per-epoch monitor: weighted kNN on embeddings, or classification accuracy."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..eval.features import extract
from ..eval.knn import knn_accuracy
from .precision import autocast


def fixed_subset(n: int, size: int | None, seed: int = 0) -> Tensor:
    """The same subset every epoch and every run, so monitor numbers are comparable."""
    if not size or size >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size].sort().values


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


def run_monitor(method: nn.Module, dataset: Any, t: dict[str, Any], device: torch.device,
                precision: str) -> dict[str, float]:
    method.eval()
    test_idx = fixed_subset(len(dataset.test.images), t["monitor_test_size"])
    test_x, test_y = dataset.test.images[test_idx], dataset.test.labels[test_idx]
    if t["monitor"] == "classify":
        acc = classify_accuracy(method, test_x, test_y, device, precision)
        return {f"test_{k}": v for k, v in acc.items()}
    train_idx = fixed_subset(len(dataset.train.images), t["monitor_train_size"])
    bank = extract(method.embed, dataset.train.images[train_idx], device, precision)
    query = extract(method.embed, test_x, device, precision)
    acc = knn_accuracy(bank, dataset.train.labels[train_idx], query, test_y, dataset.num_classes,
                       k=t["knn_k"], temperature=t["knn_t"])
    return {f"knn_{k}": v for k, v in acc.items()}
