"""MSCN-SimCLR and MSCN-BYOL losses recomputed by hand from the papers' definitions (issue #17, item 2).

No reference implementation of Masked Siamese ConvNets is installable, so on a tiny batch the test rebuilds
everything the loss depends on from the same generator draws and writes the maths out itself:
* the masked inputs: x_hp = x - GaussianBlur_sigma(x) (a dense 2-D Gaussian, reflect padding), then
  x_masked = (1 - M) * x_hp + M * (fill + noise) with the masker's masks M (MSCN §4.3-4.4);
* SimCLR: NT-Xent over the 2N embeddings of one cross-view pair,
  -log(exp(s_pos / t) / sum_{k != i} exp(s_ik / t)) averaged over the 2N anchors; both branches
  encoded as one batch (SimCLR's code);
* BYOL: 2 - 2 cos(p, t) per sample, both directions summed (BYOL's L + L~), every batch forwarded
  alone through the online and the target network (BYOL's code);
* multimasks: the mean over the k x k cross-view pairs (mask i of view 1 with mask j of view 2; MSCN §4.5).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from tinynet import TinyNet

from unveil.methods import DataInfo, build_method

INFO = DataInfo(name="tiny", num_classes=2, image_size=16)
B, K, SIGMA, KERNEL = 4, 2, 1.0, 7
# every MSCN ingredient: high-pass, grid + focal (MSN-sized) masks, channel-wise masks, asymmetry, multimasks
MASKING = {
    "num_masks": K,
    "high_pass_sigma": SIGMA,
    "high_pass_kernel": KERNEL,
    "branch_a": {"p_focal": 0.5, "p_ind": 0.8, "focal_scale": [0.05, 0.3], "noise_std": 0.0, "fill": 0.1},
    "branch_b": {"p_apply": 0.5, "p_focal": 0.5, "p_ind": 0.8, "focal_scale": [0.05, 0.3], "noise_std": 0.0},
}


def make(name: str, **kw):
    torch.manual_seed(0)
    extra = {"pred_hidden_dim": 32} if name == "byol" else {}
    return build_method(
        name, backbone=TinyNet(), data_info=INFO, proj_hidden_dim=32, proj_dim=8, **extra, **kw
    ).train()


def images() -> torch.Tensor:
    return torch.randint(
        0, 256, (B, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )


def high_pass_by_hand(x: torch.Tensor) -> torch.Tensor:
    """x - blur(x): a dense k x k Gaussian (sigma 1, k 7) per channel, reflect padding."""
    r = torch.arange(KERNEL, dtype=torch.float64) - KERNEL // 2
    g1 = torch.exp(-(r**2) / (2 * SIGMA**2))
    g2 = torch.outer(g1, g1) / g1.sum() ** 2
    weight = g2.expand(3, 1, KERNEL, KERNEL).to(x.dtype)
    blurred = F.conv2d(F.pad(x, [KERNEL // 2] * 4, mode="reflect"), weight, groups=3)
    return x - blurred


def masked_inputs_by_hand(method, x: torch.Tensor, seed: int):
    """The two branches' masked batches (K*B rows, mask-major), rebuilt from the method's draws."""
    g = torch.Generator().manual_seed(seed)
    second = getattr(method, "views_2", method.views)
    v1 = method.views(x, g)
    v2 = second(x, g)
    a, b = method.masker(v1, v2, g)  # the masks M (and the masker's own output, to compare with)
    out = []
    for view, res, cfg in ((v1, a, method.masker.branch_a), (v2, b, method.masker.branch_b)):
        hp = high_pass_by_hand(view).repeat(K, 1, 1, 1)
        m = res.mask.to(hp.dtype)
        by_hand = (1 - m) * hp + m * cfg.fill  # noise_std 0: the fill alone
        torch.testing.assert_close(res.images, by_hand, atol=1e-5, rtol=0)
        assert 0.05 < res.mask.float().mean() < 0.95  # masks really are there
        out.append(by_hand)
    return out


def nt_xent_by_hand(z1: torch.Tensor, z2: torch.Tensor, t: float) -> torch.Tensor:
    n = z1.shape[0]
    z = torch.cat([z1, z2])
    z = z / z.norm(dim=1, keepdim=True)
    total = 0.0
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        sims = [(z[i] @ z[k]) / t for k in range(2 * n) if k != i]
        total = total - (z[i] @ z[pos]) / t + torch.log(torch.stack([s.exp() for s in sims]).sum())
    return total / (2 * n)


def byol_term_by_hand(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    cos = [(p[i] @ t[i]) / (p[i].norm() * t[i].norm()) for i in range(p.shape[0])]
    return torch.stack([2 - 2 * c for c in cos]).mean()


def test_mscn_simclr_loss_by_hand():
    method = make("simclr", masking=MASKING, temperature=0.3)
    x = images()
    loss = method(x, torch.zeros(B), torch.Generator().manual_seed(5))["loss"]
    xa, xb = masked_inputs_by_hand(method, x, seed=5)
    with torch.no_grad():  # SimCLR: all 2*K*B masked inputs through the encoder as one batch
        z = method.projector(method.backbone(torch.cat([xa, xb])))
    za, zb = z[: K * B].chunk(K), z[K * B :].chunk(K)
    pairs = [nt_xent_by_hand(za[i], zb[j], 0.3) for i, j in itertools.product(range(K), range(K))]
    expected = sum(pairs) / len(pairs)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert len({round(p.item(), 4) for p in pairs}) == K * K  # the pairs differ: the averaging is tested
    assert math.log(2 * B - 1) - 1 < loss.item() < 20


@pytest.mark.parametrize("symmetric", [True, False])
def test_mscn_byol_loss_by_hand(symmetric):
    method = make("byol", masking=MASKING, symmetric=symmetric)
    x = images()
    loss = method(x, torch.zeros(B), torch.Generator().manual_seed(6))["loss"]
    xa, xb = masked_inputs_by_hand(method, x, seed=6)
    with torch.no_grad():  # BYOL: every B-row batch forwarded alone (BatchNorm statistics per batch)
        online = [
            method.predictor(method.projector(method.backbone(part))) for part in (*xa.chunk(K), *xb.chunk(K))
        ]
        target = [
            method.target_projector(method.target_backbone(part)) for part in (*xa.chunk(K), *xb.chunk(K))
        ]
    pa, pb, ta, tb = online[:K], online[K:], target[:K], target[K:]
    pairs = []
    for i, j in itertools.product(range(K), range(K)):
        term = byol_term_by_hand(pa[i], tb[j])
        if symmetric:
            term = term + byol_term_by_hand(pb[j], ta[i])
        pairs.append(term)
    expected = sum(pairs) / len(pairs)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    with torch.no_grad():  # the per-batch forwards matter: one joint batch gives other outputs (BatchNorm)
        joint_p = method.predictor(method.projector(method.backbone(torch.cat([xa, xb]))))
    assert not torch.allclose(joint_p[:B], pa[0], atol=1e-3)
