"""MSCN masking on SimCLR and BYOL: multimask pairs, same-view ablation, the high-pass at evaluation
(embed, export metadata, fine-tune), preview rows, and every shipped MSCN recipe builds."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from tinynet import TinyNet
from torch import nn

from unveil.build import build_method_for
from unveil.config import available_recipes, resolve
from unveil.corruptions.mscn import high_pass
from unveil.errors import UserError
from unveil.export import export_backbone, input_filter, read_eval_filter, read_metadata
from unveil.losses.byol import byol_loss
from unveil.losses.ntxent import nt_xent
from unveil.methods import DataInfo, build_method
from unveil.views import eval_transform

INFO = DataInfo(name="tiny", num_classes=2, image_size=16)
# Noise, focal and channel-wise masks on, high-pass sigma 1 (the CIFAR recipes' value).
MASKING = {"num_masks": 2, "high_pass_sigma": 1.0, "high_pass_kernel": 7,
           "branch_a": {"p_focal": 0.4, "p_ind": 0.8}, "branch_b": {"p_apply": 0.5}}


def make(name: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    extra = {"pred_hidden_dim": 32} if name == "byol" else {}
    return build_method(name, backbone=TinyNet(), data_info=INFO, proj_hidden_dim=32, proj_dim=8, **extra, **kw)


def images(n: int = 6) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def gen() -> torch.Generator:
    return torch.Generator().manual_seed(3)


def masked_inputs(method, x):
    """The two masked batches the method draws, redrawn from the same seed."""
    g = gen()
    v1 = method.views(x, g)
    v2 = getattr(method, "views_2", method.views)(x, g)  # BYOL's view 2 has its own settings (solarization)
    a, b = method.masker(v1, v2, g)
    return a.images, b.images


def test_masked_simclr_averages_nt_xent_over_all_cross_view_pairs():
    # eval(): running-stat BN, so per-pair forwards match the joint one; a low temperature spreads the pair losses
    method = make("simclr", masking=MASKING, temperature=0.02).eval()
    x = images()
    loss = method(x, torch.zeros(6), gen())["loss"]
    assert method.backbone.rows_seen == [2 * 2 * 6]  # one encoder pass over the 2 x 2 masked batches
    xa, xb = masked_inputs(method, x)
    with torch.no_grad():
        za, zb = method.projector(method.backbone(xa)).chunk(2), method.projector(method.backbone(xb)).chunk(2)
    pairs = [nt_xent(za[i], zb[j], method.temperature) for i, j in itertools.product(range(2), range(2))]
    assert loss.item() == pytest.approx(torch.stack(pairs).mean().item(), rel=1e-6)
    diagonal = (pairs[0] + pairs[3]) / 2  # a wrong pairing would give this; pairs measured 8.08, 7.88, 7.95, 7.76
    assert loss.item() != pytest.approx(diagonal.item(), rel=1e-4)


@pytest.mark.parametrize("symmetric", [True, False])
def test_masked_byol_averages_over_all_cross_view_pairs(symmetric):
    method = make("byol", masking=MASKING, symmetric=symmetric).eval()
    x = images()
    loss = method(x, torch.zeros(6), gen())["loss"]
    xa, xb = masked_inputs(method, x)
    with torch.no_grad():
        pa, pb = method._predict(xa).chunk(2), method._predict(xb).chunk(2)
        ta, tb = method._target(xa).chunk(2), method._target(xb).chunk(2)
    pairs = [byol_loss(pa[i], tb[j]) + (byol_loss(pb[j], ta[i]) if symmetric else 0)
             for i, j in itertools.product(range(2), range(2))]
    assert loss.item() == pytest.approx(torch.stack(pairs).mean().item(), rel=1e-5)


@pytest.mark.parametrize("name", ["simclr", "byol"])
def test_same_view_masks_one_augmented_view_twice(name):
    masking = {"same_view": True, "high_pass_sigma": None,
               "branch_a": {"p_focal": 0.0, "p_ind": 0.0, "noise_std": 0.0},
               "branch_b": {"p_apply": 1.0, "p_focal": 0.0, "p_ind": 0.0, "noise_std": 0.0}}
    method = make(name, masking=masking)
    calls, seen = [], []
    real_views, real_masker = method.views.forward, method.masker

    def counting_views(images, generator):
        calls.append(1)
        return real_views(images, generator)

    class Spy:
        num_masks = real_masker.num_masks

        def __call__(self, v1, v2, generator):
            seen.append((v1, v2))
            return real_masker(v1, v2, generator)

    method.views.forward, method.masker = counting_views, Spy()
    method(images(), torch.zeros(6), gen())
    assert len(calls) == 1 and seen[0][0] is seen[0][1]  # one view, masked twice
    method.views.forward, method.masker = real_views, real_masker
    g = gen()
    v1 = method.views(images(), g)
    a, b = method.masker(v1, v1, g)
    both_kept = ~a.mask & ~b.mask
    assert both_kept.any() and torch.equal(a.images[both_kept], b.images[both_kept])
    assert not torch.equal(a.mask, b.mask)  # independent masks


def test_without_masking_the_methods_are_unchanged():
    method = make("simclr").eval()
    assert method.masker is None and method.eval_filter is None
    x = images()
    loss = method(x, torch.zeros(6), gen())["loss"]
    g = gen()
    v1, v2 = method.views(x, g), method.views(x, g)
    with torch.no_grad():
        z1, z2 = method.projector(method.backbone(v1)), method.projector(method.backbone(v2))
    assert loss.item() == pytest.approx(nt_xent(z1, z2, method.temperature).item(), rel=1e-5)
    assert set(method.branch_views(x, gen())) == {"view 1", "view 2"}


@pytest.mark.parametrize("name", ["simclr", "byol"])
def test_embed_applies_the_training_high_pass(name):
    method = make(name, masking=MASKING).eval()
    assert method.eval_filter == {"high_pass": {"sigma": 1.0, "kernel_size": 7}}
    x = images()
    plain = eval_transform(x, 16, INFO.mean, INFO.std)
    with torch.no_grad():
        expected = method.backbone(high_pass(plain, 1.0, 7))
        unfiltered = method.backbone(plain)
    got = method.embed(x)
    assert torch.equal(got, expected) and not torch.allclose(got, unfiltered)
    no_hp = make(name, masking={**MASKING, "high_pass_sigma": None})
    assert no_hp.eval_filter is None


def test_branch_views_rows():
    method = make("byol", masking=MASKING)
    rows = method.branch_views(images(), gen())
    assert list(rows) == ["view 1", "view 2", "view 1 masked (A)", "view 2 masked (B)"]
    assert all(v.shape == (6, 3, 16, 16) and v.dtype == torch.float32 for v in rows.values())
    same = make("simclr", masking={**MASKING, "same_view": True}).branch_views(images(), gen())
    assert list(same) == ["view 1", "view 1 masked (A)", "view 1 masked (B)"]


def test_export_records_the_filter_and_input_filter_rebuilds_it(tmp_path):
    method = make("simclr", masking=MASKING)
    path = tmp_path / "bb.safetensors"
    export_backbone(method.backbone, path, {"method": {"name": "simclr"}}, eval_filter=method.eval_filter)
    assert json.loads(read_metadata(path)["eval_filter"]) == {"high_pass": {"sigma": 1.0, "kernel_size": 7}}
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(input_filter(path)(x), high_pass(x, 1.0, 7))
    plain = tmp_path / "plain.safetensors"
    export_backbone(make("simclr").backbone, plain, {})
    assert "eval_filter" not in read_metadata(plain) and read_eval_filter(plain) is None
    assert torch.equal(input_filter(plain)(x), x)


@pytest.mark.parametrize("bad, needle", [
    ({"num_masks": 0}, "num_masks"),
    ({"branch_a": {"p_focus": 0.2}}, "branch_a has no field 'p_focus'"),
    ({"same_view": "yes"}, "same_view must be true or false"),
    ({"masks": 2}, "method.masking has no setting masks"),
    ({"high_pass_sigma": 1.0, "high_pass_kernel": 4}, "odd integer"),
])
def test_bad_masking_settings_get_one_line(bad, needle):
    with pytest.raises(UserError, match=needle):
        make("simclr", masking=bad)


def test_supervised_input_filter_and_bad_filters():
    sup = build_method("supervised", backbone=TinyNet(), data_info=INFO, augment=False,
                       input_filter={"high_pass": {"sigma": 1.0}})
    assert sup.input_filter == {"high_pass": {"sigma": 1.0, "kernel_size": 7}}
    x = images()
    assert torch.equal(sup._eval_input(x), high_pass(eval_transform(x, 16, INFO.mean, INFO.std), 1.0, 7))
    with pytest.raises(UserError, match="input filter"):
        build_method("supervised", backbone=TinyNet(), data_info=INFO, input_filter={"blur": {}})


@pytest.mark.slow
def test_export_and_finetune_carry_the_filter(tiny_folder, tmp_path, monkeypatch, capsys):
    """epochs=0 run of masked SimCLR -> `unveil export` metadata -> `unveil eval finetune` config and method."""
    import argparse

    from unveil.commands import export as export_cmd
    from unveil.protocols.finetune import evaluate_finetune
    from unveil.runs.checkpoint import load_run
    from unveil.train import engine

    monkeypatch.setenv("UNVEIL_CACHE", str(tmp_path / "cache"))
    over = [f"data.name={tiny_folder}", "data.image_size=16", f"out={tmp_path / 'run'}", "backbone.cifar_stem=false",
            "method.proj_hidden_dim=32", "method.proj_dim=8", "train.batch_size=16", "train.epochs=0",
            "train.monitor=none", "train.precision=fp32", "train.progress=false",
            "method.masking.high_pass_sigma=1.0", "method.masking.high_pass_kernel=7"]
    run = engine.train(resolve(None, over))
    export_cmd.run(argparse.Namespace(run=str(run), output=str(tmp_path / "bb.safetensors")))
    assert read_eval_filter(tmp_path / "bb.safetensors") == {"high_pass": {"sigma": 1.0, "kernel_size": 7}}

    evaluate_finetune(run, epochs=1, lr=0.01, batch_size=16, overrides=["train.precision=fp32", "train.progress=false"])
    tuned, cfg, _ = load_run(run / "finetune", load_data=False)
    assert cfg["method"]["input_filter"] == {"high_pass": {"sigma": 1.0, "kernel_size": 7}}
    assert tuned.input_filter == cfg["method"]["input_filter"]


MSCN_RECIPES = [r for r in available_recipes() if r.startswith(("mscn_", "byol_cifar10"))]


def test_the_trajectory_is_shipped():
    steps = ["1_naive", "2_highpass", "3_focal", "4_noise", "5_channel", "6_asym", "7_multimask"]
    expected = {f"mscn_{fw}_{s}" for fw in ("simclr", "byol") for s in steps} | {"mscn_simclr_same_view", "byol_cifar10", "byol_cifar10_solo"}
    assert expected <= set(MSCN_RECIPES)


@pytest.mark.parametrize("recipe", MSCN_RECIPES)
def test_recipe_builds_and_steps(recipe):
    """The recipe's own method (its ResNet-18 CIFAR stem, heads, masks) on 4 tiny 16 px images."""
    cfg = resolve(recipe)
    torch.manual_seed(0)
    method = build_method_for(cfg, dataset_info={"name": "cifar10", "num_classes": 10, "image_size": 16,
                                                  "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)})
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = method(x, torch.zeros(4, dtype=torch.long), gen())
    assert torch.isfinite(out["loss"])
    masking = cfg["method"].get("masking")
    assert (method.eval_filter is not None) == bool(masking and masking.get("high_pass_sigma"))
