"""BYOL: one training step, the EMA target (exact cosine-momentum update), kill -9 + --resume."""

from __future__ import annotations

import math

import pytest
import torch
from killresume import assert_same_state, kill_and_resume
from tinynet import TinyNet
from torch import nn

from unveil.config import resolve
from unveil.losses.byol import byol_loss
from unveil.methods import DataInfo, build_method
from unveil.methods._siamese import cosine_momentum
from unveil.train.optim import build_optimizer

INFO = DataInfo(name="tiny", num_classes=2, image_size=16)


def tiny_byol(**kw) -> nn.Module:
    torch.manual_seed(0)
    return build_method("byol", backbone=TinyNet(), data_info=INFO, proj_hidden_dim=32, proj_dim=8,
                        pred_hidden_dim=32, **kw)


def images(n: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_step_trains_online_only_and_target_follows_the_exact_ema():
    method = tiny_byol()
    train = resolve(None, ["train.optimizer=lars", "train.weight_decay=1e-4"])["train"]
    opt = build_optimizer(method, train, lr=0.5)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    target = list(method.target_backbone.parameters()) + list(method.target_projector.parameters())
    assert not any(id(p) in in_opt for p in target)  # the optimizer never sees the target
    assert {id(p) for p in method.predictor.parameters()} <= in_opt

    out = method(images(), torch.zeros(8, dtype=torch.long), torch.Generator().manual_seed(1))
    assert torch.isfinite(out["loss"]) and 0 < out["loss"].item() < 8  # two summed 2 - 2cos terms
    out["loss"].backward()
    for module in (method.backbone, method.projector, method.predictor):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    assert all(p.grad is None for p in target)

    target_before = [p.detach().clone() for p in target]
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(target_before, target, strict=True))  # optimizer left it alone
    online = list(method.backbone.parameters()) + list(method.projector.parameters())
    assert not all(torch.equal(a, b) for a, b in zip(target_before, online, strict=True))  # online moved

    step, total = 3, 10
    m = 1.0 - (1.0 - 0.996) * (math.cos(math.pi * step / total) + 1) / 2  # BYOL's schedule, written out
    assert method.momentum_at(step, total) == pytest.approx(m, abs=1e-15) == cosine_momentum(step, total)
    method.after_optimizer_step(step, total)
    for before, now, src in zip(target_before, target, online, strict=True):
        assert torch.equal(now, torch.lerp(before, src.detach(), 1.0 - cosine_momentum(step, total)))
    method.after_optimizer_step(total, total)  # momentum 1 at the end: the target stops moving
    assert all(torch.equal(a, b) for a, b in zip([p.clone() for p in target], target, strict=True))


def test_asymmetric_loss_is_one_direction():
    sym, asym = tiny_byol(), tiny_byol(symmetric=False)
    sym.eval()  # batch-independent BN: the per-direction losses can be recomputed by hand
    asym.eval()
    x, g = images(), lambda: torch.Generator().manual_seed(4)
    loss_sym = sym(x, torch.zeros(8), g())["loss"]
    loss_asym = asym(x, torch.zeros(8), g())["loss"]
    gen = g()
    v1, v2 = sym.views(x, gen), sym.views(x, gen)
    with torch.no_grad():
        p1, p2 = sym._predict(v1), sym._predict(v2)
        t1, t2 = sym._target(v1), sym._target(v2)
    assert loss_asym.item() == pytest.approx(byol_loss(p1, t2).item(), rel=1e-5)
    assert loss_sym.item() == pytest.approx((byol_loss(p1, t2) + byol_loss(p2, t1)).item(), rel=1e-5)


def test_embed_is_the_backbone_on_the_eval_view_and_presets_are_byols():
    method = tiny_byol()
    assert method.views.cfg.jitter == (0.4, 0.4, 0.2, 0.1)  # BYOL's colour jitter (methods.md 3.2)
    assert method.eval_filter is None
    method.eval()
    assert method.embed(images()).shape == (8, 16)


@pytest.mark.parametrize("bad, needle", [({"base_momentum": 1.5}, "base_momentum"), ({"symmetric": "yes"}, "symmetric")])
def test_bad_settings_get_one_line(bad, needle):
    from unveil.errors import UserError

    with pytest.raises(UserError, match=needle):
        tiny_byol(**bad)


def test_killed_then_resumed_byol_equals_uninterrupted(tiny_folder, tmp_path):
    args = [f"--data={tiny_folder}", "--method=byol", "data.image_size=16", "backbone.cifar_stem=false",
            "method.proj_hidden_dim=64", "method.proj_dim=32", "method.pred_hidden_dim=64",
            "train.batch_size=16", "train.epochs=2", "train.ckpt_every_steps=2", "train.monitor=none",
            "train.precision=fp32", "train.progress=false", "train.optimizer=lars", "train.lr=0.3"]
    reference, resumed = kill_and_resume(args, tmp_path, kill_after_step=4)
    assert any(k.startswith("target_backbone.") for k in reference["model"])  # the EMA target is compared too
    assert_same_state(reference, resumed)
