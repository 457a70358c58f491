"""Split BatchNorm: one device behaves like ``num_splits`` devices each normalising its own share.

MoCo's CIFAR recipe (and Un-Mix, MixDet) trains ResNet-18 with ``SplitBatchNorm(num_splits=8)``:
batch statistics are computed over 8 interleaved sub-batches (sample n in split n mod 8), so, with
the key batch shuffled, a query's BatchNorm statistics are not those of its own key (the leak
shuffle-BN closes on several GPUs). Running statistics are the average over the splits. In eval
mode it is a plain BatchNorm2d, so exported weights load into torchvision's ResNet unchanged.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class SplitBatchNorm(nn.BatchNorm2d):
    def __init__(self, num_features: int, num_splits: int, **kwargs):
        super().__init__(num_features, **kwargs)
        self.num_splits = num_splits

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.num_splits == 1:
            return super().forward(x)
        n, c, h, w = x.shape
        s = self.num_splits
        if n % s:
            raise ValueError(f"split BatchNorm: batch {n} is not a multiple of {s} splits: "
                             f"use a batch size divisible by {s} or set method.bn_splits=1")
        mean_split, var_split = self.running_mean.repeat(s), self.running_var.repeat(s)
        out = F.batch_norm(x.reshape(n // s, c * s, h, w), mean_split, var_split, self.weight.repeat(s),
                           self.bias.repeat(s), True, self.momentum if self.momentum is not None else 0.1, self.eps)
        self.running_mean.copy_(mean_split.view(s, c).mean(dim=0))
        self.running_var.copy_(var_split.view(s, c).mean(dim=0))
        self.num_batches_tracked.add_(1)
        return out.reshape(n, c, h, w)


def split_batchnorm(module: nn.Module, num_splits: int) -> nn.Module:
    """Replace every ``BatchNorm2d`` of ``module`` (in place) by a ``SplitBatchNorm`` with the same
    parameters and buffers (same state-dict names); ``num_splits=1`` changes nothing."""
    if num_splits <= 1:
        return module
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            split = SplitBatchNorm(child.num_features, num_splits, eps=child.eps, momentum=child.momentum,
                                   affine=child.affine, track_running_stats=child.track_running_stats)
            split.load_state_dict(child.state_dict())
            setattr(module, name, split)
        else:
            split_batchnorm(child, num_splits)
    return module
