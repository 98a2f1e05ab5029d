"""(a) Overhead with an instant backend.

A fleet of two fake vLLM nodes that answer at once (step time 0, prefill 0).
For each target (the backend itself, nvllm, vllm-router, sglang-router):

- saturated requests/s: closed loop, CONCURRENCY clients back to back, non-streaming then streaming;
- CPU seconds per 1,000 requests of the target's processes (all of nvllm's: gunicorn arbiter, gevent
  worker, embedded store), during those saturated runs and during the fixed-rate runs;
- latency at a fixed open-loop rate of 100 requests/s (one request every 10 ms): end-to-end
  (non-streaming) and time to first token (streaming), and what the target adds to going direct.

With `--backend nginx` the nodes are nginx answering a fixed chat completion
or a fixed 4-event stream (common.ConstantFleet) instead of the Python fake,
which caps what the fastest router can show; results go to overhead-nginx.*.
sglang-router is left out there: it does not forward the client's Accept
header, by which nginx tells a stream from a whole answer.

Usage: bench/.venv/bin/python bench/overhead.py [--quick] [--backend nginx]
           [--targets nvllm:load,nvllm@/tmp/base:load,vllm-router:cache_aware]
"""

from __future__ import annotations

import argparse
import asyncio
import random
from typing import Any

from common import (
    MODEL,
    ConstantFleet,
    Fleet,
    FleetSpec,
    Meter,
    Planned,
    Stack,
    closed_loop,
    log,
    make_logdir,
    markdown_table,
    ms,
    open_loop,
    rng_words,
    start_target,
    summarize,
    write_results,
)

CONCURRENCY = 32
RATE = 100.0
PROMPT_WORDS = 32
MAX_TOKENS = 16
FLEET = FleetSpec(speeds=(1.0, 1.0), max_num_seqs=4096, step_time=0.0, prefill_time_per_token=0.0)
# (target, policy): each router's default policy and its cheapest one.
TARGETS = [
    ("direct", ""),
    ("nvllm", "load"),
    ("vllm-router", "cache_aware"),
    ("vllm-router", "round_robin"),
    ("sglang-router", "cache_aware"),
    ("sglang-router", "round_robin"),
]
QUICK_TARGETS = [("direct", ""), ("nvllm", "load"), ("vllm-router", "round_robin")]
NGINX_TARGETS = [t for t in TARGETS if t[0] != "sglang-router"]
NGINX_NODES = 2


def bodies(seed: int, n: int, stream: bool) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [{"model": MODEL, "messages": [{"role": "user", "content": rng_words(rng, PROMPT_WORDS)}],
             "max_tokens": MAX_TOKENS, "stream": stream} for _ in range(n)]


async def measure(target, sat_seconds: float, rate_seconds: float, seed: int, warmup: float,
                  concurrency: int = CONCURRENCY) -> dict[str, Any]:
    out: dict[str, Any] = {"target": target.name, "policy": target.policy, "command": target.command}
    for stream in (False, True):
        kind = "stream" if stream else "plain"
        pool = bodies(seed + stream, 4096, stream)
        # Warm up connections and caches, unmeasured.
        await closed_loop(target, lambda n, p=pool: p[n % len(p)], concurrency=concurrency, duration=warmup)
        async with Meter(target.pids) as meter:
            outcomes, span = await closed_loop(target, lambda n, p=pool: p[n % len(p)], concurrency=concurrency,
                                               duration=sat_seconds)
        sat = summarize(outcomes, span)
        sat["cpu_s"] = meter.cpu
        sat["cpu_s_per_1k"] = meter.cpu / max(sat["ok"], 1) * 1000
        sat["rss_peak"] = meter.rss_peak
        out[f"sat_{kind}"] = sat
        n = int(RATE * rate_seconds)
        plan = [Planned(i / RATE, pool[i % len(pool)]) for i in range(n)]
        async with Meter(target.pids) as meter:
            outcomes, span = await open_loop(target, plan, timeout=30, drain=30)
        fixed = summarize(outcomes, span)
        fixed["cpu_s"] = meter.cpu
        fixed["cpu_s_per_1k"] = meter.cpu / max(fixed["ok"], 1) * 1000
        out[f"rate_{kind}"] = fixed
        log(f"  {target.label} {kind}: saturated {sat['req_per_s']:.0f} req/s, "
            f"{sat['cpu_s_per_1k']:.2f} CPU s/1k; at {RATE:.0f}/s p50 {ms(fixed['e2e_p50'], 1)} ms "
            f"p99 {ms(fixed['e2e_p99'], 1)} ms, errors {sat['errors'] + fixed['errors']}")
    return out


def table(rows: list[dict[str, Any]]) -> str:
    base = next((r for r in rows if r["target"] == "direct"), None)

    def added(row: dict[str, Any], kind: str, metric: str) -> str:
        if base is None or row is base:
            return "-"
        a, b = row[kind][metric], base[kind][metric]
        return "-" if a is None or b is None else f"{(a - b) * 1000:+.1f}"

    lines = []
    for r in rows:
        lines.append([
            r["target"], r["policy"] or "-",
            f"{r['sat_plain']['req_per_s']:.0f}", f"{r['sat_stream']['req_per_s']:.0f}",
            f"{r['sat_plain']['cpu_s_per_1k']:.2f}", f"{r['sat_stream']['cpu_s_per_1k']:.2f}",
            f"{r['rate_plain']['cpu_s_per_1k']:.2f}",
            f"{ms(r['rate_plain']['e2e_p50'], 1)} / {ms(r['rate_plain']['e2e_p99'], 1)}",
            f"{added(r, 'rate_plain', 'e2e_p50')} / {added(r, 'rate_plain', 'e2e_p99')}",
            f"{ms(r['rate_stream']['ttft_p50'], 1)} / {ms(r['rate_stream']['ttft_p99'], 1)}",
            f"{added(r, 'rate_stream', 'ttft_p50')} / {added(r, 'rate_stream', 'ttft_p99')}",
            f"{added(r, 'rate_stream', 'e2e_p50')} / {added(r, 'rate_stream', 'e2e_p99')}",
            sum(r[k]["errors"] for k in ("sat_plain", "sat_stream", "rate_plain", "rate_stream")),
        ])
    headers = ["target", "policy", "sat. req/s", "sat. req/s stream", "CPU s/1k req", "CPU s/1k stream",
               "CPU s/1k @100/s", "latency p50/p99 ms @100/s", "added p50/p99 ms",
               "TTFT p50/p99 ms @100/s stream", "added TTFT p50/p99 ms", "added e2e p50/p99 ms stream", "errors"]
    return markdown_table(headers, lines)


async def run(quick: bool = False, seed: int = 1, backend: str = "fake",
              only: list[tuple[str, str]] | None = None, concurrency: int = CONCURRENCY) -> dict[str, Any]:
    sat_seconds, rate_seconds = (2.0, 3.0) if quick else (5.0, 8.0)
    targets = only or (QUICK_TARGETS if quick else NGINX_TARGETS if backend == "nginx" else TARGETS)
    scenario = "overhead" if backend == "fake" else f"overhead-{backend}"
    logdir = make_logdir(scenario)
    log(f"(a) overhead ({backend} backend): logs in {logdir}")
    rows = []
    async with Stack(logdir) as stack:
        if backend == "nginx":
            fleet = await ConstantFleet(stack, NGINX_NODES).ready()
            fleet_text = f"{NGINX_NODES} nginx servers answering a fixed chat completion or 4-event stream at once"
        else:
            fleet = await Fleet(stack, FLEET).ready()
            fleet_text = f"`{FLEET.command()}`"
        for name, policy in targets:
            async with Stack(logdir) as inner:
                target = await start_target(inner, fleet, name, policy)
                rows.append(await measure(target, sat_seconds, rate_seconds, seed, 0.5 if quick else 1.0, concurrency))
    text = table(rows)
    header = (f"Fleet: {fleet_text}; {concurrency} closed-loop clients for {sat_seconds:g} s per saturated "
              f"figure; {RATE:g} requests/s for {rate_seconds:g} s per latency figure; chat requests of "
              f"{PROMPT_WORDS} prompt words, max_tokens {MAX_TOKENS}.")
    write_results(scenario, {"fleet": FLEET if backend == "fake" else fleet_text, "backend": backend,
                             "concurrency": concurrency, "rate": RATE, "quick": quick,
                             "sat_seconds": sat_seconds, "rate_seconds": rate_seconds, "rows": rows},
                  header + "\n\n" + text)
    return {"rows": rows, "table": text}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer targets, shorter runs (a smoke test)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--backend", choices=("fake", "nginx"), default="fake",
                    help="the nodes: the Python fake (default) or nginx answering a fixed body")
    ap.add_argument("--targets", help="only these, in this order, e.g. nvllm:load,nvllm@/tmp/base:load")
    ap.add_argument("--concurrency", type=int, default=CONCURRENCY, help="closed-loop clients (32)")
    args = ap.parse_args()
    only = [tuple(item.split(":", 1)) for item in args.targets.split(",")] if args.targets else None
    if only and any(len(t) != 2 for t in only):
        ap.error("--targets takes ROUTER:POLICY pairs separated by commas (direct: 'direct:')")
    asyncio.run(run(args.quick, args.seed, args.backend, only, args.concurrency))


if __name__ == "__main__":
    main()
