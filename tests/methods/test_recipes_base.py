"""Recipe inheritance: ``base: other_recipe`` merges a recipe on top of another, recursively."""

from __future__ import annotations

import pytest

from unveil.config import available_recipes, load_recipe, resolve
from unveil.errors import UserError


def write(tmp_path, name: str, text: str):
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def test_base_merges_mappings_key_by_key_and_replaces_other_values(tmp_path):
    write(tmp_path, "a", "method:\n  name: simclr\n  temperature: 0.5\n  views: {crop_scale: [0.2, 1.0], flip_p: 0.5}\n"
                         "train:\n  epochs: 7\n  lr: 0.1\n")
    write(tmp_path, "b", "base: a.yaml\nmethod:\n  views: {flip_p: 0.0}\ntrain:\n  lr: 0.3\n")
    c = write(tmp_path, "c", "base: b.yaml\nmethod:\n  views: null\ntrain:\n  epochs: 9\n")
    b = load_recipe(tmp_path / "b.yaml")
    assert b == {"method": {"name": "simclr", "temperature": 0.5, "views": {"crop_scale": [0.2, 1.0], "flip_p": 0.0}},
                 "train": {"epochs": 7, "lr": 0.3}}
    cfg = resolve(c)  # resolve (and so the engine, suites, methods_table) sees the merged recipe
    assert cfg["method"] == {"name": "simclr", "temperature": 0.5, "views": None}  # null replaces a mapping
    assert (cfg["train"]["epochs"], cfg["train"]["lr"]) == (9, 0.3)
    assert "base" not in cfg


def test_shipped_trajectory_is_cumulative():
    cfg = resolve("mscn_simclr_6_asym")
    assert cfg["method"]["temperature"] == resolve("simclr_cifar10")["method"]["temperature"]  # from the base
    m = cfg["method"]["masking"]
    assert m["high_pass_sigma"] == 1.0 and m["num_masks"] == 1
    assert m["branch_a"] == {"p_apply": 1.0, "p_focal": 0.4, "p_ind": 0.8, "noise_std": 0.18, "ratio": 0.15,
                             "grid_cells": 7, "focal_scale": [0.05, 0.3]}
    assert m["branch_b"]["p_apply"] == 0.5 and m["branch_b"]["noise_std"] == 0.14
    assert resolve("mscn_byol_7_multimask")["train"]["optimizer"] == "lars"  # byol_cifar10_solo underneath


def test_the_merged_recipe_is_what_the_built_method_uses():
    """Not only the merged dict: the method built from the derived recipe carries its base's and its own values."""
    from unveil.build import build_method_for

    info = {"name": "cifar10", "num_classes": 10, "image_size": 32, "mean": (0.5,) * 3, "std": (0.25,) * 3}
    method = build_method_for(resolve("mscn_simclr_6_asym", ["data.image_size=32"]), dataset_info=info)
    assert method.temperature == resolve("simclr_cifar10")["method"]["temperature"]  # from the base recipe
    a, b = method.masker.branch_a, method.masker.branch_b
    assert (a.p_apply, a.ratio, a.noise_std, a.grid_cells, tuple(a.focal_scale)) == (1.0, 0.15, 0.18, 7, (0.05, 0.3))
    assert (b.p_apply, b.noise_std) == (0.5, 0.14) and method.masker.high_pass_sigma == 1.0


@pytest.mark.parametrize("files, needle", [
    ({"x": "base: y.yaml\n", "y": "base: x.yaml\n"}, "cycle (x -> y -> x)"),
    ({"x": "base: x.yaml\n"}, "cycle (x -> x)"),
])
def test_a_cycle_is_one_clear_line(tmp_path, files, needle):
    for name, text in files.items():
        write(tmp_path, name, text)
    with pytest.raises(UserError) as exc:
        load_recipe(tmp_path / "x.yaml")
    assert needle in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("text, needle", [
    ("base: no_such_recipe\n", "recipe 'no_such_recipe' not found"),
    ("base: [simclr_cifar10]\n", "base must be a recipe name or path"),
    ("base: simclr_cifar10\ntrain:\n  epochz: 3\n", "unknown setting 'train.epochz'"),
])
def test_bad_bases_get_one_line(tmp_path, text, needle):
    with pytest.raises(UserError, match=needle.replace("(", r"\(").replace("[", r"\[")):
        resolve(write(tmp_path, "r", text))


def test_every_shipped_recipe_resolves_to_a_registered_method_and_says_where_it_comes_from():
    from unveil.config import recipes_dir
    from unveil.methods import METHODS

    names = available_recipes()
    assert len(names) >= 37
    for name in names:
        cfg = resolve(name)
        assert cfg["method"]["name"] in METHODS, name
        text = (recipes_dir() / f"{name}.yaml").read_text()
        assert text.startswith("#"), f"{name}.yaml opens with no comment saying what it is and where its values come from"
