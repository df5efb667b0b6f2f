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

GPUs: given a `torc_slurm.runner.gpu.GpuSampler`, each pass reads every device once, and a job
tracked with ``gpu_ids`` gets the mean utilisation over its devices (averaged over the passes) and
the peak of their summed memory. Without a sampler those figures stay None ("not sampled"), never 0.

Time series (``series=True``, the workflow's ``resource_monitor.granularity: time_series``): each
pass of a job also feeds its attempt's series, which turns every ``stride`` passes into one
`torc_slurm.store.samples.JobSample` row (and, at `MAX_ROWS` rows, a `Thin` mark and a doubled
stride: the bound is explained in `torc_slurm.store.samples`). Rows wait in a bounded list that the
runner drains with `drain_job_samples` and writes with its queue cycles, as it does node samples.
Without ``series`` nothing of this runs: summary granularity costs what it did.

Node samples: each pass also records one `NodeSample` (summed CPU and RSS of all tracked trees, and
the node's GPUs), kept in a bounded deque that the runner drains with `drain_node_samples` and
writes with its queue cycles. A pass with nothing tracked skips the process table but still records
a sample, so an idle node shows as idle.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from torc_slurm.runner.gpu import GpuReading, GpuSampler
from torc_slurm.store.samples import MAX_ROWS, Item, JobSample, Thin

__all__ = ["NodeSample", "ResourceMonitor", "TreeStats"]

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
    avg_gpu_percent: float | None = None  # mean over the job's GPUs per pass, averaged over passes
    peak_gpu_memory_bytes: int | None = None  # peak of the memory summed over the job's GPUs


EMPTY_STATS = TreeStats(0, None, None, None, None)


@dataclass(frozen=True)
class NodeSample:
    """The node at one sampling pass (what the runner writes to ``runner_samples``)."""

    at: float  # time.time()
    cpu_percent: float  # summed over the tracked jobs' trees: 100 = one core busy
    memory_bytes: int  # RSS summed over the tracked jobs' trees
    gpu_percent: float | None  # mean over the node's GPUs; None without a sampler
    gpu_memory_bytes: int | None  # summed over the node's GPUs; None without a sampler


MAX_NODE_SAMPLES = 10_000  # bounded: a runner that stops draining loses the oldest, not its memory
MAX_PENDING_ROWS = 200_000  # job rows waiting for a cycle; past this, new rows are dropped (Thin marks kept)


@dataclass
class _Series:
    """One attempt's time series in the making: a row per ``stride`` passes (mean CPU and GPU,
    peak RSS, process count and GPU memory), thinned at ``max_rows`` (see `torc_slurm.store.samples`)."""

    job_id: int
    attempt: int
    start: float
    max_rows: int = MAX_ROWS
    stride: int = 1
    kept: int = 0       # rows handed out (what the table holds for the attempt, at most)
    passes: int = 0     # in the open row
    t: float = 0.0      # the open row's first pass, seconds after start
    cpu_sum: float = 0.0
    cpu_n: int = 0
    mem: int = 0
    procs: int = 0
    gpu_sum: float = 0.0
    gpu_n: int = 0
    gpu_mem: int | None = None

    def add(self, at: float, cpu: float | None, mem: int, procs: int,
            gpu: tuple[float, int] | None) -> list[Item]:
        if not self.passes:
            self.t = max(0.0, at - self.start)
        self.passes += 1
        if cpu is not None:
            self.cpu_sum += cpu
            self.cpu_n += 1
        self.mem, self.procs = max(self.mem, mem), max(self.procs, procs)
        if gpu is not None:
            self.gpu_sum += gpu[0]
            self.gpu_n += 1
            self.gpu_mem = max(self.gpu_mem or 0, gpu[1])
        return self.close() if self.passes >= self.stride else []

    def close(self) -> list[Item]:
        """The open row (if any), and a Thin mark when the attempt reached ``max_rows``."""
        if not self.passes:
            return []
        items: list[Item] = [JobSample(self.job_id, self.attempt, self.t,
                                       self.cpu_sum / self.cpu_n if self.cpu_n else None, self.mem, self.procs,
                                       self.gpu_sum / self.gpu_n if self.gpu_n else None, self.gpu_mem)]
        self.passes = self.cpu_n = self.gpu_n = self.mem = self.procs = 0
        self.cpu_sum = self.gpu_sum = 0.0
        self.gpu_mem = None
        self.kept += 1
        if self.kept >= self.max_rows:  # drop every second row; each new one covers twice the passes
            items.append(Thin(self.job_id, self.attempt))
            self.kept = (self.kept + 1) // 2
            self.stride *= 2
        return items


@dataclass
class _Job:
    pid: int
    limit_bytes: int | None = None
    gpu_ids: tuple[str, ...] = ()
    procs: dict[int, psutil.Process] = field(default_factory=dict)  # kept for cpu_percent
    samples: int = 0
    mem_sum: int = 0
    mem_peak: int = 0
    cpu_samples: int = 0
    cpu_sum: float = 0.0
    cpu_peak: float = 0.0
    gpu_samples: int = 0
    gpu_sum: float = 0.0
    gpu_mem_peak: int = 0
    series: _Series | None = None

    def stats(self) -> TreeStats:
        if not self.samples:
            return EMPTY_STATS
        cpu = self.cpu_samples > 0
        gpu = self.gpu_samples > 0
        return TreeStats(
            samples=self.samples,
            avg_cpu_percent=self.cpu_sum / self.cpu_samples if cpu else None,
            peak_cpu_percent=self.cpu_peak if cpu else None,
            avg_memory_bytes=self.mem_sum // self.samples,
            peak_memory_bytes=self.mem_peak,
            avg_gpu_percent=self.gpu_sum / self.gpu_samples if gpu else None,
            peak_gpu_memory_bytes=self.gpu_mem_peak if gpu else None)

    def add_gpu(self, readings: dict[str, GpuReading]) -> tuple[float, int] | None:
        """One pass's readings of this job's devices (those the sampler saw): (mean util, memory)."""
        seen = [readings[i] for i in self.gpu_ids if i in readings]
        if seen:
            util, memory = sum(r.util_percent for r in seen) / len(seen), sum(r.memory_bytes for r in seen)
            self.gpu_samples += 1
            self.gpu_sum += util
            self.gpu_mem_peak = max(self.gpu_mem_peak, memory)
            return util, memory
        return None


class ResourceMonitor:
    """Samples the process trees of tracked jobs from one background thread. Thread-safe.

    ``interval_s`` of 0 or None disables sampling: no thread, and `untrack` returns empty stats.
    ``series`` keeps every pass of every attempt as `JobSample` rows (`drain_job_samples`);
    ``max_rows`` is the per-attempt bound (tests shrink it).
    ``gpu_sampler`` (from `torc_slurm.runner.gpu.detect_gpu_sampler`) adds GPU figures;
    ``node_gpu_ids`` limits the node samples' GPU figures to this runner's devices (default: every
    device the sampler sees).
    """

    def __init__(self, interval_s: float | None = 5.0, on_over_limit: Callable[[int], None] | None = None,
                 gpu_sampler: GpuSampler | None = None, node_gpu_ids: Iterable[str] | None = None, *,
                 max_node_samples: int = MAX_NODE_SAMPLES, clock: Callable[[], float] = time.time,
                 series: bool = False, max_rows: int = MAX_ROWS, max_pending_rows: int = MAX_PENDING_ROWS) -> None:
        self.interval_s = interval_s or 0.0
        self.on_over_limit = on_over_limit
        self.gpu_sampler = gpu_sampler
        self.node_gpu_ids: frozenset[str] | None = None if node_gpu_ids is None else frozenset(map(str, node_gpu_ids))
        self._clock = clock
        self._over: list[int] = []
        self._jobs: dict[int, _Job] = {}
        self._node_samples: deque[NodeSample] = deque(maxlen=max_node_samples)
        self.series = series and self.interval_s > 0
        self.max_rows = max(2, max_rows)
        self.max_pending_rows = max_pending_rows
        self._job_rows: list[Item] = []
        self._pending_rows = 0
        self.dropped_rows = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self.interval_s > 0

    @property
    def gpu_sampler_name(self) -> str | None:
        """'nvml' or 'nvidia-smi' while GPUs are sampled; None without a sampler, when sampling is
        disabled, or once the sampler has failed (what the runner records as ``gpu_sampler``)."""
        sampler = self.gpu_sampler
        if not self.enabled or sampler is None or sampler.disabled:
            return None
        return sampler.name

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

    def track(self, job_id: int, pid: int, limit_bytes: int | None = None, gpu_ids: Collection[str] = (),
              attempt: int = 1) -> None:
        """Start sampling the tree rooted at ``pid`` for ``job_id`` (cheap: no /proc access here);
        a tree RSS above ``limit_bytes`` reports the job once (`take_over_limit`). ``gpu_ids``: the
        device indexes the job was given (its ``CUDA_VISIBLE_DEVICES``); ``attempt`` names its rows
        in the time series (its t counts from now)."""
        if self.enabled:
            job = _Job(pid, limit_bytes, tuple(str(i) for i in gpu_ids))
            if self.series:
                job.series = _Series(job_id, attempt, self._clock(), self.max_rows)
            with self._lock:
                self._jobs[job_id] = job

    def drain_job_samples(self) -> list[Item]:
        """The time-series rows and Thin marks since the last call, in order (and forget them)."""
        if not self.series:
            return []
        with self._lock:
            rows, self._job_rows, self._pending_rows = self._job_rows, [], 0
            return rows

    def _add_rows(self, items: list[Item]) -> None:
        """Queue rows for the runner (under ``_lock``); past the bound, rows are dropped, marks kept."""
        for item in items:
            if isinstance(item, JobSample):
                if self._pending_rows >= self.max_pending_rows:
                    if not self.dropped_rows:
                        log.warning("job samples are not being written (the queue is unreachable?): "
                                    "dropping new ones past %d", self.max_pending_rows)
                    self.dropped_rows += 1
                    continue
                self._pending_rows += 1
            self._job_rows.append(item)

    def drain_node_samples(self) -> list[NodeSample]:
        """The node samples recorded since the last call, oldest first (and forget them)."""
        with self._lock:
            samples = list(self._node_samples)
            self._node_samples.clear()
            return samples

    def take_over_limit(self) -> list[int]:
        """The jobs whose sampled memory went past their limit since the last call."""
        with self._lock:
            over, self._over = self._over, []
            return over

    def untrack(self, job_id: int) -> TreeStats:
        """Stop sampling ``job_id`` and return its final stats (empty if unknown)."""
        with self._lock:
            job = self._jobs.pop(job_id, None)
            if job is None:
                return EMPTY_STATS
            if job.series is not None:
                self._add_rows(job.series.close())
            return job.stats()

    def stats(self, job_id: int) -> TreeStats | None:
        """The stats so far of a tracked job, or None if it is not tracked."""
        with self._lock:
            job = self._jobs.get(job_id)
            return job.stats() if job is not None else None

    def _sample_all(self) -> None:
        """Take one sample of every tracked job and of the node (sampler thread only: it owns the
        psutil caches and calls the GPU sampler)."""
        with self._lock:
            jobs = list(self._jobs.items())
        readings = self.gpu_sampler.sample() if self.gpu_sampler is not None else None
        node_cpu, node_mem = 0.0, 0
        at = self._clock() if self.series else 0.0
        children = _children_map() if jobs else {}
        for job_id, job in jobs:
            try:
                measured = _measure(job, children)
            except Exception:  # never let one odd process kill the sampler
                log.exception("resource sampling failed for job %s", job_id)
                continue
            if measured is None:
                continue
            cpu, mem, procs = measured
            node_cpu += cpu or 0.0
            node_mem += mem
            with self._lock:
                if self._jobs.get(job_id) is not job:  # untracked meanwhile
                    continue
                gpu = job.add_gpu(readings) if readings and job.gpu_ids else None
                if job.series is not None:
                    self._add_rows(job.series.add(at, cpu, mem, procs, gpu))
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
        gpu_percent, gpu_memory = self._node_gpu(readings)
        sample = NodeSample(self._clock(), node_cpu, node_mem, gpu_percent, gpu_memory)
        with self._lock:
            self._node_samples.append(sample)

    def _node_gpu(self, readings: dict[str, GpuReading] | None) -> tuple[float | None, int | None]:
        """(mean utilisation, summed memory) over the node's devices, or (None, None) when not sampled."""
        if not readings:
            return None, None
        mine = [r for i, r in readings.items() if self.node_gpu_ids is None or i in self.node_gpu_ids]
        if not mine:
            return None, None
        return sum(r.util_percent for r in mine) / len(mine), sum(r.memory_bytes for r in mine)

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


def _measure(job: _Job, children: dict[int, list[int]]) -> tuple[float | None, int, int] | None:
    """One sample of ``job``'s tree: (summed cpu percent or None on the first sample, summed RSS,
    processes measured).

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
    return (None if first else cpu_total), mem_total, len(new)


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
