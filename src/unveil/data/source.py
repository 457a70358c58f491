"""What a resolved ``--data`` is before decoding: labelled pools of not-yet-decoded images.

Labels are known before pixels (folder names, a Parquet label column), so splits and subsets are
chosen first and only the chosen images are decoded: ``data.subset`` saves time and memory too.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch


class Pool(Protocol):
    labels: np.ndarray  # int64 (n,), -1 = unlabelled

    def __len__(self) -> int: ...

    def ids(self) -> list[str]:
        """Stable names of the items (relative paths, ``file#row``): what a saved split lists."""
        ...

    def take(self, index: np.ndarray) -> Pool: ...

    def cache_key(self) -> list[Any] | None:
        """JSON-able parts identifying these exact items, or None when decoding is too cheap to cache."""
        ...

    def decode(self, size: int) -> tuple[torch.Tensor, np.ndarray]:
        """uint8 (n, 3, s, s) images and per-item status (0 = ok); s == size unless already an array."""
        ...


@dataclass
class Source:
    name: str  # Dataset.name
    where: str  # the path in messages and in the saved-split key
    classes: list[str]
    train: Pool
    test: Pool | None  # None: split train, stratified and saved
    native_size: int | None = None  # registered: decode at this size, then resize in bulk
    default_size: int = 64  # image_size when none is given
    skipped: Counter[str] = field(default_factory=Counter)  # found while listing, before decoding
    total: int = 0  # files listed (for the warning line); 0 = not a folder of files
    empty_classes: list[str] = field(default_factory=list)  # class folders without a single image
