"""``unveil activations`` (last-stage heat maps of runs) and ``unveil preview --recipe`` (what a
recipe's two branches see)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from unveil import cli
from unveil.config import resolve
from unveil.errors import UserError
from unveil.methods.base import Method
from unveil.viz import activations as act
from unveil.viz import preview
from unveil.viz.grid import labelled_grid

CELL = 32


class _MapBackbone(nn.Module):
    """A backbone whose feature map is given (channels 2, 3 x 3)."""

    num_features = 2

    def __init__(self, fmap: Tensor):
        super().__init__()
        self.fmap = fmap

    def forward(self, x: Tensor, return_map: bool = False):
        fmap = self.fmap[: x.shape[0]]
        pooled = fmap.mean(dim=(2, 3))
        return (pooled, fmap) if return_map else pooled


class _Method(Method):
    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def embed(self, images: Tensor) -> Tensor:
        return self.backbone(images.float() / 255 * 2 - 1)  # the input the maps must be computed on


def test_activation_maps_are_the_min_max_scaled_channel_mean_of_what_embed_feeds_the_backbone():
    fmap = torch.rand(2, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    method = _Method(_MapBackbone(fmap))
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(act.backbone_input(method, images), images.float() / 255 * 2 - 1)
    maps = act.activation_maps(method, images)
    mean = fmap.mean(dim=1)
    for i in range(2):
        expected = (mean[i] - mean[i].min()) / (mean[i].max() - mean[i].min())
        assert torch.allclose(maps[i], expected)
    assert float(maps.amin()) == 0.0 and float(maps.amax()) == 1.0


def test_heat_overlay_puts_the_hot_cell_where_it_is_and_blends_bilinearly():
    grey = torch.full((1, 3, 8, 8), 0.5)
    hot_top_left = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    out = act.heat_overlay(grey, hot_top_left, size=CELL)
    assert out.shape == (1, 3, CELL, CELL)
    red, blue = out[0, 0], out[0, 2]
    assert red[0, 0] > blue[0, 0] + 0.2  # jet: high = red
    assert blue[-1, -1] > red[-1, -1] + 0.2  # low = blue
    row = out[0, 0, 4, :]  # red along a row falls smoothly (bilinear), no single jump
    assert len({round(float(v), 3) for v in row}) > 4


def test_bad_backbones_and_methods_get_one_line():
    class NoMap(nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3))

    images = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(UserError, match="return_map"):
        act.activation_maps(_Method(NoMap()), images)
    with pytest.raises(UserError, match="no backbone"):
        act.activation_maps(nn.Linear(2, 2), images)

    class Bypass(_Method):
        def embed(self, images):
            return images.float().mean()

    with pytest.raises(UserError, match="does not run its backbone"):
        act.activation_maps(Bypass(_MapBackbone(torch.rand(1, 2, 3, 3))), images)

    class Patches(_Method):
        def embed(self, images):
            return self.backbone(images.float().repeat(4, 1, 1, 1))

    with pytest.raises(UserError, match="4 inputs for 1 images"):
        act.activation_maps(Patches(_MapBackbone(torch.rand(4, 2, 3, 3))), images)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_folder_module):
    out = tmp_path_factory.mktemp("act") / "run"
    code = cli.main(["pretrain", "--method", "simclr", "--data", str(tiny_folder_module), "--out", str(out),
                     "data.image_size=16", "backbone.cifar_stem=true", "method.proj_hidden_dim=32", "train.batch_size=16",
                     "train.epochs=1", "train.progress=false", "train.monitor=none", "train.precision=fp32"])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def tiny_folder_module(tmp_path_factory):
    """The conftest's red/blue folder, module-scoped so one run serves every test here."""
    root = tmp_path_factory.mktemp("tiny-act")
    g = torch.Generator().manual_seed(0)
    for cls, base in (("red", (200, 40, 40)), ("blue", (40, 40, 200))):
        (root / cls).mkdir()
        for i in range(24):
            noise = torch.randint(-40, 40, (16, 16, 3), generator=g)
            arr = (torch.tensor(base) + noise).clamp(0, 255).to(torch.uint8).numpy()
            Image.fromarray(arr).save(root / cls / f"{i}.png")
    return root


def _expected_size(rows: int, n: int, cell: int) -> tuple[int, int]:
    probe = labelled_grid([("x", torch.zeros(n, 3, cell, cell))] * rows, title="t", cell=cell)
    return probe.size


@pytest.mark.slow
def test_cli_draws_one_map_row_per_run_plus_untrained(tiny_run, tmp_path, capsys):
    from unveil.commands.activations import _untrained
    from unveil.runs.checkpoint import load_run

    out = tmp_path / "maps.png"
    code = cli.main(["activations", str(tiny_run), "--compare", str(tiny_run), "--untrained", "--n", "5",
                     "--cell", str(CELL), "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    assert Image.open(out).size == _expected_size(4, 5, CELL)  # image row + 2 runs + untrained
    # the trained encoder's maps are not the untrained one's (16 px, CIFAR stem: 2 x 2 maps)
    method, _, dataset = load_run(tiny_run)
    images = dataset.test.images[:5]
    trained, untrained = act.activation_maps(method, images), act.activation_maps(_untrained(str(tiny_run)), images)
    assert trained.shape == (5, 2, 2)
    assert not torch.allclose(trained, untrained, atol=1e-3)


@pytest.mark.slow
def test_cli_data_option_and_bad_input(tiny_run, tiny_folder_module, tmp_path, capsys):
    out = tmp_path / "maps.png"
    assert cli.main(["activations", str(tiny_run), "--data", str(tiny_folder_module), "--n", "3",
                     "--cell", str(CELL), "-o", str(out)]) == 0
    assert Image.open(out).size == _expected_size(2, 3, CELL)
    capsys.readouterr()
    for argv, words in ((["activations", str(tiny_run), "--n", "0"], "--n must be >= 1"),
                        (["activations", str(tmp_path / "nope")], "does not exist")):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and words in err, err


# --- unveil preview --recipe -------------------------------------------------------------------------


def test_high_pass_rows_are_told_from_normalised_ones():
    from unveil.corruptions.mscn import high_pass

    g = torch.Generator().manual_seed(0)
    photo = torch.rand(8, 3, 16, 16, generator=g) * 0.3 + torch.rand(8, 3, 1, 1, generator=g)  # own colour per image
    normalised = (photo - 0.5) / 0.25
    assert not preview.looks_high_passed(normalised)
    assert preview.looks_high_passed(high_pass(normalised, 1.0))
    x = torch.rand(2, 3, 4, 4)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.3, 0.4)
    norm = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(preview.denormalise(norm, mean, std), x, atol=1e-6)


def test_preview_recipe_rows(tiny_folder_module, tmp_path, capsys):
    out = tmp_path / "simclr.png"
    assert cli.main(["preview", "--recipe", "simclr_cifar10", "--data", str(tiny_folder_module), "--image-size", "16",
                     "--n", "4", "--cell", str(CELL), "-o", str(out)]) == 0
    assert Image.open(out).size == _expected_size(3, 4, CELL)  # clean, view 1, view 2

    from unveil.build import build_method_for

    info = {"name": "tiny", "num_classes": 2, "image_size": 16, "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
    method = build_method_for(resolve("mscn_simclr_2_highpass"), dataset_info=info)
    images = torch.randint(0, 256, (4, 3, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    rows = method.branch_views(images, torch.Generator().manual_seed(0))
    flags = {name: preview.looks_high_passed(x) for name, x in rows.items()}
    assert flags["view 1"] is False and any(flags.values()), flags  # the masked rows are high-passed
    img = preview.render_branch_views(method, images, info["mean"], info["std"], cell=CELL, title="t")
    assert img.size == _expected_size(1 + len(rows), 4, CELL)

    capsys.readouterr()
    assert cli.main(["preview", "--recipe", "overlay_cifar10", "--data", str(tiny_folder_module), "-o",
                     str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "has no branch_views()" in err, err


def test_a_one_by_one_map_is_refused_in_one_line():
    """A standard-stem ResNet-18 at 32 px ends in a 1x1 map: every 'map' would be flat."""
    from unveil.backbones import build_backbone
    from unveil.methods import DataInfo, build_method

    method = build_method("simclr", backbone=build_backbone("resnet18", cifar_stem=False),
                          data_info=DataInfo("cifar10", 10, 32)).eval()
    with pytest.raises(UserError) as err:
        act.activation_maps(method, torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    assert "1x1" in str(err.value) and "\n" not in str(err.value)
