"""MAE and MV-MAE on timm ViTs (issue #10): masking, the visible-only encoder, the decoder's
restore, the masked normalised-pixel loss, MV-MAE's switches, weight-decay groups, export to timm
and the one-line errors. Tiny ViTs (1-2 blocks) on CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unveil.backbones import build_backbone
from unveil.build import build_method_for
from unveil.config import resolve
from unveil.corruptions.patch_mask import random_token_masking
from unveil.errors import UserError
from unveil.methods._mae import MAEDecoder, masked_patch_loss, normalize_patches, patchify, unpatchify

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL_DECODER = ["method.decoder_dim=32", "method.decoder_depth=1", "method.decoder_heads=4"]


def info(size: int = 32) -> dict:
    return {"name": "x", "num_classes": 10, "image_size": size, "mean": (0.5,) * 3, "std": (0.25,) * 3}


def method(name: str = "mae", overrides: tuple[str, ...] = (), size: int = 32, backbone: str = "vit_tiny",
           depth: int = 1) -> nn.Module:
    torch.manual_seed(0)
    cfg = resolve(None, [f"method.name={name}", f"backbone.name={backbone}", f"backbone.depth={depth}",
                         *SMALL_DECODER, *overrides])
    return build_method_for(cfg, dataset_info=info(size))


class FixedViews(nn.Module):
    """Stands in for the view pipeline: hands out the given views in turn (draws nothing)."""

    def __init__(self, *views: torch.Tensor):
        super().__init__()
        self.views, self.i = views, 0

    def forward(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        v = self.views[self.i % len(self.views)]
        self.i += 1
        return v


# --- masking -------------------------------------------------------------------------------------

@pytest.mark.parametrize("ratio", [0.5, 0.75, 0.8, 0.9])
@pytest.mark.parametrize("n", [64, 196, 49])
def test_masking_keeps_int_n_times_one_minus_r_and_restore_inverts_the_shuffle(ratio: float, n: int) -> None:
    b = 5
    m = random_token_masking(b, n, ratio, torch.Generator().manual_seed(1))
    keep = int(n * (1 - ratio) + 1e-6)  # MAE's int(N(1-r)) (0.1*... round-off guarded)
    assert m.ids_keep.shape == (b, keep)
    assert (m.mask.sum(1) == n - keep).all()  # exactly, every sample
    assert (m.mask.gather(1, m.ids_keep) == 0).all()  # kept tokens are the unmasked ones
    assert all(len(set(row.tolist())) == keep for row in m.ids_keep)  # no token kept twice
    tokens = torch.randn(b, n, 3)
    shuffle = torch.argsort(m.ids_restore, dim=1)  # ids_restore = argsort(ids_shuffle)
    assert torch.equal(shuffle[:, :keep], m.ids_keep)
    shuffled = tokens.gather(1, shuffle.unsqueeze(-1).expand(-1, -1, 3))
    assert torch.equal(shuffled.gather(1, m.ids_restore.unsqueeze(-1).expand(-1, -1, 3)), tokens)
    # per-sample masks: the samples do not share one mask
    assert len({tuple(row.tolist()) for row in m.mask}) > 1


# --- encoder on the visible patches only ---------------------------------------------------------

def test_encoder_sees_only_the_visible_patches() -> None:
    torch.manual_seed(0)
    vit = build_backbone("vit_tiny", img_size=32, patch_size=8, depth=2).eval()
    g = torch.Generator().manual_seed(0)
    m = random_token_masking(3, vit.num_tokens, 0.75, g)
    x = torch.randn(3, 3, 32, 32)
    tokens = vit.forward_tokens(x, m.ids_keep)
    assert tokens.shape == (3, 1 + 4, 192)  # 16 patches, 4 kept
    # repaint every masked patch: the encoder's output does not move
    y = x.clone()
    grid_mask = m.mask.view(3, 1, 4, 4).repeat_interleave(8, 2).repeat_interleave(8, 3).bool().expand_as(x)
    y[grid_mask] = torch.randn(int(grid_mask.sum()))
    assert not torch.equal(x, y)
    assert torch.equal(vit.forward_tokens(y, m.ids_keep), tokens)
    # ... while repainting one visible patch does
    z = x.clone()
    first = int(m.ids_keep[0, 0])
    r, c = divmod(first, 4)
    z[0, :, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] += 1.0
    assert not torch.allclose(vit.forward_tokens(z, m.ids_keep)[0], tokens[0])
    # without ids_keep every patch goes through: 1 + 16 tokens, and the class token is vit(x)
    assert vit.forward_tokens(x).shape == (3, 17, 192)
    assert torch.allclose(vit(x), vit.forward_tokens(x)[:, 0])


def test_sincos_position_embedding_matches_an_independent_mae_implementation() -> None:
    """lightly's port of MAE's get_2d_sincos_pos_embed (the bench extra), as a second opinion."""
    lightly_utils = pytest.importorskip("lightly.models.utils")
    from unveil.backbones.vit import sincos_pos_embed

    for dim, grid in ((192, 8), (128, 14)):
        theirs = nn.Parameter(torch.zeros(1, 1 + grid * grid, dim))
        lightly_utils.initialize_2d_sine_cosine_positional_embedding(theirs, has_class_token=True)
        assert torch.allclose(sincos_pos_embed(dim, grid), theirs, atol=1e-6)
    vit = build_backbone("vit_tiny", img_size=32, patch_size=4, depth=1)
    assert torch.equal(vit.pos_embed.data, sincos_pos_embed(192, 8))


# --- the loss ------------------------------------------------------------------------------------

def test_masked_patch_loss_counts_only_masked_patches_and_matches_hand_norm_pix_mse() -> None:
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 4, 6, generator=g), torch.randn(2, 4, 6, generator=g)
    mask = torch.tensor([[1.0, 0, 1, 0], [0, 0, 1, 0]])
    loss = masked_patch_loss(pred, target, mask)
    # by hand: each patch to zero mean / unit (unbiased) variance, MSE per patch, mean over the 3 masked
    t = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True, unbiased=True) + 1e-6).sqrt()
    per = ((pred - t) ** 2).mean(-1)
    assert torch.allclose(loss, (per[0, 0] + per[0, 2] + per[1, 2]) / 3)
    assert torch.allclose(normalize_patches(target), t)
    raw = masked_patch_loss(pred, target, mask, norm_pix=False)
    assert torch.allclose(raw, (((pred - target) ** 2).mean(-1) * mask).sum() / 3)
    visible, masked = pred.clone(), pred.clone()
    visible[0, 1] += 5.0  # a visible patch
    masked[1, 2] += 5.0  # a masked patch
    assert torch.equal(masked_patch_loss(visible, target, mask), loss)
    assert not torch.allclose(masked_patch_loss(masked, target, mask), loss)


def test_mae_loss_gets_no_gradient_from_the_predictions_of_visible_patches() -> None:
    m = method("mae")
    x = torch.randn(2, 3, 32, 32)
    m.views = FixedViews(x)
    g = torch.Generator().manual_seed(3)
    mask = random_token_masking(2, m.backbone.num_tokens, m.mask_ratio, torch.Generator().manual_seed(3)).mask
    grads = {}

    def keep_grad(module: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        out.register_hook(lambda gr: grads.setdefault("g", gr))

    m.decoder.pred.register_forward_hook(keep_grad)
    m(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.zeros(2, dtype=torch.long), g)["loss"].backward()
    per_patch = grads["g"].abs().sum(-1)[:, 1:]  # drop the class token's row (the decoder drops it)
    assert (per_patch[mask == 0] == 0).all() and (per_patch[mask == 1] > 0).all()


# --- shapes, patchify, decoder restore -----------------------------------------------------------

@pytest.mark.parametrize(("backbone", "size", "patch", "width"), [("vit_tiny", 32, 4, 192), ("vit_small", 224, 16, 384)])
def test_shapes_through_encoder_and_decoder(backbone: str, size: int, patch: int, width: int) -> None:
    m = method("mae", size=size, backbone=backbone, depth=1)
    assert (m.backbone.patch, m.backbone.grid, m.backbone.num_features) == (patch, size // patch, width)
    n = (size // patch) ** 2
    keep = int(n * 0.25)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        tokens, pred, mask = m.encode_decode(x, torch.Generator().manual_seed(0))
    assert tokens.shape == (2, 1 + keep, width)
    assert pred.shape == (2, n, patch * patch * 3)
    assert mask.shape == (2, n) and (mask.sum(1) == n - keep).all()
    assert patchify(x, patch).shape == (2, n, patch * patch * 3)
    assert torch.equal(unpatchify(patchify(x, patch), patch), x)
    assert m.embed(torch.randint(0, 255, (2, 3, size, size), dtype=torch.uint8)).shape == (2, width)


def test_patchify_is_row_major_with_pixels_in_p_p_c_order() -> None:
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    p = patchify(x, 4)
    # patch 1 = row 0, column 1; pixel (i, j, c) at index (i * 4 + j) * 3 + c
    expected = x[:, :, 0:4, 4:8].permute(0, 2, 3, 1).reshape(2, -1)
    assert torch.equal(p[:, 1], expected)


def test_decoder_puts_each_visible_token_back_at_its_patch_and_mask_tokens_elsewhere() -> None:
    torch.manual_seed(0)
    dec = MAEDecoder(encoder_dim=16, grid=4, patch=2, dim=16, depth=1, heads=4)
    # identity everywhere but the restore, positions zeroed: the output row i is what sits at patch i
    dec.embed, dec.blocks, dec.norm, dec.pred = nn.Identity(), nn.Identity(), nn.Identity(), nn.Identity()
    dec.pos_embed.data.zero_()
    m = random_token_masking(3, 16, 0.75, torch.Generator().manual_seed(2))
    tokens = torch.zeros(3, 1 + 4, 16)
    tokens[:, 1:, 0] = m.ids_keep.float() + 100.0  # each visible token carries its patch index
    tokens[:, 1:, 1] = 1.0
    out = dec(tokens, m.ids_restore)
    assert out.shape == (3, 16, 16)
    for b in range(3):
        for i in range(16):
            if m.mask[b, i] == 0:
                assert out[b, i, 0] == i + 100.0 and out[b, i, 1] == 1.0
            else:
                assert torch.equal(out[b, i], dec.mask_token[0, 0])


# --- MV-MAE switches -----------------------------------------------------------------------------

def _mvmae_by_hand(m: nn.Module, x1: torch.Tensor, x2: torch.Tensor, seed: int, two_targets: bool):
    b = x1.shape[0]
    mk = random_token_masking(2 * b, m.backbone.num_tokens, m.mask_ratio, torch.Generator().manual_seed(seed))
    tokens = m.backbone.forward_tokens(torch.cat([x1, x2]), mk.ids_keep)
    pred = m.decoder(tokens, mk.ids_restore)
    p = m.backbone.patch
    t1, t2 = patchify(x1, p), patchify(x2 if two_targets else x1, p)
    r1 = masked_patch_loss(pred[:b], t1, mk.mask[:b])
    r2 = masked_patch_loss(pred[b:], t2, mk.mask[b:])
    return r1, r2


@pytest.mark.parametrize("two_targets", [True, False])
def test_mvmae_reconstruction_targets_and_loss_combination(two_targets: bool) -> None:
    m = method("mvmae", (f"method.two_targets={str(two_targets).lower()}", "method.proj_hidden_dim=32",
                         "method.proj_dim=16"))
    m.eval()  # BatchNorm of the projector on running stats: one forward equals the other
    x1, x2 = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    m.views = FixedViews(x1, x2)
    with torch.no_grad():
        out = m(torch.zeros(4, 3, 32, 32, dtype=torch.uint8), torch.zeros(4, dtype=torch.long),
                torch.Generator().manual_seed(7))
        r1, r2 = _mvmae_by_hand(m, x1, x2, 7, two_targets)
        other = _mvmae_by_hand(m, x1, x2, 7, not two_targets)
    assert torch.allclose(out["rec_loss"], 0.5 * (r1 + r2), atol=1e-6)
    assert not torch.allclose(out["rec_loss"], 0.5 * (other[0] + other[1]), atol=1e-4)  # the switch matters
    assert m.projector is not None and m.contrastive_weight == 2.0
    assert torch.allclose(out["loss"], out["rec_loss"] + 2.0 * out["con_loss"])


def test_mvmae_without_contrastive_term_builds_no_projector_and_loss_is_reconstruction() -> None:
    m = method("mvmae", ("method.contrastive_weight=0",))
    assert m.projector is None
    assert not any("projector" in n for n, _ in m.named_parameters())
    x = torch.randn(2, 3, 32, 32)
    m.views = FixedViews(x, x.flip(-1))
    out = m(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.zeros(2, dtype=torch.long),
            torch.Generator().manual_seed(0))
    assert "con_loss" not in out and torch.equal(out["loss"], out["rec_loss"])
    out["loss"].backward()
    assert all(p.grad is not None for p in m.decoder.parameters() if p.requires_grad)


# --- weight decay groups -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mae", "mvmae"])
def test_weight_decay_groups(name: str) -> None:
    from unveil.optim import param_groups

    m = method(name, depth=2)
    groups = param_groups(m, 0.05)
    by_id = {id(p): g for g in groups for p in g["params"]}
    names = dict(m.named_parameters())
    assert not m.backbone.pos_embed.requires_grad and id(m.backbone.pos_embed) not in by_id  # fixed sin-cos
    assert not m.decoder.pos_embed.requires_grad and id(m.decoder.pos_embed) not in by_id
    no_decay = [n for n, p in names.items() if id(p) in by_id and by_id[id(p)]["weight_decay"] == 0.0]
    decay = [n for n, p in names.items() if id(p) in by_id and by_id[id(p)]["weight_decay"] == 0.05]
    assert len(no_decay) + len(decay) == sum(p.requires_grad for p in names.values())
    assert {"backbone.cls_token", "decoder.mask_token"} <= set(no_decay)
    norms = [f"{mod_name}.{pn}" for mod_name, mod in m.named_modules()
             if isinstance(mod, (nn.LayerNorm, nn.BatchNorm1d)) for pn, _ in mod.named_parameters(recurse=False)]
    assert norms and set(norms) <= set(no_decay)
    assert all(n.endswith(".bias") or n in norms or n.endswith(("cls_token", "mask_token")) for n in no_decay)
    for n in ("backbone.blocks.0.attn.qkv.weight", "backbone.blocks.1.attn.proj.weight", "backbone.blocks.0.mlp.fc1.weight",
              "backbone.blocks.1.mlp.fc2.weight", "backbone.patch_embed.proj.weight", "decoder.embed.weight",
              "decoder.blocks.0.attn.qkv.weight", "decoder.pred.weight"):
        assert n in decay, n
    assert all(names[n].ndim >= 2 for n in decay)


# --- export --------------------------------------------------------------------------------------

def test_exported_vit_loads_into_timm_strictly_with_identical_outputs(tmp_path) -> None:
    import timm

    from unveil.build import backbone_config
    from unveil.export import export_backbone

    cfg = resolve(None, ["method.name=mae", "backbone.name=vit_tiny", "backbone.depth=2", *SMALL_DECODER])
    m = build_method_for(cfg, dataset_info=info(32))
    spec, _ = backbone_config(cfg["backbone"], 32)  # as load_run / `unveil export` record it
    path = tmp_path / "vit.safetensors"
    export_backbone(m.backbone, path, {**cfg, "backbone": spec})
    from safetensors.torch import load_file

    model = timm.create_model(**m.backbone.timm_kwargs())
    model.load_state_dict(load_file(str(path)), strict=True)
    model.eval(), m.backbone.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = m.backbone(x)
        assert torch.allclose(model(x), ours, atol=1e-5)
        try:
            from unveil.export import timm_model
        except ImportError:
            return
        assert torch.allclose(timm_model(path)(x), ours, atol=1e-5)


# --- one-line errors -----------------------------------------------------------------------------

@pytest.mark.parametrize(("overrides", "backbone", "words"), [
    (("method.mask_ratio=1.0",), "vit_tiny", "mask_ratio"),
    (("method.mask_ratio=0",), "vit_tiny", "mask_ratio"),
    (("method.mask_ratio=0.999",), "vit_tiny", "keeps 0 of 64"),
    (("backbone.patch_size=5",), "vit_tiny", "patch_size"),
    (("method.decoder_dim=30", "method.decoder_heads=4"), "vit_tiny", "decoder_dim"),
    ((), "resnet18", "ViT backbone"),
])
@pytest.mark.parametrize("name", ["mae", "mvmae"])
def test_bad_settings_give_one_line(overrides: tuple[str, ...], backbone: str, words: str, name: str) -> None:
    with pytest.raises(UserError) as err:
        cfg = resolve(None, [f"method.name={name}", f"backbone.name={backbone}", *SMALL_DECODER, *overrides])
        build_method_for(cfg, dataset_info=info(32))
    text = str(err.value)
    assert words in text and "\n" not in text, text


# --- bf16 autocast and the reconstruction figure -------------------------------------------------

@pytest.mark.parametrize("name", ["mae", "mvmae"])
def test_step_under_bf16_autocast_gives_finite_float_loss_and_gradients(name: str) -> None:
    m = method(name, ("method.proj_hidden_dim=32", "method.proj_dim=16") if name == "mvmae" else ())
    images = torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(images, torch.zeros(4, dtype=torch.long), torch.Generator().manual_seed(0))
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert torch.isfinite(m.decoder.mask_token.grad).all() and m.decoder.mask_token.grad.abs().sum() > 0
    assert torch.isfinite(m.backbone.cls_token.grad).all()


def test_reconstruction_rows_paste_the_visible_patches_back_and_grey_out_the_masked_ones() -> None:
    m = method("mae").eval()
    images = torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8)
    masked, recon, original = m.reconstruct(images, torch.Generator().manual_seed(0))
    assert masked.shape == recon.shape == original.shape == (2, 3, 32, 32)
    mk = random_token_masking(2, 64, 0.75, torch.Generator().manual_seed(0)).mask  # the draw reconstruct made
    pixel_mask = mk.view(2, 1, 8, 8).repeat_interleave(4, 2).repeat_interleave(4, 3).bool().expand(-1, 3, -1, -1)
    assert torch.allclose(recon[~pixel_mask], original[~pixel_mask], atol=1e-5)
    assert torch.allclose(masked[~pixel_mask], original[~pixel_mask], atol=1e-5)
    assert torch.allclose(masked[pixel_mask], torch.tensor(0.5))  # the data mean (info(): mean 0.5)
    assert not torch.allclose(recon[pixel_mask], original[pixel_mask], atol=1e-2)  # an untrained decoder's guess
