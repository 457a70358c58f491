"""Batched SSL views: shapes, seeding, and each op against torchvision on small tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from unveil.errors import UserError
from unveil.views import (
    PRESETS,
    ViewConfig,
    ViewPipeline,
    default_preset_for,
    eval_transform,
    ops,
    view_preset,
)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _images(b: int = 6, h: int = 20, w: int = 20, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _gen(seed: int = 0, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _plain(size: int, **kw) -> ViewConfig:
    """No randomness at all: full-image crop, no flip, no colour, no blur."""
    base = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, gray_p=0.0, blur_p=0.0)
    return ViewConfig(size=size, **{**base, **kw})


def _f(x: torch.Tensor) -> torch.Tensor:
    return TF.to_dtype(x, torch.float32, scale=True)


def _ref_normalize(x: torch.Tensor) -> torch.Tensor:
    return TF.normalize(x, list(MEAN), list(STD))


# --- pipeline -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_shape_dtype_device(name: str) -> None:
    out = ViewPipeline(view_preset(name, 16))(_images(4, 24, 20), _gen())
    assert out.shape == (4, 3, 16, 16) and out.dtype == torch.float32 and out.device.type == "cpu"
    assert torch.isfinite(out).all()


def test_float_and_one_channel_inputs() -> None:
    pipe = ViewPipeline(view_preset("cifar", 16))
    u8 = _images(3, 16, 16)
    torch.testing.assert_close(pipe(u8, _gen(1)), pipe(u8.float() / 255, _gen(1)), atol=1e-5, rtol=0)
    gray = pipe(u8[:, :1], _gen(2))
    assert gray.shape == (3, 3, 16, 16)
    assert torch.equal(gray, pipe(u8[:, :1].repeat(1, 3, 1, 1), _gen(2)))


def test_same_seed_same_views_different_seed_differs() -> None:
    pipe = ViewPipeline(view_preset("simclr", 96, blur_p=0.5))
    x = _images(4, 100, 100)
    a, b, c = pipe(x, _gen(7)), pipe(x, _gen(7)), pipe(x, _gen(8))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    g = _gen(7)
    first, second = pipe(x, g), pipe(x, g)  # two views from one generator differ
    assert torch.equal(first, a) and not torch.allclose(first, second)


def test_no_randomness_is_identity_or_plain_resize() -> None:
    x = _images(3, 20, 20)
    x_float = x.float() / 255
    same = ViewPipeline(_plain(20))(x, _gen())
    torch.testing.assert_close(same, _ref_normalize(x_float), atol=1e-6, rtol=0)
    for size in (12, 28):  # down- and up-sampling: bilinear, no antialias
        out = ViewPipeline(_plain(size))(x, _gen())
        ref = _ref_normalize(TF.resize(x_float, [size, size], antialias=False))
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    raw = ViewPipeline(_plain(20, normalize=False))(x, _gen())
    torch.testing.assert_close(raw, x_float, atol=1e-6, rtol=0)


def test_flip_one_equals_torch_flip() -> None:
    x = _images(3, 20, 20)
    flipped = ViewPipeline(_plain(20, flip_p=1.0, normalize=False))(x, _gen())
    torch.testing.assert_close(flipped, torch.flip(x.float() / 255, dims=[-1]), atol=1e-6, rtol=0)


def test_pipeline_never_writes_into_its_input() -> None:
    x = torch.rand(2, 3, 16, 16)
    before = x.clone()
    out = ViewPipeline(_plain(16, jitter_p=1.0, gray_p=1.0))(x, _gen())
    assert torch.equal(x, before) and out.data_ptr() != x.data_ptr()


def test_bf16_autocast_and_channels_last_give_the_same_float32_views() -> None:
    pipe = ViewPipeline(view_preset("simclr", 24, blur_p=1.0))
    x = _images(4, 28, 28)
    ref = pipe(x, _gen(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = pipe(x, _gen(3))
    assert amp.dtype == torch.float32
    torch.testing.assert_close(amp, ref, atol=1e-5, rtol=0)
    cl = pipe(x.contiguous(memory_format=torch.channels_last), _gen(3))
    torch.testing.assert_close(cl, ref, atol=1e-5, rtol=0)


@CUDA
def test_cuda_generator_on_the_images_device() -> None:
    pipe = ViewPipeline(view_preset("simclr", 32, blur_p=1.0))
    x = _images(4, 40, 40).cuda()
    a, b = pipe(x, _gen(5, "cuda")), pipe(x, _gen(5, "cuda"))
    assert a.device.type == "cuda" and torch.equal(a, b)


# --- crop -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("h", "w", "scale", "ratio"), [(32, 32, (0.08, 1.0), (3 / 4, 4 / 3)), (40, 24, (0.2, 0.6), (0.5, 2.0))])
def test_crop_boxes_respect_scale_and_ratio(h: int, w: int, scale: tuple, ratio: tuple) -> None:
    boxes = ops.sample_crop_boxes(4000, h, w, scale, ratio, _gen())
    top, left, bh, bw = boxes.unbind(1)
    assert torch.equal(boxes, boxes.round()) and (bh >= 1).all() and (bw >= 1).all()
    assert (top >= 0).all() and (left >= 0).all() and (top + bh <= h).all() and (left + bw <= w).all()
    # Rounding w and h to whole pixels moves area and ratio by at most ~half a pixel per side.
    area = bh * bw / (h * w)
    slack = (bh + bw) / (h * w)
    assert (area >= scale[0] - slack).all() and (area <= scale[1] + slack).all()
    aspect = bw / bh
    assert (aspect >= ratio[0] * (1 - 0.5 / bw) / (1 + 0.5 / bh) - 1e-6).all()
    assert (aspect <= ratio[1] * (1 + 0.5 / bw) / (1 - 0.5 / bh) + 1e-6).all()
    assert area.min() < scale[0] + 0.1 * (scale[1] - scale[0]) < area.max()  # the range is explored
    assert left.unique().numel() > 1 and top.unique().numel() > 1


def test_crop_box_distribution_matches_torchvision_get_params() -> None:
    from torchvision.transforms import RandomResizedCrop

    n, h, w, scale, ratio = 3000, 30, 40, (0.08, 1.0), (3 / 4, 4 / 3)
    ours = ops.sample_crop_boxes(n, h, w, scale, ratio, _gen(4))
    with torch.random.fork_rng():
        torch.manual_seed(4)
        get = RandomResizedCrop.get_params
        theirs = torch.tensor([get(torch.empty(1, h, w), scale, ratio) for _ in range(n)], dtype=torch.float32)
    # area fraction, log aspect ratio, relative top offset
    stats = [(b[:, 2] * b[:, 3] / (h * w), (b[:, 3] / b[:, 2]).log(), b[:, 0] / h) for b in (ours, theirs)]
    for mine, ref in zip(*stats):  # same distribution: means within 5 standard errors
        assert abs(mine.mean() - ref.mean()) < 5 * ref.std() * (2 / n) ** 0.5


def test_crop_box_fallback_is_torchvision_centre_crop() -> None:
    # A ratio of 2..3 never fits 90 % of a square: torchvision falls back to a centred 2:1 box.
    boxes = ops.sample_crop_boxes(5, 30, 30, (0.9, 1.0), (2.0, 3.0), _gen())
    assert torch.equal(boxes, torch.tensor([[7.0, 0.0, 15.0, 30.0]]).expand(5, 4))


def test_resized_crop_matches_torchvision_per_sample() -> None:
    x = torch.rand(6, 3, 20, 24)
    boxes = ops.sample_crop_boxes(6, 20, 24, (0.08, 1.0), (3 / 4, 4 / 3), _gen(1))
    flip = torch.tensor([True, False, True, False, True, False])
    out = ops.resized_crop(x, boxes, 16, flip)
    for i in range(6):
        top, left, h, w = (int(v) for v in boxes[i])
        ref = TF.resized_crop(x[i], top, left, h, w, [16, 16], antialias=False)
        ref = ref.flip(-1) if flip[i] else ref
        torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=0)


# --- colour ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (ops.adjust_brightness, TF.adjust_brightness),
        (ops.adjust_contrast, TF.adjust_contrast),
        (ops.adjust_saturation, TF.adjust_saturation),
    ],
)
def test_brightness_contrast_saturation_match_torchvision(ours, theirs) -> None:
    x = torch.rand(4, 3, 12, 10)
    factors = torch.tensor([0.0, 0.4, 1.0, 1.8])
    out = ours(x, factors)
    for i, f in enumerate(factors.tolist()):
        torch.testing.assert_close(out[i], theirs(x[i], f), atol=1e-6, rtol=0)


def test_grayscale_matches_torchvision() -> None:
    x = torch.rand(3, 3, 8, 8)
    torch.testing.assert_close(ops.rgb_to_grayscale(x), TF.rgb_to_grayscale(x), atol=1e-7, rtol=0)
    torch.testing.assert_close(ops.random_grayscale(x, 1.0, _gen()), TF.rgb_to_grayscale(x, 3), atol=1e-7, rtol=0)
    assert torch.equal(ops.random_grayscale(x, 0.0, _gen()), x)


HUE_TOL = 1e-5  # documented in ops.adjust_hue: fused HSV round trip vs torchvision's


def test_hue_zero_is_identity_and_shift_matches_torchvision() -> None:
    x = torch.rand(6, 3, 10, 10)
    x[:, :, :3] = (x[:, :, :3] * 255).round() / 255  # quantised values: ties for the max channel
    x[:, :, 3:5] = x[:, :1, 3:5]  # grey pixels
    torch.testing.assert_close(ops.adjust_hue(x, torch.zeros(6)), x, atol=HUE_TOL, rtol=0)
    shifts = [-0.5, -0.27, -0.05, 0.1, 0.33, 0.5]
    out = ops.adjust_hue(x, torch.tensor(shifts))
    for i, s in enumerate(shifts):
        torch.testing.assert_close(out[i], TF.adjust_hue(x[i], s), atol=HUE_TOL, rtol=0)


def test_color_jitter_factors_and_probability() -> None:
    x = torch.rand(64, 3, 6, 6) * 0.5  # no clamping at 1 with brightness <= 1.5
    out = ops.color_jitter(x, 0.5, 0.0, 0.0, 0.0, p=1.0, generator=_gen())
    factor = (out / x).flatten(1)
    assert torch.allclose(factor, factor[:, :1], atol=1e-4)  # one factor per sample
    assert factor.min() >= 0.5 - 1e-5 and factor.max() <= 1.5 + 1e-5 and factor[:, 0].std() > 0.1
    assert torch.equal(ops.color_jitter(x, 0.4, 0.4, 0.4, 0.0, p=0.0, generator=_gen()), x)
    torch.testing.assert_close(ops.color_jitter(x, 0.4, 0.4, 0.4, 0.1, p=0.0, generator=_gen()), x, atol=HUE_TOL, rtol=0)
    half = ops.color_jitter(x, 0.8, 0.8, 0.8, 0.2, p=0.5, generator=_gen())
    changed = (half - x).flatten(1).abs().amax(1) > 1e-4
    assert 10 < changed.sum() < 54


# --- blur, normalize --------------------------------------------------------------------------------


@pytest.mark.parametrize(("kernel", "sigmas"), [(3, [0.1, 0.7]), (9, [0.5, 2.0]), (23, [1.0, 2.0])])
def test_blur_matches_torchvision(kernel: int, sigmas: list[float]) -> None:
    x = torch.rand(2, 3, 30, 26)
    out = ops.blur(x, kernel, torch.tensor(sigmas))
    for i, s in enumerate(sigmas):
        ref = TF.gaussian_blur(x[i], [kernel, kernel], [s, s])
        torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=0)


def test_random_blur_probability_and_truncated_kernel() -> None:
    x = torch.rand(4, 3, 40, 40)
    assert torch.equal(ops.gaussian_blur(x, 9, (0.1, 2.0), 0.0, _gen()), x)
    # p = 1 and a fixed sigma: torchvision's 23-tap blur, within the 4-sigma truncation error.
    ref = TF.gaussian_blur(x, [23, 23], [2.0, 2.0])
    torch.testing.assert_close(ops.gaussian_blur(x, 23, (2.0, 2.0), 1.0, _gen()), ref, atol=1e-4, rtol=0)


# --- solarize (BYOL's second view) -----------------------------------------------------------------


def test_solarize_matches_torchvision_and_inverts_only_at_or_above_half() -> None:
    x = torch.rand(4, 3, 9, 9)
    x[0, 0, 0, :3] = torch.tensor([0.5, 0.4999, 0.9])
    out = ops.solarize(x)
    torch.testing.assert_close(out, TF.solarize(x, 0.5), atol=0, rtol=0)
    assert out[0, 0, 0, :3].tolist() == pytest.approx([0.5, 0.4999, 1 - 0.9])  # 0.5 itself is inverted: 1 - 0.5
    hi = x >= 0.5
    assert torch.equal(out[hi], 1 - x[hi]) and torch.equal(out[~hi], x[~hi])


def test_random_solarize_draws_per_sample_from_the_generator() -> None:
    x = torch.rand(64, 3, 6, 6)
    assert torch.equal(ops.random_solarize(x, 0.0, _gen()), x)  # p = 0: identity
    assert torch.equal(ops.random_solarize(x, 1.0, _gen()), ops.solarize(x))  # p = 1: every sample
    half = ops.random_solarize(x, 0.5, _gen(3))
    chosen = (half != x).flatten(1).any(1)
    assert 16 < chosen.sum() < 48  # per-sample draws, not one coin for the batch
    assert torch.equal(half[chosen], ops.solarize(x[chosen])) and torch.equal(half[~chosen], x[~chosen])
    expected = torch.rand(64, generator=_gen(3)) < 0.5  # one uniform per sample, in batch order
    assert torch.equal(chosen, expected)
    assert torch.equal(ops.random_solarize(x, 0.5, _gen(3)), half)  # seeded


def test_pipeline_solarizes_before_normalising_and_p0_draws_nothing() -> None:
    x = _images(8, 16, 16)
    raw = ViewPipeline(_plain(16, normalize=False, solarize_p=1.0))(x, _gen())
    torch.testing.assert_close(raw, ops.solarize(x.float() / 255), atol=1e-6, rtol=0)
    # p = 0 consumes no random numbers: the views of every other setting keep their random streams
    cifar = view_preset("cifar", 16)
    g1, g2 = _gen(5), _gen(5)
    plain = ViewPipeline(cifar)
    assert torch.equal(plain(x, g1), ViewPipeline(view_preset("cifar", 16, solarize_p=0.0))(x, g2))
    assert torch.equal(plain(x, g1), ViewPipeline(cifar)(x, g2))  # the streams are still in step


def test_byol_preset_pair_differs_in_the_second_view_only() -> None:
    from unveil.views import view_pair

    for size in (32, 224):
        v1, v2 = view_pair("byol", size)
        assert (v1.solarize_p, v2.solarize_p) == (0.0, 0.2)  # BYOL Table 6
        assert (v1.blur_p, v2.blur_p) == ((1.0, 0.1) if size >= 96 else (0.0, 0.0))
        assert v1.jitter == v2.jitter == (0.4, 0.4, 0.2, 0.1)
    a, b = view_pair("cifar", 32, views={"gray_p": 0.5}, views_2={"solarize_p": 0.1})
    assert a.gray_p == b.gray_p == 0.5 and (a.solarize_p, b.solarize_p) == (0.0, 0.1)


def test_normalize() -> None:
    x = torch.rand(2, 3, 4, 4)
    torch.testing.assert_close(ops.normalize(x, MEAN, STD), _ref_normalize(x), atol=1e-6, rtol=0)


# --- eval transform -------------------------------------------------------------------------------


def test_eval_transform() -> None:
    big = _images(2, 80, 96)
    out = eval_transform(big, 64, MEAN, STD)
    ref = TF.center_crop(TF.resize(big.float() / 255, [round(64 / 0.875)], antialias=True), [64, 64])
    torch.testing.assert_close(out, _ref_normalize(ref), atol=1e-5, rtol=0)
    small = _images(2, 28, 28)
    out = eval_transform(small, 32, MEAN, STD, normalize=False)
    torch.testing.assert_close(out, TF.resize(small.float() / 255, [32, 32], antialias=True), atol=1e-5, rtol=0)
    same = eval_transform(small, 28, MEAN, STD, normalize=False)
    assert torch.equal(same, _f(small))
    a, b = eval_transform(small, 28, MEAN, STD), eval_transform(small, 28, MEAN, STD)
    assert torch.equal(a, b)


# --- config ---------------------------------------------------------------------------------------


def test_presets_carry_the_papers_settings() -> None:
    simclr = view_preset("simclr", 224)
    assert simclr.jitter == (0.8, 0.8, 0.8, 0.2) and simclr.blur_p == 0.5 and simclr.crop_scale == (0.08, 1.0)
    assert view_preset("simclr", 32).blur_p == 0.0
    cifar = view_preset("cifar", 32)
    assert cifar.jitter == (0.4, 0.4, 0.4, 0.1) and cifar.jitter_p == 0.8 and cifar.gray_p == 0.2 and cifar.blur_p == 0
    ae = view_preset("crop-flip", 32)
    assert ae.crop_scale == (0.2, 1.0) and ae.jitter_p == 0 and not ae.normalize
    out = ViewPipeline(ae)(_images(4, 32, 32), _gen())
    assert out.min() >= 0 and out.max() <= 1
    assert view_preset("cifar", 32, jitter_p=0.5, crop_scale=[0.2, 1]).crop_scale == (0.2, 1.0)
    assert default_preset_for("cifar10") == default_preset_for("fashion-mnist") == "cifar"
    assert default_preset_for("stl10") == default_preset_for("folders") == "simclr"
    assert math.isclose(ops.blur_kernel_size(224, 0.1), 23) and ops.blur_kernel_size(96, 0.1) == 9


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda: view_preset("simclrr", 32), "simclrr"),
        (lambda: view_preset("cifar", 32, jiter=0.3), "jiter"),
        (lambda: ViewConfig(size=0), "views.size"),
        (lambda: ViewConfig(size=32, crop_scale=(0.5, 0.2)), "views.crop_scale"),
        (lambda: ViewConfig(size=32, crop_scale=(0.1, 1.5)), "views.crop_scale"),
        (lambda: ViewConfig(size=32, crop_ratio=(0.0, 1.0)), "views.crop_ratio"),
        (lambda: ViewConfig(size=32, flip_p=1.5), "views.flip_p"),
        (lambda: ViewConfig(size=32, solarize_p=-0.1), "views.solarize_p"),
        (lambda: ViewConfig(size=32, jitter=(0.4, 0.4, 0.4)), "views.jitter"),
        (lambda: ViewConfig(size=32, jitter=(0.4, 0.4, 0.4, 0.7)), "hue"),
        (lambda: ViewConfig(size=32, blur_sigma=(2.0, 0.1)), "views.blur_sigma"),
        (lambda: ViewConfig(size=32, std=(0.2, 0.0, 0.2)), "views.std"),
        (lambda: ViewConfig(size=32, mean=("a", 0.4, 0.4)), "views.mean"),
    ],
)
def test_bad_config_is_a_user_error_naming_the_option(make, needle: str) -> None:
    with pytest.raises(UserError, match=needle):
        make()


def test_bad_images_are_a_user_error() -> None:
    with pytest.raises(UserError, match="views expect"):
        ViewPipeline(view_preset("cifar", 8))(torch.zeros(2, 4, 8, 8, dtype=torch.uint8), _gen())
    with pytest.raises(UserError, match="choose one of"):
        view_preset("nope", 8)


def test_resize_reference_is_bilinear() -> None:
    """Guards the identity test above: the reference really is F.interpolate's bilinear."""
    x = torch.rand(1, 3, 9, 9)
    torch.testing.assert_close(TF.resize(x, [5, 5], antialias=False), F.interpolate(x, size=(5, 5), mode="bilinear"))
