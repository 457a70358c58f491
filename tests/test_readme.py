"""The README says what exists: its table of methods is the registry's, and every method it names is registered."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from unveil import methods

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_methods_table_is_generated_from_the_registry():
    table = methods.methods_table()
    assert table in README.read_text(), (
        "README.md's methods table is out of date; paste the output of "
        "`python -c 'from unveil.methods import methods_table; print(methods_table())'`")


def test_every_method_the_readme_names_builds_from_its_first_recipe_and_embeds():
    """Each row of the README's table: the name is registered, has a summary, and its first listed recipe
    builds that method, which embeds two images into one feature vector each."""
    from unveil.build import build_method_for
    from unveil.config import resolve

    rows = re.findall(r"^\| `(\w+)` \| (.+?) \| .+? \| `(\w+)`", README.read_text(), flags=re.M)
    assert len(rows) >= 9  # nine methods ship recipes today
    info = {"name": "cifar10", "num_classes": 10, "image_size": 32, "mean": (0.5,) * 3, "std": (0.25,) * 3}
    for name, summary, recipe in rows:
        assert name in methods.METHODS and summary.strip() and summary == methods.ABOUT[name][0].replace("|", "\\|")
        cfg = resolve(recipe, ["data.image_size=32"])
        if "image_size" in cfg["method"]:  # the overlay AE's crop size: 32 px is enough here
            cfg = resolve(recipe, ["data.image_size=32", "method.image_size=32"])
        method = build_method_for(cfg, dataset_info=info)
        assert type(method) is methods.METHODS[name], (recipe, type(method))
        features = method.eval().embed(torch.rand(2, 3, 32, 32))
        assert features.ndim == 2 and features.shape[0] == 2 and torch.isfinite(features).all(), recipe
