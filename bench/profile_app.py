"""Where nvllm's CPU goes per proxied request, two ways.

In this process (the default): nvllm's WSGI app (no gunicorn), a real fake
vLLM node and a valkey-server behind it, N chat requests under cProfile, then
the cumulative profile. Runs in the project's environment (it imports nvllm):
    .venv/bin/python bench/profile_app.py [--requests 3000] [--stream]
PROFILE_SORT=tottime sorts by time spent in each function itself;
PROFILE_CALLERS=<regex> also lists the callers of the functions it matches;
PROFILE_LINES=N prints N functions (45).

As served (--server): `python main.py` on its default settings (gunicorn, one
gevent worker, embedded store) in front of nginx answering a fixed body
(common.ConstantFleet; --backend fake for the Python fake), saturated by
the benchmark's closed-loop client while py-spy samples the gevent worker.
It prints the worker's CPU per request, split by who does the work (the
innermost frame of gunicorn, gevent, werkzeug, flask, urllib3, nvllm, ...; a
standard-library frame counts for the package that called it, except
http.client and email, urllib3's HTTP parsing, and logging), and the share of
samples under nvllm's hot functions. Needs py-spy (bench/requirements.txt):
    bench/.venv/bin/python bench/profile_app.py --server [--stream] [--seconds 10] [--source DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import (  # noqa: E402
    ROOT,
    ConstantFleet,
    Fleet,
    FleetSpec,
    Meter,
    Stack,
    closed_loop,
    make_logdir,
    process_tree,
    rng_words,
    start_nvllm,
    start_valkey,
    user_system_seconds,
)


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
    # Accept: how the constant backend tells a stream from a whole answer.
    headers = {**auth, "Content-Type": "application/json", **({"Accept": "text/event-stream"} if stream else {})}

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
    print(f"{n} {'streamed' if stream else 'plain'} requests; CPU per request without the profiler: {plain:.3f} ms "
          "(client side of the test included)")
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).sort_stats(os.environ.get("PROFILE_SORT", "cumulative"))
    stats.print_stats(int(os.environ.get("PROFILE_LINES", "45")))
    if os.environ.get("PROFILE_CALLERS"):  # e.g. PROFILE_CALLERS=isinstance: who calls it, how often
        stats.print_callers(os.environ["PROFILE_CALLERS"])
    print(out.getvalue())


# Who does the work, by the file of a frame: the first pattern that matches.
PARTS = [
    ("http.client+email", ("/http/client.py", "/email/")),
    ("logging", ("/logging/",)),
    ("gunicorn", ("/gunicorn/",)),
    ("gevent", ("/gevent/",)),
    ("werkzeug", ("/werkzeug/",)),
    ("flask", ("/flask/",)),
    ("urllib3", ("/urllib3/",)),
    ("prometheus_client", ("/prometheus_client/",)),
    ("redis", ("/redis/",)),
    ("jwt", ("/jwt/",)),
]
# Functions whose inclusive share is printed: (function, a fragment of its file's path).
HOT = [("wsgi_app", "/flask/app.py"), ("handle_request", "/gunicorn/workers/"), ("forward", "/api/proxy.py"),
       ("forward", "/service/proxy.py"), ("_send", "/service/proxy.py"), ("urlopen", "/urllib3/"),
       ("getresponse", "/http/client.py"), ("parse_headers", "/http/client.py"), ("_relay", "/service/proxy.py"),
       ("authenticate", "/middleware/auth.py"), ("shape_request", "/service/shape.py"),
       ("choose", "/service/routing/"), ("log_request", "/middleware/trace.py"),
       ("observe_request", "/service/metrics.py"), ("observe_upstream", "/service/metrics.py")]


def _part(frame: str, source: str) -> str | None:
    where = frame[frame.rfind("(") + 1:]
    for name, patterns in PARTS:
        if any(p in where for p in patterns):
            return name
    if source and where.startswith(source) and "site-packages/" not in where:
        return "nvllm"
    if "site-packages/" in where:
        return where.split("site-packages/", 1)[1].split("/", 1)[0]
    return None  # the standard library (or the interpreter): charged to its caller


def summarize_stacks(raw: str, source: str = "") -> tuple[int, dict[str, int], dict[str, int], dict[str, int]]:
    """py-spy's collapsed stacks ("thread;frame;frame;... count", root first,
    recorded with --threads --native) into (samples, samples per part,
    samples per leaf function, samples under each HOT function). Only the
    thread that serves requests counts (gevent runs every greenlet on it), and
    only while it works: py-spy's idle detection does not work in every VM,
    so a sample waiting in epoll_wait (the hub with nothing to do) is dropped."""
    by_thread: dict[str, list[tuple[list[str], int]]] = {}
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        thread, _, rest = stack.partition(";")
        by_thread.setdefault(thread, []).append((rest.split(";"), int(count_text)))
    serving = max(by_thread.values(), default=[],
                  key=lambda stacks: sum(n for frames, n in stacks if any("handle_request" in f for f in frames)))
    total = 0
    parts: dict[str, int] = {}
    leaves: dict[str, int] = {}
    hot = {f"{func} ({fragment.strip('/')})": 0 for func, fragment in HOT}
    for frames, count in serving:
        if frames[-1].startswith(("epoll_wait ", "epoll_pwait ")):
            continue
        total += count
        part = next((p for p in (_part(f, source) for f in reversed(frames)) if p), "other")
        parts[part] = parts.get(part, 0) + count
        leaves[frames[-1]] = leaves.get(frames[-1], 0) + count
        for (func, fragment), name in zip(HOT, hot, strict=True):
            if any(f.startswith(func + " (") and fragment in f for f in frames):
                hot[name] += count
    return total, parts, leaves, hot


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        sys.exit("py-spy not found: bench/.venv/bin/pip install -r bench/requirements.txt")
    return found


async def profile_server(args: argparse.Namespace) -> None:
    from overhead import bodies

    source = Path(args.source).resolve() if args.source else ROOT
    async with Stack(make_logdir("profile-server")) as stack:
        if args.backend == "nginx":
            fleet = await ConstantFleet(stack, 1).ready()
        else:
            fleet = await Fleet(stack, FleetSpec(speeds=(1.0,), max_num_seqs=4096, step_time=0.0,
                                                 prefill_time_per_token=0.0)).ready()
        target = await start_nvllm(stack, fleet, "load", source=source, workers=1)
        arbiter = target.pids[0]
        # The gevent worker: the arbiter's python child (the other is the embedded store).
        workers = [p for p in process_tree(arbiter)[1:] if "python" in Path(f"/proc/{p}/exe").resolve().name]
        if len(workers) != 1:
            sys.exit(f"expected one gevent worker under {arbiter}, found {workers}")
        worker = workers[0]
        pool = bodies(1 + args.stream, 4096, args.stream)
        make = lambda n: pool[n % len(pool)]  # noqa: E731
        await closed_loop(target, make, concurrency=args.concurrency, duration=1.0)
        # CPU per request without the sampler, then the sampled run.
        user, system = user_system_seconds(worker)
        async with Meter(target.pids) as meter:
            outcomes, _ = await closed_loop(target, make, concurrency=args.concurrency, duration=args.seconds)
        ok = sum(o.ok for o in outcomes)
        user_end, system_end = user_system_seconds(worker)
        user_ms, system_ms = (user_end - user) / max(ok, 1) * 1000, (system_end - system) / max(ok, 1) * 1000
        worker_ms = user_ms + system_ms
        total_ms = meter.cpu / max(ok, 1) * 1000
        out = stack.logdir / "py-spy.txt"
        spy = await asyncio.create_subprocess_exec(
            _py_spy(), "record", "--pid", str(worker), "--rate", str(args.rate), "--duration", str(int(args.seconds)),
            "--format", "raw", "--full-filenames", "--native", "--threads", "--output", str(out),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        await asyncio.sleep(0.5)  # py-spy attaches
        sampled, _ = await closed_loop(target, make, concurrency=args.concurrency, duration=args.seconds)
        await spy.wait()
        errors = len(outcomes) - ok + sum(not o.ok for o in sampled)
    total, parts, leaves, hot = summarize_stacks(out.read_text(), str(source) + "/")
    kind = "streamed" if args.stream else "plain"
    print(f"{kind} requests through nvllm at {source} ({args.backend} backend, {args.concurrency} clients): "
          f"{ok / args.seconds:.0f} req/s, CPU per request {total_ms:.3f} ms for nvllm's processes, "
          f"{worker_ms:.3f} ms in the gevent worker ({user_ms:.3f} user, {system_ms:.3f} system); {errors} errors; "
          f"{total} samples")
    print("\nby part (innermost frame; the standard library charged to its caller):")
    for name, count in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"  {name:20s} {count / total:6.1%}  {count / total * worker_ms:.3f} ms")
    print("\nunder nvllm's hot functions (inclusive):")
    for name, count in hot.items():
        print(f"  {name:45s} {count / total:6.1%}  {count / total * worker_ms:.3f} ms")
    print(f"\nleaf functions (self), top {args.lines}:")
    for name, count in sorted(leaves.items(), key=lambda kv: -kv[1])[: args.lines]:
        print(f"  {count / total:6.1%}  {name}")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--stream", action="store_true")
    ap.add_argument("--server", action="store_true", help="profile `python main.py` under load with py-spy")
    ap.add_argument("--backend", choices=("nginx", "fake"),
                    help="the node: the Python fake, or nginx answering a fixed body (the default with --server)")
    ap.add_argument("--seconds", type=float, default=10.0, help="--server: seconds measured, then sampled (10)")
    ap.add_argument("--rate", type=int, default=200, help="--server: py-spy samples per second (200)")
    ap.add_argument("--concurrency", type=int, default=32, help="--server: closed-loop clients (32)")
    ap.add_argument("--source", help="--server: the nvllm checkout to run (this one)")
    ap.add_argument("--lines", type=int, default=30, help="--server: leaf functions listed (30)")
    args = ap.parse_args()
    if args.server:
        args.backend = args.backend or "nginx"
        await profile_server(args)
        return
    async with Stack(make_logdir("profile")) as stack:
        if args.backend == "nginx":
            fleet = await ConstantFleet(stack, 1).ready()
        else:
            fleet = await Fleet(stack, FleetSpec(speeds=(1.0,), max_num_seqs=1024, step_time=0.0,
                                                 prefill_time_per_token=0.0)).ready()
        redis_url = await start_valkey(stack)
        await asyncio.to_thread(profile, fleet.urls[0], redis_url, args.requests, args.stream)


if __name__ == "__main__":
    asyncio.run(main())
