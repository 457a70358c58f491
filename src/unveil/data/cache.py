"""Decoded-tensor cache and saved train/test splits, both under one cache folder.

Layout of ``cache_dir`` (default ``$UNVEIL_CACHE`` or ``~/.cache/unveil/cache``):

- ``<name>-<split>-<size>px-<key>.safetensors``: uint8 images + int64 labels of one decoded split;
  ``key`` hashes the source path, every source file's size and mtime, the selected items and the
  decode size, so an edited folder or a different subset is a different entry.
- ``splits/<name>-<key>.json``: the train/test file lists of a source without a test split; ``key``
  hashes (source path, test_fraction, split_seed), so the same split comes back on every run.

The cache is an optimisation: any problem with it (unwritable folder, corrupt file) means
decoding again, never a crash.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..errors import UserError
from ..io import atomic_write, atomic_write_text, tensor_bytes

VERSION = 1  # bump when the decoding changes, so old entries are not reused


def cache_root(cache_dir: str | Path | None) -> Path:
    if cache_dir is None:
        cache_dir = os.environ.get("UNVEIL_CACHE") or Path.home() / ".cache" / "unveil" / "cache"
    return Path(cache_dir).expanduser()


def digest(*parts: Any) -> str:
    """Short stable hash of JSON-able parts."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "data"


def file_stats(paths: list[Path]) -> list[tuple[str, int, int]]:
    """(path, size, mtime_ns) of each file: what the cache key trusts to notice a change."""
    stats = []
    for p in paths:
        st = p.stat()
        stats.append((str(p), st.st_size, st.st_mtime_ns))
    return stats


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """Tensors and JSON metadata of a cache entry, or None when absent or unreadable."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("unveil", "{}"))
        return load_file(str(path)), meta
    except Exception:  # a corrupt or foreign file is just a miss
        return None


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> bool:
    """Write a cache entry atomically; False (after one note) when the folder is unusable."""
    try:
        metadata = {"unveil": json.dumps(meta)}
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata), needed=tensor_bytes(tensors))
        return True
    except (OSError, UserError) as exc:
        print(
            f"unveil: not caching decoded images ({exc}); set UNVEIL_CACHE to a writable folder",
            file=sys.stderr,
        )
        return False


def split_path(root: Path, source: str, test_fraction: float, split_seed: int) -> Path:
    name = slug(Path(source).name)
    return root / "splits" / f"{name}-{digest(VERSION, source, float(test_fraction), int(split_seed))}.json"


def load_split(path: Path) -> dict[str, list[str]] | None:
    try:
        saved = json.loads(path.read_text())
        return {"train": list(saved["train"]), "test": list(saved["test"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_split(path: Path, record: dict[str, Any]) -> bool:
    try:
        atomic_write_text(path, json.dumps(record))
        return True
    except (OSError, UserError):
        return False
