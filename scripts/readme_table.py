"""Rewrite README.md's methods table from the registry (tests/test_readme.py checks it is current)."""

from __future__ import annotations

import re
from pathlib import Path

from unveil.methods import methods_table

readme = Path(__file__).resolve().parents[1] / "README.md"
text = readme.read_text()
new, count = re.subn(r"\| method \| what it does \|.*?\n(?=\n)", lambda _m: methods_table() + "\n", text, flags=re.S)
assert count == 1, "README.md has no methods table to replace"
readme.write_text(new)
print("README.md methods table updated")
