"""``unveil preview``: every corruption renders, the CLI parses YAML parameters and fails clearly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from unveil import cli
from unveil.commands import preview as preview_command
from unveil.corruptions import CORRUPTIONS
from unveil.viz import preview
from unveil.viz.grid import draw_boxes, labelled_grid, mask_image

CIFAR = Path(os.environ.get("UNVEIL_SHARED_DATA", Path(__file__).resolve().parents[2] / "../shared/data")) / "cifar10"


def fake_images(n: int = 4, size: int = 32) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


PARAMS = {"token_mask": {"patch_size": 8, "min_block": 2}}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_every_corruption_renders(name):
    img = preview.render(name, fake_images(), PARAMS.get(name, {}), seed=0, cell=48)
    assert isinstance(img, Image.Image) and img.width > 4 * 48 and img.height > 48
    assert name in preview.ROWS


def test_render_is_seeded():
    a = preview.render("overlay", fake_images(), {"alpha": 0.3}, seed=1, cell=32)
    b = preview.render("overlay", fake_images(), {"alpha": 0.3}, seed=1, cell=32)
    c = preview.render("overlay", fake_images(), {"alpha": 0.3}, seed=2, cell=32)
    assert a.tobytes() == b.tobytes() and a.tobytes() != c.tobytes()


def test_grid_helpers():
    m = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    m[0, 0, 2, 3] = True
    img = mask_image(m)
    assert img.shape == (1, 3, 8, 8) and img[0, :, 2, 3].tolist() == [1.0, 1.0, 1.0] and img.sum() == 3
    boxed = draw_boxes(torch.zeros(1, 3, 16, 16), (2, 10, 4, 12), width=1)
    assert boxed[0, 0, 2, 4] == 1.0 and boxed[0, 0, 5, 6] == 0.0 and boxed[0, 0, 9, 11] == 1.0
    grid = labelled_grid([("a", torch.rand(3, 3, 8, 8)), ("b", torch.rand(2, 3, 8, 8))], title="t", cell=16)
    assert grid.height > 2 * 16


def test_cli_writes_png_with_yaml_params(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(preview_command, "load_images", lambda data, n, size: fake_images(n))
    out = tmp_path / "sub" / "overlay.png"
    code = cli.main(["preview", "overlay", "--alpha", "[0.1, 0.4]", "--partner", "derangement",
                     "--data", "fake", "--n", "3", "-o", str(out)])
    assert code == 0 and out.exists()
    assert Image.open(out).format == "PNG"
    code = cli.main(["preview", "mscn", "--branch-a", "{ratio: 0.3}", "--num_masks", "2", "--data", "fake",
                     "-o", str(tmp_path / "mscn.png")])
    assert code == 0


def test_cli_list_and_errors(tmp_path, monkeypatch, capsys):
    assert cli.main(["preview", "--list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in CORRUPTIONS) and "alpha=0.3" in listed
    monkeypatch.setattr(preview_command, "load_images", lambda data, n, size: fake_images(n))
    out = str(tmp_path / "x.png")
    assert cli.main(["preview", "overlay", "--alpha", "0.5", "--data", "fake", "-o", out]) == 2
    assert "alpha must lie in [0, 0.5)" in capsys.readouterr().err
    assert cli.main(["preview", "overlay", "--ratio", "0.1", "--data", "fake", "-o", out]) == 2
    assert "no parameter 'ratio'" in capsys.readouterr().err
    assert cli.main(["preview", "blur", "--data", "fake", "-o", out]) == 2
    assert "unknown corruption 'blur'" in capsys.readouterr().err
    assert cli.main(["preview", "overlay", "-o", out]) == 2
    assert "--data is required" in capsys.readouterr().err
    assert not Path(out).exists()


def test_cli_on_real_cifar10(tmp_path, monkeypatch):
    if not (CIFAR / "test.parquet").exists():
        pytest.skip(f"CIFAR-10 parquet not found at {CIFAR} (set UNVEIL_SHARED_DATA)")
    monkeypatch.setenv("UNVEIL_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "ctx.png"
    assert cli.main(["preview", "context_patches", "--data", str(CIFAR), "--n", "4", "-o", str(out)]) == 0
    img = Image.open(out)
    assert img.width > 4 * 96 and out.stat().st_size < 300_000
