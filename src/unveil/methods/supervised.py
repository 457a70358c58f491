"""Supervised training (baseline, and the fine-tuning protocol): backbone + linear head, cross-entropy.

``augment=False`` trains on the deterministic evaluation view (the test transform), as the overlay
paper's fine-tune does ("no additional augmentation is applied"); the default keeps the
random-resized-crop + flip views of the ``supervised`` preset. ``input_filter`` (e.g.
``{"high_pass": {"sigma": 1.0, "kernel_size": 7}}``, what an MSCN model's ``eval_filter`` says) is
applied after the views and the evaluation transform, so a fine-tune sees what pretraining saw."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..views import ViewPipeline, eval_transform, view_preset
from . import DataInfo, register
from ._masking import check_input_filter
from ._masking import input_filter as make_input_filter


@register("supervised", summary="backbone + linear head, cross-entropy: the supervised baseline and the fine-tuning protocol", paper="baseline of paper 1")
class Supervised(nn.Module):
    needs_labels = True  # the engine refuses unlabelled data in one line instead of a cross-entropy trace

    def __init__(self, backbone: nn.Module, data_info: DataInfo, views: dict[str, Any] | None = None,
                 view_preset_name: str = "supervised", label_smoothing: float = 0.0, normalize: bool = True,
                 augment: bool = True, input_filter: dict[str, Any] | None = None, **unused: Any):
        super().__init__()
        if unused:
            raise TypeError(f"unknown supervised settings: {', '.join(unused)}")
        self.backbone = backbone
        self.data_info = data_info
        self.normalize = normalize
        self.label_smoothing = label_smoothing
        self.augment = bool(augment)
        self.input_filter = check_input_filter(input_filter)
        self._filter = make_input_filter(self.input_filter)
        self.head = nn.Linear(backbone.num_features, data_info.num_classes)
        self.views = ViewPipeline(view_preset(view_preset_name, data_info.image_size, mean=tuple(data_info.mean),
                                              std=tuple(data_info.std), normalize=normalize, **(views or {})))

    def forward(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        inputs = self._filter(self.views(images, generator)) if self.augment else self._eval_input(images)
        logits = self.head(self.backbone(inputs))
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
        acc = (logits.argmax(1) == labels).float().mean() * 100
        return {"loss": loss, "train_acc": acc}

    def _eval_input(self, images: Tensor) -> Tensor:
        info = self.data_info
        return self._filter(eval_transform(images, info.image_size, info.mean, info.std, normalize=self.normalize))

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        return self.backbone(self._eval_input(images))

    @torch.no_grad()
    def classify(self, images: Tensor) -> Tensor:
        return self.head(self.backbone(self._eval_input(images)))
