"""vLLM's realtime transcription WebSocket (GET /v1/realtime), minimal but
with its event shapes: session.created on connect; session.update names the
model; input_audio_buffer.append carries base64 PCM16; the first
input_audio_buffer.commit starts transcribing (transcription.delta as audio
comes), a commit with "final": true ends it (transcription.done with usage).
Errors are {"type": "error", "error": <text>, "code": <code>} events."""

from __future__ import annotations

import base64
import binascii
import json
import time
import uuid
from collections.abc import Callable

from aiohttp import WSMsgType, web

from fakevllm import protocol as p

SAMPLES_PER_WORD = 1600  # 0.1 s of 16 kHz audio becomes one word


class Session:
    def __init__(self, ws: web.WebSocketResponse, serves: Callable[[str], bool]) -> None:
        self.ws = ws
        self.serves = serves
        self.validated = False
        self.generating = False
        self.pending = 0  # samples not transcribed yet
        self.words: list[str] = []
        self.audio_samples = 0

    async def send(self, event: dict) -> None:
        await self.ws.send_str(json.dumps(event, separators=(",", ":")))

    async def error(self, message: str, code: str) -> None:
        await self.send({"type": "error", "error": message, "code": code})

    async def handle(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "session.update":
            model = event.get("model")
            if not isinstance(model, str) or not self.serves(model):
                await self.error(f"The model `{model}` does not exist.", "model_not_found")
                return
            self.validated = True
        elif kind == "input_audio_buffer.append":
            try:
                audio = base64.b64decode(event.get("audio") or "", validate=True)
            except (binascii.Error, ValueError, TypeError):
                audio = b""
            if len(audio) < 2:
                await self.error("Invalid audio data", "invalid_audio")
                return
            self.pending += len(audio) // 2
            self.audio_samples += len(audio) // 2
            if self.generating:
                await self._transcribe()
        elif kind == "input_audio_buffer.commit":
            if not self.validated:
                await self.error("Model not validated. Make sure to validate the model by sending a "
                                 "session.update event.", "model_not_validated")
            elif event.get("final"):
                await self._transcribe(final=True)
                await self._done()
            elif not self.generating:
                self.generating = True
                await self._transcribe()
        else:
            await self.error(f"Unknown event type: {kind}", "unknown_event")

    async def _transcribe(self, final: bool = False) -> None:
        count = self.pending // SAMPLES_PER_WORD
        if final and self.pending and not count:
            count = 1
        for _ in range(count):
            word = p.FILLER[len(self.words) % len(p.FILLER)]
            delta = word if not self.words else " " + word
            self.words.append(word)
            await self.send({"type": "transcription.delta", "delta": delta})
        self.pending = 0 if final else self.pending - count * SAMPLES_PER_WORD

    async def _done(self) -> None:
        prompt = max(1, self.audio_samples // SAMPLES_PER_WORD)
        usage = {"prompt_tokens": prompt, "total_tokens": prompt + len(self.words),
                 "completion_tokens": len(self.words), "prompt_tokens_details": None}
        await self.send({"type": "transcription.done", "text": " ".join(self.words), "usage": usage})
        self.generating, self.words, self.pending, self.audio_samples = False, [], 0, 0


async def serve(request: web.Request, serves: Callable[[str], bool]) -> web.StreamResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    session = Session(ws, serves)
    await session.send({"type": "session.created", "id": f"sess-{uuid.uuid4().hex}", "created": int(time.time())})
    async for message in ws:
        if message.type != WSMsgType.TEXT:
            continue
        try:
            event = json.loads(message.data)
        except ValueError:
            await session.error("Invalid JSON", "invalid_json")
            continue
        if isinstance(event, dict):
            await session.handle(event)
        else:
            await session.error("Invalid JSON", "invalid_json")
    return ws
