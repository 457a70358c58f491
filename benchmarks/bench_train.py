"""SimCLR training throughput, side by side in one run (ratios matter; these machines are noisy).

For each backbone (CIFAR-stem ResNet-18, standard ResNet-18) at 32 px on real CIFAR-10 images:

* ``floor``     the bare backbone forward+backward+SGD step on ready view tensors (2B views per B images)
* ``unveil``    the real engine loop (``unveil.train.engine.train`` with max_steps): batch gather,
                device-side views, backbone, projector, NT-Xent, backward, step
* ``loader``    the same method step fed by per-image torchvision v2 views made in DataLoader workers
* ``lightly``   lightly's SimCLR with its defaults (SimCLRTransform in a DataLoader, SimCLRProjectionHead,
                NTXentLoss), same backbone, batch and data (only when ``lightly`` is installed)

Each at fp32 and bf16 (autocast); channels_last as unveil's default. Images/s counts dataset images
(each makes two views).

    .venv/bin/python benchmarks/bench_train.py --steps 6 --batch-size 128
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from unveil.build import build_method_for
from unveil.config import resolve
from unveil.data import load_data
from unveil.train.engine import train
from unveil.train.logs import STEP_LOG, read_csv
from unveil.views import view_preset


def autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def timed(step, steps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def floor(cfg: dict, dataset, precision: str, batch: int, steps: int) -> float:
    method = build_method_for(cfg, dataset).to(memory_format=torch.channels_last)
    backbone = method.backbone
    opt = torch.optim.SGD(backbone.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(2 * batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)

    def step():
        with autocast(precision):
            loss = backbone(x).float().pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return batch / timed(step, steps)


def unveil_engine(cfg: dict, precision: str, steps: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        run_cfg = {**cfg, "out": str(Path(tmp) / "run"),
                   "train": {**cfg["train"], "precision": precision, "max_steps": steps + 2, "log_every_steps": 1,
                             "monitor": "none", "progress": False}}
        run = train(run_cfg)
        rows = read_csv(run / STEP_LOG)
    return statistics.median(r["images_per_s"] for r in rows[2:])  # skip warm-up steps


class PerImageViews(Dataset):
    def __init__(self, images: torch.Tensor, transform):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        img = self.images[i]
        return self.transform(img), self.transform(img)


def loader_views(cfg: dict, dataset, precision: str, batch: int, steps: int, workers: int) -> float:
    from unveil.losses.ntxent import nt_xent

    method = build_method_for(cfg, dataset).to(memory_format=torch.channels_last)
    vc = view_preset("cifar", 32, mean=dataset.mean, std=dataset.std)
    tf = v2.Compose([v2.RandomResizedCrop(32, scale=vc.crop_scale, antialias=True), v2.RandomHorizontalFlip(),
                     v2.RandomApply([v2.ColorJitter(*vc.jitter)], p=vc.jitter_p), v2.RandomGrayscale(vc.gray_p),
                     v2.ToDtype(torch.float32, scale=True), v2.Normalize(vc.mean, vc.std)])
    loader = DataLoader(PerImageViews(dataset.train.images, tf), batch_size=batch, shuffle=True,
                        num_workers=workers, drop_last=True, persistent_workers=workers > 0)
    opt = torch.optim.SGD(method.parameters(), lr=0.01, momentum=0.9)
    it = iter(loader)

    def step():
        v1, v2_ = next(it)
        with autocast(precision):
            z = method.projector(method.backbone(torch.cat([v1, v2_]).contiguous(memory_format=torch.channels_last)))
            loss = nt_xent(*z.float().chunk(2), 0.5)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return batch / timed(step, steps)


def lightly_simclr(cfg: dict, dataset, precision: str, batch: int, steps: int, workers: int) -> float | None:
    try:
        from lightly.loss import NTXentLoss
        from lightly.models.modules import SimCLRProjectionHead
        from lightly.transforms import SimCLRTransform
    except ImportError:
        return None
    from PIL import Image

    backbone = build_method_for(cfg, dataset).backbone  # same torchvision ResNet-18, fc = Identity
    head = SimCLRProjectionHead(backbone.num_features, 2048, 128)
    transform = SimCLRTransform(input_size=32)  # lightly's defaults (incl. its blur and jitter strength)

    class PILData(Dataset):
        def __len__(self) -> int:
            return len(dataset.train.images)

        def __getitem__(self, i: int):
            img = Image.fromarray(dataset.train.images[i].permute(1, 2, 0).numpy())
            return transform(img)

    loader = DataLoader(PILData(), batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                        persistent_workers=workers > 0)
    params = list(backbone.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=0.06, momentum=0.9, weight_decay=5e-4)
    criterion = NTXentLoss(temperature=0.5)
    it = iter(loader)

    def step():
        x0, x1 = next(it)
        with autocast(precision):
            z0, z1 = head(backbone(x0)), head(backbone(x1))
            loss = criterion(z0.float(), z1.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return batch / timed(step, steps)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--precisions", nargs="+", default=["fp32"])
    p.add_argument("--bf16-steps", type=int, default=2)
    p.add_argument("--precision-batch", type=int, default=32,
                   help="batch of the fp32-vs-bf16 floor table (bf16 is emulated, so slow, on CPUs without AMX/AVX512-BF16)")
    p.add_argument("--stems", nargs="+", default=["cifar", "standard"])
    args = p.parse_args()
    dataset = load_data("cifar10", subset=max(4096, args.batch_size * (args.steps + 4)), test_subset=256)
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"batch {args.batch_size}, {time.strftime('%Y-%m-%d')}\n")
    print("| backbone | precision | floor (bare fwd+bwd) | unveil engine | per-image loader views | lightly defaults | unveil / floor | unveil / lightly |")
    print("|---|---|---|---|---|---|---|---|")
    for stem in args.stems:
        cfg = resolve("simclr_cifar10", [f"backbone.cifar_stem={stem == 'cifar'}", "data.name=cifar10",
                                         f"train.batch_size={args.batch_size}", "data.subset=4096"])
        for precision in args.precisions:
            steps = args.steps if precision == "fp32" else args.bf16_steps
            f = floor(cfg, dataset, precision, args.batch_size, steps)
            u = unveil_engine(cfg, precision, steps)
            loader = loader_views(cfg, dataset, precision, args.batch_size, steps, args.workers)
            light = lightly_simclr(cfg, dataset, precision, args.batch_size, steps, args.workers) if precision == "fp32" else None
            name = "ResNet-18 CIFAR stem" if stem == "cifar" else "ResNet-18 standard stem"
            lt = f"{light:.1f}" if light else "–"
            ratio_l = f"{u / light:.2f}×" if light else "–"
            print(f"| {name} | {precision} | {f:.1f} | {u:.1f} | {loader:.1f} | {lt} | {u / f:.2f} | {ratio_l} |", flush=True)
    if args.precision_batch:
        from unveil.train.precision import cpu_has_fast_bf16

        print(f"\nfp32 vs bf16 autocast, bare backbone floor, batch {args.precision_batch}, channels_last "
              f"(native bf16 units detected: {cpu_has_fast_bf16()}):\n")
        print("| backbone | fp32 img/s | bf16 img/s | bf16 / fp32 |")
        print("|---|---|---|---|")
        for stem in args.stems:
            cfg = resolve("simclr_cifar10", [f"backbone.cifar_stem={stem == 'cifar'}", "data.subset=4096"])
            f32 = floor(cfg, dataset, "fp32", args.precision_batch, args.bf16_steps)
            b16 = floor(cfg, dataset, "bf16", args.precision_batch, args.bf16_steps)
            name = "ResNet-18 CIFAR stem" if stem == "cifar" else "ResNet-18 standard stem"
            print(f"| {name} | {f32:.1f} | {b16:.1f} | {b16 / f32:.2f} |", flush=True)


if __name__ == "__main__":
    main()
