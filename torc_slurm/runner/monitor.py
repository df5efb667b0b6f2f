"""Process-tree resource sampling for running jobs: one sampler thread for all jobs.

Every ``interval_s`` seconds the thread scans the process table once (parent -> children), then for
each tracked job sums CPU percent and RSS over the job's process and all its descendants. The
`psutil.Process` objects are kept between samples, because `psutil.Process.cpu_percent` measures
the CPU used since the previous call on the same object: a job's first sample therefore records
memory only. Processes that vanish or cannot be read are skipped.

Peak RSS of the reaped child is also available for free from `os.wait4` (see
`torc_slurm.runner.process`); this sampler adds the tree-wide sum and CPU utilisation.

A job may be tracked with a memory limit: the first sample whose tree RSS exceeds it puts the job
in `take_over_limit` and calls ``on_over_limit`` (the runner wakes up and kills it). The kernel's
own OOM kills are counted by `oom_kills` from the cgroup files (v2 ``memory.events``, v1
``memory.oom_control``), where readable.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

__all__ = ["ResourceMonitor", "TreeStats"]

log = logging.getLogger(__name__)

_GONE = (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied)


@dataclass(frozen=True)
class TreeStats:
    """Aggregated samples of one job's process tree (None when nothing was measured)."""

    samples: int
    avg_cpu_percent: float | None
    peak_cpu_percent: float | None
    avg_memory_bytes: int | None  # RSS summed over the process tree
    peak_memory_bytes: int | None


EMPTY_STATS = TreeStats(0, None, None, None, None)


@dataclass
class _Job:
    pid: int
    limit_bytes: int | None = None
    procs: dict[int, psutil.Process] = field(default_factory=dict)  # kept for cpu_percent
    samples: int = 0
    mem_sum: int = 0
    mem_peak: int = 0
    cpu_samples: int = 0
    cpu_sum: float = 0.0
    cpu_peak: float = 0.0

    def stats(self) -> TreeStats:
        if not self.samples:
            return EMPTY_STATS
        cpu = self.cpu_samples > 0
        return TreeStats(
            samples=self.samples,
            avg_cpu_percent=self.cpu_sum / self.cpu_samples if cpu else None,
            peak_cpu_percent=self.cpu_peak if cpu else None,
            avg_memory_bytes=self.mem_sum // self.samples,
            peak_memory_bytes=self.mem_peak)


class ResourceMonitor:
    """Samples the process trees of tracked jobs from one background thread. Thread-safe.

    ``interval_s`` of 0 or None disables sampling: no thread, and `untrack` returns empty stats.
    """

    def __init__(self, interval_s: float | None = 5.0, on_over_limit: Callable[[int], None] | None = None) -> None:
        self.interval_s = interval_s or 0.0
        self.on_over_limit = on_over_limit
        self._over: list[int] = []
        self._jobs: dict[int, _Job] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self.interval_s > 0

    def start(self) -> None:
        """Start the sampler thread (no-op when disabled or already running)."""
        if not self.enabled or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="torc-resource-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the sampler thread and wait for it (returns within one sample pass)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join()

    def track(self, job_id: int, pid: int, limit_bytes: int | None = None) -> None:
        """Start sampling the tree rooted at ``pid`` for ``job_id`` (cheap: no /proc access here);
        a tree RSS above ``limit_bytes`` reports the job once (`take_over_limit`)."""
        if self.enabled:
            with self._lock:
                self._jobs[job_id] = _Job(pid, limit_bytes)

    def take_over_limit(self) -> list[int]:
        """The jobs whose sampled memory went past their limit since the last call."""
        with self._lock:
            over, self._over = self._over, []
            return over

    def untrack(self, job_id: int) -> TreeStats:
        """Stop sampling ``job_id`` and return its final stats (empty if unknown)."""
        with self._lock:
            job = self._jobs.pop(job_id, None)
            return job.stats() if job is not None else EMPTY_STATS

    def stats(self, job_id: int) -> TreeStats | None:
        """The stats so far of a tracked job, or None if it is not tracked."""
        with self._lock:
            job = self._jobs.get(job_id)
            return job.stats() if job is not None else None

    def _sample_all(self) -> None:
        """Take one sample of every tracked job (sampler thread only: it owns the psutil caches)."""
        with self._lock:
            jobs = list(self._jobs.items())
        if not jobs:
            return
        children = _children_map()
        for job_id, job in jobs:
            try:
                measured = _measure(job, children)
            except Exception:  # never let one odd process kill the sampler
                log.exception("resource sampling failed for job %s", job_id)
                continue
            if measured is None:
                continue
            cpu, mem = measured
            with self._lock:
                if self._jobs.get(job_id) is not job:  # untracked meanwhile
                    continue
                job.samples += 1
                job.mem_sum += mem
                job.mem_peak = max(job.mem_peak, mem)
                over = job.limit_bytes is not None and mem > job.limit_bytes
                if over:
                    self._over.append(job_id)
                    job.limit_bytes = None  # once
                if cpu is not None:
                    job.cpu_samples += 1
                    job.cpu_sum += cpu
                    job.cpu_peak = max(job.cpu_peak, cpu)
            if over and self.on_over_limit is not None:
                self.on_over_limit(job_id)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample_all()


def _children_map() -> dict[int, list[int]]:
    """parent pid -> child pids, from one scan of the process table."""
    children: dict[int, list[int]] = defaultdict(list)
    for proc in psutil.process_iter(["ppid"]):
        ppid = proc.info.get("ppid")
        if ppid:
            children[ppid].append(proc.pid)
    return children


def _measure(job: _Job, children: dict[int, list[int]]) -> tuple[float | None, int] | None:
    """One sample of ``job``'s tree: (summed cpu percent or None on the first sample, summed RSS).

    Returns None when the root process is gone. Only called from the sampling thread, so the
    job's `procs` cache needs no lock.
    """
    tree = [job.pid]
    for pid in tree:  # breadth-first walk; `tree` grows while iterating
        tree.extend(children.get(pid, ()))
    old, new = job.procs, {}
    cpu_total, mem_total, first = 0.0, 0, job.pid not in old
    for pid in tree:
        proc = old.get(pid)
        try:
            if proc is None:
                proc = psutil.Process(pid)
                proc.cpu_percent(None)  # prime: the first call has no reference point
                with proc.oneshot():
                    mem_total += proc.memory_info().rss
            else:
                with proc.oneshot():
                    cpu_total += proc.cpu_percent(None)
                    mem_total += proc.memory_info().rss
        except _GONE:
            if pid == job.pid:
                return None
            continue
        new[pid] = proc
    job.procs = new
    return (None if first else cpu_total), mem_total


_CGROUP_ROOT = Path("/sys/fs/cgroup")


def oom_kills(pid: int | None = None, *, root: Path = _CGROUP_ROOT) -> int | None:
    """The kernel's OOM-kill count of the memory cgroup of ``pid`` (default: this process), or
    None where it cannot be read. cgroup v2: ``oom_kill`` in ``memory.events`` (at the root mount,
    or under ``unified`` on hybrid hosts); v1: ``oom_kill`` in ``memory.oom_control``. A job runs
    in its runner's cgroup unless Slurm gives each step its own, so a count that rose during a
    job's life is evidence, not proof, that this job was the one killed. The file is found once
    per process (a job start reads one small file, not /proc and every candidate)."""
    if pid is None and root == _CGROUP_ROOT:
        found = _own_counter_file()
        return None if found is None else _read_counter(found, "oom_kill")
    for candidate in _counter_files(pid, root):
        count = _read_counter(candidate, "oom_kill")
        if count is not None:
            return count
    return None


@functools.lru_cache(maxsize=1)
def _own_counter_file() -> Path | None:
    for candidate in _counter_files(None, _CGROUP_ROOT):
        if _read_counter(candidate, "oom_kill") is not None:
            return candidate
    return None


def _counter_files(pid: int | None, root: Path) -> list[Path]:
    try:
        lines = Path(f"/proc/{pid or os.getpid()}/cgroup").read_text().splitlines()
    except OSError:
        return []
    candidates = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        relative = path.lstrip("/")
        if controllers == "":
            candidates += [root / relative / "memory.events", root / "unified" / relative / "memory.events"]
        elif "memory" in controllers.split(","):
            candidates.append(root / "memory" / relative / "memory.oom_control")
    return candidates


def _read_counter(path: Path, key: str) -> int | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return None
