"""Corruptions of OverlayAE and ContextPatchAE, the shared checks and the registry."""

from __future__ import annotations

import importlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unveil.corruptions import (
    CORRUPTIONS,
    CorruptionError,
    autoaugment,
    build_corruption,
    context_patches,
    neighbour_index,
    paired_overlay,
    random_pixel_mask,
)
from unveil.corruptions.context import NEIGHBOUR_OFFSETS
from unveil.errors import UserError

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.float32, torch.bfloat16]


def gen(seed: int = 0, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def batch(b: int = 6, size: int = 32, dtype=torch.float32, device: str = "cpu", seed: int = 123) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=gen(seed), dtype=torch.float32).to(device=device, dtype=dtype)


# --- paired overlay -----------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("partner", ["perm", "derangement", "with_replacement"])
def test_overlay_formula_shapes_dtypes(device, dtype, partner):
    x = batch(dtype=dtype, device=device)
    out = paired_overlay(x, 0.3, gen(1, device), partner)
    assert out.images.shape == x.shape and out.images.dtype == dtype and out.images.device == x.device
    assert out.partner.dtype == torch.long and out.partner.shape == (6,)
    assert out.alpha.shape == (6,) and torch.all(out.alpha == 0.3)
    ref = 0.3 * x.float()[out.partner] + 0.7 * x.float()
    tol = 1e-6 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.images.float(), ref, atol=tol, rtol=0)


def test_overlay_partner_modes():
    perm = paired_overlay(batch(b=16), 0.2, gen(3), "perm").partner
    assert sorted(perm.tolist()) == list(range(16))
    for seed in range(20):
        der = paired_overlay(batch(b=5), 0.2, gen(seed), "derangement").partner
        assert sorted(der.tolist()) == list(range(5)) and torch.all(der != torch.arange(5))
    single = paired_overlay(batch(b=1), 0.2, gen(0), "derangement")
    assert single.partner.tolist() == [0]


def test_overlay_alpha_zero_is_identity_and_range_sampling():
    x = batch()
    assert torch.equal(paired_overlay(x, 0.0, gen()).images, x)
    out = paired_overlay(batch(b=64), (0.1, 0.4), gen(5))
    assert torch.all((out.alpha >= 0.1) & (out.alpha < 0.4)) and out.alpha.std() > 0.02


@pytest.mark.parametrize("alpha", [0.5, -0.1, 0.7, (0.1, 0.5), (0.3, 0.2), float("nan"), "x"])
def test_overlay_rejects_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        paired_overlay(batch(), alpha, gen())
    with pytest.raises(UserError, match="alpha"):
        build_corruption("overlay", alpha=alpha)


def test_overlay_rejects_unknown_partner_and_wrong_generator():
    with pytest.raises(CorruptionError, match="partner"):
        paired_overlay(batch(), 0.3, gen(), "nearest")
    with pytest.raises(CorruptionError, match="torch.Generator"):
        paired_overlay(batch(), 0.3, 0)
    with pytest.raises(CorruptionError, match="batch of images"):
        paired_overlay(torch.rand(3, 8, 8), 0.3, gen())
    if torch.cuda.is_available():
        with pytest.raises(CorruptionError, match="generator is on"):
            paired_overlay(batch(), 0.3, gen(0, "cuda"))


def test_generator_device_must_match_the_batch():
    from unveil.corruptions._common import check_generator

    with pytest.raises(CorruptionError, match="generator is on cpu but the batch is on cuda:0"):
        check_generator(gen(), torch.device("cuda:0"), "paired_overlay")
    g = gen()
    assert check_generator(g, torch.device("cpu"), "paired_overlay") is g


def test_overlay_seeding():
    x = batch(b=16)
    a = paired_overlay(x, (0.0, 0.4), gen(7))
    b = paired_overlay(x, (0.0, 0.4), gen(7))
    c = paired_overlay(x, (0.0, 0.4), gen(8))
    assert torch.equal(a.images, b.images) and torch.equal(a.partner, b.partner)
    assert not torch.equal(a.images, c.images)


# --- random pixel mask --------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_pixel_mask_spatial_all_channels(device, dtype):
    x = batch(dtype=dtype, device=device) + 0.5  # no zeros in the clean batch
    out = random_pixel_mask(x, 0.3, gen(0, device), fill=0.0)
    assert out.images.dtype == dtype and out.images.device == x.device
    assert out.mask.shape == (6, 1, 32, 32) and out.mask.dtype == torch.bool
    zero = out.images == 0
    assert torch.equal(zero, out.mask.expand_as(zero))  # every channel of a masked location, nothing else


@settings(max_examples=15, deadline=None)
@given(ratio=st.floats(0.0, 1.0), seed=st.integers(0, 2**31))
def test_pixel_mask_ratio(ratio, seed):
    x = batch(b=8)
    out = random_pixel_mask(x, ratio, gen(seed))
    measured = out.mask.float().mean().item()
    assert abs(measured - ratio) < 0.03  # 8192 Bernoulli draws: 5 sigma < 0.03
    if ratio == 0.0:
        assert torch.equal(out.images, x)
    if ratio == 1.0:
        assert torch.all(out.images == 0)


@pytest.mark.parametrize("ratio", [1.5, -0.01, float("nan")])
def test_pixel_mask_rejects_bad_ratio(ratio):
    with pytest.raises(ValueError, match="ratio"):
        random_pixel_mask(batch(), ratio, gen())


def test_pixel_mask_seeding_and_dtype_independence():
    x = batch()
    a = random_pixel_mask(x, 0.1, gen(4)).mask
    assert torch.equal(a, random_pixel_mask(x.bfloat16(), 0.1, gen(4)).mask)
    assert not torch.equal(a, random_pixel_mask(x, 0.1, gen(5)).mask)


# --- AutoAugment ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.bfloat16])
def test_autoaugment_dtype_shape_and_seeding(dtype):
    x = batch(b=16)
    x = (x * 255).round().to(torch.uint8) if dtype == torch.uint8 else x.to(dtype)
    a = autoaugment(x, gen(1))
    assert a.shape == x.shape and a.dtype == dtype
    assert torch.equal(a, autoaugment(x, gen(1)))
    assert not torch.equal(a, autoaugment(x, gen(2)))
    changed = (a.float() != x.float()).flatten(1).any(1)
    assert changed.sum() >= 8  # most images get at least one op
    if dtype != torch.uint8:
        assert a.float().min() >= 0 and a.float().max() <= 1


def test_autoaugment_does_not_touch_global_rng():
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    autoaugment(batch(b=8), gen(0), policy="cifar10")
    assert torch.equal(before, torch.random.get_rng_state())


def test_autoaugment_matches_torchvision_on_one_forced_subpolicy(monkeypatch):
    """With every image forced onto one unsigned sub-policy, the result equals torchvision's."""
    from torchvision.transforms import AutoAugment, AutoAugmentPolicy

    aa_mod = importlib.import_module("unveil.corruptions.autoaugment")

    x = (batch(b=4) * 255).round().to(torch.uint8)
    forced = [(("Posterize", 1.0, 4), ("Equalize", 1.0, None))]
    ours = aa_mod._policy("svhn")
    monkeypatch.setattr(ours, "policies", forced)
    got = aa_mod.autoaugment(x, gen(0), policy="svhn")
    tv = AutoAugment(AutoAugmentPolicy.SVHN)
    tv.policies = forced
    assert torch.equal(got, tv(x))


def test_autoaugment_rejects_bad_policy():
    with pytest.raises(UserError, match="policy"):
        build_corruption("autoaugment", policy="cifar100")


# --- context patches ------------------------------------------------------------------------------


def naive_neighbours(grid: int) -> list[list[int]]:
    table = []
    for r in range(grid):
        for c in range(grid):
            row = []
            for dr, dc in NEIGHBOUR_OFFSETS:
                rr, cc = r + dr, c + dc
                row.append(rr * grid + cc if 0 <= rr < grid and 0 <= cc < grid else grid * grid)
            table.append(row)
    return table


@pytest.mark.parametrize("grid", [1, 2, 3, 4, 5])
def test_neighbour_index_matches_naive(grid):
    assert neighbour_index(grid).tolist() == naive_neighbours(grid)


def test_neighbour_index_corners_and_edges():
    t = neighbour_index(4)
    z = 16
    assert t[0].tolist() == [z, z, z, z, 1, z, 4, 5]  # top-left corner: NW N NE W E SW S SE
    assert t[15].tolist() == [10, 11, z, 14, z, z, z, z]  # bottom-right corner
    assert t[1].tolist() == [z, z, z, 0, 2, 4, 5, 6]  # top edge
    assert t[5].tolist() == [0, 1, 2, 4, 6, 8, 9, 10]  # interior


@pytest.mark.parametrize("dtype", DTYPES)
def test_context_patches_match_naive_loop(dtype):
    x = batch(b=2, dtype=dtype)
    out = context_patches(x, grid=4)
    assert out.patches.shape == (2, 16, 3, 8, 8) and out.neighbours.shape == (2, 16, 8, 3, 8, 8)
    assert out.neighbours.dtype == dtype
    for b in range(2):
        for r in range(4):
            for c in range(4):
                k = r * 4 + c
                assert torch.equal(out.patches[b, k], x[b, :, 8 * r : 8 * r + 8, 8 * c : 8 * c + 8])
                for n, (dr, dc) in enumerate(NEIGHBOUR_OFFSETS):
                    rr, cc = r + dr, c + dc
                    if 0 <= rr < 4 and 0 <= cc < 4:
                        want = x[b, :, 8 * rr : 8 * rr + 8, 8 * cc : 8 * cc + 8]
                    else:
                        want = torch.zeros(3, 8, 8, dtype=dtype)
                    assert torch.equal(out.neighbours[b, k, n], want)


def test_context_patches_rejects_grid_not_dividing():
    with pytest.raises(ValueError, match="grid=5 must divide"):
        context_patches(batch(), grid=5)
    with pytest.raises(UserError, match="grid"):
        build_corruption("context_patches", grid=0)


# --- registry ------------------------------------------------------------------------------------


def test_registry_builds_every_corruption_with_defaults():
    assert {"overlay", "pixel_mask", "autoaugment", "context_patches", "mscn", "high_pass", "token_mask",
            "unmix", "mix_between_branches", "mix_within_batch"} <= set(CORRUPTIONS)
    x = batch(b=4)
    for name in CORRUPTIONS:
        params = {"patch_size": 8, "min_block": 2} if name == "token_mask" else {}
        c = build_corruption(name, **params)
        out = c(x, x.flip(-1), gen()) if c.two_views else c(x, gen())
        assert out is not None


def test_registry_errors_name_the_problem():
    with pytest.raises(UserError, match="unknown corruption 'blur'.*overlay"):
        build_corruption("blur")
    with pytest.raises(UserError, match="no parameter 'beta'.*alpha"):
        build_corruption("overlay", beta=1.0)


def test_wrappers_are_frozen_and_accept_yaml_lists():
    c = build_corruption("overlay", alpha=[0.1, 0.3], partner="derangement")
    assert c.alpha == (0.1, 0.3)
    with pytest.raises(AttributeError):
        c.alpha = 0.2
