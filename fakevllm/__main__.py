"""Command line: serve one fake vLLM endpoint, or a fleet of them on consecutive ports."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import signal
import sys

from fakevllm.lora import parse_modules
from fakevllm.metrics import METRICS_STYLES
from fakevllm.server import FakeServer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m fakevllm", description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000, help="first port (0 = any free port)")
    ap.add_argument("--model", action="append", dest="models", help="served model name (repeatable)")
    ap.add_argument("--speed", default="1.0",
                    help="speed factor; a comma-separated list is cycled over the fleet, e.g. 1,1,0.5")
    ap.add_argument("--max-num-seqs", type=int, default=16)
    ap.add_argument("--kv-tokens", type=int, default=16 * 4096)
    ap.add_argument("--max-model-len", type=int, default=None)
    ap.add_argument("--step-time", type=float, default=0.02, help="seconds per decode step")
    ap.add_argument("--prefill-time-per-token", type=float, default=0.0002)
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--metrics-style", choices=METRICS_STYLES, default="v1")
    ap.add_argument("--fleet", type=int, default=1, help="number of servers to run in this process")
    ap.add_argument("--lora-modules", nargs="*", default=[], metavar="NAME=PATH",
                    help="LoRA adapters of the first model, as vLLM's --lora-modules")
    ap.add_argument("--max-loras", type=int, default=1)
    ap.add_argument("--allow-runtime-lora-updating", action="store_true",
                    help="serve /v1/load_lora_adapter and /v1/unload_lora_adapter "
                         "(vLLM: VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)")
    return ap.parse_args(argv)


def build_servers(args: argparse.Namespace) -> list[FakeServer]:
    speeds = [float(s) for s in args.speed.split(",")]
    return [
        FakeServer(
            args.models or ["fake-model"],
            speed=speeds[i % len(speeds)],
            max_num_seqs=args.max_num_seqs,
            kv_tokens=args.kv_tokens,
            max_model_len=args.max_model_len,
            step_time=args.step_time,
            prefill_time_per_token=args.prefill_time_per_token,
            host=args.host,
            port=args.port + i if args.port else 0,
            api_key=args.api_key,
            metrics_style=args.metrics_style,
            lora_modules=parse_modules(args.lora_modules),
            max_loras=args.max_loras,
            runtime_lora_updating=args.allow_runtime_lora_updating,
        )
        for i in range(args.fleet)
    ]


def raise_fd_limit() -> None:
    # Each streaming client holds a socket; the default soft limit is often 1024.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve(servers: list[FakeServer]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    started: list[FakeServer] = []
    try:
        for server in servers:
            await server.start()
            started.append(server)
            print(server.url, flush=True)
        await stop.wait()
    finally:
        for server in started:
            await server.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.fleet < 1:
        print("--fleet must be >= 1", file=sys.stderr)
        return 2
    raise_fd_limit()
    asyncio.run(serve(build_servers(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
