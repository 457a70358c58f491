"""``load_data``: one ``--data`` value in, a decoded ``Dataset`` out (in RAM or memory-mapped).

The road: resolve the name (registered dataset, Parquet folder, image folder) to labelled pools;
split train/test when the source has no test split (stratified, seeded, saved); take the subsets;
pick the storage (RAM, or the disk cache of ``unveil.data.diskcache`` when the decoded data times
the ranks of this node would not fit) and check memory or disk space; decode each split once (or
read it from the cache); resize registered datasets; compute mean/std.

Every rank may call ``load_data`` at once: what writes to the cache folder (the saved split, a
cache entry) runs under a lock file there, so the first process builds and the others wait, then
read what it wrote.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from ..errors import UserError, require
from ..io import atomic_write_text
from . import cache as cache_mod
from . import diskcache
from .dataset import (
    Dataset,
    Split,
    channel_histogram,
    channel_stats,
    check_disk,
    check_memory,
    fits_in_memory,
    histogram_stats,
    resize_uint8,
    stratified_pick,
)
from .decode import OK, count_skipped, skipped_line
from .folder import scan_folder
from .labels import parse_labels, pick_labelled
from .parquet import parquet_source
from .registry import REGISTERED, canonical_name, data_root, registered_source
from .source import Pool, Source

_SUBSET_SALT, _TEST_SUBSET_SALT = 1_000_003, 2_000_003  # different streams from one split_seed
STORAGES = ("auto", "memory", "disk")


def _positive(name: str, value: int | None) -> None:
    ok = value is None or (isinstance(value, int) and not isinstance(value, bool) and value > 0)
    require(ok, f"data.{name} must be a positive integer (or null for all), got {value!r}")


def resolve_source(name: str, root: str | Path | None, download: bool) -> Source:
    """A registered name first, then a path: a Parquet folder or file, else an image folder."""
    require(
        isinstance(name, str) and name.strip() != "", "data.name is empty: give a registered name or a folder"
    )
    registered = canonical_name(name)
    if registered is not None:
        return registered_source(registered, data_root(root), download)
    path = Path(name).expanduser()
    if not path.exists():
        raise UserError(
            f"data.name: {path} does not exist and is not a registered dataset "
            f"({', '.join(REGISTERED)}); give an existing image or Parquet folder"
        )
    source = parquet_source(path, path.resolve().name)
    if source is not None:
        return source
    require(path.is_dir(), f"data.name: {path} is a file, not an image folder or a .parquet file")
    return scan_folder(path)


def saved_split(
    pool: Pool, where: str, test_fraction: float, seed: int, root: Path
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train, test) indices of pool, saved as file lists and reused on later runs.

    Items listed in the saved split keep their side; items new since then are split among
    themselves with the same rule, and the file is updated.
    """
    path = cache_mod.split_path(root, where, test_fraction, seed)
    with diskcache.file_lock(path.with_name(path.name + ".lock")):
        return _saved_split(pool, where, test_fraction, seed, path)


def _saved_split(
    pool: Pool, where: str, test_fraction: float, seed: int, path: Path
) -> tuple[np.ndarray, np.ndarray]:
    ids = pool.ids()
    saved = cache_mod.load_split(path)
    side = np.full(len(ids), -1, dtype=np.int8)  # 0 train, 1 test, -1 not yet assigned
    if saved is not None:
        position = {name: i for i, name in enumerate(ids)}
        for value, key in ((0, "train"), (1, "test")):
            listed = [position[n] for n in saved[key] if n in position]
            side[np.asarray(listed, dtype=np.int64)] = value
    new = np.flatnonzero(side < 0)
    if len(new):
        k = round(len(new) * test_fraction)
        if saved is None and len(new) >= 2:
            k = min(max(k, 1), len(new) - 1)  # both sides non-empty on the first split
        side[new] = 0
        side[new[stratified_pick(pool.labels[new], k, seed)]] = 1
    train, test = np.flatnonzero(side == 0), np.flatnonzero(side == 1)
    if saved is None or len(new) or len(train) + len(test) != len(saved["train"]) + len(saved["test"]):
        record = {
            "source": where,
            "test_fraction": test_fraction,
            "split_seed": seed,
            "train": [ids[i] for i in train],
            "test": [ids[i] for i in test],
        }
        if cache_mod.save_split(path, record) and saved is None:
            print(
                f"unveil: split {where} into {len(train)} train / {len(test)} test items "
                f"(data.test_fraction={test_fraction}, data.split_seed={seed}); saved to {path}",
                file=sys.stderr,
            )
    return train, test


def _decode_cached(pool: Pool, size: int, label: str, root: Path) -> tuple[Split, Counter[str], torch.Tensor]:
    """Decode pool at size through the cache: (split, skip reasons, channel histogram)."""
    parts = pool.cache_key()
    if parts is None:
        return _decode_in_memory(pool, size, None)
    key = cache_mod.digest(cache_mod.VERSION, parts, size)
    path = root / f"{cache_mod.slug(label)}-{size}px-{key}.safetensors"
    hit = _cached_tensors(path)
    if hit is not None:
        return hit
    with diskcache.file_lock(path.with_name(path.name + ".lock")):
        hit = _cached_tensors(path)  # written by another process while this one waited
        return hit if hit is not None else _decode_in_memory(pool, size, path)


def _cached_tensors(path: Path) -> tuple[Split, Counter[str], torch.Tensor] | None:
    hit = cache_mod.load_tensors(path)
    if hit is None or not {"images", "labels", "hist"} <= hit[0].keys():
        return None
    tensors, meta = hit
    return Split(tensors["images"], tensors["labels"]), Counter(meta.get("skipped", {})), tensors["hist"]


def _decode_in_memory(pool: Pool, size: int, path: Path | None) -> tuple[Split, Counter[str], torch.Tensor]:
    images, status = pool.decode(size)
    keep = status == OK
    labels = torch.from_numpy(pool.labels.astype(np.int64))
    if not keep.all():
        index = torch.from_numpy(np.flatnonzero(keep))
        images, labels = images[index], labels[index]
    split = Split(images.contiguous(), labels.contiguous())
    skipped = count_skipped(status)
    hist = channel_histogram(split.images)
    if path is not None:
        tensors = {"images": split.images, "labels": split.labels, "hist": hist}
        cache_mod.save_tensors(path, tensors, {"skipped": skipped})
    return split, skipped, hist


def _pick_storage(count: int, size: int, local_ranks: int, root: Path, entry: list) -> tuple[str, bool]:
    """(memory or disk, whether this process decided), the same in every process of one torchrun job.

    Alone, a process just checks. Several processes check at different moments (one may check while
    another already holds its copy in RAM, and then decide otherwise), so under torchrun the first
    to decide writes the answer to ``decisions/<key>`` in the cache folder, keyed by the job's
    TORCHELASTIC_RUN_ID and the entry, and the others read it (and check memory for their own copy
    only: the decider counted all of them)."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")

    def decide() -> str:
        return "memory" if fits_in_memory(count, size, local_ranks) else "disk"

    if local_ranks == 1 or not run_id:
        return decide(), True
    path = root / "decisions" / cache_mod.digest(cache_mod.VERSION, run_id, entry, local_ranks)
    with diskcache.file_lock(path.with_name(path.name + ".lock")):
        try:
            saved = path.read_text().strip()
            if saved in ("memory", "disk"):
                return saved, False
        except OSError:
            pass
        storage = decide()
        try:
            atomic_write_text(path, storage)
        except (OSError, UserError):
            pass  # an unwritable cache folder: each process decides alone
        return storage, True


def _report_skipped(source: Source, decoded: Counter[str], items: int) -> None:
    """Everything left out, listing and decoding together, as ONE stderr line (or none)."""
    skipped = source.skipped + decoded
    if source.total:
        line = skipped_line(skipped, source.total, "files", source.where)
    else:
        line = skipped_line(skipped, items, "images", source.where)
    if source.empty_classes:
        empty = f"ignored class folders without images: {', '.join(source.empty_classes)}"
        line = f"{line}; {empty}" if line else f"unveil: {empty} in {source.where}"
    if line:
        print(line, file=sys.stderr)


def load_data(
    name: str,
    root: str | None = None,
    image_size: int | None = None,
    subset: int | None = None,
    test_subset: int | None = None,
    test_fraction: float = 0.2, split_seed: int = 0,
    download: bool = True,
    cache_dir: str | None = None,
    storage: str = "auto",
    local_ranks: int = 1,
    labels: str | int | None = None, labels_seed: int = 0,  # a low-shot share of the training labels
) -> Dataset:
    """Resolve ``name`` (registered dataset, Parquet folder or image folder) to a decoded Dataset.

    Decoded splits are cached in ``cache_dir`` and splits made here are saved there (see
    ``unveil.data.cache``); a second call with the same arguments reads them back.

    ``storage``: ``memory`` decodes into RAM (one copy per process); ``disk`` memory-maps a uint8
    cache file that all processes of a node share through the page cache (``unveil.data.diskcache``);
    ``auto`` takes memory when ``local_ranks`` copies (the processes on this node) fit the memory
    check, else disk, saying so in one line (under torchrun: decided once per job, see
    ``_pick_storage``). Images already held in memory by their loader
    (torchvision/IDX arrays of registered datasets) always stay in memory.
    """
    _check_load_args(storage, local_ranks, image_size, subset, test_subset, test_fraction, split_seed, labels)
    try:
        source = resolve_source(name, root, download)
    except (OSError, pa.ArrowException) as exc:  # unreadable folder, corrupt Parquet file
        raise UserError(
            f"data.name={name}: cannot read the data ({exc}); check the files and their permissions"
        ) from None
    cache_root = cache_mod.cache_root(cache_dir)
    train, test = _pick_splits(source, subset, test_subset, test_fraction, split_seed, cache_root)
    train = _low_shot(train, labels, labels_seed, source, name)
    size = image_size or source.default_size
    decode_size = source.native_size or size
    what, count, peak = f"data.name={name}", len(train) + len(test), max(size, source.native_size or 0)
    keys, copies = [train.cache_key(), test.cache_key()], local_ranks
    if None in keys:  # arrays already in memory (torchvision/IDX): nothing to map
        storage = "memory"
    elif storage == "auto":
        storage, decided = _pick_storage(count, peak, local_ranks, cache_root, [keys, decode_size, size])
        copies = local_ranks if decided else 1
        if storage == "disk" and decided:
            print(f"unveil: {count} images at {peak}x{peak} x {local_ranks} process(es) on this node do not fit "
                  f"in memory; using the disk cache in {cache_root} (data.storage=disk)", file=sys.stderr)
    if storage == "disk":
        paths = [diskcache.cache_path(key, decode_size, size, f"{source.name}-{side}", cache_root)
                 for key, side in zip(keys, ("train", "test"))]
        missing = sum(len(p) for p, path in zip((train, test), paths) if not path.is_file())
        check_disk(missing, size, cache_root, diskcache.free_bytes(cache_root), what)
        train_split, skipped, hist = diskcache.disk_split(train, paths[0], decode_size, size)
        test_split, skipped_test, _ = diskcache.disk_split(test, paths[1], decode_size, size)
    else:
        check_memory(count, peak, what, copies=copies)
        train_split, skipped, hist = _decode_cached(train, decode_size, f"{source.name}-train", cache_root)
        test_split, skipped_test, _ = _decode_cached(test, decode_size, f"{source.name}-test", cache_root)
    _report_skipped(source, skipped + skipped_test, len(train) + len(test))
    return _finish_dataset(source, train_split, test_split, hist, size)


def _low_shot(train: Any, labels: str | int | None, seed: int, source: Any, name: str) -> Any:
    """The training split cut to a low-shot share of its labels (``data.labels``: ``1%``, ``10%`` or N per class,
    drawn per class with ``data.labels_seed``, ``unveil.data.labels``), or as it is; the test split is whole."""
    if labels is None:
        return train
    require(bool(source.classes), f"data.labels={labels}: {name} has no labels to take a share of (a flat folder)")
    return train.take(pick_labelled(train.labels, labels, seed))


def _check_load_args(storage: str, local_ranks: int, image_size: int | None, subset: int | None,
                     test_subset: int | None, test_fraction: float, split_seed: int,
                     labels: str | int | None = None) -> None:
    parse_labels(labels)  # a bad share is one line before any decoding
    require(storage in STORAGES, f"data.storage must be one of {', '.join(STORAGES)}, got {storage!r}")
    require(isinstance(local_ranks, int) and not isinstance(local_ranks, bool) and local_ranks > 0,
            f"local_ranks must be a positive integer, got {local_ranks!r}")
    _positive("image_size", image_size)
    _positive("subset", subset)
    _positive("test_subset", test_subset)
    require(0 < test_fraction < 1, f"data.test_fraction must be in (0, 1), got {test_fraction!r}")
    require(
        isinstance(split_seed, int) and not isinstance(split_seed, bool),
        f"data.split_seed must be an integer, got {split_seed!r}",
    )


def _pick_splits(source: Any, subset: int | None, test_subset: int | None, test_fraction: float, split_seed: int,
                 cache_root: Path) -> tuple[Any, Any]:
    """Train and test image lists: the source's own test split or a saved seeded one, then the stratified subsets."""
    train, test = source.train, source.test
    if test is None:
        train_idx, test_idx = saved_split(train, source.where, test_fraction, split_seed, cache_root)
        train, test = train.take(train_idx), train.take(test_idx)
    if subset is not None:
        train = train.take(stratified_pick(train.labels, subset, split_seed * _SUBSET_SALT + 1))
    if test_subset is not None:
        test = test.take(stratified_pick(test.labels, test_subset, split_seed * _TEST_SUBSET_SALT + 2))
    return train, test


def _finish_dataset(source: Any, train_split: Split, test_split: Split, hist: Any, size: int) -> Dataset:
    """Refuse empty splits, resize registered datasets in bulk, and measure the normalisation."""
    require(len(train_split) > 0, f"data.name: no readable training images in {source.where}")
    require(
        len(test_split) > 0, f"data.name: no readable test images in {source.where}; raise data.test_fraction"
    )
    if train_split.images.shape[-2:] != (size, size):  # registered datasets: resize in bulk
        train_split = Split(resize_uint8(train_split.images, size), train_split.labels)
        test_split = Split(resize_uint8(test_split.images, size), test_split.labels)
        mean, std = channel_stats(train_split.images)
    else:
        mean, std = histogram_stats(hist)
    return Dataset(source.name, train_split, test_split, list(source.classes), size, mean, std)
