"""A short run of bench/chaos.py's node-kill scenario: a fake node SIGKILLed
under load through two instances on one redis-server. The other scenarios
take minutes; this one checks the suite itself and its first target."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import require_binary
from tests.integration.conftest import ROOT

pytestmark = pytest.mark.integration


def test_a_node_killed_mid_stream_costs_only_its_own_streams():
    require_binary("redis-server")
    require_binary("redis-sentinel")
    result = subprocess.run([sys.executable, "bench/chaos.py", "node-kill"], cwd=ROOT, capture_output=True,
                            text=True, timeout=180)
    # The scenario's own figures (why a request failed, by instance) come first.
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    row = json.loads(result.stdout.strip().splitlines()[-1])
    assert row["scenario"] == "node-kill" and row["sent"] > 50
    assert row["failed_before_first_byte"] == 0, row
    assert row["ok"] + row["cut_streams"] == row["sent"]
    assert all(by.endswith("node node-1") for by in row["cut_by"]), row  # only the killed node's streams
    back = row["recovery_s"]["node back in rotation"]
    assert back is not None and back < 5, row
