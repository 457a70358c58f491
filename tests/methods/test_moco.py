"""MoCo (docs/design.md 5.1, 5.2, 5.5): one step on a tiny batch (loss, gradients, queue, EMA), Un-Mix's
pairing traced by index on hand-built images, the split-BN batch check, kill -9 + --resume."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from killresume import assert_same_state, kill_and_resume
from torch import Tensor, nn

from unveil.backbones import build_backbone
from unveil.corruptions.mixing import box_masks
from unveil.errors import UserError
from unveil.methods import DataInfo, build_method

INFO = DataInfo(name="tiny", num_classes=2, image_size=16)
B = 8


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def tiny_moco(**kw) -> nn.Module:
    torch.manual_seed(0)
    kw = {"queue_size": 64, "bn_splits": 4, **kw}
    return build_method("moco", backbone=build_backbone("resnet18", cifar_stem=False), data_info=INFO, **kw)


def images(n: int = B, seed: int = 0) -> Tensor:
    return torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


# ---- stubs that keep the identity of every image through the method (shared with test_mixdet) ----

def code_images(n: int = B) -> Tensor:
    """uint8 images whose every pixel is image i's code (10, 10 + 20i, 200 − 20i): one direction
    per index, so a pooled and L2-normalised vector says which image it came from."""
    i = torch.arange(n)
    code = torch.stack([torch.full_like(i, 10), 10 + 20 * i, 200 - 20 * i], dim=1).to(torch.uint8)
    return code.view(n, 3, 1, 1).expand(n, 3, 16, 16).contiguous()


class TwoCodeViews(nn.Module):
    """In place of the augmentation: call 1 (view 1) gives pixels / 255, call 2 (view 2) the same
    with the channels reversed, so view 1 and view 2 of image i differ and are both identifiable."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: Tensor, generator: torch.Generator) -> Tensor:
        self.calls += 1
        v = x.float() / 255
        return v if self.calls % 2 else v.flip(1)


class MapBackbone(nn.Module):
    """The image itself as the 'feature map' (3 channels, full resolution) and its mean as the
    pooled features: mixtures stay traceable pixel by pixel."""

    num_features = 3

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: Tensor, return_map: bool = False):
        fmap = x * self.scale
        pooled = fmap.mean(dim=(2, 3))
        return (pooled, fmap) if return_map else pooled


def identity_(*linears: nn.Module) -> None:
    """Make 3->3 Linear / 1x1 Conv layers the identity (weights eye, bias 0)."""
    with torch.no_grad():
        for layer in linears:
            layer.weight.copy_(torch.eye(3).view_as(layer.weight))
            layer.bias.zero_()


def identify(vectors: Tensor, n: int = B) -> list[tuple[int, int]]:
    """(view, image index) of each row: the nearest (cosine) of view 1's and view 2's codes."""
    codes = TwoCodeViews()(code_images(n), None)
    refs = torch.cat([F.normalize(codes.mean(dim=(2, 3)), dim=1),
                      F.normalize(codes.flip(1).mean(dim=(2, 3)), dim=1)])
    sims = F.normalize(vectors.float(), dim=1) @ refs.T
    best = sims.argmax(dim=1)
    assert (sims.max(dim=1).values > 0.9999).all(), "a row is a mixture, not one image's code"
    return [(int(b) // n + 1, int(b) % n) for b in best]


def record_info_nce(monkeypatch, module) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Record (q, k, value) of every InfoNCE term the method computes, in call order."""
    calls: list[tuple[Tensor, Tensor, Tensor]] = []
    real = module.info_nce

    def spy(q, k, queue, temperature=0.1):
        value = real(q, k, queue, temperature)
        calls.append((q.detach().clone(), k.detach().clone(), value.detach()))
        return value

    monkeypatch.setattr(module, "info_nce", spy)
    return calls


# ---- one step ----

@pytest.mark.parametrize("kw", [{}, {"mix": "cutmix"}, {"mix": "unmix", "head": "mlp", "proj_hidden_dim": 32},
                                {"mix": "unmix", "symmetric": True}])
def test_step_loss_gradients_queue_and_momentum(kw):
    # plain BN (bn_splits 1) so the keys can be recomputed below; split BN runs in the resume test
    method = tiny_moco(momentum=0.9, bn_splits=1, **kw)
    before = method.queue.keys.clone()
    g = torch.Generator().manual_seed(1)
    state = g.get_state()
    out = method(images(), torch.zeros(B, dtype=torch.long), g)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert method.backbone.conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in method.key_backbone.parameters())
    if kw.get("mix"):
        assert 0 <= float(out["lam"]) <= 1 and torch.isfinite(out["loss_mix"])
    n_keys = 2 * B if kw.get("symmetric") else B
    assert int(method.queue.ptr) == n_keys
    assert torch.equal(method.queue.keys[n_keys:], before[n_keys:])
    # the new rows are the normalised keys of view 2 (symmetric: of view 1 then view 2, as Un-Mix's
    # cat([k1, k2])), recomputed from the same views; BN is permutation-invariant, so shuffle-BN only
    # reorders the sums (hence 1e-5)
    g.set_state(state)
    v1, v2 = method.views(images(), g), method.views(images(), g)
    with torch.no_grad():
        expected = torch.cat([method.key_head(method.key_backbone(v)) for v in ([v1, v2] if kw.get("symmetric") else [v2])])
    assert torch.allclose(method.queue.keys[:n_keys], F.normalize(expected, dim=1), atol=1e-5)

    # EMA: key ← m·key + (1 − m)·query, after an optimizer step moved the query
    torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5).step()
    old = [p.clone() for p in [*method.key_backbone.parameters(), *method.key_head.parameters()]]
    online = [p.detach().clone() for p in [*method.backbone.parameters(), *method.head.parameters()]]
    assert not all(torch.equal(o, q) for o, q in zip(old, online))
    method.after_optimizer_step(1, 10)
    new = [*method.key_backbone.parameters(), *method.key_head.parameters()]
    for o, q, n in zip(old, online, new):
        assert torch.equal(n, torch.lerp(o, q, 0.1))
        assert torch.allclose(n, 0.9 * o + 0.1 * q, atol=1e-6)


def test_unmix_pairs_image_i_with_reversed_batch_and_flips_q_m(monkeypatch):
    import unveil.methods.moco as moco_module

    calls = record_info_nce(monkeypatch, moco_module)
    method = build_method("moco", backbone=MapBackbone(), data_info=INFO, head="linear", proj_dim=3, queue_size=32,
                          bn_splits=1, mix="cutmix")
    identity_(method.head, method.key_head)
    method.views = TwoCodeViews()
    x = code_images()
    g = torch.Generator().manual_seed(3)
    d = method._inputs(x, g)
    mixed, lam = d["mixed"], float(d["lam"])
    # the region mix: image i outside the box, image B−1−i inside; lam = the outside share
    inside = (mixed - d["query"]).abs().amax(dim=1, keepdim=True) > 0
    inside = inside[0:1]
    assert 0 < inside.sum() < 16 * 16 and abs(lam - (1 - inside.float().mean().item())) < 1e-6
    for i in range(B):
        assert torch.equal(mixed[i][:, ~inside[0, 0]].unique(dim=1), d["query"][i][:, :1, 0])
        assert torch.equal(mixed[i][:, inside[0, 0]].unique(dim=1), d["query"][B - 1 - i][:, :1, 0])
    method.views.calls = 0
    out = method(x, torch.zeros(B, dtype=torch.long), torch.Generator().manual_seed(3))
    assert len(calls) == 3  # L(q, k), L(q_m, k), L(flip(q_m), k)
    (q, k, l_orig), (q_m, k_m, l_m), (q_mr, k_mr, l_mr) = calls
    assert identify(q) == [(1, i) for i in range(B)] and identify(k) == [(2, i) for i in range(B)]
    assert torch.equal(k_m, k) and torch.equal(k_mr, k)  # one key for every term
    assert torch.equal(q_mr, q_m.flip(0))
    # q_m[i] = lam·code(i) + (1 − lam)·code(B−1−i) (pooled mean of the mixture)
    expected = lam * q + (1 - lam) * q.flip(0)
    assert torch.allclose(q_m, expected, atol=1e-5)
    assert torch.allclose(out["loss"], l_orig + lam * l_m + (1 - lam) * l_mr, atol=1e-6)


def test_unmix_global_mix_is_mixup_with_reversed_batch():
    method = tiny_moco(mix="unmix", unmix_prob=1.0)
    d = method._inputs(images(), torch.Generator().manual_seed(0))
    lam = d["lam"]
    assert torch.allclose(d["mixed"], lam * d["query"] + (1 - lam) * d["query"].flip(0), atol=1e-5)
    rows = method.branch_views(images(), torch.Generator().manual_seed(0))
    assert list(rows) == ["view 1 (query)", "view 2 (key)", "mixed (query)", "mixed, reversed (query)"]
    assert all(r.shape == (B, 3, 16, 16) for r in rows.values())
    assert torch.equal(rows["mixed, reversed (query)"], rows["mixed (query)"].flip(0))


def test_bad_settings_and_batch_not_divisible_by_splits_are_one_line():
    method = tiny_moco(bn_splits=8)
    with pytest.raises(UserError) as err:
        method(images(12), torch.zeros(12, dtype=torch.long), torch.Generator().manual_seed(0))
    assert "\n" not in str(err.value) and "method.bn_splits=8" in str(err.value)
    with pytest.raises(UserError) as err:  # 8 images in 8 splits: BatchNorm would see one image per split
        method(images(8), torch.zeros(8, dtype=torch.long), torch.Generator().manual_seed(0))
    assert "\n" not in str(err.value) and "1 image per BatchNorm split" in str(err.value)
    for bad in ({"mix": "mixup"}, {"head": "conv"}, {"bn_split": 8}, {"queue_size": 0}, {"temperature": 0}):
        with pytest.raises(UserError) as err:
            tiny_moco(**bad)
        assert "\n" not in str(err.value)


def test_box_masks_cover_what_the_mix_pasted():
    # the box the region mix reports is where the reversed batch went (guards the mask convention)
    from unveil.corruptions.mixing import unmix

    x = code_images().float()
    r = unmix(x, torch.Generator().manual_seed(5), prob=0.0)
    inside, outside = box_masks(r.box, 16, 16)
    assert torch.equal(torch.where(inside, x.flip(0), x), r.images)
    assert outside.sum() == round(float(r.lam) * 256)


@pytest.mark.dist
def test_killed_then_resumed_moco_equals_uninterrupted(tiny_folder, tmp_path):
    args = [f"--data={tiny_folder}", "--method=moco", "data.image_size=16", "backbone.cifar_stem=false",
            "method.bn_splits=4", "method.queue_size=64", "method.mix=unmix", "train.batch_size=16",
            "train.epochs=2", "train.ckpt_every_steps=2", "train.monitor=none", "train.precision=fp32",
            "train.progress=false"]
    reference, resumed = kill_and_resume(args, tmp_path, kill_after_step=4)
    assert {"queue.keys", "queue.ptr", "key_backbone.conv1.weight"} <= set(reference["model"])
    assert int(reference["model"]["queue.ptr"]) == reference["step"] * 16 % 64
    assert_same_state(reference, resumed)


def test_embed_head_gives_paper_5s_kNN_features():
    """method.embed=head: the query head's 128-d output (paper 5's kNN monitor), else backbone features."""
    x = images(8)
    backbone_feats = tiny_moco(bn_splits=1).eval().embed(x)
    head_feats = tiny_moco(bn_splits=1, embed="head").eval().embed(x)
    assert head_feats.shape == (8, 128) and backbone_feats.shape[1] != 128
    with pytest.raises(UserError) as err:
        tiny_moco(embed="projection")
    assert "method.embed must be backbone or head" in str(err.value)


def test_mocov2_recipe_projector_hidden_width_is_the_encoders():
    """MoCo v2's code (facebookresearch/moco builder.py, --mlp) makes the MLP's hidden layer as wide as
    the encoder (dim_mlp = fc in-features): 512 for ResNet-18, not 2048."""
    from unveil.build import build_method_for
    from unveil.config import resolve

    cfg = resolve("mocov2_cifar10", ["backbone.cifar_stem=false"])
    info = {"name": "cifar10", "num_classes": 10, "image_size": 32, "mean": (0.5,) * 3, "std": (0.25,) * 3}
    method = build_method_for(cfg, dataset_info=info)
    linears = [m for m in method.head.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 512), (512, 128)]
    assert method.backbone.num_features == 512
    assert tiny_moco(head="mlp", proj_hidden_dim=32).head[0].out_features == 32  # an explicit width still wins
    with pytest.raises(UserError, match="method.proj_hidden_dim must be a positive integer or null"):
        tiny_moco(head="mlp", proj_hidden_dim=0)


def test_fp32_heads_keep_the_query_and_key_heads_in_float32_under_bf16_autocast():
    """Under bf16 the backbone runs in bf16; with fp32_heads the query and key heads run in float32."""
    x = torch.rand(8, 3, 16, 16)
    for fp32_heads, head_dtype in ((True, torch.float32), (False, torch.bfloat16)):
        method = tiny_moco(head="mlp", proj_hidden_dim=32, proj_dim=8, queue_size=16, bn_splits=2,
                           fp32_heads=fp32_heads).train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert method.backbone(x).dtype == torch.bfloat16
            assert method._query(x).dtype == head_dtype
            assert method._key_head(method.key_backbone(x)).dtype == head_dtype


# ---- the queue starts from data (losses.infonce.fill_from_data) ----

def test_queue_starts_as_keys_of_the_first_batches_not_random_vectors():
    """queue_init: data (default): ``prime`` fills the queue with the key encoder's keys of one view of each batch,
    in batch order, drawn with the run's generator, taking only the batches it needs; random keeps MoCo's
    random unit vectors (the queue that let MoCo collapse at τ 0.1 on 5,000 CIFAR-10 images)."""
    batches = [images(B, seed=s) for s in range(10)]
    taken: list[Tensor] = []

    def source():
        for b in batches:
            taken.append(b)
            yield b

    method = tiny_moco(bn_splits=1, shuffle_bn=False)  # 64 keys, 8 a batch: 8 batches fill it
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    method.prime(source(), g)
    assert len(taken) == 8 and int(method.queue.ptr) == 0
    g.set_state(state)
    with torch.no_grad():
        expected = torch.cat([method.key_head(method.key_backbone(method.views(b, g))) for b in batches[:8]])
    assert torch.allclose(method.queue.keys, F.normalize(expected, dim=1), atol=1e-5)

    kept = tiny_moco(bn_splits=1, queue_init="random")
    before = kept.queue.keys.clone()
    kept.prime(iter(batches), torch.Generator().manual_seed(3))
    assert torch.equal(kept.queue.keys, before)
    with pytest.raises(UserError, match="method.queue_init must be data"):
        tiny_moco(queue_init="zeros")


def _mean_cos(keys: Tensor) -> float:
    """Mean cosine over the distinct pairs of unit rows (the diagonal's ones left out)."""
    n = keys.shape[0]
    return float(((keys @ keys.T).sum() - keys.pow(2).sum()) / (n * (n - 1)))


def test_a_fresh_run_primes_the_queue_and_a_resumed_one_does_not(tiny_folder, tmp_path, monkeypatch):
    """The engine primes before the first step of a fresh run only (a resumed run's queue is in its checkpoint;
    priming again would change it: the kill -9 test checks the resumed state equals the uninterrupted one)."""
    from unveil.config import resolve
    from unveil.runs.checkpoint import load_checkpoint
    from unveil.train import engine

    monkeypatch.setenv("UNVEIL_CACHE", str(tmp_path / "cache"))
    primed: list[int] = []
    from unveil.methods.moco import MoCo

    original = MoCo.prime

    def counting(self, batches, generator):
        primed.append(1)
        return original(self, batches, generator)

    monkeypatch.setattr(MoCo, "prime", counting)

    def cfg(out: str, *extra: str) -> dict:
        return resolve(None, [f"data.name={tiny_folder}", "data.image_size=16", f"out={tmp_path / out}", "method.name=moco",
                              "backbone.cifar_stem=false", "method.bn_splits=2", "method.queue_size=16",
                              "train.batch_size=8", "train.max_steps=1", "train.epochs=2", "train.monitor=none",
                              "train.precision=fp32", "train.progress=false", *extra])

    data_run = engine.train(cfg("data"))
    random_run = engine.train(cfg("random", "method.queue_init=random"))
    assert len(primed) == 2
    # after one step 8 rows are that step's keys; the other 8 are the primed keys (similar: one network on
    # similar images) or random unit vectors (nearly orthogonal in 128 dimensions). 16 keys: within a quarter
    # of the tiny folder's training images, so the engine keeps the queue as configured
    data_tail = load_checkpoint(data_run / "last.ckpt")["model"]["queue.keys"][8:]
    random_tail = load_checkpoint(random_run / "last.ckpt")["model"]["queue.keys"][8:]
    assert data_tail.shape[0] == random_tail.shape[0] == 8
    assert _mean_cos(data_tail) > 0.25 and abs(_mean_cos(random_tail)) < 0.1  # measured: 0.37 and -0.01
    primed.clear()
    engine.train(cfg("data", "train.max_steps=2"), resume=data_run)
    assert primed == []
