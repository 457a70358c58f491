"""Resolve ``--data`` to an in-memory uint8 dataset: registered datasets, image folders, Parquet.

``load_data(name, ...)`` returns a ``Dataset`` whose splits hold uint8 (N, 3, H, W) images (always
RGB) and int64 labels (-1 = unlabelled). Decoded images are cached and generated train/test splits
are saved under the cache folder (``$UNVEIL_CACHE`` or ``~/.cache/unveil/cache``; see
``unveil.data.cache``). Registered datasets are looked up as described in ``unveil.data.registry``.
"""

from .dataset import Dataset, Split
from .load import load_data

__all__ = ["Dataset", "Split", "load_data"]
