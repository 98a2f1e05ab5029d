"""vLLM's routes beyond chat, completions and embeddings, in vLLM's shapes: audio
transcriptions and translations (multipart uploads), the Responses API with a
per-process store (off unless enabled, as VLLM_ENABLE_RESPONSES_API_STORE),
tokenize/detokenize, rerank, score, pooling, classify, Cohere's /v2/embed,
Anthropic's /v1/messages and SageMaker's /invocations."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
import zlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from aiohttp import http_exceptions, web

from fakevllm import protocol as p
from fakevllm.engine import Seq, tokenize

if TYPE_CHECKING:
    from fakevllm.server import FakeServer

SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
AUDIO_BYTES_PER_SECOND = 32000  # 16 kHz, 16-bit mono: what vLLM resamples uploads to
WORDS_PER_SECOND = 2
# The paths these handlers serve that run the engine (counted as inference requests).
INFERENCE_PATHS = frozenset({
    "/v1/audio/transcriptions", "/v1/audio/translations", "/v1/responses", "/v1/messages",
    "/rerank", "/v1/rerank", "/v2/rerank", "/v2/embed", "/score", "/v1/score", "/pooling", "/classify",
    "/invocations",
})


def store_enabled_by_env() -> bool:
    return os.environ.get("VLLM_ENABLE_RESPONSES_API_STORE", "0") in ("1", "true", "True")


def _event(kind: str, data: dict[str, Any]) -> bytes:
    """A server-sent event with its type named, as vLLM's Responses and Anthropic streams send them."""
    return f"event: {kind}\n".encode() + p.sse(data)


def _token_id(token: Any) -> int:
    return token if isinstance(token, int) else zlib.crc32(str(token).encode()) % 50_000


def _similarity(a: str, b: str) -> float:
    """A deterministic relevance in (0, 1): shared words, then a hash for ties."""
    words_a, words_b = set(tokenize(a.lower())[1:]), set(tokenize(b.lower())[1:])
    overlap = len(words_a & words_b) / (len(words_a | words_b) or 1)
    return round(0.05 + 0.9 * overlap + (zlib.crc32((a + "\0" + b).encode()) % 1000) / 20_000, 6)


class Apis:
    """The handlers; each runs on the server's event loop."""

    def __init__(self, server: FakeServer, responses_store: bool | None = None) -> None:
        self.server = server
        self.store_enabled = store_enabled_by_env() if responses_store is None else responses_store
        self.uploads: list[tuple[int, int]] = []  # (bytes, crc32) of each audio file received
        self.reset()

    def reset(self) -> None:
        """Forget every stored response, as a restarted vLLM process starts empty."""
        # As vLLM's: in this process's memory, never evicted.
        self.responses: dict[str, dict[str, Any]] = {}
        self.messages: dict[str, list[dict[str, Any]]] = {}
        self.input_items: dict[str, list[dict[str, Any]]] = {}
        self.background: dict[str, asyncio.Task[None]] = {}

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/audio/transcriptions", self._transcriptions),
            web.post("/v1/audio/translations", self._translations),
            web.post("/v1/responses", self._create_response),
            web.get("/v1/responses/{response_id}", self._retrieve_response),
            web.post("/v1/responses/{response_id}/cancel", self._cancel_response),
            web.get("/v1/responses/{response_id}/input_items", self._input_items),
            web.post("/v1/messages", self._messages),
            web.post("/v1/messages/count_tokens", self._count_tokens),
            web.post("/tokenize", self._tokenize),
            web.post("/detokenize", self._detokenize),
            *(web.post(path, self._rerank) for path in ("/rerank", "/v1/rerank", "/v2/rerank")),
            web.post("/v2/embed", self._cohere_embed),
            *(web.post(path, self._score) for path in ("/score", "/v1/score")),
            web.post("/pooling", self._pooling),
            web.post("/classify", self._classify),
            web.post("/invocations", self._invocations),
        ]

    # -- engine plumbing ------------------------------------------------------------

    async def _run(self, prompt: list[Any], n_out: int, salt: Any = None) -> Seq:
        """Run one sequence to its end."""
        seqs, wake = self.server._new_seqs([prompt], n_out, salt)
        with self.server._track(seqs):
            await self.server._until_done(seqs, wake)
        return seqs[0]

    async def _tokens(self, prompt: list[Any], n_out: int, salt: Any = None) -> AsyncIterator[tuple[Seq, int]]:
        """(sequence, index of each new token) as the engine makes them."""
        seqs, wake = self.server._new_seqs([prompt], n_out, salt)
        seq = seqs[0]
        with self.server._track(seqs):
            sent = 0
            while True:
                for k in range(sent, seq.generated):
                    yield seq, k
                sent = seq.generated
                if seq.done:
                    break
                wake.clear()
                await wake.wait()
            if seq.aborted:
                raise ConnectionResetError("engine stopped mid-stream")

    async def _sse(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers=SSE_HEADERS)
        await resp.prepare(request)  # vLLM sends the headers before the first token
        return resp

    # -- audio ------------------------------------------------------------------------

    async def _transcriptions(self, request: web.Request) -> web.StreamResponse:
        return await self._audio(request, "transcription", "trsc-")

    async def _translations(self, request: web.Request) -> web.StreamResponse:
        return await self._audio(request, "translation", "trsl-")

    async def _audio(self, request: web.Request, kind: str, prefix: str) -> web.StreamResponse:
        if not request.content_type.startswith("multipart/form-data"):
            raise p.BadRequest("Expected a multipart/form-data body with an audio `file`.")
        try:
            form = await request.post()
        except (ValueError, http_exceptions.HttpProcessingError):
            raise p.BadRequest("The multipart/form-data body could not be parsed.") from None
        upload = form.get("file")
        if not isinstance(upload, web.FileField):
            raise p.BadRequest("Field `file` is required and must be a file.")
        audio = upload.file.read()
        self.uploads.append((len(audio), zlib.crc32(audio)))
        model = str(form.get("model") or self.server.models[0])
        if model not in self.server.models:
            raise _not_found_model(model)
        seconds = max(1, len(audio) // AUDIO_BYTES_PER_SECOND)
        n_out = max(1, seconds * WORDS_PER_SECOND)
        prompt = [zlib.crc32(audio)] * min(1500, 50 * seconds)  # the encoder's frames
        rid = prefix + uuid.uuid4().hex
        if str(form.get("stream", "false")).lower() == "true":
            resp = await self._sse(request)
            created = int(time.time())
            async for _seq, k in self._tokens(prompt, n_out):
                chunk = {"id": rid, "object": f"{kind}.chunk", "created": created, "model": model,
                         "choices": [{"delta": {"content": p.token_text(k, k == 0)},
                                      "finish_reason": "stop" if k + 1 == n_out else None, "stop_reason": None}]}
                await resp.write(p.sse(chunk))
            await resp.write(p.SSE_DONE)
            await resp.write_eof()
            self.server.counters.completed += 1
            return resp
        await self._run(prompt, n_out)
        text = p.filler_text(n_out, True)
        self.server.counters.completed += 1
        fmt = str(form.get("response_format", "json"))
        if fmt == "text":
            return web.Response(text=text, content_type="text/plain")
        body: dict[str, Any] = {"text": text, "usage": {"type": "duration", "seconds": seconds}}
        if fmt == "verbose_json":
            body.update(language=str(form.get("language") or "en"), duration=float(seconds), segments=[])
        return self.server._json(body)

    # -- Responses API ----------------------------------------------------------------

    async def _create_response(self, request: web.Request) -> web.StreamResponse:
        body, model = await self.server._body(request)
        store = body.get("store", True) is not False
        background = body.get("background") is True
        if store and background and not self.store_enabled:
            raise p.BadRequest(
                "This vLLM engine does not support `store=True` and therefore does not support the background "
                "mode. To enable these features, set the environment variable `VLLM_ENABLE_RESPONSES_API_STORE=1` "
                "when launching the vLLM server.")
        store = store and self.store_enabled
        previous = body.get("previous_response_id")
        history: list[dict[str, Any]] = []
        if previous is not None:
            if previous not in self.responses:
                raise _response_not_found(previous)
            history = self.messages.get(previous, [])
        items = _input_items(body.get("input"))
        turn = [{"role": i["role"], "content": " ".join(c["text"] for c in i["content"])} for i in items]
        instructions = body.get("instructions")
        system = [{"role": "system", "content": instructions}] if isinstance(instructions, str) else []
        prompt = p.render_chat(system + history + turn)
        n_out = body.get("max_output_tokens") or self.server.default_max_tokens
        if not isinstance(n_out, int) or isinstance(n_out, bool) or n_out < 1:
            raise p.BadRequest("max_output_tokens must be at least 1.")
        response = _response_object(body, model, "resp_" + uuid.uuid4().hex, "in_progress")
        text = p.filler_text(n_out, True)

        def finish(seq: Seq) -> None:
            response["status"] = "completed"
            response["output"] = [_output_message(text)]
            response["usage"] = _response_usage(seq.prompt_len, n_out, seq.cached_tokens)
            if store:
                self.messages[response["id"]] = history + turn + [{"role": "assistant", "content": text}]

        if store:
            self.responses[response["id"]] = response
            self.input_items[response["id"]] = items
        if background:
            if body.get("stream"):
                raise p.BadRequest("background streaming is not simulated by the fake server")
            response["status"] = "queued"
            self.background[response["id"]] = asyncio.get_running_loop().create_task(
                self._background(response, prompt, n_out, finish))
            return self.server._json(response)
        if body.get("stream"):
            return await self._stream_response(request, response, prompt, n_out, text, finish)
        seq = await self._run(prompt, n_out)
        finish(seq)
        self.server.counters.completed += 1
        return self.server._json(response)

    async def _background(self, response: dict[str, Any], prompt: list[Any], n_out: int, finish: Any) -> None:
        try:
            response["status"] = "in_progress"
            finish(await self._run(prompt, n_out))
        except asyncio.CancelledError:
            response["status"] = "cancelled"
        except Exception:  # a failed background run shows as "failed", as in vLLM
            response["status"] = "failed"
        finally:
            self.background.pop(response["id"], None)

    async def _stream_response(self, request: web.Request, response: dict[str, Any], prompt: list[Any],
                               n_out: int, text: str, finish: Any) -> web.StreamResponse:
        number = 0

        def event(kind: str, **fields: Any) -> bytes:
            nonlocal number
            number += 1
            return _event(kind, {"type": kind, "sequence_number": number - 1, **fields})

        resp = await self._sse(request)
        message = _output_message("")
        message["status"] = "in_progress"
        item_id = message["id"]
        await resp.write(event("response.created", response=dict(response))
                         + event("response.in_progress", response=dict(response))
                         + event("response.output_item.added", output_index=0, item=message)
                         + event("response.content_part.added", output_index=0, item_id=item_id, content_index=0,
                                 part={"type": "output_text", "text": "", "annotations": [], "logprobs": []}))
        last = None
        async for seq, k in self._tokens(prompt, n_out):
            last = seq
            await resp.write(event("response.output_text.delta", output_index=0, item_id=item_id,
                                   content_index=0, delta=p.token_text(k, True), logprobs=[]))
        assert last is not None
        finish(last)
        done = _output_message(text, item_id)
        await resp.write(event("response.output_text.done", output_index=0, item_id=item_id, content_index=0,
                               text=text, logprobs=[])
                         + event("response.content_part.done", output_index=0, item_id=item_id, content_index=0,
                                 part=done["content"][0])
                         + event("response.output_item.done", output_index=0, item=done)
                         + event("response.completed", response=response))
        await resp.write_eof()
        self.server.counters.completed += 1
        return resp

    def _stored(self, request: web.Request) -> dict[str, Any]:
        response_id = request.match_info["response_id"]
        response = self.responses.get(response_id)
        if response is None:
            raise _response_not_found(response_id)
        return response

    async def _retrieve_response(self, request: web.Request) -> web.StreamResponse:
        return self.server._json(self._stored(request))

    async def _cancel_response(self, request: web.Request) -> web.StreamResponse:
        response = self._stored(request)
        if response["status"] not in ("queued", "in_progress"):
            raise p.BadRequest("Cannot cancel a synchronous response.")
        response["status"] = "cancelled"
        task = self.background.get(response["id"])
        if task is not None:
            task.cancel()
        return self.server._json(response)

    async def _input_items(self, request: web.Request) -> web.StreamResponse:
        items = self.input_items.get(self._stored(request)["id"], [])
        return self.server._json({"object": "list", "data": items, "has_more": False,
                                  "first_id": items[0]["id"] if items else None,
                                  "last_id": items[-1]["id"] if items else None})

    # -- Anthropic Messages API ---------------------------------------------------------

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body, model = await self.server._body(request)
        prompt = _anthropic_prompt(body)
        n_out = body.get("max_tokens")
        if not isinstance(n_out, int) or isinstance(n_out, bool) or n_out < 1:
            raise p.BadRequest("max_tokens: Field required and must be at least 1.")
        mid = "msg_" + uuid.uuid4().hex
        if body.get("stream"):
            resp = await self._sse(request)
            start = {"id": mid, "type": "message", "role": "assistant", "model": model, "content": [],
                     "stop_reason": None, "stop_sequence": None,
                     "usage": {"input_tokens": len(prompt), "output_tokens": 0}}
            await resp.write(_event("message_start", {"type": "message_start", "message": start})
                             + _event("content_block_start", {"type": "content_block_start", "index": 0,
                                                              "content_block": {"type": "text", "text": ""}}))
            async for _seq, k in self._tokens(prompt, n_out):
                await resp.write(_event("content_block_delta", {
                    "type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": p.token_text(k, True)}}))
            await resp.write(_event("content_block_stop", {"type": "content_block_stop", "index": 0})
                             + _event("message_delta", {"type": "message_delta",
                                                        "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
                                                        "usage": {"output_tokens": n_out}})
                             + _event("message_stop", {"type": "message_stop"}))
            await resp.write_eof()
            self.server.counters.completed += 1
            return resp
        seq = await self._run(prompt, n_out)
        self.server.counters.completed += 1
        return self.server._json({
            "id": mid, "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": p.filler_text(n_out, True)}],
            "stop_reason": "max_tokens", "stop_sequence": None,
            "usage": {"input_tokens": seq.prompt_len, "output_tokens": n_out}})

    async def _count_tokens(self, request: web.Request) -> web.StreamResponse:
        body, _model = await self.server._body(request)
        return self.server._json({"input_tokens": len(_anthropic_prompt(body))})

    # -- tokenizer, pooling and scoring ---------------------------------------------------

    async def _tokenize(self, request: web.Request) -> web.StreamResponse:
        body, _model = await self.server._body(request)
        if "messages" in body:
            tokens = p.render_chat(body.get("messages"))
        else:
            tokens = p.prompt_list(body.get("prompt"))[0]
        return self.server._json({"count": len(tokens), "max_model_len": self.server.max_model_len,
                                  "tokens": [_token_id(t) for t in tokens], "token_strs": None})

    async def _detokenize(self, request: web.Request) -> web.StreamResponse:
        body, _model = await self.server._body(request)
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
            raise p.BadRequest("'tokens' must be a list of token ids")
        return self.server._json({"prompt": "".join(p.token_text(t, i == 0) for i, t in enumerate(tokens))})

    async def _rerank(self, request: web.Request) -> web.StreamResponse:
        body, model = await self.server._body(request)
        query, documents = body.get("query"), body.get("documents")
        if not isinstance(query, str) or not isinstance(documents, list) or not documents:
            raise p.BadRequest("'query' must be a string and 'documents' a non-empty list")
        texts = [d if isinstance(d, str) else str((d or {}).get("text", "")) for d in documents]
        prompts = [tokenize(query + " " + t) for t in texts]
        for prompt in prompts:
            await self._run(prompt, 0)
        results = sorted(({"index": i, "document": {"text": t}, "relevance_score": _similarity(query, t)}
                          for i, t in enumerate(texts)), key=lambda r: -r["relevance_score"])
        top_n = body.get("top_n")
        if isinstance(top_n, int) and top_n > 0:
            results = results[:top_n]
        self.server.counters.completed += 1
        return self.server._json({"id": "rerank-" + uuid.uuid4().hex, "model": model,
                                  "usage": {"total_tokens": sum(map(len, prompts))}, "results": results})

    async def _score(self, request: web.Request) -> web.StreamResponse:
        body, model = await self.server._body(request)
        left = body.get("text_1", body.get("queries"))
        right = body.get("text_2", body.get("documents"))
        lefts = [left] if isinstance(left, str) else left
        rights = [right] if isinstance(right, str) else right
        if not (isinstance(lefts, list) and isinstance(rights, list) and lefts and rights
                and all(isinstance(t, str) for t in lefts + rights)):
            raise p.BadRequest("'text_1' and 'text_2' must be strings or lists of strings")
        if len(lefts) == 1:
            lefts = lefts * len(rights)
        if len(lefts) != len(rights):
            raise p.BadRequest("'text_1' must have one item, or as many as 'text_2'")
        prompts = [tokenize(a + " " + b) for a, b in zip(lefts, rights, strict=True)]
        for prompt in prompts:
            await self._run(prompt, 0)
        data = [{"index": i, "object": "score", "score": _similarity(a, b)}
                for i, (a, b) in enumerate(zip(lefts, rights, strict=True))]
        self.server.counters.completed += 1
        return self.server._json({"id": "score-" + uuid.uuid4().hex, "object": "list", "created": int(time.time()),
                                  "model": model, "data": data, "usage": p.usage(sum(map(len, prompts)), 0)})

    async def _pooled(self, request: web.Request) -> tuple[dict[str, Any], str, list[list[Any]]]:
        body, model = await self.server._body(request)
        prompts = p.prompt_list(body.get("input"), "input")
        for prompt in prompts:
            await self._run(prompt, 0)
        self.server.counters.completed += 1
        return body, model, prompts

    async def _pooling(self, request: web.Request) -> web.StreamResponse:
        _body, model, prompts = await self._pooled(request)
        data = [{"index": i, "object": "pooling", "data": p.embedding(t, self.server.embedding_dim)}
                for i, t in enumerate(prompts)]
        return self.server._json({"id": "pool-" + uuid.uuid4().hex, "object": "list", "created": int(time.time()),
                                  "model": model, "data": data, "usage": p.usage(sum(map(len, prompts)), 0)})

    async def _classify(self, request: web.Request) -> web.StreamResponse:
        _body, model, prompts = await self._pooled(request)
        data = []
        for i, tokens in enumerate(prompts):
            first = (zlib.crc32(repr(tokens).encode()) % 1000) / 1000
            probs = [round(first, 3), round(1 - first, 3)]
            data.append({"index": i, "label": "LABEL_0" if probs[0] >= probs[1] else "LABEL_1", "probs": probs,
                         "num_classes": 2})
        return self.server._json({"id": "classify-" + uuid.uuid4().hex, "object": "list",
                                  "created": int(time.time()), "model": model, "data": data,
                                  "usage": p.usage(sum(map(len, prompts)), 0)})

    async def _cohere_embed(self, request: web.Request) -> web.StreamResponse:
        body, _model = await self.server._body(request)
        texts = body.get("texts")
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise p.BadRequest("'texts' must be a non-empty list of strings")
        prompts = [tokenize(t) for t in texts]
        for prompt in prompts:
            await self._run(prompt, 0)
        self.server.counters.completed += 1
        return self.server._json({
            "id": "embd-" + uuid.uuid4().hex, "response_type": "embeddings_by_type",
            "embeddings": {"float": [p.embedding(t, self.server.embedding_dim) for t in prompts]}, "texts": texts,
            "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": sum(map(len, prompts))}}})

    async def _invocations(self, request: web.Request) -> web.StreamResponse:
        """SageMaker's entry point: the body's shape says which API it is."""
        body, _model = await self.server._body(request)
        if "messages" in body:
            return await self.server._chat(request)
        if "prompt" in body:
            return await self.server._completions(request)
        if "input" in body:
            return await self.server._embeddings(request)
        raise p.BadRequest("Cannot tell which API this /invocations body is for.")


def _not_found_model(model: str) -> Exception:
    from fakevllm.server import ApiError

    return ApiError(404, "NotFoundError", f"The model `{model}` does not exist.", param="model")


def _response_not_found(response_id: Any) -> Exception:
    from fakevllm.server import ApiError

    return ApiError(404, "invalid_request_error", f"Response with id '{response_id}' not found.")


def _input_items(value: Any) -> list[dict[str, Any]]:
    """A Responses API `input` as the stored input items vLLM lists."""
    if isinstance(value, str):
        value = [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise p.BadRequest("'input' must be a string or a non-empty list of input items")
    items = []
    for item in value:
        if not isinstance(item, dict):
            raise p.BadRequest("each input item must be an object")
        content = item.get("content")
        if isinstance(content, str):
            parts = [{"type": "input_text", "text": content}]
        elif isinstance(content, list):
            parts = [{"type": "input_text", "text": str(c.get("text", ""))} for c in content if isinstance(c, dict)]
        else:
            raise p.BadRequest("each input item needs a 'content'")
        items.append({"type": "message", "id": "msg_" + uuid.uuid4().hex, "role": item.get("role", "user"),
                      "status": "completed", "content": parts})
    return items


def _output_message(text: str, item_id: str | None = None) -> dict[str, Any]:
    return {"type": "message", "id": item_id or "msg_" + uuid.uuid4().hex, "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": None}]}


def _response_usage(prompt_tokens: int, output_tokens: int, cached: int) -> dict[str, Any]:
    return {"input_tokens": prompt_tokens, "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt_tokens + output_tokens}


def _response_object(body: dict[str, Any], model: str, response_id: str, status: str) -> dict[str, Any]:
    return {
        "id": response_id, "object": "response", "created_at": int(time.time()), "model": model,
        "status": status, "output": [], "usage": None, "error": None, "incomplete_details": None,
        "instructions": body.get("instructions"), "metadata": body.get("metadata"),
        "previous_response_id": body.get("previous_response_id"),
        "max_output_tokens": body.get("max_output_tokens"), "background": body.get("background") is True,
        "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "temperature": 1.0, "top_p": 1.0,
        "text": {"format": {"type": "text"}}, "truncation": "disabled", "reasoning": None,
        "service_tier": "auto", "user": body.get("user"),
    }


def _anthropic_prompt(body: dict[str, Any]) -> list[Any]:
    messages = body.get("messages")
    system = body.get("system")
    if isinstance(system, list):
        system = " ".join(b.get("text", "") for b in system if isinstance(b, dict))
    head = [{"role": "system", "content": system}] if isinstance(system, str) and system else []
    return p.render_chat(head + messages if isinstance(messages, list) else messages)
