"""Step parity with lightly (issue #17, item 2): one training step of unveil's SimCLR, MoCo v2, BYOL
and MAE against lightly's heads, losses and utilities assembled as lightly's examples assemble them.

Each test builds unveil's method from its shipped recipe through the engine (``engine.prepare``; only
the sizes the CPU cannot afford and the settings named in the test are overridden), copies its
weights into the lightly model by an explicit module correspondence (``lightly_reference``), runs
unveil's real step (``engine.train_step`` with unveil's own view pipeline, then
``after_optimizer_step`` as the training loop calls it) and feeds lightly the views, mask noise and
shuffle permutation that unveil drew. On CPU in fp32 with contiguous tensors:

* the loss agrees to <= 1e-5 relative;
* every trainable tensor with a counterpart has the same gradient to <= 1e-4 relative (‖Δ‖/‖g‖);
* where the method has one, the momentum encoder after the step and its EMA update agrees too.

The ResNet-18 uses the standard stem (the CIFAR stem at 32 px is ~16x the compute for the same check),
except MoCo with split BatchNorm, which needs the recipe's CIFAR stem (see there). The MAE ViT and
decoder keep the recipe's widths with 2 blocks each. Batches of 16 images of 32 px (MAE: 8).
"""

from __future__ import annotations

import os

import pytest

if not os.environ.get("CI"):  # in CI lightly must be there (the test extra): a missing one fails, not skips
    pytest.importorskip("lightly", reason="lightly is in the test extra: pip install -e .[test]")

import lightly_reference as ref  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from lightly.loss import NegativeCosineSimilarity, NTXentLoss  # noqa: E402
from lightly.models import utils as lightly_utils  # noqa: E402
from torch import nn  # noqa: E402

LOSS_TOL, GRAD_TOL, WEIGHT_TOL = 1e-5, 1e-4, 1e-5
BATCH = 16  # MoCo's recipe splits BatchNorm 8 ways: 2 images a split
RESNET_SMALL = ["backbone.cifar_stem=false"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    # 144 training images: the engine keeps MoCo's queue within a quarter of the data (32 keys here), so one step's
    # 16 keys fill half of it and the test sees them written at the pointer with the rest left as they were
    return ref.make_folder(tmp_path_factory.mktemp("parity") / "images", n_per_class=96)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("UNVEIL_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)


def _report(name: str, **figures: float) -> None:
    print(f"\n[parity {name}] " + ", ".join(f"{k} {v:.2e}" for k, v in figures.items()))


ZERO_GRAD = 1e-6  # a gradient below this fraction of the whole gradient's norm, on both sides, is zero


def _assert_grads(pairs: dict[str, str], unveil: dict, lightly: dict, scale: float = 1.0) -> float:
    """Every gradient with a counterpart within GRAD_TOL relative (‖Δ‖/‖g‖). A gradient that vanishes in
    exact arithmetic is rounding noise on both sides, whose ratio means nothing (BYOL: the projector's last
    bias feeds the predictor's BatchNorm, which removes any constant shift): such a tensor must be below
    ZERO_GRAD of the whole gradient's norm on both sides instead."""
    compared = {u: v for u, v in pairs.items() if u in unveil}
    missing = [u for u, v in compared.items() if v not in lightly]
    assert not missing, f"lightly has no gradient for {missing}"
    bound = ZERO_GRAD * scale * ref.norm_of({v: lightly[v] for v in compared.values()})
    zero = {u for u, v in compared.items() if max(float(unveil[u].norm()), scale * float(lightly[v].norm())) < bound}
    assert len(zero) < len(compared) // 10, f"too many vanishing gradients: {sorted(zero)}"
    worst, where = ref.worst({u: v for u, v in compared.items() if u not in zero}, unveil, lightly, scale)
    assert worst <= GRAD_TOL, f"gradient of {where} differs from lightly's {pairs[where]} by {worst:.2e} relative"
    return worst


# ---------------------------------------------------------------------------------------------


def test_simclr_step_matches_lightly(folder, tmp_path):
    """SimCLR = SimCLRProjectionHead + NTXentLoss(temperature).

    unveil forwards both views as one batch of 2B (BatchNorm statistics over both views, as SimCLR's
    own code concatenates them), so the lightly side is assembled with the same joint forward:
    ``z0, z1 = model(cat([x0, x1])).chunk(2)``; lightly's example calls the model once per view.
    lightly's last BatchNorm is affine (γ = 1, β = 0 at init) where unveil's has no affine parameters:
    γ and β have no counterpart; every other tensor is compared."""
    step = ref.prepare("simclr_cifar10", RESNET_SMALL, folder, tmp_path / "run", BATCH)
    method = step.method
    proj = method.projector
    model = ref.LightlySimCLR(ref.lightly_resnet(method.backbone), method.backbone.num_features,
                              proj[0].out_features, proj[3].out_features)
    pairs = ref.copy_weights(method, model, ref.SIMCLR_MAP)
    ref.check_coverage(method, model, pairs, {"projection_head.layers.4.weight", "projection_head.layers.4.bias"})
    last_bn = model.projection_head.layers[4]
    assert torch.equal(last_bn.weight, torch.ones_like(last_bn.weight)) and not last_bn.bias.any()

    images, labels = ref.batch_of(step, BATCH)
    ref.unveil_step(step, images, labels)
    x0, x1 = step.views
    assert len(step.views) == 2 and not torch.equal(x0, x1)

    z0, z1 = model(torch.cat([x0, x1])).chunk(2)
    loss = NTXentLoss(temperature=method.temperature)(z0, z1)
    loss.backward()
    loss_rel = ref.rel(step.loss, loss)
    assert loss_rel <= LOSS_TOL, f"loss {step.loss.item()} vs lightly {loss.item()}"
    grad_rel = _assert_grads(pairs, step.grads, ref.grads(model))
    _report("simclr", loss=loss_rel, grad=grad_rel)


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["plain_bn", "split_shuffle_bn"])
def test_mocov2_step_matches_lightly(folder, tmp_path, variant):
    """MoCo v2 = MoCoProjectionHead + NTXentLoss with a memory bank (unveil's queue) + update_momentum.

    ``plain_bn``: ``bn_splits=1, shuffle_bn=false`` on unveil's side, as lightly's MoCo example has
    neither. ``split_shuffle_bn``: the recipe's split BatchNorm and shuffle-BN, with lightly's
    SplitBatchNorm in lightly's ResNet (what its CIFAR-10 benchmark does through ResNetGenerator) and
    lightly's batch_shuffle / batch_unshuffle given the permutation unveil drew.

    The queue: unveil's initial queue is copied into lightly's memory bank; the loss must change with
    another bank (so it uses the queue), and both queues (and write pointers) are equal after the step.
    The momentum update: lightly updates at the start of each step (its example), unveil right after
    the optimizer step; the key encoders are compared after one step and lightly's next update. The
    optimizer is the recipe's SGD, on lightly's side as its benchmark builds it (one group, weight decay
    on every parameter: unveil's ``weight_decay_all``)."""
    split = variant == "split_shuffle_bn"
    # split: the recipe's CIFAR stem. With the standard stem at 32 px layer4's maps are 1x1, so each of the 8
    # BatchNorm splits normalises 2 numbers per channel, which blows lightly's first update_momentum (the identity
    # in exact arithmetic: key == query) up from last-bit rounding to 6e-5 of the loss; 4x4 maps keep it at 1e-7.
    overrides = ["backbone.cifar_stem=true"] if split else RESNET_SMALL + ["method.bn_splits=1", "method.shuffle_bn=false"]
    step = ref.prepare("mocov2_cifar10", overrides, folder, tmp_path / "run", BATCH)
    method = step.method
    assert (method.bn_splits > 1 and method.shuffle_bn) == split, "the recipe no longer splits/shuffles BatchNorm"
    head = method.head
    model = ref.LightlyMoCo(ref.lightly_resnet(method.backbone, method.bn_splits), method.backbone.num_features,
                            head[0].out_features, head[2].out_features)
    pairs = ref.copy_weights(method, model, ref.MOCO_MAP)
    ref.check_coverage(method, model, pairs, set())
    criterion = NTXentLoss(temperature=method.temperature, memory_bank_size=tuple(method.queue.keys.shape))
    criterion.memory_bank.bank.copy_(method.queue.keys)
    criterion.memory_bank.bank_ptr.zero_()
    queue_before = method.queue.keys.clone()
    assert int(method.queue.ptr) == 0
    (group,) = step.run.optimizer.param_groups  # weight_decay_all: one group
    params = [*model.backbone.parameters(), *model.projection_head.parameters()]
    optimizer = torch.optim.SGD(params, lr=group["lr"], momentum=group["momentum"], weight_decay=group["weight_decay"])

    images, labels = ref.batch_of(step, BATCH)
    import unveil.dist

    with ref.recorded_calls(unveil.dist, "shuffle_batch") as shuffles:
        ref.unveil_step(step, images, labels)
    x_query, x_key = step.views
    assert len(shuffles) == int(split)

    m = method.momentum
    ref_update = lambda: (lightly_utils.update_momentum(model.backbone, model.backbone_momentum, m),  # noqa: E731
                          lightly_utils.update_momentum(model.projection_head, model.projection_head_momentum, m))
    ref_update()  # lightly's example: at the start of every step
    query = model(x_query)
    if split:
        perm = torch.argsort(shuffles[0][1][1])  # unveil returns the indices that undo its permutation
        with ref.patched(torch, "randperm", lambda n, **kw: perm.clone()):
            x_key_shuffled, shuffle = lightly_utils.batch_shuffle(x_key)
        key = lightly_utils.batch_unshuffle(model.forward_momentum(x_key_shuffled), shuffle)
    else:
        key = model.forward_momentum(x_key)
    with torch.no_grad():  # no gradient: lightly's bank does not update. An empty (zero) bank moves the loss
        other_bank = NTXentLoss(temperature=method.temperature, memory_bank_size=tuple(method.queue.keys.shape))
        other_bank.memory_bank.bank.zero_()
        loss_other = other_bank(query, key)
    loss = criterion(query, key)
    loss.backward()
    loss_rel = ref.rel(step.loss, loss)
    assert loss_rel <= LOSS_TOL, f"loss {step.loss.item()} vs lightly {loss.item()}"
    assert ref.rel(step.loss, loss_other) > 1e3 * LOSS_TOL, "the loss does not depend on the queue"
    grad_rel = _assert_grads(pairs, step.grads, ref.grads(model))

    queue_rel = ref.rel(method.queue.keys, criterion.memory_bank.bank)
    assert queue_rel <= WEIGHT_TOL and int(method.queue.ptr) == int(criterion.memory_bank.bank_ptr) == BATCH
    assert not torch.equal(method.queue.keys[:BATCH], queue_before[:BATCH])  # the step's keys went in
    assert torch.equal(method.queue.keys[BATCH:], queue_before[BATCH:])

    optimizer.step()
    optimizer.zero_grad()
    ref_update()  # the start of lightly's next step = unveil's after_optimizer_step
    # lightly's SplitBatchNorm calls F.batch_norm itself and never counts num_batches_tracked (unused: momentum 0.1)
    compared = {u: v for u, v in pairs.items() if not (split and u.endswith("num_batches_tracked"))}
    weight_rel, where = ref.worst(compared, ref.tensors(method), ref.tensors(model))
    assert weight_rel <= WEIGHT_TOL, f"after the step + momentum update, {where} differs by {weight_rel:.2e}"
    _report(f"moco {variant}", loss=loss_rel, grad=grad_rel, queue=queue_rel, weights_after_ema=weight_rel)


# ---------------------------------------------------------------------------------------------

BYOL_SGD = ["train.optimizer=sgd", "train.lr=0.06", "train.scale_lr=false", "train.momentum=0.0",
            "train.weight_decay=0.0", "train.warmup_epochs=0"]


def test_byol_step_matches_lightly(folder, tmp_path):
    """BYOL = BYOLProjectionHead + BYOLPredictionHead + NegativeCosineSimilarity + update_momentum,
    each view through the online and the target network separately (BatchNorm statistics per view) on
    both sides, as BYOL's and lightly's code do.

    lightly's example loss is ``0.5·(−cos(p0, z1) − cos(p1, z0))``; BYOL's own code (and unveil) sums
    the normalised MSE ``2 − 2·cos`` over both directions: ``(2 − 2c₀₁) + (2 − 2c₁₀) = 4·(1 + loss_lightly)``.
    So the test asserts ``loss_unveil = 4·(1 + loss_lightly)`` and ``grad_unveil = 4·grad_lightly``.
    The optimizer is lightly's example's (SGD, lr 0.06, no momentum, no weight decay) on both sides (the
    recipe's LARS is not what is compared), at 4x the lr on lightly's side so that both take the same step; the EMA momentum is unveil's cosine value after step 1 on
    both sides (lightly's example schedules per epoch with ``cosine_schedule``)."""
    step = ref.prepare("byol_cifar10", RESNET_SMALL + BYOL_SGD, folder, tmp_path / "run", BATCH)
    method = step.method
    proj, pred = method.projector, method.predictor
    model = ref.LightlyBYOL(ref.lightly_resnet(method.backbone), method.backbone.num_features,
                            proj[0].out_features, proj[3].out_features, pred[0].out_features)
    pairs = ref.copy_weights(method, model, ref.BYOL_MAP)
    ref.check_coverage(method, model, pairs, set())
    # unveil's gradient is 4x lightly's (see above): lightly's plain SGD at 4x the lr takes the same step
    optimizer = torch.optim.SGD(model.parameters(), lr=4 * step.lr)
    assert step.lr == pytest.approx(0.06)

    images, labels = ref.batch_of(step, BATCH)
    ref.unveil_step(step, images, labels)
    x0, x1 = step.views
    assert len(step.views) == 2

    def ref_update(m: float) -> None:
        lightly_utils.update_momentum(model.backbone, model.backbone_momentum, m)
        lightly_utils.update_momentum(model.projection_head, model.projection_head_momentum, m)

    total = step.run.total_steps
    ref_update(method.momentum_at(0, total))  # lightly's example: at the start of every step
    criterion = NegativeCosineSimilarity()
    p0, z0 = model(x0), model.forward_momentum(x0)
    p1, z1 = model(x1), model.forward_momentum(x1)
    loss = 0.5 * (criterion(p0, z1) + criterion(p1, z0))
    loss.backward()
    loss_rel = ref.rel(step.loss, 4 * (1 + loss.detach()))
    assert loss_rel <= LOSS_TOL, f"loss {step.loss.item()} vs 4·(1 + lightly's {loss.item()})"
    grad_rel = _assert_grads(pairs, step.grads, ref.grads(model), scale=4.0)

    optimizer.step()
    optimizer.zero_grad()
    ref_update(method.momentum_at(1, total))  # the start of lightly's next step = unveil's after_optimizer_step
    params = {n for n, _ in method.named_parameters()}
    weight_rel, where = ref.worst({u: v for u, v in pairs.items() if u in params}, ref.tensors(method),
                                  ref.tensors(model))
    assert weight_rel <= WEIGHT_TOL, f"after the step + EMA update, {where} differs by {weight_rel:.2e}"
    _report("byol", loss=loss_rel, grad=grad_rel, weights_after_ema=weight_rel)


# ---------------------------------------------------------------------------------------------

MAE_SMALL = ["backbone.depth=2", "method.decoder_depth=2"]  # the recipe's widths; fewer blocks for the CPU


@pytest.mark.parametrize("norm_pix", [False, True])
def test_mae_step_matches_lightly(folder, tmp_path, norm_pix):
    """MAE = lightly's MaskedVisionTransformerTIMM around the same timm ViT as unveil's backbone,
    MaskedVisionTransformerDecoderTIMM with unveil's decoder weights, the prediction head, and
    ``utils.patchify`` / ``get_at_index`` for the masked targets (lightly's MAE example).

    The mask: lightly's ``random_token_mask`` runs on the noise unveil drew for this step (its
    ``torch.rand`` is replaced by unveil's noise; the class token is kept first, as lightly does).
    lightly's example loss is the MSE on raw pixels: unveil with ``norm_pix_loss=false`` is compared
    with it as is; with ``norm_pix_loss=true`` lightly's targets are normalised per patch first
    (``utils.normalize_mean_var``: MAE's mean / unbiased variance, eps 1e-6)."""
    import unveil.corruptions.patch_mask as patch_mask

    step = ref.prepare("mae_cifar10", MAE_SMALL + [f"method.norm_pix_loss={str(norm_pix).lower()}"], folder,
                       tmp_path / "run", 8)
    method = step.method
    dec = method.decoder
    vit = timm.create_model(**method.backbone.timm_kwargs())
    model = ref.LightlyMAE(vit, dec.embed.out_features, len(dec.blocks), dec.blocks[0].attn.num_heads,
                           method.mask_ratio)
    # the fixed sin-cos positions lightly initialises are unveil's (encoder and decoder)
    assert ref.rel(method.backbone.pos_embed, model.backbone.vit.pos_embed) <= 1e-6
    assert ref.rel(dec.pos_embed, model.decoder.pos_embed) <= 1e-6
    pairs = ref.copy_weights(method, model, ref.MAE_MAP)
    ref.check_coverage(method, model, pairs, {"backbone.mask_token"})  # lightly's encoder mask token: unused by MAE

    images, labels = ref.batch_of(step, 8)
    with ref.recorded_calls(patch_mask, "rand") as draws:
        ref.unveil_step(step, images, labels)
    assert len(draws) == 1 and len(step.views) == 1
    noise = draws[0][1]
    idx_keep, idx_mask = ref.lightly_token_mask(noise, method.mask_ratio)
    assert (idx_keep[:, 0] == 0).all() and idx_mask.shape[1] == method.backbone.num_tokens - idx_keep.shape[1] + 1

    x = step.views[0]
    prediction, target = model(x, idx_keep, idx_mask)
    if norm_pix:
        target = lightly_utils.normalize_mean_var(target)
    loss = nn.MSELoss()(prediction, target)
    loss.backward()
    loss_rel = ref.rel(step.loss, loss)
    assert loss_rel <= LOSS_TOL, f"loss {step.loss.item()} vs lightly {loss.item()}"
    grad_rel = _assert_grads(pairs, step.grads, ref.grads(model))
    _report(f"mae norm_pix={norm_pix}", loss=loss_rel, grad=grad_rel)
