"""The README's configuration table covers every setting."""

from __future__ import annotations

from pathlib import Path

from config import documented_variables

README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_variable_is_in_the_configuration_table():
    text = README.read_text(encoding="utf-8")
    missing = [var for var, _, _ in documented_variables() if f"| `{var}` |" not in text]
    assert not missing, f"README.md's configuration table lacks {missing}"
