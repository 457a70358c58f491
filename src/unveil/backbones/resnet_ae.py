"""The ResNet autoencoder of Horizon2333/imagenet-autoencoder, which the overlay paper trains.

Layer for layer as the reference (docs/design.md §1.3): a post-activation encoder whose
downsampling bottlenecks put the stride in their *first 1x1* conv, and a mirrored pre-activation
decoder without a ReLU after the residual sum, which upsamples with stride-2 transposed convs
(a 1x1 transposed conv zero-inserts: a checkerboard the reference has; ``upsample="nearest"``
swaps every stride-2 transposed conv for nearest x2 + conv). All convs are bias-free and keep
PyTorch's default init, as the reference AE does. Output passes a Sigmoid: targets live in [0, 1].

``cifar=True`` (small images): 3x3 stride-1 first conv and no max-pool in the encoder; the
decoder mirrors it (the stage facing the missing max-pool does not upsample, the last conv is a
3x3 stride-1 conv), so 32 px in -> 32 px out.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import require
from . import register_backbone

# arch -> (layers per stage, bottleneck?) as the reference's get_configs.
CONFIGS: dict[str, tuple[list[int], bool]] = {
    "resnet18": ([2, 2, 2, 2], False),
    "resnet34": ([3, 4, 6, 3], False),
    "resnet50": ([3, 4, 6, 3], True),
    "resnet101": ([3, 4, 23, 3], True),
    "resnet152": ([3, 8, 36, 3], True),
}
UPSAMPLE_MODES = ("transpose", "nearest")


def _bn_relu(channels: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]


def _up_conv(cin: int, cout: int, kernel: int, mode: str) -> nn.Module:
    """x2 upsampling conv: the reference's transposed conv, or nearest x2 then a plain conv."""
    if mode == "transpose":
        return nn.ConvTranspose2d(cin, cout, kernel, stride=2, padding=kernel // 2, output_padding=1, bias=False)
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                         nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False))


class EncoderBottleneck(nn.Module):
    """Post-activation bottleneck; a downsampling one strides in its first 1x1 conv."""

    def __init__(self, cin: int, hidden: int, cout: int, stride: int = 1):
        super().__init__()
        self.weight_layer1 = nn.Sequential(nn.Conv2d(cin, hidden, 1, stride=stride, bias=False), *_bn_relu(hidden))
        self.weight_layer2 = nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1, bias=False), *_bn_relu(hidden))
        self.weight_layer3 = nn.Sequential(nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout else nn.Identity()
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.weight_layer3(self.weight_layer2(self.weight_layer1(x)))
        return self.relu(out + self.shortcut(x))


class EncoderBasic(nn.Module):
    """Post-activation basic block (resnet18/34); the downsampling one strides its first 3x3."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.weight_layer1 = nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                                           *_bn_relu(cout))
        self.weight_layer2 = nn.Sequential(nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout else nn.Identity()
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.weight_layer2(self.weight_layer1(x)) + self.shortcut(x))


class DecoderBottleneck(nn.Module):
    """Pre-activation bottleneck, no ReLU after the sum; ``up`` doubles the resolution."""

    def __init__(self, cin: int, hidden: int, cout: int, up: bool, mode: str = "transpose"):
        super().__init__()
        self.weight_layer1 = nn.Sequential(*_bn_relu(cin), nn.Conv2d(cin, hidden, 1, bias=False))
        self.weight_layer2 = nn.Sequential(*_bn_relu(hidden), nn.Conv2d(hidden, hidden, 3, padding=1, bias=False))
        last = _up_conv(hidden, cout, 1, mode) if up else nn.Conv2d(hidden, cout, 1, bias=False)
        self.weight_layer3 = nn.Sequential(*_bn_relu(hidden), last)
        if up:
            self.shortcut: nn.Module = nn.Sequential(*_bn_relu(cin), _up_conv(cin, cout, 1, mode))
        elif cin != cout:
            self.shortcut = nn.Sequential(*_bn_relu(cin), nn.Conv2d(cin, cout, 1, bias=False))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.weight_layer3(self.weight_layer2(self.weight_layer1(x))) + self.shortcut(x)


class DecoderBasic(nn.Module):
    """Pre-activation basic block (resnet18/34), no ReLU after the sum; ``up`` uses 3x3 / 1x1 s2."""

    def __init__(self, cin: int, cout: int, up: bool, mode: str = "transpose"):
        super().__init__()
        self.weight_layer1 = nn.Sequential(*_bn_relu(cin), nn.Conv2d(cin, cin, 3, padding=1, bias=False))
        last = _up_conv(cin, cout, 3, mode) if up else nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.weight_layer2 = nn.Sequential(*_bn_relu(cin), last)
        if up:
            self.shortcut: nn.Module = nn.Sequential(*_bn_relu(cin), _up_conv(cin, cout, 1, mode))
        elif cin != cout:
            self.shortcut = nn.Sequential(*_bn_relu(cin), nn.Conv2d(cin, cout, 1, bias=False))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.weight_layer2(self.weight_layer1(x)) + self.shortcut(x)


class ResNetAEEncoder(nn.Module):
    """Encoder half; a backbone: ``forward(x, return_map=False)`` -> pooled ``(B, num_features)``."""

    def __init__(self, arch: str = "resnet50", cifar: bool = False):
        super().__init__()
        require(arch in CONFIGS, f"autoencoder arch '{arch}' unknown: choose one of {', '.join(CONFIGS)}")
        layers, bottleneck = CONFIGS[arch]
        self.arch, self.cifar, self.bottleneck = arch, cifar, bottleneck
        stem = nn.Conv2d(3, 64, 3, padding=1, bias=False) if cifar else nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.conv1 = nn.Sequential(stem, *_bn_relu(64))
        self.maxpool = nn.Identity() if cifar else nn.MaxPool2d(3, stride=2, padding=1)
        hidden = [64, 128, 256, 512]
        cin = 64
        stages = []
        for i, (n, h) in enumerate(zip(layers, hidden)):
            cout = 4 * h if bottleneck else h
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(EncoderBottleneck(cin, h, cout, stride) if bottleneck else EncoderBasic(cin, cout, stride))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.conv2, self.conv3, self.conv4, self.conv5 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = cin

    def forward_map(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.conv1(x))
        return self.conv5(self.conv4(self.conv3(self.conv2(x))))

    def forward(self, x: Tensor, return_map: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        fmap = self.forward_map(x)
        pooled = torch.flatten(self.avgpool(fmap), 1)
        return (pooled, fmap) if return_map else pooled


class ResNetAEDecoder(nn.Module):
    """Decoder half: the encoder's last map -> image in [0, 1] at the encoder's input size."""

    def __init__(self, arch: str = "resnet50", cifar: bool = False, upsample: str = "transpose"):
        super().__init__()
        require(arch in CONFIGS, f"autoencoder arch '{arch}' unknown: choose one of {', '.join(CONFIGS)}")
        require(upsample in UPSAMPLE_MODES,
                f"upsample must be one of {', '.join(UPSAMPLE_MODES)}, got {upsample!r}")
        layers, bottleneck = CONFIGS[arch]
        layers = layers[::-1]
        hidden = [512, 256, 128, 64]
        outs = [1024, 512, 256, 64] if bottleneck else [256, 128, 64, 64]
        stages = []
        for i, (n, h, cout) in enumerate(zip(layers, hidden, outs)):
            cin = 4 * h if bottleneck else h
            up_last = not (cifar and i == 3)  # the stage mirroring the (absent) max-pool
            blocks = []
            for j in range(n):
                last = j == n - 1
                up = last and up_last
                if bottleneck:
                    blocks.append(DecoderBottleneck(cin, h, cout if last else cin, up, upsample))
                else:
                    blocks.append(DecoderBasic(cin, cout if last else cin, up, upsample))
            stages.append(nn.Sequential(*blocks))
        self.conv1, self.conv2, self.conv3, self.conv4 = stages
        head = nn.Conv2d(64, 3, 3, padding=1, bias=False) if cifar else _up_conv(64, 3, 7, upsample)
        self.conv5 = nn.Sequential(*_bn_relu(64), head)
        self.gate = nn.Sigmoid()

    def forward(self, fmap: Tensor) -> Tensor:
        x = self.conv4(self.conv3(self.conv2(self.conv1(fmap))))
        return self.gate(self.conv5(x))


def build_autoencoder(arch: str = "resnet50", cifar: bool = False,
                      upsample: str = "transpose") -> tuple[ResNetAEEncoder, ResNetAEDecoder]:
    """The (encoder, decoder) pair; ``decoder(encoder.forward_map(x))`` has the shape of ``x``."""
    return ResNetAEEncoder(arch, cifar), ResNetAEDecoder(arch, cifar, upsample)


def _make(arch: str):
    def build(cifar_stem: bool = False) -> ResNetAEEncoder:
        return ResNetAEEncoder(arch, cifar=cifar_stem)

    build.__name__ = f"build_ae_{arch}"
    build.__doc__ = f"Encoder of the Horizon2333 {arch} autoencoder (``cifar_stem``: 3x3 stem, no max-pool)."
    return build


for _arch in CONFIGS:
    register_backbone(f"ae_{_arch}")(_make(_arch))
