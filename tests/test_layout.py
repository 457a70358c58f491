"""Package layout: each folder does one job and imports point one way.

The building blocks (tensors, corruptions, views, backbones) import nothing above them; only the CLI
imports the commands; the suites never call back into the CLI. Checked statically over every import
statement, lazy imports inside functions included, following imports package to package; and once
by importing every module of the corruptions and views in a fresh interpreter (what a user's
``import unveil.corruptions`` really loads).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "unveil"

# Leaves of the graph: the only unveil packages each may reach, directly or through another.
ONLY = {
    "errors": set(),
    "tensors": set(),
    "registry": {"errors"},
    "corruptions": {"errors", "tensors", "registry"},
    "views": {"errors", "tensors"},
    "backbones": {"errors", "registry"},
}
# Packages that must not import these directly.
NEVER = {
    "methods": {"train", "eval", "bench", "viz", "data"},
    "viz": {"bench"},
}
TOP = {"commands", "cli"}  # nothing but ``cli`` reaches ``commands``, nothing imports ``cli``

# Every package sits in one layer and imports only from layers below it: no back-arrows, no cycles.
# ``runs`` (checkpoints, configs, logs, weights on disk) is what lets eval, viz, export and train read a run
# without importing each other; ``protocols`` sits above ``train`` because the fine-tune trains through it.
LAYERS = [
    {"errors", "tensors", "dist", "param_groups"},
    {"io", "precision", "losses", "registry"},
    {"config", "optim", "corruptions", "views", "backbones", "data"},
    {"methods"},
    {"build"},
    {"runs"},
    {"eval", "viz"},
    {"train", "export"},
    {"protocols"},
    {"bench"},
    {"commands"},
    {"cli"},
]


def _package_files(package: str) -> list[Path]:
    path = SRC / package
    return sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]


def imported_packages(package: str) -> set[str]:
    """Top-level unveil packages (``train``, ``views``, ...) imported anywhere in ``package``."""
    found = set()
    for file in _package_files(package):
        parts = list(file.relative_to(SRC.parent).with_suffix("").parts)
        here = parts[:-1]  # the package a relative import starts from
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here[: len(here) - node.level + 1]
                    targets = [[*base, *node.module.split(".")]] if node.module else [[*base, a.name] for a in node.names]
                else:
                    targets = [node.module.split(".")] if node.module else []
            elif isinstance(node, ast.Import):
                targets = [a.name.split(".") for a in node.names]
            else:
                continue
            found |= {t[1] for t in targets if t[0] == "unveil" and len(t) > 1}
    return found - {package}


def _packages() -> set[str]:
    return {p.stem if p.is_file() else p.name for p in SRC.iterdir()
            if (p.suffix == ".py" or (p / "__init__.py").is_file()) and not p.name.startswith("_")}


def reachable(package: str) -> set[str]:
    """Every unveil package ``package`` imports, directly or through the packages it imports."""
    seen, todo = set(), [package]
    while todo:
        for nxt in imported_packages(todo.pop()) - seen - {package}:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_the_import_scan_sees_relative_absolute_and_lazy_imports():
    # commands/reconstruct.py imports viz at module level and train.checkpoint inside run().
    assert {"viz", "train", "errors"} <= imported_packages("commands")
    assert imported_packages("corruptions") >= {"errors", "tensors"}


@pytest.mark.parametrize("package", sorted(ONLY))
def test_building_blocks_import_only_what_is_below_them(package):
    extra = reachable(package) - ONLY[package]
    assert not extra, f"unveil.{package} imports unveil.{', unveil.'.join(sorted(extra))}"


@pytest.mark.parametrize("package", sorted(NEVER))
def test_no_import_points_back_up(package):
    bad = imported_packages(package) & (NEVER[package] | TOP)
    assert not bad, f"unveil.{package} imports unveil.{', unveil.'.join(sorted(bad))}"


def test_every_package_has_a_layer():
    placed = set().union(*LAYERS)
    assert _packages() == placed, f"not in LAYERS: {sorted(_packages() - placed)}; gone: {sorted(placed - _packages())}"


@pytest.mark.parametrize("layer", range(len(LAYERS)))
def test_imports_point_only_down_the_layers(layer):
    below = set().union(*LAYERS[:layer])
    for package in sorted(LAYERS[layer]):
        up = imported_packages(package) - below
        assert not up, f"unveil.{package} imports unveil.{', unveil.'.join(sorted(up))}, which is not below it"


def test_only_the_cli_reaches_the_commands():
    importers = {p for p in _packages() - TOP if reachable(p) & TOP}
    assert not importers, f"{sorted(importers)} import unveil.commands or unveil.cli (CLI verbs belong to the CLI only)"
    assert "cli" not in imported_packages("commands")


_LOAD_ALL = """
import importlib, pkgutil, sys
for name in ("unveil.corruptions", "unveil.views"):
    pkg = importlib.import_module(name)
    for info in pkgutil.walk_packages(pkg.__path__, name + "."):
        importlib.import_module(info.name)
print(" ".join(sorted({n.split(".")[1] for n in sys.modules if n.startswith("unveil.")})))
"""


@pytest.mark.dist  # a fresh child interpreter: what `import unveil.corruptions` really loads
def test_importing_the_corruptions_and_views_loads_nothing_above_them():
    # One interpreter for both (a fresh one costs seconds, mostly torch): neither may load the other
    # pipeline layers, so loading them together checks both.
    out = subprocess.run([sys.executable, "-c", _LOAD_ALL], capture_output=True, text=True, timeout=120,
                         check=True).stdout.split()
    assert set(out) == {"corruptions", "views", "errors", "tensors", "registry"}, out


def test_no_registered_method_imports_another():
    """What two methods share lives in an unregistered ``methods/_*.py`` file (heads, the MoCo machinery,
    momentum pairs), so a method file can be read, copied or deleted on its own."""
    methods = SRC / "methods"
    registered = {p.stem for p in methods.glob("*.py") if "@register(" in p.read_text(encoding="utf-8")}
    assert {"simclr", "moco", "mixdet"} <= registered
    for path in sorted(methods.glob("*.py")):
        if path.stem not in registered:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names = [node.module] if node.module else [a.name for a in node.names]
                bad = {n.split(".")[0] for n in names} & (registered - {path.stem})
                assert not bad, f"methods/{path.name} imports the method module(s) {sorted(bad)}"


MAX_FUNCTION_LINES = 60


def test_no_function_in_src_is_longer_than_a_screen():
    """A function a reader cannot see whole is split (docstring and signature included in the count)."""
    long = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "split these: " + "; ".join(long)


def test_src_cites_only_documents_in_the_repository():
    """Design citations point at docs/design.md, and every section cited there exists."""
    design = (SRC.parents[1] / "docs" / "design.md").read_text(encoding="utf-8")
    sections = set(re.findall(r"^\*\*(\d+\.\d+) ", design, flags=re.M)) | set(re.findall(r"^## (\d+)\. ", design, flags=re.M))
    cited: set[str] = set()
    for path in sorted(SRC.rglob("*")):
        if path.suffix not in (".py", ".yaml"):
            continue
        text = path.read_text(encoding="utf-8")
        assert "methods.md" not in text, f"{path.relative_to(SRC)} cites methods.md, which is not in the repository"
        cited |= set(re.findall(r"docs/design\.md §?(\d+(?:\.\d+)?)", text))
    assert len(cited) >= 20 and not cited - sections, f"sections cited but absent: {sorted(cited - sections)}"
