"""Decode image files or bytes with PIL into one uint8 (N, 3, S, S) tensor, skipping what is broken.

Why processes, not threads: for small images (CIFAR-sized JPEGs) the cost is Python overhead
around PIL, which holds the GIL, so threads were slower than one thread; forked workers halve the
time on two cores. Every image is converted to RGB and fitted to S x S (shorter side to S, centre
crop); a file PIL cannot read is reported in ``status`` instead of raising.
"""

from __future__ import annotations

import io
import math
import multiprocessing as mp
import os
import sys
import warnings
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps

OK, EMPTY, UNREADABLE = 0, 1, 2
STATUS_NAMES = {EMPTY: "empty", UNREADABLE: "unreadable"}
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jfif", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
)

Item = str | Path | bytes | None  # a file, its bytes, or None (a missing value in a Parquet column)


def _decode_one(item: Item, size: int) -> tuple[int, np.ndarray | None]:
    if item is None:
        return UNREADABLE, None
    if isinstance(item, bytes):
        if not item:
            return EMPTY, None
        source: io.BytesIO | str | Path = io.BytesIO(item)
    else:
        source = item
    try:
        with Image.open(source) as img:
            img.draft("RGB", (size, size))  # JPEG: let libjpeg downscale big photos while decoding
            img.load()  # decode now, inside the try: truncated files raise here
            rgb = img if img.mode == "RGB" else img.convert("RGB")  # L, RGBA, CMYK, P, I;16 ...
            if rgb.size != (size, size):
                rgb = ImageOps.fit(rgb, (size, size), Image.Resampling.BICUBIC)
            return OK, np.asarray(rgb)  # inside the block: closing the file also drops its pixels
    except Exception:  # PIL raises a zoo (OSError, SyntaxError, ValueError, DecompressionBombError, ...)
        return UNREADABLE, None


def _decode_chunk(items: Sequence[Item], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode a chunk in this process: (n, S, S, 3) pixels and per-item status."""
    pixels = np.zeros((len(items), size, size, 3), dtype=np.uint8)
    status = np.zeros(len(items), dtype=np.int8)
    truncated_ok = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file must fail, not come back half grey
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # palette-transparency and EXIF chatter, once per file
            for i, item in enumerate(items):
                status[i], array = _decode_one(item, size)
                if array is not None:
                    pixels[i] = array
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated_ok
    return pixels, status


def default_workers() -> int:
    """Cores this process may use (affinity-aware), capped at 8; $UNVEIL_DECODE_WORKERS overrides."""
    env = os.environ.get("UNVEIL_DECODE_WORKERS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def decode_images(
    items: Sequence[Item], size: int, workers: int | None = None, min_parallel: int = 256
) -> tuple[torch.Tensor, np.ndarray]:
    """Decode every item to uint8 (N, 3, size, size); status[i] is OK, EMPTY or UNREADABLE.

    Rows of skipped items are zeros: the caller drops them with ``status == OK``.
    """
    n = len(items)
    out = torch.zeros((n, 3, size, size), dtype=torch.uint8)
    status = np.zeros(n, dtype=np.int8)
    workers = default_workers() if workers is None else workers
    fork = "fork" in mp.get_all_start_methods() and sys.platform != "darwin"
    if workers <= 1 or n < min_parallel or not fork:
        pixels, status = _decode_chunk(items, size)
        out.copy_(torch.from_numpy(pixels).permute(0, 3, 1, 2))
        return out, status
    chunk = max(16, min(1024, math.ceil(n / (workers * 4))))
    bounds = [(lo, min(lo + chunk, n)) for lo in range(0, n, chunk)]
    # fork: workers start in milliseconds and do not re-import torch; they only run PIL and numpy.
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
        futures = [pool.submit(_decode_chunk, list(items[lo:hi]), size) for lo, hi in bounds]
        for (lo, hi), future in zip(bounds, futures):
            pixels, status[lo:hi] = future.result()
            out[lo:hi] = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    return out, status


def count_skipped(status: np.ndarray) -> Counter[str]:
    """Reason -> number of items, for the one warning line."""
    codes, counts = np.unique(status[status != OK], return_counts=True)
    return Counter({STATUS_NAMES[int(c)]: int(k) for c, k in zip(codes, counts)})


def skipped_line(skipped: Counter[str], total: int, noun: str, where: str) -> str | None:
    """``unveil: skipped 3 of 120 files (2 unreadable, 1 not an image) in /path``, or None if none."""
    count = sum(skipped.values())
    if not count:
        return None
    reasons = ", ".join(f"{k} {reason}" for reason, k in sorted(skipped.items()))
    return f"unveil: skipped {count} of {total} {noun} ({reasons}) in {where}"
