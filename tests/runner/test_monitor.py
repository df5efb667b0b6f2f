"""ResourceMonitor tests with real process trees (no mocks)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from torc_slurm.runner.monitor import ResourceMonitor, TreeStats

DEADLINE_S = 30.0

# Allocates ~50 MB, says "ready", then holds the memory until stdin is closed.
HOLD_50MB = "import sys; b = bytearray(50 * 2**20); print('ready', flush=True); sys.stdin.read()"
# Burns CPU until stdin is closed.
BUSY = ("import select, sys\nprint('ready', flush=True)\n"
        "while not select.select([0], [], [], 0)[0]: pass")


@pytest.fixture
def monitor():
    m = ResourceMonitor(interval_s=0.05)
    m.start()
    yield m
    m.stop()


def spawn_tree(code: str) -> subprocess.Popen:
    """bash -> python ``code``; `; true` keeps bash from exec'ing, so the tree has two levels."""
    p = subprocess.Popen(["bash", "-c", f'"{sys.executable}" -c "$0"; true', code],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "ready\n"  # blocks until python has allocated / started
    return p


def finish(p: subprocess.Popen) -> None:
    p.stdin.close()
    p.wait(timeout=DEADLINE_S)
    p.stdout.close()


def wait_for_samples(monitor: ResourceMonitor, job_id: int, count: int) -> TreeStats:
    """Poll (bounded) until ``job_id`` has ``count`` samples."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        stats = monitor.stats(job_id)
        assert stats is not None
        if stats.samples >= count:
            return stats
        time.sleep(0.01)
    raise AssertionError(f"monitor took fewer than {count} samples in {DEADLINE_S}s")


def test_peak_memory_of_tree(monitor):
    p = spawn_tree(HOLD_50MB)
    try:
        monitor.track(7, p.pid)
        wait_for_samples(monitor, 7, 3)
    finally:
        finish(p)
    stats = monitor.untrack(7)
    assert stats.samples >= 3
    assert stats.peak_memory_bytes >= 40 * 2**20
    assert stats.avg_memory_bytes is not None and stats.avg_memory_bytes > 0
    assert stats.avg_cpu_percent is not None and stats.peak_cpu_percent is not None
    assert monitor.stats(7) is None


def test_cpu_percent_of_busy_tree(monitor):
    p = spawn_tree(BUSY)
    try:
        monitor.track(1, p.pid)
        wait_for_samples(monitor, 1, 4)
    finally:
        finish(p)
    stats = monitor.untrack(1)
    assert stats.peak_cpu_percent > 10
    assert 0 < stats.avg_cpu_percent <= stats.peak_cpu_percent


def test_vanished_and_missing_processes_are_tolerated(monitor):
    gone = subprocess.Popen(["true"])
    gone.wait(timeout=DEADLINE_S)
    monitor.track(1, gone.pid)  # already reaped
    monitor.track(2, 2**22 + 12345)  # above pid_max: never existed
    p = spawn_tree(HOLD_50MB)
    try:
        monitor.track(3, p.pid)
        wait_for_samples(monitor, 3, 2)  # the thread survived the bad pids
    finally:
        finish(p)
    assert monitor.untrack(1).samples == 0
    assert monitor.untrack(2) == TreeStats(0, None, None, None, None)
    assert monitor.untrack(3).samples >= 2


def test_process_exiting_while_tracked(monitor):
    p = spawn_tree(HOLD_50MB)
    monitor.track(1, p.pid)
    wait_for_samples(monitor, 1, 1)
    finish(p)  # exits (and is reaped) while still tracked
    q = spawn_tree(HOLD_50MB)
    try:
        monitor.track(2, q.pid)
        wait_for_samples(monitor, 2, 1)  # every pass from here on started after job 1 was reaped
        before = monitor.stats(1).samples
        wait_for_samples(monitor, 2, 3)
    finally:
        finish(q)
    assert monitor.untrack(1).samples == before  # skipped without crashing the thread
    assert monitor.untrack(2).samples >= 3


def test_untrack_unknown_job(monitor):
    assert monitor.untrack(12345) == TreeStats(0, None, None, None, None)


@pytest.mark.parametrize("interval", [0, None])
def test_disabled_monitor_has_no_thread(interval):
    before = threading.active_count()
    m = ResourceMonitor(interval_s=interval)
    m.start()
    assert not m.enabled
    assert threading.active_count() == before
    m.track(1, 1)
    assert m.stats(1) is None
    assert m.untrack(1).samples == 0
    m.stop()


def test_stop_is_prompt_and_restartable():
    m = ResourceMonitor(interval_s=60)
    m.start()
    t0 = time.monotonic()
    m.stop()
    assert time.monotonic() - t0 < 10
    m.start()
    m.stop()
    m.stop()  # idempotent
