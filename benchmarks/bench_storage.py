"""Training speed from the disk cache vs from RAM, through the real engine: the same SimCLR run with
``data.storage=memory`` and ``data.storage=disk`` (page cache warm: the cache file was just built
or read), side by side in one process, images/s from each run's log (the first epoch, which holds
start-up and the cuDNN autotuning, is left out).

    python benchmarks/bench_storage.py --device cuda --data CIFAR10_PARQUET_DIR --out DIR [--size 32] [--subset N]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from pathlib import Path

import torch

from unveil.config import resolve
from unveil.train import engine


def run_rate(storage: str, args: argparse.Namespace, out: Path) -> dict:
    overrides = [f"data.name={args.data}", f"data.storage={storage}", f"data.image_size={args.size}",
                 "train.monitor=none", "train.progress=false", f"train.epochs={args.epochs}",
                 f"train.batch_size={args.batch}", f"train.device={args.device}", "train.log_every_steps=5",
                 f"out={out}", *args.override]
    if args.subset:
        overrides.append(f"data.subset={args.subset}")
    t0 = time.perf_counter()
    engine.train(resolve("simclr_cifar10", overrides))
    with (out / "log.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if float(r["epoch"]) > 1.0 and r.get("images_per_s")]
    rates = [float(r["images_per_s"]) for r in rows]
    return {"storage": storage, "images_per_s": statistics.median(rates), "min": min(rates), "max": max(rates),
            "log_rows": len(rates), "wall_s": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--subset", type=int, default=None)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override for every run (--tiny on a CPU: backbone.cifar_stem=false)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for storage in ("disk", "memory", "disk"):  # disk first builds the cache; the second disk run reads it warm
        rows.append(run_rate(storage, args, args.out / f"{storage}-{len(rows)}"))
        print(json.dumps(rows[-1]), flush=True)
    rows[0]["storage"] = "disk (building the cache)"
    where = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    ratio = rows[2]["images_per_s"] / rows[1]["images_per_s"]
    lines = [f"# SimCLR ResNet-18 from the disk cache vs RAM ({where}, torch {torch.__version__}, "
             f"{time.strftime('%Y-%m-%d')}; {args.size} px, batch {args.batch}, epochs 2..{args.epochs}"
             f"{'; ' + ' '.join(args.override) if args.override else ''})", "",
             "| storage | images/s (median) | min | max | log rows | wall s |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['storage']} | {r['images_per_s']:.0f} | {r['min']:.0f} | {r['max']:.0f} | {r['log_rows']} | "
              f"{r['wall_s']} |" for r in rows]
    lines += ["", f"disk (warm) / memory: {ratio:.3f}"]
    (args.out / "storage.md").write_text("\n".join(lines) + "\n")
    (args.out / "storage.json").write_text(json.dumps({"rows": rows, "disk_warm_over_memory": ratio}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
