"""Does the background reader hide the batch gather behind the step? One epoch of batches from the
disk cache (memory-mapped, page cache cold or warm) and from RAM, each batch followed by a stand-in
step that holds the CPU thread idle for ``--step-ms`` (as a host waiting on a GPU does), with
``train.prefetch_batches`` 0 (gather, then step) and 2 (the engine's default).

    .venv/bin/python benchmarks/bench_loader.py --data /work/shared/data/cifar10 --size 128 --subset 10000

The ideal with prefetching is max(step, gather) per batch; without it, step + gather.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from bench_diskcache import drop_pages  # sibling scripts: run from the repo root as benchmarks/...
from bench_train import cpu_description

from unveil.data import load_data
from unveil.train.loader import TensorBatches


def epoch_seconds(batches: TensorBatches, prefetch: int, step_s: float) -> float:
    t0 = time.perf_counter()
    for images, _ in batches.device_batches(0, 0, torch.device("cpu"), prefetch):
        images.view(-1)[::4096].sum()  # touch the batch, as the step's first kernel would
        time.sleep(step_s)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("UNVEIL_CIFAR10", "/work/shared/data/cifar10"))
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--subset", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--step-ms", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cache", default=None, help="cache folder (default: a temporary one)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    cache = args.cache or tempfile.mkdtemp(prefix="bench_loader-")
    kw = dict(image_size=args.size, subset=args.subset, test_subset=256, cache_dir=cache)
    disk = load_data(args.data, storage="disk", **kw).train
    ram = load_data(args.data, storage="memory", **kw).train
    files = sorted(Path(cache).glob("*-train-*.u8"))
    step_s = args.step_ms / 1000
    results: dict[str, list[float]] = {}
    for _ in range(args.rounds):  # interleaved rounds: the box's noise hits every row alike
        for prefetch in (0, 2):
            for source, split in (("disk, cold", disk), ("disk, warm", disk), ("RAM", ram)):
                if source == "disk, cold":
                    for f in files:
                        drop_pages(f)
                batches = TensorBatches(split.images, split.labels, args.batch, seed=0)
                key = f"{source} | prefetch {prefetch}"
                results.setdefault(key, []).append(epoch_seconds(batches, prefetch, step_s))
    steps = len(TensorBatches(disk.images, disk.labels, args.batch, seed=0))
    gather = {}
    for source, split in (("disk, cold", disk), ("disk, warm", disk), ("RAM", ram)):
        if source == "disk, cold":
            for f in files:
                drop_pages(f)
        gather[source] = epoch_seconds(TensorBatches(split.images, split.labels, args.batch, seed=0), 0, 0.0)
    print(f"# bench_loader: {steps} batches of {args.batch} at {args.size} px, stand-in step {args.step_ms} ms; "
          f"{cpu_description()}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}")
    print("gather alone (one epoch, no step): " + ", ".join(f"{k} {v:.2f} s" for k, v in gather.items()))
    print("| source | prefetch | epoch s (median) | ideal s | per batch ms |")
    print("|---|---:|---:|---:|---:|")
    rows = []
    for key, values in results.items():
        source, prefetch = key.split(" | prefetch ")
        med = statistics.median(values)
        ideal = steps * step_s + gather[source] if prefetch == "0" else max(steps * step_s, gather[source])
        rows.append({"source": source, "prefetch": int(prefetch), "epoch_s": med, "ideal_s": ideal,
                     "rounds": values})
        print(f"| {source} | {prefetch} | {med:.2f} | {ideal:.2f} | {1000 * med / steps:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"steps": steps, "gather_s": gather, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
