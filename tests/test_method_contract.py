"""The method contract (unveil.methods.base.Method): every registered method states it, callers rely on it."""

from __future__ import annotations

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
