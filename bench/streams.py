"""(c) 1,000 concurrent streams through one nvllm instance.

A fleet of four fake nodes with room for every stream at once (max-num-seqs
STREAMS/4 each), STEP_TIME seconds per token and TOKENS tokens per answer, so
each stream lasts about TOKENS*STEP_TIME seconds. STREAMS clients open their
streams within RAMP seconds and hold them to the end. Reported: errors (any
non-200, cut stream or missing [DONE]), how many streams were open at once at
the fakes, time to first token and stream duration p50/p99, and the target's
memory (RSS of all its processes) before and at peak. The same run goes
through vllm-router and sglang-router for comparison.

Usage: bench/.venv/bin/python bench/streams.py [--quick] [--streams N]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from typing import Any

from common import (
    MODEL,
    Fleet,
    FleetSpec,
    Meter,
    Planned,
    Stack,
    log,
    make_logdir,
    markdown_table,
    open_loop,
    rng_words,
    secs,
    session_for,
    start_target,
    summarize,
    write_results,
)

STREAMS = 1000
TOKENS = 64
STEP_TIME = 0.05
RAMP = 1.0
TARGETS = [("nvllm", "load"), ("vllm-router", "round_robin"), ("sglang-router", "round_robin")]


def fleet_spec(streams: int) -> FleetSpec:
    per_node = -(-streams // 4) + 16
    return FleetSpec(speeds=(1.0, 1.0, 1.0, 1.0), max_num_seqs=per_node, step_time=STEP_TIME,
                     prefill_time_per_token=0.0, kv_tokens=per_node * 16 * 8)


async def peak_open(fleet: Fleet, stop: asyncio.Event, out: dict[str, int]) -> None:
    """Sample the fakes' in-flight counts: how many streams were open at once."""
    while not stop.is_set():
        stats = await fleet.stats()
        out["peak"] = max(out.get("peak", 0), sum(s["in_flight"] for s in stats))
        await asyncio.sleep(0.2)


async def measure(name: str, policy: str, streams: int, logdir, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    plan = [Planned(RAMP * i / streams, {"model": MODEL, "max_tokens": TOKENS, "stream": True,
                                         "messages": [{"role": "user", "content": rng_words(rng, 16)}]})
            for i in range(streams)]
    async with Stack(logdir) as stack:
        fleet = await Fleet(stack, fleet_spec(streams), name=f"fake-streams-{name}").ready()
        target = await start_target(stack, fleet, name, policy)
        await asyncio.sleep(1.0)  # let the target settle before the memory baseline
        stop, seen = asyncio.Event(), {"peak": 0}
        sampler = asyncio.create_task(peak_open(fleet, stop, seen))
        async with session_for(target, timeout=120.0) as session, Meter(target.pids) as meter:
            started = time.perf_counter()
            outcomes, span = await open_loop(target, plan, timeout=120.0, drain=60.0, session=session)
        stop.set()
        await sampler
        row = summarize(outcomes, span)
        row.update({"target": target.name, "policy": target.policy, "command": target.command,
                    "rss_before": meter.rss_start, "rss_peak": meter.rss_peak, "rss_after": meter.rss_end,
                    "cpu_s": meter.cpu, "peak_open_at_fakes": seen["peak"], "wall_s": time.perf_counter() - started,
                    "events_min": min((o.events for o in outcomes if o.ok), default=0)})
    log(f"  {target.label}: {row['ok']}/{row['requests']} ok, errors {row['errors']} {row['error_kinds']}, "
        f"peak open {seen['peak']}, RSS {row['rss_before'] / 2**20:.0f} -> {row['rss_peak'] / 2**20:.0f} MiB")
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = [[r["target"], r["policy"], r["requests"], r["errors"], r["peak_open_at_fakes"],
              f"{secs(r['ttft_p50'])} / {secs(r['ttft_p99'])}", f"{secs(r['e2e_p50'])} / {secs(r['e2e_p99'])}",
              f"{r['rss_before'] / 2**20:.0f}", f"{r['rss_peak'] / 2**20:.0f}", f"{r['cpu_s']:.1f}"] for r in rows]
    headers = ["target", "policy", "streams", "errors", "open at once (at the fakes)", "TTFT p50/p99 s",
               "duration p50/p99 s", "RSS before MiB", "RSS peak MiB", "CPU s"]
    return markdown_table(headers, lines)


async def run(quick: bool = False, seed: int = 1, streams: int | None = None,
              only: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    streams = streams or (200 if quick else STREAMS)
    targets = only or (TARGETS[:1] if quick else TARGETS)
    logdir = make_logdir("streams")
    log(f"(c) {streams} concurrent streams: logs in {logdir}")
    rows = []
    for name, policy in targets:
        rows.append(await measure(name, policy, streams, logdir, seed))
    head = (f"{streams} streams opened within {RAMP:g} s, {TOKENS} tokens each at {STEP_TIME:g} s per token "
            f"(about {TOKENS * STEP_TIME:.1f} s per stream). Fleet: `{fleet_spec(streams).command()}`.")
    text = head + "\n\n" + table(rows)
    results = {"streams": streams, "tokens": TOKENS, "step_time": STEP_TIME, "quick": quick, "rows": rows}
    write_results("streams-selected" if only else "streams", results, text)
    return {"rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="200 streams, nvllm only")
    ap.add_argument("--streams", type=int, default=None)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--targets", help="only these, e.g. nvllm:load,nvllm@/tmp/base:load")
    args = ap.parse_args()
    only = [tuple(item.split(":", 1)) for item in args.targets.split(",")] if args.targets else None
    if only and any(len(pair) != 2 for pair in only):
        ap.error("--targets takes ROUTER:POLICY pairs separated by commas")
    asyncio.run(run(args.quick, args.seed, args.streams, only))


if __name__ == "__main__":
    main()
