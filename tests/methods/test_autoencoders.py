"""The autoencoder methods of papers 1 and 2: the Horizon2333 ResNet AE, the RR towers, the
denoising AE (overlay / pixel mask / none) and the context-patch AE, plus the reconstruction figure.

Kept small: the machine is a busy CPU, so shapes use tiny batches and the training checks tiny images.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from unveil.backbones import build_backbone
from unveil.backbones.resnet_ae import (
    DecoderBottleneck,
    EncoderBottleneck,
    ResNetAEEncoder,
    build_autoencoder,
)
from unveil.errors import UserError
from unveil.methods import DataInfo, build_method
from unveil.methods.context_patch_ae import augment_images
from unveil.viz.reconstruct import reconstruction_grid


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a shared 2-core machine this is several times faster than two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def info(size: int, classes: int = 10) -> DataInfo:
    return DataInfo(name="cifar10", num_classes=classes, image_size=size)


def uint8_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Smooth random images (upsampled noise): something an autoencoder can learn to rebuild."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, max(2, size // 4), max(2, size // 4), generator=g)
    return (nn.functional.interpolate(low, size=size, mode="bilinear") * 255).round().to(torch.uint8)


# -- ResNet autoencoder ------------------------------------------------------------------------


@torch.no_grad()
def test_resnet50_ae_at_224_matches_the_reference_layout():
    enc, dec = build_autoencoder("resnet50", cifar=False)
    enc.eval(), dec.eval()
    x = torch.rand(1, 3, 224, 224)
    pooled, fmap = enc(x, return_map=True)
    assert fmap.shape == (1, 2048, 7, 7) and pooled.shape == (1, 2048) == (1, enc.num_features)
    y = dec(fmap)
    assert y.shape == x.shape
    assert 0 < y.min() and y.max() < 1 and isinstance(dec.gate, nn.Sigmoid)
    # Stride 2 sits in the first 1x1 conv of each downsampling bottleneck, never in the 3x3.
    for stage in (enc.conv3, enc.conv4, enc.conv5):
        first = stage[0]
        assert first.weight_layer1[0].kernel_size == (1, 1) and first.weight_layer1[0].stride == (2, 2)
        assert first.weight_layer2[0].stride == (1, 1)
        assert all(b.weight_layer1[0].stride == (1, 1) for b in stage[1:])
    # Stage sizes 3-4-6-3 (encoder) and 3-6-4-3 (decoder); each decoder stage ends upsampling.
    assert [len(s) for s in (enc.conv2, enc.conv3, enc.conv4, enc.conv5)] == [3, 4, 6, 3]
    assert [len(s) for s in (dec.conv1, dec.conv2, dec.conv3, dec.conv4)] == [3, 6, 4, 3]
    for stage in (dec.conv1, dec.conv2, dec.conv3, dec.conv4):
        up = stage[-1].weight_layer3[-1]
        assert isinstance(up, nn.ConvTranspose2d) and up.kernel_size == (1, 1) and up.stride == (2, 2)
    head = dec.conv5[-1]
    assert isinstance(head, nn.ConvTranspose2d) and head.kernel_size == (7, 7) and head.stride == (2, 2)
    convs = [m for m in (*enc.modules(), *dec.modules()) if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert convs and all(m.bias is None for m in convs)


@torch.no_grad()
def test_encoder_is_post_activation_and_decoder_has_no_relu_after_the_sum():
    torch.manual_seed(0)
    enc_block, dec_block = EncoderBottleneck(16, 4, 16), DecoderBottleneck(16, 4, 16, up=False)
    x = torch.randn(2, 16, 5, 5)
    assert enc_block(x).min() >= 0  # ReLU after the residual sum
    assert dec_block(x).min() < 0  # pre-activation: the sum goes out as is


@torch.no_grad()
@pytest.mark.parametrize("arch,upsample", [("resnet50", "transpose"), ("resnet18", "nearest")])
def test_cifar_variant_keeps_32px(arch, upsample):
    enc, dec = build_autoencoder(arch, cifar=True, upsample=upsample)
    enc.eval(), dec.eval()
    x = torch.rand(1, 3, 32, 32)
    pooled, fmap = enc(x, return_map=True)
    assert fmap.shape[-2:] == (4, 4) and pooled.shape == (1, 2048 if arch == "resnet50" else 512)
    assert enc.conv1[0].kernel_size == (3, 3) and enc.conv1[0].stride == (1, 1)
    assert isinstance(enc.maxpool, nn.Identity)
    assert dec(fmap).shape == x.shape
    has_transpose = any(isinstance(m, nn.ConvTranspose2d) for m in dec.modules())
    assert has_transpose == (upsample == "transpose")


@torch.no_grad()
def test_imagenet_resnet18_ae_nearest_upsampling_at_64px():
    enc, dec = build_autoencoder("resnet18", cifar=False, upsample="nearest")
    enc.eval(), dec.eval()
    x = torch.rand(1, 3, 64, 64)
    assert dec(enc.forward_map(x)).shape == x.shape


def test_registered_encoders_follow_the_backbone_contract():
    enc = build_backbone("ae_resnet18", cifar_stem=True)
    assert isinstance(enc, ResNetAEEncoder) and enc.num_features == 512 and enc.cifar
    with pytest.raises(UserError, match="arch"):
        build_autoencoder("resnet7")


# -- RR towers ---------------------------------------------------------------------------------


@torch.no_grad()
@pytest.mark.parametrize("name,blocks", [("rr_resnet32", 15), ("rr_resnet8", 3), ("rr_conv4", None)])
def test_rr_towers_embed_8px_patches_to_64d(name, blocks):
    tower = build_backbone(name).eval()
    pooled, fmap = tower(torch.rand(3, 3, 8, 8), return_map=True)
    assert pooled.shape == (3, 64) and tower.num_features == 64
    assert fmap.shape[-2:] == ((2, 2) if blocks else (1, 1))
    if blocks:
        assert sum(len(s) for s in (tower.layer1, tower.layer2, tower.layer3)) == blocks
    bns = [m for m in tower.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(bool((m.weight == 1).all() and (m.bias == 0).all()) for m in bns)


def test_rr_init_matches_fan_out_normal():
    conv = build_backbone("rr_resnet32").layer3[1].conv1  # 64 -> 64, 3x3: std sqrt(2 / 576)
    assert abs(conv.weight.std().item() - (2 / (9 * 64)) ** 0.5) < 0.005


# -- denoising autoencoder ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dae():
    torch.manual_seed(0)
    return build_method("denoising_ae", backbone=None, data_info=info(16), arch="resnet18", partner="derangement")


@pytest.mark.parametrize("corruption", ["overlay", "pixel_mask", "none"])
def test_denoising_step_is_finite_and_reaches_the_encoder(tiny_dae, corruption):
    tiny_dae.corruption = corruption
    tiny_dae.zero_grad(set_to_none=True)
    out = tiny_dae(uint8_images(2, 16), torch.zeros(2, dtype=torch.long), torch.Generator().manual_seed(1))
    assert torch.isfinite(out["loss"]) and out["loss"].ndim == 0
    out["loss"].backward()
    grads = [p.grad for p in tiny_dae.backbone.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    # The corruption really changes the input (overlay / mask) or not at all (none).
    assert (out["input_mse"] > 0) == (corruption != "none")


@torch.no_grad()
@pytest.mark.parametrize("target", ["clean", "augmented"])
def test_autoaugment_corruption_target(tiny_dae, target):
    tiny_dae.corruption, tiny_dae.autoaugment_target = "autoaugment", target
    clean = uint8_images(6, 16).float() / 255
    corrupted, goal = tiny_dae.corrupt(clean, torch.Generator().manual_seed(0))
    assert corrupted.shape == clean.shape and not torch.equal(corrupted, clean)
    assert goal is (clean if target == "clean" else corrupted)
    tiny_dae.corruption = "overlay"


@torch.no_grad()
def test_denoising_ae_corrupts_through_the_registry_as_the_plain_functions(tiny_dae):
    from unveil.corruptions import autoaugment, paired_overlay, random_pixel_mask

    clean = uint8_images(6, 16).float() / 255
    direct = {
        "overlay": lambda g: paired_overlay(clean, tiny_dae.alpha, g, partner=tiny_dae.partner).images,
        "pixel_mask": lambda g: random_pixel_mask(clean, tiny_dae.mask_ratio, g).images,
        "autoaugment": lambda g: autoaugment(clean, g, policy=tiny_dae.autoaugment_policy),
    }
    for name, fn in direct.items():
        tiny_dae.corruption = name
        got, _ = tiny_dae.corrupt(clean, torch.Generator().manual_seed(3))
        assert torch.equal(got, fn(torch.Generator().manual_seed(3))), name
    tiny_dae.corruption = "overlay"
    with pytest.raises(UserError, match="method.corruption must be one of overlay, pixel_mask, autoaugment, none"):
        build_method("denoising_ae", data_info=info(32), arch="resnet18", corruption="mscn")


def test_denoising_ae_constructor_and_embed(tiny_dae):
    assert tiny_dae.cifar and tiny_dae.image_size == 16  # auto: small images get the CIFAR variant
    assert tiny_dae.backbone is tiny_dae.encoder and tiny_dae.backbone_spec == {"name": "ae_resnet18", "cifar_stem": True}
    tiny_dae.eval()
    with torch.no_grad():
        assert tiny_dae.embed(uint8_images(2, 16)).shape == (2, 512)
    tiny_dae.train()
    with pytest.raises(UserError, match="alpha"):
        build_method("denoising_ae", data_info=info(32), arch="resnet18", alpha=0.6)
    with pytest.raises(UserError, match="method.typo"):
        build_method("denoising_ae", data_info=info(32), arch="resnet18", typo=1)
    encoder = build_backbone("ae_resnet18", cifar_stem=True)
    assert build_method("denoising_ae", backbone=encoder, data_info=info(32), arch="resnet18").backbone is encoder
    with pytest.raises(UserError, match="backbone section"):
        build_method("denoising_ae", backbone=encoder, data_info=info(32), arch="resnet34")
    with pytest.raises(UserError, match="multiple of 32"):
        build_method("denoising_ae", data_info=info(100), arch="resnet18", cifar=False)


def test_denoising_ae_overfits_a_tiny_batch():
    torch.manual_seed(0)
    method = build_method("denoising_ae", data_info=info(8), arch="resnet18", corruption="overlay",
                          partner="derangement",
                          views={"crop_scale": [1.0, 1.0], "crop_ratio": [1.0, 1.0], "flip_p": 0.0})
    opt = torch.optim.Adam(method.parameters(), lr=1e-3)
    images, g = uint8_images(2, 8), torch.Generator().manual_seed(0)
    losses = []
    for _ in range(8):
        loss = method(images, None, g)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # Measured (seeds 0-2): final / first loss 0.071-0.076 after 8 steps; require < 0.3.
    assert losses[-1] < 0.3 * losses[0], losses


# -- context-patch autoencoder -----------------------------------------------------------------


@torch.no_grad()
@pytest.mark.parametrize("tower", ["rr_resnet32", "rr_conv4"])
def test_context_codes_efficient_equal_naive_in_eval(tower):
    torch.manual_seed(0)
    method = build_method("context_patch_ae", data_info=info(32, 100), tower=tower).eval()
    x = uint8_images(2, 32).float() / 255
    fast, slow = method.patch_codes(x, naive=False), method.patch_codes(x, naive=True)
    assert fast.shape == (2, 16, 512)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    # The corner patch 0 has only E, S, SE inside the grid: its other 5 slots are the zero patch's code.
    zero_code = method.tower(torch.zeros(1, 3, 8, 8))
    torch.testing.assert_close(fast[0, 0].view(8, 64)[[0, 1, 2, 3, 5]], zero_code.expand(5, 64))


@torch.no_grad()
def test_context_patch_embed_dims_and_backbone_section():
    ctx = build_method("context_patch_ae", data_info=info(32, 100), tower="rr_conv4").eval()
    simple = build_method("context_patch_ae", data_info=info(32, 100), tower="rr_conv4", mode="simple").eval()
    images = uint8_images(2, 32)
    assert ctx.embed(images).shape == (2, 8192) and simple.embed(images).shape == (2, 1024)
    assert ctx.decoder.fc[0].in_features == 512 and simple.decoder.fc[0].in_features == 64
    tower = build_backbone("rr_conv4")
    from_recipe = build_method("context_patch_ae", backbone=tower, data_info=info(32, 100))
    assert from_recipe.backbone is tower and from_recipe.backbone_spec is None
    with pytest.raises(UserError, match="cannot encode 4x4"):
        build_method("context_patch_ae", data_info=info(16, 100), tower="rr_conv4")


def test_augment_without_rotation_is_an_integer_shift_with_zero_fill():
    x = torch.rand(3, 3, 12, 12)
    out = augment_images(x, torch.Generator().manual_seed(0), padding=2, degrees=0.0, jitter_p=0.0)
    padded = nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(3):  # each output is one of the 25 crops of the zero-padded image
        crops = [padded[i, :, r:r + 12, c:c + 12] for r in range(5) for c in range(5)]
        assert any(torch.equal(out[i], crop) for crop in crops)
    same = augment_images(x, torch.Generator().manual_seed(0), padding=2, degrees=15.0, jitter_p=0.8)
    again = augment_images(x, torch.Generator().manual_seed(0), padding=2, degrees=15.0, jitter_p=0.8)
    assert torch.equal(same, again) and same.shape == x.shape


def test_context_patch_step_with_augmentation_reaches_the_tower():
    method = build_method("context_patch_ae", data_info=info(32, 100), tower="rr_conv4", augment=True)
    loss = method(uint8_images(2, 32), None, torch.Generator().manual_seed(0))["loss"]
    loss.backward()
    assert torch.isfinite(loss) and method.tower.layer1.conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("mode,reduction", [("context", "mean"), ("simple", "sum")])
def test_context_patch_ae_overfits_a_tiny_batch(mode, reduction):
    torch.manual_seed(0)
    method = build_method("context_patch_ae", data_info=info(32, 100), tower="rr_conv4", mode=mode,
                          reduction=reduction, augment=False)
    opt = torch.optim.Adam(method.parameters(), lr=1e-3)
    images, g = uint8_images(2, 32), torch.Generator().manual_seed(0)
    losses = []
    for _ in range(20):
        loss = method(images, None, g)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # Measured (seeds 0-2), final / first loss after 20 steps: context/mean 0.20-0.30,
    # simple/sum 0.24-0.27 (sum: ~8.2 -> ~2.1, 192 pixel values per patch); require < 0.55.
    assert losses[-1] < 0.55 * losses[0], losses


@pytest.mark.parametrize("size", [32, 224])
def test_both_autoencoders_step_embed_and_reconstruct_at_32_and_224px(size):
    """One training step and the figure's reconstruction at CIFAR and ImageNet sizes."""
    torch.manual_seed(0)
    images, g = uint8_images(2, size), torch.Generator().manual_seed(0)
    dae = build_method("denoising_ae", data_info=info(size), arch="resnet18")  # CIFAR stem at 32, ImageNet at 224
    grid = size // 8  # 8 px patches at both sizes: 4 x 4 at 32 px, 28 x 28 at 224 px
    cpae = build_method("context_patch_ae", data_info=info(size, 100), tower="rr_conv4", grid=grid)
    for method, feature_dim in ((dae, 512), (cpae, grid * grid * 512)):
        loss = method(images, None, g)["loss"]
        loss.backward()
        assert torch.isfinite(loss) and loss.item() > 0
        assert all(p.grad is not None for p in method.backbone.parameters())
        method.eval()
        with torch.no_grad():
            assert method.embed(images).shape == (2, feature_dim)
        clean, _, recon = method.reconstruct(images, g)
        assert clean.shape == recon.shape == (2, 3, size, size) and 0 <= recon.min() and recon.max() <= 1


# -- reconstruction figure ---------------------------------------------------------------------


def test_reconstruction_grid_writes_rows(tmp_path):
    images = uint8_images(3, 32)
    dae = build_method("denoising_ae", data_info=info(32), arch="resnet18")
    cpae = build_method("context_patch_ae", data_info=info(32, 100), tower="rr_conv4")
    for method, rows in ((dae, 3), (cpae, 2)):
        path = tmp_path / f"{rows}.png"
        grid = reconstruction_grid(method, images, torch.Generator().manual_seed(0), path, padding=2, min_side=64)
        with Image.open(path) as img:  # 32 px tiles doubled to 64, 2 px padding around each
            assert img.size == (3 * 66 + 2, rows * 66 + 2) and img.mode == "RGB"
            pixels = torch.from_numpy(np.array(img)).permute(2, 0, 1)
        assert grid.shape == (3, rows * 66 + 2, 3 * 66 + 2) and 0 <= grid.min() and grid.max() <= 1
        assert torch.equal(pixels, (grid * 255).round().to(torch.uint8))
        # The first row is the clean (evaluation) view of the input.
        assert torch.equal(pixels[:, 2:66, 2:66:2][:, ::2], images[0])
        assert method.training  # the figure restores the mode it found
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2.png", "3.png"]  # no temp files left


def test_reconstruct_command_is_registered():
    from unveil.cli import build_parser

    args = build_parser().parse_args(["reconstruct", "runs/x", "-o", "r.png", "--n", "4"])
    assert args.run_dir == "runs/x" and args.output == "r.png" and args.n == 4 and args.seed == 0


# -- the whole CLI life of both autoencoders ----------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("recipe,extra", [
    ("overlay_cifar10", []),
    ("context_patch_conv4_cifar100", ["method.grid=2"]),  # 16 px images: a 2 x 2 grid of 8 px patches
])
def test_autoencoder_trains_evaluates_reconstructs_and_exports_from_the_cli(recipe, extra, tiny_folder, tmp_path,
                                                                             monkeypatch, capsys):
    import json

    from unveil.cli import main
    from unveil.export import load_backbone
    from unveil.runs.checkpoint import load_run

    monkeypatch.setenv("UNVEIL_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    assert main(["pretrain", "--recipe", recipe, "--data", str(tiny_folder), "--out", str(run), "--epochs", "1",
                 "--batch-size", "16", "data.image_size=16", "data.subset=32", "train.monitor=none",
                 "train.progress=false", "train.precision=fp32", *extra]) == 0
    assert main(["eval", "linear", str(run), "--epochs", "2"]) == 0
    linear = json.loads((run / "eval_linear.json").read_text())
    # Red vs blue: measured 100 % after 1 epoch and from random weights alike (2026-11-30); chance is 50 %.
    assert linear["last_top1"] > 90
    assert main(["reconstruct", str(run), "-o", str(tmp_path / "recon.png"), "--n", "4"]) == 0
    with Image.open(tmp_path / "recon.png") as img:
        assert img.width > img.height > 0
    assert main(["export", str(run), "-o", str(tmp_path / "enc.safetensors")]) == 0
    capsys.readouterr()

    encoder = load_backbone(tmp_path / "enc.safetensors")
    method, _, _ = load_run(run, load_data=False)
    x = torch.rand(2, 3, 16, 16) if "overlay" in recipe else torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(encoder(x), method.eval().backbone(x), atol=1e-5)


def test_load_backbone_rejects_a_file_that_is_not_an_export(tmp_path):
    from safetensors.torch import save_file

    from unveil.export import load_backbone

    save_file({"w": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(UserError, match="not an unveil export"):
        load_backbone(tmp_path / "other.safetensors")
    save_file({"w": torch.zeros(1)}, str(tmp_path / "foreign.safetensors"),
              metadata={"format": "unveil-backbone/1", "backbone": '{"name": "rr_conv4"}'})
    with pytest.raises(UserError, match="does not match the 'rr_conv4' backbone"):
        load_backbone(tmp_path / "foreign.safetensors")
    (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00")
    with pytest.raises(UserError, match="is the file complete"):
        load_backbone(tmp_path / "cut.safetensors")
