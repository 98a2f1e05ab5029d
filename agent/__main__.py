"""`python -m agent`: parse the settings, wire the clients, run until SIGTERM."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence

from agent.config import ConfigError, cleartext_warning, load_config
from agent.logs import init_logging
from agent.loop import Agent
from agent.nvllm import NvllmClient
from agent.vllm import VllmClient


def install_signal_handlers(stop: threading.Event, hurry: threading.Event) -> None:
    """First SIGTERM/SIGINT: drain and leave. Second: stop waiting for requests.
    The handlers only set events; logging from a handler could deadlock."""

    def handle(signum: int, frame: object) -> None:
        (hurry if stop.is_set() else stop).set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = load_config(sys.argv[1:] if argv is None else argv, os.environ)
    except ConfigError as exc:
        print(f"agent: {exc}", file=sys.stderr)
        return 2
    init_logging(config.log_level, config.log_json)
    warning = cleartext_warning(config.server)
    if warning:
        logging.getLogger("nvllm.agent").warning("%s", warning)
    stop, hurry = threading.Event(), threading.Event()
    install_signal_handlers(stop, hurry)
    agent = Agent(
        config,
        NvllmClient(config.server, config.token, config.request_timeout),
        VllmClient(config.vllm_url, config.request_timeout, config.vllm_api_key),
        stop=stop,
        hurry=hurry,
    )
    return agent.run()


if __name__ == "__main__":
    sys.exit(main())
