"""Token masking (MV-MAE) and image mixtures (Un-Mix, MixDet), plus the generator-seeded Beta."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from unveil.corruptions import (
    block_token_masking,
    box_masks,
    build_corruption,
    cutmix_box,
    mix_between_branches,
    mix_within_batch,
    random_masking,
    random_token_masking,
    sample_beta,
    unmix,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def gen(seed: int = 0, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def batch(b: int = 6, size: int = 32, dtype=torch.float32, device: str = "cpu", seed: int = 11) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=gen(seed)).to(device=device, dtype=dtype)


# --- token masking -------------------------------------------------------------------------------


def check_token_mask(m, b: int, n: int, n_keep: int) -> None:
    assert m.ids_keep.shape == (b, n_keep) and m.ids_restore.shape == (b, n) and m.mask.shape == (b, n)
    assert torch.all(m.mask.sum(1) == n - n_keep)
    kept = torch.zeros(b, n).scatter_(1, m.ids_keep, 1.0)
    assert torch.equal(kept, 1 - m.mask)  # ids_keep are exactly the unmasked tokens
    ids_shuffle = torch.argsort(m.ids_restore, dim=1)
    assert torch.equal(ids_shuffle[:, :n_keep], m.ids_keep)  # MAE's un-shuffle bookkeeping


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 200), ratio=st.floats(0.0, 0.99), seed=st.integers(0, 2**31))
def test_random_token_masking_exact_count(n, ratio, seed):
    m = random_token_masking(3, n, ratio, gen(seed))
    check_token_mask(m, 3, n, int(n * (1 - ratio) + 1e-6))


def test_random_token_masking_mae_counts_and_seeding():
    m = random_token_masking(2, 196, 0.8, gen(0))
    assert m.ids_keep.shape[1] == 39  # docs/design.md 4.2: 39 of 196 kept
    assert random_token_masking(2, 100, 0.9, gen(0)).ids_keep.shape[1] == 10  # no float round-off loss
    assert torch.equal(m.mask, random_token_masking(2, 196, 0.8, gen(0)).mask)
    assert not torch.equal(m.mask, random_token_masking(2, 196, 0.8, gen(1)).mask)
    assert torch.all(random_token_masking(2, 16, 0.0, gen(0)).mask == 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_random_masking_gathers_kept_tokens(dtype):
    x = torch.randn(4, 64, 8).to(dtype)
    out = random_masking(x, 0.75, gen(3))
    assert out.kept.shape == (4, 16, 8) and out.kept.dtype == dtype
    for b in range(4):
        assert torch.equal(out.kept[b], x[b, out.ids_keep[b]])


def test_token_masking_errors():
    with pytest.raises(ValueError, match="mask_ratio"):
        random_token_masking(2, 16, 1.5, gen())
    with pytest.raises(ValueError, match="generator"):
        random_token_masking(2, 16, 0.5, None)
    with pytest.raises(ValueError, match="patch_size 5 must divide"):
        build_corruption("token_mask", patch_size=5)(batch(), gen())


@settings(max_examples=10, deadline=None)
@given(ratio=st.floats(0.1, 0.9), seed=st.integers(0, 2**31))
def test_block_token_masking_exact_count_and_blocky(ratio, seed):
    m = block_token_masking(8, 14, ratio, gen(seed))
    check_token_mask(m, 8, 196, int(196 * (1 - ratio) + 1e-6))


def test_block_masks_are_blocks():
    m = block_token_masking(16, 14, 0.4, gen(0)).mask.view(16, 14, 14)
    r = random_token_masking(16, 196, 0.4, gen(0)).mask.view(16, 14, 14)

    def same_neighbour(mask):  # fraction of horizontally adjacent token pairs with equal state
        return (mask[:, :, 1:] == mask[:, :, :-1]).float().mean()

    assert same_neighbour(m) > same_neighbour(r) + 0.2


# --- boxes, Beta ---------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@example(lam=5.960464477539063e-08, h=1, w=2, seed=0, nonempty=False)  # float32 made 1 - lam == 1.0 here
@given(lam=st.floats(0.0, 1.0), h=st.integers(1, 40), w=st.integers(1, 40), seed=st.integers(0, 2**31),
       nonempty=st.booleans())
def test_cutmix_box_area_matches_lam(lam, h, w, seed, nonempty):
    box, lam_c = cutmix_box(h, w, lam, gen(seed), nonempty=nonempty)
    y1, y2, x1, x2 = box.tolist()
    assert 0 <= y1 <= y2 <= h and 0 <= x1 <= x2 <= w
    inside, outside = box_masks(box, h, w)
    assert inside.shape == (1, 1, h, w) and torch.equal(outside, ~inside)
    assert inside.sum().item() == (y2 - y1) * (x2 - x1)
    assert abs(lam_c.item() - (1 - inside.float().mean().item())) < 1e-6
    half_h, half_w = int(h * (1 - lam) ** 0.5) // 2, int(w * (1 - lam) ** 0.5) // 2
    assert y2 - y1 <= max(2 * half_h, int(nonempty)) and x2 - x1 <= max(2 * half_w, int(nonempty))
    if nonempty:
        assert y2 > y1 and x2 > x1


def test_cutmix_box_side_matches_python_arithmetic_where_float32_rounds_up():
    # 25 * sqrt(1 - 0.9424) = 5.9999... in Python (Un-Mix: int() -> 5, halves of 2); float32 rounds to 6.0 (halves of 3)
    sides = {tuple(cutmix_box(25, 25, 0.9424, gen(seed)).box.diff()[::2].tolist()) for seed in range(30)}
    assert max(max(s) for s in sides) == 4, sides


def test_cutmix_box_unclipped_size_follows_unmix():
    sizes = set()
    for seed in range(200):
        y1, y2, x1, x2 = cutmix_box(32, 32, 0.5, gen(seed)).box.tolist()
        sizes.add((y2 - y1, x2 - x1))
    assert (22, 22) in sizes  # int(32 * sqrt(0.5)) = 22, two halves of 11 when not clipped
    assert all(hh <= 22 and ww <= 22 for hh, ww in sizes) and len(sizes) > 5  # clipped near the edges


@pytest.mark.parametrize("a", [0.5, 1.0, 2.0])
def test_sample_beta_moments(a):
    s = sample_beta(a, a, (20000,), gen(1))
    assert torch.all((s >= 0) & (s <= 1))
    assert abs(s.mean().item() - 0.5) < 0.01
    assert abs(s.var().item() - 1 / (4 * (2 * a + 1))) < 0.01


# --- mixtures ------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_unmix_both_kinds(device, dtype):
    x = batch(dtype=dtype, device=device)
    kinds = set()
    for seed in range(12):
        out = unmix(x, gen(seed, device), prob=0.5)
        assert out.images.shape == x.shape and out.images.dtype == dtype and out.images.device == x.device
        kinds.add(out.kind)
        rev = x.flip(0)
        if out.kind == "global":
            assert out.box is None
            ref = out.lam * x.float() + (1 - out.lam) * rev.float()
            torch.testing.assert_close(out.images.float(), ref, atol=2e-2 if dtype == torch.bfloat16 else 1e-6, rtol=0)
        else:
            inside, _ = box_masks(out.box, 32, 32)
            assert torch.equal(out.images, torch.where(inside, rev, x))
            assert abs(out.lam.item() - (1 - inside.float().mean().item())) < 1e-6
    assert kinds == {"global", "region"}


def test_unmix_prob_extremes_and_seeding():
    x = batch()
    assert unmix(x, gen(0), prob=1.0).kind == "global" and unmix(x, gen(0), prob=0.0).kind == "region"
    a, b = unmix(x, gen(3), prob=0.0), unmix(x, gen(3), prob=0.0)
    assert torch.equal(a.images, b.images) and torch.equal(a.box, b.box)
    with pytest.raises(ValueError, match="prob"):
        unmix(x, gen(), prob=1.5)
    with pytest.raises(ValueError, match="beta"):
        unmix(x, gen(), beta=0)


@pytest.mark.parametrize("device", DEVICES)
def test_mix_between_branches_swaps_one_region(device):
    x1, x2 = batch(device=device), batch(device=device, seed=12)
    out = mix_between_branches(x1, x2, gen(2, device))
    inside, outside = box_masks(out.box, 32, 32)
    assert inside.any()  # nonempty by default
    assert torch.equal(out.x1, torch.where(inside, x2, x1)) and torch.equal(out.x2, torch.where(inside, x1, x2))
    assert abs(out.lam.item() - outside.float().mean().item()) < 1e-6


def test_mix_within_batch_follows_official_code():
    x1, x2 = batch(b=5), batch(b=5, seed=13)
    for seed in range(10):
        out = mix_within_batch(x1, x2, gen(seed))
        in1, _ = box_masks(out.box1, 32, 32)
        in2, _ = box_masks(out.box2, 32, 32)
        assert torch.equal(out.mixed1, torch.where(in1, x1.flip(0), x1))
        assert torch.equal(out.mixed2, torch.where(in2, x2.flip(0), x2))
        assert abs(out.lam1.item() - (1 - in1.float().mean().item())) < 1e-6
        assert in1.any() and in2.any()
    with pytest.raises(ValueError, match="same shape"):
        mix_within_batch(x1, batch(b=4), gen())


def test_mixing_seeded():
    x1, x2 = batch(), batch(seed=5)
    a, b, c = (mix_within_batch(x1, x2, gen(s)) for s in (1, 1, 2))
    assert torch.equal(a.mixed1, b.mixed1) and torch.equal(a.box2, b.box2)
    assert not (torch.equal(a.box1, c.box1) and torch.equal(a.box2, c.box2))
