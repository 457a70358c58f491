"""Evaluation protocols for ViTs: layer-wise lr decay as documented (through the engine's optimizer
builder), the fine-tune presets (auto: vit for a ViT run, convnet = the old defaults), the settings
record a suite compares, a real fine-tune of a tiny ViT, and the linear probe's BatchNorm head."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from unveil.backbones import build_backbone
from unveil.cli import main
from unveil.errors import UserError
from unveil.eval import protocols
from unveil.eval.linear import linear_probe
from unveil.methods import DataInfo, build_method
from unveil.param_groups import default_param_groups
from unveil.train import engine
from unveil.train.optim import build_optimizer

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


def test_protocol_auto_picks_vit_for_a_vit_run_and_the_old_defaults_for_a_resnet(runs):
    vit = protocols.current_settings("finetune", runs["vit"], batch_size=128, epochs=20)
    assert vit["preset"] == "vit" and vit["optimizer"] == "adamw" and vit["betas"] == [0.9, 0.999]
    assert vit["lr"] == pytest.approx(5e-4 * 128 / 256) and vit["weight_decay"] == 0.05
    assert (vit["layer_decay"], vit["drop_path"], vit["mixup"], vit["cutmix"], vit["label_smoothing"]) == (
        0.75, 0.1, 0.8, 1.0, 0.1)
    assert vit["warmup_epochs"] == 2.0  # 10 % of 20 epochs (5 from 50 epochs on)
    assert protocols.current_settings("finetune", runs["vit"], epochs=100)["warmup_epochs"] == 5.0
    mine = protocols.current_settings("finetune", runs["vit"], lr=0.1, layer_decay=0.65, mixup=0.0)
    assert (mine["lr"], mine["layer_decay"], mine["mixup"], mine["cutmix"]) == (0.1, 0.65, 0.0, 1.0)

    resnet = protocols.current_settings("finetune", runs["resnet"])
    old = {"protocol": "finetune", "epochs": 20, "lr": 0.01, "batch_size": 256, "optimizer": "sgd",
           "weight_decay": 1e-4, "overrides": [], "augment": True}
    assert {k: v for k, v in resnet.items() if k not in ("step", "data")} == old  # records made before stay valid
    as_vit = protocols.current_settings("finetune", runs["resnet"], protocol="convnet", label_smoothing=0.1)
    assert as_vit["preset"] == "convnet" and as_vit["label_smoothing"] == 0.1 and as_vit["lr"] == 0.01
    with pytest.raises(Exception, match="protocol must be one of"):
        protocols.current_settings("finetune", runs["resnet"], protocol="beit")
    for option in ({"layer_decay": 0.75}, {"drop_path": 0.1}, {"protocol": "vit"}):  # one line, before training
        with pytest.raises(UserError, match="needs a ViT backbone"):
            protocols.evaluate_finetune(runs["resnet"], **option)
    assert not (runs["resnet"] / "finetune").exists()


def test_check_settings_accepts_the_new_options_and_refuses_bad_ones():
    protocols.check_settings("finetune", {"protocol": "vit", "layer_decay": 0.65, "optimizer": None, "mixup": 0.8})
    protocols.check_settings("linear", {"optimizer": "lars", "head_bn": True})
    for bad in ({"protocol": "x"}, {"layer_decay": 0}, {"mixup": -1}, {"label_smoothing": 2}):
        with pytest.raises(Exception, match="finetune"):
            protocols.check_settings("finetune", bad)


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
    result = protocols.evaluate_finetune(runs["vit"], baseline=True, **settings)
    base_lr = 5e-4 * 16 / 256
    assert len(built) == 2  # the run's encoder and the untrained one
    lr, groups = built[0]
    assert lr == pytest.approx(base_lr)
    # depth 2, layer decay 0.75: block 0 is layer 1 of 3 -> lr · 0.75 ** 2; the head (layer 3) lr
    assert groups["layer1_decay"] == pytest.approx(base_lr * 0.75 ** 2) and groups["layer3_decay"] == pytest.approx(base_lr)
    assert result["preset"] == "vit" and result["layer_decay"] == 0.75 and len(result["history"]) == 1
    assert result["settings"] == protocols.current_settings("finetune", runs["vit"], **settings)
    assert "best_top1" in result["untrained"]
    assert (runs["vit"] / "finetune_untrained" / "untrained_backbone.safetensors").is_file()
    again = protocols.evaluate_finetune(runs["vit"], **settings)  # finished with these settings: read back
    assert len(built) == 2 and again["history"] == result["history"]


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
    assert "head_bn" not in protocols.current_settings("linear", runs["vit"])
    assert protocols.current_settings("linear", runs["vit"], head_bn=True, optimizer="lars")["head_bn"] is True


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
        protocols.evaluate_finetune(run, **settings)
    monkeypatch.setattr(engine, "save_checkpoint", real_save)
    from unveil.train.checkpoint import load_checkpoint

    assert load_checkpoint(run / "finetune" / "last.ckpt")["step"] == 2  # 32 images, batch 16
    resumed = protocols.evaluate_finetune(run, **settings)
    straight = protocols.evaluate_finetune(reference, **settings)
    assert resumed["mixup"] == 0.8 and [r["test_top1"] for r in resumed["history"]] == [
        r["test_top1"] for r in straight["history"]]
    a = load_checkpoint(run / "finetune" / "last.ckpt")["model"]
    b = load_checkpoint(reference / "finetune" / "last.ckpt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
