"""The siamese recipes against their sources (issue #17): simclr_cifar10 and byol_cifar10 = lightly's
CIFAR-10 benchmark, byol_cifar10_solo = solo-learn's CIFAR BYOL (views checked against lightly's BYOL
transforms, which match it), and the masked siamese trajectory mscn_{simclr,byol}_{1..7} following paper 4's
path (§4.3-4.5, Figure 1)."""

from __future__ import annotations

import math

import pytest
import torch
from tinynet import TinyNet
from torch import nn

from unveil.config import resolve
from unveil.methods import DataInfo, build_method
from unveil.methods._masking import masked_pair
from unveil.optim import lr_at

INFO = DataInfo(name="cifar10", num_classes=10, image_size=32)
STEPS = ["1_naive", "2_highpass", "3_focal", "4_noise", "5_channel", "6_asym", "7_multimask"]


class Wide(TinyNet):
    """TinyNet reporting ResNet-18's 512 features, so the recipes' heads get their real widths."""

    num_features = 512

    def __init__(self) -> None:
        super().__init__()
        self.net.append(nn.Linear(16, 512))


def built(recipe: str, backbone: type[nn.Module] = TinyNet) -> nn.Module:
    """The recipe's method (its heads, views and masks) on a tiny encoder, at 32 px."""
    cfg = resolve(recipe)
    torch.manual_seed(0)
    kwargs = {k: v for k, v in cfg["method"].items() if k != "name"}
    return build_method(cfg["method"]["name"], backbone=backbone(), data_info=INFO, **kwargs)


def lightly_view(transform) -> dict:
    """A lightly view transform's settings, in ViewConfig's terms."""
    out = {}
    for t in transform.transforms:
        name = type(t).__name__
        if name == "RandomResizedCrop":
            out.update(size=t.size[0], crop_scale=tuple(t.scale), crop_ratio=tuple(t.ratio))
        elif name == "RandomHorizontalFlip":
            out["flip_p"] = t.p
        elif name == "RandomApply":
            cj = t.transforms[0]
            out["jitter"] = (cj.brightness[1] - 1, cj.contrast[1] - 1, cj.saturation[1] - 1, cj.hue[1])
            out["jitter_p"] = t.p
        elif name == "RandomGrayscale":
            out["gray_p"] = t.p
        elif name == "GaussianBlur":
            out["blur_p"] = t.prob
        elif name == "RandomSolarization":
            out["solarize_p"] = t.prob
    return out


def ours(cfg) -> dict:
    keys = (
        "size",
        "crop_scale",
        "crop_ratio",
        "flip_p",
        "jitter",
        "jitter_p",
        "gray_p",
        "blur_p",
        "solarize_p",
    )
    return {k: getattr(cfg, k) for k in keys}


def close(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(pytest.approx(b[k]) == a[k] for k in a)


# --- simclr_cifar10: lightly's CIFAR-10 benchmark (cifar10_benchmark.py, SimCLRModel) ---------------------


def test_simclr_cifar10_is_lightlys_cifar10_benchmark():
    cfg = resolve("simclr_cifar10")
    t = cfg["train"]
    batch = t["batch_size"]
    base_lr = t["lr"] * batch / 256 if t["scale_lr"] else t["lr"]
    assert base_lr == pytest.approx(
        6e-2 * batch / 128
    )  # lightly: lr = 6e-2 * lr_factor, lr_factor = batch / 128
    assert (t["optimizer"], t["momentum"], t["weight_decay"], t["warmup_epochs"]) == ("sgd", 0.9, 5e-4, 0)
    # CosineAnnealingLR(optim, max_epochs), stepped once per epoch, against torch's own scheduler
    epochs, per_epoch = 6, 5
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    for epoch in range(epochs):
        for step in range(epoch * per_epoch, (epoch + 1) * per_epoch):
            assert lr_at(step, epochs * per_epoch, per_epoch, base_lr, t) == pytest.approx(
                sched.get_last_lr()[0]
            )
        opt.step()
        sched.step()
    method = built("simclr_cifar10", Wide)
    linears = [m for m in method.projector if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (512, 512),
        (512, 128),
    ]  # SimCLRProjectionHead(512, 512, 128)
    assert method.temperature == 0.5  # NTXentLoss() default
    lightly_transforms = pytest.importorskip("lightly.transforms")
    ref = (
        lightly_transforms.SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0)
        .transforms[0]
        .transform
    )
    assert close(ours(method.views.cfg), {**lightly_view(ref), "solarize_p": 0.0})


# --- byol_cifar10: lightly's CIFAR-10 benchmark (BYOLModel), at unveil's loss scale


def test_byol_cifar10_is_lightlys_cifar10_benchmark_at_unveils_loss_scale():
    """lightly: heads 512-1024-256 / 256-1024-256, momentum 0.99 constant, SGD 6e-2 x batch/128, momentum 0.9,
    wd 5e-4 on every parameter, per-epoch cosine, no warm-up, 200 epochs at batch 512. unveil's loss (2 - 2cos
    summed over both directions) has 4x the gradient of lightly's 0.5 * (-cos - cos) (test_parity_lightly), so
    the same SGD update is lr / 4 and wd x 4."""
    cfg = resolve("byol_cifar10")
    m, t = cfg["method"], cfg["train"]
    assert (m["proj_hidden_dim"], m["proj_dim"], m["pred_hidden_dim"]) == (1024, 256, 1024)
    assert (m["base_momentum"], m["end_momentum"], m["weight_decay_all"]) == (0.99, 0.99, True)
    assert (t["optimizer"], t["batch_size"], t["epochs"], t["scale_lr"], t["momentum"]) == ("sgd", 512, 200, True, 0.9)
    lightly_lr_per_256, lightly_wd, grad_ratio = 6e-2 * 256 / 128, 5e-4, 4
    assert t["lr"] * grad_ratio == pytest.approx(lightly_lr_per_256)  # the same step lr * g ...
    assert t["lr"] * t["weight_decay"] == pytest.approx(lightly_lr_per_256 * lightly_wd)  # ... and lr * wd * w
    assert (t["warmup_epochs"], t["schedule"], t["min_lr"]) == (0, "cosine_epoch", 0.0)  # CosineAnnealingLR per epoch
    method = built("byol_cifar10")
    assert method.momentum_at(0, 100) == method.momentum_at(100, 100) == pytest.approx(0.99)
    (group,) = method.param_groups()
    assert len(group["params"]) == len([p for p in method.parameters() if p.requires_grad])
    lightly_transforms = pytest.importorskip("lightly.transforms")
    v1 = lightly_view(lightly_transforms.BYOLView1Transform(input_size=32, gaussian_blur=0.0).transform)
    v2 = lightly_view(lightly_transforms.BYOLView2Transform(input_size=32, gaussian_blur=0.0).transform)
    assert close(ours(method.views.cfg), v1) and close(ours(method.views_2.cfg), v2)


# --- byol_cifar10_solo: solo-learn's CIFAR BYOL (scripts/pretrain/cifar/byol.yaml, augmentations/asymmetric.yaml)


def test_byol_cifar10_solo_is_solo_learns_cifar_byol():
    cfg = resolve("byol_cifar10_solo")
    m, t = cfg["method"], cfg["train"]
    assert (m["proj_hidden_dim"], m["proj_dim"], m["pred_hidden_dim"]) == (4096, 256, 4096)
    assert (m["base_momentum"], m["end_momentum"]) == (0.99, 1.0)  # momentum.base_tau / final_tau
    assert (t["optimizer"], t["batch_size"], t["lr"], t["scale_lr"]) == ("lars", 256, 1.0, True)
    assert (t["lars_trust_coefficient"], t["lars_clip_lr"], t["weight_decay"]) == (
        0.02,
        True,
        1e-5,
    )  # eta, clip_lr
    assert (t["warmup_epochs"], t["schedule"], t["min_lr"]) == (10, "cosine", 0.0)  # warmup_cosine's defaults
    method = built("byol_cifar10_solo")
    assert method.momentum_at(0, 100) == pytest.approx(0.99) and method.momentum_at(100, 100) == 1.0
    lightly_transforms = pytest.importorskip("lightly.transforms")
    # lightly's CIFAR-10 benchmark builds BYOL's views as BYOLView{1,2}Transform(input_size=32,
    # gaussian_blur=0.0): the values of solo-learn's asymmetric.yaml (solarization 0 / 0.2, blur 0,
    # jitter (0.4, 0.4, 0.2, 0.1))
    v1 = lightly_view(lightly_transforms.BYOLView1Transform(input_size=32, gaussian_blur=0.0).transform)
    v2 = lightly_view(lightly_transforms.BYOLView2Transform(input_size=32, gaussian_blur=0.0).transform)
    assert close(ours(method.views.cfg), v1) and close(ours(method.views_2.cfg), v2)
    assert (v1["solarize_p"], v2["solarize_p"]) == (0.0, 0.2)


# --- the masked siamese trajectory -----------------------------------------------------------------------


def _view_cfgs(method) -> list:
    return [method.views.cfg] + ([method.views_2.cfg] if hasattr(method, "views_2") else [])


@pytest.mark.parametrize("fw", ["simclr", "byol"])
def test_trajectory_follows_the_papers_path(fw):
    """1 mask-only on ONE crop | 2 + high-pass | 3 + focal + different crops | 4 + noise | 5 + channel-wise +
    jitter/grayscale (+ blur: off at 32 px, as the base recipe) | 6 + asymmetry | 7 + multimasks."""
    base = built("simclr_cifar10" if fw == "simclr" else "byol_cifar10_solo")  # the trajectory's base recipes
    standard = base.views.cfg
    for i, step in enumerate(STEPS, 1):
        method = built(f"mscn_{fw}_{step}")
        a, b = method.masker.branch_a, method.masker.branch_b
        assert method.same_view == (i <= 2), (
            step
        )  # paper: the SAME random crop until the different-crops step
        for v in _view_cfgs(method):
            assert (v.crop_scale, v.flip_p) == (standard.crop_scale, standard.flip_p), (
                step
            )  # the crop from step 1
            assert v.solarize_p == 0, step  # MSCN A.1: symmetric views, no solarization
            assert v.blur_p == standard.blur_p == 0, step  # 32 px: no blur (see mscn_*_5_channel)
            if i < 5:
                assert v.jitter_p == 0 and v.gray_p == 0, step  # no colour before paper step 7
            else:
                assert (v.jitter, v.jitter_p, v.gray_p) == (
                    standard.jitter,
                    standard.jitter_p,
                    standard.gray_p,
                ), step
                assert v.jitter_p > 0 and v.gray_p > 0, step
        assert (method.masker.high_pass_sigma is not None) == (i >= 2), step
        assert (a.p_focal, b.p_focal) == ((0.4, 0.4) if i >= 3 else (0.0, 0.0)), step
        if i >= 3:
            assert a.focal_scale == b.focal_scale == (0.05, 0.3), step  # MSN's focal crop area range
        assert ((a.noise_std, b.noise_std) == (0.18, 0.14)) == (i >= 4) and (i >= 4 or a.noise_std == 0), step
        assert ((a.p_ind, b.p_ind) == (0.8, 0.8)) == (i >= 5) and (i >= 5 or a.p_ind == 0), step
        assert (a.p_apply, b.p_apply) == ((1.0, 0.5) if i >= 6 else (1.0, 1.0)), step
        assert method.masker.num_masks == (2 if i == 7 else 1), step
        assert (a.ratio, a.grid_cells, a.fill) == (0.15, 7, 0.0), step


@pytest.mark.parametrize("fw", ["simclr", "byol"])
def test_step_1_masks_one_crop_and_step_3_two(fw):
    """What the branches see: step 1's two masked inputs agree wherever neither is masked; step 3's do not."""
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for step, same in (("1_naive", True), ("3_focal", False)):
        method = built(f"mscn_{fw}_{step}")
        first, second = (method.views, method.views_2) if fw == "byol" else (method.views, method.views)
        xa, xb, _ = masked_pair(
            (first, second), method.masker, method.same_view, x, torch.Generator().manual_seed(1)
        )
        g = torch.Generator().manual_seed(1)  # the same draws again, to read the masks
        v1 = first(x, g)
        a, b = method.masker(v1, v1 if method.same_view else second(x, g), g)
        assert torch.equal(a.images, xa) and torch.equal(b.images, xb)
        both_kept = ~a.mask & ~b.mask
        assert both_kept.float().mean() > 0.2
        assert torch.equal(xa[both_kept], xb[both_kept]) == same, step


@pytest.mark.parametrize("fw", ["simclr", "byol"])
def test_focal_windows_at_32px_keep_5_to_30_percent(fw):
    """A focal mask keeps one crop of 5-30 % of the image (MSN's focal crops, unresized); 88 % before."""
    method = built(f"mscn_{fw}_3_focal")
    views = torch.randn(64, 3, 32, 32)
    a, _ = method.masker(views, views, torch.Generator().manual_seed(2))
    focal = a.focal & a.applied
    assert 10 < focal.sum() < 45  # p_focal 0.4
    kept = (~a.mask[focal]).flatten(1).float().mean(1)
    assert kept.min() >= 0.04 and kept.max() <= 0.32 and kept.mean() < 0.25


def test_same_view_recipe_is_table_7_standard_augmentation_plus_random_mask():
    method, base = built("mscn_simclr_same_view"), built("simclr_cifar10")
    assert method.same_view and method.views.cfg == base.views.cfg  # the standard augmentation, one view
    a, b = method.masker.branch_a, method.masker.branch_b
    assert method.masker.high_pass_sigma is None and method.masker.num_masks == 1
    for branch in (a, b):
        assert (branch.p_apply, branch.p_focal, branch.p_ind, branch.noise_std, branch.ratio) == (
            1.0,
            0,
            0,
            0,
            0.15,
        )
    # the suite's "different views" row = this recipe with same_view=false
    assert not resolve("mscn_simclr_same_view", ["method.masking.same_view=false"])["method"]["masking"][
        "same_view"
    ]


def test_focal_window_area_range_is_msns():
    lightly_msn = pytest.importorskip("lightly.transforms.msn_transform")
    import inspect

    default = inspect.signature(lightly_msn.MSNTransform).parameters["focal_crop_scale"].default
    assert tuple(resolve("mscn_simclr_3_focal")["method"]["masking"]["branch_a"]["focal_scale"]) == default
    assert math.isclose(default[0], 0.05) and math.isclose(default[1], 0.3)
