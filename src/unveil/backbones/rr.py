"""The small towers of Patacchiola & Storkey's relational reasoning code (docs/design.md §2.2).

The context-patch autoencoder encodes 8x8 patches with these: a CIFAR-style ResNet-32 (three
stages of basic blocks, channels 16/32/64) and Conv4 (four conv-BN-ReLU-avgpool blocks), both
64-d after global average pooling. Init as the reference: conv weights ~ N(0, sqrt(2 / (k*k*out))),
BatchNorm weight 1, bias 0. The ResNet blocks are torchvision's ``BasicBlock`` (same layout as the
reference's: conv3x3-BN-ReLU-conv3x3-BN, + shortcut, ReLU), so parameter names are familiar.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock

from ..errors import require
from . import register_backbone


def _rr_init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class RRResNet(nn.Module):
    """CIFAR-style ResNet (3x3 stride-1 stem, three stages); ``depth = 6 * blocks + 2``."""

    def __init__(self, blocks: tuple[int, int, int] = (5, 5, 5), channels: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, channels[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels[0])
        self.relu = nn.ReLU(inplace=True)
        inplanes = channels[0]
        stages = []
        for i, (n, planes) in enumerate(zip(blocks, channels)):
            stride = 1 if i == 0 else 2
            downsample = None
            if stride != 1 or inplanes != planes:
                downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                                           nn.BatchNorm2d(planes))
            layer = [BasicBlock(inplanes, planes, stride, downsample)]
            layer += [BasicBlock(planes, planes) for _ in range(1, n)]
            stages.append(nn.Sequential(*layer))
            inplanes = planes
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = channels[2]
        _rr_init(self)

    def forward_map(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward(self, x: Tensor, return_map: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        fmap = self.forward_map(x)
        pooled = torch.flatten(self.avgpool(fmap), 1)
        return (pooled, fmap) if return_map else pooled


class Conv4(nn.Module):
    """Four conv3x3-BN-ReLU blocks (3->8->16->32->64), avg-pool /2 after the first three."""

    def __init__(self, widths: tuple[int, ...] = (8, 16, 32, 64)):
        super().__init__()
        cin = 3
        for i, cout in enumerate(widths):
            ops: list[tuple[str, nn.Module]] = [
                ("conv", nn.Conv2d(cin, cout, 3, stride=1, padding=1, bias=False)),
                ("bn", nn.BatchNorm2d(cout)),
                ("relu", nn.ReLU()),
            ]
            if i < len(widths) - 1:
                ops.append(("avgpool", nn.AvgPool2d(kernel_size=2, stride=2)))
            self.add_module(f"layer{i + 1}", nn.Sequential(OrderedDict(ops)))
            cin = cout
        self.depth = len(widths)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = cin
        _rr_init(self)

    def forward_map(self, x: Tensor) -> Tensor:
        for i in range(self.depth):
            x = getattr(self, f"layer{i + 1}")(x)
        return x

    def forward(self, x: Tensor, return_map: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        fmap = self.forward_map(x)
        pooled = torch.flatten(self.avgpool(fmap), 1)
        return (pooled, fmap) if return_map else pooled


def _resnet_builder(depth: int):
    def build(cifar_stem: bool = True) -> RRResNet:
        # ``cifar_stem`` is accepted for recipe compatibility (the default backbone section sets it);
        # these towers only have the CIFAR stem.
        require(cifar_stem, f"rr_resnet{depth} only has the CIFAR stem: drop backbone.cifar_stem=false")
        n = (depth - 2) // 6
        return RRResNet((n, n, n))

    build.__name__ = f"build_rr_resnet{depth}"
    return build


for _depth in (8, 20, 32, 56):
    register_backbone(f"rr_resnet{_depth}")(_resnet_builder(_depth))


@register_backbone("rr_conv4")
def build_rr_conv4(cifar_stem: bool = True) -> Conv4:
    require(cifar_stem, "rr_conv4 has no ImageNet stem: drop backbone.cifar_stem=false")
    return Conv4()
