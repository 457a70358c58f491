"""MAE and MV-MAE through the CLI: exact resume after kill -9, export into timm (strict), the
reconstruction figure, and a ViT on a folder of photos larger than 32 px."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from killresume import assert_same_state, kill_and_resume

TINY_VIT = ["backbone.name=vit_tiny", "backbone.depth=2", "backbone.patch_size=4", "method.decoder_dim=32",
            "method.decoder_depth=1", "method.decoder_heads=2", "data.image_size=16"]


@pytest.mark.dist
def test_killed_then_resumed_mvmae_equals_uninterrupted(tiny_folder, tmp_path):
    """The generator (crops, masks), AdamW moments, the projector's BatchNorm and the schedule all resume."""
    args = [f"--data={tiny_folder}", "--recipe=mvmae_cifar10", "data.name=" + str(tiny_folder), *TINY_VIT,
            "method.proj_hidden_dim=64", "method.proj_dim=16", "train.batch_size=16", "train.epochs=2",
            "train.warmup_epochs=0.5", "train.ckpt_every_steps=2", "train.monitor=none", "train.precision=fp32",
            "train.progress=false"]
    reference, resumed = kill_and_resume(args, tmp_path, kill_after_step=4)
    assert any(k.startswith("projector.") for k in reference["model"])
    assert any(k.startswith("decoder.") for k in reference["model"])
    assert_same_state(reference, resumed)


def _cli(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "UNVEIL_CACHE": str(cwd / "cache"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "unveil.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300, env=env)


@pytest.mark.slow
def test_mae_run_exports_into_timm_and_reconstructs(tiny_folder, tmp_path):
    timm = pytest.importorskip("timm")
    run = tmp_path / "run"
    done = _cli("pretrain", f"--data={tiny_folder}", "--recipe=mae_cifar10", *TINY_VIT, "train.batch_size=16",
                "train.epochs=1", "train.monitor=none", "train.progress=false", f"--out={run}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "8x8 patches" not in done.stderr and "4x4 patches of 4 px" in done.stderr  # 16 px / 4 px, said once
    out = tmp_path / "vit.safetensors"
    done = _cli("export", str(run), "-o", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "timm.create_model('vit_tiny_patch16_224'" in done.stdout

    from safetensors.torch import load_file

    from unveil.export import load_backbone, timm_model

    plain = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4, depth=2,
                              num_classes=0)
    plain.load_state_dict(load_file(str(out)), strict=True)
    ours = load_backbone(out)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(plain.eval()(x), ours(x), atol=1e-5)
        assert torch.allclose(timm_model(out)(x), ours(x), atol=1e-5)

    figure = tmp_path / "recon.png"
    done = _cli("reconstruct", str(run), "-o", str(figure), "--n", "4", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    from PIL import Image

    w, h = Image.open(figure).size
    assert h > w / 4 * 2  # three rows of 4 tiles: masked | reconstruction | original


@pytest.mark.slow
def test_vit_on_photos_larger_than_32px_picks_8px_patches(tmp_path):
    """A folder of 64 px photos: 8 px patches (8x8 tokens), said in the run's first line."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for i in range(40):
        arr = torch.randint(0, 256, (70, 90, 3), dtype=torch.uint8, generator=g).numpy()
        Image.fromarray(arr).save(tmp_path / f"{i}.jpg")
    done = _cli("pretrain", f"--data={tmp_path}", "--method=mae", "backbone.name=vit_tiny", "backbone.depth=1",
                "method.decoder_depth=1", "method.decoder_dim=32", "method.decoder_heads=2", "data.image_size=64",
                "train.epochs=1", "train.batch_size=16", "train.monitor=none", "train.progress=false",
                f"--out={tmp_path / 'run'}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "vit_tiny on 64 px images: 8x8 patches of 8 px" in done.stderr


def test_mae_on_a_resnet_is_one_line(tiny_folder, tmp_path):
    """``--method mae`` starts from MAE's recipe (said in one line); swapping in a ResNet leaves the
    ViT's patch_size behind, which is named in one line instead of a constructor trace."""
    done = _cli("pretrain", f"--data={tiny_folder}", "--method=mae", "backbone.name=resnet18", "train.batch_size=16",
                "train.epochs=1", f"--out={tmp_path / 'run'}", cwd=tmp_path)
    assert done.returncode != 0
    assert "starting from the recipe mae_cifar10" in done.stdout
    errors = [ln for ln in done.stderr.splitlines() if "error" in ln or "Traceback" in ln]
    assert len(errors) == 1 and "backbone 'resnet18' has no setting patch_size" in errors[0], done.stderr
