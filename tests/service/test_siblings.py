"""The channel between the workers of one server (service/siblings.py): real
sockets in Linux's abstract namespace, two links in this process standing in
for two workers (each named by a pid of its own; the peer credentials are
this process's, which the fake discovery counts as a sibling)."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from service.siblings import SiblingLink, socket_name
from tests.helpers import wait_for

pytestmark = pytest.mark.skipif(not hasattr(socket, "SO_PEERCRED"), reason="Linux only")


class Ear:
    def __init__(self) -> None:
        self.events: list[tuple[str, list]] = []
        self.gone: list[str] = []
        self.lock = threading.Lock()

    def on_event(self, sibling: str, event: list) -> None:
        with self.lock:
            self.events.append((sibling, event))

    def on_gone(self, sibling: str) -> None:
        self.gone.append(sibling)


@pytest.fixture
def pair():
    group = os.urandom(4).hex()
    workers = {901, 902, os.getpid()}
    ears = [Ear(), Ear()]
    links = [SiblingLink(group, f"{group}.{pid}", ear.on_event, ear.on_gone, discover=lambda: set(workers), pid=pid)
             for pid, ear in zip((901, 902), ears, strict=True)]
    for link in links:
        link.start()
    yield links, ears, workers
    for link in links:
        link.close()


def closed_on_us(conn: socket.socket, data: bytes) -> bool:
    """Send `data`; True when the other end then closes (or resets) the connection."""
    try:
        conn.sendall(data)
        return conn.recv(10) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def test_events_reach_the_sibling_in_order_with_the_senders_id(pair):
    (one, two), (ear1, ear2), _ = pair
    wait_for(lambda: one.linked() and two.linked(), 5, "both links")
    assert one.linked() == {two.instance_id} and two.linked() == {one.instance_id}
    for i in range(500):
        one.publish(["d", i, 1.5])
    wait_for(lambda: len(ear2.events) == 500, 5, "500 events")
    assert ear2.events == [(one.instance_id, ["d", i, 1.5]) for i in range(500)]
    assert ear1.events == []  # a worker does not hear itself


def test_a_sibling_that_exits_is_gone(pair):
    (one, two), (ear1, ear2), _ = pair
    wait_for(lambda: one.linked() and two.linked(), 5, "both links")
    one.close()
    wait_for(lambda: ear2.gone == [one.instance_id], 5, "the sibling gone")
    assert two.linked() == set()


def test_a_process_that_is_not_a_sibling_is_refused(pair):
    (one, _), (ear1, _), workers = pair
    workers.discard(os.getpid())  # this process is no longer one of the server's workers
    stranger = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stranger.connect(socket_name(one.group, 901))
    stranger.settimeout(5)
    assert closed_on_us(stranger, b'[["hello","evil"]]\n[["d",1,1.0]]\n')
    stranger.close()
    assert not any(sibling == "evil" for sibling, _ in ear1.events)


def test_a_malformed_message_closes_the_link(pair):
    (one, _), (ear1, _), _ = pair
    rogue = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    rogue.connect(socket_name(one.group, 901))
    rogue.settimeout(5)
    assert closed_on_us(rogue, b"not json\n")
    rogue.close()
    late = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    late.connect(socket_name(one.group, 901))
    late.sendall(b'[["hello","w9"],["d",1,1.0]]\n[["zz"]]\n')
    wait_for(lambda: ear1.events, 5, "the good event")
    late.close()
    wait_for(lambda: ear1.gone == ["w9"], 5, "the link to end")
    assert ear1.events == [("w9", ["d", 1, 1.0]), ("w9", ["zz"])]


def test_the_siblings_are_the_parents_children(monkeypatch):
    import subprocess
    import sys

    from service import siblings

    # This process stands for the server; its children for the workers.
    children = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) for _ in range(2)]
    try:
        monkeypatch.setattr(siblings.os, "getppid", lambda: os.getpid())
        found = siblings.arbiter_children()
        assert {c.pid for c in children} <= found
        real_open = open

        def no_children_file(path, *args, **kwargs):
            if str(path).endswith("/children"):
                raise FileNotFoundError(path)
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr("builtins.open", no_children_file)
        assert {c.pid for c in children} <= siblings.arbiter_children()
    finally:
        for c in children:
            c.kill()
            c.wait()
