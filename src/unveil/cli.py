"""The ``unveil`` command: parse, validate, call. No logic of its own.

Each command lives in a module exposing ``register(subparsers)``, which adds its parser and sets
``func(args) -> int``. Errors a user can fix (``UserError``) print as one line, exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from .commands.parser import OneLineParser
from .errors import UserError

COMMAND_MODULES = (
    "unveil.commands.pretrain",
    "unveil.commands.evaluate",
    "unveil.commands.export",
    "unveil.commands.demo",
    "unveil.commands.preview",
    "unveil.commands.reconstruct",
    "unveil.commands.activations",
    "unveil.commands.bench",
    "unveil.commands.compare",
)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="unveil", description="Self-supervised representation learning by corruption."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _run(args: argparse.Namespace) -> int:
    """The command; a write that ran out of room anywhere (logs, caches, reports) becomes one line."""
    from .io import is_out_of_space, no_space_message

    try:
        return args.func(args) or 0
    except UserError:
        raise
    except Exception as exc:
        if not is_out_of_space(exc):
            raise
        filename = getattr(exc, "filename", None)
        if filename:
            raise UserError(no_space_message(Path(filename), exc)) from None
        raise UserError(f"no space left while writing ({exc}): free some space, or point --out, data.cache_dir or "
                        "UNVEIL_CACHE to another disk") from None


def main(argv: list[str] | None = None) -> int:
    """Run one command. Under torchrun, an error on any rank ends every rank within seconds."""
    from . import dist

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = int(_run(args))
    except UserError as exc:
        where = f" (rank {dist.rank()})" if dist.is_dist() else ""
        print(f"unveil: error{where}: {exc}", file=sys.stderr, flush=True)
        dist.fail_fast(str(exc), 2)
        return 2
    except KeyboardInterrupt:
        print("unveil: interrupted; completed checkpoints are intact (resume with --resume RUN_DIR)", file=sys.stderr)
        dist.fail_fast("interrupted", 130)
        return 130
    except Exception as exc:
        if not dist.is_dist():
            raise
        import traceback

        traceback.print_exc()
        dist.fail_fast(f"{type(exc).__name__}: {exc}", 1)
        raise
    dist.finish()
    return code


if __name__ == "__main__":
    sys.exit(main())
