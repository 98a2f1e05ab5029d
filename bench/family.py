"""(e) A family of fleets and workloads, generated from a seed, each member run
on two engine models: this repository's fake (`python -m fakevllm`) and an
independent simulator written apart from nvllm (`vllm_sim.py`, found through
--sim, by default in ../shared/bench beside the checkout). A routing idea that
wins on one and loses on the other is tuned to a fake, not to vLLM.

The members cover, between them: heterogeneous and equal speeds; 8, 16, 32, 64
and 256 batch slots; KV-bound and slot-bound nodes; prefill-heavy (RAG: long
prompts, short answers) and decode-heavy work; independent requests, multi-turn
chats and agent loops with growing contexts; Poisson and bursty arrivals; 50%,
75% and 95% of nominal capacity; 4 to 8 nodes. The seed draws each member's
concrete numbers (speeds, step costs, KV sizes), so `--seed 2` is a family that
nothing was tuned on.

Engine model (the simulator's): a step takes (base_ms + per_seq_ms x running +
prefill_ms_per_token x prefill tokens) / speed. The fake has no per-sequence
cost, so its step time is set to the simulator's at the expected occupancy
(running = load x effective slots); its prefill cost is the same per token.
Nominal capacity of a node of speed v, for E[P] uncached prompt tokens and
E[O] output tokens per request, with S = min(slots, KV tokens / (E[P] + E[O]/2))
sequences resident at once:

    mu(v) = 1000 v / (E[P] x prefill_ms_per_token + E[O] x (base_ms / S + per_seq_ms))   requests/s

The rate offered is load x the sum of mu over the nodes. It is nominal: the
simulators' batches are not always full, so "95%" is near saturation, not at it.
Where that rate would pass RATE_CEILING, every engine cost of the member is
scaled up alike (the same fleet, slower), since the load generator, both
engines and the router share one machine's cores.

Every run gets a fresh fleet and a fresh router; the same seeded requests go
to every target; targets are interleaved run by run. Results: one JSON per
(member, engine) under bench/results/family/ (kept between invocations, so a
long family can be run in parts: finished runs are skipped unless --fresh),
and bench/results/family.md, the table over everything measured.

Usage:
  bench/.venv/bin/python bench/family.py --list
  bench/.venv/bin/python bench/family.py --members 1,4 --engines fake,sim --repeat 3
  bench/.venv/bin/python bench/family.py --quick          # member 1, one run, short, both engines
  bench/.venv/bin/python bench/family.py --table          # rebuild family.md from the JSON files
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
from common import (
    MODEL,
    RESULTS,
    ROOT,
    Fleet,
    FleetSpec,
    Meter,
    Outcome,
    Planned,
    Stack,
    file_name,
    free_port,
    http_ok,
    log,
    make_logdir,
    markdown_table,
    open_loop,
    prefix_counters,
    rng_words,
    secs,
    send,
    session_for,
    session_headers,
    start_target,
    summarize,
    wait_until,
)

FAMILY_DIR = RESULTS / "family"
DEFAULT_SIM = ROOT.parent / "shared" / "bench" / "vllm_sim.py"
TIMEOUT = 180.0
TEMPLATE_TOKENS = 11  # chat template tokens the engines add around a prompt
RATE_CEILING = 12.0  # requests/s one 2-core machine drives through a Python engine model and a router

# The peers' policies worth comparing with; the best of each router's is the bar.
PEERS = ("vllm-router:cache_aware", "vllm-router:power_of_two", "vllm-router:consistent_hash",
         "sglang-router:cache_aware", "sglang-router:power_of_two", "sglang-router:manual")
BASELINE = "nvllm:round_robin"
DEFAULT_TARGETS = ("nvllm:load", "vllm-router:cache_aware", "sglang-router:cache_aware",
                   "vllm-router:consistent_hash", BASELINE)


@dataclass(frozen=True)
class Node:
    speed: float
    slots: int
    kv_tokens: int


@dataclass(frozen=True)
class Workload:
    """What clients send. `kind`: independent requests (`requests`), multi-turn
    chats (`chat`) or agent loops (`agent`: every step appends the model's
    answer and a tool's output, with almost no think time)."""

    kind: str
    prompt_median: float = 300  # words; requests only
    answer_median: float = 200  # max_tokens
    sigma: float = 0.6
    shared_share: float = 0.3  # requests that start with one of the shared system prompts
    system_prompts: int = 4
    system_words: int = 1000
    turns: int = 6  # chat / agent
    question_median: float = 60  # words a chat turn (or a tool output) adds
    think: float = 1.0  # mean seconds between a turn's answer and the next turn
    bursty: bool = False


@dataclass(frozen=True)
class Member:
    index: int
    label: str
    nodes: tuple[Node, ...]
    base_ms: float
    per_seq_ms: float
    prefill_ms_per_token: float
    workload: Workload
    load: float

    @property
    def name(self) -> str:
        return f"m{self.index:02d}-{self.label}"

    def describe(self) -> str:
        speeds = "/".join(f"{n.speed:g}" for n in self.nodes)
        slots = sorted({n.slots for n in self.nodes})
        kv = sorted({n.kv_tokens for n in self.nodes})
        w = self.workload
        shape = (f"{w.kind}, prompts ~{w.prompt_median:.0f} words, answers ~{w.answer_median:.0f}"
                 if w.kind == "requests" else
                 f"{w.kind}, {w.turns} turns of ~{w.question_median:.0f} words, answers ~{w.answer_median:.0f}, "
                 f"{w.system_prompts} system prompts of {w.system_words} words")
        return (f"{len(self.nodes)} nodes, speeds {speeds}, slots {'/'.join(map(str, slots))}, "
                f"KV {'/'.join(map(str, kv))} tokens, step {self.base_ms:.1f}+{self.per_seq_ms:.2f}/seq ms, "
                f"prefill {self.prefill_ms_per_token:.3f} ms/token; {shape}"
                f"{', bursty' if w.bursty else ''}; load {self.load:.0%}")

    # -- nominal capacity (see the module docstring) --------------------------

    def mean_tokens(self) -> tuple[float, float]:
        """(uncached prompt tokens, output tokens) per request, on average,
        when each node keeps the prefixes it has seen."""
        w = self.workload
        answer = w.answer_median * math.exp(w.sigma**2 / 2)
        if w.kind == "requests":
            prompt = w.prompt_median * math.exp(w.sigma**2 / 2) + TEMPLATE_TOKENS
            return prompt, answer  # shared system prompts are cached after the first: ignored, conservatively
        # a turn reads what is new since the last: the question (or tool output) and the previous answer
        return w.question_median * math.exp(w.sigma**2 / 2) + answer + TEMPLATE_TOKENS, answer

    def resident_tokens(self) -> float:
        """Tokens a running sequence holds in KV, on average."""
        w = self.workload
        prompt, answer = self.mean_tokens()
        if w.kind != "requests":
            prompt = w.system_words + (w.turns / 2) * prompt
        return prompt + answer / 2

    def slots_in_use(self, node: Node) -> float:
        return max(1.0, min(node.slots, node.kv_tokens / self.resident_tokens()))

    def node_capacity(self, node: Node) -> float:
        prompt, answer = self.mean_tokens()
        s = self.slots_in_use(node)
        ms = prompt * self.prefill_ms_per_token + answer * (self.base_ms / s + self.per_seq_ms)
        return 1000 * node.speed / ms

    def rate(self) -> float:
        """Requests (or turns) per second offered."""
        return self.load * sum(self.node_capacity(n) for n in self.nodes)


# -- the family ------------------------------------------------------------------

# (label, nodes, speeds, slots, bound, workload, load): the grid the seed fills in.
SHAPES: tuple[tuple[str, int, str, int, str, str, float], ...] = (
    ("hetero4-s16-mixed", 4, "hetero", 16, "slot", "mixed", 0.75),
    ("equal4-s8-chat", 4, "equal", 8, "slot", "chat", 0.75),
    ("hetero8-s64-rag", 8, "hetero", 64, "slot", "rag", 0.75),
    ("equal4-s256-kv-decode", 4, "equal", 256, "kv", "decode", 0.75),
    ("hetero4-s16-agent", 4, "hetero", 16, "slot", "agent", 0.75),
    ("hetero6-s32-mixed-bursty", 6, "hetero", 32, "slot", "mixed-bursty", 0.75),
    ("equal8-s16-mixed", 8, "equal", 16, "slot", "mixed", 0.5),
    ("hetero4-s16-chat", 4, "hetero", 16, "slot", "chat", 0.95),
    ("hetero4-s64-kv-mixed", 4, "hetero", 64, "kv", "mixed", 0.95),
    ("hetero8-s256-kv-decode", 8, "hetero", 256, "kv", "decode", 0.5),
    ("equal4-s16-rag-bursty", 4, "equal", 16, "slot", "rag-bursty", 0.95),
    ("hetero8-s64-agent", 8, "hetero", 64, "slot", "agent", 0.5),
)


def workload(kind: str, rng: random.Random) -> Workload:
    bursty = kind.endswith("-bursty")
    kind = kind.removesuffix("-bursty")
    if kind == "mixed":
        w = Workload("requests", prompt_median=rng.uniform(200, 400), answer_median=rng.uniform(120, 250))
    elif kind == "rag":
        w = Workload("requests", prompt_median=rng.uniform(1200, 2500), answer_median=rng.uniform(20, 50),
                     shared_share=0.1, sigma=0.4)
    elif kind == "decode":
        w = Workload("requests", prompt_median=rng.uniform(60, 150), answer_median=rng.uniform(400, 800),
                     shared_share=0.2, sigma=0.4)
    elif kind == "chat":
        w = Workload("chat", answer_median=rng.uniform(100, 200), system_prompts=8,
                     system_words=rng.randrange(300, 800), turns=6, question_median=rng.uniform(30, 90),
                     think=rng.uniform(0.5, 2.0))
    elif kind == "agent":
        w = Workload("agent", answer_median=rng.uniform(40, 90), system_prompts=2,
                     system_words=rng.randrange(1200, 2500), turns=rng.randrange(8, 13),
                     question_median=rng.uniform(150, 350), think=0.05, sigma=0.5)
    else:
        raise ValueError(kind)
    return replace(w, bursty=bursty)


def family(seed: int) -> list[Member]:
    rng = random.Random(seed)
    members = []
    for index, (label, count, speeds, slots, bound, kind, load) in enumerate(SHAPES, start=1):
        w = workload(kind, rng)
        if speeds == "equal":
            node_speeds = [1.0] * count
        else:  # one full-speed node, the rest spread down to a third of it
            node_speeds = sorted([1.0] + [round(rng.uniform(0.3, 1.0), 2) for _ in range(count - 1)], reverse=True)
        member = Member(index, label, (), base_ms=rng.uniform(6, 12), per_seq_ms=rng.uniform(0.05, 0.3),
                        prefill_ms_per_token=rng.uniform(0.01, 0.05), workload=w, load=load)
        resident = member.resident_tokens()
        # Slot-bound: KV for three times the slots. KV-bound: KV runs out at 20-50% of the slots.
        factor = 3.0 if bound == "slot" else rng.uniform(0.2, 0.5)
        kv = int(math.ceil(slots * resident * factor / 16) * 16)
        member = replace(member, nodes=tuple(Node(s, slots, kv) for s in node_speeds))
        # Slower engines, same shape: the load generator, the engines and the router share this
        # machine's cores, and a rate they cannot drive would measure the machine, not the router.
        scale = max(1.0, member.rate() / RATE_CEILING)
        members.append(replace(member, base_ms=member.base_ms * scale, per_seq_ms=member.per_seq_ms * scale,
                               prefill_ms_per_token=member.prefill_ms_per_token * scale))
    return members


# -- engines: the fake or the simulator, behind one face ----------------------------


class SimFleet:
    """The independent simulator: every node of the member in one process, on
    ports picked here. For sglang-router, each node's second listener (the
    same engine, /get_load in SGLang's array form)."""

    def __init__(self, stack: Stack, member: Member, sim: Path, python: str) -> None:
        self.member = member
        self.ports = [free_port() for _ in member.nodes]
        self.sglang_ports = [free_port() for _ in member.nodes]
        backends = [{"port": p, "sglang_port": sp, "name": f"n{i}", "speed": n.speed, "max_num_seqs": n.slots,
                     "kv_tokens": n.kv_tokens}
                    for i, (p, sp, n) in enumerate(zip(self.ports, self.sglang_ports, member.nodes, strict=True))]
        doc = {"defaults": {"models": [MODEL], "base_ms": member.base_ms, "per_seq_ms": member.per_seq_ms,
                            "prefill_ms_per_token": member.prefill_ms_per_token, "tokens_per_chunk": 1},
               "backends": backends}
        spec = stack.logdir / f"fleet-{member.name}.json"
        spec.write_text(json.dumps(doc, indent=1))
        self.proc = stack.start(f"sim-{member.name}",
                                [python, str(sim), "--fleet", str(spec), "--log-level", "WARNING"])
        self.urls = [f"http://127.0.0.1:{p}" for p in self.ports]

    async def ready(self) -> SimFleet:
        for url in self.urls:
            await wait_until(lambda u=url: http_ok(u + "/health"), f"{url}/health", self.proc)
        return self

    def for_router(self, name: str) -> Any:
        if name != "sglang-router":
            return self
        return _Urls([f"http://127.0.0.1:{p}" for p in self.sglang_ports], self.sglang_ports, self.proc)

    async def served(self) -> list[int]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
            out = []
            for url in self.urls:
                async with s.get(url + "/_sim/stats") as r:
                    out.append(int((await r.json())["success"]))
            return out

    async def prefix_counters(self) -> tuple[float, float]:
        return await prefix_counters(self.urls)


@dataclass
class _Urls:
    urls: list[str]
    ports: list[int]
    proc: Any


class FakeFleet:
    """This repository's fake: one `python -m fakevllm` process per group of
    nodes that share slots and KV size (its options are per process)."""

    def __init__(self, stack: Stack, member: Member) -> None:
        self.member = member
        groups: dict[tuple[int, int], list[float]] = {}
        for n in member.nodes:
            groups.setdefault((n.slots, n.kv_tokens), []).append(n.speed)
        self.fleets = []
        for (slots, kv), speeds in groups.items():
            running = member.load * member.slots_in_use(Node(1.0, slots, kv))
            step = (member.base_ms + member.per_seq_ms * running) / 1000
            spec = FleetSpec(speeds=tuple(speeds), max_num_seqs=slots, step_time=step,
                             prefill_time_per_token=member.prefill_ms_per_token / 1000, kv_tokens=kv)
            self.fleets.append(Fleet(stack, spec, name=f"fake-{member.name}-{slots}-{kv}"))
        self.urls: list[str] = []

    async def ready(self) -> FakeFleet:
        for fleet in self.fleets:
            await fleet.ready()
        self.urls = [u for f in self.fleets for u in f.urls]
        self.ports = [p for f in self.fleets for p in f.ports]
        self.proc = self.fleets[0].proc
        return self

    def for_router(self, name: str) -> Any:
        return self

    async def served(self) -> list[int]:
        return [s["completed"] for f in self.fleets for s in await f.stats()]

    async def prefix_counters(self) -> tuple[float, float]:
        return await prefix_counters(self.urls)


# -- load ------------------------------------------------------------------------------


def _lognormal(rng: random.Random, median: float, sigma: float, lo: int = 1, hi: int = 8000) -> int:
    return max(lo, min(hi, int(round(median * math.exp(rng.gauss(0, sigma))))))


def arrivals(rng: random.Random, rate: float, duration: float, bursty: bool) -> list[float]:
    """Poisson arrivals at `rate`; bursty: the rate changes every 2 s, a quarter
    of the periods at 3x the mean, the rest at a third of it (same mean)."""
    times, t = [], 0.0
    while True:
        period_rate = rate if not bursty else rate * (3.0 if rng.random() < 0.25 else 1 / 3)
        period_end = t + 2.0 if bursty else duration
        while True:
            t += rng.expovariate(period_rate)
            if t >= min(period_end, duration):
                break
            times.append(t)
        t = period_end
        if t >= duration:
            return times


def system_prompts(rng: random.Random, w: Workload) -> list[str]:
    return [f"System {k}: " + rng_words(rng, w.system_words) for k in range(w.system_prompts)]


def request_plan(member: Member, seed: int, duration: float) -> list[Planned]:
    rng = random.Random(seed)
    w = member.workload
    systems = system_prompts(rng, w)
    plan = []
    for i, at in enumerate(arrivals(rng, member.rate(), duration, w.bursty)):
        messages = []
        if rng.random() < w.shared_share:
            messages.append({"role": "system", "content": rng.choice(systems)})
        messages.append({"role": "user", "content": rng_words(rng, _lognormal(rng, w.prompt_median, w.sigma))})
        user = f"user-{i % 64}"
        body = {"model": MODEL, "messages": messages, "max_tokens": _lognormal(rng, w.answer_median, w.sigma),
                "stream": True, "user": user}
        plan.append(Planned(at, body, session_headers(user)))
    return plan


@dataclass
class Conversation:
    start: float
    system: str
    turns: list[tuple[str, int, float]] = field(default_factory=list)  # (text, max_tokens, think)


def conversation_plan(member: Member, seed: int, duration: float) -> list[Conversation]:
    """Conversations start so that their turns arrive at the member's rate."""
    rng = random.Random(seed)
    w = member.workload
    systems = system_prompts(rng, w)
    starts = arrivals(rng, member.rate() / w.turns, duration, w.bursty)
    return [Conversation(at, rng.choice(systems),
                         [(rng_words(rng, _lognormal(rng, w.question_median, w.sigma)),
                           _lognormal(rng, w.answer_median, w.sigma), rng.expovariate(1 / w.think))
                          for _ in range(w.turns)])
            for at in starts]


async def run_conversations(target: Any, convs: Sequence[Conversation], member: Member, drain: float
                            ) -> tuple[list[Outcome], float]:
    """Each turn sends the whole history: chats add the user's next question,
    agent loops the model's answer and then a tool's output."""
    outcomes: list[Outcome] = []
    agent = member.workload.kind == "agent"
    async with session_for(target, timeout=TIMEOUT) as session:
        start = time.perf_counter()

        async def converse(k: int, conv: Conversation) -> None:
            await asyncio.sleep(max(0.0, start + conv.start - time.perf_counter()))
            messages = [{"role": "system", "content": conv.system}]
            url = target.urls[k % len(target.urls)]
            key = f"conversation-{k}"
            for text, max_tokens, think in conv.turns:
                messages.append({"role": "tool" if agent and len(messages) > 1 else "user", "content": text})
                body = {"model": MODEL, "messages": messages, "max_tokens": max_tokens, "stream": True,
                        "user": key, "prompt_cache_key": key}
                outcome = await send(session, url, body, t0=time.perf_counter(), collect=True,
                                     headers=session_headers(key))
                outcomes.append(outcome)
                if not outcome.ok:
                    return
                messages = [*messages, {"role": "assistant", "content": outcome.text}]
                await asyncio.sleep(think)

        tasks = [asyncio.create_task(converse(k, c)) for k, c in enumerate(convs)]
        last = max((c.start for c in convs), default=0.0)
        _, pending = await asyncio.wait(tasks, timeout=last + drain) if tasks else (set(), set())
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        outcomes += [Outcome(False, 0, "unfinished at drain")] * len(pending)
        return outcomes, time.perf_counter() - start


# -- one run, many runs ---------------------------------------------------------------


async def run_once(member: Member, engine: str, config: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    name, policy = config.split(":", 1)
    async with Stack(make_logdir(f"family-{member.name}")) as stack:
        fleet = await start_fleet(stack, member, engine, args)
        target = await start_target(stack, fleet.for_router(name), name, policy)
        served0, (hits0, queries0) = await fleet.served(), await fleet.prefix_counters()
        async with Meter(target.pids) as meter:
            if member.workload.kind == "requests":
                outcomes, span = await open_loop(target, request_plan(member, seed, args.duration),
                                                 timeout=TIMEOUT, drain=args.drain)
            else:
                outcomes, span = await run_conversations(target, conversation_plan(member, seed, args.duration),
                                                         member, args.drain)
        served1, (hits1, queries1) = await fleet.served(), await fleet.prefix_counters()
    raw = result_path(member, engine, args.seed).with_name(f"{member.name}-{engine}-{file_name(config)}-{seed}.raw")
    raw.parent.mkdir(parents=True, exist_ok=True)
    with open(raw, "w") as f:  # one line a request, for a look at the tails
        for o in outcomes:
            f.write(json.dumps({"ok": o.ok, "error": o.error, "ttft": o.ttft, "e2e": o.e2e, "node": o.node,
                                "events": o.events}) + "\n")
    row = summarize(outcomes, span)
    served = [b - a for a, b in zip(served0, served1, strict=True)]
    row.update({"config": config, "seed": seed, "hits": hits1 - hits0, "queries": queries1 - queries0,
                "served": served, "cpu_s": meter.cpu,
                "ttft": sorted(o.ttft for o in outcomes if o.ok and o.ttft is not None),
                "e2e": sorted(o.e2e for o in outcomes if o.ok and o.e2e is not None)})
    hit = row["hits"] / row["queries"] if row["queries"] else 0.0
    log(f"  {member.name} {engine} {config} seed {seed}: TTFT p50/p99 {secs(row['ttft_p50'])}/"
        f"{secs(row['ttft_p99'])} s, e2e p99 {secs(row['e2e_p99'])} s, {row['req_per_s']:.2f} req/s, hit {hit:.1%}, "
        f"errors {row['errors']}, share " + "/".join(str(s) for s in served))
    return row


async def start_fleet(stack: Stack, member: Member, engine: str, args: argparse.Namespace) -> Any:
    """The member's fleet on one engine. The simulator listens on ports picked
    here, which another process on the machine may take first: then again."""
    if engine != "sim":
        return await FakeFleet(stack, member).ready()
    for attempt in range(3):
        try:
            return await SimFleet(stack, member, Path(args.sim), sys.executable).ready()
        except RuntimeError as exc:
            if "address already in use" not in str(exc) or attempt == 2:
                raise
            log(f"  a port of the simulator was taken; starting it again ({exc.__class__.__name__})")
    raise AssertionError("unreachable")


def result_path(member: Member, engine: str, seed: int) -> Path:
    return family_dir() / f"seed{seed}" / f"{member.name}-{engine}.json"


def family_dir() -> Path:
    """bench/results/family, or BENCH_FAMILY_DIR for experiments kept apart."""
    return Path(os.environ.get("BENCH_FAMILY_DIR", FAMILY_DIR))


async def run_member(member: Member, engine: str, configs: Sequence[str], args: argparse.Namespace) -> None:
    path = result_path(member, engine, args.seed)
    doc = json.loads(path.read_text()) if path.exists() and not args.fresh else {}
    doc.update({"member": member.name, "describe": member.describe(), "spec": asdict(member), "engine": engine,
                "rate": member.rate(), "duration": args.duration})
    runs: list[dict[str, Any]] = doc.setdefault("runs", [])
    done = {(r["config"], r["seed"]) for r in runs}
    log(f"{member.name} on {engine}: {member.describe()}; {member.rate():.2f} requests/s")
    for rep in range(args.repeat):
        seed = 1000 * args.seed + rep + 1
        order = list(configs[rep % len(configs):]) + list(configs[:rep % len(configs)])  # interleaved
        for config in order:
            if (config, seed) in done:
                continue
            runs.append(await run_once(member, engine, config, seed, args))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(doc))


# -- the table -------------------------------------------------------------------------


def pooled(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    from common import percentile

    ttft = [t for r in runs for t in r["ttft"]]
    e2e = [t for r in runs for t in r["e2e"]]
    queries = sum(r["queries"] for r in runs)
    served = [sum(col) for col in zip(*(r["served"] for r in runs), strict=True)]
    return {"runs": len(runs), "ttft_p50": percentile(ttft, 50), "ttft_p99": percentile(ttft, 99),
            "e2e_p99": percentile(e2e, 99), "req_per_s": sum(r["ok"] for r in runs) / sum(r["span_s"] for r in runs),
            "errors": sum(r["errors"] for r in runs),
            "hit": sum(r["hits"] for r in runs) / queries if queries else 0.0,
            "max_share": max(served) / max(sum(served), 1), "cpu_s": sum(r["cpu_s"] for r in runs) / len(runs)}


def member_rows(doc: dict[str, Any]) -> list[list[Any]]:
    by_config: dict[str, list[dict[str, Any]]] = {}
    for run in doc["runs"]:
        by_config.setdefault(run["config"], []).append(run)
    stats = {c: pooled(r) for c, r in by_config.items()}
    ours = stats.get("nvllm:load")
    peers = {c: s for c, s in stats.items() if not c.startswith("nvllm")}
    # A policy that piles most of the load on one node keeps every prefix there; it does not set the hit bar.
    spread = {c: s for c, s in peers.items() if s["max_share"] <= 1.5 / len(doc["spec"]["nodes"]) + 0.1}
    rows = []
    for config, s in sorted(stats.items(), key=lambda kv: (not kv[0].startswith("nvllm:load"), kv[0])):
        rows.append([doc["member"], doc["engine"], config, s["runs"], secs(s["ttft_p50"]), secs(s["ttft_p99"]),
                     secs(s["e2e_p99"]), f"{s['req_per_s']:.2f}", f"{s['hit']:.1%}", f"{s['max_share']:.0%}",
                     s["errors"], f"{s['cpu_s']:.1f}"])
    if ours and peers:
        best_ttft = min(peers.items(), key=lambda kv: kv[1]["ttft_p99"] or math.inf)
        best_e2e = min(peers.items(), key=lambda kv: kv[1]["e2e_p99"] or math.inf)
        best_hit = max(spread.items(), key=lambda kv: kv[1]["hit"]) if spread else None
        verdicts = [
            f"TTFT p99 {ours['ttft_p99'] / best_ttft[1]['ttft_p99']:.2f}x best peer ({best_ttft[0]})",
            f"E2E p99 {ours['e2e_p99'] / best_e2e[1]['e2e_p99']:.2f}x ({best_e2e[0]})",
        ]
        if best_hit:
            verdicts.append(f"hit {ours['hit'] - best_hit[1]['hit']:+.1%} vs {best_hit[0]}")
        rows.append([doc["member"], doc["engine"], "**verdict**", "", "", "; ".join(verdicts), "", "", "", "", "", ""])
    return rows


def table(seed: int) -> str:
    directory = family_dir() / f"seed{seed}"
    docs = [json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))]
    if not docs:
        return f"no results under {directory}"
    lines = [f"## Family of seed {seed}\n"]
    for doc in docs:
        if doc["engine"] == "fake" or not any(d["member"] == doc["member"] and d["engine"] == "fake" for d in docs):
            lines.append(f"- **{doc['member']}**: {doc['describe']}; {doc['rate']:.2f} requests/s offered")
    headers = ["member", "engine", "target", "runs", "TTFT p50 s", "TTFT p99 s", "E2E p99 s", "req/s", "prefix hit",
               "busiest node", "errors", "router CPU s/run"]
    lines += ["", markdown_table(headers, [row for doc in docs for row in member_rows(doc)])]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1, help="draws the family's numbers and the requests")
    ap.add_argument("--members", default="all", help="comma-separated member numbers (see --list)")
    ap.add_argument("--engines", default="fake,sim", help="fake, sim or both")
    ap.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                    help=f"ROUTER:POLICY,...; the peers worth trying: {','.join(PEERS)}")
    ap.add_argument("--repeat", type=int, default=3, help="runs per target, pooled")
    ap.add_argument("--duration", type=float, default=40.0, help="seconds of arrivals per run")
    ap.add_argument("--drain", type=float, default=60.0, help="seconds a run may take after its last arrival")
    ap.add_argument("--sim", default=str(DEFAULT_SIM), help="path of the independent simulator, vllm_sim.py")
    ap.add_argument("--fresh", action="store_true", help="run again what was measured already")
    ap.add_argument("--quick", action="store_true", help="member 1, one run of 15 s per target")
    ap.add_argument("--list", action="store_true", help="describe the family and stop")
    ap.add_argument("--table", action="store_true", help="rebuild bench/results/family.md and stop")
    args = ap.parse_args(argv)
    members = family(args.seed)
    if args.list:
        for m in members:
            print(f"{m.index:2d} {m.name}: {m.describe()}; {m.rate():.2f} requests/s")
        return
    if args.quick:
        args.members, args.repeat, args.duration, args.drain = "1", 1, 15.0, 30.0
    if not args.table:
        chosen = members if args.members == "all" else [members[int(i) - 1] for i in args.members.split(",")]
        engines = args.engines.split(",")
        if "sim" in engines and not Path(args.sim).exists():
            raise SystemExit(f"no simulator at {args.sim}: pass --sim PATH, or --engines fake")
        for member in chosen:
            for engine in engines:
                asyncio.run(run_member(member, engine, args.targets.split(","), args))
    text = table(args.seed)
    (family_dir().parent / "family.md" if "BENCH_FAMILY_DIR" not in os.environ
     else family_dir() / "family.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
