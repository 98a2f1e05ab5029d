"""(b) Routing quality on a heterogeneous fake fleet, every policy of every router.

Four fake vLLM nodes of speeds 1.0, 1.0, 0.6 and 0.4 (continuous batching of
MAX_NUM_SEQS sequences, STEP_TIME seconds per decode step and PREFILL seconds
per uncached prompt token, both divided by the speed). Two workloads, the same
requests at the same times for every target (seeded); each target gets a fresh
fleet, so caches and queues start empty:

b1 "mixed": Poisson arrivals at LOAD x the fleet's capacity, unique prompts of
   50-2000 words and max_tokens 16-256 (both log-uniform), streamed.
b2 "multi-turn": conversations that share one system prompt; each turn sends
   the whole history (every earlier question and answer) plus a new question,
   turns of a conversation one after another, conversations concurrently.

Reported per target: time to first token and end-to-end p50/p99, completed
requests/s, errors, the share of requests each node served, and the
prefix-cache hit rate summed over the nodes' /metrics.

Capacity (see README): a request of P prompt tokens and O output tokens costs a
node P*PREFILL (the whole batch waits) plus O steps shared by up to
MAX_NUM_SEQS sequences, so a node of speed v completes at most
    mu(v) = v / (E[P]*PREFILL + E[O]*STEP_TIME/MAX_NUM_SEQS)   requests/s.

Usage: bench/.venv/bin/python bench/routing.py [--quick] [--workload mixed|multiturn|both]
       bench/.venv/bin/python bench/routing.py --targets nvllm:load,vllm-router:kv_aware --repeat 3
       bench/.venv/bin/python bench/routing.py --calibrate
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import time
from collections.abc import Sequence
from typing import Any

from common import (
    MODEL,
    NVLLM_POLICIES,
    SGLANG_ROUTER_POLICIES,
    VLLM_ROUTER_POLICIES,
    Fleet,
    FleetSpec,
    Meter,
    Outcome,
    Planned,
    Stack,
    Target,
    closed_loop,
    direct_target,
    log,
    make_logdir,
    markdown_table,
    open_loop,
    rng_words,
    save_raw,
    secs,
    send,
    session_for,
    session_headers,
    start_target,
    summarize,
    write_results,
)

SPEEDS = (1.0, 1.0, 0.6, 0.4)
MAX_NUM_SEQS = 8
STEP_TIME = 0.01
PREFILL = 0.0001
FLEET = FleetSpec(speeds=SPEEDS, max_num_seqs=MAX_NUM_SEQS, step_time=STEP_TIME, prefill_time_per_token=PREFILL)
LOAD = 0.8
PROMPT_RANGE = (50, 2000)
OUTPUT_RANGE = (16, 256)
TEMPLATE_TOKENS = 11  # the fake's chat template around one user message, BOS included
TIMEOUT = 120.0
USERS = 64  # b1 requests come from this many users (the body's `user`, and session headers)

# b2
SYSTEM_WORDS = 400
QUESTION_RANGE = (20, 120)
ANSWER_RANGE = (16, 256)
TURNS = 6
THINK_MEAN = 0.3


def log_uniform(rng: random.Random, lo: int, hi: int) -> int:
    return int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))


def log_uniform_mean(lo: float, hi: float) -> float:
    return (hi - lo) / math.log(hi / lo)


def capacity() -> dict[str, float]:
    """The fleet's capacity for the b1 mix, in requests/s, from the fake's parameters."""
    prompt = log_uniform_mean(*PROMPT_RANGE) + TEMPLATE_TOKENS
    output = log_uniform_mean(*OUTPUT_RANGE)
    per_request = prompt * PREFILL + output * STEP_TIME / MAX_NUM_SEQS
    per_node = [v / per_request for v in SPEEDS]
    return {"mean_prompt_tokens": prompt, "mean_output_tokens": output, "engine_s_per_request": per_request,
            "per_node": per_node, "fleet": sum(per_node)}


def mixed_plan(seed: int, duration: float, rate: float) -> list[Planned]:
    rng = random.Random(seed)
    plan, t = [], rng.expovariate(rate)
    while t < duration:
        words = log_uniform(rng, *PROMPT_RANGE)
        user = f"user-{rng.randrange(USERS)}"
        body = {"model": MODEL, "messages": [{"role": "user", "content": rng_words(rng, words)}],
                "max_tokens": log_uniform(rng, *OUTPUT_RANGE), "stream": True, "user": user}
        plan.append(Planned(t, body, session_headers(user)))
        t += rng.expovariate(rate)
    return plan


def conversations(seed: int, count: int, window: float) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    system = "You are a helpful assistant. " + rng_words(rng, SYSTEM_WORDS)
    convs = []
    for _ in range(count):
        convs.append({
            "start": rng.uniform(0, window),
            "system": system,
            "turns": [(rng_words(rng, log_uniform(rng, *QUESTION_RANGE)), log_uniform(rng, *ANSWER_RANGE),
                       rng.expovariate(1 / THINK_MEAN)) for _ in range(TURNS)],
        })
    return convs


async def run_conversations(target: Target, convs: Sequence[dict[str, Any]], *, drain: float
                            ) -> tuple[list[Outcome], float, list[dict[str, Any]]]:
    """Each conversation starts at its time; each turn waits for the previous
    answer (and a think time), then sends the whole history. Returns the
    outcomes, the time taken and, per outcome, which turn it was."""
    outcomes: list[Outcome] = []
    turns: list[dict[str, Any]] = []
    async with session_for(target, timeout=TIMEOUT) as session:
        start = time.perf_counter()

        async def converse(k: int, conv: dict[str, Any]) -> None:
            await asyncio.sleep(max(0.0, start + conv["start"] - time.perf_counter()))
            messages = [{"role": "system", "content": conv["system"]}]
            url = target.urls[k % len(target.urls)]
            key = f"conversation-{k}"
            for turn, (question, max_tokens, think) in enumerate(conv["turns"]):
                messages.append({"role": "user", "content": question})
                sent_at = time.perf_counter()
                note = {"conversation": k, "turn": turn, "at": round(sent_at - start, 3),
                        "prompt_chars": sum(len(m["content"]) for m in messages), "max_tokens": max_tokens}
                body = {"model": MODEL, "messages": messages, "max_tokens": max_tokens, "stream": True, "user": key}
                try:
                    outcome = await send(session, url, body, t0=sent_at, collect=True,
                                         headers=session_headers(key))
                except asyncio.CancelledError:
                    outcomes.append(Outcome(False, 0, "unfinished at drain"))
                    turns.append(note)
                    raise
                outcomes.append(outcome)
                turns.append(note)
                if not outcome.ok:
                    return  # a conversation whose turn failed ends there
                messages = [*messages, {"role": "assistant", "content": outcome.text}]
                await asyncio.sleep(think)

        tasks = [asyncio.create_task(converse(k, c)) for k, c in enumerate(convs)]
        last_start = max(c["start"] for c in convs)
        done, pending = await asyncio.wait(tasks, timeout=last_start + drain)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        span = time.perf_counter() - start
    if pending:
        log(f"  {len(pending)} conversations cut at the drain limit")
    return outcomes, span, turns


def targets(quick: bool) -> list[tuple[str, str]]:
    if quick:
        return [("nvllm", "load"), ("vllm-router", "cache_aware")]
    # Interleaved, so that drift of a shared machine does not favour one router.
    lists = [[("nvllm", p) for p in NVLLM_POLICIES], [("vllm-router", p) for p in VLLM_ROUTER_POLICIES],
             [("sglang-router", p) for p in SGLANG_ROUTER_POLICIES]]
    out = []
    for i in range(max(map(len, lists))):
        out += [lst[i] for lst in lists if i < len(lst)]
    return out


async def measure_once(name: str, policy: str, workload: str, logdir, seed: int, *, duration: float,
                       n_convs: int, window: float, drain: float) -> dict[str, Any]:
    """One run of one target on a fresh fleet: outcomes and counters."""
    rate = LOAD * capacity()["fleet"]
    async with Stack(logdir) as stack:
        fleet = await Fleet(stack, FLEET, name=f"fake-{workload}-{name}-{policy}-{seed}").ready()
        target = await start_target(stack, fleet, name, policy)
        before = await fleet.stats()
        hits0, queries0 = await fleet.prefix_counters()
        async with Meter(target.pids) as meter:
            if workload == "mixed":
                plan = mixed_plan(seed, duration, rate)
                outcomes, span = await open_loop(target, plan, timeout=TIMEOUT, drain=drain)
                extras = [{"at": round(p.at, 3), "prompt_words": p.body["messages"][0]["content"].count(" ") + 1,
                           "max_tokens": p.body["max_tokens"]} for p in plan]
            else:
                outcomes, span, extras = await run_conversations(target, conversations(seed, n_convs, window),
                                                                 drain=drain)
        hits1, queries1 = await fleet.prefix_counters()
        after = await fleet.stats()
    save_raw(f"routing-{workload}-{name}-{policy}" + (f"-seed{seed}" if seed != 1 else ""), outcomes, extras)
    return {"target": target, "outcomes": outcomes, "span": span, "hits": hits1 - hits0,
            "queries": queries1 - queries0, "cpu": meter.cpu, "rss_peak": meter.rss_peak,
            "served": [a["completed"] - b["completed"] for a, b in zip(after, before, strict=True)]}


async def measure(name: str, policy: str, workload: str, logdir, seeds: Sequence[int], **sizes: Any
                  ) -> dict[str, Any]:
    """A target over one run per seed, pooled: percentiles over every request
    of every run, throughput and hit rate over their sums."""
    runs = [await measure_once(name, policy, workload, logdir, seed, **sizes) for seed in seeds]
    target = runs[0]["target"]
    outcomes = [o for r in runs for o in r["outcomes"]]
    row = summarize(outcomes, sum(r["span"] for r in runs))
    served = [sum(col) for col in zip(*(r["served"] for r in runs), strict=True)]
    queries = sum(r["queries"] for r in runs)
    row.update({
        "target": target.name, "policy": target.policy, "command": target.command, "runs": len(runs),
        "prefix_hit_rate": sum(r["hits"] for r in runs) / queries if queries else 0.0,
        "node_share": [s / max(sum(served), 1) for s in served],
        "router_cpu_s": sum(r["cpu"] for r in runs), "router_rss_peak": max(r["rss_peak"] for r in runs),
        "per_run": [{"seed": seed, **{k: v for k, v in summarize(r["outcomes"], r["span"]).items()
                                      if k in ("ttft_p99", "e2e_p99", "errors")},
                     "prefix_hit_rate": r["hits"] / r["queries"] if r["queries"] else 0.0,
                     "max_share": max(r["served"]) / max(sum(r["served"]), 1)}
                    for seed, r in zip(seeds, runs, strict=True)],
    })
    log(f"  {workload} {target.label}: TTFT p50/p99 {secs(row['ttft_p50'])}/{secs(row['ttft_p99'])} s, "
        f"e2e p50/p99 {secs(row['e2e_p50'])}/{secs(row['e2e_p99'])} s, {row['req_per_s']:.2f} req/s, "
        f"hit {row['prefix_hit_rate']:.1%}, errors {row['errors']}, share "
        + "/".join(f"{s:.0%}" for s in row["node_share"]) + (f" ({len(runs)} runs)" if len(runs) > 1 else ""))
    return row


def table(rows: list[dict[str, Any]]) -> str:
    def best(key: str, pick=min) -> float:
        values = [r[key] for r in rows if r[key] is not None]
        return pick(values) if values else float("nan")

    marks = {k: best(k) for k in ("ttft_p50", "ttft_p99", "e2e_p50", "e2e_p99")}
    marks["prefix_hit_rate"] = best("prefix_hit_rate", max) or float("nan")  # no bold when all are 0

    def cell(row: dict[str, Any], key: str) -> str:
        text = secs(row[key]) if key != "prefix_hit_rate" else f"{row[key]:.1%}"
        return f"**{text}**" if row[key] is not None and row[key] == marks[key] else text

    lines = [[r["target"], r["policy"], cell(r, "ttft_p50"), cell(r, "ttft_p99"), cell(r, "e2e_p50"),
              cell(r, "e2e_p99"), f"{r['req_per_s']:.2f}", cell(r, "prefix_hit_rate"), r["errors"],
              " / ".join(f"{s:.0%}" for s in r["node_share"])] for r in rows]
    headers = ["router", "policy", "TTFT p50 s", "TTFT p99 s", "e2e p50 s", "e2e p99 s", "req/s",
               "prefix hit", "errors", "share per node (speeds " + "/".join(f"{s:g}" for s in SPEEDS) + ")"]
    return markdown_table(headers, lines)


def verdict(rows: list[dict[str, Any]]) -> str:
    """Whether nvllm's default beats every other router's policy on the p99s
    and matches the best prefix-hit rate."""
    ours = next((r for r in rows if r["target"] == "nvllm" and r["policy"] == "load"), None)
    others = [r for r in rows if r["target"] != "nvllm"]
    if ours is None or not others:
        return ""
    lines = []
    for key, label in (("ttft_p99", "TTFT p99"), ("e2e_p99", "end-to-end p99")):
        rival = min(others, key=lambda r: r[key] if r[key] is not None else float("inf"))
        ok = ours[key] is not None and rival[key] is not None and ours[key] < rival[key]
        lines.append(f"- {label}: nvllm load {secs(ours[key])} s vs best other {rival['target']} {rival['policy']} "
                     f"{secs(rival[key])} s: {'met' if ok else 'MISSED'}")
    if any(r["prefix_hit_rate"] > 0.01 for r in rows):
        rival = max(others, key=lambda r: r["prefix_hit_rate"])
        ok = ours["prefix_hit_rate"] >= rival["prefix_hit_rate"]
        lines.append(f"- prefix-cache hit rate: nvllm load {ours['prefix_hit_rate']:.1%} vs best other "
                     f"{rival['target']} {rival['policy']} {rival['prefix_hit_rate']:.1%}: {'met' if ok else 'MISSED'}")
        # A policy that sends (nearly) everything to one node trivially keeps every prefix there.
        spread = [r for r in others
                  if max(run.get("max_share", max(r["node_share"])) for run in r.get("per_run", [{}])) < 0.6]
        if spread and spread != others:
            rival = max(spread, key=lambda r: r["prefix_hit_rate"])
            ok = ours["prefix_hit_rate"] >= rival["prefix_hit_rate"]
            lines.append(f"- the same among policies that spread the load (no node over 60%): best "
                         f"{rival['target']} {rival['policy']} {rival['prefix_hit_rate']:.1%}: "
                         f"{'met' if ok else 'MISSED'}")
    return "\n".join(lines)


async def calibrate(seconds: float = 20.0, seed: int = 7) -> dict[str, Any]:
    """Saturate one node of speed 1 with the b1 mix (enough clients to keep its
    queue non-empty) and compare its completion rate with mu(1)."""
    logdir = make_logdir("calibrate")
    spec = FleetSpec(speeds=(1.0,), max_num_seqs=MAX_NUM_SEQS, step_time=STEP_TIME, prefill_time_per_token=PREFILL)
    pool = [p.body for p in mixed_plan(seed, 10_000, 1.0)][:2000]
    async with Stack(logdir) as stack:
        fleet = await Fleet(stack, spec).ready()
        target = direct_target(fleet)
        outcomes, span = await closed_loop(target, lambda n: pool[n % len(pool)], concurrency=3 * MAX_NUM_SEQS,
                                           duration=seconds, timeout=TIMEOUT)
    measured = summarize(outcomes, span)["req_per_s"]
    expected = capacity()["per_node"][0]
    log(f"calibration: one node of speed 1 completes {measured:.2f} req/s; the formula says {expected:.2f}")
    return {"measured": measured, "formula": expected}


async def run(quick: bool = False, seed: int = 1, workloads: Sequence[str] = ("mixed", "multiturn"),
              only: Sequence[tuple[str, str]] | None = None, repeat: int = 1) -> dict[str, Any]:
    cap = capacity()
    rate = LOAD * cap["fleet"]
    duration = 5.0 if quick else 12.0
    n_convs, window = (8, 4.0) if quick else (24, 9.0)
    seeds = [seed + i for i in range(repeat)]
    sizes = {"duration": duration, "n_convs": n_convs, "window": window, "drain": 30.0}
    n_requests = len(mixed_plan(seed, duration, rate))
    logdir = make_logdir("routing")
    log(f"(b) routing: logs in {logdir}; capacity {cap['fleet']:.2f} req/s, offered {rate:.2f} req/s "
        f"(about {n_requests} requests in {duration:g} s)" + (f", {repeat} runs per target" if repeat > 1 else ""))
    results: dict[str, Any] = {"capacity": cap, "rate": rate, "quick": quick, "fleet": FLEET, "seeds": seeds}
    texts = []
    for workload in workloads:
        rows = []
        for name, policy in only or targets(quick):
            try:
                rows.append(await measure(name, policy, workload, logdir, seeds, **sizes))
            except RuntimeError as exc:  # a router that cannot start or route is reported, not fatal
                log(f"  {workload} {name} {policy}: FAILED: {exc}")
                rows.append({"target": name, "policy": policy, "failed": str(exc)})
        good = [r for r in rows if "failed" not in r]
        failed = [r for r in rows if "failed" in r]
        text = table(good) + ("\n\nFailed to run: " + ", ".join(f"{r['target']} {r['policy']}" for r in failed)
                              if failed else "")
        text += "\n\n" + verdict(good)
        runs = f" Each row pools {repeat} runs (seeds {seeds[0]}-{seeds[-1]})." if repeat > 1 else ""
        if workload == "mixed":
            head = (f"b1 mixed: about {n_requests} streamed chat requests per run, Poisson arrivals at {rate:.2f} "
                    f"req/s ({LOAD:.0%} of the fleet's {cap['fleet']:.2f} req/s) for {duration:g} s; prompts "
                    f"{PROMPT_RANGE[0]}-{PROMPT_RANGE[1]} words, max_tokens {OUTPUT_RANGE[0]}-{OUTPUT_RANGE[1]}, "
                    f"both log-uniform, from {USERS} users.")
        else:
            head = (f"b2 multi-turn: {n_convs} conversations of {TURNS} turns starting within {window:g} s, a shared "
                    f"{SYSTEM_WORDS}-word system prompt, questions {QUESTION_RANGE[0]}-{QUESTION_RANGE[1]} words, "
                    f"answers {ANSWER_RANGE[0]}-{ANSWER_RANGE[1]} tokens, think time {THINK_MEAN:g} s on average.")
        head += runs + f" Fleet: `{FLEET.command()}`."
        results[workload] = rows
        texts.append(head + "\n\n" + text)
    name = "routing" if len(workloads) > 1 else f"routing-{workloads[0]}"
    if only or repeat > 1:
        name += "-selected"
    write_results(name, results, "\n\n".join(texts))
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="default policies only, shorter runs (a smoke test)")
    ap.add_argument("--workload", choices=("mixed", "multiturn", "both"), default="both")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--targets", help="only these, e.g. nvllm:load,vllm-router:cache_aware")
    ap.add_argument("--repeat", type=int, default=1, help="runs per target (seeds SEED, SEED+1, ...), pooled")
    ap.add_argument("--calibrate", action="store_true", help="measure one node's capacity against the formula")
    args = ap.parse_args()
    if args.calibrate:
        asyncio.run(calibrate())
        return
    workloads = ("mixed", "multiturn") if args.workload == "both" else (args.workload,)
    only = [tuple(item.split(":", 1)) for item in args.targets.split(",")] if args.targets else None
    if only and any(len(pair) != 2 for pair in only):
        ap.error("--targets takes ROUTER:POLICY pairs separated by commas")
    asyncio.run(run(args.quick, args.seed, workloads, only, max(1, args.repeat)))


if __name__ == "__main__":
    main()
