"""Learning parity (issue #17 item 3): unveil's SimCLR / MoCo v2 / BYOL with their shipped recipes beside
lightly's documented CIFAR-10 benchmark models, on the same CIFAR-10 subset at equal epochs.

Each contender trains on the same stratified subset (``--subset`` images, unveil's ``data.subset``
pick) with the same backbone (torchvision ResNet-18, standard stem at 32 px: the CIFAR stem costs
~7x the compute on 2 CPU cores), batch size and number of epochs, and is scored by the same weighted
kNN (k=200, T=0.1, cosine; ``unveil.eval.knn.knn_accuracy``) on its pooled 512-d backbone features:
bank = the training subset under each library's evaluation transform, queries = the CIFAR-10 test
images (all 10,000 unless ``--test-subset``). kNN is taken before training (the untrained encoder,
epoch 0) and every ``--knn-every`` epochs: the kNN-against-steps curve.

* **unveil**: ``unveil.train.engine.train`` on the shipped recipe (``simclr_cifar10``, ``mocov2_cifar10``,
  ``byol_cifar10``) with only the scale overridden (data subset, epochs, batch size, stem, monitor);
  its kNN monitor gives the curve (bank = the whole subset, queries = the test split).
* **lightly**: lightly 1.6's own modules and transforms assembled as its CIFAR-10 benchmark
  (``docs/source/getting_started/benchmarks/cifar10_benchmark.py``: ``SimCLRModel``, ``MocoModel``,
  ``BYOLModel``): SGD lr 6e-2 x batch/128, momentum 0.9, wd 5e-4, ``CosineAnnealingLR`` stepped per
  epoch; SimCLR: ``SimCLRProjectionHead(512, 512, 128)``, ``NTXentLoss()`` (T 0.5), ``SimCLRTransform``
  (cj_strength 0.5, no blur); MoCo: split BatchNorm (8), ``MoCoProjectionHead(512, 512, 128)``,
  ``NTXentLoss(T 0.1, memory bank 4096)``, momentum 0.99, batch shuffle, symmetric loss; BYOL:
  ``BYOLProjectionHead(512, 1024, 256)``, ``BYOLPredictionHead(256, 1024, 256)``, momentum 0.99,
  ``NegativeCosineSimilarity``, ``BYOLTransform`` without blur. Only the backbone differs from the
  benchmark's ``ResNetGenerator("resnet-18")`` (CIFAR stem): the same torchvision ResNet-18 as unveil's.
  The loop is plain PyTorch (the benchmark's Lightning module steps, without Lightning).

Contenders run one after another, alternating libraries (unveil then lightly per method), and each
writes ``<out>/<method>-<lib>.json`` when done: a killed run is redone, finished ones are kept
(``--fresh`` starts over). ``<out>/summary.md`` holds the table (final kNN with its standard error
from the test size, untrained kNN, wall time) and ``<out>/curves.png`` the kNN against steps.

    UNVEIL_CIFAR10=../shared/data/cifar10 .venv/bin/python benchmarks/learning_parity.py \\
        --subset 5000 --epochs 100 --batch-size 256 --knn-every 10 --out benchmarks/results/learning-parity
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import cpu_description  # noqa: E402

from unveil.config import resolve  # noqa: E402
from unveil.data import load_data  # noqa: E402
from unveil.eval.knn import knn_accuracy  # noqa: E402
from unveil.io import atomic_write_text  # noqa: E402
from unveil.runs.logs import EPOCH_LOG, read_csv  # noqa: E402
from unveil.train.engine import train  # noqa: E402

RECIPES = {"simclr": "simclr_cifar10", "mocov2": "mocov2_cifar10", "byol": "byol_cifar10"}
KNN_K, KNN_T = 200, 0.1


# ---------------------------------------------------------------------------------------------- data
def load_subset(subset: int, test_subset: int | None, seed: int) -> Any:
    """The CIFAR-10 subset both libraries train on (unveil's stratified ``data.subset`` pick)."""
    return load_data("cifar10", subset=subset, test_subset=test_subset, split_seed=seed)


def standard_error(top1: float, n: int) -> float:
    """Binomial standard error of an accuracy (in points) measured on ``n`` test images."""
    p = top1 / 100.0
    return 100.0 * math.sqrt(max(p * (1 - p), 1e-12) / max(n, 1))


# ---------------------------------------------------------------------------------------------- unveil
def run_unveil(method: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """The shipped recipe through unveil's engine, scale overridden; the monitor's rows are the curve."""
    run_dir = Path(args.runs) / f"{method}-unveil-run"  # checkpoints: outside the results folder
    if run_dir.exists():
        shutil.rmtree(run_dir)
    overrides = [f"out={run_dir}", "data.name=cifar10", f"data.subset={args.subset}",
                 f"data.split_seed={args.seed}", f"train.epochs={args.epochs}",
                 f"train.batch_size={args.batch_size}", "backbone.cifar_stem=false", "train.monitor=knn",
                 f"train.monitor_every_epochs={args.knn_every}", "train.monitor_train_size=null",
                 "train.monitor_test_size=null", f"train.knn_k={KNN_K}", f"train.knn_t={KNN_T}",
                 "train.progress=false", "train.log_every_steps=50", f"train.seed={args.seed}"]
    overrides += args.unveil_overrides
    if args.test_subset:
        overrides.append(f"data.test_subset={args.test_subset}")
    cfg = resolve(RECIPES[method], overrides)
    start = time.perf_counter()
    train(cfg)
    wall = time.perf_counter() - start
    rows = [r for r in read_csv(run_dir / EPOCH_LOG) if r.get("knn_top1") is not None]
    curve = [{"epoch": int(r["epoch"]), "step": int(r["step"]), "knn_top1": float(r["knn_top1"]), "train_s": None}
             for r in rows]
    return {"recipe": RECIPES[method], "overrides": overrides, "extra_overrides": args.unveil_overrides, "precision": cfg["train"]["precision"],
            "resolved": {k: cfg[k] for k in ("method", "train", "backbone")}, "curve": curve, "wall_s": wall}


# ---------------------------------------------------------------------------------------------- lightly
class _PILDataset(torch.utils.data.Dataset):
    """uint8 (N, 3, H, W) images as PIL images through a lightly transform (as LightlyDataset hands them)."""

    def __init__(self, images: Tensor, transform: Any):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Any:
        return self.transform(torchvision.transforms.functional.to_pil_image(self.images[i]))


def _backbone(num_splits: int = 0) -> nn.Module:
    """torchvision ResNet-18 (standard stem) without its fc, as lightly's examples build it; split BN
    (lightly's SplitBatchNorm) where the benchmark's MoCo has it."""
    from lightly.models.batchnorm import SplitBatchNorm

    norm = (lambda c: SplitBatchNorm(c, num_splits)) if num_splits else None
    resnet = torchvision.models.resnet18(norm_layer=norm) if norm else torchvision.models.resnet18()
    return nn.Sequential(*list(resnet.children())[:-1])


class LightlySimCLR(nn.Module):
    def __init__(self) -> None:
        from lightly.loss import NTXentLoss
        from lightly.models.modules import heads

        super().__init__()
        self.backbone = _backbone()
        self.projection_head = heads.SimCLRProjectionHead(512, 512, 128)
        self.criterion = NTXentLoss()

    def trainable(self) -> list[nn.Parameter]:
        return list(self.parameters())

    def training_step(self, x0: Tensor, x1: Tensor) -> Tensor:
        z0 = self.projection_head(self.backbone(x0).flatten(start_dim=1))
        z1 = self.projection_head(self.backbone(x1).flatten(start_dim=1))
        return self.criterion(z0, z1)


class LightlyMoCo(nn.Module):
    def __init__(self) -> None:
        from lightly.loss import NTXentLoss
        from lightly.models.modules import heads
        from lightly.models.utils import deactivate_requires_grad

        super().__init__()
        self.backbone = _backbone(num_splits=8)
        self.projection_head = heads.MoCoProjectionHead(512, 512, 128)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        self.criterion = NTXentLoss(temperature=0.1, memory_bank_size=(4096, 128))

    def trainable(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters()) + list(self.projection_head.parameters())

    def training_step(self, x0: Tensor, x1: Tensor) -> Tensor:
        from lightly.models import utils

        utils.update_momentum(self.backbone, self.backbone_momentum, 0.99)
        utils.update_momentum(self.projection_head, self.projection_head_momentum, 0.99)

        def step(x0_: Tensor, x1_: Tensor) -> tuple[Tensor, Tensor]:
            x1_, shuffle = utils.batch_shuffle(x1_, distributed=False)
            q = self.projection_head(self.backbone(x0_).flatten(start_dim=1))
            k = self.projection_head_momentum(self.backbone_momentum(x1_).flatten(start_dim=1))
            return q, utils.batch_unshuffle(k, shuffle, distributed=False)

        return 0.5 * (self.criterion(*step(x0, x1)) + self.criterion(*step(x1, x0)))


class LightlyBYOL(nn.Module):
    def __init__(self) -> None:
        from lightly.loss import NegativeCosineSimilarity
        from lightly.models.modules import heads
        from lightly.models.utils import deactivate_requires_grad

        super().__init__()
        self.backbone = _backbone()
        self.projection_head = heads.BYOLProjectionHead(512, 1024, 256)
        self.prediction_head = heads.BYOLPredictionHead(256, 1024, 256)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        self.criterion = NegativeCosineSimilarity()

    def trainable(self) -> list[nn.Parameter]:
        return (list(self.backbone.parameters()) + list(self.projection_head.parameters())
                + list(self.prediction_head.parameters()))

    def _online(self, x: Tensor) -> Tensor:
        return self.prediction_head(self.projection_head(self.backbone(x).flatten(start_dim=1)))

    def _momentum(self, x: Tensor) -> Tensor:
        return self.projection_head_momentum(self.backbone_momentum(x).flatten(start_dim=1)).detach()

    def training_step(self, x0: Tensor, x1: Tensor) -> Tensor:
        from lightly.models import utils

        utils.update_momentum(self.backbone, self.backbone_momentum, m=0.99)
        utils.update_momentum(self.projection_head, self.projection_head_momentum, m=0.99)
        p0, z0, p1, z1 = self._online(x0), self._momentum(x0), self._online(x1), self._momentum(x1)
        return 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))


def lightly_transform(method: str) -> Any:
    """The transform the benchmark maps each model to (blur off for CIFAR-10)."""
    from lightly.transforms import BYOLTransform, BYOLView1Transform, BYOLView2Transform, SimCLRTransform

    if method == "byol":
        return BYOLTransform(view_1_transform=BYOLView1Transform(input_size=32, gaussian_blur=0.0),
                             view_2_transform=BYOLView2Transform(input_size=32, gaussian_blur=0.0))
    return SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0)


@torch.no_grad()
def lightly_features(backbone: nn.Module, images: Tensor, precision: str, batch_size: int = 512) -> Tensor:
    """Backbone features under the benchmark's test transform (ToTensor + ImageNet Normalize)."""
    from lightly.transforms.utils import IMAGENET_NORMALIZE

    mean = torch.tensor(IMAGENET_NORMALIZE["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_NORMALIZE["std"]).view(1, 3, 1, 1)
    backbone.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = (images[i : i + batch_size].float() / 255 - mean) / std
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out.append(backbone(x).flatten(1).float())
    backbone.train()
    return torch.cat(out)


def run_lightly(method: str, args: argparse.Namespace, data: Any, out: Path) -> dict[str, Any]:
    """lightly's benchmark model for ``method`` in a plain loop; kNN every ``knn_every`` epochs."""
    torch.manual_seed(args.seed)
    model = {"simclr": LightlySimCLR, "mocov2": LightlyMoCo, "byol": LightlyBYOL}[method]()
    lr = 6e-2 * args.batch_size / 128
    optim = torch.optim.SGD(model.trainable(), lr=lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim, args.epochs)
    loader = torch.utils.data.DataLoader(
        _PILDataset(data.train.images, lightly_transform(method)), batch_size=args.batch_size, shuffle=True,
        drop_last=True, num_workers=args.workers, generator=torch.Generator().manual_seed(args.seed),
        persistent_workers=args.workers > 0)
    steps_per_epoch = len(loader)

    def knn(epoch: int, train_s: float) -> dict[str, Any]:
        bank = lightly_features(model.backbone, data.train.images, args.lightly_precision)
        query = lightly_features(model.backbone, data.test.images, args.lightly_precision)
        acc = knn_accuracy(bank, data.train.labels, query, data.test.labels, 10, k=KNN_K, temperature=KNN_T)
        row = {"epoch": epoch, "step": epoch * steps_per_epoch, "knn_top1": acc["top1"], "train_s": round(train_s, 1)}
        print(f"lightly {method}: {row}", flush=True)
        return row

    start, train_s = time.perf_counter(), 0.0
    curve = [knn(0, 0.0)]
    model.train()
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        for x0, x1 in loader:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.lightly_precision == "bf16"):
                loss = model.training_step(x0, x1)
            loss.backward()
            optim.step()
            optim.zero_grad()
        sched.step()
        train_s += time.perf_counter() - t0
        if not math.isfinite(float(loss.detach())):
            raise RuntimeError(f"lightly {method}: loss {float(loss.detach())} at epoch {epoch}")
        if epoch % args.knn_every == 0 or epoch == args.epochs:
            curve.append(knn(epoch, train_s))
    return {"lr": lr, "precision": args.lightly_precision, "curve": curve, "wall_s": time.perf_counter() - start}


# ---------------------------------------------------------------------------------------------- report
def write_report(out: Path, args: argparse.Namespace, n_test: int) -> None:
    """summary.md (one row per contender, each beside its own untrained encoder) and curves.png."""
    rows, results = [], {}
    for path in sorted(out.glob("*-*.json")):
        r = json.loads(path.read_text())
        results[(r["method"], r["lib"])] = r
    lines = ["| method | library | untrained kNN | final kNN ± SE | gain | steps | train min | wall min |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for method in RECIPES:
        for lib in ("unveil", "lightly"):
            r = results.get((method, lib))
            if r is None:
                continue
            c = r["curve"]
            first, last = c[0], c[-1]
            se = standard_error(last["knn_top1"], n_test)
            lines.append(f"| {method} | {lib} | {first['knn_top1']:.2f} | {last['knn_top1']:.2f} ± {se:.2f} | "
                         f"{last['knn_top1'] - first['knn_top1']:+.2f} | {last['step']} | "
                         f"{'-' if last['train_s'] is None else format(last['train_s'] / 60, '.1f')} | "
                         f"{r['wall_s'] / 60:.1f} |")
            rows.append(r)
    header = (f"Learning parity, CIFAR-10 subset of {args.subset} images, {args.epochs} epochs, batch "
              f"{args.batch_size}, kNN k={KNN_K} T={KNN_T} on {n_test} test images; {cpu_description()}, "
              f"torch {torch.__version__}, {platform.python_version()}\n\n")
    extra = sorted({o for r in rows if r["lib"] == "unveil" for o in r.get("extra_overrides", [])})
    if extra:  # a diagnostic run: the table is not the shipped recipe's
        lines.append(f"\nunveil overrides beyond the shipped recipe: {' '.join(extra)}")
    atomic_write_text(out / "summary.md", header + "\n".join(lines) + "\n")
    print(header + "\n".join(lines), flush=True)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, len(RECIPES), figsize=(5 * len(RECIPES), 4), sharey=True)
    for ax, method in zip(axes, RECIPES):
        for lib, style in (("unveil", "-o"), ("lightly", "--s")):
            r = results.get((method, lib))
            if r is None:
                continue
            ax.plot([p["step"] for p in r["curve"]], [p["knn_top1"] for p in r["curve"]], style, label=lib)
        ax.set_title(method)
        ax.set_xlabel("optimizer steps")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    axes[0].set_ylabel(f"kNN top-1 (%), {n_test} test images")
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default="simclr,mocov2,byol")
    p.add_argument("--libs", default="unveil,lightly")
    p.add_argument("--subset", type=int, default=5000)
    p.add_argument("--test-subset", type=int, default=None)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--knn-every", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers for lightly's PIL transforms")
    p.add_argument("--lightly-precision", choices=("fp32", "bf16"), default="fp32",
                   help="lightly's documented loop is fp32; bf16 autocast only to compare like with like")
    p.add_argument("--out", default="benchmarks/results/learning-parity")
    p.add_argument("--runs", default="runs/learning-parity", help="unveil's run directories (checkpoints)")
    p.add_argument("--fresh", action="store_true", help="redo finished contenders")
    p.add_argument("unveil_overrides", nargs="*", help="extra unveil overrides (e.g. train.precision=fp32)")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_subset(args.subset, args.test_subset, args.seed)
    n_test = len(data.test.labels)
    print(f"data: {len(data.train.labels)} training images, {n_test} test images; {cpu_description()}; "
          f"torch threads {torch.get_num_threads()}", flush=True)
    for method in args.methods.split(","):
        for lib in args.libs.split(","):
            path = out / f"{method}-{lib}.json"
            if path.is_file() and not args.fresh:
                print(f"{path} exists: kept", flush=True)
                continue
            print(f"--- {method} / {lib}", flush=True)
            result = run_unveil(method, args, out) if lib == "unveil" else run_lightly(method, args, data, out)
            result.update(method=method, lib=lib, subset=args.subset, epochs=args.epochs, batch_size=args.batch_size,
                          test_images=n_test, cpu=cpu_description(), torch=torch.__version__,
                          threads=torch.get_num_threads(), date=time.strftime("%Y-%m-%d %H:%M"),
                          omp=os.environ.get("OMP_NUM_THREADS"))
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(result, indent=2))
            tmp.replace(path)
            write_report(out, args, n_test)
    write_report(out, args, n_test)


if __name__ == "__main__":
    main()
