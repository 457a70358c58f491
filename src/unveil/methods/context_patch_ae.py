"""Context-patch autoencoder, CBOW for image patches (Panda 2022; docs/design.md §2).

The image is cut into a G x G grid (4 x 4 of 8 x 8 patches at 32 px). A shared tower embeds the 8
neighbours of each target patch (zero patches outside the grid), their embeddings are concatenated
in the fixed raster order NW, N, NE, W, E, SW, S, SE (8 x 64 = 512-d), and a small decoder
(two FC layers, x2 upsampling, three convs, Sigmoid) reconstructs the target patch; MSE loss.
``mode="simple"`` is the paper's baseline: tower(target patch) -> the same decoder.

Efficiency: every real patch is embedded once (plus one zero patch) and the context embeddings are
gathered through the neighbour table, 17 tower calls per image instead of 128. In eval mode this
equals encoding every context occurrence (``naive=True``, kept as the test oracle); in training
mode only BatchNorm's batch statistics differ (the naive batch repeats patches and holds 44 zero
patches per image).

Tower: ``method.tower`` names any registered backbone (``rr_resnet32``, ``rr_conv4``, ...); left
unset, the recipe's backbone section is the tower (as in the shipped recipes), else ``rr_resnet32``.

The image embedding for evaluation is the 16 patch embeddings concatenated (8192-d; simple: 1024-d).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones import build_backbone
from ..corruptions.context import context_patches, neighbour_index, patchify
from ..errors import UserError, require
from ..tensors import no_autocast, rand
from ..views import eval_transform, ops
from . import register
from .base import Method


class PatchDecoder(nn.Module):
    """FC-ReLU-FC-ReLU -> (C, p/2, p/2) -> x2 upsample -> conv-ReLU-conv-ReLU-conv -> Sigmoid."""

    def __init__(self, in_features: int, patch: int = 8, hidden: int = 512, channels: int = 64,
                 upsample_mode: str = "nearest"):
        super().__init__()
        self.channels, self.half = channels, patch // 2
        self.fc = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True),
                                nn.Linear(hidden, channels * self.half * self.half), nn.ReLU(inplace=True))
        self.up = nn.Upsample(scale_factor=2, mode=upsample_mode)
        self.convs = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(channels, 3, 3, padding=1), nn.Sigmoid(),
        )

    def forward(self, z: Tensor) -> Tensor:
        x = self.fc(z).view(-1, self.channels, self.half, self.half)
        return self.convs(self.up(x))


def augment_images(x: Tensor, generator: torch.Generator, padding: int = 4, degrees: float = 15.0,
                   jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1), jitter_p: float = 0.8) -> Tensor:
    """RandomCrop(pad) -> RandomRotation(degrees) -> RandomApply(ColorJitter, p), batched.

    Crop and rotation are one affine ``grid_sample`` (nearest, zero fill, as torchvision's
    defaults): output pixel q reads input pixel R q + d, with d the crop's integer shift in
    [-pad, pad] and R a rotation by an angle uniform in [-degrees, degrees]."""
    b, _, h, w = x.shape
    u = rand((b, 3), generator, x.device)
    with no_autocast(x.device):
        x = x.float()
        if padding > 0 or degrees > 0:
            shift = (u[:, :2] * (2 * padding + 1)).floor().clamp(max=2 * padding) - padding
            angle = (2 * u[:, 2] - 1) * math.radians(degrees)
            cos, sin = angle.cos(), angle.sin()
            theta = torch.stack([
                torch.stack([cos, -sin * h / w, 2 * shift[:, 0] / w], dim=1),
                torch.stack([sin * w / h, cos, 2 * shift[:, 1] / h], dim=1),
            ], dim=1)
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        if jitter_p > 0 and max(jitter) > 0:
            x = ops.color_jitter(x, *jitter, p=jitter_p, generator=generator)
    return x


@register("context_patch_ae", summary="reconstruct each patch from its 8 neighbours' embeddings (or from itself: the simple AE)", paper="2 Context-patch AE")
class ContextPatchAE(Method):
    """Reconstruct each patch from its 8 neighbours' tower embeddings (or from itself: simple)."""
    limits = {"grid": ">= 2", "decoder_hidden": ">= 1", "decoder_channels": ">= 1", "augment_padding": ">= 0",
              "augment_degrees": ">= 0", "augment_jitter_p": "[0, 1]", "image_size": ">= 1"}

    def __init__(self, backbone: nn.Module | None = None, data_info: Any = None, tower: str | None = None,
                 tower_kwargs: dict[str, Any] | None = None, mode: str = "context", grid: int = 4,
                 decoder_hidden: int = 512, decoder_channels: int = 64, decoder_upsample: str = "nearest",
                 reduction: str = "mean", augment: bool = True, augment_padding: int = 4,
                 augment_degrees: float = 15.0, augment_jitter: tuple[float, ...] = (0.4, 0.4, 0.4, 0.1),
                 augment_jitter_p: float = 0.8, naive: bool = False, image_size: int | None = None):
        super().__init__()
        require(mode in ("context", "simple"), f"method.mode must be context or simple, got {mode!r}")
        require(reduction in ("mean", "sum"), f"method.reduction must be mean or sum, got {reduction!r}")
        require(decoder_upsample in ("nearest", "bilinear"),
                f"method.decoder_upsample must be nearest or bilinear, got {decoder_upsample!r}")
        require(len(augment_jitter) == 4, f"method.augment_jitter needs 4 strengths, got {augment_jitter!r}")
        size = int(image_size or getattr(data_info, "image_size", None) or 32)
        require(isinstance(grid, int) and grid >= 2, f"method.grid must be an integer >= 2, got {grid!r}")
        require(size % grid == 0 and (size // grid) % 2 == 0,
                f"image size {size} must split into a {grid}x{grid} grid of even-sized patches: "
                "change method.grid or data.image_size")
        self.mode, self.grid, self.image_size, self.patch = mode, grid, size, size // grid
        self.reduction, self.naive, self.augment = reduction, bool(naive), bool(augment)
        self.augment_args = {"padding": int(augment_padding), "degrees": float(augment_degrees),
                             "jitter": tuple(float(v) for v in augment_jitter), "jitter_p": float(augment_jitter_p)}
        self.tower_name, self.tower_kwargs = tower, dict(tower_kwargs or {})
        if tower is None and backbone is not None:  # the recipe's backbone section is the tower
            self.tower = backbone
        else:
            self.tower_name = tower or "rr_resnet32"
            self.tower = build_backbone(self.tower_name, **self.tower_kwargs)
        dim = self._probe_tower()
        self.context_size = 8 if mode == "context" else 1
        self.decoder = PatchDecoder(dim * self.context_size, self.patch, decoder_hidden, decoder_channels,
                                    decoder_upsample)
        self.register_buffer("neighbours", neighbour_index(grid), persistent=False)

    def _probe_tower(self) -> int:
        """Encode one blank patch: fails early (one clear line) when the tower cannot take the patch size."""
        was_training = self.tower.training
        try:
            with torch.no_grad():
                device = next(self.tower.parameters()).device
                dim = self.tower.eval()(torch.zeros(1, 3, self.patch, self.patch, device=device)).shape[-1]
        except RuntimeError as exc:
            raise UserError(f"the tower cannot encode {self.patch}x{self.patch} patches ({str(exc).splitlines()[0]}): "
                            "use a larger data.image_size, a smaller method.grid or another tower") from None
        finally:
            self.tower.train(was_training)
        return int(getattr(self.tower, "num_features", dim))

    normalized_inputs = False  # encoders see [0, 1] pixels; fine-tuning keeps that convention

    @property
    def backbone(self) -> nn.Module:
        return self.tower

    @property
    def backbone_spec(self) -> dict[str, Any] | None:
        """``build_backbone`` arguments that rebuild :attr:`backbone` (None: the recipe's backbone)."""
        return {"name": self.tower_name, **self.tower_kwargs} if self.tower_name else None

    def to_patches(self, x: Tensor) -> Tensor:
        """(B, C, S, S) -> (B, G*G, C, p, p), raster order."""
        return patchify(x, self.grid)

    def untile(self, patches: Tensor) -> Tensor:
        """(B, G*G, C, p, p) -> (B, C, S, S): the inverse of :meth:`to_patches`."""
        b, _, c, p, _ = patches.shape
        g = self.grid
        return patches.view(b, g, g, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, c, g * p, g * p)

    def patch_codes(self, x: Tensor, naive: bool | None = None) -> Tensor:
        """Per-patch codes the decoder reads: (B, G*G, 8*D) in context mode, (B, G*G, D) in simple."""
        naive = self.naive if naive is None else naive
        if self.mode == "simple":
            patches = self.to_patches(x)
            b, n = patches.shape[:2]
            return self.tower(patches.flatten(0, 1)).view(b, n, -1)
        if naive:
            neigh = context_patches(x, self.grid).neighbours  # (B, G*G, 8, C, p, p)
            b, n, k = neigh.shape[:3]
            return self.tower(neigh.flatten(0, 2)).view(b, n, -1)
        patches = self.to_patches(x)
        b, n = patches.shape[:2]
        zero = patches.new_zeros((1, *patches.shape[2:]))
        codes = self.tower(torch.cat([patches.flatten(0, 1), zero]))  # (B*G*G + 1, D)
        table = torch.cat([codes[:-1].view(b, n, -1), codes[-1:].expand(b, 1, -1)], dim=1)  # index G*G = zero
        return table[:, self.neighbours].flatten(2)  # (B, G*G, 8*D)

    def decode(self, codes: Tensor) -> Tensor:
        b, n = codes.shape[:2]
        return self.decoder(codes.flatten(0, 1)).view(b, n, 3, self.patch, self.patch)

    # -- method contract ----------------------------------------------------------------------

    def forward(self, images: Tensor, labels: Tensor | None = None,
                generator: torch.Generator | None = None) -> dict[str, Tensor]:
        x = eval_transform(images, self.image_size, None, None, normalize=False)
        if self.augment:
            require(generator is not None, "context_patch_ae with augment=true needs a torch.Generator")
            x = augment_images(x, generator, **self.augment_args)
        target = self.to_patches(x)
        recon = self.decode(self.patch_codes(x)).float()
        if self.reduction == "mean":
            loss = F.mse_loss(recon, target.float())
        else:  # the paper's squared L2 per patch, averaged over patches
            loss = (recon - target.float()).pow(2).flatten(2).sum(-1).mean()
        return {"loss": loss}

    def embed(self, images: Tensor) -> Tensor:
        """All patch codes concatenated: 16 x 512 = 8192-d (simple mode: 16 x 64 = 1024-d)."""
        x = eval_transform(images, self.image_size, None, None, normalize=False)
        return self.patch_codes(x).flatten(1)

    @torch.no_grad()
    def reconstruct(self, images: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, None, Tensor]:
        """(clean, None, reconstruction): every patch rebuilt from its context, tiled back."""
        x = eval_transform(images, self.image_size, None, None, normalize=False)
        return x, None, self.untile(self.decode(self.patch_codes(x)).float().clamp(0, 1))
