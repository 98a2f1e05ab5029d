"""Loads the Lua scripts in dao/scripts/ and registers them with a client."""

from __future__ import annotations

from pathlib import Path

import redis

SCRIPT_DIR = Path(__file__).parent / "scripts"


def register(client: redis.Redis, name: str) -> redis.commands.core.Script:
    """A Script object: EVALSHA, falling back to EVAL when the server lost it."""
    return client.register_script((SCRIPT_DIR / f"{name}.lua").read_text())


def pairs_to_dict(flat: list[str] | None) -> dict[str, str] | None:
    """HGETALL's reply from inside Lua arrives as a flat list."""
    if not flat:
        return None
    return dict(zip(flat[::2], flat[1::2], strict=True))
