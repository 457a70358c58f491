"""torchvision ResNets with the standard or the CIFAR stem.

The module *is* torchvision's ``ResNet`` (same parameter names), with ``fc`` replaced by
``Identity``, so exported weights load into ``torchvision.models.resnet18()`` with
``strict=True`` once its ``fc`` is set to ``Identity`` (and, for the CIFAR stem, ``conv1``
to a 3x3 stride-1 conv and ``maxpool`` to ``Identity``): see ``unveil.export``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet

from . import register_backbone

_BLOCKS = {
    "resnet18": (tv_resnet.BasicBlock, [2, 2, 2, 2]),
    "resnet34": (tv_resnet.BasicBlock, [3, 4, 6, 3]),
    "resnet50": (tv_resnet.Bottleneck, [3, 4, 6, 3]),
}


def cifar_stem(resnet: tv_resnet.ResNet) -> None:
    """Replace the 7x7/2 conv + max-pool stem with a 3x3/1 conv (small images keep resolution)."""
    resnet.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    resnet.maxpool = nn.Identity()


class ResNetBackbone(tv_resnet.ResNet):
    """torchvision ResNet returning pooled features (and the last map when asked)."""

    def __init__(self, arch: str = "resnet18", cifar_stem: bool = False, zero_init_residual: bool = False):
        block, layers = _BLOCKS[arch]
        super().__init__(block, layers, zero_init_residual=zero_init_residual)
        self.arch = arch
        self.cifar_stem = cifar_stem
        self.num_features = self.fc.in_features
        self.fc = nn.Identity()
        if cifar_stem:
            cifar_stem_fn(self)

    def forward_map(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: Tensor, return_map: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        fmap = self.forward_map(x)
        pooled = torch.flatten(self.avgpool(fmap), 1)
        return (pooled, fmap) if return_map else pooled


cifar_stem_fn = cifar_stem


def _make(arch: str):
    def build(cifar_stem: bool = False, **kwargs) -> ResNetBackbone:
        return ResNetBackbone(arch, cifar_stem=cifar_stem, **kwargs)

    build.__name__ = f"build_{arch}"
    return build


for _arch in _BLOCKS:
    register_backbone(_arch)(_make(_arch))
