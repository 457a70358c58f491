"""``unveil activations RUN -o maps.png``: where a trained encoder's last stage responds.

    unveil activations runs/moco --compare runs/moco-unmix --untrained --n 8 -o maps.png

Rows: the test images, then per run a heat map of its backbone's last-stage activations (channel
mean, min-max scaled per image, bilinear upsampling; see ``unveil.viz.activations``). Images come
from the first run's test split (``--data`` for other data, decoded at that run's image size),
drawn reproducibly from ``--seed``. ``--untrained`` adds the first run's encoder as the engine
initialised it (same seed), the control every map should be read against.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import require
from ..viz.activations import activation_figure
from ..viz.grid import save_png


def _pick(images: Tensor, n: int, seed: int) -> Tensor:
    """``n`` images (uint8), drawn reproducibly from ``seed``, in dataset order."""
    require(len(images) > 0, "no test images to draw activation maps for")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[: min(n, len(images))]
    return images[order.sort().values]


def _label(run: str, cfg: dict[str, Any]) -> str:
    method = cfg.get("method", {})
    extra = f", mix {method['mix']}" if method.get("mix") not in (None, "none") else ""
    extra += f", approach {method['approach']}" if "approach" in method else ""
    extra += ", masked" if method.get("masking") else ""
    return f"{Path(run).name}\n({method.get('name', '?')}{extra})"


def _untrained(run: str) -> nn.Module:
    """The first run's method with the weights the engine started from (its seed, no training)."""
    from ..build import backbone_config
    from ..runs.checkpoint import load_checkpoint, read_config, resolve_run
    from ..runs.weights import build_untrained

    run_dir, ckpt = resolve_run(run)
    state = load_checkpoint(ckpt)
    cfg = state.get("config") or read_config(run_dir)
    if state.get("data_info"):
        cfg = {**cfg, "backbone": backbone_config(cfg["backbone"], state["data_info"]["image_size"])[0]}
    return build_untrained(cfg, state.get("data_info")).eval()


def run(args: argparse.Namespace) -> int:
    from ..data import load_data
    from ..runs.checkpoint import load_run

    require(args.n >= 1, f"activations: --n must be >= 1, got {args.n}")
    require(args.cell >= 16, f"activations: --cell must be >= 16 px, got {args.cell}")
    runs = [args.run, *(args.compare or [])]
    loaded = [load_run(r, load_data=(i == 0 and args.data is None)) for i, r in enumerate(runs)]
    method0, cfg0, dataset = loaded[0]
    if args.data is not None:
        size = getattr(method0.data_info, "image_size", None) or cfg0["data"].get("image_size")
        dataset = load_data(args.data, image_size=size, subset=max(args.n, 64), test_subset=max(args.n, 64))
    split = dataset.test if len(dataset.test.images) else dataset.train
    images = _pick(split.images, args.n, args.seed)
    entries = [(_label(r, cfg), method) for r, (method, cfg, _) in zip(runs, loaded)]
    if args.untrained:
        entries.append((f"untrained\n({cfg0['method']['name']}, seed {cfg0['train']['seed']})", _untrained(args.run)))
    title = "last-stage activations: channel mean, min-max per image, bilinear (jet: blue low, red high)"
    save_png(activation_figure(images, entries, cell=args.cell, title=title), args.output)
    print(f"wrote {args.output}")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "activations", help="heat maps of a run's last-stage activations over test images (compare runs)",
        description=__doc__.split("\n\n")[0] + " Rows: images, then one map row per run.",
    )
    p.add_argument("run", help="run directory (or .ckpt file)")
    p.add_argument("--compare", nargs="+", metavar="RUN", help="more runs, one map row each (same images)")
    p.add_argument("--untrained", action="store_true", help="add the first run's untrained encoder as a row")
    p.add_argument("--data", help="images from this data (dataset name or folder) instead of the run's test split")
    p.add_argument("--n", type=int, default=8, help="number of images (columns), default 8")
    p.add_argument("--seed", type=int, default=0, help="seed for the image choice (default 0)")
    p.add_argument("--cell", type=int, default=96, help="display size of each image in px (default 96)")
    p.add_argument("-o", "--output", default="activations.png", help="PNG to write (default activations.png)")
    p.set_defaults(func=run)
