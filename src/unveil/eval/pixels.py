"""The raw-pixel baseline: weighted kNN on flattened, normalised pixels.

A learned representation is only worth its training if it beats the image itself; this is the
number a pretrained encoder's kNN must clear (next to the untrained encoder's).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..views import eval_transform
from .knn import knn_accuracy


@torch.no_grad()
def pixel_features(images: Tensor, size: int, mean: Sequence[float] | None, std: Sequence[float] | None,
                   normalize: bool = True, batch_size: int = 2048) -> Tensor:
    """The methods' deterministic evaluation view of uint8 ``images``, flattened to (N, 3*size*size) float32."""
    chunks = [eval_transform(images[i : i + batch_size], size, mean, std, normalize=normalize).float().flatten(1)
              for i in range(0, len(images), batch_size)]
    return torch.cat(chunks) if chunks else torch.empty(0)


def pixel_knn(dataset: Any, k: int = 200, temperature: float = 0.1, normalize: bool = True) -> dict[str, Any]:
    """Weighted kNN top-1/top-5 (%) with the dataset's training images as the bank, its test images as queries.

    ``dataset`` is a loaded unveil dataset (``train``/``test`` with uint8 ``images`` and ``labels``,
    ``image_size``, ``mean``, ``std``, ``num_classes``); normalisation uses its mean/std, as SimCLR's
    evaluation view does.
    """
    size, mean, std = dataset.image_size, tuple(dataset.mean), tuple(dataset.std)
    bank = pixel_features(dataset.train.images, size, mean, std, normalize)
    query = pixel_features(dataset.test.images, size, mean, std, normalize)
    acc = knn_accuracy(bank, dataset.train.labels, query, dataset.test.labels, dataset.num_classes,
                       k=k, temperature=temperature)
    return {"protocol": "knn", "features": "raw pixels" + (" (normalised)" if normalize else " in [0, 1]"),
            "k": k, "temperature": temperature, "feature_dim": int(bank.shape[1]),
            "train_images": len(bank), "test_images": len(query), **acc}
