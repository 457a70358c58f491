"""lightly's side of the step-parity tests (``test_parity_lightly.py``), and the glue between the two.

The reference models are assembled the way lightly's examples assemble them
(``examples/pytorch/{simclr,moco,byol,mae}.py`` of lightly-ai/lightly, and the CIFAR-10 benchmark
``docs/source/getting_started/benchmarks/cifar10_benchmark.py``): a torchvision ResNet-18 without its
``fc`` as ``nn.Sequential(*children[:-1])``, lightly's heads, losses and utilities. Only the sizes are
read from unveil's built method, so a recipe change (a wider head, a deeper decoder) is followed.

unveil's real training step runs through ``unveil.train.engine`` (``prepare`` + ``train_step``), with
its own view pipeline; the views it draws, the MAE mask noise and the shuffle-BN permutation are
recorded on the way and handed to the lightly side, so both see the same batch and the same random
draws. Weights go unveil -> lightly by the explicit module correspondences below.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision
from lightly.models import utils as lightly_utils
from lightly.models.batchnorm import SplitBatchNorm as LightlySplitBatchNorm
from lightly.models.modules import (
    BYOLPredictionHead,
    BYOLProjectionHead,
    MaskedVisionTransformerDecoderTIMM,
    MaskedVisionTransformerTIMM,
    MoCoProjectionHead,
    SimCLRProjectionHead,
)
from torch import Tensor, nn

# ---------------------------------------------------------------------------------------------
# Module correspondence, unveil -> lightly (parameter and buffer names)

# unveil's ResNet backbone is torchvision's ResNet with fc = Identity (same names); lightly's examples
# use nn.Sequential(*list(resnet.children())[:-1]): conv1, bn1, relu, maxpool, layer1..4, avgpool.
RESNET = {"conv1.": "0.", "bn1.": "1.", "layer1.": "4.", "layer2.": "5.", "layer3.": "6.", "layer4.": "7."}

# Per method: unveil prefix -> (lightly prefix, submodule table or None). The heads are Sequentials
# with the same layer order on both sides (Linear, BN, ReLU, Linear[, BN]; MoCo v2: Linear, ReLU,
# Linear), so their indices correspond one to one.
SIMCLR_MAP = {"backbone.": ("backbone.", RESNET), "projector.": ("projection_head.layers.", None)}
MOCO_MAP = {
    "backbone.": ("backbone.", RESNET), "head.": ("projection_head.layers.", None),
    "key_backbone.": ("backbone_momentum.", RESNET), "key_head.": ("projection_head_momentum.layers.", None),
}
BYOL_MAP = {
    "backbone.": ("backbone.", RESNET), "projector.": ("projection_head.layers.", None),
    "predictor.": ("prediction_head.layers.", None), "target_backbone.": ("backbone_momentum.", RESNET),
    "target_projector.": ("projection_head_momentum.layers.", None),
}
# MAE: unveil's backbone is the timm ViT itself (lightly wraps it as .vit); unveil's decoder holds the
# input embedding and the prediction layer that lightly's example keeps beside its decoder.
MAE_MAP = {
    "backbone.": ("backbone.vit.", None), "decoder.embed.": ("decoder_embed.", None),
    "decoder.pred.": ("prediction_head.", None), "decoder.mask_token": ("decoder.mask_token", None),
    "decoder.pos_embed": ("decoder.pos_embed", None), "decoder.blocks.": ("decoder.blocks.", None),
    "decoder.norm.": ("decoder.norm.", None),
}


def lightly_name(name: str, table: dict[str, tuple[str, dict[str, str] | None]]) -> str | None:
    """The lightly name of unveil's parameter/buffer ``name`` (None: no counterpart, e.g. MoCo's queue)."""
    for prefix in sorted(table, key=len, reverse=True):  # longest prefix first (decoder.pos_embed vs decoder.)
        if name.startswith(prefix):
            target, sub = table[prefix]
            rest = name[len(prefix):]
            if sub is not None:
                head = next((k for k in sub if rest.startswith(k)), None)
                if head is None:
                    return None  # e.g. the ResNet's fc (Identity: nothing to map)
                rest = sub[head] + rest[len(head):]
            return target + rest
    return None


@torch.no_grad()
def copy_weights(unveil: nn.Module, lightly: nn.Module, table: dict) -> dict[str, str]:
    """Copy every parameter and buffer of ``unveil`` that has a counterpart into ``lightly``; returns
    the correspondence (unveil name -> lightly name). lightly's SplitBatchNorm keeps one running
    statistic per split (C·s entries): unveil's C are repeated over the splits."""
    target = dict(lightly.named_parameters()) | dict(lightly.named_buffers())
    pairs = {}
    for name, tensor in [*unveil.named_parameters(), *unveil.named_buffers()]:
        other = lightly_name(name, table)
        if other is None:
            continue
        assert other in target, f"{name} -> {other}: no such tensor on the lightly side"
        dst = target[other]
        src = tensor if dst.shape == tensor.shape else tensor.repeat(dst.numel() // max(tensor.numel(), 1))
        assert dst.shape == src.shape, f"{name} {tuple(tensor.shape)} vs {other} {tuple(dst.shape)}"
        dst.copy_(src)
        pairs[name] = other
    return pairs


def check_coverage(unveil: nn.Module, lightly: nn.Module, pairs: dict[str, str], lightly_only: set[str]) -> None:
    """Every trainable tensor of unveil has a counterpart, and every lightly parameter is either a
    counterpart or named in ``lightly_only`` (said in the test: e.g. the affine γ/β of SimCLR's last BN)."""
    trainable = [n for n, p in unveil.named_parameters() if p.requires_grad]
    missing = [n for n in trainable if n not in pairs]
    assert not missing, f"unveil parameters without a lightly counterpart: {missing}"
    mapped = set(pairs.values())
    extra = [n for n, _ in lightly.named_parameters() if n not in mapped]
    assert sorted(extra) == sorted(lightly_only), f"lightly parameters without an unveil counterpart: {extra}"


def rel(a: Tensor, b: Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64 (0 when both are equal): the relative difference of ``a`` from ``b``."""
    a, b = a.detach().double(), b.detach().double()
    diff, den = float((a - b).norm()), float(b.norm())
    return diff / den if den > 0 else (0.0 if diff == 0 else float("inf"))


def norm_of(values: dict[str, Tensor]) -> float:
    """The norm of all tensors together (e.g. of the whole gradient)."""
    return float(torch.cat([v.detach().double().flatten() for v in values.values()]).norm())


def worst(pairs: dict[str, str], left: dict[str, Tensor], right: dict[str, Tensor],
          scale: float = 1.0) -> tuple[float, str]:
    """(max relative difference, where) of ``left[u]`` against ``scale · right[lightly(u)]`` over the
    pairs present in ``left``. A lightly SplitBatchNorm statistic (one row per split) is compared by its
    mean over the splits, which is what unveil's split BatchNorm keeps."""
    diffs = {}
    for u, v in pairs.items():
        if u not in left:
            continue
        a, b = left[u], right[v]
        if b.shape != a.shape:
            b = b.reshape(-1, *a.shape).double().mean(0)
        diffs[u] = rel(a, scale * b)
    assert diffs, "nothing to compare"
    name = max(diffs, key=diffs.get)
    return diffs[name], name


def grads(module: nn.Module) -> dict[str, Tensor]:
    return {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}


def tensors(module: nn.Module) -> dict[str, Tensor]:
    return {n: t.detach().clone() for n, t in [*module.named_parameters(), *module.named_buffers()]}


# ---------------------------------------------------------------------------------------------
# Recording unveil's random draws


class RecordViews(nn.Module):
    """Wraps one of unveil's view pipelines: runs it (same generator, same draws) and keeps each view."""

    def __init__(self, inner: nn.Module, log: list[Tensor]):
        super().__init__()
        self.inner, self.log = inner, log

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        out = self.inner(*args, **kwargs)
        self.log.append(out.detach().clone())
        return out


def record_views(method: nn.Module) -> list[Tensor]:
    """Wrap every view pipeline of ``method`` (in place); the returned list fills in call order."""
    from unveil.views import ViewPipeline

    log: list[Tensor] = []
    names = [n for n, m in method.named_children() if isinstance(m, ViewPipeline)]
    assert names, f"{type(method).__name__} has no view pipeline to record"
    for n in names:
        setattr(method, n, RecordViews(getattr(method, n), log))
    return log


@contextlib.contextmanager
def patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


# ---------------------------------------------------------------------------------------------
# unveil's real step


@dataclass
class UnveilStep:
    run: Any
    method: nn.Module
    lr: float
    views: list[Tensor] = field(default_factory=list)
    loss: Tensor | None = None
    out: dict[str, Tensor] | None = None
    grads: dict[str, Tensor] | None = None


def make_folder(root: Path, n_per_class: int = 12, size: int = 32) -> Path:
    """A 2-class image folder of ``size`` px noise images (the engine needs a dataset to prepare a run)."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(n_per_class):
            arr = torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8).numpy()
            Image.fromarray(arr).save(root / cls / f"{i}.png")
    return root


def prepare(recipe: str, overrides: list[str], folder: Path, out: Path, batch: int) -> UnveilStep:
    """unveil's run from a shipped recipe, as ``unveil train`` builds it (data, method, optimizer),
    on CPU in fp32 with contiguous tensors (lightly's examples keep the default memory format)."""
    from unveil.config import resolve
    from unveil.optim import lr_at
    from unveil.train import engine

    cfg = resolve(recipe, [*overrides, f"data.name={folder}", "data.image_size=32", "data.test_fraction=0.25",
                           f"train.batch_size={batch}", "train.device=cpu", "train.precision=fp32",
                           "train.channels_last=false", "train.compile=false", "train.monitor=none",
                           "train.progress=false", f"out={out}"])
    run = engine.prepare(cfg)
    lr = lr_at(0, run.total_steps, run.steps_per_epoch, run.base_lr, run.t)
    return UnveilStep(run=run, method=run.method, lr=lr)


def unveil_step(step: UnveilStep, images: Tensor, labels: Tensor, after: bool = True) -> UnveilStep:
    """One optimizer step of the engine (``engine.train_step``), then ``after_optimizer_step(1, total)``
    as the training loop calls it; the gradients stay in ``.grad`` (zeroed at the next step only)."""
    from unveil.train import engine

    step.views = record_views(step.method)
    step.loss, step.out = engine.train_step(step.run, images, labels, step.lr)
    step.grads = grads(step.method)
    trainable = {n for n, p in step.method.named_parameters() if p.requires_grad}
    assert set(step.grads) == trainable, f"no gradient for {sorted(trainable - set(step.grads))}"
    hook = getattr(step.method, "after_optimizer_step", None)
    if after and hook is not None:
        hook(1, step.run.total_steps)
    return step


def batch_of(step: UnveilStep, n: int) -> tuple[Tensor, Tensor]:
    d = step.run.dataset.train
    return torch.as_tensor(d.images[:n]).clone(), torch.as_tensor(d.labels[:n]).clone()


# ---------------------------------------------------------------------------------------------
# lightly's models, as its examples build them


def lightly_resnet(unveil_backbone: nn.Module, bn_splits: int = 1) -> nn.Sequential:
    """``nn.Sequential(*list(resnet.children())[:-1])`` of a torchvision ResNet-18 with unveil's stem;
    ``bn_splits > 1`` swaps every BatchNorm2d for lightly's SplitBatchNorm (its benchmark's
    ``ResNetGenerator("resnet-18", num_splits=8)`` does the same inside lightly's own ResNet)."""
    resnet = torchvision.models.resnet18()
    if getattr(unveil_backbone, "cifar_stem", False):
        resnet.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        resnet.maxpool = nn.Identity()
    backbone = nn.Sequential(*list(resnet.children())[:-1])
    if bn_splits > 1:
        _split_bn(backbone, bn_splits)
    return backbone


def _split_bn(module: nn.Module, splits: int) -> None:
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            setattr(module, name, LightlySplitBatchNorm(child.num_features, splits))
        else:
            _split_bn(child, splits)


def _frozen_copy(module: nn.Module) -> nn.Module:
    target = copy.deepcopy(module)
    lightly_utils.deactivate_requires_grad(target)
    return target


class LightlySimCLR(nn.Module):
    """lightly's SimCLR example: backbone + SimCLRProjectionHead (sizes read from unveil's projector)."""

    def __init__(self, backbone: nn.Module, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.backbone = backbone
        self.projection_head = SimCLRProjectionHead(in_dim, hidden_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.projection_head(self.backbone(x).flatten(start_dim=1))


class LightlyMoCo(nn.Module):
    """lightly's MoCo example: backbone + MoCoProjectionHead and their momentum copies."""

    def __init__(self, backbone: nn.Module, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.backbone = backbone
        self.projection_head = MoCoProjectionHead(in_dim, hidden_dim, out_dim)
        self.backbone_momentum = _frozen_copy(self.backbone)
        self.projection_head_momentum = _frozen_copy(self.projection_head)

    def forward(self, x: Tensor) -> Tensor:
        return self.projection_head(self.backbone(x).flatten(start_dim=1))

    def forward_momentum(self, x: Tensor) -> Tensor:
        return self.projection_head_momentum(self.backbone_momentum(x).flatten(start_dim=1)).detach()


class LightlyBYOL(nn.Module):
    """lightly's BYOL example: backbone, BYOLProjectionHead, BYOLPredictionHead, momentum copies."""

    def __init__(self, backbone: nn.Module, in_dim: int, hidden_dim: int, out_dim: int, pred_hidden_dim: int):
        super().__init__()
        self.backbone = backbone
        self.projection_head = BYOLProjectionHead(in_dim, hidden_dim, out_dim)
        self.prediction_head = BYOLPredictionHead(out_dim, pred_hidden_dim, out_dim)
        self.backbone_momentum = _frozen_copy(self.backbone)
        self.projection_head_momentum = _frozen_copy(self.projection_head)

    def forward(self, x: Tensor) -> Tensor:
        return self.prediction_head(self.projection_head(self.backbone(x).flatten(start_dim=1)))

    def forward_momentum(self, x: Tensor) -> Tensor:
        return self.projection_head_momentum(self.backbone_momentum(x).flatten(start_dim=1)).detach()


class LightlyMAE(nn.Module):
    """lightly's MAE example (``examples/pytorch/mae.py``) around a timm ViT: the encoder
    (MaskedVisionTransformerTIMM), decoder_embed, MaskedVisionTransformerDecoderTIMM and the
    prediction head; the mask indices come in from outside (``forward(images, idx_keep, idx_mask)``)."""

    def __init__(self, vit: nn.Module, decoder_dim: int, depth: int, heads: int, mask_ratio: float):
        super().__init__()
        self.mask_ratio = mask_ratio
        self.patch_size = vit.patch_embed.patch_size[0]
        self.backbone = MaskedVisionTransformerTIMM(vit=vit)
        self.sequence_length = self.backbone.sequence_length
        self.decoder_embed = nn.Linear(vit.embed_dim, decoder_dim)
        self.decoder = MaskedVisionTransformerDecoderTIMM(
            num_patches=vit.patch_embed.num_patches, embed_dim=decoder_dim, depth=depth, num_heads=heads,
            num_prefix_tokens=vit.num_prefix_tokens, mlp_ratio=4.0, proj_drop_rate=0.0, attn_drop_rate=0.0)
        self.prediction_head = nn.Linear(decoder_dim, self.patch_size**2 * 3)

    def forward_decoder(self, x_encoded: Tensor, idx_keep: Tensor, idx_mask: Tensor) -> Tensor:
        x_decode = self.decoder_embed(x_encoded)
        x_masked = x_decode.new_zeros(x_encoded.shape[0], self.sequence_length, x_decode.shape[-1])
        x_masked = lightly_utils.set_at_index(x_masked, idx_keep, x_decode.type_as(x_masked))
        x_decoded = self.decoder(x_masked, idx_mask=idx_mask)
        return self.prediction_head(lightly_utils.get_at_index(x_decoded, idx_mask))

    def forward(self, images: Tensor, idx_keep: Tensor, idx_mask: Tensor) -> tuple[Tensor, Tensor]:
        x_encoded = self.backbone.encode(images=images, idx_keep=idx_keep)
        x_pred = self.forward_decoder(x_encoded, idx_keep, idx_mask)
        patches = lightly_utils.patchify(images, self.patch_size)
        return x_pred, lightly_utils.get_at_index(patches, idx_mask - 1)  # the example's class-token shift


def lightly_token_mask(noise: Tensor, mask_ratio: float) -> tuple[Tensor, Tensor]:
    """lightly's own ``random_token_mask`` on unveil's noise: its ``torch.rand`` draw is replaced by
    a class-token column (which lightly overwrites with −1) followed by unveil's (B, N) noise."""
    b, n = noise.shape
    full = torch.cat([torch.zeros(b, 1, dtype=noise.dtype), noise], dim=1)
    with patched(torch, "rand", lambda *a, **k: full.clone()):
        return lightly_utils.random_token_mask(size=(b, n + 1), mask_ratio=mask_ratio)


@contextlib.contextmanager
def recorded_calls(module: Any, name: str) -> Iterator[list[tuple[tuple, Any]]]:
    """Wrap ``module.name`` (a function) so each call's (args, result) is kept; the real one still runs."""
    real: Callable = getattr(module, name)
    calls: list[tuple[tuple, Any]] = []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        calls.append((args, result))
        return result

    with patched(module, name, wrapper):
        yield calls
