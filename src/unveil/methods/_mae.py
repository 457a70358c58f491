"""What MAE and the multi-view masked autoencoder share: patchify, the light decoder, the loss.

Follows MAE's official code (facebookresearch/mae, models_mae.py): the decoder embeds the
encoder's tokens, appends a learned mask token for every masked patch, un-shuffles with
``ids_restore``, adds fixed sin-cos positions and runs a few timm ``Block``s; the loss is the MSE on
per-patch normalised pixels (``norm_pix_loss``), averaged over the masked patches only.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from ..backbones.vit import mae_init_, sincos_pos_embed
from ..corruptions.patch_mask import random_token_masking
from ..errors import UserError
from ..param_groups import default_param_groups
from ..views import eval_transform
from .base import Method


def patchify(images: Tensor, patch: int) -> Tensor:
    """(B, C, H, W) -> (B, N, p·p·C), row-major patches, pixels ordered (p, p, C) as MAE."""
    b, c, h, w = images.shape
    gh, gw = h // patch, w // patch
    x = images.reshape(b, c, gh, patch, gw, patch)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(b, gh * gw, patch * patch * c)


def unpatchify(patches: Tensor, patch: int, channels: int = 3) -> Tensor:
    """Inverse of ``patchify`` for a square grid."""
    b, n, _ = patches.shape
    side = int(n**0.5)
    x = patches.reshape(b, side, side, patch, patch, channels)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(b, channels, side * patch, side * patch)


def normalize_patches(target: Tensor, eps: float = 1e-6) -> Tensor:
    """Each patch to zero mean, unit variance (MAE's ``norm_pix_loss`` target; unbiased variance as MAE)."""
    mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
    return (target - mean) / (var + eps) ** 0.5


def masked_patch_loss(pred: Tensor, target: Tensor, mask: Tensor, norm_pix: bool = True) -> Tensor:
    """Mean over masked patches (``mask`` 1) of the per-patch MSE; visible patches do not count."""
    target = target.float()
    if norm_pix:
        target = normalize_patches(target)
    per_patch = (pred.float() - target).pow(2).mean(-1)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)


class MAEDecoder(nn.Module):
    """MAE's lightweight decoder: tokens of the visible patches in, pixels of every patch out."""

    def __init__(self, encoder_dim: int, grid: int, patch: int, dim: int = 512, depth: int = 8,
                 heads: int = 16, mlp_ratio: float = 4.0, channels: int = 3):
        super().__init__()
        for name, value in (("decoder_dim", dim), ("decoder_depth", depth), ("decoder_heads", heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"method.{name} must be a whole number >= 1, got {value!r}")
        if dim % heads or dim % 4:
            raise UserError(f"method.decoder_dim ({dim}) must be divisible by decoder_heads ({heads}) and by 4")
        self.embed = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(sincos_pos_embed(dim, grid), requires_grad=False)
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio, qkv_bias=True, norm_layer=norm) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pred = nn.Linear(dim, patch * patch * channels)
        self.apply(mae_init_)
        nn.init.normal_(self.mask_token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        return {"mask_token", "pos_embed"}

    def forward(self, tokens: Tensor, ids_restore: Tensor) -> Tensor:
        """``tokens`` (B, 1 + n_keep, D_enc), class token first -> predicted patches (B, N, p·p·C)."""
        x = self.embed(tokens)
        b, n = ids_restore.shape
        fill = self.mask_token.to(x.dtype).expand(b, n + 1 - x.shape[1], -1)
        patches = torch.cat([x[:, 1:], fill], dim=1)
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :1], patches], dim=1) + self.pos_embed
        return self.pred(self.norm(self.blocks(x)))[:, 1:]


def decoder_for(backbone: nn.Module, dim: int, depth: int, heads: int) -> MAEDecoder:
    """The decoder for a ViT backbone (one line if the backbone is not a ViT)."""
    if not hasattr(backbone, "forward_tokens"):
        raise UserError(f"masked image modelling needs a ViT backbone (vit_tiny, vit_small, vit_base), got "
                        f"{type(backbone).__name__}: set backbone.name=vit_tiny")
    if getattr(backbone, "global_pool", "token") != "token":  # avg drops the encoder's last norm (fine-tuning only)
        raise UserError("masked image modelling pretrains the encoder with its last norm: leave backbone.global_pool "
                        "at token (avg is the fine-tune's pooling, `unveil eval finetune --global-pool`)")
    return MAEDecoder(backbone.num_features, backbone.grid, backbone.patch, dim, depth, heads)


def check_ratio(mask_ratio: Any, num_tokens: int) -> float:
    """A mask ratio that keeps at least one patch and masks at least one."""
    from ..corruptions.patch_mask import num_kept

    if isinstance(mask_ratio, bool) or not isinstance(mask_ratio, (int, float)) or not 0 < mask_ratio < 1:
        raise UserError(f"method.mask_ratio must be a fraction in (0, 1), got {mask_ratio!r}")
    keep = num_kept(num_tokens, float(mask_ratio))
    if not 0 < keep < num_tokens:
        raise UserError(f"method.mask_ratio={mask_ratio} keeps {keep} of {num_tokens} patches: choose a ratio "
                        "that keeps at least one and masks at least one")
    return float(mask_ratio)


@torch.no_grad()
def reconstruction_rows(x: Tensor, pred: Tensor, mask: Tensor, patch: int, norm_pix: bool,
                        mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[Tensor, Tensor, Tensor]:
    """(masked input, reconstruction with the visible patches pasted back, original) in [0, 1].

    With ``norm_pix`` the decoder predicts normalised patches; they are shown with the true
    patch's mean and variance (as MAE's visualisation does), so the figure shows structure."""
    target = patchify(x.float(), patch)
    pred = pred.float()
    if norm_pix:
        m, v = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        pred = pred * (v + 1e-6) ** 0.5 + m
    keep = (1 - mask).unsqueeze(-1)
    grey = torch.zeros_like(target)  # 0 in normalised space: the dataset's mean colour
    to_pixels = _denormalizer(mean, std, x.device)
    masked = to_pixels(unpatchify(target * keep + grey * (1 - keep), patch, x.shape[1]))
    recon = to_pixels(unpatchify(target * keep + pred * (1 - keep), patch, x.shape[1]))
    return masked, recon, to_pixels(x.float())


def _denormalizer(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device):
    m = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=device).view(1, -1, 1, 1)
    return lambda t: (t * s + m).clamp(0, 1)


class MaskedImageModel(Method):
    """What MAE and MV-MAE do alike outside training: the evaluation input, the pooled feature and the
    reconstruction figure. Subclasses set ``backbone``, ``decoder``, ``data_info``, ``mask_ratio``,
    ``norm_pix_loss`` and ``embed_how`` ("cls" or "mean")."""

    normalized_inputs = True
    headline_protocol = "finetune"  # frozen features are not what masked modelling is judged by

    def param_groups(self) -> list[dict[str, Any]]:
        """Weight decay on weights only: not on biases, norms, the class/mask tokens or positions."""
        return default_param_groups(self)

    def _eval_input(self, images: Tensor) -> Tensor:
        info = self.data_info
        return eval_transform(images, info.image_size, info.mean, info.std)

    def encode_decode(self, x: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """(encoder tokens, predicted patches, mask) for a normalised batch ``x``, freshly masked."""
        m = random_token_masking(x.shape[0], self.backbone.num_tokens, self.mask_ratio, generator, x.device)
        tokens = self.backbone.forward_tokens(x, m.ids_keep)
        return tokens, self.decoder(tokens, m.ids_restore), m.mask

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        return pooled(self.backbone.forward_tokens(self._eval_input(images)), self.embed_how)

    @torch.no_grad()
    def reconstruct(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """Rows for ``unveil reconstruct``: masked input | reconstruction | original (the evaluation view)."""
        x = self._eval_input(images)
        _, pred, mask = self.encode_decode(x, generator)
        info = self.data_info
        return reconstruction_rows(x, pred, mask, self.backbone.patch, self.norm_pix_loss, info.mean, info.std)


EMBEDS = ("cls", "mean")


def check_embed(embed: str) -> str:
    if embed not in EMBEDS:
        raise UserError(f"method.embed must be one of {', '.join(EMBEDS)}, got {embed!r}")
    return embed


def pooled(tokens: Tensor, how: str) -> Tensor:
    """The class token, or the mean of the patch tokens (MAE's ``global_pool``)."""
    return tokens[:, 0] if how == "cls" else tokens[:, 1:].mean(1)
