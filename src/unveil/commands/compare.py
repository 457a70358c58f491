"""``unveil compare --data DIR``: which corruption family gives the best encoder for these images on this
budget? Every family's recipe on the same data and budget, scored on one split beside the untrained encoder
and raw pixels; a Markdown report with figures. A killed compare continues with the next unfinished method."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from ..bench.compare import FAMILIES, STEMS

    p = sub.add_parser("compare", help="every method family on one budget on your images: one ranked report",
                       description=__doc__)
    p.add_argument("--data", required=True, help="the images to pretrain on: a folder (class folders or flat), a "
                   "Parquet folder or a registered dataset name")
    p.add_argument("--eval-data", metavar="LABELLED", help="labelled data to score on when --data has no labels")
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--budget", help="pretraining wall-clock per method, e.g. 20m, 90s, 1.5h (the schedule is "
                      "planned to end there)")
    when.add_argument("--epochs", type=int, help="the same number of epochs for every method instead")
    p.add_argument("--methods", help=f"comma-separated subset of: {', '.join(FAMILIES)} (default: all; supervised "
                   "only with labels)")
    p.add_argument("--out", default="runs/compare", help="where the runs and report.md go")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--linear-epochs", type=int, default=30, help="epochs of each linear probe (0: kNN only)")
    p.add_argument("--stem", choices=STEMS, default="auto", help="the ResNet stem of every contender that has one: "
                   "auto (CIFAR stem up to 32 px), cifar, or standard (7x7/2 + max-pool: ~7x fewer FLOPs at 32 px, so "
                   "~7x the steps on a CPU budget)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides for every method, e.g. data.subset=5000")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..bench.compare import run_compare

    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    report = run_compare(args.data, args.out, eval_data=args.eval_data, budget=args.budget, epochs=args.epochs,
                         methods=methods, seed=args.seed, linear_epochs=args.linear_epochs, overrides=args.overrides,
                         stem=args.stem)
    print(f"unveil: compare report at {report}")
    return 0
