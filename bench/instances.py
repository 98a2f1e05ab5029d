"""(d) Two nvllm instances on one Redis against one instance, same workload.

A bare valkey-server stands in for the shared Redis (REDIS_URL). The workload
is b1 "mixed" of bench/routing.py (the same seeded requests at the same times,
at 80% of the heterogeneous fleet's capacity); with two instances, clients
send to them in turn, so each instance routes half the requests knowing the
other's in-flight counts only through Redis. Each configuration gets a fresh
fleet and a fresh Redis.

Usage: bench/.venv/bin/python bench/instances.py [--quick] [--policy load]
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from common import (
    Fleet,
    Meter,
    Stack,
    log,
    make_logdir,
    markdown_table,
    open_loop,
    secs,
    start_nvllm,
    start_valkey,
    summarize,
    write_results,
)
from routing import FLEET, LOAD, TIMEOUT, capacity, mixed_plan


async def measure(instances: int, policy: str, plan, logdir, drain: float) -> dict[str, Any]:
    async with Stack(logdir) as stack:
        fleet = await Fleet(stack, FLEET, name=f"fake-x{instances}").ready()
        redis_url = await start_valkey(stack)
        target = await start_nvllm(stack, fleet, policy, instances=instances, redis_url=redis_url,
                                   workers=1, name=f"nvllm-x{instances}-")
        before = await fleet.stats()
        async with Meter(target.pids) as meter:
            outcomes, span = await open_loop(target, plan, timeout=TIMEOUT, drain=drain)
        after = await fleet.stats()
    row = summarize(outcomes, span)
    served = [a["completed"] - b["completed"] for a, b in zip(after, before, strict=True)]
    row.update({"instances": instances, "policy": policy, "cpu_s": meter.cpu, "rss_peak": meter.rss_peak,
                "node_share": [s / max(sum(served), 1) for s in served]})
    log(f"  nvllm x{instances} {policy}: TTFT p50/p99 {secs(row['ttft_p50'])}/{secs(row['ttft_p99'])} s, e2e p50/p99 "
        f"{secs(row['e2e_p50'])}/{secs(row['e2e_p99'])} s, errors {row['errors']}, share "
        + "/".join(f"{s:.0%}" for s in row["node_share"]))
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = [[f"nvllm x{r['instances']}", r["policy"], secs(r["ttft_p50"]), secs(r["ttft_p99"]), secs(r["e2e_p50"]),
              secs(r["e2e_p99"]), f"{r['req_per_s']:.2f}", r["errors"],
              " / ".join(f"{s:.0%}" for s in r["node_share"]), f"{r['cpu_s']:.1f}"] for r in rows]
    headers = ["instances", "policy", "TTFT p50 s", "TTFT p99 s", "e2e p50 s", "e2e p99 s", "req/s", "errors",
               "share per node (speeds 1/1/0.6/0.4)", "CPU s (all instances)"]
    return markdown_table(headers, lines)


async def run(quick: bool = False, seed: int = 1, policy: str = "load") -> dict[str, Any]:
    rate = LOAD * capacity()["fleet"]
    duration = 5.0 if quick else 12.0
    plan = mixed_plan(seed, duration, rate)
    logdir = make_logdir("instances")
    log(f"(d) nvllm x2 vs x1 on one Redis: logs in {logdir}")
    rows = []
    for instances in (1, 2):
        rows.append(await measure(instances, policy, plan, logdir, drain=30.0))
    head = (f"Workload b1 mixed ({len(plan)} streamed requests at {rate:.2f} req/s for {duration:g} s), "
            f"fleet `{FLEET.command()}`, one valkey-server as REDIS_URL for every instance.")
    text = head + "\n\n" + table(rows)
    write_results("instances", {"rate": rate, "duration": duration, "quick": quick, "rows": rows}, text)
    return {"rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a shorter run")
    ap.add_argument("--policy", default="load")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    asyncio.run(run(args.quick, args.seed, args.policy))


if __name__ == "__main__":
    main()
