"""The README says what exists: its table of methods is the registry's, and every method it names is registered."""

from __future__ import annotations

from pathlib import Path

from unveil import methods

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_methods_table_is_generated_from_the_registry():
    table = methods.methods_table()
    assert table in README.read_text(), (
        "README.md's methods table is out of date; paste the output of "
        "`python -c 'from unveil.methods import methods_table; print(methods_table())'`")


def test_every_registered_method_builds_from_its_name():
    for name in methods.available():
        if name.startswith("_"):
            continue
        assert name in methods.METHODS and methods.ABOUT[name][0], name
