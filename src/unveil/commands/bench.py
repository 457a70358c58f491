"""``unveil bench SUITE --scale {smoke,cpu,gpu}``: run a paper's experiment suite, resumably.

``unveil bench --list`` shows the shipped suites; ``--dry-run`` resolves every entry and prints the
plan without training. Rerunning the same command resumes an interrupted suite.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..bench.spec import SCALES, available_suites, load_suite, plan_suite
from ..errors import require
from .parser import OneLineParser


class _Intermixed(OneLineParser):
    """Lets overrides follow options (``unveil bench overlay --scale gpu train.epochs=20``),
    which plain argparse rejects once the positionals were consumed before the options."""

    _inside = False

    def parse_known_args(self, args=None, namespace=None):  # noqa: ANN001, ANN201
        if self._inside:
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench", help="run a paper's experiment suite (pretrain + evaluate every entry, one results table)",
        description="Pretrain and evaluate every entry of a suite, then write results.md / results.csv with our "
                    "numbers beside the paper's. Rerun the same command to resume an interrupted suite.")
    p.add_argument("suite", nargs="?", help="suite name (see --list) or a suite YAML path")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides for every entry (train.lr=0.1); eval.<protocol>.<key>=V for evaluations")
    p.add_argument("--scale", choices=SCALES, help="smoke: minutes, CI; cpu: ~1 h on 2 cores; gpu: ~30 min on one GPU")
    p.add_argument("--out", help="output folder (default runs/bench/<suite>-<scale>)")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these entries")
    p.add_argument("--data-root", help="where registered datasets live (sets data.root for every entry)")
    p.add_argument("--dry-run", action="store_true", help="resolve every entry and print the plan; train nothing")
    p.add_argument("--list", action="store_true", help="list the suites and their entries, then exit")
    p.set_defaults(func=run)
    p.__class__ = _Intermixed  # the subparser is built by the main parser's class; only parsing changes


def _list() -> int:
    for name in available_suites():
        suite = load_suite(name)
        print(f"{name}: {suite.title}")
        for e in suite.entries:
            evals = ", ".join(e.evaluate)
            print(f"  {e.name:<22} {e.recipe:<30} evaluate: {evals}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.list:
        return _list()
    require(args.suite is not None, f"give a suite to run: one of {', '.join(available_suites())} (or --list)")
    require(args.scale is not None, "choose --scale smoke (minutes), cpu (about an hour on 2 cores) or gpu")
    # `--only a b key=value`: argparse hands the overrides to --only; give them back.
    only = [n for n in args.only or [] if "=" not in n] or None
    overrides = [o for o in args.only or [] if "=" in o] + list(args.overrides)
    if args.data_root:
        overrides.append(f"data.root={args.data_root}")
    suite = load_suite(args.suite)
    out = Path(args.out or Path("runs") / "bench" / f"{suite.name}-{args.scale}")
    if args.dry_run:
        for p in plan_suite(suite, args.scale, out, overrides, only):
            t, d = p.cfg["train"], p.cfg["data"]
            print(f"{p.entry.name}: {p.cfg['method']['name']} on {d['name']} (subset {d['subset']}, test {d['test_subset']}), "
                  f"{t['epochs']} epochs x batch {t['batch_size']}, evaluate {p.evals} -> {p.run_dir}"
                  + (f"  [{'; '.join(p.notes)}]" if p.notes else ""))
        return 0
    from ..bench.suite import run_suite

    try:
        run_suite(suite, args.scale, out, overrides, only)
    except KeyboardInterrupt:
        print(f"unveil: bench interrupted; finished runs are kept: rerun the same command to resume ({out})",
              file=sys.stderr)
        return 130
    finally:
        if (out / "results.md").is_file():
            print(f"unveil: results in {out / 'results.md'} (and results.csv, figures/)")
    return 0
