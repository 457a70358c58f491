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
from unveil.optim import build_optimizer

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
    v1, v2 = sym.views(x, gen), sym.views_2(x, gen)  # view 2 has its own settings (solarization)
    with torch.no_grad():
        p1, p2 = sym._predict(v1), sym._predict(v2)
        t1, t2 = sym._target(v1), sym._target(v2)
    assert loss_asym.item() == pytest.approx(byol_loss(p1, t2).item(), rel=1e-5)
    assert loss_sym.item() == pytest.approx((byol_loss(p1, t2) + byol_loss(p2, t1)).item(), rel=1e-5)


def test_embed_is_the_backbone_on_the_eval_view_and_presets_are_byols():
    method = tiny_byol()
    assert method.views.cfg.jitter == (0.4, 0.4, 0.2, 0.1)  # BYOL's colour jitter (docs/design.md 3.2)
    assert method.eval_filter is None
    method.eval()
    assert method.embed(images()).shape == (8, 16)


@pytest.mark.parametrize("bad, needle", [({"base_momentum": 1.5}, "base_momentum"), ({"symmetric": "yes"}, "symmetric")])
def test_bad_settings_get_one_line(bad, needle):
    from unveil.errors import UserError

    with pytest.raises(UserError, match=needle):
        tiny_byol(**bad)


@pytest.mark.slow
@pytest.mark.dist
def test_killed_then_resumed_byol_equals_uninterrupted(tiny_folder, tmp_path):
    args = [f"--data={tiny_folder}", "--method=byol", "data.image_size=16", "backbone.cifar_stem=false",
            "method.proj_hidden_dim=64", "method.proj_dim=32", "method.pred_hidden_dim=64",
            "train.batch_size=16", "train.epochs=2", "train.ckpt_every_steps=2", "train.monitor=none",
            "train.precision=fp32", "train.progress=false", "train.optimizer=lars", "train.lr=0.3"]
    reference, resumed = kill_and_resume(args, tmp_path, kill_after_step=4)
    assert any(k.startswith("target_backbone.") for k in reference["model"])  # the EMA target is compared too
    assert_same_state(reference, resumed)


# --- issue #17: LARS trust coefficient, per-view forwards, the second view's solarization ---------------------------


def _lars_step(train_overrides: list[str], lr: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One LARS step on a single decayed weight: (weight before, its gradient, weight after)."""
    model = nn.Linear(4, 3, bias=False)
    torch.nn.init.constant_(model.weight, 0.5)
    opt = build_optimizer(model, resolve(None, ["train.optimizer=lars", "train.weight_decay=0", *train_overrides])["train"],
                          lr=lr)
    model.weight.grad = torch.arange(12.0).view(3, 4) / 100
    before = model.weight.detach().clone()
    opt.step()
    return before, model.weight.grad, model.weight.detach()


@pytest.mark.parametrize("overrides, clip", [([], False), (["train.lars_trust_coefficient=0.02"], False),
                                             (["train.lars_trust_coefficient=0.02", "train.lars_clip_lr=true"], True)])
def test_lars_trust_coefficient_and_clip_are_settings(overrides, clip):
    eta = 0.02 if overrides else 0.001  # 0.001: LARS' / BYOL's default
    for lr in (0.5, 1e-3):  # clipping binds at the small lr only: there min(lr, eta * ratio) = lr
        before, grad, after = _lars_step(overrides, lr)
        ratio = eta * before.norm() / grad.norm()  # first step: no momentum history, update = lr * trust * grad
        step = torch.minimum(ratio, torch.tensor(lr)) if clip else lr * ratio
        torch.testing.assert_close(after, before - step * grad, rtol=1e-6, atol=0)


@pytest.mark.parametrize("value", [0, -0.01])
def test_bad_lars_trust_coefficient_is_one_line(value):
    from unveil.errors import UserError

    with pytest.raises(UserError, match="train.lars_trust_coefficient must be > 0") as exc:
        resolve(None, [f"train.lars_trust_coefficient={value}"])
    assert "\n" not in str(exc.value)


def _hand_loss(method, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
    """BYOL's L + L~ with every view forwarded ALONE through the online and the target network."""
    p1, p2 = method._predict(v1), method._predict(v2)
    t1, t2 = method._target(v1), method._target(v2)
    return byol_loss(p1, t2) + byol_loss(p2, t1)


def test_each_view_goes_through_the_encoders_alone():
    """Train mode: BatchNorm normalises with batch statistics, so a joint batch of both views is a different loss."""
    method = tiny_byol().train()
    x = images()
    loss = method(x, torch.zeros(8), torch.Generator().manual_seed(4))["loss"]
    assert method.backbone.rows_seen == [8, 8] and method.target_backbone.rows_seen == [8, 8]
    gen = torch.Generator().manual_seed(4)
    v1, v2 = method.views(x, gen), method.views_2(x, gen)
    separate = _hand_loss(method, v1, v2)
    joint_p = method._predict(torch.cat([v1, v2])).chunk(2)
    joint_t = method._target(torch.cat([v1, v2])).chunk(2)
    joint = byol_loss(joint_p[0], joint_t[1]) + byol_loss(joint_p[1], joint_t[0])
    assert loss.item() == pytest.approx(separate.item(), rel=1e-6)
    assert abs(separate.item() - joint.item()) > 1e-3  # the joint forward really is a different loss


def test_masked_batches_go_through_the_encoders_alone():
    method = tiny_byol(masking={"num_masks": 2, "high_pass_sigma": None}).train()
    method(images(), torch.zeros(8), torch.Generator().manual_seed(4))
    assert method.backbone.rows_seen == [8] * 4 and method.target_backbone.rows_seen == [8] * 4


def test_the_second_view_solarizes_and_views_2_overrides_it():
    method = tiny_byol()
    assert (method.views.cfg.solarize_p, method.views_2.cfg.solarize_p) == (0.0, 0.2)  # BYOL's Table 6
    assert method.views.cfg.jitter == method.views_2.cfg.jitter
    sym = tiny_byol(views={"jitter_p": 0.5}, views_2={"solarize_p": 0.0})
    assert sym.views_2.cfg == sym.views.cfg and sym.views.cfg.jitter_p == 0.5  # views: both, views_2: the second
    one = tiny_byol(views={"solarize_p": 0.3})
    assert one.views.cfg.solarize_p == one.views_2.cfg.solarize_p == 0.3  # views sets both, over the preset's
    from unveil.errors import UserError

    with pytest.raises(UserError, match="unknown views_2 option 'solarise_p'"):
        tiny_byol(views_2={"solarise_p": 0.2})


def test_fp32_heads_keep_the_heads_in_float32_under_bf16_autocast():
    """The projector and predictor (online and target) run in float32 while the backbone runs in bf16: their
    outputs feed a cosine near 1, which bf16's 8-bit mantissa resolves to only ~0.4 %."""
    x = torch.rand(8, 3, 16, 16)
    for fp32_heads, head_dtype in ((True, torch.float32), (False, torch.bfloat16)):
        method = tiny_byol(fp32_heads=fp32_heads).train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert method.backbone(x).dtype == torch.bfloat16  # the backbone keeps bf16's speed
            assert method._predict(x).dtype == head_dtype and method._target(x).dtype == head_dtype
    full = tiny_byol(fp32_heads=True).train()
    plain = tiny_byol(fp32_heads=False).train()
    # outside autocast the setting changes nothing: the same loss, bit for bit
    assert torch.equal(full._predict(x), plain._predict(x)) and torch.equal(full._target(x), plain._target(x))


def test_weight_decay_all_puts_every_trainable_parameter_in_one_decayed_group():
    """lightly's CIFAR-10 benchmark passes ``model.parameters()`` to SGD with weight decay (BN and biases
    decayed too); the default groups exempt 1-d parameters, as solo-learn's ``exclude_bias_n_norm``."""
    train = resolve(None, ["train.optimizer=sgd", "train.weight_decay=5e-4"])["train"]
    online = [p for p in tiny_byol().parameters() if p.requires_grad]
    default = build_optimizer(tiny_byol(), train, lr=0.1).param_groups
    assert [g["weight_decay"] for g in default] == [5e-4, 0.0]
    assert any(p.ndim == 1 for p in default[1]["params"])  # norms and biases exempt by default
    (group,) = build_optimizer(tiny_byol(weight_decay_all=True), train, lr=0.1).param_groups
    assert group["weight_decay"] == 5e-4 and len(group["params"]) == len(online)
    with pytest.raises(Exception, match="weight_decay_all must be true or false"):
        tiny_byol(weight_decay_all="yes")
