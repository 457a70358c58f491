"""Mixup/CutMix with soft targets (corruptions/label_mix.py): targets are distributions, CutMix's
lam is the pasted area, the generator decides everything, and mixing off is the identity."""

from __future__ import annotations

import pytest
import torch

from unveil.corruptions.label_mix import mix_batch, smooth_one_hot, soft_cross_entropy
from unveil.errors import UserError

K = 5


def batch(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, 16, 16, generator=g), torch.randint(0, K, (n,), generator=g)


def test_off_is_the_identity_with_smoothed_one_hot_targets():
    x, y = batch()
    out = mix_batch(x, y, K, torch.Generator().manual_seed(1), label_smoothing=0.1)
    assert out.images is x and float(out.lam) == 1.0
    assert torch.allclose(out.targets, smooth_one_hot(y, K, 0.1))
    logits = torch.randn(6, K)  # soft CE of smoothed one-hot targets = torch's label-smoothed CE
    assert soft_cross_entropy(logits, out.targets) == pytest.approx(
        torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.1).item(), abs=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_cutmix_lam_is_the_kept_area_and_targets_sum_to_one(seed):
    x, y = batch()
    out = mix_batch(x, y, K, torch.Generator().manual_seed(seed), cutmix=1.0, label_smoothing=0.1)
    pasted = (out.images != x).any(1)  # (B, H, W): pixels taken from the reversed batch
    # rows i and B-1-i can share pixel values only by chance (random floats): the changed area is the box
    kept = 1 - pasted[0].float().mean()
    assert float(out.lam) == pytest.approx(float(kept), abs=1e-6)
    assert torch.allclose(out.targets.sum(1), torch.ones(6))
    lam = float(out.lam)
    expected = lam * smooth_one_hot(y, K, 0.1) + (1 - lam) * smooth_one_hot(y.flip(0), K, 0.1)
    assert torch.allclose(out.targets, expected)


def test_mixup_blends_and_the_generator_decides():
    x, y = batch()
    a = mix_batch(x, y, K, torch.Generator().manual_seed(3), mixup=0.8, cutmix=1.0)
    b = mix_batch(x, y, K, torch.Generator().manual_seed(3), mixup=0.8, cutmix=1.0)
    assert torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets) and torch.equal(a.lam, b.lam)
    kinds = set()
    for seed in range(20):
        out = mix_batch(x, y, K, torch.Generator().manual_seed(seed), mixup=0.8, cutmix=1.0)
        assert torch.allclose(out.targets.sum(1), torch.ones(6)) and 0 <= float(out.lam) <= 1
        changed = (out.images != x).any(1)[0].float().mean().item()
        if changed == 1.0:  # every pixel blended: mixup
            lam = out.lam
            assert torch.allclose(out.images, lam * x + (1 - lam) * x.flip(0), atol=1e-6)
            kinds.add("mixup")
        else:
            kinds.add("cutmix")
    assert kinds == {"mixup", "cutmix"}  # switch_prob 0.5: both happen in 20 batches
    never = mix_batch(x, y, K, torch.Generator().manual_seed(3), mixup=0.8, mix_prob=0.0)
    assert torch.equal(never.images, x) and float(never.lam) == 1.0


def test_bad_settings_fail_in_one_line():
    x, y = batch()
    with pytest.raises(UserError, match="mixup"):
        mix_batch(x, y, K, torch.Generator(), mixup=-1.0)
    with pytest.raises(UserError, match="switch_prob"):
        mix_batch(x, y, K, torch.Generator(), cutmix=1.0, switch_prob=2.0)
