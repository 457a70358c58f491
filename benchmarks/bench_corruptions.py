"""Throughput of every registered corruption, and its cost as a share of a ResNet-18 training step.

For each batch shape (256×3×32×32 and 64×3×224×224 by default) the script times every corruption
of ``unveil.corruptions.CORRUPTIONS`` (defaults, with patch sizes scaled to the image) and one
ResNet-18 step on the same batch (forward + backward + SGD step; CIFAR stem at 32 px, the
standard stem otherwise), then prints a Markdown table.

    .venv/bin/python benchmarks/bench_corruptions.py --device cpu --iters 20
    .venv/bin/python benchmarks/bench_corruptions.py --device cuda --precision bf16 --iters 50
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from unveil.corruptions import CORRUPTIONS, build_corruption

SHAPES = {32: (256, 3, 32, 32), 224: (64, 3, 224, 224)}


def params_for(name: str, size: int) -> dict:
    """Default parameters, with the sizes that depend on the image scaled to it."""
    if name == "token_mask":
        return {"patch_size": 4 if size == 32 else 16, "min_block": 4 if size == 32 else 16}
    return {}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, iters: int, warmup: int) -> float:
    """Seconds per call, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - start) / max(iters, 1)


def resnet18(size: int, device: torch.device) -> nn.Module:
    model = torchvision.models.resnet18(num_classes=10 if size == 32 else 1000)
    if size == 32:  # CIFAR stem: 3×3 stride-1 conv, no max-pool
        model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    return model.to(device).to(memory_format=torch.channels_last)


def train_step_fn(size: int, x: torch.Tensor, precision: str) -> Callable[[], None]:
    model = resnet18(size, x.device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    labels = torch.randint(0, 10 if size == 32 else 1000, (x.shape[0],), device=x.device)
    inputs = x.float().contiguous(memory_format=torch.channels_last)
    autocast = (
        torch.autocast(x.device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    )

    def step() -> None:
        with autocast:
            loss = F.cross_entropy(model(inputs), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def corruption_fn(corruption, x: torch.Tensor, x2: torch.Tensor, gen: torch.Generator) -> Callable[[], object]:
    """One call of ``corruption`` on the batch (two-view corruptions get ``x2`` as the second view)."""
    if corruption.two_views:
        return lambda: corruption(x, x2, gen)
    return lambda: corruption(x, gen)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="dtype of the batch")
    parser.add_argument("--sizes", default="32,224", help="image sizes to run, from 32 and 224")
    parser.add_argument("--only", default="", help="comma-separated corruption names (default: all)")
    parser.add_argument("--step-iters", type=int, default=None, help="iterations for the ResNet step (default --iters)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    names = [n for n in args.only.split(",") if n] or sorted(CORRUPTIONS)
    torch.set_grad_enabled(True)
    print(
        f"device {device}, precision {args.precision}, iters {args.iters}, "
        f"threads {torch.get_num_threads()}, torch {torch.__version__}\n"
    )
    print("| corruption | batch | images/s | ms / batch | share of ResNet-18 step |")
    print("|---|---|---:|---:|---:|")
    for size in (int(s) for s in args.sizes.split(",")):
        shape = SHAPES[size]
        gen = torch.Generator(device=device).manual_seed(0)
        x = torch.rand(shape, generator=gen, device=device).to(dtype)
        x2 = x.flip(-1)
        step_s = timed(train_step_fn(size, x, args.precision), device, args.step_iters or args.iters, args.warmup)
        label = "×".join(map(str, shape))
        print(f"| ResNet-18 train step | {label} | {shape[0] / step_s:,.0f} | {step_s * 1e3:.1f} | 100 % |")
        for name in names:
            fn = corruption_fn(build_corruption(name, **params_for(name, size)), x, x2, gen)
            with torch.no_grad():
                sec = timed(fn, device, args.iters, args.warmup)
            print(
                f"| {name} | {label} | {shape[0] / sec:,.0f} | {sec * 1e3:.2f} | {100 * sec / step_s:.1f} % |"
            )


if __name__ == "__main__":
    main()
