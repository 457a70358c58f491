"""ImageFolder-style directories, including messy real ones.

Accepted layouts (hidden files and folders, e.g. ``.DS_Store``, are ignored):

- ``root/<class>/**/<image>``: one class per subfolder (sorted names -> labels 0..K-1);
- ``root/{train,test}/<class>/...`` (``val``/``validation`` also count as test): given splits;
- ``root/<image>``: a flat folder is one unlabelled pool (labels -1, no classes).

Files are sorted out before decoding: zero-byte files ("empty"), other extensions ("not an
image"), files beside class folders ("outside class folders"). What PIL cannot decode is counted
later as "unreadable". Class folders without any image are dropped from ``classes``.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .decode import IMAGE_EXTENSIONS, decode_images
from .source import Source

_TEST_NAMES = ("test", "val", "validation")


class FilePool:
    """Image files under one root, with their labels and (size, mtime) for the cache key."""

    def __init__(self, root: Path, files: list[str], labels: np.ndarray, stats: list[tuple[int, int]]):
        self.root, self.files, self.labels, self.stats = root, files, labels, stats

    def __len__(self) -> int:
        return len(self.files)

    def ids(self) -> list[str]:
        return self.files

    def take(self, index: np.ndarray) -> FilePool:
        index = np.asarray(index, dtype=np.int64)
        return FilePool(
            self.root, [self.files[i] for i in index], self.labels[index], [self.stats[i] for i in index]
        )

    def cache_key(self) -> list:
        return ["folder", str(self.root), [[f, *s] for f, s in zip(self.files, self.stats)]]

    def decode(self, size: int) -> tuple[torch.Tensor, np.ndarray]:
        return decode_images([str(self.root / f) for f in self.files], size)


def _visible(path: Path) -> tuple[list[Path], list[Path]]:
    """(subfolders, files) of path, sorted, hidden entries left out."""
    entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    return [p for p in entries if p.is_dir()], [p for p in entries if not p.is_dir()]


def _walk(folder: Path) -> list[Path]:
    """Every non-hidden file under folder, sorted, following symlinked folders."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in sorted(filenames) if not f.startswith(".")]
    return found


def _split_folders(root: Path) -> dict[str, Path]:
    subdirs = {p.name.lower(): p for p in _visible(root)[0]}
    test = next((subdirs[n] for n in _TEST_NAMES if n in subdirs), None)
    if "train" in subdirs and test is not None:
        return {"train": subdirs["train"], "test": test}
    return {"train": root}


def scan_folder(root: Path) -> Source:
    """List a folder into labelled pools; nothing is decoded here."""
    root = root.resolve()
    skipped: Counter[str] = Counter()
    total = 0
    listed: dict[str, list[tuple[str | None, Path]]] = {}  # split -> [(class or None, file)]
    class_names: set[str] = set()
    for split, folder in _split_folders(root).items():
        class_dirs, loose = _visible(folder)
        if class_dirs:
            skipped["outside class folders"] += len(loose)
            total += len(loose)
            listed[split] = [(d.name, f) for d in class_dirs for f in _walk(d)]
            class_names.update(d.name for d in class_dirs)
        else:
            listed[split] = [(None, f) for f in loose]
    kept: dict[str, list[tuple[str | None, Path, os.stat_result]]] = {}
    for split, files in listed.items():
        total += len(files)
        kept[split] = []
        for cls, f in files:
            if f.suffix.lower() not in IMAGE_EXTENSIONS:
                skipped["not an image"] += 1
                continue
            try:
                st = f.stat()
            except OSError:
                skipped["unreadable"] += 1
                continue
            if st.st_size == 0:
                skipped["empty"] += 1
            else:
                kept[split].append((cls, f, st))
    if not any(kept.values()):
        raise UserError(
            f"data.name: no images in {root} ({total} files, none a non-empty "
            f"{'/'.join(sorted(e[1:] for e in IMAGE_EXTENSIONS))}); expected class subfolders of images "
            "or a flat folder of images"
        )
    used = sorted({cls for items in kept.values() for cls, _, _ in items if cls is not None})
    label_of = {name: i for i, name in enumerate(used)}
    pools = {}
    for split, items in kept.items():
        labels = np.array([label_of[c] if c is not None else -1 for c, _, _ in items], dtype=np.int64)
        files = [f.relative_to(root).as_posix() for _, f, _ in items]
        stats = [(st.st_size, st.st_mtime_ns) for _, _, st in items]
        pools[split] = FilePool(root, files, labels, stats)
    return Source(
        name=root.name,
        where=str(root),
        classes=used,
        train=pools["train"],
        test=pools.get("test"),
        skipped=skipped,
        total=total,
        empty_classes=sorted(class_names - set(used)),
    )
