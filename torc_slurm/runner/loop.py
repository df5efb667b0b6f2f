"""The node-local runner: claim -> pack -> spawn -> reap -> complete, until the work or the time ends.

One ``Runner`` per node. Every pass of the loop is one queue cycle (one lock acquisition) that
records what finished and started since the last pass, renews the runner's lease and claims what
fits now. Between cycles the runner blocks in ``ProcessPool.wait`` until a child exits, a signal
arrives or a timer is due; an idle runner watches the queue's change signal (a stat, no lock) with
a growing interval.

A job runs only under a live lease (`runner.keeper`): the runner starts nothing when its lease is
near its end, kills its jobs when the lease ends without renewal (self-fencing), kills the jobs
the queue took back from it, and survives a queue it cannot reach for a while, retrying with
backoff; outcomes wait in memory meanwhile and are reported by the next cycle that succeeds.

Failure handling (`runner.failures`): a job with ``enforce_runtime`` is timed out at runtime x
runtime_grace (the wait's timeout is the next such deadline: no polling); a job killed while near
its memory is recorded ``oom``; a failure its handler matches runs the rule's recovery script (a
child like the jobs, reaped by the same wait) and is reported as a retry.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import shutil
import signal
import socket
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from torc_slurm.errors import QueueError
from torc_slurm.runner.containers import container_command
from torc_slurm.runner.failures import FailureHandling, memory_kill_factor
from torc_slurm.runner.gpu import detect_gpu_sampler
from torc_slurm.runner.groups import compose, expand, split
from torc_slurm.runner.fencing import SlurmProbe
from torc_slurm.runner.keeper import LeaseKeeper
from torc_slurm.runner.monitor import ResourceMonitor, oom_kills
from torc_slurm.runner.packing import Candidate, Placement, fits_node, fits_time, pack, plan_order
from torc_slurm.runner.policy import STOP_SIGNAL_WINDOW_S, killed_by_stop_signal, prefetch_size
from torc_slurm.runner.process import RSS_UNIT, Finished, LaunchSpec, ProcessPool
from torc_slurm.runner.resources import DetectedNode, pin_plan
from torc_slurm.runner.usage import DEFAULT_EVERY_S, UsageBuckets
from torc_slurm.runner.walltime import EndTime
from torc_slurm.spec.models import WorkflowSpec
from torc_slurm.states import UNFINISHED
from torc_slurm.store.db import Database
from torc_slurm.store.events import add_event
from torc_slurm.runner.multinode import launch, node_gpu_map
from torc_slurm.store.gangs import Free, Member, Share
from torc_slurm.store.queue import Choice, ClaimedJob, Limits, NodeUse, Outcome, Queue, ReadyJob, Started

log = logging.getLogger(__name__)
MAX_PREFETCH = 512  # adaptive claim-ahead never exceeds this many jobs
# The lease's one default lives in the spec; RunnerConfig only repeats it for runners built by hand.
DEFAULT_HEARTBEAT_TIMEOUT_S = float(WorkflowSpec.model_fields["heartbeat_timeout_seconds"].default)


@dataclass
class RunnerConfig:
    workflow_id: int
    working_dir: Path
    output_dir: Path
    scheduler: str | None = None
    strict_scheduler: bool = False
    max_parallel_jobs: int | None = None     # queue-depth mode: ignore resources
    end_time: EndTime = field(default_factory=EndTime)
    buffer_s: float = 60.0                  # stop this long before the end time
    wait_for_new_jobs_s: float | None = 90.0  # idle exit; None = stay while the workflow can progress
    # The lease (the workflow's heartbeat_timeout_seconds): a runner that cannot renew it for this
    # long kills its own jobs; others may take them after 1.5x as long (see runner.liveness).
    heartbeat_timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S
    heartbeat_interval_s: float | None = None  # default: heartbeat_timeout_s / 8, at most 10 s
    slurm_probe: SlurmProbe | None = None   # how to ask Slurm about other runners' allocations
    guardian: bool = True                   # a guardian process kills the jobs if the runner dies
    termination_grace_s: float = 30.0
    monitor_interval_s: float = 5.0
    node_sample_s: float = DEFAULT_EVERY_S  # one runner_samples row per this long (the monitor's passes averaged)
    job_samples: bool = False               # resource_monitor granularity time_series: keep every job sample
    gpu_variable: str = "CUDA_VISIBLE_DEVICES"
    slurm_job_id: str | None = None
    allocation_nodes: int = 1               # nodes of its allocation: multi-node jobs span up to this many
    # Jobs with an image run in it with this runtime (the site's, through the allocation script),
    # when it is installed here; else natively, said once per workflow.
    container_runtime: str | None = field(default_factory=lambda: os.environ.get("TORC_CONTAINER_RUNTIME") or None)
    node_name: str = field(default_factory=lambda: os.environ.get("SLURMD_NODENAME") or socket.gethostname())
    dry_execute: bool = False               # mark claimed jobs completed without spawning (benchmarks)
    prefetch: int | None = None             # jobs claimed ahead (default: adaptive, see Runner._prefetch)
    report_delay_s: float = 0.25            # longest an outcome waits to be batched into a cycle
    on_progress: Callable[[dict[str, int]], None] | None = None
    progress_interval_s: float = 1.0
    # Kill a job whose sampled tree RSS exceeds its declared memory x this factor (None: only
    # detect; the kernel or Slurm's cgroup limit does the killing). TORC_MEMORY_KILL_FACTOR sets it.
    memory_kill_factor: float | None = field(default_factory=lambda: memory_kill_factor(os.environ))
    recovery_timeout_s: float = 600.0       # a failure handler's recovery script is killed after this
    actions: object | None = None           # runner.actions.ActionPerformer: the workflow actions this runner performs


@dataclass
class RunSummary:
    runner_id: int
    completed: int = 0
    failed: int = 0
    terminated: int = 0
    lost: int = 0                  # killed because this runner's lease on them ended
    retried: int = 0               # failed, and retried by their failure handler
    exit_reason: str = ""
    unrunnable: list[str] = field(default_factory=list)  # ready jobs that can never fit this node
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class _Running:
    job: ClaimedJob
    placement: Placement
    stdout: Path
    stderr: Path
    started: float = 0.0                  # time.monotonic()
    due: float | None = None              # monotonic: timed out (then: killed) at this time
    timed_out: bool = False
    memory_killed: bool = False
    oom_kills: int | None = None          # the cgroup's OOM-kill count when it started


class Runner:
    def __init__(self, db: Database, node: DetectedNode, config: RunnerConfig) -> None:
        self.db = db
        self.node = node
        self.config = config
        self.queue = Queue(db, config.workflow_id)
        self.pool = ProcessPool()
        gpus = node.capacity.gpu_ids
        self.monitor = ResourceMonitor(config.monitor_interval_s or None, on_over_limit=lambda _job: self.pool.wake(),
                                       gpu_sampler=detect_gpu_sampler() if gpus and config.monitor_interval_s else None,
                                       node_gpu_ids=gpus, series=config.job_samples)
        self.usage = UsageBuckets(len(node.capacity.cpu_ids), config.node_sample_s)
        self.failures = FailureHandling(self)
        if config.heartbeat_interval_s is None:
            config.heartbeat_interval_s = min(10.0, config.heartbeat_timeout_s / 8)
        self.leases = LeaseKeeper(timeout_s=config.heartbeat_timeout_s, observe_every_s=config.heartbeat_interval_s,
                                  slurm=config.slurm_probe, guardian=config.guardian)
        self.running: dict[int, _Running] = {}
        self.stop_reason: str | None = None
        self._stop_requested_at: float | None = None
        self._signaled: set[int] = set()  # jobs this runner killed itself (lease lost)
        self._lease_lost: set[int] = set()
        self._started: list[Started] = []
        self._outcomes: list[Outcome] = []
        self._pin_warned = False
        self._base_env: dict[str, str] | None = None
        self._oom_count: int | None = None
        self._oom_read_at = -1e18
        self._terminating: set[int] = set()
        self._backlog: dict[int, ClaimedJob] = {}  # claimed, not started yet (claim order)
        self._last_claimed = 0
        self._outcomes_since = 0.0
        self._started_since = 0.0
        self._summary: RunSummary | None = None
        self._seen_token: tuple[int, int] | None = None
        self._slots = max(1, config.max_parallel_jobs or len(node.capacity.cpu_ids))
        self._finished_at: deque[float] = deque(maxlen=8 * MAX_PREFETCH)  # recent outcome times
        self._failing_since: float | None = None  # monotonic time of the first failed cycle in a row
        self._retry_at = 0.0                      # monotonic: no cycle before this (backoff)
        self._unsent_samples: list[NodeUse] = []  # node use whose cycle failed: sent with the next
        # Shares of other runners' multi-node jobs this one set aside (job id -> what it holds), and
        # the member nodes of its own multi-node jobs (job id -> members), both from the last cycle.
        self._image_warned = False
        self._group_hosts: dict[int, list[str]] = {}  # group id -> the node of each member, by rank
        self._shares: dict[int, Placement] = {}
        self._gangs: dict[int, list[Member]] = {}
        # Group members a lead's exit is ending: job id -> (lead name, lead outcome, KILL deadline).
        self._ended_by_lead: dict[int, tuple[str, str, float]] = {}
        self._signal_at: float | None = None  # monotonic time of the first SIGTERM/SIGINT

    # -- public ------------------------------------------------------------------------------
    def request_stop(self, reason: str) -> None:
        """Signal-safe: stop claiming and wind down at the next pass."""
        if self.stop_reason is None:
            self._stop_requested_at = time.time()
        self.stop_reason = self.stop_reason or reason
        self.pool.wake()

    def _on_signal(self, signum: int, _frame: object) -> None:
        """SIGTERM/SIGINT: stop (the actions in flight get the termination grace from now); a second
        one cuts the actions' drain short (their commands are killed, their claims taken over)."""
        if self._signal_at is not None and self.config.actions is not None:
            self.config.actions.abort()  # type: ignore[attr-defined]
        if self._signal_at is None:
            self._signal_at = time.monotonic()
        self.request_stop(signal.Signals(signum).name)

    def run(self) -> RunSummary:
        cfg = self.config
        capacity = self.node.capacity
        self.leases.start()
        try:
            before = time.monotonic()
            self.runner_id = self.queue.register_runner(
                hostname=cfg.node_name, pid=os.getpid(), slurm_job_id=cfg.slurm_job_id,
                scheduler=cfg.scheduler, resources={"cpus": len(capacity.cpu_ids), "gpus": list(capacity.gpu_ids),
                                                    "memory_bytes": capacity.memory_bytes,
                                                    "end_time": cfg.end_time.current(time.time()),
                                                    "output_dir": str(cfg.output_dir)},
                gpu_sampler=self.monitor.gpu_sampler_name, **self.leases.identity())
        except BaseException:
            self.leases.close()
            raise
        self.leases.renewed(before)
        self.failures.load(self._failure_handlers())
        self._attach_actions()
        summary = self._summary = RunSummary(self.runner_id)
        log.info("runner %d on %s: %d CPUs, GPUs %s, %.1f GiB (%s)", self.runner_id, cfg.node_name,
                 len(capacity.cpu_ids), list(capacity.gpu_ids) or "none", capacity.memory_bytes / 2**30,
                 ", ".join(f"{k} from {v}" for k, v in self.node.sources.items()))
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        self.monitor.start()
        try:
            self._loop(summary)
        finally:
            try:
                self._wind_down(summary)
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
                self.monitor.stop()
                self.pool.close()
                self.leases.close()  # the guardian kills whatever the jobs left behind
        return summary

    # -- the loop ----------------------------------------------------------------------------
    def _loop(self, summary: RunSummary) -> None:
        """Each pass: maybe run a queue cycle, start what fits from the local backlog, then block
        until a child exits, a signal arrives, or the next cycle is due."""
        cfg = self.config
        self._last_cycle = self._last_progress = -1e18
        self._force_cycle = True
        idle_since: float | None = None
        idle_wait = 0.05
        while self.stop_reason is None:
            now = time.time()
            left = cfg.end_time.seconds_left(now, cfg.buffer_s)
            if left is not None and left <= 0:
                self.request_stop("walltime")
                break
            if self.leases.expired(time.monotonic()) and (self.running or self._backlog or self.failures.recovering):
                self._self_fence()
            counts = self._cycle(now, left) if self._cycle_due(now) else None
            if counts is not None:
                summary.counts = counts
            if self.stop_reason is not None:
                break
            self._start_backlog(now)
            if self.running or self.failures.recovering:
                idle_since, idle_wait = None, 0.05
                self._collect(self.pool.wait(self._wait_timeout(now, left)), summary)
                self.failures.check(time.monotonic())
                self._check_group_ends(time.monotonic())
                continue
            if self._backlog or self._outcomes or self._last_claimed:
                idle_since, idle_wait = None, 0.05
                self._force_cycle = True  # report, hand back what cannot start, claim again
                continue
            # Idle: nothing running here and nothing to start.
            if counts is None:
                self._force_cycle = True
                if time.monotonic() < self._retry_at:  # the queue is unreachable: back off
                    self.pool.wait(self._retry_at - time.monotonic())
                continue
            if not any(counts.get(s, 0) for s in UNFINISHED):
                summary.exit_reason = "workflow complete"
                return
            if not counts.get("pending") and not counts.get("running"):
                summary.unrunnable = self._unrunnable()
                if cfg.wait_for_new_jobs_s is None or summary.unrunnable:
                    summary.exit_reason = "no job can run here and none is running elsewhere"
                    return
            idle_since = idle_since or now
            if cfg.wait_for_new_jobs_s is not None and now - idle_since >= cfg.wait_for_new_jobs_s:
                summary.exit_reason = f"idle for {cfg.wait_for_new_jobs_s:.0f} s"
                return
            idle_wait = self._wait_for_change(idle_wait, cfg.heartbeat_interval_s)
            self._force_cycle = True

    def _cycle_due(self, now: float) -> bool:
        """Batch work per lock: cycle when forced, when the heartbeat is due, when enough outcomes
        wait (or the oldest waited ``report_delay_s``), or when there is room and nothing to start."""
        cfg = self.config
        if time.monotonic() < self._retry_at:
            return False
        if self._force_cycle or now - self._last_cycle >= cfg.heartbeat_interval_s:
            return True
        if not self.leases.may_start(time.monotonic()) and (self._backlog or self.running):
            return True  # renew before starting anything more
        if self._outcomes and (len(self._outcomes) >= self._prefetch(now)
                               or now - self._outcomes_since >= cfg.report_delay_s):
            return True
        if self._started and now - self._started_since >= cfg.report_delay_s:
            return True  # so the queue shows the job running, not pending, within report_delay_s
        if self._has_room() and not self._backlog:
            token = self.db.change_token()
            if self._last_claimed or token != self._seen_token:
                return True
        return False

    def _cycle(self, now: float, left: float | None) -> dict[str, int] | None:
        """One queue cycle; None when it failed (everything it carried waits for the next one)."""
        cfg = self.config
        self._seen_token = self.db.change_token()
        release = [job.id for job in self._backlog.values() if not self._can_start_later(job, now)]
        surplus = len(self._backlog) - len(release) - 2 * self._prefetch(now)
        if surplus > 0:  # the claim-ahead shrank well below the backlog (jobs got longer): hand back the newest
            dropped = set(release)
            kept = [job_id for job_id in self._backlog if job_id not in dropped]
            release += kept[-surplus:]
        release = self._with_group_siblings(release)
        for job_id in release:
            del self._backlog[job_id]
        mono = time.monotonic()
        deadline = self.leases.own.deadline
        observe = self.leases.observe_due(mono)
        idle = not self.running and not self._backlog and not self._last_claimed  # (counts cost a scan)
        progress_due = cfg.on_progress is not None and now - self._last_progress >= cfg.progress_interval_s
        held = {job_id: r.job.lease_token for job_id, r in self.running.items() if job_id not in self._lease_lost}
        held.update((job_id, r.entry.job.lease_token) for job_id, r in self.failures.recovering.items()
                    if job_id not in self._lease_lost)
        held.update((job_id, job.lease_token) for job_id, job in self._backlog.items())
        started, outcomes, verdicts = self._take_started(), self._take_outcomes(), self.leases.take_verdicts()
        samples = self._take_samples(now)
        may_claim = self.leases.may_start(mono) or not self.running  # a fresh lease comes with this cycle
        try:
            result = self.queue.cycle(
                self.runner_id, started=started, outcomes=outcomes, release=release, held=held,
                choose=self._chooser(now) if may_claim else None, limits=self._limits(left),
                scheduler=cfg.scheduler, strict_scheduler=cfg.strict_scheduler, window=self._window(),
                sweep=verdicts.sweep, fence=verdicts.fence, want_peers=observe, want_counts=idle or progress_due,
                samples=samples, **self._gang_options(now))
        except (QueueError, sqlite3.Error) as exc:
            self._started[:0], self._outcomes[:0] = started, outcomes
            self._unsent_samples[:0] = samples
            self.leases.restore_verdicts(verdicts)
            if isinstance(exc, QueueError) and not exc.retryable:
                log.error("runner %d: %s; stopping", self.runner_id, exc)
                self.request_stop("queue error")
            else:
                self._cycle_failed(exc)
            return None
        self._failing_since = None
        lapsed = deadline is not None and result.renewed_at >= deadline
        self.leases.renewed(result.renewed_at)
        # Also lapsed: a cycle frozen between its renewal and its return (a paused node) hands back
        # a renewal that is already over.
        if lapsed or self.leases.expired(time.monotonic()):
            # Jobs that ended on their own meanwhile keep their outcome; the guardian's kills and
            # everything still running are lost (they may be running elsewhere by now).
            self._collect(self.pool.wait(0), self._summary, lease_over=True)
            self._lose(self._held_ids(), "the lease lapsed while waiting for the queue")
        self._last_cycle = now
        self._force_cycle = False
        self._last_claimed = len(result.claimed)
        if result.runner_gone:
            log.error("runner %d: its workflow %d was deleted from the queue; stopping its jobs",
                      self.runner_id, cfg.workflow_id)
            self._lose(self._held_ids(), "its workflow was deleted")
            self.request_stop("workflow deleted")
            return None
        if result.revoked:
            self._lose(result.revoked, "the queue took them back (this runner was presumed dead, or they were canceled)")
        if result.peers is not None:
            self.leases.observed(result.renewed_at, result.peers)
        if cfg.allocation_nodes > 1:
            live = {s.job_id for s in result.shares if s.gpu_ids is not None}
            self._shares = {j: p for j, p in self._shares.items() if j in live}
            self._gangs = result.gangs
        if result.counts is not None and cfg.on_progress is not None:
            cfg.on_progress(result.counts)
            self._last_progress = now
        for job in result.claimed:
            self._backlog[job.id] = job
        if not self.config.dry_execute:  # their stdio files are created off this thread meanwhile
            self.pool.stdio.want(path for job in self._backlog.values() for path in self._stdio_paths(job))
        return result.counts

    def _cycle_failed(self, exc: Exception) -> None:
        """Back off (0.1 s doubling to 5 s) and retry; past twice the lease, give up: by then the
        jobs were fenced, and the runner cannot report anything."""
        mono = time.monotonic()
        self._failing_since = self._failing_since or mono
        failing = mono - self._failing_since
        delay = min(5.0, 0.1 * 2 ** min(6, int(failing // 0.5)))
        self._retry_at = mono + delay
        log.warning("runner %d: queue cycle failed (%s); retrying in %.1f s", self.runner_id, exc, delay)
        if failing > max(2 * self.config.heartbeat_timeout_s, 60.0):
            log.error("runner %d: the queue has been unreachable for %.0f s; giving up", self.runner_id, failing)
            self.request_stop("queue unreachable")

    def _self_fence(self) -> None:
        """The lease ran out without renewal: kill every job (others may take them any moment) and
        start nothing that was claimed ahead."""
        log.error("runner %d: lease not renewed for %.0f s; killing %d running jobs (self-fencing)",
                  self.runner_id, self.config.heartbeat_timeout_s, len(self.running))
        self._lose(self._held_ids(), "self-fenced")

    def _held_ids(self) -> list[int]:
        """Every job this runner holds: running, recovering (failure handler) or claimed ahead."""
        return [*self.running, *self.failures.recovering, *self._backlog]

    def _lose(self, job_ids: list[int], why: str) -> None:
        """This runner no longer holds ``job_ids``: drop the claimed-ahead ones, kill the running ones
        (their outcome is reported as lost, and the queue records it as late if it moved on)."""
        live = [j for j in job_ids if (j in self.running or j in self.failures.recovering)
                and j not in self._lease_lost]
        for job_id in job_ids:
            self._backlog.pop(job_id, None)
        if live:
            log.warning("runner %d: killing %d jobs: %s", self.runner_id, len(live), why)
            self._lease_lost.update(live)
            self._signaled.update(live)
            self.pool.signal(live, signal.SIGKILL)
            self.failures.lose(live)

    def _chooser(self, now: float) -> Callable[[list[ReadyJob]], Choice] | None:
        """Claim what fits the free resources now, plus up to ``prefetch`` more jobs that fit the
        node and the time left, so the next ones start without waiting for the lock."""
        cfg = self.config
        room = self._prefetch(now) - len(self._backlog)
        if self.stop_reason is not None or room <= 0:
            return None
        end = cfg.end_time.current(now)
        capacity = self.node.capacity

        def choose(ready: list[ReadyJob]) -> Choice:
            candidates, members = compose(
                [Candidate(r.job_id, r.num_cpus, r.num_gpus, r.memory_bytes, r.runtime_s, r.priority, r.num_nodes)
                 for r in ready
                 if r.job_id not in self._backlog and r.job_id not in self.running],
                {r.job_id: r.group_id for r in ready if r.group_id is not None})
            elsewhere: set[int] = set()
            if cfg.allocation_nodes > 1 and cfg.max_parallel_jobs is None and members:
                candidates, elsewhere = self._split_groups(candidates, members)
            chosen = [p.job_id for p in self._pack(candidates, now, end)][:room]
            taken = set(chosen)
            for c in plan_order(capacity, candidates):  # claim ahead: the next that fit the node and time left
                if len(chosen) >= room:
                    break
                if c.job_id not in taken and (cfg.max_parallel_jobs is not None or fits_node(capacity, c)) \
                        and fits_time(c, now=now, end_time=end, buffer_s=cfg.buffer_s):
                    chosen.append(c.job_id)
            picked = expand(chosen, members)
            return Choice(picked, elsewhere.intersection(picked))

        return choose

    def _start_backlog(self, now: float) -> None:
        """Pack the claimed-but-unstarted jobs into the free resources and start them."""
        if not self._backlog or self.stop_reason is not None or not self._has_room() \
                or not self.leases.may_start(time.monotonic()):
            return
        cfg = self.config
        backlog = list(self._backlog.values())
        # group members placed on another node: their group starts once every such share is set aside
        elsewhere = {j.id for j in backlog if j.num_nodes <= 1 and self._gangs.get(j.id)}
        waiting = {j.group.id for j in backlog if j.id in elsewhere and j.group is not None
                   and not all(m.acked for m in self._gangs[j.id])}
        candidates, members = compose(
            [Candidate(j.id, j.num_cpus, j.num_gpus, j.memory_bytes, j.runtime_s, j.priority, j.num_nodes)
             for j in backlog if j.id not in elsewhere and (j.group is None or j.group.id not in waiting)
             and (j.num_nodes <= 1 or self._gang_ready(j))],
            {j.id: j.group.id for j in backlog if j.group is not None})
        for placement in self._pack(candidates, now, cfg.end_time.current(now)):
            parts = members.get(placement.job_id)
            starting = [self._backlog[p.job_id] for p in parts] if parts else []
            group = starting[0].group if starting else None
            if group is not None:  # a group starts whole: its members here, and those on other nodes
                remote = [j for j in backlog if j.id in elsewhere and j.group is not None and j.group.id == group.id]
                self._group_hosts[group.id] = self._hosts_of([*starting, *remote])
                for job, part in zip(starting, split(placement, parts)):
                    self._start(self._backlog.pop(job.id), part)
                for job in remote:
                    self._start(self._backlog.pop(job.id), Placement(job.id, (), (), 0, placement.expected_end))
                continue
            self._start(self._backlog.pop(placement.job_id), placement)

    def _pack(self, candidates: Sequence[Candidate], now: float, end: float | None) -> list[Placement]:
        """``pack`` into the free resources; exactly its answer, but cheap with a long candidate
        list: pack decides candidates in order, so packing a prefix gives the same placements for
        that prefix, and once the prefix's placements use every free CPU no later candidate (each
        needs at least one CPU) can start."""
        cfg = self.config
        busy = self._busy()

        def run(cands: Sequence[Candidate]) -> list[Placement]:
            return pack(self.node.capacity, busy, cands, now=now, end_time=end, buffer_s=cfg.buffer_s,
                        max_parallel_jobs=cfg.max_parallel_jobs)

        free = len(self.node.capacity.cpu_ids) - sum(len(p.cpu_ids) for p in busy)
        cut = 2 * free + 8
        if cfg.max_parallel_jobs is None and 0 < free and cut < len(candidates):
            ordered = plan_order(self.node.capacity, candidates)  # the packer's own order, so a cut keeps
            placed = run(ordered[:cut])                           # a wide job's reservation
            if sum(len(p.cpu_ids) for p in placed) >= free and all(c.num_cpus >= 1 for c in ordered[cut:]):
                return placed
        return run(candidates)

    # -- multi-node jobs (gangs) ----------------------------------------------------------------
    def _gang_options(self, now: float) -> dict[str, object]:
        """What a cycle needs for multi-node jobs: the resources other runners' jobs may book here
        (free now, less what the claimed-ahead jobs will take), and the answer to new bookings."""
        if self.config.allocation_nodes <= 1 or self.config.max_parallel_jobs is not None \
                or self.stop_reason is not None:
            return {}
        cap = self.node.capacity
        held = self._busy()
        cpus = len(cap.cpu_ids) - sum(len(p.cpu_ids) for p in held) - sum(j.num_cpus for j in self._backlog.values())
        gpus = len(cap.gpu_ids) - sum(len(p.gpu_ids) for p in held) - sum(j.num_gpus for j in self._backlog.values())
        memory = cap.memory_bytes - sum(p.memory_bytes for p in held) - sum(j.memory_bytes
                                                                          for j in self._backlog.values())
        return {"free": Free(max(0, cpus), max(0, gpus), max(0, memory)), "accept": self._accept_shares(now)}

    def _accept_shares(self, now: float) -> Callable[[list[Share]], dict[int, list[str] | None]]:
        """Set aside each booked share that fits the free resources now (specific CPUs and GPUs),
        else refuse it (its job goes back to ready)."""
        def accept(new: list[Share]) -> dict[int, list[str] | None]:
            answers: dict[int, list[str] | None] = {}
            end = self.config.end_time.current(now)
            for share in new:
                placed = pack(self.node.capacity, self._busy(),
                              [Candidate(share.job_id, share.cpus, share.gpus, share.memory_bytes, 0)],
                              now=now, end_time=end, buffer_s=0.0)
                if placed:
                    self._shares[share.job_id] = placed[0]
                    answers[share.job_id] = list(placed[0].gpu_ids)
                else:
                    answers[share.job_id] = None
            return answers
        return accept

    def _hosts_of(self, members: list[ClaimedJob]) -> list[str]:
        """The node of each group member, by group rank (its own, or the one its share is on)."""
        hosts = [self.config.node_name] * (members[0].group.size if members and members[0].group else 0)
        for job in members:
            booked = self._gangs.get(job.id) if job.num_nodes <= 1 else None
            if job.group is not None and job.group.rank < len(hosts):
                hosts[job.group.rank] = booked[0].node if booked else self.config.node_name
        return hosts

    def _split_groups(self, candidates: list[Candidate], members: dict[int, list[Candidate]]
                      ) -> tuple[list[Candidate], set[int]]:
        """In a multi-node allocation, a group larger than this node keeps here the members that
        fit together (in rank order, the first one always), and places the others on other nodes
        (returned: their ids; the queue books them a share each)."""
        capacity = self.node.capacity
        elsewhere: set[int] = set()
        result = []
        for cand in candidates:
            parts = members.get(cand.job_id)
            if not parts or fits_node(capacity, cand) or not fits_node(capacity, parts[0]):
                result.append(cand)
                continue
            local: list[Candidate] = []
            for part in parts:
                trial = Candidate(0, sum(p.num_cpus for p in local) + part.num_cpus,
                                  sum(p.num_gpus for p in local) + part.num_gpus,
                                  sum(p.memory_bytes for p in local) + part.memory_bytes, 0)
                if fits_node(capacity, trial):
                    local.append(part)
                else:
                    elsewhere.add(part.job_id)
            result.append(Candidate(cand.job_id, sum(p.num_cpus for p in local), sum(p.num_gpus for p in local),
                                    sum(p.memory_bytes for p in local), cand.runtime_s, cand.priority))
        return result, elsewhere

    def _gang_ready(self, job: ClaimedJob) -> bool:
        """A multi-node job starts once every other node acknowledged its share."""
        members = self._gangs.get(job.id, [])
        return len(members) == job.num_nodes - 1 and all(m.acked for m in members)

    def _in_image(self, job: ClaimedJob, command: str) -> str:
        """The command run inside the job's image with the node's container runtime; natively when
        there is none (one event per workflow says so, whichever runner sees it first)."""
        runtime = self.config.container_runtime
        if runtime and shutil.which(runtime):
            return container_command(runtime, job.image, command, binds=[str(self.config.working_dir),  # type: ignore[arg-type]
                                                                      str(self.config.output_dir)],
                                     gpus=bool(job.num_gpus))
        if not self._image_warned:
            self._image_warned = True
            why = f"{runtime} is not installed on {self.config.node_name}" if runtime else \
                "the site config names no container_runtime"
            message = f"jobs that name a container image (e.g. {job.name}: {job.image}) run natively: {why}"
            log.warning("%s", message)
            with contextlib.suppress(QueueError, sqlite3.Error):
                with self.db.transaction() as conn:
                    if not conn.execute("SELECT 1 FROM events WHERE workflow_id = ? AND kind = 'image_not_used'"
                                        " LIMIT 1", (self.config.workflow_id,)).fetchone():
                        add_event(conn, self.config.workflow_id, "image_not_used", message,
                                  data={"job": job.name, "image": job.image, "runtime": runtime},
                                  source=f"runner {self.runner_id}")
        return command

    def _with_group_siblings(self, job_ids: list[int]) -> list[int]:
        """Backlog jobs to hand back, with the rest of their groups (a group goes back whole)."""
        groups = {self._backlog[j].group.id for j in job_ids if self._backlog[j].group is not None}
        if not groups:
            return job_ids
        chosen = set(job_ids)
        return job_ids + [j for j, job in self._backlog.items()
                          if job.group is not None and job.group.id in groups and j not in chosen]

    def _end_group(self, lead: _Running, outcome: Outcome) -> None:
        """The lead of a ``group_end: lead`` group exited: TERM the other members still running,
        KILL them after the grace period (`_check_group_ends`); their outcome will be the lead's,
        with the reason ``terminated_by_lead``."""
        group = lead.job.group
        if group is None or group.group_end != "lead" or group.lead_job_id != lead.job.id \
                or self.stop_reason is not None or outcome.status not in ("completed", "failed"):
            return
        siblings = [j for j, r in self.running.items() if r.job.group is not None and r.job.group.id == group.id]
        if not siblings:
            return
        log.info("group %s: lead %s exited (%s); ending %d other member(s)", group.name, lead.job.name,
                 outcome.status, len(siblings))
        deadline = time.monotonic() + self.config.termination_grace_s
        for job_id in siblings:
            self._ended_by_lead[job_id] = (lead.job.name, outcome.status, deadline)
        self.pool.signal(siblings, signal.SIGTERM)

    def _check_group_ends(self, mono: float) -> None:
        """KILL the members a lead ended that are still running past their grace period (beside
        ``failures.check``, which does the same for runtime limits)."""
        overdue = [j for j, (_, _, due) in self._ended_by_lead.items() if due <= mono and j in self.running]
        if overdue:
            self.pool.signal(overdue, signal.SIGKILL)

    def _next_group_end(self, mono: float) -> float | None:
        """Seconds to the next such KILL (the loop must wake for it), or None."""
        waiting = [due for j, (_, _, due) in self._ended_by_lead.items() if due > mono and j in self.running]
        return min(waiting) - mono if waiting else None

    def _can_start_later(self, job: ClaimedJob, now: float) -> bool:
        """A backlog job still fits the time left (else it goes back to the queue)."""
        candidate = Candidate(job.id, job.num_cpus, job.num_gpus, job.memory_bytes, job.runtime_s)
        return fits_time(candidate, now=now, end_time=self.config.end_time.current(now), buffer_s=self.config.buffer_s)

    def _busy(self) -> list[Placement]:
        """Placements in use: running jobs, and failed jobs whose recovery script runs."""
        return [r.placement for r in self.running.values()] + \
            [r.entry.placement for r in self.failures.recovering.values()] + list(self._shares.values())

    def _has_room(self) -> bool:
        if self.config.max_parallel_jobs is not None:
            return len(self.running) + len(self.failures.recovering) < self.config.max_parallel_jobs
        return sum(len(p.cpu_ids) for p in self._busy()) < len(self.node.capacity.cpu_ids)

    def _limits(self, left: float | None) -> Limits:
        if self.config.max_parallel_jobs is not None:
            return Limits(runtime_s=left, nodes=1)
        cap = self.node.capacity
        return Limits(cpus=len(cap.cpu_ids), gpus=len(cap.gpu_ids), memory_bytes=cap.memory_bytes, runtime_s=left,
                      nodes=max(1, self.config.allocation_nodes))

    def _window(self) -> int:
        return max(64, 2 * self._prefetch(time.time()))

    def _prefetch(self, now: float) -> int:
        """How many claimed-but-unstarted jobs to hold, which is also how many outcomes to batch
        into one cycle: ``RunnerConfig.prefetch`` when set; else one per slot, raised to about
        ``report_delay_s`` worth of jobs at this runner's completion rate over the last second
        (so very short jobs cost one lock per batch, not one per job or two), at most MAX_PREFETCH."""
        if self.config.prefetch is not None:
            return self.config.prefetch
        recent = self._finished_at
        while recent and recent[0] < now - 1.0:
            recent.popleft()
        return prefetch_size(slots=self._slots, completions_last_second=len(recent),
                             report_delay_s=self.config.report_delay_s, ceiling=MAX_PREFETCH)

    def _wait_timeout(self, now: float, left: float | None) -> float:
        cfg = self.config
        timeout = min(cfg.heartbeat_interval_s - (now - self._last_cycle), 1.0)
        if self._outcomes:
            timeout = min(timeout, cfg.report_delay_s - (now - self._outcomes_since))
        if self._started:
            timeout = min(timeout, cfg.report_delay_s - (now - self._started_since))
        if left is not None:
            timeout = min(timeout, left)
        mono = time.monotonic()
        to_deadline = self.leases.seconds_to_deadline(mono)
        if to_deadline is not None and self.running:
            timeout = min(timeout, max(to_deadline, 0.01))
        due = self.failures.next_due(mono)  # a runtime limit or a recovery script's timeout
        if due is not None:
            timeout = min(timeout, due)
        group_due = self._next_group_end(mono)
        if group_due is not None:
            timeout = min(timeout, group_due)
        return max(timeout, 0.0)

    def _wait_for_change(self, wait: float, ceiling: float) -> float:
        """Sleep until the queue's change signal moves (checked by stat, lock-free) or ``wait`` passes;
        return the next, longer wait (capped at ``ceiling``)."""
        token = self.db.change_token()
        deadline = time.monotonic() + wait
        step = min(0.05, wait)
        while time.monotonic() < deadline and self.stop_reason is None:
            self.pool.wait(step)  # returns early on wake() (signals)
            if self.db.change_token() != token:
                return 0.05
            step = min(step * 2, 1.0)
        return min(wait * 2, ceiling)

    # -- starting and finishing jobs -----------------------------------------------------------
    def _stdio_paths(self, job: ClaimedJob) -> tuple[Path, Path]:
        stem = self.config.output_dir / "job_stdio" / f"wf{self.config.workflow_id}_job{job.id}_attempt{job.attempt}"
        return stem.with_name(stem.name + ".out"), stem.with_name(stem.name + ".err")

    def _start(self, job: ClaimedJob, placement: Placement) -> None:
        cfg = self.config
        if not self._started:
            self._started_since = time.time()
        if cfg.dry_execute:
            now = time.time()
            self._started.append(Started(job.id, job.lease_token))
            self._add_outcome(Outcome(job.id, job.attempt, "completed", job.lease_token, 0, None, now, now))
            return
        stdout, stderr = self._stdio_paths(job)
        command = f"{job.invocation_script} {job.command}" if job.invocation_script else job.command
        if job.image is not None:
            command = self._in_image(job, command)
        gang_env: dict[str, str] = {}
        members = self._gangs.get(job.id, [])
        if job.num_nodes > 1 or members:  # a multi-node job, or a group member placed on another node
            local = job.num_nodes > 1
            nodes = [cfg.node_name, *(m.node for m in members)] if local else [m.node for m in members]
            gpus = node_gpu_map(nodes, [placement.gpu_ids, *(m.gpu_ids for m in members)] if local else
                                [m.gpu_ids for m in members])
            hostfile = stdout.with_suffix(".hosts")
            start = launch(job.launcher if local else None, command, nodes=nodes, cpus_per_node=job.num_cpus,
                           memory_bytes=job.memory_bytes, gpus=gpus,
                           gpu_variable=cfg.gpu_variable, hostfile=hostfile)
            hostfile.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(hostfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(start.hostfile)
            command, gang_env = start.command, start.env
        affinity = pin_plan(self.node.host_cpus, placement.cpu_ids,
                            num_slots=len(self.node.capacity.cpu_ids)) if placement.cpu_ids else None
        if placement.cpu_ids and affinity is None and not self._pin_warned:
            log.info("not pinning jobs to cores: %d CPU slots on %d host CPUs",
                     len(self.node.capacity.cpu_ids), len(self.node.host_cpus))
            self._pin_warned = True
        launched = self.pool.start(LaunchSpec(job.id, job.attempt, command, cfg.working_dir,
                                              {**self._environment(job, placement), **gang_env}, stdout, stderr,
                                              affinity))
        if isinstance(launched, Finished):
            self._started.append(Started(job.id, job.lease_token))
            self._add_outcome(self.failures.outcome(job, launched, None))
            return
        self._started.append(Started(job.id, job.lease_token, launched))
        entry = self.running[job.id] = _Running(job, placement, stdout, stderr, oom_kills=self._oom_baseline())
        self.failures.started(entry, time.monotonic())
        self.monitor.track(job.id, launched, self.failures.memory_limit(job.memory_bytes), gpu_ids=placement.gpu_ids,
                           attempt=job.attempt)

    def _oom_baseline(self) -> int | None:
        """The cgroup's OOM-kill count for a job starting now, read at most every 0.1 s (one file
        read per job was ~10 % of the runner's CPU with short jobs). A count that rises during a
        job's life is evidence, not proof, that it was the one killed: starting the window up to
        0.1 s early changes nothing in kind."""
        mono = time.monotonic()
        if mono - self._oom_read_at >= 0.1:
            self._oom_count, self._oom_read_at = oom_kills(), mono
        return self._oom_count

    def _environment(self, job: ClaimedJob, placement: Placement) -> dict[str, str]:
        cfg = self.config
        if self._base_env is None:  # the runner's environment, decoded once (os.environ decodes each read)
            self._base_env = dict(os.environ)
        env = dict(self._base_env)
        env.update(job.env)
        env.update({
            "TORC_WORKFLOW_ID": str(cfg.workflow_id), "TORC_JOB_ID": str(job.id), "TORC_JOB_NAME": job.name,
            "TORC_ATTEMPT": str(job.attempt), "TORC_ATTEMPT_ID": str(job.attempt),
            "TORC_OUTPUT_DIR": str(cfg.output_dir),
            "TORC_RUNNER_ID": str(self.runner_id), "OMP_NUM_THREADS": str(job.num_cpus),
            "TORC_DB": str(self.db.path),  # `torc user-data put NAME …` from inside the job needs no --db
            **self.leases.job_environment(),
        })
        if job.group is not None:
            group = job.group
            hosts = self._group_hosts.get(group.id) or [cfg.node_name] * group.size
            env.update(TORC_GROUP=group.name, TORC_GROUP_RANK=str(group.rank), TORC_GROUP_SIZE=str(group.size),
                       TORC_GROUP_HOSTS=",".join(hosts))
            env.update((f"TORC_GROUP_HOST_{rank}", host) for rank, host in enumerate(hosts))
        if cfg.max_parallel_jobs is None:
            env["TORC_CPU_IDS"] = ",".join(map(str, placement.cpu_ids))
            if self.node.capacity.gpu_ids or job.num_gpus:
                env[cfg.gpu_variable] = ",".join(placement.gpu_ids)
        return env

    def _collect(self, finished: list[Finished], summary: RunSummary, *, lease_over: bool = False) -> None:
        """Record the outcomes of ``finished``. ``lease_over``: the lease ran out meanwhile (also
        checked here), so what died of SIGKILL was fenced by the guardian: lost, not failed."""
        if lease_over or self.leases.expired(time.monotonic()):
            fenced = [d.job_id for d in finished if d.signal == signal.SIGKILL and d.job_id in self.running]
            self._lease_lost.update(fenced)
            self._signaled.update(fenced)
        if self.stop_reason is None and any(
                killed_by_stop_signal(d.signal, d.return_code) for d in finished
                if d.job_id in self.running and d.job_id not in self._signaled):
            self._await_stop_request(STOP_SIGNAL_WINDOW_S)
        for done in finished:
            if done.job_id < 0:  # a failure handler's recovery script
                outcome = self.failures.recovery_done(done)
                if outcome is not None:
                    self._add_outcome(outcome)
                    self._lease_lost.discard(-done.job_id)
                continue
            self._signaled.discard(done.job_id)
            entry = self.running.pop(done.job_id, None)
            if entry is None:
                continue
            stats = self.monitor.untrack(done.job_id)
            outcome = self.failures.after_failure(entry, self.failures.outcome(entry.job, done, stats, entry))
            ended = self._ended_by_lead.pop(done.job_id, None)
            if outcome is not None and ended is not None and outcome.status in ("completed", "failed"):
                lead_name, lead_status, _ = ended
                outcome = replace(outcome, status=lead_status, reason="terminated_by_lead",  # type: ignore[arg-type]
                                  message=f"ended by its group's lead {lead_name} ({lead_status})")
            if outcome is not None and entry.job.group is not None:
                self._end_group(entry, outcome)
            if outcome is not None:
                self._add_outcome(outcome)
                self._lease_lost.discard(done.job_id)

    def _add_outcome(self, outcome: Outcome) -> None:
        summary = self._summary  # counts every outcome, launch failures and dry runs included
        if summary is not None:
            if outcome.status == "completed":
                summary.completed += 1
            elif outcome.status == "terminated":
                summary.terminated += 1
            elif outcome.status == "lost":
                summary.lost += 1
            elif outcome.status == "retry":
                summary.retried += 1
            else:
                summary.failed += 1
        now = time.time()
        if not self._outcomes:
            self._outcomes_since = now
        self._outcomes.append(outcome)
        self._finished_at.append(now)

    def _trusted_peak_rss(self, peak: int | None) -> int | None:
        """wait4's peak RSS counts the runner's own pages that the child had mapped between fork and
        exec, so a figure at or below the runner's own peak (which never shrinks, unlike its RSS now)
        says nothing about the job: drop it (the monitor's sampled tree peak remains)."""
        if not peak or not self.monitor.enabled:  # resource_monitor disabled: no memory figures at all
            return None
        own_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * RSS_UNIT
        return peak if peak > own_peak else None

    def _await_stop_request(self, timeout: float) -> None:
        """A job died of SIGTERM/SIGKILL/SIGINT this runner did not send. Slurm (scancel, the time
        limit) signals every process of the allocation, the jobs often a few ms before the runner:
        give the runner's own signal a moment to arrive, so the job is handed back, not failed."""
        deadline = time.monotonic() + timeout
        while self.stop_reason is None and time.monotonic() < deadline:
            time.sleep(0.02)  # signal handlers run between sleeps

    def _wind_down(self, summary: RunSummary) -> None:
        """Stop claiming; TERM the jobs that support it, KILL the rest after the grace period;
        hand every unfinished job back to ready; sign off. Ending at the walltime is no failure."""
        cfg = self.config
        if self.running:
            self._collect(self.pool.wait(0), summary)  # those that exited before the stop keep their outcome
        recovering = self.failures.recovering
        if self.running or recovering:
            self._terminating = (set(self.running) | set(recovering)) - self._lease_lost
            reason = self.stop_reason or "runner exit"
            log.warning("stopping %d running jobs (%s)", len(self.running) + len(recovering), reason)
            polite = [j for j, r in self.running.items() if r.job.supports_termination]
            self.pool.signal(polite, signal.SIGTERM)
            self.failures.stop_all(signal.SIGTERM)
            deadline = time.monotonic() + cfg.termination_grace_s
            while (self.running or recovering) and time.monotonic() < deadline:
                self._collect(self.pool.wait(max(0.0, deadline - time.monotonic())), summary)
            if self.running or recovering:
                self.pool.signal(list(self.running), signal.SIGKILL)
                self.failures.stop_all(signal.SIGKILL)
                while self.running or recovering:
                    self._collect(self.pool.wait(5.0), summary)
        summary.exit_reason = summary.exit_reason or (self.stop_reason or "")
        self._last_cycle_before_actions()
        self._finish_actions()
        self._sign_off()

    def _last_cycle_before_actions(self) -> None:
        """Record the outcomes and hand back the jobs claimed ahead in a normal cycle, before the
        actions drain: the killed jobs must not wait for the actions (Slurm may SIGKILL the runner
        meanwhile), and the actions this cycle makes due are seen in it. A runner stopping on its
        own (workflow complete, idle) claims them and performs them in the drain; one told to stop
        (a signal, the walltime, an error) leaves them due for the other observers."""
        release, self._backlog = list(self._backlog), {}
        if self.stop_reason == "workflow deleted" or self.runner_id is None:
            return
        performer = self.config.actions
        if performer is not None and self.stop_reason is not None:
            performer.accepting = False  # type: ignore[attr-defined]
        started, outcomes = self._take_started(), self._take_outcomes()
        try:
            self.queue.cycle(self.runner_id, started=started, outcomes=outcomes, release=release)
        except (QueueError, sqlite3.Error) as exc:  # the sign-off records them (retried)
            log.warning("runner %d: the last cycle failed (%s); the sign-off records the outcomes", self.runner_id, exc)
            self._started[:0], self._outcomes[:0] = started, outcomes

    def _actions_deadline(self) -> float | None:
        """Monotonic time by which the actions must be done: the termination grace after a signal,
        and a quarter of the buffer before the end time (the sign-off still needs a moment)."""
        cfg = self.config
        ends: list[float] = []
        if self._signal_at is not None:
            ends.append(self._signal_at + cfg.termination_grace_s)
        left = cfg.end_time.seconds_left(time.time(), cfg.buffer_s / 4)
        if left is not None:
            ends.append(time.monotonic() + left)
        return min(ends) if ends else None

    def _sign_off(self) -> None:
        """The last cycle: report what is left and hand back the rest; retried with backoff while
        the lease lasts (after that, the others will sweep this runner)."""
        outcomes = self._take_outcomes()
        samples = self._take_samples(time.time(), flush=True)
        self._started = []  # an outcome applies to a pending or running job alike
        if self.stop_reason == "workflow deleted":
            return
        deadline = time.monotonic() + max(5.0, self.config.heartbeat_timeout_s)
        delay = 0.1
        while True:
            try:
                left = self.queue.finish_runner(
                    self.runner_id, outcomes=outcomes, report=self._report(), samples=samples,
                    time_left_s=self.config.end_time.seconds_left(time.time(), self.config.buffer_s))
                if left:
                    log.warning("%s", left)  # also the runner_exit_with_work_left event
                return
            except (QueueError, sqlite3.Error) as exc:
                if time.monotonic() + delay > deadline:
                    log.error("runner %d could not sign off (%s); %d outcomes are lost, and other runners "
                              "will take its jobs back", self.runner_id, exc, len(outcomes))
                    return
                log.warning("runner %d: sign-off failed (%s); retrying in %.1f s", self.runner_id, exc, delay)
                time.sleep(delay)
                delay = min(2 * delay, 5.0)

    # -- workflow actions (runner.actions; claimed in the queue's cycle, performed in threads) -----------
    def _attach_actions(self) -> None:
        performer = self.config.actions
        if performer is None:
            return
        performer.attach(db=self.db, queue=self.queue, runner_id=self.runner_id, working_dir=self.config.working_dir,
                         output_dir=self.config.output_dir, identity=self.leases.identity(),
                         env=self.leases.job_environment())  # its commands die with the runner, as jobs do
        performer.worker_actions(self.db, "on_worker_start")

    def _finish_actions(self) -> None:
        """Before signing off: the claims in flight finish while this runner's lease is renewed
        (so nobody takes them over meanwhile), then this runner's on_worker_complete actions, both
        until the deadline (``_actions_deadline``): then the commands are killed and the claims left
        to be taken over (the runner signs off, so it counts as dead)."""
        performer = self.config.actions
        if performer is None or self.stop_reason == "workflow deleted":
            return
        deadline = self._actions_deadline()
        performer.drain(lambda: self.queue.cycle(self.runner_id), self.config.heartbeat_interval_s or 5.0, deadline)
        performer.worker_actions(self.db, "on_worker_complete", deadline)

    def _report(self) -> dict[str, object]:
        """What this runner did, for its ``runner_ended`` event."""
        summary = self._summary
        if summary is None:
            return {"exit_reason": self.stop_reason or ""}
        report: dict[str, object] = {k: getattr(summary, k) for k in ("completed", "failed", "terminated", "lost",
                                                                      "retried")}
        report["exit_reason"] = summary.exit_reason or self.stop_reason or ""
        if summary.unrunnable:
            report["unrunnable"] = summary.unrunnable[:20]
        return report

    def _failure_handlers(self) -> dict:
        """The workflow's failure handlers by name (read once, at start)."""
        if not self.db.read("SELECT 1 FROM jobs WHERE workflow_id = ? AND failure_handler IS NOT NULL LIMIT 1",
                            (self.config.workflow_id,)):
            return {}
        from torc_slurm.store.workflows import workflow_settings

        spec = workflow_settings(self.db, self.config.workflow_id).spec
        return {h.name: list(h.rules) for h in spec.failure_handlers}

    def _unrunnable(self) -> list[str]:
        """Ready jobs that could never run on this runner, each with why (for a clear report): more
        than the node has, more than one node, or a group whose members together exceed the node."""
        cap = self.node.capacity
        rows = self.db.read("SELECT id, name, num_cpus, num_gpus, memory_bytes, runtime_s, num_nodes, group_id FROM jobs"
                            " WHERE workflow_id = ? AND status = 'ready' ORDER BY rank LIMIT 1000",
                            (self.config.workflow_id,))
        nodes = max(1, self.config.allocation_nodes)
        found = [f"{r['name']} (needs {r['num_nodes']} nodes; " + ("this runner has one)" if nodes == 1 else
                                                                    f"this allocation has {nodes})")
                 for r in rows if r["num_nodes"] > nodes]
        if self.config.max_parallel_jobs is not None:
            return found
        groups: dict[int, list] = {}
        for r in rows:
            if r["num_nodes"] > nodes:
                continue
            if r["group_id"] is not None:
                groups.setdefault(r["group_id"], []).append(r)
            elif not fits_node(cap, Candidate(r["id"], r["num_cpus"], r["num_gpus"], r["memory_bytes"], r["runtime_s"])):
                found.append(f"{r['name']} (needs {r['num_cpus']} CPUs, {r['num_gpus']} GPUs, "
                             f"{r['memory_bytes'] / 2**30:.1f} GiB)")
        for members in groups.values():
            cpus, gpus = sum(m["num_cpus"] for m in members), sum(m["num_gpus"] for m in members)
            memory = sum(m["memory_bytes"] for m in members)
            if nodes > 1:  # spread over the allocation's nodes: only a member larger than a node cannot run
                members = [m for m in members if not fits_node(cap, Candidate(0, m["num_cpus"], m["num_gpus"],
                                                                                 m["memory_bytes"], 0))]
                if members:
                    found.append(f"{', '.join(m['name'] for m in members)} (group members larger than a node)")
                continue
            if not fits_node(cap, Candidate(0, cpus, gpus, memory, 0)):
                found.append(f"{', '.join(m['name'] for m in members)} (a group that starts together: needs "
                             f"{cpus} CPUs, {gpus} GPUs, {memory / 2**30:.1f} GiB at once)")
        return found

    def _take_started(self) -> list[Started]:
        started, self._started = self._started, []
        return started

    def _take_samples(self, now: float, *, flush: bool = False) -> list[NodeUse]:
        """Node use to write with this cycle: the finished time buckets (all of them at the end), then
        the jobs' time-series rows when the workflow keeps them (`store.samples`; the queue tells them
        apart by type)."""
        self.usage.add(self.monitor.drain_node_samples())
        samples, self._unsent_samples = self._unsent_samples + self.usage.take(now, flush=flush), []
        if self.monitor.series:
            samples += self.monitor.drain_job_samples()  # type: ignore[arg-type]
        return samples

    def _take_outcomes(self) -> list[Outcome]:
        outcomes, self._outcomes = self._outcomes, []
        return outcomes
