"""`python -m agent`'s entry point: bad settings exit 2, signals start and then hurry the drain."""

from __future__ import annotations

import json
import logging
import signal
import threading

import pytest

from agent.__main__ import install_signal_handlers, main
from agent.logs import JsonFormatter


def test_bad_settings_exit_2_naming_the_flag(capsys):
    assert main(["--server", "nvllm.internal", "--token", "t"]) == 2
    assert "--server must be an http:// or https:// URL" in capsys.readouterr().err


def test_missing_token_exits_2(capsys):
    assert main(["--server", "http://nvllm.internal:5000"]) == 2
    assert "--token" in capsys.readouterr().err


@pytest.fixture
def restore_handlers():
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_first_signal_stops_second_hurries(restore_handlers):
    stop, hurry = threading.Event(), threading.Event()
    install_signal_handlers(stop, hurry)
    signal.raise_signal(signal.SIGTERM)
    assert stop.is_set() and not hurry.is_set()
    signal.raise_signal(signal.SIGINT)
    assert hurry.is_set()


def test_json_log_lines():
    record = logging.LogRecord("nvllm.agent", logging.WARNING, __file__, 1, "node %s gone", ("n1",), None)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["level"] == "WARNING" and entry["message"] == "node n1 gone"
    assert entry["logger"] == "nvllm.agent" and entry["time"].endswith("+00:00")


@pytest.mark.parametrize(("server", "warns"), [
    ("http://nvllm.internal:5000", True),
    ("http://10.0.0.5:5000", True),
    ("https://nvllm.internal", False),
    ("http://127.0.0.1:5000", False),
    ("http://localhost:5000", False),
    ("http://[::1]:5000", False),
])
def test_a_cleartext_url_to_another_host_is_warned_of_at_start(monkeypatch, caplog, server, warns):
    import agent.__main__ as entry

    class Stop:
        def __init__(self, *args, **kwargs) -> None:
            pass

        def run(self) -> int:
            return 0

    monkeypatch.setattr(entry, "Agent", Stop)
    monkeypatch.setattr(entry, "install_signal_handlers", lambda stop, hurry: None)
    monkeypatch.setattr(entry, "init_logging", lambda level, json_lines: None)
    with caplog.at_level(logging.WARNING):
        assert main(["--server", server, "--token", "t", "--node-id", "n1", "--advertise-address", "10.0.0.9"]) == 0
    warned = [r for r in caplog.records if "plain HTTP" in r.getMessage()]
    assert bool(warned) == warns
