"""MSCN corruptions: high-pass filter, grid/focal masks, channel independence, noise, the masker."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.transforms.v2.functional import gaussian_blur

from unveil.corruptions import (
    MaskConfig,
    MSCNMasker,
    build_corruption,
    focal_mask,
    grid_mask,
    high_pass,
    mscn_mask,
)
from unveil.errors import UserError

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def gen(seed: int = 0, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def batch(b: int = 4, size: int = 32, dtype=torch.float32, device: str = "cpu") -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=gen(99)).to(device=device, dtype=dtype)


@pytest.mark.parametrize("sigma,kernel", [(5.0, None), (5.0, 11), (1.0, None), (2.5, 7)])
def test_high_pass_matches_torchvision_blur(sigma, kernel):
    x = batch()
    k = kernel or 2 * math.ceil(3 * sigma) + 1
    ref = x - gaussian_blur(x, [k, k], [sigma, sigma])  # torchvision pads with reflect
    torch.testing.assert_close(high_pass(x, sigma, kernel), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_high_pass_dtypes_and_constant_images(device):
    x = batch(device=device, dtype=torch.bfloat16)
    y = high_pass(x)
    assert y.dtype == torch.bfloat16 and y.shape == x.shape and y.device == x.device
    const = torch.full((2, 3, 32, 32), 0.7, device=device)
    assert high_pass(const).abs().max() < 1e-5  # a constant image has no high frequencies


def test_high_pass_errors():
    with pytest.raises(ValueError, match="too large"):
        high_pass(batch(size=8), sigma=5.0)
    with pytest.raises(ValueError, match="odd"):
        high_pass(batch(), kernel_size=4)
    with pytest.raises(ValueError, match="sigma"):
        high_pass(batch(), sigma=0)


@settings(max_examples=20, deadline=None)
@given(ratio=st.floats(0.0, 1.0), cell=st.sampled_from([None, 4, 5, 7]), seed=st.integers(0, 2**31))
def test_grid_mask_exact_cell_count(ratio, cell, seed):
    m = grid_mask((3, 2, 32, 32), ratio, gen(seed), cell_size=cell)
    assert m.shape == (3, 2, 32, 32) and m.dtype == torch.bool
    per_side = 7 if cell is None else math.ceil(32 / cell)
    expected = round(ratio * per_side * per_side)
    # count masked cells by sampling one pixel per cell (the cell's top-left corner)
    if cell is None:
        starts = sorted({next(p for p in range(32) if p * 7 // 32 == i) for i in range(7)})
    else:
        starts = list(range(0, 32, cell))
    corners = m[:, :, starts][:, :, :, starts]
    assert torch.all(corners.flatten(2).sum(-1) == expected)
    # every cell is uniform: the mask is constant within each cell
    cells = torch.tensor([p * 7 // 32 if cell is None else p // cell for p in range(32)])
    expanded = corners[:, :, cells][:, :, :, cells]
    assert torch.equal(expanded, m)


def test_grid_mask_default_is_7x7_at_224():
    m = grid_mask((2, 1, 224, 224), 0.15, gen(1))
    cells = m[:, 0, ::32, ::32]
    assert cells.shape == (2, 7, 7) and torch.all(cells.flatten(1).sum(1) == 7)  # round(0.15 * 49)
    assert torch.equal(cells.repeat_interleave(32, 1).repeat_interleave(32, 2), m[:, 0])


@settings(max_examples=20, deadline=None)
@given(ratio=st.floats(0.0, 0.95), seed=st.integers(0, 2**31))
def test_focal_mask_area(ratio, seed):
    m = focal_mask((4, 3, 32, 32), ratio, gen(seed))
    side = round(32 * math.sqrt(1 - ratio))
    masked = m.float().flatten(2).mean(-1)
    assert torch.allclose(masked, torch.full_like(masked, 1 - side * side / 1024))
    assert torch.all((masked - ratio).abs() <= 2 * 0.5 / 32 + 1e-6)  # side rounded by at most half a pixel
    kept = ~m  # the kept window is one axis-aligned rectangle of side x side
    rows, cols = kept.any(-1), kept.any(-2)
    assert torch.all(rows.sum(-1) == side) and torch.all(cols.sum(-1) == side)


def test_ratio_zero_masks_are_identity():
    x = batch()
    cfg = MaskConfig(ratio=0.0, noise_std=0.3)
    out = mscn_mask(x, cfg, gen(2))
    assert not out.mask.any() and torch.equal(out.images, x)
    assert not grid_mask((2, 3, 32, 32), 0.0, gen()).any()
    assert not focal_mask((2, 3, 32, 32), 0.0, gen()).any()


def test_channel_independence_and_focal_choice():
    x = batch(b=64)
    always = mscn_mask(x, MaskConfig(p_ind=1.0, p_focal=0.0, ratio=0.3, noise_std=0.0), gen(3))
    differ = (always.mask != always.mask[:, :1]).flatten(1).any(1)
    assert differ.float().mean() > 0.9  # independent per channel
    never = mscn_mask(x, MaskConfig(p_ind=0.0, p_focal=0.5, ratio=0.3, noise_std=0.0), gen(3))
    assert torch.equal(never.mask, never.mask[:, :1].expand_as(never.mask))  # shared by the channels
    assert 10 < never.focal.sum() < 54
    focal_rows = never.mask[never.focal, 0]
    side = round(32 * math.sqrt(0.7))
    assert torch.all((~focal_rows).flatten(1).sum(1) == side * side)


def test_noise_fill_and_p_apply():
    x = batch(b=64)
    out = mscn_mask(x, MaskConfig(p_apply=0.5, fill=0.25, noise_std=0.1, ratio=0.3), gen(4))
    assert 16 < out.applied.sum() < 48
    assert not out.mask[~out.applied].any()
    assert torch.equal(out.images[~out.mask], x[~out.mask])
    filled = out.images[out.mask]
    assert abs(filled.mean().item() - 0.25) < 0.01 and abs(filled.std().item() - 0.1) < 0.01


def test_num_masks_layout_and_seeding():
    x = batch(b=4)
    out = mscn_mask(x, MaskConfig(noise_std=0.0, ratio=0.5), gen(5), num_masks=3)
    assert out.images.shape == (12, 3, 32, 32) and out.mask.shape == (12, 3, 32, 32)
    versions = out.images.view(3, 4, 3, 32, 32)
    for k in range(3):  # mask-major: rows k*B..(k+1)*B are masked versions of x
        unmasked = ~out.mask.view(3, 4, 3, 32, 32)[k]
        assert torch.equal(versions[k][unmasked], x[unmasked])
    assert not torch.equal(out.mask[:4], out.mask[4:8])
    again = mscn_mask(x, MaskConfig(noise_std=0.0, ratio=0.5), gen(5), num_masks=3)
    assert torch.equal(out.images, again.images)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_masker_two_branches(device, dtype):
    v1, v2 = batch(b=8, device=device, dtype=dtype), batch(b=8, device=device, dtype=dtype).flip(-1)
    masker = MSCNMasker(num_masks=2)
    out = masker(v1, v2, gen(6, device))
    for view in out:
        assert view.images.shape == (16, 3, 32, 32) and view.images.dtype == dtype
        assert view.images.device == v1.device
    assert out.view1.applied.all()  # branch A: p_apply 1.0
    hp = high_pass(v1)
    assert torch.equal(out.view1.images[:8][~out.view1.mask[:8]], hp[~out.view1.mask[:8]])
    a, b = masker(v1, v2, gen(6, device)), masker(v1, v2, gen(7, device))
    assert torch.equal(a.view1.images, out.view1.images) and not torch.equal(a.view2.mask, b.view2.mask)


def test_masker_config_from_mappings_and_errors():
    m = build_corruption("mscn", branch_a={"ratio": 0.3}, num_masks=2)
    assert m.branch_a.ratio == 0.3 and m.branch_a.noise_std == 0.18 and m.branch_b.p_apply == 0.5
    with pytest.raises(UserError, match="branch_b has no field 'size'"):
        build_corruption("mscn", branch_b={"size": 3})
    with pytest.raises(ValueError, match="ratio"):
        MaskConfig(ratio=1.5)
    with pytest.raises(ValueError, match="p_focal"):
        MaskConfig(p_focal=-0.1)
    with pytest.raises(ValueError, match="num_masks"):
        MSCNMasker(num_masks=0)
    with pytest.raises(ValueError, match="same shape"):
        MSCNMasker()(batch(b=2), batch(b=3), gen())


# --- focal windows sized as MSN's focal crops (issue #17) -------------------------------------------------------


def _kept_boxes(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per (image, channel) of a focal mask: kept-window height, width, and whether the kept pixels fill that box."""
    kept = ~mask
    h, w = kept.any(-1).sum(-1), kept.any(-2).sum(-1)
    return h, w, kept.flatten(2).sum(-1) == h * w


def test_focal_scale_windows_cover_msn_area_range_at_32px():
    """focal_scale (0.05, 0.3): a crop of 5-30 % of the image, aspect 3/4-4/3, kept unresized (MSN's focal views)."""
    m = focal_mask((256, 3, 32, 32), 0.15, gen(7), scale=(0.05, 0.3))
    h, w, rect = _kept_boxes(m)
    assert rect.all()  # one axis-aligned rectangle per (image, channel)
    area = (h * w).float() / 1024
    # rounding each side by half a pixel moves the area by at most ~(h + w) / 2 / 1024
    slack = (h + w).float() / 2048 + 1e-6
    assert torch.all(area >= 0.05 - slack) and torch.all(area <= 0.3 + slack)
    aspect = w.float() / h.float()
    assert torch.all(aspect >= 3 / 4 - 1 / h) and torch.all(aspect <= 4 / 3 + 1 / h)
    assert area.min() < 0.09 and area.max() > 0.25  # drawn over the whole range, per mask
    assert 6 <= h.min() and h.max() <= 20  # sides 6-20 px at 32 px (squares 7-18), vs 30 px with the old fixed window
    shared = mscn_mask(batch(b=64), MaskConfig(p_focal=1.0, p_ind=0.0, focal_scale=(0.05, 0.3), noise_std=0.0), gen(2))
    assert torch.equal(shared.mask, shared.mask[:, :1].expand_as(shared.mask))  # shared masks share the window size
    own = mscn_mask(batch(b=64), MaskConfig(p_focal=1.0, p_ind=1.0, focal_scale=(0.05, 0.3), noise_std=0.0), gen(2))
    sizes = own.mask.flatten(2).sum(-1)
    assert (sizes != sizes[:, :1]).any(1).float().mean() > 0.9  # channel-independent windows differ in size too


def test_focal_scale_leaves_other_configs_streams_alone_and_bad_values_fail():
    x = batch(b=8)
    before = mscn_mask(x, MaskConfig(p_focal=0.5, noise_std=0.1), gen(3))
    again = mscn_mask(x, MaskConfig(p_focal=0.5, noise_std=0.1, focal_scale=None), gen(3))
    assert torch.equal(before.images, again.images)
    assert MaskConfig(focal_scale=[0.05, 0.3]).focal_scale == (0.05, 0.3)  # YAML lists become tuples
    for bad in ([0.0, 0.3], [0.3, 0.05], [0.1], "big"):
        with pytest.raises(ValueError, match="focal_scale"):
            MaskConfig(focal_scale=bad)
    with pytest.raises(ValueError, match="focal_side and focal_scale"):
        MaskConfig(focal_side=10, focal_scale=(0.05, 0.3))
    with pytest.raises(UserError, match="focal_scale"):
        build_corruption("mscn", branch_a={"focal_scale": [0.5, 2]})
