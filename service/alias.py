"""Model aliases: editing them, and resolving a client's model name on the hot path.

Every instance reads the aliases from Redis, so all agree; each keeps a copy
and checks the revision counter every `refresh` seconds (one small GET),
re-reading the aliases only after a write. Once started, the check runs in the
background, so a request never waits on Redis (a hung one included); before
that (unit tests, the command line) a read checks when its copy is due. While
Redis is down the last copy keeps resolving, and the check backs off.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from dao.alias import AliasStore
from model.alias import Alias, validate_alias
from model.errors import NotFound, StorageUnavailable
from service.periodic import start_periodic
from service.shape import Shaped, with_form_field

log = logging.getLogger("nvllm.alias")

STORAGE_BACKOFF = 5.0  # seconds between checks while Redis is unreachable


class AliasNotFound(NotFound):
    def __init__(self, alias: str) -> None:
        super().__init__(f"alias {alias!r} not found")


class AliasBook:
    """This instance's copy of the aliases."""

    def __init__(self, store: AliasStore, *, refresh: float = 0.5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self._refresh = refresh
        self._clock = clock
        self._aliases: dict[str, Alias] = {}
        self._rev: str | None = None
        self._checked_at = -float("inf")
        self._wait = refresh
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def resolve(self, model: Any) -> str | None:
        """The served model a client's `model` stands for; None when it is no
        alias (or not a string). An alias wins over a served model of the
        same name, so an old name can be pointed at a new model."""
        if not isinstance(model, str):
            return None
        alias = self.aliases().get(model)
        return alias.model if alias else None

    def aliases(self) -> dict[str, Alias]:
        if self._thread is None:
            self._maybe_refresh()
        return self._aliases

    def invalidate(self) -> None:
        """After a write here (on the admin's request, which may wait): the
        copy is read again now."""
        self._checked_at = -float("inf")
        self._maybe_refresh()

    def start(self) -> None:
        """Check in the background from now on (idempotent)."""
        if self._thread is not None:
            return
        self._thread = start_periodic(self, "_maybe_refresh", self._refresh, self._stop,
                                      name="nvllm-aliases", log=log, what="alias refresh")

    def close(self) -> None:
        self._stop.set()

    def _maybe_refresh(self) -> None:
        now = self._clock()
        if now - self._checked_at < self._wait:
            return
        # One request refreshes; the others meanwhile use the copy they have.
        if not self._lock.acquire(blocking=False):
            return
        try:
            self._checked_at = now
            if self.store.revision() != self._rev:
                self._rev, self._aliases = self.store.load_all()
        except StorageUnavailable:
            if self._wait != STORAGE_BACKOFF:
                log.warning("storage unavailable: resolving aliases from the last copy")
            self._wait = STORAGE_BACKOFF
            return
        finally:
            self._lock.release()
        self._wait = self._refresh


def set_alias(book: AliasBook, payload: Any) -> Alias:
    """Create or replace one. Raises ValidationError, Conflict (a chain of aliases, the cap)."""
    alias = book.store.save(Alias.from_payload(payload))
    book.invalidate()
    return alias


def delete_alias(book: AliasBook, name: str) -> None:
    """Raises AliasNotFound when there is none."""
    validate_alias(name)
    if not book.store.delete(name):
        raise AliasNotFound(name)
    book.invalidate()


def list_aliases(book: AliasBook) -> list[Alias]:
    """Every alias, sorted by name, read from Redis (not the copy)."""
    return sorted(book.store.load_all()[1].values(), key=lambda a: a.alias)


def with_model(payload: dict[str, Any], model: str) -> bytes:
    """The JSON body again with `model` replaced: the node is asked for the
    model it serves, never for the alias."""
    return json.dumps({**payload, "model": model}, ensure_ascii=False, separators=(",", ":")).encode()


def with_served_model(shaped: Shaped, model: str) -> bytes:
    """The request's body naming `model` instead of the alias its `model` field
    held, so it is a JSON object or a form: the JSON re-encoded, or the form's
    `model` field rewritten in place (every other byte as it came, the file
    part's included)."""
    if shaped.boundary is not None and shaped.body is not None:
        return with_form_field(shaped.body, shaped.boundary, "model", model)
    return with_model(shaped.fields, model)
