"""Evaluation protocols for ViTs: layer-wise lr decay as documented (through the engine's optimizer
builder), the fine-tune presets (auto: vit for a ViT run, convnet = the old defaults), the settings
record a suite compares, a real fine-tune of a tiny ViT, and the linear probe's BatchNorm head."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from unveil.backbones import build_backbone
from unveil.cli import main
from unveil.errors import UserError
from unveil.eval.linear import linear_probe
from unveil.methods import DataInfo, build_method
from unveil.optim import build_optimizer
from unveil.param_groups import default_param_groups
from unveil.protocols import base
from unveil.protocols import finetune as pfinetune
from unveil.train import engine

INFO = DataInfo(name="x", num_classes=10, image_size=32, mean=(0.5,) * 3, std=(0.25,) * 3)
OPTIM = {"optimizer": "adamw", "weight_decay": 0.05, "betas": [0.9, 0.999], "momentum": 0.9}


def tiny_vit_method(depth: int, **kwargs) -> torch.nn.Module:
    backbone = build_backbone("vit_tiny", img_size=32, patch_size=8, depth=depth)
    return build_method("supervised", backbone=backbone, data_info=INFO, **kwargs)


def lr_of(optimizer: torch.optim.Optimizer) -> dict[int, tuple[float, float]]:
    """id(parameter) -> (lr, weight decay) in the built optimizer."""
    return {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}


@pytest.mark.parametrize(("depth", "decay"), [(2, 0.5), (3, 0.75)])
def test_layer_decay_gives_the_documented_lr_per_block(depth, decay):
    method = tiny_vit_method(depth, layer_decay=decay)
    base = 1e-3
    got = lr_of(build_optimizer(method, OPTIM, base))
    bb = method.backbone
    for i, block in enumerate(bb.blocks):  # block i is layer i + 1 of depth + 1: lr · r ** (depth − i)
        for name, p in block.named_parameters():
            assert got[id(p)][0] == pytest.approx(base * decay ** (depth + 1 - (i + 1))), (i, name)
            assert got[id(p)][1] == (0.0 if p.ndim == 1 else 0.05), (i, name)  # biases and norms: no decay
    for p in (bb.cls_token, *bb.patch_embed.parameters()):  # layer 0
        assert got[id(p)][0] == pytest.approx(base * decay ** (depth + 1))
    assert got[id(bb.cls_token)][1] == 0.0 and got[id(bb.patch_embed.proj.weight)][1] == 0.05
    for p in (*bb.norm.parameters(), *method.head.parameters()):  # the top layer: the scheduled lr itself
        assert got[id(p)][0] == pytest.approx(base)
    assert got[id(method.head.weight)][1] == 0.05 and got[id(bb.norm.weight)][1] == 0.0
    assert id(bb.pos_embed) not in got  # frozen sin-cos: in no group
    assert len(got) == sum(1 for p in method.parameters() if p.requires_grad)


def test_without_layer_decay_the_groups_are_the_default_ones():
    method = tiny_vit_method(2)
    groups = method.param_groups()
    default = default_param_groups(method)
    assert [[id(p) for p in g["params"]] for g in groups] == [[id(p) for p in g["params"]] for g in default]
    assert [g["lr_scale"] for g in groups] == [1.0, 1.0]


def test_layer_decay_needs_a_vit():
    backbone = build_backbone("resnet18")
    with pytest.raises(Exception, match="layer_decay needs a backbone with blocks"):
        build_method("supervised", backbone=backbone, data_info=INFO, layer_decay=0.75)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_folder_module) -> dict[str, Path]:
    """An untrained (train.epochs=0) tiny ViT MAE run and ResNet overlay run on 16 px images."""
    root = tmp_path_factory.mktemp("runs")
    common = ["--data", str(tiny_folder_module), "--epochs", "0", "--batch-size", "16", "data.image_size=16",
              "data.subset=32", "train.monitor=none", "train.progress=false", "train.precision=fp32"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UNVEIL_CACHE", str(root / "cache"))
        assert main(["pretrain", "--recipe", "mae_cifar10", "--out", str(root / "vit"), *common,
                     "backbone.depth=2"]) == 0
        assert main(["pretrain", "--recipe", "overlay_cifar10", "--out", str(root / "resnet"), *common]) == 0
    return {"vit": root / "vit", "resnet": root / "resnet", "cache": root / "cache"}


@pytest.fixture(scope="module")
def tiny_folder_module(tmp_path_factory) -> Path:
    """conftest's tiny_folder (2 colour classes, 96 16x16 images), built once for this module."""
    from conftest import make_tiny_folder

    return make_tiny_folder(tmp_path_factory)


@pytest.mark.slow
def test_protocol_auto_picks_vit_for_a_vit_run_and_the_old_defaults_for_a_resnet(runs):
    vit = base.current_settings("finetune", runs["vit"], batch_size=128, epochs=20)
    assert vit["preset"] == "vit" and vit["optimizer"] == "adamw" and vit["betas"] == [0.9, 0.999]
    # 5e-4 per 256 images of the global batch: the engine scales it (scale_lr), by all processes' batch
    assert vit["lr"] == 5e-4 and vit["scale_lr"] is True and vit["weight_decay"] == 0.05
    # MAE's values (main_finetune.py, FINETUNE.md): layer decay 0.65 for 12 blocks or fewer (ViT-B)
    assert (vit["layer_decay"], vit["drop_path"], vit["mixup"], vit["cutmix"], vit["label_smoothing"]) == (
        0.65, 0.1, 0.8, 1.0, 0.1)
    assert (vit["rand_augment"], vit["random_erasing"], vit["global_pool"], vit["min_lr"]) == (
        "rand-m9-mstd0.5-inc1", 0.25, True, 1e-6)
    assert vit["warmup_epochs"] == 2.0  # 10 % of 20 epochs (5 from 50 epochs on)
    assert base.current_settings("finetune", runs["vit"], epochs=100)["warmup_epochs"] == 5.0
    mine = base.current_settings("finetune", runs["vit"], lr=0.1, layer_decay=0.75, mixup=0.0,
                                      rand_augment="none", random_erasing=0, global_pool=False)
    assert (mine["lr"], mine["layer_decay"], mine["mixup"], mine["cutmix"]) == (0.1, 0.75, 0.0, 1.0)
    assert "scale_lr" not in mine  # a given lr is absolute
    assert (mine["rand_augment"], mine["random_erasing"], mine["global_pool"]) == (None, 0.0, False)
    assert pfinetune.vit_layer_decay({"backbone": {"depth": 24}}) == 0.75  # MAE's ViT-L value

    resnet = base.current_settings("finetune", runs["resnet"])
    old = {"protocol": "finetune", "epochs": 20, "lr": 0.01, "batch_size": 256, "optimizer": "sgd",
           "weight_decay": 1e-4, "overrides": [], "augment": True}
    assert {k: v for k, v in resnet.items() if k not in ("step", "data")} == old  # records made before stay valid
    as_vit = base.current_settings("finetune", runs["resnet"], protocol="convnet", label_smoothing=0.1)
    assert as_vit["preset"] == "convnet" and as_vit["label_smoothing"] == 0.1 and as_vit["lr"] == 0.01
    with pytest.raises(Exception, match="protocol must be one of"):
        base.current_settings("finetune", runs["resnet"], protocol="beit")
    for option in ({"layer_decay": 0.75}, {"drop_path": 0.1}, {"protocol": "vit"},
                   {"global_pool": True}):  # one line, before training
        with pytest.raises(UserError, match="needs a ViT backbone"):
            pfinetune.evaluate_finetune(runs["resnet"], **option)
    assert not (runs["resnet"] / "finetune").exists()


def test_check_settings_accepts_the_new_options_and_refuses_bad_ones():
    base.check_settings("finetune", {"protocol": "vit", "layer_decay": 0.65, "optimizer": None, "mixup": 0.8})
    base.check_settings("linear", {"optimizer": "lars", "head_bn": True})
    for bad in ({"protocol": "x"}, {"layer_decay": 0}, {"mixup": -1}, {"label_smoothing": 2}):
        with pytest.raises(Exception, match="finetune"):
            base.check_settings("finetune", bad)


@pytest.mark.slow
def test_a_vit_fine_tune_trains_with_the_layer_decay_groups_and_saves_what_current_settings_says(runs, monkeypatch):
    monkeypatch.setenv("UNVEIL_CACHE", str(runs["cache"]))
    built = []
    real = engine.build_optimizer

    def spy(model, cfg, lr):
        opt = real(model, cfg, lr)
        built.append((lr, {g["name"]: g["lr"] for g in opt.param_groups}))
        return opt

    monkeypatch.setattr(engine, "build_optimizer", spy)
    settings = {"epochs": 1, "batch_size": 16, "overrides": ["train.progress=false"]}
    result = pfinetune.evaluate_finetune(runs["vit"], baseline=True, **settings)
    base_lr = 5e-4 * 16 / 256
    assert len(built) == 2  # the run's encoder and the untrained one
    lr, groups = built[0]
    assert lr == pytest.approx(base_lr)
    # depth 2, layer decay 0.65: block 0 is layer 1 of 3 -> lr · 0.65 ** 2; the head (layer 3) lr
    assert groups["layer1_decay"] == pytest.approx(base_lr * 0.65 ** 2) and groups["layer3_decay"] == pytest.approx(base_lr)
    assert result["preset"] == "vit" and result["layer_decay"] == 0.65 and len(result["history"]) == 1
    cfg = yaml.safe_load((runs["vit"] / "finetune" / "config.yaml").read_text())
    assert cfg["train"]["min_lr"] == 1e-6 and cfg["backbone"]["global_pool"] == "avg"
    assert (cfg["method"]["rand_augment"], cfg["method"]["random_erasing"]) == ("rand-m9-mstd0.5-inc1", 0.25)
    assert result["settings"] == base.current_settings("finetune", runs["vit"], **settings)
    assert "best_top1" in result["untrained"]
    assert (runs["vit"] / "finetune_untrained" / "untrained_backbone.safetensors").is_file()
    again = pfinetune.evaluate_finetune(runs["vit"], **settings)  # finished with these settings: read back
    assert len(built) == 2 and again["history"] == result["history"]


@pytest.mark.slow
def test_linear_head_bn_normalises_features_and_lars_runs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    shifted = x * torch.linspace(0.1, 30, 8) + 5.0  # per-feature scale and shift: what BatchNorm removes
    kw = {"epochs": 30, "batch_size": 32, "standardize": False, "lr": 0.05, "optimizer": "sgd"}
    on = [linear_probe(f, y, f[:32], y[:32], 3, head_bn=True, **kw)["history"] for f in (x, shifted)]
    # test time uses BN's running statistics (momentum 0.1), the same for both once they have settled
    # (90 steps here; the first epochs differ): measured equal over the last 12 epochs, 2026-11-30
    assert [r["top1"] for r in on[0][-10:]] == [r["top1"] for r in on[1][-10:]]
    off = [linear_probe(f, y, f[:32], y[:32], 3, **kw)["history"] for f in (x, shifted)]
    assert [r["top1"] for r in off[0][-10:]] != [r["top1"] for r in off[1][-10:]]
    # MAE's linear probe optimizer; LARS's trust ratio (0.001) moves a tiny head slowly: only that it runs
    lars = linear_probe(x, y, x, y, 3, epochs=2, lr=0.1, batch_size=32, optimizer="lars", head_bn=True,
                        standardize=False)
    assert len(lars["history"]) == 2 and 0 <= lars["last_top1"] <= 100


def test_linear_records_head_bn_only_when_on(runs):
    assert "head_bn" not in base.current_settings("linear", runs["vit"])
    assert base.current_settings("linear", runs["vit"], head_bn=True, optimizer="lars")["head_bn"] is True


@pytest.mark.slow
def test_an_interrupted_vit_fine_tune_with_mixing_resumes_exactly(runs, tmp_path, monkeypatch):
    """Mixup/CutMix coins, lams and boxes come from the engine's generator: a resumed fine-tune ends
    with the weights of an uninterrupted one."""
    import shutil

    monkeypatch.setenv("UNVEIL_CACHE", str(runs["cache"]))
    run, reference = tmp_path / "run", tmp_path / "reference"
    for d in (run, reference):
        shutil.copytree(runs["vit"], d, ignore=shutil.ignore_patterns("finetune*", "eval_*"))
    settings = {"epochs": 2, "batch_size": 16, "overrides": ["train.progress=false"]}
    real_save = engine.save_checkpoint

    def crash_after_first_epoch(path, state):
        real_save(path, state)
        if "finetune" in str(path) and state.get("history"):
            raise KeyboardInterrupt

    monkeypatch.setattr(engine, "save_checkpoint", crash_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        pfinetune.evaluate_finetune(run, **settings)
    monkeypatch.setattr(engine, "save_checkpoint", real_save)
    from unveil.runs.checkpoint import load_checkpoint

    assert load_checkpoint(run / "finetune" / "last.ckpt")["step"] == 2  # 32 images, batch 16
    resumed = pfinetune.evaluate_finetune(run, **settings)
    straight = pfinetune.evaluate_finetune(reference, **settings)
    assert resumed["mixup"] == 0.8 and [r["test_top1"] for r in resumed["history"]] == [
        r["test_top1"] for r in straight["history"]]
    a = load_checkpoint(run / "finetune" / "last.ckpt")["model"]
    b = load_checkpoint(reference / "finetune" / "last.ckpt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


class _Stop(Exception):
    pass


@pytest.mark.slow
def test_vit_fine_tune_lr_scales_with_the_global_batch(runs, monkeypatch, tmp_path):
    """MAE's lr is 5e-4 per 256 images of the *global* batch: N processes of batch B train at
    5e-4 x N·B/256. The protocol used to fix lr = 5e-4 x B/256 with scale_lr off, so N processes got an
    lr N times too small. Resolved here by the engine's own rule on a simulated 2-process run."""
    from unveil.build import build_method_for, load_dataset_for

    monkeypatch.setenv("UNVEIL_CACHE", str(runs["cache"]))
    seen = []

    def capture(cfg, resume=None):
        seen.append(cfg)
        raise _Stop

    monkeypatch.setattr(engine, "train", capture)
    with pytest.raises(_Stop):
        pfinetune.evaluate_finetune(runs["vit"], epochs=1, batch_size=8, baseline=False)
    cfg = seen[0]
    dataset = load_dataset_for(cfg)

    def engine_lr(world: int) -> float:
        run = engine._Run(cfg=cfg, device=torch.device("cpu"), precision="fp32", rank=0, world=world,
                          run_dir=tmp_path, ckpt_state=None, dataset=dataset, batch_size=8)
        run.method = build_method_for(cfg, dataset)
        engine._build_optimizer(run)
        return run.base_lr

    assert engine_lr(1) == pytest.approx(5e-4 * 8 / 256)
    assert engine_lr(2) == pytest.approx(5e-4 * 16 / 256)  # 2 processes x 8 images
    with pytest.raises(_Stop):  # an lr given by hand is absolute: not scaled
        pfinetune.evaluate_finetune(runs["vit"], epochs=1, batch_size=8, lr=1e-3, baseline=False)
    assert (seen[1]["train"]["lr"], seen[1]["train"]["scale_lr"]) == (1e-3, False)


def test_global_pool_is_maes_mean_of_patch_tokens_through_a_fresh_fc_norm(tmp_path):
    import timm

    token = build_backbone("vit_tiny", img_size=32, patch_size=8, depth=2)
    with torch.no_grad():
        token.norm.weight.mul_(3.0)  # a trained last norm: must not reach the avg-pool model
    avg = build_backbone("vit_tiny", img_size=32, patch_size=8, depth=2, global_pool="avg")
    assert isinstance(avg.norm, torch.nn.Identity)
    avg.load_state_dict(token.state_dict(), strict=True)  # MAE main_finetune: norm dropped, fc_norm fresh
    assert torch.equal(avg.fc_norm.weight, torch.ones(192)) and torch.equal(avg.fc_norm.bias, torch.zeros(192))
    x = torch.randn(3, 3, 32, 32)
    avg.eval()
    with torch.no_grad():
        blocks = avg.blocks(torch.cat([avg.cls_token + avg.pos_embed[:, :1].expand(3, -1, -1),
                                       avg.patch_embed(x) + avg.pos_embed[:, 1:]], 1))
        want = torch.nn.functional.layer_norm(blocks[:, 1:].mean(1), (192,), eps=1e-6)
        assert torch.allclose(avg(x), want, atol=1e-5)
        reference = timm.create_model(**avg.timm_kwargs()).eval()
        reference.load_state_dict(avg.state_dict(), strict=True)  # still timm's layout
        assert torch.allclose(reference(x), avg(x), atol=1e-6)
    with pytest.raises(UserError, match="global_pool"):  # pretraining keeps the encoder's last norm
        build_method("mae", backbone=avg, data_info=INFO)


def test_rand_augment_colour_ops_equal_timms_and_geometric_ops_follow_them(cifar10_dir, monkeypatch):
    """Each op of timm's rand-m9-mstd0.5-inc1 at magnitude 9, ours on the batch vs timm's PIL op on
    each image: the colour ops are timm's to the level (AutoContrast within one level), the geometric
    ones differ only by the bicubic kernel (torch's a = -0.75, PIL's a = -0.5) at edges."""
    import numpy as np
    import timm.data.auto_augment as timm_aa
    from PIL import Image

    from unveil.data import load_data
    from unveil.methods._finetune_aug import INCREASING_OPS, PLAIN_OPS, _level, apply_op

    monkeypatch.setenv("UNVEIL_CIFAR10", str(cifar10_dir))
    images = load_data("cifar10", image_size=32, subset=16, test_subset=8).train.images[:6]
    fill = (124, 116, 104)
    m = torch.full((6,), 9.0)
    for name in dict.fromkeys(INCREASING_OPS + PLAIN_OPS):
        for sign in ((1.0, -1.0) if name in timm_aa.LEVEL_TO_ARG and name not in (
                "Posterize", "PosterizeIncreasing", "Solarize", "SolarizeIncreasing", "SolarizeAdd", "AutoContrast",
                "Equalize", "Invert", "Color", "Contrast", "Brightness", "Sharpness") else (1.0,)):
            arg = _level(name, m[:1], torch.tensor([sign]))
            args = () if name in ("AutoContrast", "Equalize", "Invert") else (
                int(arg) if name.startswith(("Posterize", "Solarize")) else float(arg),)
            ref = np.stack([np.asarray(timm_aa.NAME_TO_OP[name](Image.fromarray(i.permute(1, 2, 0).numpy()), *args,
                                                                 fillcolor=fill, resample=Image.BICUBIC))
                            for i in images])
            ours = apply_op(name, images.float(), m, torch.full((6,), sign), fill).permute(0, 2, 3, 1).numpy()
            diff = np.abs(ref.astype(np.float64) - ours)
            if name in ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"):
                assert diff.mean() < 1.5 and (diff > 2).mean() < 0.12, (name, sign, diff.mean())
            else:
                assert diff.max() <= (1 if name == "AutoContrast" else 0), (name, diff.max())


def test_rand_augment_draws_per_image_from_the_generator_as_timm():
    """timm's RandAugment: 2 layers, each an op drawn uniformly with replacement from the 15, applied
    with probability 0.5 at magnitude N(9, 0.5) clipped to [0, 10]."""
    from unveil.methods import _finetune_aug as fa

    x = torch.rand(3000, 3, 8, 8)
    calls: list[tuple[str, int, torch.Tensor]] = []
    real = fa.apply_op

    def spy(name, imgs, magnitude, sign, fill):
        calls.append((name, len(imgs), magnitude))
        return real(name, imgs, magnitude, sign, fill)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fa, "apply_op", spy)
        a = fa.rand_augment(x, torch.Generator().manual_seed(0), "rand-m9-mstd0.5-inc1")
    b = fa.rand_augment(x, torch.Generator().manual_seed(0), "rand-m9-mstd0.5-inc1")
    assert torch.equal(a, b) and not torch.equal(a, fa.rand_augment(x, torch.Generator().manual_seed(1)))
    assert torch.equal((a * 255).round(), a * 255)  # the 8-bit grid, as timm's PIL images
    applied = sum(n for _, n, _ in calls)
    assert abs(applied / (2 * 3000) - 0.5) < 0.03  # p 0.5 per layer
    per_op = {name: sum(n for o, n, _ in calls if o == name) for name in fa.INCREASING_OPS}
    assert set(per_op) == set(fa.INCREASING_OPS) and min(per_op.values()) > applied / 15 * 0.7
    mags = torch.cat([m for _, _, m in calls])
    assert abs(mags.mean() - 9.0) < 0.05 and 0.4 < mags.std() < 0.55 and mags.max() <= 10.0
    spec = fa.parse_rand_augment("rand-m9-mstd0.5-inc1")
    assert (spec.magnitude, spec.num_layers, spec.magnitude_std, spec.prob, spec.increasing) == (9, 2, 0.5, 0.5, True)
    with pytest.raises(UserError, match="rand_augment"):
        fa.parse_rand_augment("rand-m9-x3")


def test_random_erasing_is_timms_pixel_mode_per_image():
    """timm's RandomErasing(0.25, mode='pixel', max_count=1): a quarter of the images get one rectangle
    of 2-33 % of the area, aspect in [0.3, 3.3], filled with N(0, 1) noise per pixel; others untouched."""
    from unveil.methods._finetune_aug import random_erasing

    x = torch.full((4000, 3, 32, 32), 7.0)
    out = random_erasing(x, 0.25, torch.Generator().manual_seed(0))
    assert torch.equal(out, random_erasing(x, 0.25, torch.Generator().manual_seed(0)))
    erased = out != 7.0
    hit = erased.flatten(1).any(1)
    assert abs(hit.float().mean() - 0.25) < 0.03
    area = erased[hit, 0].flatten(1).float().mean(1)
    assert area.min() >= 0.015 and area.max() <= 0.36  # 2-33 %, up to rounding h and w to pixels
    rows, cols = erased[hit, 0].any(2).sum(1).float(), erased[hit, 0].any(1).sum(1).float()
    assert torch.equal(erased[hit, 0].flatten(1).sum(1).float(), rows * cols)  # one rectangle
    assert ((rows / cols) >= 0.3 / 1.5).all() and ((rows / cols) <= 1.5 / 0.3).all()
    noise = out[erased]
    assert abs(noise.mean()) < 0.02 and abs(noise.std() - 1) < 0.02  # N(0, 1) per pixel and channel
    assert torch.equal(random_erasing(x, 0.0, torch.Generator()), x)


def test_supervised_with_maes_augmentation_normalises_after_rand_augment_and_erases_after():
    from unveil.methods import _finetune_aug as fa

    info = DataInfo(name="x", num_classes=10, image_size=16, mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.3))
    backbone = build_backbone("vit_tiny", img_size=16, patch_size=8, depth=1)
    method = build_method("supervised", backbone=backbone, data_info=info, rand_augment="rand-m9-mstd0.5-inc1",
                          random_erasing=0.25)
    images = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8)
    got = method._augmented(images, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)  # the same steps by hand, same generator
    x = method.views(images, g)
    assert x.min() >= 0 and x.max() <= 1  # the views leave normalisation to after RandAugment
    x = fa.rand_augment(x, g, "rand-m9-mstd0.5-inc1", fill=info.mean)
    x = (x - torch.tensor(info.mean).view(1, 3, 1, 1)) / torch.tensor(info.std).view(1, 3, 1, 1)
    assert torch.allclose(got, fa.random_erasing(x, 0.25, g), atol=1e-6)
    out = method(images, torch.zeros(64, dtype=torch.long), torch.Generator().manual_seed(0))
    assert torch.isfinite(out["loss"])
    with pytest.raises(UserError, match="random_erasing"):
        build_method("supervised", backbone=backbone, data_info=info, random_erasing=2)


def test_fine_tune_without_augmentation_records_no_rand_augment_or_erasing(runs):
    plain = base.current_settings("finetune", runs["vit"], augment=False)
    assert (plain["rand_augment"], plain["random_erasing"]) == (None, 0.0)  # the test view, nothing on top
    with pytest.raises(UserError, match="need augment=true"):
        base.current_settings("finetune", runs["vit"], augment=False, random_erasing=0.25)
