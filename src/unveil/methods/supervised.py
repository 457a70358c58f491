"""Supervised training (baseline, and the fine-tuning protocol): backbone + linear head, cross-entropy.

``augment=False`` trains on the deterministic evaluation view (the test transform), as the overlay
paper's fine-tune does ("no additional augmentation is applied"); the default keeps the
random-resized-crop + flip views of the ``supervised`` preset. ``input_filter`` (e.g.
``{"high_pass": {"sigma": 1.0, "kernel_size": 7}}``, what an MSCN model's ``eval_filter`` says) is
applied after the views and the evaluation transform, so a fine-tune sees what pretraining saw.

The ViT fine-tune recipe (MAE/BEiT) adds three options: ``layer_decay`` (layer-wise lr decay, see
``param_groups``), ``mixup``/``cutmix`` (Beta alphas, 0 = off; timm's ``Mixup`` semantics with
``mix_prob`` and ``switch_prob``, drawn from the step's generator so a resumed run is exact) with
soft-target cross-entropy, and ``label_smoothing`` (already there). Drop path is the backbone's
``drop_path_rate``. MAE's fine-tune augmentation after the crop and flip: ``rand_augment`` (a timm
RandAugment string, MAE's ``rand-m9-mstd0.5-inc1``) on the 8-bit image, then normalisation, then
``random_erasing`` (probability, MAE's 0.25; timm's pixel mode), per sample from the step's
generator (``_finetune_aug``)."""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..corruptions.label_mix import check_mix_settings, mix_batch, soft_cross_entropy
from ..errors import UserError, require
from ..param_groups import default_param_groups, no_weight_decay_names
from ..views import ViewPipeline, eval_transform, view_preset
from ..views.ops import normalize
from . import DataInfo, register
from ._finetune_aug import parse_rand_augment, rand_augment, random_erasing
from ._masking import check_input_filter
from ._masking import input_filter as make_input_filter
from .base import Method


@register("supervised", summary="backbone + linear head, cross-entropy: the supervised baseline and the fine-tuning protocol", paper="baseline of paper 1")
class Supervised(Method):
    limits = {"label_smoothing": "[0, 1)", "mixup": ">= 0", "cutmix": ">= 0", "mix_prob": "[0, 1]", "switch_prob": "[0, 1]",
              "random_erasing": "[0, 1]", "layer_decay": "(0, 1]"}
    needs_labels = True  # the engine refuses unlabelled data in one line instead of a cross-entropy trace

    def __init__(self, backbone: nn.Module, data_info: DataInfo, views: dict[str, Any] | None = None,
                 view_preset_name: str = "supervised", label_smoothing: float = 0.0, normalize: bool = True,
                 augment: bool = True, input_filter: dict[str, Any] | None = None, layer_decay: float | None = None,
                 mixup: float = 0.0, cutmix: float = 0.0, mix_prob: float = 1.0, switch_prob: float = 0.5,
                 rand_augment: str | None = None, random_erasing: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.data_info = data_info
        self.normalize = normalize
        self.label_smoothing = label_smoothing
        try:
            check_mix_settings(mixup, cutmix, mix_prob, switch_prob, label_smoothing)
        except UserError as exc:
            raise UserError(f"supervised: {exc}") from None
        self.mix = {"mixup": float(mixup), "cutmix": float(cutmix), "mix_prob": float(mix_prob),
                    "switch_prob": float(switch_prob)}
        require(layer_decay is None or (not isinstance(layer_decay, bool) and isinstance(layer_decay, (int, float))
                                        and 0 < layer_decay <= 1),
                f"supervised.layer_decay must be a number in (0, 1] or null (off), got {layer_decay!r}")
        require(layer_decay is None or callable(getattr(backbone, "group_matcher", None)),
                f"supervised.layer_decay needs a backbone with blocks (a ViT: timm's group_matcher); "
                f"{type(backbone).__name__} has none")
        self.layer_decay = None if layer_decay is None else float(layer_decay)
        self.augment = bool(augment)
        self.rand_augment = None if rand_augment in (None, "none") else str(rand_augment)
        self._rand_augment = parse_rand_augment(self.rand_augment) if self.rand_augment else None
        require(not isinstance(random_erasing, bool) and isinstance(random_erasing, (int, float))
                and 0 <= random_erasing <= 1,
                f"supervised.random_erasing is a probability in [0, 1], got {random_erasing!r}")
        self.random_erasing = float(random_erasing)
        self.input_filter = check_input_filter(input_filter)
        self._filter = make_input_filter(self.input_filter)
        self.head = nn.Linear(backbone.num_features, data_info.num_classes)
        # RandAugment works on [0, 1] pixels: the views then leave normalisation to ``_augmented``
        self.views = ViewPipeline(view_preset(view_preset_name, data_info.image_size, mean=tuple(data_info.mean),
                                              std=tuple(data_info.std),
                                              normalize=normalize and self._rand_augment is None, **(views or {})))

    def _augmented(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """The training view: crop + flip (the views), then MAE's RandAugment and random erasing if on."""
        x = self.views(images, generator)
        if self._rand_augment is not None:
            x = rand_augment(x, generator, self._rand_augment, fill=tuple(self.data_info.mean))
            if self.normalize:
                x = normalize(x, self.data_info.mean, self.data_info.std, inplace=True)
        if self.random_erasing:
            x = random_erasing(x, self.random_erasing, generator)
        return self._filter(x)

    def forward(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        inputs = self._augmented(images, generator) if self.augment else self._eval_input(images)
        if self.mix["mixup"] or self.mix["cutmix"]:
            inputs, targets, lam = mix_batch(inputs, labels, self.data_info.num_classes, generator,
                                             label_smoothing=self.label_smoothing, **self.mix)
            logits = self.head(self.backbone(inputs))
            loss = soft_cross_entropy(logits, targets)
            labels = torch.where(lam >= 0.5, labels, labels.flip(0))  # train_acc against the dominant label
        else:
            logits = self.head(self.backbone(inputs))
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
        acc = (logits.argmax(1) == labels).float().mean() * 100
        return {"loss": loss, "train_acc": acc}

    def param_groups(self) -> list[dict[str, Any]]:
        """The engine's default groups, or with ``layer_decay`` r the BEiT/MAE layer-wise groups.

        With ``L = depth + 1``: the patch embedding, class token and position embedding are layer 0,
        block i (0-based) is layer i + 1, and the final norm and the head are layer L, so
        ``lr(layer) = lr · r ** (L − layer)``: block i gets ``lr · r ** (depth − i)``, the embeddings
        ``lr · r ** (depth + 1)``, norm and head ``lr``. Each layer is split into a decayed group and
        one without weight decay (1-d parameters, norms, biases and ``no_weight_decay()`` names)."""
        if self.layer_decay is None:
            return default_param_groups(self)
        from timm.models import group_parameters

        bb = self.backbone
        # timm's matcher finds the stem (layer 0); it merges the final norm into the last block
        # (timm's own layer-decay helper therefore gives the last block lr · 1), MAE gives it lr · r
        stem = {n for n, i in group_parameters(bb, bb.group_matcher(coarse=False), reverse=True).items() if i == 0}
        top = len(bb.blocks) + 1
        exempt = no_weight_decay_names(self)
        groups: dict[str, dict[str, Any]] = {}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            inner = name.removeprefix("backbone.") if name.startswith("backbone.") else None
            block = re.match(r"blocks\.(\d+)\.", inner or "")
            layer = int(block.group(1)) + 1 if block else 0 if inner in stem else top
            decay = not (p.ndim <= 1 or name in exempt)
            key = f"layer{layer}_{'decay' if decay else 'no_decay'}"
            groups.setdefault(key, {"params": [], "lr_scale": self.layer_decay ** (top - layer),
                                    "weight_decay": decay, "name": key})["params"].append(p)
        return list(groups.values())

    def _eval_input(self, images: Tensor) -> Tensor:
        info = self.data_info
        return self._filter(eval_transform(images, info.image_size, info.mean, info.std, normalize=self.normalize))

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        return self.backbone(self._eval_input(images))

    @torch.no_grad()
    def classify(self, images: Tensor) -> Tensor:
        return self.head(self.backbone(self._eval_input(images)))
