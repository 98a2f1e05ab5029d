"""How many tokens a node's answer carried, counted as it passes through."""

from __future__ import annotations

import re

USAGE_KEY = b'"completion_tokens"'
USAGE = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')
# A usage object split across two chunks is still found: the end of the last
# chunk is kept, long enough for the key and a number.
TAIL = 64


class AnswerMeter:
    """The output tokens of one answer: the node's own count (its `usage`) when
    the answer carries one, which a whole answer always does and a stream does
    when the client asked for stream_options.include_usage; else, for a
    stream, one token per event, as vLLM sends them, less the chat role event
    and the closing [DONE]."""

    def __init__(self) -> None:
        self._tail = b""
        self._counted: int | None = None
        self._done = False
        self._role = False

    def feed(self, chunk: bytes) -> None:
        data = self._tail + chunk
        if USAGE_KEY in data:
            matches = USAGE.findall(data)
            if matches:
                self._counted = int(matches[-1])  # continuous usage: the last count is the total
        if not self._role and b'"role"' in data:
            self._role = True
        if b"data: [DONE]" in data:
            self._done = True
        self._tail = data[-TAIL:]

    def output_tokens(self, events: int | None) -> int:
        """`events`: the stream's data events, None for a whole answer."""
        if self._counted is not None:
            return self._counted
        if events is None:
            return 0
        return max(0, events - self._role - self._done)
