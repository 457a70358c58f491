"""Corruption preview figures: rows of clean / corrupted images, to check a corruption at a glance.

``render(name, images, params)`` returns the labelled grid (the ``unveil preview`` command in
``unveil.commands.preview`` writes it to a PNG). Two-view corruptions (MSCN, MixDet) get the
horizontal flip of the batch as their second view. MSCN and the high-pass filter see
ImageNet-normalised images, as in training; their rows show zero as grey.

``render_branch_views(method, images, mean, std)`` draws, per recipe, what a two-branch method's
encoder sees (``method.branch_views``; ``unveil preview --recipe NAME``).
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torch import Tensor, nn

from ..corruptions import build_corruption
from ..corruptions.context import ContextPatches
from ..errors import require
from .grid import (
    draw_boxes,
    grid_lines,
    labelled_grid,
    mask_image,
    signed_image,
    to_display,
    upscale,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
Row = tuple[str, Tensor, "Tensor | None"]  # label, images (n, 3, h, w), optional box to outline


def normalise(x: Tensor) -> Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _overlay(c, x, g, cell) -> tuple[list[Row], str]:
    r = c(x, g)
    alphas = ", ".join(f"{a:.2f}" for a in r.alpha.tolist())
    rows = [("clean x_i", x, None), ("partner x_j", x[r.partner], None), ("overlay\na·x_j + (1-a)·x_i", r.images, None)]
    return rows, f"partners {r.partner.tolist()}; a = {alphas}"


def _pixel_mask(c, x, g, cell) -> tuple[list[Row], str]:
    r = c(x, g)
    rows = [("clean", x, None), ("mask\n(white = masked)", mask_image(r.mask), None), ("masked", r.images, None)]
    return rows, f"measured ratio {r.mask.float().mean():.4f}"


def _autoaugment(c, x, g, cell) -> tuple[list[Row], str]:
    return [("clean", x, None), ("AutoAugment", c(x, g), None)], "one sub-policy per image"


def _mosaic(r: ContextPatches, k: int, cell: int, gap: int = 3) -> Tensor:
    """The 8 neighbours of patch k around the target patch (red frame) in a 3×3 layout."""
    n = r.patches.shape[0]
    tile = (cell - 2 * gap) // 3
    canvas = torch.full((n, 3, cell, cell), 0.6)
    slots = [0, 1, 2, 3, 5, 6, 7, 8]  # NW N NE W (target) E SW S SE
    pieces = {s: to_display(r.neighbours[:, k, i]) for i, s in enumerate(slots)}
    pieces[4] = to_display(r.patches[:, k])
    for slot, img in pieces.items():
        top, left = (slot // 3) * (tile + gap), (slot % 3) * (tile + gap)
        t = upscale(img, tile)
        if slot == 4:
            t = draw_boxes(t, (0, tile, 0, tile), width=2)
        canvas[:, :, top : top + tile, left : left + tile] = t
    return canvas


def _context(c, x, g, cell) -> tuple[list[Row], str]:
    r = c(x)
    grid = c.grid
    interior = grid + 1 if grid > 2 else 0
    rows = [(f"image, {grid}x{grid} grid", grid_lines(upscale(x, cell), grid), None)]
    for k in dict.fromkeys((0, interior)):
        rows.append((f"patch {k}: target (red)\nand its 8 neighbours\n(black = zero patch)", _mosaic(r, k, cell), None))
    return rows, "neighbour order NW N NE W E SW S SE"


def _high_pass(c, x, g, cell) -> tuple[list[Row], str]:
    hp = c(normalise(x))
    return [("clean", x, None), ("high-pass\n(grey = 0)", signed_image(hp), None)], "ImageNet-normalised input"


def _mscn(c, x, g, cell) -> tuple[list[Row], str]:
    v1, v2 = normalise(x), normalise(x.flip(-1))
    out = c(v1, v2, g)
    hp = (c.filter(v1), c.filter(v2))
    scale = float(torch.quantile(hp[0].abs().flatten(), 0.99))
    n, rows, notes = x.shape[0], [], []
    for v, (view, branch) in enumerate(zip(out, ("A", "B"))):
        rows.append((f"view {v + 1} high-pass", signed_image(hp[v], scale), None))
        for k in range(c.num_masks):
            sl = slice(k * n, (k + 1) * n)
            rows.append((f"branch {branch} masked #{k + 1}", signed_image(view.images[sl], scale), None))
            rows.append((f"mask {branch} #{k + 1}\n(coloured = per\nchannel)", mask_image(view.mask[sl]), None))
        kinds = "".join("-" if not a else ("F" if f else "G") for a, f in zip(view.applied[:n], view.focal[:n]))
        notes.append(f"{branch}: {kinds}")
    return rows, "view 2 = h-flip; mask #1 per image (F focal, G grid, - none): " + ", ".join(notes)


def _token_mask(c, x, g, cell) -> tuple[list[Row], str]:
    r = c(x, g)
    gh, gw = c.grid(x.shape[-2], x.shape[-1])
    m = r.mask.view(-1, 1, gh, gw).bool()
    m = m.repeat_interleave(c.patch_size, 2).repeat_interleave(c.patch_size, 3)
    rows = [("clean", x, None), ("mask\n(white = masked)", mask_image(m), None),
            ("visible patches", x.masked_fill(m, 0.5), None)]
    return rows, f"{gh}x{gw} tokens, {int(r.mask[0].sum())} masked per image"


def _unmix(c, x, g, cell) -> tuple[list[Row], str]:
    r = c(x, g)
    rows = [("x", x, None), ("partner flip(x, 0)", x.flip(0), None), (f"mixed ({r.kind})", r.images, r.box)]
    return rows, f"kind {r.kind}, lam {r.lam:.3f}"


def _between(c, x, g, cell) -> tuple[list[Row], str]:
    x2 = x.flip(-1)
    r = c(x, x2, g)
    rows = [("view 1", x, r.box), ("view 2 (h-flip)", x2, r.box),
            ("x1M: view 1, box\nfrom view 2", r.x1, r.box), ("x2M: view 2, box\nfrom view 1", r.x2, r.box)]
    return rows, f"lam {r.lam:.3f}"


def _within(c, x, g, cell) -> tuple[list[Row], str]:
    x2 = x.flip(-1)
    r = c(x, x2, g)
    rows = [("view 1", x, None), ("flip(view 1, 0)", x.flip(0), None), ("mixed1", r.mixed1, r.box1),
            ("view 2 (h-flip)", x2, None), ("mixed2: box from\nflip(view 2, 0)", r.mixed2, r.box2)]
    return rows, f"lam1 {r.lam1:.3f}"


ROWS: dict[str, Callable] = {
    "overlay": _overlay, "pixel_mask": _pixel_mask, "autoaugment": _autoaugment, "context_patches": _context,
    "high_pass": _high_pass, "mscn": _mscn, "token_mask": _token_mask, "unmix": _unmix,
    "mix_between_branches": _between, "mix_within_batch": _within,
}


def render(name: str, images: Tensor, params: dict | None = None, seed: int = 0, cell: int = 96) -> Image.Image:
    """The preview grid of corruption ``name`` on uint8 (or [0, 1] float) images (n, 3, H, W)."""
    params = dict(params or {})
    corruption = build_corruption(name, **params)
    require(name in ROWS, f"corruption '{name}' has no preview yet")
    x = to_display(images)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        rows, note = ROWS[name](corruption, x, generator, cell)
    shown = []
    for label, imgs, box in rows:
        imgs = to_display(imgs)
        if box is not None:
            imgs = draw_boxes(upscale(imgs, cell), box, scale=cell / x.shape[-1])
        shown.append((label, imgs))
    settings = " ".join(f"{k}={v}" for k, v in params.items())
    return labelled_grid(shown, title=f"{name} {settings} seed={seed}: {note}", cell=cell)


# ---------------------------------------------------------------------------------------------
# Per recipe: what the method's two branches see (``unveil preview --recipe NAME``)

HIGH_PASS_MEAN_RATIO = 0.1  # see looks_high_passed
LABEL_CHARS = 24  # row labels wrap at this width (the grid's label column is 170 px)


def looks_high_passed(x: Tensor) -> bool:
    """Whether a batch of encoder inputs is zero-centred image by image (a high-pass output), so it
    is drawn with zero as grey rather than by undoing the data's mean/std.

    The statistic: mean over the batch of |per-image, per-channel spatial mean| over the mean
    per-image std. A high-passed image (x − blur(x)) has spatial means near 0, a normalised photo
    has its own colour. Measured 2026-11-30 on 32 CIFAR-10 test images through the shipped recipes'
    ``branch_views``: MSCN's high-passed masked rows (σ = 5; grid, focal, noise, channel masks)
    0.017-0.021; plain, masked-without-high-pass and mixed views 0.58-0.75. The threshold 0.1
    sits between them."""
    x = x.detach().float()
    means = x.mean(dim=(2, 3)).abs().mean()
    stds = x.std(dim=(2, 3)).mean().clamp_min(1e-6)
    return bool(means / stds < HIGH_PASS_MEAN_RATIO)


def denormalise(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Undo ``(x − mean) / std`` for display (clamped to [0, 1] by the grid)."""
    m = torch.tensor(tuple(mean), dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(tuple(std), dtype=torch.float32).view(1, -1, 1, 1)
    return x.detach().cpu().float() * s + m


def render_branch_views(method: nn.Module, images: Tensor, mean: Sequence[float], std: Sequence[float],
                        seed: int = 0, cell: int = 96, title: str = "") -> Image.Image:
    """The grid of ``method.branch_views(images, generator)``: the clean images, then one row per
    branch input (normalised rows shown by undoing ``mean``/``std``, high-passed rows with zero as
    grey, scaled by the row's 99th percentile of |x|)."""
    require(method.implements("branch_views"),
            f"method {type(method).__name__} has no branch_views(): it cannot show what its branches see "
            "(preview its corruption instead: unveil preview --list)")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        rows = method.branch_views(images, generator)
    require(isinstance(rows, dict) and rows, f"method {type(method).__name__}.branch_views() returned no rows")
    shown = [("clean", to_display(images))]
    for name, x in rows.items():
        label = "\n".join(textwrap.fill(line, LABEL_CHARS) for line in name.split("\n"))  # fits the label column
        require(x.ndim == 4 and x.shape[0] == images.shape[0],
                f"branch_views row '{name}' has shape {tuple(x.shape)}, expected ({images.shape[0]}, C, H, W)")
        if looks_high_passed(x):
            shown.append((f"{label}\n(high-pass,\ngrey = 0)", signed_image(x)))
        else:
            shown.append((label, to_display(denormalise(x, mean, std))))
    return labelled_grid(shown, title=title, cell=cell)
