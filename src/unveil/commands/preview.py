"""``unveil preview``: a grid PNG of clean / corrupted images, to check a corruption at a glance.

    unveil preview overlay --alpha 0.3 --partner derangement --data cifar10 -o overlay.png
    unveil preview mscn --branch-a "{ratio: 0.3}" --num-masks 2 --data cifar10 -o mscn.png
    unveil preview --list
    unveil preview --recipe mscn_simclr_7_multimask --data cifar10 -o mscn.png

Parameter values are read as YAML scalars, lists or mappings. Two-view corruptions (MSCN, MixDet)
get the horizontal flip of the batch as their second view. MSCN and the high-pass filter see
ImageNet-normalised images, as in training; their rows show zero as grey.

``--recipe NAME`` instead builds that recipe's method for the data and draws what its branches
see (``method.branch_views``: the rows the encoder gets, normalised as in training, shown by
undoing the data's mean/std; high-passed rows with zero as grey).
"""

from __future__ import annotations

import argparse

import yaml
from torch import Tensor

from ..corruptions import CORRUPTIONS, build_corruption, corruption_params, describe
from ..errors import UserError, require
from ..viz.grid import save_png
from ..viz.preview import render

RESERVED = {"list", "data", "n", "seed", "image_size", "output", "corruption", "cell", "recipe"}


def parse_value(text: str):
    """A CLI parameter value as YAML (0.3, [0.1, 0.4], derangement, {ratio: 0.3}, null)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _param_names() -> list[str]:
    names = dict.fromkeys(p for name in CORRUPTIONS for p in corruption_params(name))
    return [p for p in names if p not in RESERVED]


def load_images(data: str, n: int, image_size: int | None) -> Tensor:
    from ..data import load_data

    dataset = load_data(data, image_size=image_size, subset=n, test_subset=n)
    return dataset.test.images[:n]


def run_recipe(args: argparse.Namespace) -> int:
    """``--recipe NAME``: the recipe's method built for the data, its ``branch_views`` drawn."""
    from ..build import build_method_for, data_info_of
    from ..config import resolve
    from ..data import load_data
    from ..viz.preview import render_branch_views

    require(args.corruption is None, f"preview: give a corruption or --recipe, not both (got '{args.corruption}')")
    require(args.output is not None, "preview: -o/--output is required (the PNG to write)")
    require(args.n >= 1, f"preview: --n must be >= 1, got {args.n}")
    cfg = resolve(args.recipe)
    data = args.data or cfg["data"]["name"]
    size = args.image_size or cfg["data"]["image_size"]
    dataset = load_data(data, root=cfg["data"]["root"] if args.data is None else None, image_size=size,
                        subset=args.n, test_subset=args.n)
    images = dataset.test.images[: args.n] if len(dataset.test.images) else dataset.train.images[: args.n]
    if len(images) == 0:
        raise UserError(f"preview: no images in --data {data}")
    info = data_info_of(dataset)
    method = build_method_for(cfg, dataset_info=info)
    title = f"{args.recipe} ({cfg['method']['name']}) on {dataset.name}, seed={args.seed}: what the branches see"
    save_png(render_branch_views(method, images, info["mean"], info["std"], args.seed, args.cell, title), args.output)
    print(f"wrote {args.output}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.recipe is not None:
        return run_recipe(args)
    if args.list:
        for name in sorted(CORRUPTIONS):
            print(describe(name))
        return 0
    require(args.corruption is not None, f"preview: name a corruption ({', '.join(sorted(CORRUPTIONS))}) or use --list")
    require(args.data is not None, "preview: --data is required (a registered dataset such as cifar10, or a folder)")
    require(args.output is not None, "preview: -o/--output is required (the PNG to write)")
    require(args.n >= 1, f"preview: --n must be >= 1, got {args.n}")
    params = {p: parse_value(v) for p in _param_names() if (v := getattr(args, f"param_{p}")) is not None}
    build_corruption(args.corruption, **params)  # fail on bad parameters before loading any data
    images = load_images(args.data, args.n, args.image_size)
    if len(images) == 0:
        raise UserError(f"preview: no test images in --data {args.data}")
    save_png(render(args.corruption, images, params, args.seed, args.cell), args.output)
    print(f"wrote {args.output}")
    return 0


def register(subparsers) -> None:  # noqa: ANN001
    p = subparsers.add_parser(
        "preview",
        help="write a grid PNG of clean / corrupted images",
        description=__doc__.split("\n\n")[0],
        allow_abbrev=False,
    )
    p.add_argument("corruption", nargs="?", help="corruption name (see --list)")
    p.add_argument("--list", action="store_true", help="list the corruptions and their parameters")
    p.add_argument("--recipe", help="instead of a corruption: a recipe whose method's branch inputs to draw "
                   "(shipped name or YAML path; --data defaults to the recipe's)")
    p.add_argument("--data", help="dataset name or folder (test images are shown)")
    p.add_argument("--n", type=int, default=8, help="number of images (default 8)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    p.add_argument("--image-size", type=int, default=None, help="decode size (default: the dataset's)")
    p.add_argument("--cell", type=int, default=96, help="display size of each image in px (default 96)")
    p.add_argument("-o", "--output", help="PNG file to write")
    group = p.add_argument_group("corruption parameters (YAML values; see --list for which apply)")
    for name in _param_names():
        flags = dict.fromkeys((f"--{name.replace('_', '-')}", f"--{name}"))
        group.add_argument(*flags, dest=f"param_{name}", metavar="VALUE", default=None)
    p.set_defaults(func=run)
