"""server/http.py builds no app of its own: main.py passes the factory in, so
the two modules do not import each other."""

from __future__ import annotations

import ast
from pathlib import Path

from config import Settings
from server import http

ROOT = Path(__file__).resolve().parents[2]


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_the_server_never_imports_main():
    assert "main" not in imported_modules(ROOT / "server" / "http.py")


def test_the_server_builds_each_worker_app_with_the_factory_it_is_given():
    built = []
    server = http.NvllmServer(Settings(), app_factory=lambda s: built.append(s) or "the app")
    assert server.load() == "the app" and built == [server.settings]

