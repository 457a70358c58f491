"""The method contract (unveil.methods.base.Method): every registered method states it, callers rely on it."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from unveil.errors import UserError
from unveil.methods import METHODS, register
from unveil.methods.base import OPTIONAL_HOOKS, Method


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_registered_method_implements_the_two_required_hooks(name):
    cls = METHODS[name]
    assert issubclass(cls, Method) and cls.registered_name == name
    assert cls.forward is not Method.forward and cls.embed is not Method.embed, name


def test_optional_hooks_are_what_each_method_has():
    have = {name: {h for h in OPTIONAL_HOOKS if METHODS[name].implements(h)} for name in METHODS}
    assert "reconstruct" in have["mae"] and "reconstruct" in have["denoising_ae"] and "reconstruct" in have["context_patch_ae"]
    assert "embed_head" in have["moco"] and "embed_head" in have["simclr"] and "embed_head" not in have["mae"]
    assert have["supervised"] == {"classify"}
    with pytest.raises(ValueError, match="not an optional hook"):
        Method.implements("forward")


def test_a_missing_optional_hook_is_one_line_naming_the_method():
    class Bare(Method):
        registered_name = "bare"

        def forward(self, images, labels, generator):
            return {"loss": images.float().mean()}

        def embed(self, images):
            return images.float().flatten(1)

    m = Bare()
    with pytest.raises(UserError, match="method bare does not reconstruct images"):
        m.reconstruct(torch.zeros(1, 3, 4, 4))
    with pytest.raises(UserError, match="method bare has no projection head"):
        m.embed_head(torch.zeros(1, 3, 4, 4))
    assert m.param_groups() is None and not m.has_views and m.backbone_spec is None and m.eval_filter is None
    m.after_optimizer_step(1, 10)
    m.reset_targets()


def test_registering_something_that_is_not_a_method_is_refused():
    with pytest.raises(TypeError, match="must subclass unveil.methods.base.Method"):
        register("_not_a_method")(torch.nn.Linear)
    assert "_not_a_method" not in METHODS


# ------------------------------------------------------------------ one CPU step of every shipped recipe
INFO = {"name": "cifar10", "num_classes": 10, "image_size": 32, "mean": (0.49, 0.48, 0.45), "std": (0.25, 0.24, 0.26)}


def _build(recipe: str):
    from unveil.build import build_method_for
    from unveil.config import resolve

    cfg = resolve(recipe, ["data.image_size=32"])
    if "image_size" in cfg["method"]:  # the overlay AE's crop (224 for Caltech): the contract needs no large images
        cfg = resolve(recipe, ["data.image_size=32", "method.image_size=32"])
    torch.manual_seed(0)
    return build_method_for(cfg, dataset_info=INFO), cfg


def _recipes() -> list:
    """Every shipped recipe; the first of each method runs in the fast subset, the rest are marked slow."""
    from unveil.config import available_recipes, load_recipe

    seen: set[str] = set()
    params = []
    for recipe in available_recipes():
        name = str(load_recipe(recipe).get("method", {}).get("name", "simclr"))
        params.append(pytest.param(recipe, marks=() if name not in seen else pytest.mark.slow))
        seen.add(name)
    return params


@pytest.mark.parametrize("recipe", _recipes())
def test_every_recipe_takes_one_cpu_step_round_trips_and_exports(recipe, tmp_path, one_thread):
    """Finite loss, gradients that reach the backbone, a state that loads into a fresh build, an export that
    loads strictly: what registering a method or shipping a recipe must give, checked for all of them."""
    from unveil.export import export_backbone
    from unveil.runs.weights import read_backbone_state

    method, cfg = _build(recipe)
    method.train()
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (16,), generator=g)
    out = method(images, labels, g)
    assert torch.isfinite(out["loss"]), (recipe, out["loss"])
    out["loss"].backward()
    grads = [p.grad for p in method.backbone.parameters() if p.requires_grad]
    assert grads and any(gr is not None and gr.abs().sum() > 0 for gr in grads), f"{recipe}: no gradient reached the backbone"
    assert all(gr is None or torch.isfinite(gr).all() for gr in grads)
    method.after_optimizer_step(1, 10)

    fresh, _ = _build(recipe)
    fresh.load_state_dict(method.state_dict())
    method.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(method.embed(images[:4]), fresh.embed(images[:4]))

    path = tmp_path / "enc.safetensors"
    export_backbone(method.backbone, path, {**cfg, "backbone": method.backbone_spec or cfg["backbone"]},
                    eval_filter=method.eval_filter)
    fresh.backbone.load_state_dict(read_backbone_state(path), strict=True)


# ------------------------------------------------------------------ typed settings (unveil.methods.settings)
@pytest.mark.parametrize("setting, needle", [
    ({"temprature": 0.1}, "unknown setting(s) method.temprature for simclr: known ones are temperature, proj_hidden_dim"),
    ({"temperature": "0.1"}, "method.temperature must be a number for simclr, got '0.1'"),
    ({"temperature": 0}, "method.temperature must be > 0 for simclr, got 0"),
    ({"proj_dim": 12.5}, "method.proj_dim must be an integer for simclr, got 12.5"),
    ({"proj_dim": True}, "method.proj_dim must be an integer for simclr, got True"),
])
def test_bad_settings_are_one_line_naming_the_field_and_what_it_allows(setting, needle):
    from unveil.build import build_method_for
    from unveil.config import resolve

    cfg = resolve("simclr_cifar10", [])
    cfg["method"].update(setting)
    with pytest.raises(UserError) as err:
        build_method_for(cfg, dataset_info=INFO)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_ranges_and_types_of_other_methods():
    from unveil.methods import build_method
    from unveil.methods.settings import settings_of

    with pytest.raises(UserError, match=r"method.mask_ratio must be in \(0, 1\) for mae, got 1.0"):
        build_method("mae", backbone=None, data_info=None, mask_ratio=1.0)
    with pytest.raises(UserError, match=r"method.momentum must be in \[0, 1\] for moco, got 1.5"):
        build_method("moco", backbone=None, data_info=None, momentum=1.5)
    with pytest.raises(UserError, match="method.symmetric must be true or false for moco"):
        build_method("moco", backbone=None, data_info=None, symmetric="yes")
    fields = {f.name: f.default for f in dataclasses.fields(settings_of(METHODS["moco"]))}
    assert fields["queue_size"] == 4096 and fields["temperature"] == 0.1 and "backbone" not in fields
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings_of(METHODS["moco"])().temperature = 1.0


def test_a_bug_inside_a_constructor_keeps_its_traceback():
    class Buggy(Method):
        def __init__(self, backbone=None, data_info=None, width: int = 4):
            super().__init__()
            torch.nn.Linear(width)  # a real TypeError (missing argument): a bug, not a recipe typo

        def forward(self, images, labels, generator):
            return {}

        def embed(self, images):
            return images

    register("_buggy")(Buggy)
    try:
        from unveil.methods import build_method

        with pytest.raises(TypeError, match="missing 1 required positional argument"):
            build_method("_buggy", backbone=None, data_info=None, width=8)
    finally:
        METHODS.remove("_buggy")
