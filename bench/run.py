"""Run the whole benchmark suite, or some of it, and collect the tables.

    bench/.venv/bin/python bench/run.py            # everything (about 20 minutes on 2 cores)
    bench/.venv/bin/python bench/run.py --quick    # a smoke run (about 2 minutes)
    bench/.venv/bin/python bench/run.py overhead streams

Each scenario writes bench/results/<scenario>.json (every figure, the machine,
the date) and <scenario>.md; this script then writes bench/results/RESULTS.md,
every table under the command that produced it.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import instances
import overhead
import routing
import streams
from common import RESULTS, log, machine

SCENARIOS = {
    "overhead": ("(a) Overhead with an instant backend", "overhead.py", overhead.run, ("overhead",)),
    "routing": ("(b) Routing quality, every policy", "routing.py", routing.run, ("routing",)),
    "streams": ("(c) 1,000 concurrent streams through one instance", "streams.py", streams.run, ("streams",)),
    "instances": ("(d) Two instances on one Redis against one", "instances.py", instances.run, ("instances",)),
}


def collect(quick: bool) -> None:
    info = machine()
    parts = [f"# Benchmark results\n\n{info['date']}, {info['cpus']} CPUs, Python {info['python']}, "
             f"Linux {info['kernel']}{' (quick smoke run: too short to judge by)' if quick else ''}.\n"]
    for title, script, _, names in SCENARIOS.values():
        for name in names:
            path = RESULTS / f"{name}.md"
            if path.exists():
                flag = " --quick" if quick else ""
                parts.append(f"## {title}\n\nCommand: `bench/.venv/bin/python bench/{script}{flag}`\n\n"
                             + path.read_text())
    (RESULTS / "RESULTS.md").write_text("\n".join(parts))
    log(f"tables collected in {RESULTS / 'RESULTS.md'}")


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
        asyncio.run(SCENARIOS[name][2](quick=args.quick, seed=args.seed))
    collect(args.quick)
    log(f"done in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
