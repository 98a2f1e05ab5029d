"""The default worker count: the cores this process may use, bounded by a
cgroup CPU quota (a container limited to 2 cores on a big host gets 2)."""

from __future__ import annotations

import os

from config import Settings
from server.cpus import cgroup_quota, usable_cpus
from server.http import MAX_WORKERS, worker_count


def test_without_a_quota_every_core_of_the_affinity_mask(tmp_path):
    assert cgroup_quota(tmp_path) is None
    assert usable_cpus(tmp_path) == len(os.sched_getaffinity(0))


def test_a_cgroup_v2_quota_bounds_the_count_rounded_up(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_quota(tmp_path) == 1.5
    assert usable_cpus(tmp_path) == min(2, len(os.sched_getaffinity(0)))
    (tmp_path / "cpu.max").write_text("10000 100000\n")  # a tenth of a core still runs one worker
    assert usable_cpus(tmp_path) == 1


def test_an_unlimited_cgroup_v2_is_no_bound(tmp_path):
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_quota(tmp_path) is None


def test_a_cgroup_v1_quota(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_quota(tmp_path) == 2.0
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_quota(tmp_path) is None


def test_a_garbled_quota_file_is_ignored(tmp_path):
    (tmp_path / "cpu.max").write_text("lots\n")
    assert cgroup_quota(tmp_path) is None


def test_nvllm_workers_overrides_and_zero_means_one_per_core():
    assert worker_count(Settings(workers=3)) == 3
    assert worker_count(Settings()) == min(usable_cpus(), MAX_WORKERS)
    assert Settings.from_env({"NVLLM_WORKERS": "0"}).workers == 0
