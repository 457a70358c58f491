"""Activation maps: where a trained encoder's last stage responds, drawn over the image, to compare
encoders (e.g. MoCo vs MoCo + CutMix vs MixDet vs untrained), as the image-mixtures paper's
Figure 4 ("attention maps of the final layer of our pre-trained encoders"; it does not say how the
channels are reduced, so the reduction below is our choice).

For each image: the backbone's last-stage feature map (``backbone(x, return_map=True)``, e.g.
512 x 4 x 4 for a CIFAR-stem ResNet-18 at 32 px), **averaged over channels** (the post-ReLU
activations are non-negative, so the mean is a plain "how much fires here" map with no sign to
choose and no class or gradient needed; channel sums or L2 norms give the same picture up to
scale), **min-max scaled per image** to [0, 1] (each map shows *where*, not *how much*: encoders
differ in activation scale by orders of magnitude), upsampled **bilinearly** to the displayed
image and drawn as a heat map (``jet``: blue low, red high) blended half-and-half over the image.

The input is exactly what the method's own ``embed`` hands its backbone (the deterministic
evaluation transform, plus any filter the method applies at evaluation, e.g. a high-pass), captured
with a forward pre-hook, so every method is shown as it is evaluated.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from ..errors import UserError, require
from ..methods.base import Method
from .grid import labelled_grid, to_display

matplotlib.use("Agg")


def backbone_input(method: nn.Module, images: Tensor) -> Tensor:
    """What ``method.embed(images)`` feeds ``method.backbone`` (captured by a pre-hook)."""
    require(isinstance(method, Method),
            f"{type(method).__name__} is not an unveil method: it has no backbone and embed() to draw activations of")
    backbone = method.backbone  # the contract: every method has a backbone and embed()
    seen: list[Tensor] = []
    handle = backbone.register_forward_pre_hook(lambda _m, args: seen.append(args[0]) if not seen else None)
    try:
        with torch.no_grad():
            method.embed(images)
    finally:
        handle.remove()
    name = type(method).__name__
    require(bool(seen), f"method {name}'s embed() does not run its backbone: no feature map to draw")
    require(seen[0].shape[0] == images.shape[0],
            f"method {name} runs its backbone on {seen[0].shape[0]} inputs for {images.shape[0]} images "
            "(patches, as the context-patch AE): no single feature map per image to draw")
    return seen[0]


@torch.no_grad()
def activation_maps(method: nn.Module, images: Tensor) -> Tensor:
    """(B, h, w) channel-mean last-stage activations of ``method``'s backbone, each scaled to [0, 1]."""
    x = backbone_input(method, images)
    try:
        out = method.backbone(x, return_map=True)
    except TypeError:
        raise UserError(f"backbone {type(method.backbone).__name__} cannot return its feature map "
                        "(no return_map): no activation map to draw") from None
    fmap = out[1].float()
    require(fmap.ndim == 4, f"backbone feature map has shape {tuple(fmap.shape)}, expected (B, C, h, w)")
    require(fmap.shape[-2] * fmap.shape[-1] > 1,
            f"the last feature map is 1x1 for {tuple(x.shape[-2:])} px inputs (a standard-stem ResNet at 32 px): a map "
            "has nothing to show; use a run with backbone.cifar_stem=true or larger images")
    m = fmap.mean(dim=1)
    lo = m.flatten(1).min(dim=1).values.view(-1, 1, 1)
    hi = m.flatten(1).max(dim=1).values.view(-1, 1, 1)
    return (m - lo) / (hi - lo).clamp_min(1e-12)  # a flat map (all equal) shows as 0: nothing stands out


def heat_overlay(images: Tensor, maps: Tensor, size: int, alpha: float = 0.5, cmap: str = "jet") -> Tensor:
    """Display images (B, 3, H, W) in [0, 1] enlarged to ``size`` (nearest) with ``maps`` (B, h, w)
    in [0, 1] upsampled bilinearly to ``size`` and coloured by ``cmap``, blended with weight ``alpha``."""
    base = F.interpolate(images, size=(size, size), mode="nearest")
    up = F.interpolate(maps[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    colours = matplotlib.colormaps[cmap](up.clamp(0, 1).cpu().numpy())[..., :3]  # (B, S, S, 3)
    heat = torch.from_numpy(colours).permute(0, 3, 1, 2).float()
    return ((1 - alpha) * base + alpha * heat).clamp(0, 1)


def activation_figure(images: Tensor, entries: Sequence[tuple[str, nn.Module]], cell: int = 96,
                      title: str = "") -> Image.Image:
    """Rows: the images, then one heat-map row per ``(label, method)``; uint8 images (n, C, H, W)."""
    require(len(entries) > 0, "activation_figure needs at least one method")
    shown = to_display(images)
    rows = [("image", F.interpolate(shown, size=(cell, cell), mode="nearest"))]
    for label, method in entries:
        rows.append((label, heat_overlay(shown, activation_maps(method, images), cell)))
    return labelled_grid(rows, title=title, cell=cell)
