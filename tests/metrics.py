"""Reading a /metrics answer in tests: samples by name and labels."""

from __future__ import annotations

import subprocess

from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import require_binary


class Scrape:
    """One /metrics answer, parsed."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples = [s for family in text_string_to_metric_families(text) for s in family.samples]

    def value(self, name: str, **labels: str) -> float:
        """The sum of `name`'s samples whose labels include `labels` (0 when none)."""
        return sum(s.value for s in self.samples if s.name == name and labels.items() <= s.labels.items())

    def labels(self, name: str, label: str) -> set[str]:
        """The values `label` takes in `name`'s samples."""
        return {s.labels[label] for s in self.samples if s.name == name and label in s.labels}

    def names(self) -> set[str]:
        return {s.name for s in self.samples}


def promtool_check_metrics(text: str) -> None:
    """`promtool check metrics` finds nothing wrong with the exposition."""
    promtool = require_binary("promtool")
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True,
                             timeout=30)
    assert checked.returncode == 0 and not checked.stdout.strip() and not checked.stderr.strip(), (
        checked.stdout + checked.stderr
    )
