"""How many tokens a node's answer carried, counted as it passes through."""

from __future__ import annotations

import re
from collections import deque

USAGE = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')
# A whole answer ends with its usage, and a stream that has one sends it last
# (before [DONE]): only the end of an answer is searched, once it is over.
END_BYTES = 1024
END_CHUNKS = 3  # so a usage cut across a few short reads is still whole


class AnswerMeter:
    """The output tokens of one answer: the node's own count (its `usage`) when
    the answer carries one, which a whole answer always does and a stream does
    when the client asked for stream_options.include_usage; else, for a
    stream, one token per event, as vLLM sends them, less the chat role event
    and the closing [DONE]. Per chunk it only keeps a reference: the relay's
    per-token path stays as cheap as it was."""

    def __init__(self) -> None:
        self._first = b""
        self._last: deque[bytes] = deque(maxlen=END_CHUNKS)

    def feed(self, chunk: bytes) -> None:
        if not self._first:
            self._first = chunk  # a chat stream's role event is its first
        self._last.append(chunk)

    def output_tokens(self, events: int | None) -> int:
        """`events`: the stream's data events, None for a whole answer."""
        end = b"".join(self._last)[-END_BYTES:]
        counted = USAGE.findall(end)
        if counted:
            return int(counted[-1])  # continuous usage: the last count is the total
        if events is None:
            return 0
        role = b'"role"' in self._first.split(b"\n\n", 1)[0]
        done = b"data: [DONE]" in end
        return max(0, events - role - done)
