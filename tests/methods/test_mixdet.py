"""MixDet (docs/design.md 5.3, 5.4): one step per approach on a tiny batch (loss, gradients, the two or
three queues, EMA), and every pairing traced by index on images whose pixels name their image."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_moco import B, MapBackbone, TwoCodeViews, code_images, identify, identity_, images, record_info_nce
from torch import nn

import unveil.methods.mixdet as mixdet_module
from unveil.backbones import build_backbone
from unveil.corruptions.mixing import box_masks
from unveil.errors import UserError
from unveil.methods import DataInfo, build_method
from unveil.methods.mixdet import box_pool

INFO = DataInfo(name="tiny", num_classes=2, image_size=16)
LABELS = torch.zeros(B, dtype=torch.long)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def tiny_mixdet(**kw) -> nn.Module:
    # the CIFAR stem on 16 px leaves a 2x2 layer4 map: in-box and out-of-box pooling differ
    torch.manual_seed(0)
    kw = {"queue_size": 64, "bn_splits": 1, **kw}
    return build_method("mixdet", backbone=build_backbone("resnet18", cifar_stem=True), data_info=INFO, **kw)


def traced_mixdet(**kw) -> nn.Module:
    """MixDet over the identity 'backbone' (map = image), identity head and 1x1 conv, code views."""
    method = build_method("mixdet", backbone=MapBackbone(), data_info=INFO, proj_dim=3, queue_size=32, bn_splits=1, **kw)
    identity_(method.head, method.key_head, method.proj)
    method.views = TwoCodeViews()
    return method


@pytest.mark.parametrize("kw", [{}, {"key_projection": "ema", "pairing": "code"}, {"approach": 1},
                                {"approach": 1, "independent_boxes": True, "lam": 0.3}])
def test_step_loss_gradients_queues_and_momentum(kw):
    method = tiny_mixdet(momentum=0.9, **kw)
    queues = [method.queue, method.local_queue] + ([method.global_queue] if kw.get("approach") == 1 else [])
    before = [q.keys.clone() for q in queues]
    g = torch.Generator().manual_seed(1)
    state = g.get_state()
    out = method(images(), LABELS, g)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert method.backbone.conv1.weight.grad.abs().sum() > 0 and method.proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in method.key_backbone.parameters())
    for queue, old in zip(queues, before):
        assert int(queue.ptr) == B and torch.equal(queue.keys[B:], old[B:])
    # the new rows: k of view 2, the key mixture's in-box (and out-of-box) vectors, recomputed from
    # the same draws (plain BN: the shuffle only reorders the sums, hence 1e-5)
    g.set_state(state)
    d = method._inputs(images(), g)
    with torch.no_grad():
        k = F.normalize(method.key_head(method.key_backbone(d["x2"])), dim=1)
        k_local, k_global = method._key_local_global(d["k_mixed"], d["box_k"])
    for queue, expected in zip(queues, [k, k_local, k_global]):
        assert torch.allclose(queue.keys[:B], expected, atol=1e-5)
    if "lam" in kw:
        assert float(out["lam"]) == pytest.approx(kw["lam"])
    if kw.get("key_projection") == "ema":  # the key's conv follows the query's conv by EMA
        torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5).step()
        old = [p.clone() for p in method.key_proj.parameters()]
        method.after_optimizer_step(1, 10)
        for o, q, n in zip(old, method.proj.parameters(), method.key_proj.parameters()):
            assert not torch.equal(o, q.detach()) and torch.equal(n, torch.lerp(o, q.detach(), 0.1))
    else:
        assert method.key_proj is None and not any(n.startswith("key_proj") for n in method.state_dict())


def test_approach2_mixtures_and_positives_by_index(monkeypatch):
    calls = record_info_nce(monkeypatch, mixdet_module)
    method = traced_mixdet()
    x = code_images()
    d = method._inputs(x, torch.Generator().manual_seed(4))
    x1, x2 = d["x1"], d["x2"]
    in1, _ = box_masks(d["box_q"], 16, 16)
    in2, _ = box_masks(d["box_k"], 16, 16)
    assert 0 < in1.sum() < 256 and 0 < in2.sum() < 256
    # mixed1[i]: x1[i] outside, x1[B−1−i] inside; its reversal the other way round; mixed2 likewise with box 2
    assert torch.equal(d["q_mixed"], torch.where(in1, x1.flip(0), x1))
    assert torch.equal(d["q_mixed"].flip(0), torch.where(in1, x1, x1.flip(0)))
    assert torch.equal(d["k_mixed"], torch.where(in2, x2.flip(0), x2))
    lam = float(d["lam"])
    assert lam == pytest.approx(1 - in1.float().mean().item())

    method.views.calls = 0
    out = method(x, LABELS, torch.Generator().manual_seed(4))
    assert len(calls) == 7  # orig, m, LL, GG, then the reversed: m^R, GG^R, LL^R
    ids = [(identify(q) if n not in (1, 4) else None, identify(k)) for n, (q, k, _) in enumerate(calls)]
    same = [(1, i) for i in range(B)], [(2, i) for i in range(B)]
    rev = [(1, B - 1 - i) for i in range(B)], [(2, B - 1 - i) for i in range(B)]
    assert ids[0] == same                               # L_orig: q(x1[i]) <-> k(x2[i])
    assert ids[2] == rev                                # L_LL: inside = x1[B−1−i] <-> inside = x2[B−1−i]
    assert ids[3] == same                               # L_GG: outside = x1[i] <-> k(x2[i])
    assert ids[1][1] == ids[4][1] == same[1]            # L_m, L_m^R: against k of image i
    # the reverse G/L terms: the reversed mixture's queries against the unchanged keys, as the
    # official code (docs/design.md 5.3 correctness note: other images' keys, which is what makes them
    # differ from the forward terms)
    assert ids[5] == (rev[0], same[1])                  # L_GG^R: outside = x1[B−1−i] <-> k(x2[i])
    assert ids[6] == (same[0], rev[1])                  # L_LL^R: inside = x1[i] <-> inside = x2[B−1−i]
    assert torch.equal(calls[4][0], calls[1][0].flip(0)) and torch.equal(calls[5][0], calls[3][0].flip(0))
    assert torch.equal(calls[6][0], calls[2][0].flip(0))
    v = [c[2] for c in calls]
    assert torch.allclose(out["loss"], v[0] + lam * (v[1] + v[3] + v[2]) + (1 - lam) * (v[4] + v[5] + v[6]), atol=1e-6)


@pytest.mark.parametrize("independent", [False, True])
def test_approach1_swapped_regions_and_positives_by_index(monkeypatch, independent):
    calls = record_info_nce(monkeypatch, mixdet_module)
    method = traced_mixdet(approach=1, independent_boxes=independent)
    x = code_images()
    d = method._inputs(x, torch.Generator().manual_seed(2))
    x1, x2 = d["x1"], d["x2"]
    in_q, _ = box_masks(d["box_q"], 16, 16)
    in_k, _ = box_masks(d["box_k"], 16, 16)
    assert 0 < in_q.sum() < 256 and 0 < in_k.sum() < 256
    assert torch.equal(d["box_q"], d["box_k"]) != independent  # this seed places the two boxes apart
    # each mixture holds only image i: view 1 with view 2's region, and view 2 with view 1's
    assert torch.equal(d["q_mixed"], torch.where(in_q, x2, x1))
    assert torch.equal(d["k_mixed"], torch.where(in_k, x1, x2))

    method.views.calls = 0
    out = method(x, LABELS, torch.Generator().manual_seed(2))
    assert len(calls) == 5  # orig, mixed, LL, GG, LG
    ids = [(identify(q) if n != 1 else None, identify(k)) for n, (q, k, _) in enumerate(calls)]
    v1, v2 = [(1, i) for i in range(B)], [(2, i) for i in range(B)]
    assert ids[0] == (v1, v2) and ids[1][1] == v2
    assert ids[2] == (v2, v1)   # L_LL: q's box holds view 2, k's box holds view 1, both image i
    assert ids[3] == (v1, v2)   # L_GG: outside q's box view 1, outside k's box view 2
    assert ids[4] == (v2, v2)   # L_LG: q's local (view 2) <-> k's global (view 2)
    lam = float(out["lam"])
    assert lam == pytest.approx(1 - in_q.float().mean().item())
    v = [c[2] for c in calls]
    assert torch.allclose(out["loss"], v[0] + lam * v[1] + (1 - lam) * (v[4] + v[2] + v[3]), atol=1e-6)


def test_box_pool_means_inside_and_outside_and_survives_a_full_box():
    fmap = torch.randn(2, 4, 2, 2)
    box = torch.tensor([2, 10, 4, 16])
    local, glob = box_pool(fmap, box, (16, 16))
    up = F.interpolate(fmap, size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.allclose(local, F.normalize(up[:, :, 2:10, 4:16].mean(dim=(2, 3)), dim=1), atol=1e-6)
    outside = up.sum(dim=(2, 3)) - up[:, :, 2:10, 4:16].sum(dim=(2, 3))
    assert torch.allclose(glob, F.normalize(outside / (256 - 96), dim=1), atol=1e-5)
    local, glob = box_pool(fmap, torch.tensor([0, 16, 0, 16]), (16, 16))
    assert torch.isfinite(glob).all() and torch.equal(glob, torch.zeros_like(glob))


def test_branch_views_rows_and_one_line_errors():
    for approach, n_rows in ((2, 5), (1, 4)):
        rows = tiny_mixdet(approach=approach).branch_views(images(), torch.Generator().manual_seed(0))
        assert len(rows) == n_rows and all(r.shape == (B, 3, 16, 16) for r in rows.values())
    for bad in ({"approach": 3}, {"pairing": "index"}, {"pairing": "semantic"}, {"lam": 0.5}, {"approach": 1, "lam": "mean"},
                {"independent_boxes": True}, {"approach": 1, "pairing": "code"}, {"key_projection": "copy"},
                {"symmetric": True}):
        with pytest.raises(UserError) as err:
            tiny_mixdet(**bad)
        assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="bn_splits"):
        tiny_mixdet(bn_splits=3)(images(), LABELS, torch.Generator().manual_seed(0))


# ---- Approach 2's reverse terms (issue 17, 1a) ----

def split_bn_mixdet() -> nn.Module:
    """A tiny MixDet in train mode with split BatchNorm: 4 splits of the batch of 8."""
    return tiny_mixdet(bn_splits=4).train()


def test_reversed_mixture_forward_equals_the_flipped_forward_under_split_bn():
    """Why Approach 2 takes the reverse queries as flips: a train-mode forward of flip(mixed1) through
    split BN (the reversal maps each split onto a split) gives flip of mixed1's outputs, pooled
    local/global vectors included. A permutation that moves images across splits does not (so the
    check can fail)."""
    method = split_bn_mixdet()
    d = method._inputs(images(), torch.Generator().manual_seed(4))
    with torch.no_grad():
        fwd = method._query_mixed(d["q_mixed"], d["box_q"])
        rev = method._query_mixed(d["q_mixed"].flip(0), d["box_q"])
        swap = torch.tensor([2, 1, 0, *range(3, B)])  # images 0 and 2 change splits
        swapped = method._query_mixed(d["q_mixed"][swap], d["box_q"])
    for f, r in zip(fwd, rev):
        assert torch.allclose(r, f.flip(0), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(swapped[0], fwd[0][swap], rtol=1e-3, atol=1e-3)


def test_removed_semantic_pairing_repeated_the_forward_terms():
    """Why ``pairing: semantic`` was removed: its reverse terms NCE(G1r, flip(k)) and NCE(L1r, flip(k_local))
    (G1r, L1r from an explicit forward of the reversed mixture) equal the forward L_GG and L_LL, while
    Eq. 8's reverse terms (unchanged keys) are a different loss."""
    method = split_bn_mixdet()
    d = method._inputs(images(), torch.Generator().manual_seed(4))
    queue, local_queue, t = method.queue.keys, method.local_queue.keys, method.temperature
    with torch.no_grad():
        _, q_local, q_global = method._query_mixed(d["q_mixed"], d["box_q"])
        _, q_local_r, q_global_r = method._query_mixed(d["q_mixed"].flip(0), d["box_q"])
        k = method.key_head(method.key_backbone(d["x2"]))
        k_local, _ = method._key_local_global(d["k_mixed"], d["box_k"])
    nce = mixdet_module.info_nce
    gg, ll = nce(q_global, k, queue, t), nce(q_local, k_local, local_queue, t)
    assert torch.allclose(nce(q_global_r, k.flip(0), queue, t), gg, rtol=1e-5)
    assert torch.allclose(nce(q_local_r, k_local.flip(0), local_queue, t), ll, rtol=1e-5)
    assert not torch.allclose(nce(q_global_r, k, queue, t), gg, rtol=1e-3)
    assert not torch.allclose(nce(q_local_r, k_local, local_queue, t), ll, rtol=1e-3)


def test_approach2_encodes_two_query_batches_not_three():
    """The reversed mixture costs no query forward: the query backbone sees view 1 and mixed1 only."""
    method = split_bn_mixdet()
    seen: list[torch.Tensor] = []
    # prepend: before split BatchNorm's reordering hook, so the batches are seen as the method passes them
    method.backbone.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()), prepend=True)
    d = method._inputs(images(), torch.Generator().manual_seed(4))
    method(images(), LABELS, torch.Generator().manual_seed(4))
    assert len(seen) == 2 and torch.equal(seen[0], d["x1"]) and torch.equal(seen[1], d["q_mixed"])


@pytest.mark.parametrize("approach", [1, 2])
def test_prime_fills_every_queue_with_the_keys_a_step_would_enqueue(approach):
    """queue_init: data: the original, local (and Approach 1's global) queues start as the keys of the first
    batches (losses.infonce.fill_from_data); random leaves MoCo's random unit vectors."""
    method = tiny_mixdet(approach=approach, shuffle_bn=False)  # 64 keys, 8 a batch
    queues = [method.queue, method.local_queue] + ([method.global_queue] if approach == 1 else [])
    batches = [images(B, seed=s) for s in range(8)]
    g = torch.Generator().manual_seed(2)
    state = g.get_state()
    method.prime(iter(batches), g)
    assert all(int(q.ptr) == 0 for q in queues)
    g.set_state(state)
    expected: list[list[torch.Tensor]] = [[] for _ in queues]
    with torch.no_grad():
        for b in batches:
            d = method._inputs(b, g)
            k_local, k_global = method._key_local_global(d["k_mixed"], d["box_k"])
            k = method.key_head(method.key_backbone(d["x2"]))
            for rows, key in zip(expected, [k, k_local, k_global]):
                rows.append(key)
    for queue, rows in zip(queues, expected):
        assert torch.allclose(queue.keys, F.normalize(torch.cat(rows), dim=1), atol=1e-5)
    kept = tiny_mixdet(approach=approach, queue_init="random")
    before = [q.keys.clone() for q in (kept.queue, kept.local_queue)]
    kept.prime(iter(batches), torch.Generator().manual_seed(2))
    assert all(torch.equal(q.keys, b) for q, b in zip((kept.queue, kept.local_queue), before))
