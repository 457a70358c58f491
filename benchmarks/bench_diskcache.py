"""One epoch of batches from the disk cache (memory-mapped) vs the same images in RAM, and the cache build rate.

For each dataset: build the disk cache (``unveil.data.diskcache``) with 1 and with 2 decode workers
(images/s, a fresh cache folder each time), then time one epoch of ``TensorBatches.epoch`` (seeded
random batches of 256, one ``index_select`` each, as training reads them) over

* ``memory``     the split copied into an ordinary in-RAM tensor (what ``data.storage=memory`` holds);
* ``disk warm``  the memory-mapped cache file with its pages in the page cache (after one epoch);
* ``disk cold``  the same right after ``posix_fadvise(POSIX_FADV_DONTNEED)`` on the file, which drops
                 its unmapped clean pages without root; the drop is checked with ``Cached`` in
                 /proc/meminfo (the MB that left the page cache are reported beside the file's size).

Epoch times: min and median of ``--repeats`` epochs (cold: each repeat drops the pages first); on a
shared, loaded box the min is the better estimate of the cost, the median shows the noise.
Datasets: the CIFAR-10 train Parquet at 32 px (decoded straight to 32 px), and a synthetic folder of
JPEGs (160 x 120 photos-like noise, decoded to ``--size`` px: shorter side resized, centre crop).

    .venv/bin/python benchmarks/bench_diskcache.py --cifar /work/shared/data/cifar10 --size 128 --images 6000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from unveil.data import diskcache
from unveil.data.load import resolve_source
from unveil.train.loader import TensorBatches

HERE = Path(__file__).resolve()


def cached_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Cached:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def drop_pages(path: Path) -> float:
    """Drop the file's pages from the page cache; MB that left ``Cached`` meanwhile."""
    before = cached_mb()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return before - cached_mb()


def mapped(path: Path, n: int, size: int) -> torch.Tensor:
    """The cache file's pixels, mapped without the crc pass of ``open_split`` (which would read them)."""
    array = np.memmap(path, dtype=np.uint8, mode="c", offset=diskcache.HEADER, shape=(n, 3, size, size))
    return torch.from_numpy(array)


def epoch_s(images: torch.Tensor, labels: torch.Tensor, batch: int) -> float:
    batches = TensorBatches(images, labels, batch, seed=0)
    start = time.perf_counter()
    total = 0
    for x, _ in batches.epoch(0):
        total += int(x[:, 0, 0, 0].sum())  # touch the batch
    return time.perf_counter() - start


def synthetic_folder(root: Path, count: int) -> Path:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    for c in range(10):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        shift = rng.integers(-30, 30, (120, 160, 3))
        Image.fromarray((base + shift).clip(0, 255).astype(np.uint8)).save(root / f"c{i % 10}" / f"{i}.jpg",
                                                                             quality=90)
    return root


def measure(name: str, data: str, size: int, batch: int, repeats: int, work: Path) -> dict:
    source = resolve_source(data, None, download=False)
    pool = source.train
    decode_size = source.native_size or size
    builds = {}
    path = None
    for workers in (1, 2):
        root = work / f"cache-{name}-{workers}"
        path = diskcache.cache_path(pool.cache_key(), decode_size, size, f"{name}-train", root)
        start = time.perf_counter()
        diskcache.disk_split(pool, path, decode_size, size, workers=workers)
        builds[workers] = len(pool) / (time.perf_counter() - start)
    assert path is not None
    start = time.perf_counter()
    split, _, _ = diskcache._quiet_open(path)  # warm: the crc pass of every open
    open_s = time.perf_counter() - start
    n = len(split)
    labels = split.labels
    memory = split.images.clone()  # an ordinary in-RAM tensor
    del split
    file_mb = path.stat().st_size / 2**20
    rows: dict[str, list[float]] = {"memory": [], "disk warm": [], "disk cold": []}
    dropped = []
    epoch_s(memory, labels, batch)  # first-call costs (thread pool, allocator) out of the timings
    for _ in range(repeats):
        rows["memory"].append(epoch_s(memory, labels, batch))
        images = mapped(path, n, size)
        epoch_s(images, labels, batch)  # warm the pages
        rows["disk warm"].append(epoch_s(images, labels, batch))
        del images  # unmap, so the pages can be dropped
        dropped.append(drop_pages(path))
        rows["disk cold"].append(epoch_s(mapped(path, n, size), labels, batch))
    times = {k: statistics.median(v) for k, v in rows.items()}
    best = {k: min(v) for k, v in rows.items()}
    return {
        "dataset": name, "images": n, "size": size, "batch": batch, "file_mb": round(file_mb, 1),
        "build_images_per_s": {str(w): round(r) for w, r in builds.items()},
        "open_with_crc_s": round(open_s, 3),
        "epoch_s": {k: round(v, 4) for k, v in times.items()},
        "epoch_min_s": {k: round(v, 4) for k, v in best.items()},
        "epoch_s_all": {k: [round(x, 4) for x in v] for k, v in rows.items()},
        "images_per_s": {k: round(n // batch * batch / v) for k, v in times.items()},
        "ratio_disk_over_memory": {"warm": round(times["disk warm"] / times["memory"], 2),
                                   "cold": round(times["disk cold"] / times["memory"], 2),
                                   "warm_min": round(best["disk warm"] / best["memory"], 2),
                                   "cold_min": round(best["disk cold"] / best["memory"], 2)},
        "cold_dropped_mb": [round(d, 1) for d in dropped],
    }


def table(results: list[dict]) -> str:
    """Epoch seconds as min / median of the repeats; ratios to memory as min-based / median-based."""
    lines = ["| data | images | px | file MB | build img/s (1 / 2 workers) | open+crc s | epoch s memory "
             "(min / median) | disk warm | disk cold | warm / memory | cold / memory | dropped MB before cold |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        e, m, q, b = r["epoch_s"], r["epoch_min_s"], r["ratio_disk_over_memory"], r["build_images_per_s"]
        cells = [f"{m[k]:.3f} / {e[k]:.3f}" for k in ("memory", "disk warm", "disk cold")]
        lines.append(f"| {r['dataset']} | {r['images']} | {r['size']} | {r['file_mb']} | {b['1']} / {b['2']} | "
                     f"{r['open_with_crc_s']} | {' | '.join(cells)} | {q['warm_min']}x / {q['warm']}x | "
                     f"{q['cold_min']}x / {q['cold']}x | {min(r['cold_dropped_mb']):.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar", default=os.environ.get("UNVEIL_CIFAR10", str(HERE.parents[2] / "shared/data/cifar10")))
    parser.add_argument("--size", type=int, default=128, help="decode size of the synthetic folder")
    parser.add_argument("--images", type=int, default=6000, help="images in the synthetic folder")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=str(HERE.parent / "results" / f"{time.strftime('%Y-%m-%d')}-bench_diskcache"))
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_diskcache-") as tmp:
        work = Path(tmp)
        os.environ["UNVEIL_CACHE"] = str(work / "splits")  # saved splits of the folder, not in the user's cache
        if (Path(args.cifar) / "train.parquet").is_file():
            results.append(measure("cifar10", args.cifar, 32, args.batch, args.repeats, work))
        else:
            print(f"no CIFAR-10 Parquet at {args.cifar}; skipped", file=sys.stderr)
        folder = synthetic_folder(work / "folder", args.images)
        results.append(measure(f"folder{args.size}", str(folder), args.size, args.batch, args.repeats, work))
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpus": len(os.sched_getaffinity(0)),
            "load_average": os.getloadavg(), "torch_threads": torch.get_num_threads(), "command": " ".join(sys.argv)}
    md = table(results)
    print(md)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    Path(args.out + ".md").write_text(f"{md}\n\n{json.dumps(meta)}\n")
    print(f"wrote {args.out}.json and .md", file=sys.stderr)


if __name__ == "__main__":
    main()
