"""The command-line parser class every ``unveil`` command is built with."""

from __future__ import annotations

import argparse
from typing import NoReturn


class OneLineParser(argparse.ArgumentParser):
    """argparse whose refusals (a wrong choice, a missing or unknown option) are one line, like every other
    user error: what is wrong and where the help is, not the usage block above it. Subparsers inherit it."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
