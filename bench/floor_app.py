"""The least a Python proxy on nvllm's stack can cost, for bench/floor.py:
gunicorn + gevent + Flask answering at once (FLOOR_MODE=hello), or relaying
each request to one backend with urllib3 (FLOOR_MODE=proxy), with nothing else
(no auth, routing, logging or metrics)."""

from __future__ import annotations

import os

import urllib3
from flask import Flask, Response, request

app = Flask(__name__)
http = urllib3.PoolManager(maxsize=1024)
UPSTREAM = os.environ.get("FLOOR_UPSTREAM", "")
MODE = os.environ.get("FLOOR_MODE", "proxy")
HOP = {"transfer-encoding", "connection", "content-length", "keep-alive"}


@app.post("/v1/chat/completions")
def chat() -> Response:
    body = request.get_data()
    if MODE == "hello":
        return Response(b'{"choices":[]}', content_type="application/json")
    answer = http.urlopen("POST", UPSTREAM + "/v1/chat/completions", body=body,
                          headers={"Content-Type": "application/json"}, preload_content=False, retries=False)

    def relay():
        while chunk := answer.read1(65536):
            yield chunk
        answer.release_conn()

    return Response(relay(), status=answer.status,
                    headers=[(k, v) for k, v in answer.headers.items() if k.lower() not in HOP])
