"""``unveil demo``: the README's main job, end to end in about ten minutes on a 2-core CPU.

SimCLR on Fashion-MNIST (a short pretrain), then weighted kNN and a linear probe, a PNG of sample
views and of the loss / kNN curves, and a Markdown report tying them together.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ..io import atomic_write_text

DEMO_RECIPE = "simclr_fashion_mnist_demo"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="SimCLR on Fashion-MNIST: pretrain, evaluate, plot, report (~10 min on CPU)")
    p.add_argument("--out", default="runs/demo", help="where the run and the report go")
    p.add_argument("--epochs", type=int, help="pretraining epochs (default from the demo recipe)")
    p.add_argument("--subset", type=int, help="training images to use (default from the demo recipe)")
    p.add_argument("--linear-epochs", type=int, default=30)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="any recipe override, e.g. train.batch_size=128")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import resolve
    from ..errors import require
    from ..eval.protocols import evaluate_knn, evaluate_linear
    from ..train.checkpoint import load_run
    from ..train.engine import train
    from ..viz.curves import plot_curves, plot_views

    out = Path(args.out)
    require(not (out / "pretrain" / "last.ckpt").exists(),
            f"{out} already holds a demo: remove it or give --out another folder")
    overrides = [f"out={out / 'pretrain'}"] + list(args.overrides)
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    if args.subset is not None:
        overrides.append(f"data.subset={args.subset}")
    cfg = resolve(DEMO_RECIPE, overrides)
    start = time.perf_counter()
    run_dir = train(cfg)
    pretrain_s = time.perf_counter() - start
    knn = evaluate_knn(run_dir)
    linear = evaluate_linear(run_dir, epochs=args.linear_epochs)

    method, cfg, dataset = load_run(run_dir)
    sample = dataset.test.images[:10]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        views = [method.views(sample, g), method.views(sample, g)]
    info = method.data_info
    views_png = plot_views(sample, views, out / "views.png", info.mean, info.std)
    curves_png = plot_curves(run_dir, out / "curves.png")
    total_s = time.perf_counter() - start
    report = out / "report.md"
    atomic_write_text(report, f"""# unveil demo: SimCLR on Fashion-MNIST

* run: `{run_dir}` ({cfg['train']['epochs']} epochs on {len(dataset.train.images)} training images,
  backbone {cfg['backbone']['name']}, batch {cfg['train']['batch_size']}); pretraining took {pretrain_s / 60:.1f} min,
  everything {total_s / 60:.1f} min.
* weighted kNN (k={knn['k']}, T={knn['temperature']}) on the {knn['test_images']} test images:
  **top-1 {knn['top1']:.2f} %**, top-5 {knn['top5']:.2f} % (chance: 10 %).
* linear probe on frozen features ({linear['epochs']} epochs, Adam): **last-epoch top-1 {linear['last_top1']:.2f} %**
  (best epoch {linear['best_epoch']}: {linear['best_top1']:.2f} %, selected on the test set).

![sample views](views.png)

![curves](curves.png)

Raw numbers: `{Path(knn['saved']).name}`, `{Path(linear['saved']).name}` in the run directory.
""")
    atomic_write_text(out / "demo.json", json.dumps({"knn": knn, "linear": {k: v for k, v in linear.items() if k != "history"},
                                                     "pretrain_seconds": pretrain_s, "total_seconds": total_s,
                                                     "figures": [str(views_png), str(curves_png)]}, indent=2))
    print(f"unveil: demo finished in {total_s / 60:.1f} min: kNN top-1 {knn['top1']:.1f} %, linear top-1 "
          f"{linear['last_top1']:.1f} %; report at {report}")
    return 0
