"""How many CPU cores this process may use: the default number of server
workers. A container limited to two cores on a 64-core host must start two
workers, not 64, so the count honours both the CPU affinity mask (taskset,
cpusets) and a cgroup CPU quota (Kubernetes' `resources.limits.cpu`, docker
`--cpus`)."""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def usable_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    """The cores this process may run on, bounded by its cgroup's quota
    (rounded up: a quota of 1.5 cores is worth a second worker); at least 1."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    quota = cgroup_quota(cgroup_root)
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


def cgroup_quota(cgroup_root: Path = CGROUP_ROOT) -> float | None:
    """Cores' worth of CPU time the cgroup allows (cgroup v2's cpu.max, else
    v1's cfs_quota/cfs_period), or None when unlimited or unknown."""
    try:
        quota, period = (cgroup_root / "cpu.max").read_text().split()[:2]
        if quota == "max":
            return None
        return int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((cgroup_root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((cgroup_root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    if quota_us <= 0 or period_us <= 0:
        return None
    return quota_us / period_us
