"""The floor under nvllm's overhead figures: the same saturated load as
overhead.py against gunicorn + gevent + Flask doing nothing (hello) and doing
only a urllib3 relay to one node (proxy), one worker each, as nvllm runs.

Usage: bench/.venv/bin/python bench/floor.py
"""

from __future__ import annotations

import asyncio
from typing import Any

from common import (
    PROJECT_PYTHON,
    ROOT,
    Fleet,
    Meter,
    Stack,
    Target,
    closed_loop,
    free_port,
    log,
    make_logdir,
    markdown_table,
    probe_chat,
    wait_until,
    write_results,
)
from overhead import CONCURRENCY, FLEET, bodies

SECONDS = 5.0


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


async def run() -> dict[str, Any]:
    logdir = make_logdir("floor")
    rows = []
    async with Stack(logdir) as stack:
        fleet = await Fleet(stack, FLEET).ready()
        for mode in ("hello", "proxy"):
            port = free_port()
            gunicorn = str(PROJECT_PYTHON.parent / "gunicorn")
            proc = stack.start(f"floor-{mode}", [gunicorn, "-k", "gevent", "-w", "1", "-b", f"127.0.0.1:{port}",
                                                 "--chdir", str(ROOT / "bench"), "floor_app:app"],
                               env={"FLOOR_MODE": mode, "FLOOR_UPSTREAM": fleet.urls[0]})
            target = Target("flask floor", mode, [f"http://127.0.0.1:{port}"], pids=[proc.pid])
            await wait_until(lambda t=target: probe_chat(t), f"floor {mode}", proc)
            row: dict[str, Any] = {"mode": mode}
            row.update({"stream_req_per_s": None, "stream_cpu_s_per_1k": None})
            for stream in (False, True) if mode == "proxy" else (False,):
                pool = bodies(1 + stream, 4096, stream)
                await closed_loop(target, lambda n, p=pool: p[n % len(p)], concurrency=CONCURRENCY, duration=1.0)
                async with Meter(target.pids) as meter:
                    outcomes, span = await closed_loop(target, lambda n, p=pool: p[n % len(p)],
                                                       concurrency=CONCURRENCY, duration=SECONDS)
                ok = sum(o.ok for o in outcomes)
                kind = "stream" if stream else "plain"
                row[f"{kind}_req_per_s"] = ok / span
                row[f"{kind}_cpu_s_per_1k"] = meter.cpu / max(ok, 1) * 1000
                row[f"{kind}_errors"] = len(outcomes) - ok
            log(f"  {mode}: {row['plain_req_per_s']:.0f} req/s at {row['plain_cpu_s_per_1k']:.2f} CPU s/1k")
            rows.append(row)
    text = ("gunicorn -k gevent -w 1 running `bench/floor_app.py` (hello: answers at once; proxy: relays to one fake "
            "node with urllib3, nothing else); the load of overhead.py's saturated figures.\n\n"
            + markdown_table(["app", "sat. req/s", "sat. req/s stream", "CPU s/1k req", "CPU s/1k stream"],
                             [[r["mode"], f"{r['plain_req_per_s']:.0f}", _num(r["stream_req_per_s"], 0),
                               f"{r['plain_cpu_s_per_1k']:.2f}", _num(r["stream_cpu_s_per_1k"], 2)] for r in rows]))
    write_results("floor", {"rows": rows}, text)
    return {"rows": rows}


if __name__ == "__main__":
    asyncio.run(run())
