"""Un-Mix and MixDet losses recomputed by hand from the papers' equations and official code (issue 17, item 2).

Neither has an installable reference, so on a tiny batch each test rebuilds what the loss depends on
from the draws the method made (views, the mixing coin / lam / box, the key shuffle, all recorded by
spies, so both sides use the same ones) and writes the maths out itself, following the official code:
* MoCo's InfoNCE: logits ``[q·k, q·queue] / τ`` with q, k L2-normalised, cross-entropy to the positive
  (``nce`` below; unveil's ``info_nce`` is not called);
* mixtures as the code slices them: ``mixed = x.clone(); mixed[:, :, y1:y2, x1:x2] = source[...]``, the
  global mixup ``lam·x + (1 − lam)·flip(x)``, lam corrected to the box area;
* the key: the key encoder on the shuffled view, unshuffled after (MoCo's shuffle-BN);
* MixDet's ``crop_and_upsample`` (models/detmix.py): a 1x1 conv, bilinear upsampling to the image size,
  the mean inside the box (local) and the sum outside it over the outside area (global), each normalised.
Equations: Un-Mix (docs/design.md 5.2, szq0214/Un-Mix unmix_c10.py, asymmetric and symmetric), MixDet
Approach 2 = Eq. 8 as p-lam/mix-ssl run_detmix.py + models/detmix.py compute it (5.3, including the
explicit forward of the reversed mixture), Approach 1 = Eq. 7 with G<->G as its third term (5.4).
Split BatchNorm (2 splits of 4) is on, as in the papers' CIFAR recipe.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import unveil.dist
import unveil.methods.mixdet as mixdet_module
import unveil.methods.moco as moco_module
from unveil.methods import DataInfo, build_method

INFO = DataInfo(name="tiny", num_classes=2, image_size=16)
B, SPLITS, TAU = 8, 2, 0.1
pytestmark = pytest.mark.usefixtures("one_thread")


class TinyMapNet(nn.Module):
    """Two stride-2 conv-BN-ReLU layers: a 16 x 4 x 4 map at 16 px (in-box and out-of-box pooling
    differ), its spatial mean as the pooled features."""

    num_features = 16

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())

    def forward(self, x: Tensor, return_map: bool = False):
        fmap = self.net(x)
        pooled = fmap.mean(dim=(2, 3))
        return (pooled, fmap) if return_map else pooled


def make(name: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    return build_method(name, backbone=TinyMapNet(), data_info=INFO, proj_dim=8, queue_size=32, bn_splits=SPLITS,
                        temperature=TAU, **kw).train()


def images() -> Tensor:
    return torch.randint(0, 256, (B, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def nce(q: Tensor, k: Tensor, queue: Tensor) -> Tensor:
    """-log(exp(q·k/τ) / (exp(q·k/τ) + Σ_n exp(q·n/τ))), mean over the batch (float64)."""
    q, k, queue = q.double(), k.double(), queue.double()
    q, k = q / q.norm(dim=1, keepdim=True), k / k.norm(dim=1, keepdim=True)
    logits = torch.cat([(q * k).sum(dim=1, keepdim=True), q @ queue.T], dim=1) / TAU
    return (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()


def paste_by_hand(base: Tensor, source: Tensor, box: Tensor) -> Tensor:
    y1, y2, x1, x2 = (int(v) for v in box)
    out = base.clone()
    out[:, :, y1:y2, x1:x2] = source[:, :, y1:y2, x1:x2]
    return out


def area_lam(box: Tensor) -> float:
    y1, y2, x1, x2 = (int(v) for v in box)
    return 1 - (y2 - y1) * (x2 - x1) / (16 * 16)


class Spy:
    """Records what ``fn`` returned for each call (monkeypatched in its module)."""

    def __init__(self, monkeypatch, module, name: str) -> None:
        self.real, self.calls = getattr(module, name), []
        monkeypatch.setattr(module, name, self)

    def __call__(self, *args, **kw):
        out = self.real(*args, **kw)
        self.calls.append(out)
        return out


class RecordViews(nn.Module):
    def __init__(self, views: nn.Module) -> None:
        super().__init__()
        self.inner, self.out = views, []

    def forward(self, x: Tensor, generator: torch.Generator) -> Tensor:
        self.out.append(self.inner(x, generator))
        return self.out[-1]


def spy_all(monkeypatch, method: nn.Module, module, mixer: str) -> tuple[RecordViews, Spy, Spy]:
    method.views = RecordViews(method.views)
    return method.views, Spy(monkeypatch, module, mixer), Spy(monkeypatch, unveil.dist, "shuffle_batch")


def key_by_hand(method: nn.Module, x: Tensor, shuffles: Spy) -> Tensor:
    """The key encoder on the shuffled batch the method drew for ``x``, put back in order."""
    shuffled, unshuffle = next((s, u) for s, u in shuffles.calls if s.shape == x.shape and torch.equal(s, x[torch.argsort(u)]))
    return method.key_head(method.key_backbone(shuffled))[unshuffle]


def crop_and_upsample(proj: nn.Conv2d, fmap: Tensor, box: Tensor) -> tuple[Tensor, Tensor]:
    """mix-ssl's crop_and_upsample: (local, global), each L2-normalised."""
    up = F.interpolate(F.conv2d(fmap, proj.weight, proj.bias), size=(16, 16), mode="bilinear", align_corners=False)
    y1, y2, x1, x2 = (int(v) for v in box)
    local = up[:, :, y1:y2, x1:x2].mean(dim=(2, 3))
    mask = torch.ones_like(up)
    mask[:, :, y1:y2, x1:x2] = 0
    glob = (up * mask).flatten(2).sum(dim=2) / (16 * 16 - (y2 - y1) * (x2 - x1))
    return F.normalize(local, dim=1), F.normalize(glob, dim=1)


def query_with_map(method: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    pooled, fmap = method.backbone(x, return_map=True)
    return method.head(pooled), fmap


# ---- Un-Mix (docs/design.md 5.2) ----

@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("prob", [1.0, 0.0], ids=["global", "region"])
def test_unmix_loss_equals_unmix_c10_by_hand(monkeypatch, symmetric, prob):
    method = make("moco", mix="unmix", unmix_prob=prob, symmetric=symmetric)
    views, mixes, shuffles = spy_all(monkeypatch, method, moco_module, "unmix")
    queue = method.queue.keys.clone()
    out = method(images(), torch.zeros(B, dtype=torch.long), torch.Generator().manual_seed(3))
    x1, x2 = views.out
    assert len(mixes.calls) == 1  # one mixture of view 1 per step, in both directions when symmetric
    drawn = mixes.calls[0]
    if prob == 1.0:  # unmix_c10.py: mixed = lam·im_1 + (1 − lam)·flip(im_1)
        lam = float(drawn.lam)
        mixed = lam * x1 + (1 - lam) * x1.flip(0)
    else:  # mixed = im_1 with the box from flip(im_1); lam = 1 − box area / image area
        lam = area_lam(drawn.box)
        mixed = paste_by_hand(x1, x1.flip(0), drawn.box)
        assert float(drawn.lam) == pytest.approx(lam)
    assert torch.allclose(drawn.images, mixed, atol=1e-6)
    with torch.no_grad():
        q_m = method.head(method.backbone(mixed))
        q_m_flip = q_m.flip(0)  # the code's torch.flip(q_mixed, (0,))
        q1, k2 = method.head(method.backbone(x1)), key_by_hand(method, x2, shuffles)
        expected = nce(q1, k2, queue) + lam * nce(q_m, k2, queue) + (1 - lam) * nce(q_m_flip, k2, queue)
        if symmetric:  # loss_12 + loss_21 + lam·loss_m11 + (1 − lam)·loss_m12 + lam·loss_m21 + (1 − lam)·loss_m22
            q2, k1 = method.head(method.backbone(x2)), key_by_hand(method, x1, shuffles)
            expected = expected + nce(q2, k1, queue) + lam * nce(q_m, k1, queue) + (1 - lam) * nce(q_m_flip, k1, queue)
    assert out["loss"].item() == pytest.approx(float(expected), rel=1e-5)
    assert float(out["lam"]) == pytest.approx(lam, rel=1e-6)
    enqueued = torch.cat([k1, k2]) if symmetric else k2  # the code's k = torch.cat([k1, k2], dim=0)
    n = enqueued.shape[0]
    assert torch.allclose(method.queue.keys[:n], F.normalize(enqueued, dim=1), atol=1e-6)
    assert torch.equal(method.queue.keys[n:], queue[n:])


# ---- MixDet Approach 2 (docs/design.md 5.3, Eq. 8) ----

def test_mixdet_approach2_loss_equals_eq8_as_the_official_code(monkeypatch):
    method = make("mixdet", approach=2)
    views, mixes, shuffles = spy_all(monkeypatch, method, mixdet_module, "mix_within_batch")
    queue, local_queue = method.queue.keys.clone(), method.local_queue.keys.clone()
    out = method(images(), torch.zeros(B, dtype=torch.long), torch.Generator().manual_seed(4))
    x1, x2 = views.out
    (drawn,) = mixes.calls
    box1, box2, lam = drawn.box1, drawn.box2, area_lam(drawn.box1)
    mixed1, mixed2 = paste_by_hand(x1, x1.flip(0), box1), paste_by_hand(x2, x2.flip(0), box2)
    assert torch.equal(drawn.mixed1, mixed1) and torch.equal(drawn.mixed2, mixed2)
    with torch.no_grad():
        q = method.head(method.backbone(x1))
        q_m, f1 = query_with_map(method, mixed1)
        q_mr, f1r = query_with_map(method, mixed1.flip(0))  # the code's encoder_q(im1_mixed_re): a real forward
        l1, g1 = crop_and_upsample(method.proj, f1, box1)
        l1r, g1r = crop_and_upsample(method.proj, f1r, box1)
        k = key_by_hand(method, x2, shuffles)
        _, f2 = method.key_backbone(mixed2, return_map=True)  # no shuffle for the mixed key, as the code
        lk, _ = crop_and_upsample(method.proj, f2, box2)  # the query's projection conv (shared)
        expected = (nce(q, k, queue)
                    + lam * (nce(q_m, k, queue) + nce(g1, k, queue) + nce(l1, lk, local_queue))
                    + (1 - lam) * (nce(q_mr, k, queue) + nce(g1r, k, queue) + nce(l1r, lk, local_queue)))
    assert out["loss"].item() == pytest.approx(float(expected), rel=1e-5)
    assert float(out["lam"]) == pytest.approx(lam)
    assert torch.allclose(method.queue.keys[:B], F.normalize(k, dim=1), atol=1e-6)
    assert torch.allclose(method.local_queue.keys[:B], lk, atol=1e-6)


# ---- MixDet Approach 1 (docs/design.md 5.4, Eq. 7) ----

def test_mixdet_approach1_loss_equals_eq7_by_hand(monkeypatch):
    method = make("mixdet", approach=1)
    views, mixes, shuffles = spy_all(monkeypatch, method, mixdet_module, "mix_between_branches")
    queue, local_queue, global_queue = (q.keys.clone() for q in (method.queue, method.local_queue, method.global_queue))
    out = method(images(), torch.zeros(B, dtype=torch.long), torch.Generator().manual_seed(2))
    x1, x2 = views.out
    (drawn,) = mixes.calls
    box, lam = drawn.box, area_lam(drawn.box)
    x1m, x2m = paste_by_hand(x1, x2, box), paste_by_hand(x2, x1, box)  # one box, regions swapped between the views
    assert torch.equal(drawn.x1, x1m) and torch.equal(drawn.x2, x2m)
    with torch.no_grad():
        q = method.head(method.backbone(x1))
        q_mixed, fq = query_with_map(method, x1m)
        q_local, q_global = crop_and_upsample(method.proj, fq, box)
        k = key_by_hand(method, x2, shuffles)
        _, fk = method.key_backbone(x2m, return_map=True)
        k_local, k_global = crop_and_upsample(method.proj, fk, box)
        # Eq. 7: L_orig + lam·L_mixed + (1 − lam)·(L_LG + L_LL + L_GG), three memory banks
        expected = (nce(q, k, queue) + lam * nce(q_mixed, k, queue)
                    + (1 - lam) * (nce(q_local, k_global, global_queue) + nce(q_local, k_local, local_queue)
                                   + nce(q_global, k_global, global_queue)))
    assert out["loss"].item() == pytest.approx(float(expected), rel=1e-5)
    for bank, keys in ((method.queue, F.normalize(k, dim=1)), (method.local_queue, k_local),
                       (method.global_queue, k_global)):
        assert torch.allclose(bank.keys[:B], keys, atol=1e-6)
