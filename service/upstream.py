"""The HTTP client nvllm talks to nodes with: urllib3's pools, with a request's
line, headers and body sent in one write.

urllib3 (through http.client) writes the headers, then the body: two system
calls per request and, on loopback or a fast network, two wake-ups of the
node's server, which reads the headers before the body has come. Joined, the
node sees the whole request at once."""

from __future__ import annotations

from typing import Any

import urllib3
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool

# Above this a body goes in its own write, as urllib3 sends it: copying a
# large upload into the header buffer would cost more than the system call.
ONE_WRITE_MAX_BODY = 256 * 1024


class OneWriteConnection(HTTPConnection):
    """urllib3's connection, sending a bytes body of a known length together
    with the headers. Everything else (chunked bodies, files, large bodies)
    goes as urllib3 sends it."""

    _joined: bytes | None = None  # the body to send with the headers
    _sent_body: bytes | None = None  # sent already: urllib3's own send of it is skipped

    def request(self, method: str, url: str, body: Any = None, headers: Any = None, **kwargs: Any) -> None:
        framed = headers is not None and any(k.lower() == "transfer-encoding" for k in headers)
        if isinstance(body, bytes) and body and len(body) <= ONE_WRITE_MAX_BODY and not framed \
                and not kwargs.get("chunked"):
            self._joined = body
        try:
            super().request(method, url, body=body, headers=headers, **kwargs)
        finally:
            self._joined = self._sent_body = None

    def _send_output(self, message_body: Any = None, encode_chunked: bool = False) -> None:
        body = self._joined
        if body is None or message_body is not None or encode_chunked:
            super()._send_output(message_body, encode_chunked=encode_chunked)
            return
        # What http.client's _send_output writes for the headers, the body appended.
        self._buffer.extend((b"", b""))
        head = b"\r\n".join(self._buffer)
        del self._buffer[:]
        self._joined, self._sent_body = None, body
        self.send(head + body)

    def send(self, data: Any) -> None:
        if data is self._sent_body and data is not None:
            self._sent_body = None  # urllib3 sending the body after the headers: it went with them
            return
        super().send(data)


class OneWritePool(HTTPConnectionPool):
    ConnectionCls = OneWriteConnection


def pool_manager(**kwargs: Any) -> urllib3.PoolManager:
    """A PoolManager whose plain-HTTP pools send each request in one write
    (HTTPS pools are urllib3's own)."""
    manager = urllib3.PoolManager(**kwargs)
    manager.pool_classes_by_scheme = {**manager.pool_classes_by_scheme, "http": OneWritePool}
    return manager
