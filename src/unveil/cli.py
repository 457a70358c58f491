"""The ``unveil`` command: parse, validate, call. No logic of its own.

Each command lives in a module exposing ``register(subparsers)``, which adds its parser and sets
``func(args) -> int``. Errors a user can fix (``UserError``) print as one line, exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import UserError

COMMAND_MODULES = (
    "unveil.commands.pretrain",
    "unveil.commands.evaluate",
    "unveil.commands.export",
    "unveil.commands.demo",
    "unveil.commands.preview",
    "unveil.commands.reconstruct",
    "unveil.commands.bench",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unveil", description="Self-supervised representation learning by corruption."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"unveil: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("unveil: interrupted; completed checkpoints are intact (resume with --resume RUN_DIR)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
