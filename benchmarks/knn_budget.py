"""SimCLR on CIFAR-10 under a fixed wall-clock budget, then weighted kNN (k=200, T=0.1) on the full test set.

The number of steps is fixed from a measured warm-up rate so that the cosine schedule ends when the
budget does; the final kNN uses all 50,000 training images as the bank and the 10,000 test images.

    .venv/bin/python benchmarks/knn_budget.py --minutes 20 --out runs/knn-budget
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from unveil.config import resolve
from unveil.protocols.knn import evaluate_knn
from unveil.runs.logs import STEP_LOG, read_csv
from unveil.train.engine import train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=20.0)
    p.add_argument("--out", default="runs/knn-budget")
    p.add_argument("overrides", nargs="*", help="recipe overrides, e.g. backbone.cifar_stem=false")
    args = p.parse_args()
    base = ["data.name=cifar10", "train.monitor=none", *args.overrides]
    with tempfile.TemporaryDirectory() as tmp:  # measure the step rate
        probe = resolve("simclr_cifar10", base + [f"out={tmp}/probe", "train.max_steps=8", "train.log_every_steps=1",
                                                  "train.progress=false"])
        rows = read_csv(train(probe) / STEP_LOG)
    rate = sorted(r["images_per_s"] for r in rows[2:])[len(rows[2:]) // 2]
    batch = probe["train"]["batch_size"]
    steps = max(1, int(args.minutes * 60 * rate / batch))
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    cfg = resolve("simclr_cifar10", base + [f"out={out}", f"train.max_steps={steps}", "train.warmup_epochs=0.2"])
    start = time.perf_counter()
    train(cfg)
    seconds = time.perf_counter() - start
    knn = evaluate_knn(out)
    result = {"minutes_budget": args.minutes, "train_seconds": seconds, "steps": steps, "batch_size": batch,
              "images_seen": steps * batch, "epochs_equivalent": steps * batch / 50000, "probe_images_per_s": rate,
              "knn_top1": knn["top1"], "knn_top5": knn["top5"], "overrides": args.overrides}
    (out / "budget.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
