"""Throughput of unveil's batched view pipeline vs per-image torchvision.transforms.v2 in a DataLoader.

(a) ``ViewPipeline`` on a uint8 batch already on the device; (b) the equivalent per-image v2 pipeline
(RandomResizedCrop, RandomHorizontalFlip, RandomApply(ColorJitter), RandomGrayscale,
RandomApply(GaussianBlur), ToDtype, Normalize) in a DataLoader with num_workers 2 and 0, on the same
images. Prints a Markdown table; ``--ops`` adds per-op timings with the alternatives that were
measured for the design (roi_align vs grid_sample crop, YIQ vs HSV hue).

    .venv/bin/python benchmarks/bench_views.py --iters 20            # both default cases
    .venv/bin/python benchmarks/bench_views.py --preset simclr --image-size 224 --batch-size 64 --ops
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.ops import roi_align
from torchvision.transforms import v2

from unveil.views import ViewConfig, ViewPipeline, ops, view_preset

DEFAULT_CASES = [("cifar", 32, 256), ("simclr", 224, 64)]


def torchvision_equivalent(cfg: ViewConfig) -> v2.Compose:
    """The per-image v2 pipeline that ``ViewPipeline(cfg)`` vectorises."""
    steps: list[Callable] = [
        v2.RandomResizedCrop(cfg.size, scale=cfg.crop_scale, ratio=cfg.crop_ratio, antialias=True),
        v2.RandomHorizontalFlip(cfg.flip_p),
    ]
    if cfg.jitter_p > 0:
        steps.append(v2.RandomApply([v2.ColorJitter(*cfg.jitter)], p=cfg.jitter_p))
    if cfg.gray_p > 0:
        steps.append(v2.RandomGrayscale(cfg.gray_p))
    if cfg.blur_p > 0:
        kernel = ops.blur_kernel_size(cfg.size, cfg.blur_kernel_frac)
        steps.append(v2.RandomApply([v2.GaussianBlur(kernel, cfg.blur_sigma)], p=cfg.blur_p))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if cfg.normalize:
        steps.append(v2.Normalize(cfg.mean, cfg.std))
    return v2.Compose(steps)


class _PerImage(Dataset):
    def __init__(self, images: torch.Tensor, transform: v2.Compose, length: int) -> None:
        self.images, self.transform, self.length = images, transform, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(self.images[i % len(self.images)])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_batched(cfg: ViewConfig, images: torch.Tensor, batch: int, iters: int, device: torch.device) -> float:
    pipeline = ViewPipeline(cfg)
    generator = torch.Generator(device=device).manual_seed(0)
    data = images.to(device)
    batches = [data[i : i + batch] for i in range(0, len(data) - batch + 1, batch)]
    pipeline(batches[0], generator)  # warm-up
    _sync(device)
    start = time.perf_counter()
    for i in range(iters):
        pipeline(batches[i % len(batches)], generator)
    _sync(device)
    return iters * batch / (time.perf_counter() - start)


def bench_per_image(cfg: ViewConfig, images: torch.Tensor, batch: int, iters: int, workers: int) -> float:
    dataset = _PerImage(images, torchvision_equivalent(cfg), batch * (iters + 1))
    loader = DataLoader(dataset, batch_size=batch, num_workers=workers)
    it = iter(loader)
    next(it)  # warm-up (and worker start-up) not timed
    start = time.perf_counter()
    count = sum(len(b) for b in it)
    return count / (time.perf_counter() - start)


def _time_ms(fn: Callable[[], object], device: torch.device, reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def _yiq_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """The rejected alternative: hue as a rotation of the YIQ chroma plane (one bmm per image)."""
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], device=x.device)
    cos, sin = torch.cos(2 * torch.pi * shift), torch.sin(2 * torch.pi * shift)
    one, zero = torch.ones_like(cos), torch.zeros_like(cos)
    rot = torch.stack([torch.stack([one, zero, zero], 1), torch.stack([zero, cos, -sin], 1),
                       torch.stack([zero, sin, cos], 1)], 1)
    mat = torch.linalg.inv(to_yiq) @ rot @ to_yiq
    return torch.bmm(mat, x.flatten(2)).view_as(x).clamp_(0, 1)


def bench_ops(cfg: ViewConfig, images: torch.Tensor, batch: int, device: torch.device, reps: int) -> None:
    g = torch.Generator(device=device).manual_seed(0)
    u8 = images[:batch].to(device)
    x = ops.to_float(u8)
    b, _, h, w = x.shape
    boxes = ops.sample_crop_boxes(b, h, w, cfg.crop_scale, cfg.crop_ratio, g, device)
    flip = torch.rand(b, device=device) < 0.5
    rois = torch.cat([torch.arange(b, device=device, dtype=torch.float32)[:, None], boxes[:, [1, 0]],
                      boxes[:, [1, 0]] + boxes[:, [3, 2]]], 1)
    factor, shift = torch.rand(b, device=device) + 0.5, torch.rand(b, device=device) - 0.5
    kernel = ops.blur_kernel_size(cfg.size, cfg.blur_kernel_frac)

    def roi_crop() -> torch.Tensor:
        y = roi_align(x, rois, cfg.size, 1.0, -1, True)
        return torch.where(flip.view(-1, 1, 1, 1), y.flip(-1), y)

    rows = [
        ("to_float (uint8 -> [0, 1])", lambda: ops.to_float(u8)),
        ("sample_crop_boxes", lambda: ops.sample_crop_boxes(b, h, w, cfg.crop_scale, cfg.crop_ratio, g, device)),
        ("resized_crop + flip (grid_sample, used)", lambda: ops.resized_crop(x, boxes, cfg.size, flip)),
        ("roi_align crop + flip (rejected)", roi_crop),
        ("adjust_brightness", lambda: ops.adjust_brightness(x, factor)),
        ("adjust_contrast", lambda: ops.adjust_contrast(x, factor)),
        ("adjust_saturation", lambda: ops.adjust_saturation(x, factor)),
        ("adjust_hue (HSV, used)", lambda: ops.adjust_hue(x, shift)),
        ("hue as YIQ rotation (rejected)", lambda: _yiq_hue(x, shift)),
        ("color_jitter (p=1)", lambda: ops.color_jitter(x, *cfg.jitter, p=1.0, generator=g)),
        ("random_grayscale", lambda: ops.random_grayscale(x, cfg.gray_p, g)),
        (f"gaussian_blur k={kernel} (p=1)", lambda: ops.gaussian_blur(x, kernel, cfg.blur_sigma, 1.0, g)),
        ("normalize", lambda: ops.normalize(x, cfg.mean, cfg.std)),
    ]
    print(f"\n### ops, batch {b} x {h} px on {device}\n\n| op | ms / batch |\n|---|---:|")
    for name, fn in rows:
        print(f"| {name} | {_time_ms(fn, device, reps):.2f} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", help="one case with this preset (default: cifar@32/256 and simclr@224/64)")
    parser.add_argument("--image-size", type=int, help="input = output side for the single case")
    parser.add_argument("--batch-size", type=int, help="batch size for the single case")
    parser.add_argument("--iters", type=int, default=20, help="timed batches per measurement")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 0], help="DataLoader num_workers to try")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--ops", action="store_true", help="also time each op and the rejected alternatives")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    cases = DEFAULT_CASES
    if args.preset or args.image_size or args.batch_size:
        preset, size, batch = DEFAULT_CASES[0]
        cases = [(args.preset or preset, args.image_size or size, args.batch_size or batch)]

    print(f"torch {torch.__version__}, {args.threads} threads, batched on {device}, iters {args.iters}\n")
    print("| case | pipeline | images/s | batched / this |\n|---|---|---:|---:|")
    for preset, size, batch in cases:
        cfg = view_preset(preset, size)
        gen = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (batch * min(args.iters, 4), 3, size, size), dtype=torch.uint8, generator=gen)
        case = f"{preset} {size}px, batch {batch}"
        fast = bench_batched(cfg, images, batch, args.iters, device)
        print(f"| {case} | unveil ViewPipeline ({device}) | {fast:,.0f} | 1.0 |", flush=True)
        for workers in args.workers:
            slow = bench_per_image(cfg, images, batch, args.iters, workers)
            print(f"| {case} | torchvision v2 per image, {workers} workers | {slow:,.0f} | {fast / slow:.1f} |", flush=True)
    if args.ops:
        for preset, size, batch in cases:
            images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
            bench_ops(view_preset(preset, size), images, batch, device, reps=max(args.iters, 1))


if __name__ == "__main__":
    main()
