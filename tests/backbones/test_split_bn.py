"""SplitBatchNorm (issue 17, item 4): each split (a block of the batch) runs plain BatchNorm (output,
gradients, running statistics), a channels_last tensor stays channels_last (the official code's view
trick copied it), and a model through ``split_batchnorm`` gives the official code's numbers on the
same batch (its input reordered so block j holds images j, j + s, ...)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unveil.backbones.split_bn import SplitBatchNorm, split_batchnorm

N, C, S = 16, 6, 4
pytestmark = pytest.mark.usefixtures("one_thread")


class ViewTrickSplitBN(nn.BatchNorm2d):
    """The official code's SplitBatchNorm (MoCo CIFAR demo / Un-Mix / mix-ssl): (N, C, H, W) viewed as
    (N / s, C·s, H, W), so image n is in split n mod s; weights and running statistics repeated."""

    def __init__(self, num_features: int, num_splits: int) -> None:
        super().__init__(num_features)
        self.num_splits = num_splits

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)
        n, c, h, w = x.shape
        s = self.num_splits
        mean_split, var_split = self.running_mean.repeat(s), self.running_var.repeat(s)
        out = F.batch_norm(x.reshape(-1, c * s, h, w), mean_split, var_split, self.weight.repeat(s), self.bias.repeat(s),
                           True, self.momentum, self.eps).reshape(n, c, h, w)
        self.running_mean.copy_(mean_split.view(s, c).mean(dim=0))
        self.running_var.copy_(var_split.view(s, c).mean(dim=0))
        return out


def bn_pair(cls, **kw) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    first = SplitBatchNorm(C, S, **kw)
    with torch.no_grad():
        first.weight.uniform_(0.5, 1.5)
        first.bias.uniform_(-0.5, 0.5)
        first.running_mean.uniform_(-1, 1)
        first.running_var.uniform_(0.5, 2)
    other = cls(C, S) if cls is not nn.BatchNorm2d else nn.BatchNorm2d(C, **kw)
    other.load_state_dict(first.state_dict())
    return first, other


def batch(channels_last: bool, seed: int = 0) -> Tensor:
    x = torch.randn(N, C, 5, 5, generator=torch.Generator().manual_seed(seed)) * 2 + 0.5
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def step(bn: nn.Module, x: Tensor, upstream: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    x = x.detach().clone().requires_grad_(True)
    y = bn(x)
    (y * upstream).sum().backward()
    return y, x.grad, bn.weight.grad, bn.bias.grad


@pytest.mark.parametrize("channels_last", [False, True])
def test_equals_plain_batchnorm_on_each_split(channels_last):
    split, plain = bn_pair(nn.BatchNorm2d)
    for seed in range(2):  # two steps: running statistics carry over
        x, upstream = batch(channels_last, seed), torch.randn(N, C, 5, 5, generator=torch.Generator().manual_seed(9))
        split.zero_grad()
        y, gx, gw, gb = step(split, x, upstream)
        before = {k: v.clone() for k, v in plain.state_dict().items()}
        parts, means, vars_ = [], [], []
        gw_sum, gb_sum = torch.zeros(C), torch.zeros(C)
        for xj, uj in zip(x.chunk(S), upstream.chunk(S)):  # each split alone through plain BatchNorm
            plain.load_state_dict(before)
            plain.zero_grad()
            parts.append(step(plain, xj, uj))
            means.append(plain.running_mean.clone())
            vars_.append(plain.running_var.clone())
            gw_sum, gb_sum = gw_sum + plain.weight.grad, gb_sum + plain.bias.grad
        assert torch.allclose(y, torch.cat([p[0] for p in parts]), atol=1e-6)
        assert torch.allclose(gx, torch.cat([p[1] for p in parts]), atol=1e-6)
        assert torch.allclose(gw, gw_sum, atol=1e-5) and torch.allclose(gb, gb_sum, atol=1e-5)
        assert torch.allclose(split.running_mean, torch.stack(means).mean(0), atol=1e-6)
        assert torch.allclose(split.running_var, torch.stack(vars_).mean(0), atol=1e-6)
        assert int(split.num_batches_tracked) == seed + 1
        # the next step starts both from the split module's running statistics
        plain.load_state_dict({**before, "running_mean": split.running_mean, "running_var": split.running_var})
        assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def test_equals_the_official_view_trick_up_to_which_images_share_a_split():
    """The view trick's split j holds images j, j + s, ...; ours holds a block. Permuting the batch
    from interleaved to blocked order gives the same outputs, gradients and running statistics."""
    split, trick = bn_pair(ViewTrickSplitBN)
    x, upstream = batch(False), torch.randn(N, C, 5, 5, generator=torch.Generator().manual_seed(9))
    blocked = torch.arange(N).view(N // S, S).T.reshape(-1)  # interleaved split j -> block j
    y, gx, gw, gb = step(split, x[blocked], upstream[blocked])
    y_t, gx_t, gw_t, gb_t = step(trick, x, upstream)
    assert torch.allclose(y, y_t[blocked], atol=1e-6) and torch.allclose(gx, gx_t[blocked], atol=1e-6)
    assert torch.allclose(gw, gw_t, atol=1e-5) and torch.allclose(gb, gb_t, atol=1e-5)
    assert torch.allclose(split.running_mean, trick.running_mean, atol=1e-6)
    assert torch.allclose(split.running_var, trick.running_var, atol=1e-6)


def test_channels_last_bf16_autocast_stays_channels_last_and_matches_the_view_trick():
    """As the engine runs it (channels_last, bf16 autocast): no copy to the contiguous format (the view
    trick's output came back contiguous: the next convolution converted it again), and the same
    numbers as the view trick on the permuted batch (bf16 rounding apart)."""
    split, trick = bn_pair(ViewTrickSplitBN)
    blocked = torch.arange(N).view(N // S, S).T.reshape(-1)
    x = batch(True).bfloat16()
    upstream = torch.randn(N, C, 5, 5).bfloat16().contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, gx, gw, gb = step(split, x[blocked], upstream[blocked])
        y_t, gx_t, gw_t, gb_t = step(trick, x, upstream)
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
    assert gx.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(y.float(), y_t[blocked].float(), atol=2e-2)
    assert torch.allclose(gx.float(), gx_t[blocked].float(), atol=2e-2)
    assert torch.allclose(gw, gw_t, rtol=1e-2, atol=1e-2) and torch.allclose(gb, gb_t, rtol=1e-2, atol=1e-2)
    assert torch.allclose(split.running_mean, trick.running_mean, atol=1e-5)
    assert torch.allclose(split.running_var, trick.running_var, atol=1e-4)


def test_eval_mode_momentum_none_and_bad_batch():
    split, plain = bn_pair(nn.BatchNorm2d)
    x = batch(True)
    split.eval(), plain.eval()
    assert torch.equal(split(x), plain(x))
    split.train(), plain.train()
    split.momentum = plain.momentum = None  # cumulative average, as nn.BatchNorm2d (recalibrate_batchnorm uses it)
    split.reset_running_stats()
    for seed in range(3):
        split(batch(True, seed))
    expected = torch.stack([torch.stack([xj.var(dim=(0, 2, 3)) for xj in batch(True, seed).chunk(S)]).mean(0)
                            for seed in range(3)]).mean(0)
    assert torch.allclose(split.running_var, expected, atol=1e-5)
    with pytest.raises(ValueError, match="not a multiple of 4 splits"):
        split(torch.randn(6, C, 5, 5))


class SmallNet(nn.Module):
    """Conv-BN-ReLU twice, then the map and its spatial mean (as a backbone with return_map)."""

    def __init__(self) -> None:
        super().__init__()
        # no conv bias before a BatchNorm (as ResNet): its gradient is zero up to rounding
        self.net = nn.Sequential(nn.Conv2d(3, C, 3, padding=1, bias=False), nn.BatchNorm2d(C), nn.ReLU(),
                                 nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C), nn.ReLU())

    def forward(self, x: Tensor, return_map: bool = False):
        fmap = self.net(x)
        return (fmap.mean(dim=(2, 3)), fmap) if return_map else fmap.mean(dim=(2, 3))


def with_view_trick(net: nn.Module) -> nn.Module:
    for name, child in net.named_children():
        if type(child) is nn.BatchNorm2d:
            trick = ViewTrickSplitBN(C, S)
            trick.load_state_dict(child.state_dict())
            setattr(net, name, trick)
        else:
            with_view_trick(child)
    return net


@pytest.mark.parametrize("channels_last", [False, True])
def test_split_batchnorm_model_equals_the_official_code_on_the_same_batch(channels_last):
    """A model through split_batchnorm gives the official code's numbers on the same batch (split j =
    images j, j + s, ...): outputs in the caller's order, gradients, running statistics; its deep copy
    (MoCo's key encoder) too; in eval mode nothing is reordered."""
    import copy

    torch.manual_seed(0)
    ours = SmallNet()
    trick = with_view_trick(copy.deepcopy(ours))
    split_batchnorm(ours, S)
    key = copy.deepcopy(ours)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    ours, trick, key = (m.to(memory_format=fmt) for m in (ours, trick, key))
    x = torch.randn(N, 3, 8, 8, generator=torch.Generator().manual_seed(1)).contiguous(memory_format=fmt)
    pooled, fmap = ours(x, return_map=True)
    pooled_t, fmap_t = trick(x, return_map=True)
    assert torch.allclose(pooled, pooled_t, atol=1e-5) and torch.allclose(fmap, fmap_t, atol=1e-5)
    (pooled * torch.arange(N * C).view(N, C)).sum().backward()
    (pooled_t * torch.arange(N * C).view(N, C)).sum().backward()
    for (name, p), p_t in zip(ours.named_parameters(), trick.parameters()):
        assert torch.allclose(p.grad, p_t.grad, rtol=1e-4, atol=1e-4), name
    for (name, b), b_t in zip(ours.named_buffers(), trick.buffers()):
        if not name.endswith("num_batches_tracked"):
            assert torch.allclose(b, b_t, atol=1e-6), name
    with torch.no_grad():
        assert torch.allclose(key(x), pooled_t, atol=1e-5)  # the deep copy reorders too
    ours.eval(), trick.eval()
    with torch.no_grad():
        assert torch.allclose(ours(x), trick(x), atol=1e-6)


def test_split_batchnorm_swaps_modules_keeping_the_state_dict():
    net = nn.Sequential(nn.Conv2d(3, C, 3), nn.BatchNorm2d(C), nn.ReLU())
    names = set(net.state_dict())
    split_batchnorm(net, S)
    assert isinstance(net[1], SplitBatchNorm) and set(net.state_dict()) == names
    assert split_batchnorm(nn.Sequential(nn.BatchNorm2d(C)), 1)[0].__class__ is nn.BatchNorm2d
