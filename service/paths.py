"""Checking a client's request path before it becomes a node's: one segment
at a time, so nothing a client sends can climb out of the route it came in by."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit

from model.errors import BadRequest

# RFC 3986 path characters, minus percent-encoding: what vLLM's routes use,
# and nothing a node's router or URL parser could read as a separator.
SEGMENT = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@-]+")
# Paths that passed, as (path, raw path): clients send the same few over and
# over. Bounded: cleared when full, so a flood of distinct paths cannot grow it.
_PASSED: dict[tuple[str, str | None], str] = {}
MAX_REMEMBERED = 1024


def checked_path(path: str, raw_uri: str | None = None) -> str:
    """`path` (as the WSGI server decoded it) when every segment is plain.
    `raw_uri` is what the client really sent (RAW_URI / REQUEST_URI), checked
    for percent-escapes, since `%2e%2e` or `%2F` decode into what the segment
    check would otherwise have to guess about. Raises BadRequest naming the
    problem."""
    key = (path, raw_uri.split("?", 1)[0] if raw_uri is not None else None)
    passed = _PASSED.get(key)
    if passed is not None:
        return passed
    if raw_uri is not None:
        raw_path = urlsplit(raw_uri).path if "://" in raw_uri.split("?", 1)[0] else raw_uri.split("?", 1)[0]
        if "%" in raw_path:
            raise BadRequest("path: percent-encoded characters are not allowed")
        # A server may read a leading `//x` as a host and hand the app `/x`.
        if "//" in raw_path:
            raise BadRequest("path: empty segments are not allowed")
    if not path.startswith("/"):
        raise BadRequest("path: must start with /")
    for segment in path[1:].split("/"):
        if segment in (".", ".."):
            raise BadRequest("path: '.' and '..' segments are not allowed")
        if not segment:
            raise BadRequest("path: empty segments are not allowed")
        if not SEGMENT.fullmatch(segment):
            raise BadRequest(f"path: segment {segment[:64]!r} has characters that are not allowed")
    if len(_PASSED) >= MAX_REMEMBERED:
        _PASSED.clear()
    _PASSED[key] = path
    return path


def checked_query(query: str) -> str:
    """The query string re-encoded from its parsed pairs, so it can only ever
    be a query: nothing in it can end it or reach into the path."""
    if not query:
        return ""
    return urlencode(parse_qsl(query, keep_blank_values=True))
