"""Split BatchNorm: one device behaves like ``num_splits`` devices each normalising its own share.

MoCo's CIFAR recipe (and Un-Mix, MixDet) trains ResNet-18 with ``SplitBatchNorm(num_splits=8)``:
batch statistics are computed over 8 sub-batches, so, with the key batch shuffled, a query's
BatchNorm statistics are not those of its own key (the leak shuffle-BN closes on several GPUs).
Running statistics are the average over the splits. In eval mode it is a plain BatchNorm2d, so
exported weights load into torchvision's ResNet unchanged.

Which images share a split is the official code's (MoCo's CIFAR demo, Un-Mix, mix-ssl, lightly):
image n is in split ``n mod s``. That code gets there by viewing ``(B, C, H, W)`` as
``(B / s, C·s, H, W)``: free on a contiguous tensor, but a copy on a channels_last one (the engine's
default), whose result comes back contiguous, so the next convolution converts it again; and it
repeats weights and running statistics per layer. Here a ``SplitBatchNorm`` normalises consecutive
blocks of ``B / s`` images instead (a slice of the batch is contiguous in any memory format, so each
split runs the fused native kernels in place, joined by one ``cat``), and ``split_batchnorm`` puts the
model's input batch in split-major order (images 0, s, 2s, ... first) and its outputs back, so each
block holds the images of one of the code's splits: the same numbers as the code (tests/backbones/test_split_bn.py
and the lightly parity test), at the cost of reordering the input images and the outputs once per
forward. On CPU (bf16 autocast, channels_last, CIFAR stem) a MoCo step took 0.87 of a SimCLR step with
the view trick against 0.70 with this and 0.68 with plain BatchNorm at batch 32 (0.83 / 0.67 / 0.67 at
batch 64; benchmarks/bench_moco_step.py, benchmarks/results/2026-12-03-bench_moco_step*.md). The GPU effect is
unmeasured: the copies are gone, but a layer makes 8 BatchNorm calls instead of one, which costs more
host-side dispatch where a step is dispatch-bound (small batches).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class SplitBatchNorm(nn.BatchNorm2d):
    def __init__(self, num_features: int, num_splits: int, **kwargs):
        super().__init__(num_features, **kwargs)
        self.num_splits = num_splits

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.num_splits == 1:
            return super().forward(x)
        n, c, s = x.shape[0], x.shape[1], self.num_splits
        if n % s:
            raise ValueError(f"split BatchNorm: batch {n} is not a multiple of {s} splits: "
                             f"use a batch size divisible by {s} or set method.bn_splits=1")
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as nn.BatchNorm2d
                momentum = 1.0 / float(self.num_batches_tracked)
        # one running-statistics row per split, updated in place by its BatchNorm, averaged after
        track = self.track_running_stats and self.running_mean is not None
        mean_split = self.running_mean.repeat(s).view(s, c) if track else None
        var_split = self.running_var.repeat(s).view(s, c) if track else None
        # torch.batch_norm: F.batch_norm without its Python checks (8 calls a layer; check_batch_splits
        # already guarantees 2+ images a split)
        out = torch.cat([torch.batch_norm(xj, self.weight, self.bias, mean_split[j] if track else None,
                                          var_split[j] if track else None, True, momentum, self.eps,
                                          torch.backends.cudnn.enabled)
                         for j, xj in enumerate(x.chunk(s))])
        if track:
            with torch.no_grad():
                self.running_mean.copy_(mean_split.mean(dim=0))
                self.running_var.copy_(var_split.mean(dim=0))
        return out


def split_batchnorm(module: nn.Module, num_splits: int) -> nn.Module:
    """Replace every ``BatchNorm2d`` of ``module`` (in place) by a ``SplitBatchNorm`` with the same
    parameters and buffers (same state-dict names), and reorder the batch at ``module``'s entry and
    exit in training (``_SplitOrder``) so split j holds images j, j + s, ... as in the official code;
    ``num_splits=1`` changes nothing."""
    if num_splits <= 1:
        return module
    _swap_batchnorms(module, num_splits)
    order = _SplitOrder(num_splits)
    module.register_forward_pre_hook(order.enter)
    module.register_forward_hook(order.leave)
    return module


def _swap_batchnorms(module: nn.Module, num_splits: int) -> None:
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            split = SplitBatchNorm(child.num_features, num_splits, eps=child.eps, momentum=child.momentum,
                                   affine=child.affine, track_running_stats=child.track_running_stats)
            split.load_state_dict(child.state_dict())
            setattr(module, name, split)
        else:
            _swap_batchnorms(child, num_splits)


class _SplitOrder:
    """Forward hooks of a model with split BatchNorm: in training, the input batch enters in
    split-major order (``x[perm]``, perm = 0, s, 2s, ..., 1, 1 + s, ...) and every output tensor
    leaves in the caller's order. Per-image layers do not care; each SplitBatchNorm block then holds
    the images ``n ≡ j (mod s)``. A batch that does not divide into the splits passes unchanged
    (SplitBatchNorm reports it). Plain methods (not closures) so ``copy.deepcopy`` (MoCo's key
    encoder) carries them."""

    def __init__(self, splits: int) -> None:
        self.splits = splits

    def _perm(self, n: int, device: torch.device) -> Tensor:
        return torch.arange(n, device=device).view(n // self.splits, self.splits).T.reshape(-1)

    def enter(self, module: nn.Module, args: tuple) -> tuple | None:
        x = args[0] if args else None
        if not module.training or not isinstance(x, Tensor) or x.shape[0] % self.splits:
            return None
        return (x[self._perm(x.shape[0], x.device)], *args[1:])

    def leave(self, module: nn.Module, args: tuple, output: Any) -> Any:
        x = args[0] if args else None
        if not module.training or not isinstance(x, Tensor) or x.shape[0] % self.splits:
            return None
        n = x.shape[0]
        back = torch.arange(n, device=x.device).view(self.splits, n // self.splits).T.reshape(-1)  # perm's inverse

        def restore(t: Any) -> Any:
            return t[back.to(t.device)] if isinstance(t, Tensor) and t.ndim and t.shape[0] == n else t

        return tuple(restore(t) for t in output) if isinstance(output, tuple) else restore(output)
