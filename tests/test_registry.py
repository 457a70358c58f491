"""One registration mechanism (methods, backbones, corruptions): a module with a decorator is the whole of it."""

from __future__ import annotations

import sys
import textwrap

import pytest

from unveil.backbones import BACKBONES
from unveil.corruptions import CORRUPTIONS
from unveil.errors import UserError
from unveil.methods import METHODS
from unveil.registry import Registry


@pytest.fixture
def plugin_package(tmp_path, monkeypatch):
    """A package ``plugins`` whose ``__init__`` lists none of its modules, as a newcomer's would be."""
    pkg = tmp_path / "plugins"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent('''
        from unveil.registry import Registry
        THINGS = Registry("thing", __name__)
    '''))
    (pkg / "blur.py").write_text(textwrap.dedent('''
        from . import THINGS
        @THINGS.register("blur")
        def blur(x):
            return x
    '''))
    (pkg / "_helpers.py").write_text("raise AssertionError('private modules are not imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield pkg
    for name in [n for n in sys.modules if n == "plugins" or n.startswith("plugins.")]:
        del sys.modules[name]


def test_a_module_with_the_decorator_is_found_without_being_listed(plugin_package):
    import plugins

    assert "blur" not in plugins.THINGS._entries  # nothing imported it yet
    assert "blur" in plugins.THINGS and plugins.THINGS.lookup("blur")(3) == 3
    (plugin_package / "sharpen.py").write_text(
        "from . import THINGS\nTHINGS.register('sharpen')(lambda x: -x)\n")
    assert sorted(plugins.THINGS) == ["blur"]  # discovery runs once per process: a new file needs a new one


def test_unknown_names_are_one_line_naming_the_known_ones(plugin_package):
    import plugins

    with pytest.raises(UserError, match=r"^unknown thing 'sharpen': choose one of blur$"):
        plugins.THINGS.lookup("sharpen")


def test_a_name_taken_twice_is_refused():
    reg: Registry[object] = Registry("thing", "unveil.views")
    reg.register("a")(len)
    reg.register("a")(len)  # the same object again (a module imported twice) is fine
    with pytest.raises(RuntimeError, match="thing name 'a' registered twice"):
        reg.register("a")(print)


def test_methods_backbones_and_corruptions_use_it():
    for registry in (METHODS, BACKBONES, CORRUPTIONS):
        assert isinstance(registry, Registry)
    assert {"simclr", "byol", "moco", "mixdet", "mae", "mvmae"} <= set(METHODS)
    assert {"resnet18", "resnet50"} <= set(BACKBONES)
    assert {"overlay", "pixel_mask", "mscn", "token_mask", "unmix"} <= set(CORRUPTIONS)
