"""Write docs/previews/<recipe>.png for every shipped recipe whose method can show its branches.

Each figure is ``unveil preview --recipe <recipe> --n 8 --cell 64 --seed 1``: the first 8 test
images of the recipe's data (CIFAR-10 for all but the Fashion-MNIST demo) and what the recipe's method feeds its two branches (views, masked
views, mixtures; ``method.branch_views``). Recipes whose method has no ``branch_views`` (the
autoencoders, supervised) are listed as skipped.

    UNVEIL_CIFAR10=/path/to/cifar10 .venv/bin/python scripts/make_previews.py [--out docs/previews] [RECIPE ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from unveil import cli
from unveil import methods as method_registry
from unveil.config import available_recipes, load_recipe

REPO = Path(__file__).resolve().parents[1]


def recipes_with_branch_views() -> tuple[list[str], list[str]]:
    """(recipes whose method class has ``branch_views``, the others)."""
    method_registry.available()  # imports every method module (registers them)
    shown, skipped = [], []
    for recipe in available_recipes():
        name = str(load_recipe(recipe).get("method", {}).get("name", "simclr"))
        cls = method_registry.METHODS.get(name)
        (shown if cls is not None and hasattr(cls, "branch_views") else skipped).append(recipe)
    return shown, skipped


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("recipes", nargs="*", help="only these recipes (default: every shipped one with branch_views)")
    p.add_argument("--out", default=str(REPO / "docs" / "previews"), help="folder to write into")
    p.add_argument("--data", default=None, help="data for every recipe (default: each recipe's own)")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--cell", type=int, default=64)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    shown, skipped = recipes_with_branch_views()
    todo = args.recipes or shown
    for recipe in todo:
        out = Path(args.out) / f"{recipe}.png"
        data = ["--data", args.data] if args.data else []
        code = cli.main(["preview", "--recipe", recipe, *data, "--n", str(args.n), "--cell", str(args.cell),
                         "--seed", str(args.seed), "-o", str(out)])
        if code != 0:
            return code
    if not args.recipes:
        print(f"skipped (no branch_views): {', '.join(skipped)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
