"""Losses computed BY HAND from the papers' equations on a tiny batch, against the methods' own loss
(issue #17 item 2: no installable reference exists for these three).

* MV-MAE (docs/design.md 4.2, paper 3): ``L = ½ (L_rec(v1) + L_rec(v2)) + λ · NT-Xent(g(h1), g(h2))``;
  ``L_rec`` is MAE's norm-pix MSE on the masked patches only; h_k the class token of view k.
* Overlay denoising AE (docs/design.md 1.2, paper 1): ``MSE(f_d(f_e(a·x_j + (1 − a)·x_i)), x_i)``.
* Context-patch AE (docs/design.md 2.2-2.3, paper 2): each patch reconstructed from the concatenated
  embeddings of its 8 neighbours (raster order NW, N, NE, W, E, SW, S, SE; zero patches outside the
  grid); MSE.

The networks' forward passes are the methods' own modules; everything the loss adds on top of them
(views replayed from the same generator, masks, partners, targets, normalisation, neighbour
bookkeeping, the contrastive term, the weighting) is written out here, with loops where the paper
says "for each".
"""

from __future__ import annotations

import math

import pytest
import torch

from unveil.backbones import build_backbone
from unveil.methods import DataInfo, build_method

INFO = DataInfo(name="x", num_classes=10, image_size=16, mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.3))


def images(b: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (b, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    a, b = float(a.detach()), float(b.detach())
    return abs(a - b) <= 1e-5 * max(1.0, abs(b))


@pytest.mark.parametrize("two_targets", [True, False])
def test_mvmae_loss_by_hand(two_targets: bool, one_thread) -> None:
    torch.manual_seed(0)
    backbone = build_backbone("vit_tiny", img_size=16, patch_size=4, depth=1)  # 4x4 = 16 patches of 4 px
    method = build_method("mvmae", backbone=backbone, data_info=INFO, mask_ratio=0.75, decoder_dim=32,
                          decoder_depth=1, decoder_heads=4, contrastive_weight=2.0, temperature=0.2,
                          proj_hidden_dim=32, proj_dim=16, two_targets=two_targets)
    x = images(4)
    b, n, p, lam, tau = 4, 16, 4, 2.0, 0.2
    got = method(x, torch.zeros(b, dtype=torch.long), torch.Generator().manual_seed(7))

    g = torch.Generator().manual_seed(7)  # replay the same draws: view 1, view 2, then the masks
    v1, v2 = method.views(x, g), method.views(x, g)
    noise = torch.rand((2 * b, n), generator=g)  # MAE's per-sample shuffle: keep the n_keep lowest noise
    n_keep = int(n * (1 - 0.75))
    order = noise.argsort(1)
    ids_keep, ids_restore = order[:, :n_keep], order.argsort(1)
    mask = torch.ones(2 * b, n)
    for i in range(2 * b):
        mask[i, ids_keep[i]] = 0.0  # 1 = masked
    views = torch.cat([v1, v2])
    tokens = method.backbone.forward_tokens(views, ids_keep)
    pred = method.decoder(tokens, ids_restore)  # (2B, N, p·p·3)

    def patches(img: torch.Tensor) -> torch.Tensor:
        """Row-major patches, pixels in (row, col, channel) order as MAE's patchify."""
        out = torch.empty(img.shape[0], n, p * p * 3)
        for k in range(n):
            r, c = divmod(k, 4)
            out[:, k] = img[:, :, r * p:(r + 1) * p, c * p:(c + 1) * p].permute(0, 2, 3, 1).reshape(img.shape[0], -1)
        return out

    def rec_loss(pred_v: torch.Tensor, target_img: torch.Tensor, mask_v: torch.Tensor) -> torch.Tensor:
        """Norm-pix MSE: each target patch to zero mean / unit (unbiased) variance; masked patches only."""
        t = patches(target_img)
        t = (t - t.mean(-1, keepdim=True)) / (t.var(-1, unbiased=True, keepdim=True) + 1e-6).sqrt()
        per_patch = ((pred_v - t) ** 2).mean(-1)
        return (per_patch * mask_v).sum() / mask_v.sum()

    target2 = v2 if two_targets else v1  # the ablation: both views rebuild view 1
    l_rec = 0.5 * (rec_loss(pred[:b], v1, mask[:b]) + rec_loss(pred[b:], target2, mask[b:]))

    z = torch.nn.functional.normalize(method.projector(tokens[:, 0]), dim=1)  # class tokens, both views
    terms = []
    for i in range(2 * b):  # SimCLR's NT-Xent: one positive (the other view), 2B - 2 negatives
        pos = (i + b) % (2 * b)
        sims = [torch.exp(z[i] @ z[k] / tau) for k in range(2 * b) if k != i]
        terms.append(-torch.log(torch.exp(z[i] @ z[pos] / tau) / torch.stack(sims).sum()))
    l_con = torch.stack(terms).mean()
    assert close(got["rec_loss"], l_rec) and close(got["con_loss"], l_con)
    assert close(got["loss"], l_rec + lam * l_con)
    assert got["con_loss"] > 0.5 and mask.sum(1).eq(n - n_keep).all()  # the terms are not trivially 0


@pytest.mark.parametrize("alpha", [0.3, [0.1, 0.4]])
def test_overlay_denoising_ae_loss_by_hand(alpha, one_thread) -> None:
    torch.manual_seed(0)
    method = build_method("denoising_ae", data_info=INFO, arch="resnet18", cifar=True, corruption="overlay",
                          alpha=alpha, partner="perm", image_size=16)
    x = images(4)
    got = method(x, None, torch.Generator().manual_seed(3))

    g = torch.Generator().manual_seed(3)  # replay: the crop + flip view, the partner draw, then alpha
    clean = method.views(x, g)  # x_i in [0, 1]
    j = torch.randperm(4, generator=g)  # "random sample image x_j from X_b"
    a = torch.full((4,), alpha) if not isinstance(alpha, list) else alpha[0] + (alpha[1] - alpha[0]) * torch.rand(
        4, generator=g)
    overlaid = torch.stack([a[i] * clean[j[i]] + (1 - a[i]) * clean[i] for i in range(4)])
    recon = method.decoder(method.encoder.forward_map(overlaid))  # f_d(f_e(x̂_i))
    want = ((recon - clean) ** 2).sum() / clean.numel()  # MSE against the CLEAN x_i
    assert close(got["loss"], want)
    assert close(got["input_mse"], ((overlaid - clean) ** 2).mean())
    assert not torch.equal(j, torch.arange(4))  # the draw really mixes images here


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_context_patch_ae_loss_by_hand(reduction: str, one_thread) -> None:
    torch.manual_seed(0)
    method = build_method("context_patch_ae", data_info=DataInfo(name="x", num_classes=10, image_size=32),
                          tower="rr_conv4", grid=4, augment=False, reduction=reduction)
    x = images(2, size=32)
    img = x.float() / 255.0  # [0, 1] pixels, no normalisation (the decoder ends in a Sigmoid)
    for bn in method.tower.modules():  # BatchNorm statistics of these patches (fresh ones are 0 / 1, and
        if isinstance(bn, torch.nn.BatchNorm2d):  # the codes would be ~0.002: every patch would look alike)
            bn.momentum = None
    with torch.no_grad():
        method.tower(method.to_patches(img).flatten(0, 1))
    method.eval()  # then fixed: a patch's embedding does not depend on the batch it is encoded in
    with torch.no_grad():
        got = method(x, None, None)["loss"]
        ours = method.decode(method.patch_codes(img))  # (B, 16, 3, 8, 8)
        size = 8  # 4 x 4 grid of 8 x 8 patches

        def patch(r: int, c: int) -> torch.Tensor:
            if not (0 <= r < 4 and 0 <= c < 4):
                return torch.zeros(2, 3, size, size)  # "patches with zeros as the pixel values"
            return img[:, :, r * size:(r + 1) * size, c * size:(c + 1) * size]

        order = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]  # NW N NE W E SW S SE
        errors = []
        for r in range(4):
            for c in range(4):
                code = torch.cat([method.tower(patch(r + dr, c + dc)) for dr, dc in order], dim=1)  # 8 x 64
                recon = method.decoder(code)
                assert torch.allclose(recon, ours[:, 4 * r + c], atol=1e-6), (r, c)
                sq = (recon - patch(r, c)) ** 2
                errors.append(sq.flatten(1).mean(1) if reduction == "mean" else sq.flatten(1).sum(1))
        want = torch.stack(errors).mean()  # mean over patches (and pixels for "mean")
    assert code.shape[1] == 8 * 64
    assert close(got, want)
    assert math.isfinite(float(want)) and want > 0
