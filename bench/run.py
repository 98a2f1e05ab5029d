"""Run the whole benchmark suite, or some of it, and collect the tables.

    bench/.venv/bin/python bench/run.py            # everything (about 16 minutes on 2 cores)
    bench/.venv/bin/python bench/run.py --quick    # a smoke run (about 2 minutes)
    bench/.venv/bin/python bench/run.py overhead streams

Each scenario writes bench/results/<scenario>.json (every figure, the machine,
the date) and <scenario>.md; this script then writes bench/results/RESULTS.md,
every table under the command that produced it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import instances
import overhead
import routing
import streams
from common import log, machine, results_dir

SCENARIOS = {
    "overhead": overhead.run,
    "routing": routing.run,
    "streams": streams.run,
    "instances": instances.run,
}
# (title, result file) in the order of RESULTS.md; floor (floor.py) and
# routing-*-selected (routing.py --targets ... --repeat N) are run by hand.
SECTIONS = [
    ("(a) Overhead with an instant backend", "overhead"),
    ("(a) The floor: gunicorn + gevent + Flask without nvllm", "floor"),
    ("(b) Routing quality, every policy of every router", "routing"),
    ("(b) Routing quality, the leading policies over 3 runs each: mixed", "routing-mixed-selected"),
    ("(b) Routing quality, the leading policies over 3 runs each: multi-turn", "routing-multiturn-selected"),
    ("(c) 1,000 concurrent streams through one instance", "streams"),
    ("(d) Two instances on one Redis against one", "instances"),
]


def collect(quick: bool = False) -> None:
    directory = results_dir(quick)
    info = machine()
    parts = [f"# Benchmark results\n\nCollected {info['date']}; {info['cpus']} CPUs, Python {info['python']}, "
             f"Linux {info['kernel']}. Each table stands under the command that produced it.\n"]
    for title, name in SECTIONS:
        md, js = directory / f"{name}.md", directory / f"{name}.json"
        if not md.exists():
            continue
        data = json.loads(js.read_text()) if js.exists() else {}
        command = data.get("command") or f"bench/.venv/bin/python bench/run.py {name.split('-')[0]}"
        when = data.get("machine", {}).get("date", "")
        if data.get("machine", {}).get("nvllm"):
            when += f", nvllm {data['machine']['nvllm']}"
        quick = " (a quick smoke run: too short to judge by)" if data.get("quick") else ""
        parts.append(f"## {title}\n\nCommand: `{command}`{quick}  \nRun: {when}\n\n" + md.read_text())
    (directory / "RESULTS.md").write_text("\n".join(parts))
    log(f"tables collected in {directory / 'RESULTS.md'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=f"any of {', '.join(SCENARIOS)}; default: all")
    ap.add_argument("--quick", action="store_true", help="short runs of the default policies (a smoke test)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        ap.error(f"unknown scenario {', '.join(sorted(unknown))}; choose from {', '.join(SCENARIOS)}")
    started = time.monotonic()
    for name in args.scenarios or list(SCENARIOS):
        asyncio.run(SCENARIOS[name](quick=args.quick, seed=args.seed))
    collect(args.quick)
    log(f"done in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
