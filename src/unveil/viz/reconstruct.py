"""Reconstruction figures: what an autoencoder learned to rebuild (``unveil reconstruct`` writes one).

Rows as the overlay paper's Figure 4: clean | corrupted | reconstruction (the context-patch AE has
no corrupted input, so its figure is clean | reconstruction, every patch rebuilt from its context).
Works with any method that has ``reconstruct(images_uint8, generator)`` returning rows in the order to
draw them: ``(clean, corrupted|None, recon)`` for the autoencoders, ``(masked, recon, original)`` for
MAE and MV-MAE (MAE's figure).
"""

from __future__ import annotations

from pathlib import Path

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
    require(method.implements("reconstruct"),
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
