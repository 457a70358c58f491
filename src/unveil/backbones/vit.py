"""Vision Transformers from timm, with MAE's encoder-on-visible-patches forward.

The module *is* timm's ``VisionTransformer`` (same parameter names, ``num_classes=0``, class-token
pooling), so an exported encoder loads into ``timm.create_model("vit_tiny_patch16_224",
img_size=32, patch_size=4, num_classes=0)`` with ``strict=True`` (``unveil.export.timm_model``).
What MAE adds is one method, ``forward_tokens(x, ids_keep)``: patch embedding plus position
embedding for every patch, then only the kept patches (and the class token) go through the blocks.

Sizes: ``vit_tiny`` (192 wide, 3 heads), ``vit_small`` (384, 6), ``vit_base`` (768, 12), all 12
blocks deep. ``patch_size: auto`` is 4 px for images of 32 px or less (8x8 tokens), 8 px up to
112 px and 16 px above (14x14 at 224 px). Position embeddings are MAE's fixed 2-D sin-cos
(``pos_embed: sincos``, not trained) or timm's learned ones (``pos_embed: learn``).

``global_pool: avg`` is MAE's fine-tuning head input (models_vit.py, its default): the mean of the
patch tokens, then ``fc_norm`` (a LayerNorm), with the encoder's last norm removed -- timm's own
``global_pool="avg"`` layout, so it still loads into timm strictly. Weights of a class-token encoder
(a pretraining run) load into it as MAE's main_finetune.py loads them: the last norm's weights are
dropped and ``fc_norm`` keeps its fresh initialisation.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from ..errors import UserError
from . import register_backbone

SIZES = {"tiny": (192, 3), "small": (384, 6), "base": (768, 12)}  # width, heads (depth 12, MLP 4x)
TIMM_NAMES = {"tiny": "vit_tiny_patch16_224", "small": "vit_small_patch16_224", "base": "vit_base_patch16_224"}
POS_EMBEDS = ("sincos", "learn")
POOLS = ("token", "avg")


def auto_patch_size(img_size: int) -> int:
    """4 px at <= 32 px (CIFAR: 64 tokens), 8 px up to 112 px, 16 px above (ImageNet: 196 tokens)."""
    return 4 if img_size <= 32 else 8 if img_size <= 112 else 16


def sincos_pos_embed(dim: int, grid: int, cls_token: bool = True) -> Tensor:
    """MAE's fixed 2-D sin-cos embedding (1, [1 +] grid², dim); the class token's row is zeros."""
    if dim % 4:
        raise UserError(f"the sin-cos position embedding needs a width divisible by 4, got {dim}")
    coords = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64))  # (w, h) as MAE
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))

    def one_axis(pos: np.ndarray) -> np.ndarray:
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([one_axis(coords[0]), one_axis(coords[1])], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros((1, dim)), emb], axis=0)
    return torch.from_numpy(emb).float().unsqueeze(0)


def mae_init_(module: nn.Module) -> None:
    """MAE's initialisation: xavier-uniform linears (zero bias), unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class ViTBackbone(VisionTransformer):
    """timm ViT returning the class token (``forward``) or all tokens of the visible patches."""

    def __init__(self, size: str = "tiny", img_size: int = 224, patch_size: int | str = "auto",
                 depth: int = 12, drop_path_rate: float = 0.0, pos_embed: str = "sincos",
                 global_pool: str = "token"):
        if size not in SIZES:
            raise UserError(f"backbone size must be one of {', '.join(SIZES)}, got {size!r}")
        if global_pool not in POOLS:
            raise UserError(f"backbone.global_pool must be one of {', '.join(POOLS)}, got {global_pool!r}")
        if pos_embed not in POS_EMBEDS:
            raise UserError(f"backbone.pos_embed must be one of {', '.join(POS_EMBEDS)}, got {pos_embed!r}")
        img_size = int(img_size)
        patch = auto_patch_size(img_size) if patch_size == "auto" else patch_size
        if isinstance(patch, bool) or not isinstance(patch, int) or patch < 1 or img_size % patch:
            raise UserError(f"backbone.patch_size must be a whole number of pixels dividing the image size "
                            f"{img_size}, got {patch_size!r}: set backbone.patch_size (e.g. "
                            f"{auto_patch_size(img_size)}) or data.image_size")
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise UserError(f"backbone.depth must be a whole number of blocks >= 1, got {depth!r}")
        width, heads = SIZES[size]
        super().__init__(img_size=img_size, patch_size=patch, embed_dim=width, depth=depth, num_heads=heads,
                         num_classes=0, global_pool=global_pool, drop_path_rate=float(drop_path_rate))
        self.size, self.patch, self.grid = size, patch, img_size // patch
        if global_pool == "avg":  # timm: norm -> Identity, fc_norm = LayerNorm (MAE's fine-tune layout)
            self.register_load_state_dict_pre_hook(_fresh_fc_norm)
        self.pos_embed_kind = pos_embed
        # MAE's init (timm's default is truncated normal); the patch projection as a linear layer
        self.apply(mae_init_)
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        if pos_embed == "sincos":
            self.pos_embed.data.copy_(sincos_pos_embed(width, self.grid))
            self.pos_embed.requires_grad_(False)
        else:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid

    def forward_tokens(self, x: Tensor, ids_keep: Tensor | None = None) -> Tensor:
        """Normalised tokens (B, 1 + n, D), class token first; ``ids_keep`` (B, n) selects the
        visible patches (MAE: the encoder never sees the masked ones), None keeps all."""
        tokens = self.patch_embed(x) + self.pos_embed[:, 1:, :]
        if ids_keep is not None:
            tokens = torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(tokens.shape[0], -1, -1)
        tokens = self.pos_drop(torch.cat([cls, tokens], dim=1))
        return self.norm(self.blocks(self.norm_pre(tokens)))

    def forward(self, x: Tensor, return_map: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """The class token (B, D); with ``return_map`` also the patch tokens as a (B, D, h, w) map."""
        tokens = self.forward_tokens(x)
        cls = self.fc_norm(tokens[:, 1:].mean(1)) if self.global_pool == "avg" else tokens[:, 0]
        if not return_map:
            return cls
        b, n, d = tokens[:, 1:].shape
        side = int(math.isqrt(n))
        return cls, tokens[:, 1:].transpose(1, 2).reshape(b, d, side, n // side)

    def timm_kwargs(self) -> dict:
        """``timm.create_model`` arguments that rebuild this architecture (for strict loading)."""
        kwargs = {"model_name": TIMM_NAMES[self.size], "img_size": self.patch_embed.img_size[0],
                  "patch_size": self.patch, "depth": len(self.blocks), "num_classes": 0}
        return {**kwargs, "global_pool": "avg"} if self.global_pool == "avg" else kwargs


def _fresh_fc_norm(module: nn.Module, state: dict, prefix: str, *args: object) -> None:
    """A class-token encoder's weights into an avg-pool one (MAE's fine-tune): the last norm's weights
    are dropped (the layer is gone) and ``fc_norm`` keeps its fresh initialisation."""
    if prefix + "fc_norm.weight" in state or prefix + "norm.weight" not in state:
        return
    for name in ("weight", "bias"):
        state.pop(prefix + "norm." + name, None)
        state[prefix + "fc_norm." + name] = getattr(module.fc_norm, name).detach().clone()


def _make(size: str):
    def build(img_size: int = 224, patch_size: int | str = "auto", depth: int = 12, drop_path_rate: float = 0.0,
              pos_embed: str = "sincos", global_pool: str = "token") -> ViTBackbone:
        return ViTBackbone(size, img_size=img_size, patch_size=patch_size, depth=depth,
                           drop_path_rate=drop_path_rate, pos_embed=pos_embed, global_pool=global_pool)

    build.__name__ = f"build_vit_{size}"
    return build


for _size in SIZES:
    register_backbone(f"vit_{_size}")(_make(_size))
