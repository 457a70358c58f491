"""The in-memory dataset every other part of unveil sees, plus the cheap tensor helpers around it.

Images stay uint8 (N, 3, H, W) from here to the device: a quarter of the memory of float32, and
the views/corruptions convert a batch at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from ..errors import UserError
from ..io import human_bytes

_CHUNK = 4096  # images per step in the bulk helpers: bounded extra memory, few Python iterations


@dataclass
class Split:
    images: torch.Tensor  # uint8 (N, 3, H, W), contiguous
    labels: torch.Tensor  # int64 (N,), -1 where unlabelled

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class Dataset:
    name: str
    train: Split
    test: Split
    classes: list[str]
    image_size: int
    mean: tuple[float, float, float]  # per channel, train images, [0, 1] units
    std: tuple[float, float, float]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def channel_histogram(images: torch.Tensor) -> torch.Tensor:
    """(3, 256) int64 counts of each uint8 value per channel, in chunks: exact, and small enough to
    cache beside the images so a cached load gets mean/std for free."""
    hist = torch.zeros(3, 256, dtype=torch.int64)
    for chunk in images.split(_CHUNK):
        for c in range(3):
            hist[c] += torch.bincount(chunk[:, c].reshape(-1), minlength=256)
    return hist


def histogram_stats(hist: torch.Tensor) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean/std in [0, 1] units from a channel histogram (float64 moments)."""
    hist = hist.double()
    count = hist.sum(1)
    if not bool((count > 0).all()):
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    values = torch.arange(256, dtype=torch.float64) / 255.0
    mean = hist @ values / count
    var = (hist @ (values * values) / count - mean * mean).clamp_min(0.0)
    return tuple(mean.tolist()), tuple(var.sqrt().tolist())  # type: ignore[return-value]


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean/std of uint8 (N, 3, H, W) images in [0, 1] units."""
    return histogram_stats(channel_histogram(images))


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased resize of a uint8 batch to size x size (shorter side, then centre crop), in chunks."""
    if images.shape[-2:] == (size, size):
        return images
    out = torch.empty((images.shape[0], 3, size, size), dtype=torch.uint8)
    for lo in range(0, images.shape[0], _CHUNK):
        chunk = TF.resize(images[lo : lo + _CHUNK], [size], antialias=True)
        out[lo : lo + _CHUNK] = TF.center_crop(chunk, [size, size])
    return out


def to_rgb_nchw(array: np.ndarray | torch.Tensor, channels_last: bool) -> torch.Tensor:
    """(N, H, W) grayscale or (N, H, W, 3) / (N, 3, H, W) colour -> contiguous uint8 (N, 3, H, W)."""
    x = torch.as_tensor(array)
    if x.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images, got {x.dtype}")
    if x.ndim == 3:
        return x.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    if channels_last:
        x = x.permute(0, 3, 1, 2)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.contiguous()


def stratified_pick(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Sorted indices of k items drawn per class in proportion to class size (largest remainder).

    Deterministic for a given (labels, k, seed); unlabelled items (-1) are one more stratum.
    """
    n = len(labels)
    if k >= n:
        return np.arange(n)
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    quota = counts * (k / n)
    take = np.floor(quota).astype(np.int64)
    short = k - int(take.sum())
    if short:  # hand the rest to the classes that lost most to rounding (ties: lower class first)
        order = np.lexsort((np.arange(len(classes)), -(quota - take)))
        take[order[:short]] += 1
    by_class = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
    gen = torch.Generator().manual_seed(int(seed))
    picked = [
        members[torch.randperm(len(members), generator=gen)[:t].numpy()]
        for members, t in zip(by_class, take.tolist())
    ]
    return np.sort(np.concatenate(picked)) if picked else np.arange(0)


def _cgroup_headroom(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Bytes left under this container's memory limit (cgroup v2, else v1), None when unlimited.

    Why: inside a container or a Slurm job MemAvailable describes the whole host, and a decode
    sized by it is killed by the job's limit instead."""
    for limit_file, usage_file in (("memory.max", "memory.current"),
                                   ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        try:
            limit = (root / limit_file).read_text().strip()
            usage = int((root / usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:  # v1 writes a huge number for "no limit", v2 "max"
            return max(int(limit) - usage, 0)
    return None


def available_memory() -> int | None:
    """Bytes that can be allocated without swapping or hitting the container's limit: the smaller of
    MemAvailable and the cgroup's headroom; None if neither is known."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    headroom = _cgroup_headroom()
    if headroom is not None:
        found.append(headroom)
    return min(found) if found else None


def fits_in_memory(num_images: int, size: int, copies: int = 1, fraction: float = 0.7) -> bool:
    """Whether ``copies`` decoded copies (one per process on this node) fit ``fraction`` of ``available_memory()``."""
    avail = available_memory()
    return avail is None or copies * num_images * 3 * size * size <= fraction * avail


def check_memory(num_images: int, size: int, what: str, fraction: float = 0.7, copies: int = 1) -> None:
    """Refuse to start a decode that would not fit: fail in a second, not after an hour and an OOM kill.

    ``copies``: processes on this node that each hold the decoded data (storage in memory)."""
    need = copies * num_images * 3 * size * size
    avail = available_memory()
    if avail is not None and need > fraction * avail:
        gib = 1024**3
        times = f" x {copies} processes" if copies > 1 else ""
        raise UserError(
            f"data: {what} needs {need / gib:.1f} GiB for {num_images} images at {size}x{size}{times}, more than "
            f"{fraction:.0%} of the {avail / gib:.1f} GiB of available memory: set data.storage=disk (a "
            "memory-mapped cache shared by the processes of a node), a smaller data.image_size or data.subset"
        )


def check_disk(num_images: int, size: int, root: Path, free: int | None, what: str) -> None:
    """Refuse a disk-cache build that would run out of space (``free``: bytes free at ``root``)."""
    need = num_images * 3 * size * size
    if free is not None and need > free:
        raise UserError(
            f"data: {what} needs {human_bytes(need)} of disk for the cache of {num_images} images at {size}x{size} "
            f"in {root}, but only {human_bytes(free)} are free: set data.cache_dir (or UNVEIL_CACHE) to a path "
            "with more space, a smaller data.image_size or data.subset"
        )
