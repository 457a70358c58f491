"""``unveil pretrain``: train a method from a recipe, with overrides; ``--resume`` continues a run."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import resolve
from ..errors import require
from ..runs.checkpoint import CONFIG_NAME, read_config


def add_common_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="cifar10 | cifar100 | fashion-mnist | stl10 | an image folder | a Parquet folder")
    p.add_argument("--method", help="method name (see 'unveil pretrain --list')")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--out", help="run directory")


def shortcut_overrides(args: argparse.Namespace) -> list[str]:
    pairs = {"data.name": args.data, "method.name": args.method, "train.epochs": args.epochs,
             "train.batch_size": args.batch_size, "out": args.out}
    return [f"{k}={v}" for k, v in pairs.items() if v is not None]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="pretrain an encoder", description=(
        "Train a method. Settings come from defaults, then --recipe, then --data/--method/... shortcuts, "
        "then dotted overrides such as train.lr=0.1 method.temperature=0.2."))
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--recipe", help="shipped recipe name or YAML path")
    add_common_overrides(p)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue this run exactly where it stopped")
    p.add_argument("--list", action="store_true", help="list methods and recipes, then exit")
    p.set_defaults(func=run)


def _method_recipe(name: str | None) -> str | None:
    """``--method NAME`` without ``--recipe``: the method's own defaults when it names a recipe
    (``default_recipe``: MAE's ViT, decoder and AdamW rather than the ResNet/SGD defaults)."""
    from .. import methods

    if not name:
        return None
    if name not in methods.available():
        from ..bench.compare import FAMILIES

        recipe = FAMILIES.get(name)  # a name read off a compare report ('mocov2', 'unmix') names a recipe
        require(recipe is None, f"unknown method '{name}': it is the name unveil compare gives the recipe {recipe}: "
                f"use --recipe {recipe} (methods: {', '.join(methods.available())})")
        return None  # any other unknown name gets its one line from the method registry
    recipe = methods.METHODS[name].default_recipe
    if recipe:
        print(f"unveil: --method {name} without --recipe: starting from the recipe {recipe} (its backbone, optimizer "
              "and schedule); --data, --epochs and KEY=VALUE apply on top")
    return recipe


def run(args: argparse.Namespace) -> int:
    from .. import methods
    from ..config import available_recipes

    if args.list:
        print("methods:", ", ".join(methods.available()))
        print("recipes:", ", ".join(available_recipes()))
        return 0
    from ..train.engine import train

    overrides = shortcut_overrides(args) + list(args.overrides)
    if args.resume:
        run_dir = Path(args.resume)
        require(run_dir.is_dir(), f"--resume {run_dir}: no such run directory")
        base = read_config(run_dir)
        require(not args.recipe, "--resume takes its settings from the run; drop --recipe")
        from ..config import merge, parse_overrides, validate

        cfg = merge(base, parse_overrides(overrides)) if overrides else base
        validate(cfg)
        run_dir = train(cfg, resume=run_dir)
    else:
        run_dir = train(resolve(args.recipe or _method_recipe(args.method), overrides))
    from .. import dist

    if dist.is_main():
        from ..viz.curves import plot_curves

        curves = plot_curves(run_dir, run_dir / "curves.png")  # the loss curve: useful with or without labels
        print(f"unveil: run finished: {run_dir} (config {run_dir / CONFIG_NAME}, loss curve {curves})")
    return 0
