"""Where nvllm's CPU goes per proxied request: nvllm's WSGI app in this
process (no gunicorn), a real fake vLLM node and a valkey-server behind it,
N plain chat requests under cProfile, then the cumulative profile.

Runs in the project's environment (it imports nvllm):
    .venv/bin/python bench/profile_app.py [--requests 3000] [--stream]
PROFILE_SORT=tottime sorts by time spent in each function itself;
PROFILE_CALLERS=<regex> also lists the callers of the functions it matches;
PROFILE_LINES=N prints N functions (45).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import Fleet, FleetSpec, Stack, make_logdir, rng_words, start_valkey  # noqa: E402


def profile(node_url: str, redis_url: str, n: int, stream: bool) -> None:
    import random

    from werkzeug.test import EnvironBuilder

    from config import Settings
    from main import create_app

    password = "profile-" + os.urandom(6).hex()
    settings = Settings.from_env({"REDIS_URL": redis_url, "NVLLM_ADMIN_PASSWORD": password}).replace(
        password_hash_n=2**4)
    app = create_app(settings, background=True)
    client = app.test_client()
    token = client.post("/api/user/login", json={"username": "admin", "password": password}).get_json()["data"]["token"]
    auth = {"Authorization": f"Bearer {token}"}
    port = int(node_url.rsplit(":", 1)[1])
    client.post("/api/node/node/register", headers=auth, json={
        "node_id": "node0", "node_address": "127.0.0.1", "node_port": port, "node_status": "online",
        "models": ["fake-model"], "timeout": 3600})
    time.sleep(1.0)  # one fleet refresh
    body = json.dumps({"model": "fake-model", "max_tokens": 16, "stream": stream,
                       "messages": [{"role": "user", "content": rng_words(random.Random(1), 32)}]}).encode()
    headers = {**auth, "Content-Type": "application/json"}

    def call() -> None:
        environ = EnvironBuilder(path="/v1/chat/completions", method="POST", data=body, headers=headers).get_environ()
        status = []
        answer = app(environ, lambda s, h, e=None: status.append(s))
        for _ in answer:
            pass
        answer.close()
        assert status[0].startswith("200"), status

    for _ in range(200):
        call()
    started = time.process_time()
    for _ in range(n):
        call()
    plain = (time.process_time() - started) / n * 1000
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(n):
        call()
    profiler.disable()
    print(f"{n} requests; CPU per request without the profiler: {plain:.3f} ms (client side of the test included)")
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).sort_stats(os.environ.get("PROFILE_SORT", "cumulative"))
    stats.print_stats(int(os.environ.get("PROFILE_LINES", "45")))
    if os.environ.get("PROFILE_CALLERS"):  # e.g. PROFILE_CALLERS=isinstance: who calls it, how often
        stats.print_callers(os.environ["PROFILE_CALLERS"])
    print(out.getvalue())


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--stream", action="store_true")
    args = ap.parse_args()
    async with Stack(make_logdir("profile")) as stack:
        fleet = await Fleet(stack, FleetSpec(speeds=(1.0,), max_num_seqs=1024, step_time=0.0,
                                             prefill_time_per_token=0.0)).ready()
        redis_url = await start_valkey(stack)
        await asyncio.to_thread(profile, fleet.urls[0], redis_url, args.requests, args.stream)


if __name__ == "__main__":
    asyncio.run(main())
