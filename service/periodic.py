"""Background work that runs every few seconds for an object that may be
dropped: the token checks' refresher, the aliases' refresher, the request
statistics' flusher."""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any


def start_periodic(owner: Any, method: str, delay: float, stop: threading.Event, *, name: str,
                   log: logging.Logger, what: str) -> threading.Thread:
    """Call `owner.<method>()` every `delay` seconds until `stop` is set. The
    thread holds `owner` only weakly between calls, so an app that is dropped
    (as in tests) takes its thread with it; an exception is logged (as
    "<what> failed") and the next round runs anyway."""
    thread = threading.Thread(target=_loop, args=(weakref.ref(owner), method, delay, stop, log, what),
                              name=name, daemon=True)
    thread.start()
    return thread


def _loop(ref: weakref.ReferenceType, method: str, delay: float, stop: threading.Event, log: logging.Logger,
          what: str) -> None:
    while not stop.wait(delay):
        owner = ref()
        if owner is None:
            return
        try:
            getattr(owner, method)()
        except Exception:  # the thread must outlive any one bad round
            log.exception("%s failed", what)
        del owner
