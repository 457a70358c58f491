"""Labelled image grids a person can check at a glance: one row per stage, one column per image.

Everything here turns tensors into displayable (N, 3, h, w) float images in [0, 1]; ``labelled_grid``
composes the rows with their labels into a PIL image and ``save_png`` writes it atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from ..io import atomic_write


def to_display(x: Tensor) -> Tensor:
    """uint8 or float images -> float32 RGB in [0, 1] on the CPU (grey images repeated to 3 channels)."""
    x = x.detach().cpu()
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.clamp(0.0, 1.0)


def mask_image(mask: Tensor) -> Tensor:
    """Bool masks (N, 1|3, H, W) -> RGB: white = masked. With 3 channels each colour channel shows
    its own mask, so channel-independent masks appear coloured and shared ones white."""
    m = mask.detach().cpu().float()
    return m.expand(-1, 3, -1, -1) if m.shape[1] == 1 else m[:, :3]


def signed_image(x: Tensor, scale: float | None = None) -> Tensor:
    """Zero-centred images (high-passed, normalised) -> [0, 1] with grey = 0.

    ``scale`` maps ±scale to black/white; by default the batch's 99th percentile of |x|.
    """
    x = x.detach().cpu().float()
    if scale is None:
        scale = float(torch.quantile(x.abs().flatten()[:1_000_000], 0.99).clamp_min(1e-6))
    return (0.5 + 0.5 * x / scale).clamp(0.0, 1.0)


def upscale(x: Tensor, size: int) -> Tensor:
    """Nearest-neighbour resize to ``size`` × ``size`` (pixels stay crisp)."""
    return F.interpolate(x, size=(size, size), mode="nearest")


def draw_boxes(x: Tensor, box: Tensor | Sequence, scale: float = 1.0, width: int = 2, colour=(1.0, 0.1, 0.1)) -> Tensor:
    """Outline a (y1, y2, x1, x2) box (in source pixels, times ``scale`` for upscaled images) on every
    image of ``x``; the outline lies just inside the box. Returns a copy."""
    out = x.clone()
    y1, y2, x1, x2 = (round(float(v) * scale) for v in (box.tolist() if isinstance(box, Tensor) else box))
    if y2 <= y1 or x2 <= x1:
        return out
    c = torch.tensor(colour).view(1, 3, 1, 1)
    t = max(1, min(width, (y2 - y1) // 2, (x2 - x1) // 2))
    out[:, :, y1:y2, x1 : x1 + t] = c
    out[:, :, y1:y2, x2 - t : x2] = c
    out[:, :, y1 : y1 + t, x1:x2] = c
    out[:, :, y2 - t : y2, x1:x2] = c
    return out


def grid_lines(x: Tensor, cells: int, colour=(1.0, 1.0, 0.0)) -> Tensor:
    """Draw a cells × cells grid on (N, 3, S, S) display images; a copy."""
    out = x.clone()
    s = x.shape[-1]
    c = torch.tensor(colour).view(1, 3, 1)
    for k in range(1, cells):
        p = k * s // cells
        out[:, :, :, p] = c
        out[:, :, p, :] = c
    return out


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed bitmap font
        return ImageFont.load_default()


def labelled_grid(
    rows: Sequence[tuple[str, Tensor]], title: str = "", cell: int = 96, pad: int = 4, label_width: int = 170
) -> Image.Image:
    """Compose rows of display images (each (n, 3, h, w) in [0, 1]) with a label to their left."""
    if not rows:
        raise ValueError("labelled_grid needs at least one row")
    n = max(r[1].shape[0] for r in rows)
    font, title_font = _font(13), _font(14)
    title_h = 24 if title else 0
    width = label_width + n * (cell + pad) + pad
    height = title_h + len(rows) * (cell + pad) + pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, 5), title, fill="black", font=title_font)
    for r, (label, images) in enumerate(rows):
        top = title_h + pad + r * (cell + pad)
        draw.multiline_text((pad, top + 4), label, fill="black", font=font, spacing=2)
        tiles = upscale(images.detach().cpu().float().clamp(0, 1), cell) if images.shape[-1] != cell else images
        arr = (tiles.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        for i in range(arr.shape[0]):
            left = label_width + pad + i * (cell + pad)
            draw.rectangle((left - 1, top - 1, left + cell, top + cell), outline=(140, 140, 140))  # tile edges
            canvas.paste(Image.fromarray(arr[i]), (left, top))
    return canvas


def save_png(image: Image.Image, path: str | Path) -> None:
    """Write ``image`` as PNG atomically (a temp file, then a rename)."""
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG", optimize=True))
