"""An upstream for proxy tests that records what reaches it: each request's
target (path and query) and headers (names lower-cased), answered with a small
chat completion and whatever extra headers a test wants a proxy to meet."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Recorder(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, extra_headers: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.extra_headers = list(extra_headers)
        self.paths: list[str] = []
        self.seen: list[dict[str, str]] = []

    @property
    def port(self) -> int:
        return self.server_address[1]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Recorder

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.paths.append(self.path)
        self.server.seen.append({k.lower(): v for k, v in self.headers.items()})
        body = json.dumps({"object": "chat.completion", "choices": []}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in self.server.extra_headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def serving(server: Recorder) -> Iterator[Recorder]:
    """Serve in a thread for the block; always shut down."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
