"""``unveil reconstruct RUN_DIR -o recon.png``: what an autoencoder run learned to rebuild.

Rows as the overlay paper's Figure 4: clean | corrupted | reconstruction (the context-patch AE has
no corrupted input, so its figure is clean | reconstruction, every patch rebuilt from its context).
Works with any method that has ``reconstruct(images_uint8, generator) -> (clean, corrupted|None, recon)``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torchvision.utils import make_grid

from ..errors import require
from ..io import atomic_write


@torch.no_grad()
def reconstruction_grid(method: nn.Module, images: Tensor, generator: torch.Generator, path: str | Path,
                        padding: int = 2, min_side: int = 96) -> Tensor:
    """Write the figure for a uint8 batch ``images`` to ``path`` (PNG, atomically); return the grid
    as a float (3, H, W) tensor in [0, 1]. Small images are enlarged (nearest, an integer factor)
    to at least ``min_side`` pixels, so 32 px tiles stay legible."""
    require(hasattr(method, "reconstruct"),
            f"method {type(method).__name__} cannot reconstruct images: use a denoising_ae or context_patch_ae run")
    was_training = method.training
    method.eval()
    try:
        rows = [r for r in method.reconstruct(images, generator) if r is not None]
    finally:
        method.train(was_training)
    n = rows[0].shape[0]
    tiles = torch.cat([r.detach().float().cpu().clamp(0, 1) for r in rows])
    factor = max(1, -(-min_side // tiles.shape[-1]))
    if factor > 1:
        tiles = torch.nn.functional.interpolate(tiles, scale_factor=factor, mode="nearest")
    grid = make_grid(tiles, nrow=n, padding=padding, pad_value=1.0)
    pixels = (grid.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    suffix = Path(path).suffix.lstrip(".").upper() or "PNG"
    fmt = "JPEG" if suffix == "JPG" else suffix
    atomic_write(path, lambda tmp: Image.fromarray(pixels).save(tmp, format=fmt))
    return grid


def _test_images(dataset: Any, n: int, seed: int) -> Tensor:
    """``n`` test images (uint8), drawn reproducibly from ``seed``."""
    split = getattr(dataset, "test", None) or getattr(dataset, "train", None) or dataset
    images = split.images if hasattr(split, "images") else split[0]
    require(len(images) > 0, "the run's dataset has no images to reconstruct")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[: min(n, len(images))]
    return images[order.sort().values]


def run(args: argparse.Namespace) -> int:
    from ..train.checkpoint import load_run

    require(args.n > 0, f"--n must be a positive number of images, got {args.n}")
    method, _cfg, dataset = load_run(args.run_dir)
    images = _test_images(dataset, args.n, args.seed)
    reconstruction_grid(method, images, torch.Generator().manual_seed(args.seed), args.output)
    print(f"wrote {args.output}")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "reconstruct", help="figure of clean | corrupted | reconstructed test images of an autoencoder run",
        description="Rows: clean, corrupted (if the method corrupts its input) and reconstructed test images.",
    )
    p.add_argument("run_dir", help="run directory (or .ckpt file) of a denoising_ae / context_patch_ae run")
    p.add_argument("-o", "--output", default="recon.png", help="image file to write (default recon.png)")
    p.add_argument("--n", type=int, default=8, help="number of images (columns), default 8")
    p.add_argument("--seed", type=int, default=0, help="seed for the image choice and the corruption")
    p.set_defaults(func=run)
