"""deploy/: the Prometheus alert rules pass `promtool check rules` and their
unit tests (`promtool test rules`); every alert has a test; the Grafana
dashboard's queries are valid PromQL; and every nvllm metric the rules and
the dashboard name is one nvllm exports, and the README lists them all."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from model.node import Node, NodeStatus
from tests.helpers import require_binary

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
RULES = DEPLOY / "prometheus" / "nvllm-alerts.yml"
RULES_TEST = DEPLOY / "prometheus" / "nvllm-alerts.test.yml"
DASHBOARD = DEPLOY / "grafana" / "nvllm-dashboard.json"
METRIC_NAME = re.compile(r"\bnvllm_[a-z_]+\b")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def promtool(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run([require_binary("promtool"), *args], capture_output=True, text=True, timeout=60, cwd=cwd)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def dashboard_queries() -> list[str]:
    def panels(items: list[dict]) -> list[dict]:
        return [p for item in items for p in [item, *panels(item.get("panels", []))]]

    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queries = [t["expr"] for p in panels(board["panels"]) for t in p.get("targets", [])]
    queries += [v["query"]["query"] for v in board["templating"]["list"] if isinstance(v.get("query"), dict)]
    return queries


@pytest.fixture(scope="module")
def exported() -> set[str]:
    """Every series name /metrics can carry (the families are listed even before any sample)."""
    import fakeredis

    from config import Settings
    from main import create_app

    app = create_app(Settings(admin_password="admin-password-for-tests", password_hash_n=2**4),
                     redis_client=fakeredis.FakeRedis(decode_responses=True))
    now = time.time()
    app.extensions["nvllm"].nodes.save(Node("gpu-1", node_address="127.0.0.1", node_port=1, create_time=now,
                                            update_time=now, node_status=NodeStatus.ONLINE))
    app.extensions["nvllm"].proxy.fleet.refresh()
    text = app.extensions["nvllm"].metrics.render().decode()
    return {f.name + suffix for f in text_string_to_metric_families(text) for suffix in SUFFIXES[f.type]}


def test_the_alert_rules_pass_promtool_check():
    assert "SUCCESS" in promtool("check", "rules", str(RULES))


def test_the_alert_rules_pass_their_unit_tests():
    assert "SUCCESS" in promtool("test", "rules", RULES_TEST.name, cwd=RULES_TEST.parent)


def test_every_alert_has_a_unit_test():
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r}
    tested = {
        case["alertname"]
        for test in yaml.safe_load(RULES_TEST.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert alerts == tested


def test_the_dashboards_queries_are_promql(tmp_path):
    # Grafana's variables replaced by what they stand for, each query becomes a
    # recording rule, which promtool parses.
    substitutes = {"$__rate_interval": "5m", "$model": ".*", "$node": ".*"}
    rules = []
    for i, query in enumerate(q for q in dashboard_queries() if not q.startswith("label_values(")):
        for variable, value in substitutes.items():
            query = query.replace(variable, value)
        assert "$" not in query, query
        rules.append({"record": f"dashboard:query_{i}", "expr": query})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert f"SUCCESS: {len(rules)} rules found" in promtool("check", "rules", str(path))


def test_the_dashboard_is_importable_json():
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["title"] and set(panel["gridPos"]) == {"h", "w", "x", "y"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        for target in panel.get("targets", []):
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


@pytest.mark.parametrize("source", ["rules", "dashboard"])
def test_every_metric_named_is_exported(source, exported):
    if source == "rules":
        text = RULES.read_text()
    else:
        text = "\n".join(dashboard_queries())
    named = set(METRIC_NAME.findall(text))
    assert named and named <= exported, sorted(named - exported)


def test_the_readme_lists_every_metric(exported):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    families = {re.sub(r"_(bucket|count|sum)$", "", name) for name in exported}
    missing = sorted(f for f in families if f"`{f}`" not in readme)
    assert not missing, f"README.md's metrics table lacks {missing}"
