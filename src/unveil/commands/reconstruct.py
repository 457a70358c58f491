"""``unveil reconstruct RUN_DIR -o recon.png``: what an autoencoder run learned to rebuild.

Picks ``--n`` test images of the run's dataset (reproducibly from ``--seed``) and writes the figure
drawn by ``unveil.viz.reconstruct.reconstruction_grid``: clean | corrupted | reconstruction.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import Tensor

from ..errors import require
from ..viz.reconstruct import reconstruction_grid


def _test_images(dataset: Any, n: int, seed: int) -> Tensor:
    """``n`` test images (uint8), drawn reproducibly from ``seed``."""
    split = getattr(dataset, "test", None) or getattr(dataset, "train", None) or dataset
    images = split.images if hasattr(split, "images") else split[0]
    require(len(images) > 0, "the run's dataset has no images to reconstruct")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[: min(n, len(images))]
    return images[order.sort().values]


def run(args: argparse.Namespace) -> int:
    from ..runs.checkpoint import load_run

    require(args.n > 0, f"--n must be a positive number of images, got {args.n}")
    method, _cfg, dataset = load_run(args.run_dir)
    images = _test_images(dataset, args.n, args.seed)
    reconstruction_grid(method, images, torch.Generator().manual_seed(args.seed), args.output)
    print(f"wrote {args.output}")
    if method.norm_pix_loss:
        print("unveil: rows: masked input | reconstruction | original. The model predicts each masked patch's "
              "normalised pixels (norm_pix_loss), drawn with the true patch's mean and variance (as MAE's figures "
              "do): the shapes inside a patch are the model's, its mean colour and contrast are not")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "reconstruct", help="figure of clean | corrupted | reconstructed test images of an autoencoder run",
        description="Rows: clean, corrupted (if the method corrupts its input) and reconstructed test images.",
    )
    p.add_argument("run_dir", help="run directory (or .ckpt file) of a denoising_ae, context_patch_ae, mae or mvmae run")
    p.add_argument("-o", "--output", default="recon.png", help="image file to write (default recon.png)")
    p.add_argument("--n", type=int, default=8, help="number of images (columns), default 8")
    p.add_argument("--seed", type=int, default=0, help="seed for the image choice and the corruption")
    p.set_defaults(func=run)
