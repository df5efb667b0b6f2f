"""The claim/complete cycle of the queue, for runners; all of it under one lock per cycle.

A runner's ``cycle`` does, in ONE lock acquisition (DESIGN §2):
  1. record the jobs it started and the outcomes it reaped since the last cycle, unblocking the
     dependents of finished jobs through their dependency sets (only the sets the job belongs to);
  2. renew its lease, sweep the runners it was asked to (see `store.leases`), and tell the runner
     which of the jobs it holds are no longer its own (swept, canceled): it must kill those;
  3. read a window of ready jobs that fit the node and the time left, in rank order, and let the
     caller's pure ``choose`` pick the ones to start;
  4. mark those pending under one new fencing token and return them.

Fencing: every claim carries a lease token. A start or an outcome applies only while the job is
still held by that runner under that token; otherwise it is recorded as *late* and changes nothing.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from torc_slurm.errors import QueueError
from torc_slurm.states import HELD, JobStatus, sql_list
from torc_slurm.store import actions, leases
from torc_slurm.store.db import Database
from torc_slurm.store import gangs
from torc_slurm.store.events import add_event
from torc_slurm.store.gangs import Free, Member, Share
from torc_slurm.store.views import read_status_counts
from torc_slurm.store.leases import PeerLease, SweepRequest

log = logging.getLogger(__name__)
# terminated: stopped by its runner (walltime, shutdown); lost: its lease ended first (self-fenced);
# retry: failed, and its failure handler retries it (recorded as a failed attempt, job back to ready).
OutcomeStatus = Literal["completed", "failed", "terminated", "lost", "canceled", "retry"]
INTERRUPTED = ("terminated", "lost")
WORK_LEFT_CAP = 10_000  # a runner's last event counts the ready jobs it leaves up to this many


@dataclass(frozen=True)
class ReadyJob:
    """What packing needs to know about a ready job."""

    job_id: int
    num_cpus: int
    num_gpus: int
    memory_bytes: int
    runtime_s: int
    group_id: int | None = None   # a group's members come together, in group rank order
    priority: int | None = None   # the packer puts wide jobs first within a priority
    num_nodes: int = 1


@dataclass(frozen=True)
class GroupInfo:
    """A claimed job's group: its members start together (all claimed in one cycle)."""

    id: int
    name: str
    rank: int            # 0-based, spec order
    size: int
    lead_job_id: int | None
    group_end: str       # 'lead' | 'all'


@dataclass(frozen=True)
class ClaimedJob:
    id: int
    name: str
    command: str
    invocation_script: str | None
    env: dict[str, str]
    attempt: int
    num_cpus: int
    num_gpus: int
    memory_bytes: int
    runtime_s: int
    supports_termination: bool
    output_files: tuple[str, ...]
    lease_token: int
    failure_handler: str | None = None
    retries: int = 0                 # failure-handler retries used so far
    enforce_runtime: bool = False
    runtime_grace: float = 1.5
    group: GroupInfo | None = None
    num_nodes: int = 1
    launcher: str | None = None       # multi-node: 'srun' (None) or 'none'
    image: str | None = None          # a container image to run in (when the node has a runtime)
    priority: int | None = None


@dataclass(frozen=True)
class Started:
    """A claimed job whose process started: ``pid`` leads its process group."""

    job_id: int
    lease_token: int
    pid: int | None = None


@dataclass(frozen=True)
class Outcome:
    job_id: int
    attempt: int
    status: OutcomeStatus
    lease_token: int
    return_code: int | None = None
    signal: int | None = None
    started_at: float | None = None
    ended_at: float | None = None
    peak_rss_bytes: int | None = None
    cpu_time_s: float | None = None
    avg_cpu_percent: float | None = None
    peak_cpu_percent: float | None = None
    avg_memory_bytes: int | None = None
    peak_memory_bytes: int | None = None
    message: str | None = None
    reason: str | None = None   # why it ended (see runner.policy); None for a completed attempt
    avg_gpu_percent: float | None = None       # None: no GPU sampler on the node
    peak_gpu_memory_bytes: int | None = None


@dataclass(frozen=True)
class NodeUse:
    """The runner's node over one stretch of time (a row of ``runner_samples``)."""

    at: float
    cpu_percent: float               # of the runner's CPUs, 0-100
    memory_bytes: int                # RSS of all its jobs' process trees
    gpu_percent: float | None = None  # None: no GPU sampler
    gpu_memory_bytes: int | None = None


@dataclass(frozen=True)
class Limits:
    """The most one job may ask for on this runner (node capacity, time left)."""

    cpus: int | None = None
    gpus: int | None = None
    memory_bytes: int | None = None
    runtime_s: float | None = None
    nodes: int | None = None        # the most nodes one job may span here (None: any)


@dataclass
class CycleResult:
    claimed: list[ClaimedJob] = field(default_factory=list)
    revoked: list[int] = field(default_factory=list)  # held jobs no longer this runner's: kill them
    counts: dict[str, int] | None = None              # workflow job counts, when asked for
    peers: list[PeerLease] | None = None              # the other live runners, when asked for
    renewed_at: float = 0.0                           # time.monotonic() inside the lock: lease renewed
    runner_gone: bool = False                         # the runner (its workflow) was deleted: stop
    shares: list[Share] = field(default_factory=list)  # other runners' multi-node jobs this one holds a share of
    gangs: dict[int, list[Member]] = field(default_factory=dict)  # its own pending multi-node jobs' members


class Choice(list):
    """What a chooser picks (job ids, in claim order), and the group members among them it places
    on other nodes of its allocation (``remote``): each of those gets a share booked on another
    runner, as a multi-node job's other nodes do, and its launcher starts it there."""

    def __init__(self, ids: Iterable[int] = (), remote: Iterable[int] = ()) -> None:
        super().__init__(ids)
        self.remote = frozenset(remote)


Chooser = Callable[[list[ReadyJob]], Sequence[int]]
# Given the shares other runners booked on this one, the GPU ids it sets aside for each (None: refused).
ShareAcceptor = Callable[[list[Share]], Mapping[int, Sequence[str] | None]]


class Queue:
    """One workflow's queue as seen by a runner (or by a command that sweeps)."""

    def __init__(self, db: Database, workflow_id: int) -> None:
        self.db = db
        self.workflow_id = workflow_id
        self.action_observer = None  # runner.actions.ActionPerformer: claims workflow actions in cycles

    # -- runners ---------------------------------------------------------------------------
    def register_runner(self, *, hostname: str, pid: int, slurm_job_id: str | None = None,
                        scheduler: str | None = None, resources: dict | None = None,
                        host_key: str | None = None, pid_started: float | None = None,
                        token: str | None = None, slurm_step_id: str | None = None,
                        gpu_sampler: str | None = None) -> int:
        now = time.time()
        with self.db.transaction() as conn:
            status = conn.execute("SELECT status FROM workflows WHERE id = ?", (self.workflow_id,)).fetchone()
            if status is None:
                raise QueueError(f"no workflow {self.workflow_id} in {self.db.path}")
            runner_id = leases.next_ids(conn, "runners")
            conn.execute(
                "INSERT INTO runners (id, workflow_id, hostname, pid, slurm_job_id, scheduler, resources, status,"
                " started_at, heartbeat_at, host_key, pid_started, token, slurm_step_id)"
                " VALUES (?,?,?,?,?,?,?,'active',?,?,?,?,?,?)",
                (runner_id, self.workflow_id, hostname, pid, slurm_job_id, scheduler, json.dumps(resources or {}),
                 now, now, host_key, pid_started, token, slurm_step_id))
            if gpu_sampler:
                conn.execute("UPDATE runners SET gpu_sampler = ? WHERE id = ?", (gpu_sampler, runner_id))
            where = f" in Slurm job {slurm_job_id}" if slurm_job_id else ""
            add_event(conn, self.workflow_id, "runner_started", f"runner {runner_id} started on {hostname}{where}",
                      data={"runner_id": runner_id, "hostname": hostname, "pid": pid, "slurm_job_id": slurm_job_id,
                            "scheduler": scheduler, **{k: v for k, v in (resources or {}).items() if k != "output_dir"}},
                      source=f"runner {runner_id}")
            return runner_id

    def finish_runner(self, runner_id: int, *, outcomes: Sequence[Outcome] = (),
                      report: Mapping[str, object] | None = None, time_left_s: float | None = None,
                      samples: Sequence[NodeUse] = ()) -> str | None:
        """The runner's last cycle: record outcomes, hand back anything it still holds, sign off.
        ``report`` (its counts and exit reason) goes into the ``runner_ended`` event, with the
        ready jobs it leaves behind and how many of those need more than ``time_left_s``; that
        last sentence is returned (None when no ready job is left), for the runner's log."""
        now = time.time()
        unrecorded = self._action_outcomes()
        with self.db.transaction() as conn:
            changed = self._record(conn, runner_id, outcomes)
            self._add_samples(conn, runner_id, samples)
            self._record_action_outcomes(conn, unrecorded)
            changed += leases.hand_back(conn, runner_id)
            changed += gangs.give_up_unanswered(conn, runner_id)
            conn.execute("UPDATE runners SET status = 'finished', ended_at = ?, heartbeat_at = ? WHERE id = ?",
                         (now, now, runner_id))
            left = self._post_runner_ended(conn, runner_id, dict(report or {}), time_left_s)
        self._action_outcomes_recorded(unrecorded)
        if changed:
            self.db.notify()
        return left

    def _post_runner_ended(self, conn: sqlite3.Connection, runner_id: int, report: dict[str, object],
                           time_left_s: float | None) -> str | None:
        """``runner_ended``, and ``runner_exit_with_work_left`` when ready jobs remain (counted up
        to a cap through the status index, so a huge queue costs no scan)."""
        reason = report.get("exit_reason") or "stopped"
        done = ", ".join(f"{report[k]} {k}" for k in ("completed", "failed", "terminated", "lost") if report.get(k))
        add_event(conn, self.workflow_id, "runner_ended", f"runner {runner_id} ended ({reason})"
                  + (f": {done}" if done else ""), data={"runner_id": runner_id, **report}, source=f"runner {runner_id}")
        ready = conn.execute("SELECT COUNT(*) FROM (SELECT 1 FROM jobs WHERE workflow_id = ? AND status = 'ready'"
                             " LIMIT ?)", (self.workflow_id, WORK_LEFT_CAP)).fetchone()[0]
        if not ready:
            return None
        shown = f"{ready}+" if ready >= WORK_LEFT_CAP else str(ready)
        data: dict[str, object] = {"runner_id": runner_id, "ready": ready, "exit_reason": reason}
        message = f"runner {runner_id} ended ({reason}) with {shown} ready job(s) left"
        if time_left_s is not None:
            too_long = conn.execute(
                "SELECT COUNT(*) FROM (SELECT 1 FROM jobs WHERE workflow_id = ? AND status = 'ready' AND runtime_s > ?"
                " LIMIT ?)", (self.workflow_id, time_left_s, WORK_LEFT_CAP)).fetchone()[0]
            data.update(time_left_s=round(time_left_s), need_more_time=too_long)
            if too_long:
                message += (f"; {too_long}{'+' if too_long >= WORK_LEFT_CAP else ''} need more time than the "
                            f"{_minutes(time_left_s)} left")
        add_event(conn, self.workflow_id, "runner_exit_with_work_left", message, data=data,
                  source=f"runner {runner_id}")
        return message

    # -- the cycle --------------------------------------------------------------------------
    def cycle(self, runner_id: int, *, started: Sequence[Started] = (), outcomes: Sequence[Outcome] = (),
              release: Sequence[int] = (), held: Mapping[int, int] | None = None,
              choose: Chooser | None = None, limits: Limits = Limits(),
              scheduler: str | None = None, strict_scheduler: bool = False, window: int = 256,
              sweep: Sequence[SweepRequest] = (), fence: Sequence[tuple[int, str]] = (),
              want_peers: bool = False, want_counts: bool = False, samples: Sequence[NodeUse] = (),
              free: Free | None = None, accept: ShareAcceptor | None = None) -> CycleResult:
        """One lock acquisition. ``started``: attempts spawned since the last cycle. ``outcomes``:
        attempts reaped. ``release``: claimed jobs the runner will not start after all (back to
        ready, attempt undone). ``held``: job id -> lease token of every job the runner still holds
        (running or claimed ahead); what the queue no longer gives it comes back in ``revoked``, and
        what the queue gives it that it does not know of is handed back. ``sweep``/``fence``: the
        runner's verdicts on its peers (`runner.fencing`). ``free``: what the runner could give
        other runners' multi-node jobs (before this cycle's claims), published for them; with
        ``accept`` it answers the shares they booked on it (see `store.gangs`)."""
        result = CycleResult()
        now = time.time()
        unrecorded = self._action_outcomes()
        with self.db.transaction() as conn:
            result.renewed_at = time.monotonic()
            renewed = conn.execute(
                "UPDATE runners SET heartbeat_at = ?, lease_seq = lease_seq + 1, status = 'active', ended_at = NULL"
                " WHERE id = ?", (now, runner_id)).rowcount
            if not renewed:  # its workflow was deleted under it
                result.runner_gone = True
                return result
            settled = {out.job_id for out in outcomes}  # their outcome below supersedes 'running'
            conn.executemany(
                "UPDATE jobs SET status = 'running', pid = ? WHERE id = ? AND runner_id = ? AND lease_token = ?"
                " AND status = 'pending'",
                [(s.pid, s.job_id, runner_id, s.lease_token) for s in started if s.job_id not in settled])
            changed = self._record(conn, runner_id, outcomes)
            self._add_samples(conn, runner_id, samples)
            if release:
                changed += leases.hand_back(conn, runner_id, release)
            if held is not None:
                result.revoked, orphans = self._reconcile(conn, runner_id, held)
                if orphans:  # claimed under this runner by a cycle it believes failed: not its to keep
                    changed += leases.hand_back(conn, runner_id, orphans)
            if sweep:
                taken, gave_up = leases.sweep(conn, self.workflow_id, sweep, by=f"runner {runner_id}")
                changed += taken + unblock(conn, gave_up)
            for peer_id, note in fence:
                leases.mark_fencing(conn, peer_id, note)
            if want_peers:
                result.peers = leases.peers(conn, self.workflow_id, runner_id)
            if free is not None or accept is not None:
                free, refused = self._answer_shares(conn, runner_id, free, accept, result)
                changed += refused
            if choose is not None:
                ready = self._ready_window(conn, limits, scheduler, strict_scheduler, window)
                chosen = choose(ready) if ready else []
                remote: frozenset[int] = getattr(chosen, "remote", frozenset())
                result.claimed = self._claim(conn, runner_id, list(chosen))
                if remote or any(job.num_nodes > 1 for job in result.claimed):
                    result.claimed = self._book_gangs(conn, runner_id, result.claimed, remote)
            if free is not None:
                for job in result.claimed:
                    if job.id not in remote:
                        free = free.minus(job.num_cpus, job.num_gpus, job.memory_bytes)
                gangs.publish(conn, runner_id, free)
            if free is not None or accept is not None:  # a runner in a multi-node allocation
                result.gangs = gangs.members(conn, [*(held or {}), *(j.id for j in result.claimed)])
            if want_counts:
                result.counts = _counts(conn, self.workflow_id)
            self._record_action_outcomes(conn, unrecorded)
            claims = self._observe_actions(conn)
        self._action_outcomes_recorded(unrecorded)
        if changed:
            self.db.notify()
        if claims:  # committed: now the runner performs them (store/actions.py, runner/actions.py)
            self.action_observer.deliver(claims)
        return result

    def _action_outcomes(self) -> list:
        """Outcomes of this runner's actions its threads could not record (the queue unreachable for
        a moment): written in this cycle or sign-off, dropped from the performer once committed."""
        take = getattr(self.action_observer, "unrecorded_outcomes", None)
        return [] if take is None else take()

    def _record_action_outcomes(self, conn: sqlite3.Connection, unrecorded: list) -> None:
        for claim, ok, message, result, source in unrecorded:
            actions.record_outcome(conn, claim, ok, message, result, source=source)

    def _action_outcomes_recorded(self, unrecorded: list) -> None:
        if unrecorded:
            self.action_observer.outcomes_recorded(unrecorded)

    def _observe_actions(self, conn: sqlite3.Connection) -> list:
        """Workflow actions this cycle's changes made due (or whose claimant died), claimed in this
        transaction; one partial-index probe when none is."""
        observer = self.action_observer
        if observer is None or not observer.accepting:
            return []
        return actions.observe(conn, self.workflow_id, observer.observer)

    def peers(self) -> list[PeerLease]:
        """Every live runner of the workflow (one locked read; never sweeps)."""
        with self.db.transaction() as conn:
            return leases.peers(conn, self.workflow_id, None)

    def sweep(self, requests: Sequence[SweepRequest], *, by: str) -> int:
        """Declare runners dead (each only if its lease still stands) and take back their jobs."""
        if not requests:
            return 0
        with self.db.transaction() as conn:
            taken, gave_up = leases.sweep(conn, self.workflow_id, requests, by=by)
            changed = taken + unblock(conn, gave_up)
        if changed:
            self.db.notify()
        return taken

    # -- internals (all inside the caller's transaction) -------------------------------------
    def _answer_shares(self, conn: sqlite3.Connection, runner_id: int, free: Free | None,
                       accept: ShareAcceptor | None, result: CycleResult) -> tuple[Free | None, int]:
        """Drop this runner's stale shares, answer the new ones (acknowledge or refuse), and
        return what it can still give (``free`` less what it just acknowledged) and how many jobs
        went back to ready."""
        gangs.clean(conn, runner_id)
        held = gangs.shares(conn, runner_id)
        new = [s for s in held if s.gpu_ids is None]
        answers = accept(new) if new and accept is not None else {}
        refused = 0
        for share in new:
            if share.job_id not in answers:
                continue  # not answered yet (no acceptor this cycle): stays booked
            gpu_ids = answers[share.job_id]
            if gpu_ids is None:
                refused += gangs.refuse(conn, share)
                continue
            gangs.acknowledge(conn, runner_id, share, gpu_ids)
            if free is not None:
                free = free.minus(share.cpus, share.gpus, share.memory_bytes)
        result.shares = gangs.shares(conn, runner_id)
        return free, refused

    def _book_gangs(self, conn: sqlite3.Connection, runner_id: int, claimed: list[ClaimedJob],
                    remote: frozenset[int] = frozenset()) -> list[ClaimedJob]:
        """Book the other nodes of each claimed multi-node job, and a node for each group member
        placed elsewhere (``remote``); a job whose nodes cannot all be booked now goes back to
        ready (its claim never started), with the rest of its group."""
        failed_groups: set[int] = set()
        kept = []
        for job in claimed:
            nodes = job.num_nodes if job.num_nodes > 1 else 2 if job.id in remote else 1
            if nodes == 1 or gangs.book(conn, self.workflow_id, runner_id, job.id, job.lease_token, nodes,
                                        job.num_cpus, job.num_gpus, job.memory_bytes):
                kept.append(job)
                continue
            leases.hand_back(conn, runner_id, [job.id])
            if job.group is not None:
                failed_groups.add(job.group.id)
        if failed_groups:
            back = [job for job in kept if job.group is not None and job.group.id in failed_groups]
            leases.hand_back(conn, runner_id, [job.id for job in back])  # their shares go stale and are cleaned
            kept = [job for job in kept if job.group is None or job.group.id not in failed_groups]
        return kept

    def _add_samples(self, conn: sqlite3.Connection, runner_id: int, samples: Sequence[NodeUse]) -> None:
        """``samples``: node use and (time_series workflows) the jobs' rows and Thin marks
        (`torc_slurm.store.samples`, applied in their order), written in this same transaction."""
        node = [s for s in samples if isinstance(s, NodeUse)]
        if len(node) < len(samples):
            from torc_slurm.store import samples as job_samples

            job_samples.write(conn, self.workflow_id, [s for s in samples if not isinstance(s, NodeUse)])
            samples = node
        conn.executemany(
            "INSERT OR REPLACE INTO runner_samples (workflow_id, runner_id, at, cpu_percent, memory_bytes, gpu_percent,"
            " gpu_memory_bytes) VALUES (?,?,?,?,?,?,?)",
            [(self.workflow_id, runner_id, s.at, s.cpu_percent, s.memory_bytes, s.gpu_percent, s.gpu_memory_bytes)
             for s in samples])

    def _reconcile(self, conn: sqlite3.Connection, runner_id: int,
                   held: Mapping[int, int]) -> tuple[list[int], list[int]]:
        """(jobs the runner holds that the queue no longer gives it, jobs the queue gives it that
        the runner does not hold)."""
        granted = dict(conn.execute(f"SELECT id, lease_token FROM jobs WHERE runner_id = ? AND status IN {sql_list(HELD)}",
                                    (runner_id,)).fetchall())
        revoked = [job_id for job_id, token in held.items() if granted.get(job_id) != token]
        orphans = [job_id for job_id in granted if job_id not in held]
        return revoked, orphans

    def _ready_window(self, conn: sqlite3.Connection, limits: Limits, scheduler: str | None,
                      strict: bool, window: int) -> list[ReadyJob]:
        sql = ["SELECT id, num_cpus, num_gpus, memory_bytes, runtime_s, group_id, priority, num_nodes FROM jobs"
               " WHERE workflow_id = ? AND status = 'ready'"]
        params: list[object] = [self.workflow_id]
        for column, bound in (("num_cpus", limits.cpus), ("num_gpus", limits.gpus),
                              ("memory_bytes", limits.memory_bytes), ("runtime_s", limits.runtime_s),
                              ("num_nodes", limits.nodes)):
            if bound is not None:
                sql.append(f"AND {column} <= ?")
                params.append(bound)
        if strict:
            sql.append("AND scheduler = ?" if scheduler else "AND scheduler IS NULL")
            params += [scheduler] if scheduler else []
        elif scheduler:
            sql.append("AND (scheduler IS NULL OR scheduler = ?)")
            params.append(scheduler)
        sql.append("ORDER BY rank LIMIT ?")
        params.append(window)
        ready = [ReadyJob(*row) for row in conn.execute(" ".join(sql), params)]
        if any(job.group_id is not None for job in ready):
            ready = self._whole_groups(conn, ready, limits)
        return ready

    def _whole_groups(self, conn: sqlite3.Connection, ready: list[ReadyJob], limits: Limits) -> list[ReadyJob]:
        """The window with each group's members together, at its first member's place, and only the
        groups whose every member is ready (and fits the limits): a group is claimed whole or not at
        all. Members beyond the window are read through the group index."""
        group_ids = list(dict.fromkeys(job.group_id for job in ready if job.group_id is not None))
        marks = ",".join("?" * len(group_ids))
        sizes = dict(conn.execute(f"SELECT id, size FROM job_groups WHERE id IN ({marks})", group_ids).fetchall())
        members: dict[int, list[ReadyJob]] = {}
        for row in conn.execute(f"SELECT id, num_cpus, num_gpus, memory_bytes, runtime_s, group_id, priority,"
                                f" num_nodes FROM jobs"
                                f" WHERE group_id IN ({marks}) AND status = 'ready' ORDER BY group_id, group_rank",
                                group_ids):
            members.setdefault(row[5], []).append(ReadyJob(*row))
        fits = {job.job_id for job in ready}
        whole = {g for g, jobs in members.items() if len(jobs) == sizes.get(g) and all(
            j.job_id in fits or _within(j, limits) for j in jobs)}
        result: list[ReadyJob] = []
        for job in ready:
            if job.group_id is None:
                result.append(job)
            elif job.group_id in whole:
                result.extend(members[job.group_id])
                whole.discard(job.group_id)
        return result

    def _claim(self, conn: sqlite3.Connection, runner_id: int, job_ids: Sequence[int]) -> list[ClaimedJob]:
        """Mark ``job_ids`` pending for the runner under one new lease token (a job is claimed at
        most once per cycle, so the token names each attempt uniquely)."""
        job_ids = list(dict.fromkeys(job_ids))  # a chooser that names a job twice claims it once
        if not job_ids:
            return []
        job_ids = _whole_groups_only(conn, job_ids)
        if not job_ids:
            return []
        token = leases.next_ids(conn, "lease_token")
        marks = ",".join("?" * len(job_ids))
        # Unary + keeps the planner on the rowid lookups: with plain "status = ... AND workflow_id = ..."
        # it picks jobs_by_status and scans every ready job of the workflow (~70 ms at 100k ready).
        conn.execute(f"UPDATE jobs SET status = 'pending', runner_id = ?, attempt = attempt + 1, lease_token = ?"
                     f" WHERE id IN ({marks}) AND +status = 'ready' AND +workflow_id = ?",
                     (runner_id, token, *job_ids, self.workflow_id))
        outputs: dict[int, list[str]] = {}
        for job_id, path in conn.execute(
                f"SELECT io.job_id, f.path FROM job_io io JOIN files f ON f.id = io.item_id"
                f" WHERE io.kind = 'output_file' AND io.job_id IN ({marks})", tuple(job_ids)):
            outputs.setdefault(job_id, []).append(path)
        rows = conn.execute(
            f"SELECT j.id, j.name, command, invocation_script, env, attempt, num_cpus, num_gpus, memory_bytes,"
            f" runtime_s, supports_termination, failure_handler, retries, enforce_runtime, runtime_grace,"
            f" num_nodes, launcher, image, priority, group_id, group_rank, g.name AS group_name, g.size AS group_size, g.lead_job_id, g.group_end"
            f" FROM jobs j LEFT JOIN job_groups g ON g.id = j.group_id WHERE j.id IN ({marks}) AND runner_id = ?"
            f" AND lease_token = ? AND status = 'pending'", (*job_ids, runner_id, token)).fetchall()
        by_id = {row["id"]: row for row in rows}
        return [ClaimedJob(
            id=row["id"], name=row["name"], command=row["command"], invocation_script=row["invocation_script"],
            env=json.loads(row["env"]) if row["env"] else {}, attempt=row["attempt"], num_cpus=row["num_cpus"],
            num_gpus=row["num_gpus"], memory_bytes=row["memory_bytes"], runtime_s=row["runtime_s"],
            supports_termination=bool(row["supports_termination"]),
            output_files=tuple(outputs.get(row["id"], ())), lease_token=token,
            failure_handler=row["failure_handler"], retries=row["retries"],
            enforce_runtime=bool(row["enforce_runtime"]), runtime_grace=row["runtime_grace"],
            num_nodes=row["num_nodes"], launcher=row["launcher"], image=row["image"], priority=row["priority"],
            group=None if row["group_id"] is None else GroupInfo(
                row["group_id"], row["group_name"], row["group_rank"], row["group_size"], row["lead_job_id"],
                row["group_end"]))
            for row in (by_id[i] for i in job_ids if i in by_id)]

    def _record(self, conn: sqlite3.Connection, runner_id: int, outcomes: Sequence[Outcome]) -> int:
        """Apply the outcomes whose attempt still holds its lease; record the others as late. Adds
        what the attempts held and used to the runner's totals, and posts an event for each job
        that timed out or ran out of memory, and one for the jobs stopped at the walltime."""
        finished: list[tuple[int, bool]] = []
        requeued = 0
        usage = _Usage()
        walltime: list[str] = []
        for out in outcomes:
            figures = {name: getattr(out, name) for name in _FIGURES}
            row = conn.execute("SELECT name, status, runner_id, lease_token, num_cpus, num_gpus FROM jobs WHERE id = ?",
                               (out.job_id,)).fetchone()
            if row is not None:
                usage.add(out, row["num_cpus"], row["num_gpus"])
                if out.reason in ("timeout", "oom"):
                    add_event(conn, self.workflow_id, f"job_{out.reason}", f"job {row['name']} attempt {out.attempt}: "
                              f"{out.message or out.reason}", data={"job_id": out.job_id, "job": row["name"],
                                                                     "attempt": out.attempt, "runner_id": runner_id},
                              source=f"runner {runner_id}")
                elif out.reason == "walltime":
                    walltime.append(row["name"])
            current = row is not None and row["runner_id"] == runner_id and row["lease_token"] == out.lease_token \
                and row["status"] in HELD
            if not current:
                why = "the job was canceled" if row is not None and row["status"] == JobStatus.CANCELED \
                    else "its lease had ended (the job was taken back or reassigned)"
                message = ((out.message + "; ") if out.message else "") + f"late, not applied: {why}"
                leases.record_result(conn, self.workflow_id, runner_id, out.job_id, out.attempt, out.lease_token,
                                     _recorded_status(out.status), message, late=True, reason=out.reason, **figures)
                if row is not None and row["runner_id"] == runner_id and row["status"] == JobStatus.CANCELED:
                    conn.execute("UPDATE jobs SET runner_id = NULL, pid = NULL WHERE id = ?", (out.job_id,))
                continue
            if out.status in INTERRUPTED:
                gave_up = leases.interrupt(conn, self.workflow_id, runner_id, out.job_id, out.attempt,
                                           out.lease_token, out.status, out.message or out.status,
                                           reason=out.reason, **figures)
                finished += gave_up
                requeued += not gave_up
                continue
            if out.status == "retry":  # the failure handler retries it: a failed attempt, the job back to ready
                leases.record_result(conn, self.workflow_id, runner_id, out.job_id, out.attempt, out.lease_token,
                                     "failed", out.message, reason=out.reason, **figures)
                conn.execute("UPDATE jobs SET status = 'ready', retries = retries + 1, return_code = ?,"
                             " runner_id = NULL, pid = NULL WHERE id = ?", (out.return_code, out.job_id))
                requeued += 1
                continue
            if out.status == "completed":
                out = _check_output_user_data(conn, out)
            leases.record_result(conn, self.workflow_id, runner_id, out.job_id, out.attempt, out.lease_token,
                                 out.status, out.message, reason=out.reason, **figures)
            conn.execute("UPDATE jobs SET status = ?, return_code = ?, runner_id = NULL, pid = NULL,"
                         " ran_hash = CASE WHEN ? = 'completed' THEN spec_hash ELSE ran_hash END,"
                         " reason = CASE WHEN ? = 'completed' THEN NULL ELSE reason END WHERE id = ?",
                         (out.status, out.return_code, out.status, out.status, out.job_id))
            finished.append((out.job_id, out.status != "completed"))
        if usage:
            conn.execute("UPDATE runners SET job_cpu_s = job_cpu_s + ?, held_cpu_s = held_cpu_s + ?,"
                         " held_gpu_s = held_gpu_s + ? WHERE id = ?",
                         (usage.cpu_used_s, usage.cpu_held_s, usage.gpu_held_s, runner_id))
        if walltime:
            add_event(conn, self.workflow_id, "job_walltime_terminated",
                      f"runner {runner_id} stopped {len(walltime)} job(s) at the end of its allocation: "
                      + ", ".join(walltime[:5]) + (" …" if len(walltime) > 5 else ""),
                      data={"runner_id": runner_id, "jobs": walltime[:100], "count": len(walltime)},
                      source=f"runner {runner_id}")
        return requeued + unblock(conn, finished)


@dataclass
class _Usage:
    """What a batch of attempts held and used, for the runner's totals (allocation utilisation)."""

    cpu_used_s: float = 0.0
    cpu_held_s: float = 0.0
    gpu_held_s: float = 0.0

    def add(self, out: Outcome, num_cpus: int, num_gpus: int) -> None:
        if out.started_at is not None and out.ended_at is not None:
            elapsed = max(0.0, out.ended_at - out.started_at)
            self.cpu_held_s += num_cpus * elapsed
            self.gpu_held_s += num_gpus * elapsed
        self.cpu_used_s += out.cpu_time_s or 0.0

    def __bool__(self) -> bool:
        return bool(self.cpu_used_s or self.cpu_held_s or self.gpu_held_s)


def _check_output_user_data(conn: sqlite3.Connection, out: Outcome) -> Outcome:
    """A job that exited 0 without writing (in this attempt) every user data entry it declares as
    output has failed."""
    missing = [name for (name,) in conn.execute(
        "SELECT d.name FROM job_io io JOIN user_data d ON d.id = io.item_id WHERE io.job_id = ?"
        " AND io.kind = 'output_user_data' AND (d.written_by_job_id IS NOT ? OR d.written_attempt IS NOT ?)"
        " ORDER BY d.name", (out.job_id, out.job_id, out.attempt))]
    if not missing:
        return out
    return replace(out, status="failed", reason="missing output user data",
                   message=f"exited 0 without writing its output user data: {', '.join(missing)}")


def _within(job: ReadyJob, limits: Limits) -> bool:
    return all(bound is None or value <= bound for value, bound in (
        (job.num_cpus, limits.cpus), (job.num_gpus, limits.gpus), (job.memory_bytes, limits.memory_bytes),
        (job.runtime_s, limits.runtime_s)))


def _whole_groups_only(conn: sqlite3.Connection, job_ids: list[int]) -> list[int]:
    """``job_ids`` without the members of groups that are not chosen whole and ready: a group is
    claimed in one cycle or not at all."""
    marks = ",".join("?" * len(job_ids))
    grouped = conn.execute(f"SELECT id, group_id FROM jobs WHERE id IN ({marks}) AND group_id IS NOT NULL",
                           job_ids).fetchall()
    if not grouped:
        return job_ids
    chosen = set(job_ids)
    drop: set[int] = set()
    for group_id in {g for _, g in grouped}:
        members = conn.execute("SELECT id, status FROM jobs WHERE group_id = ?", (group_id,)).fetchall()
        if any(job_id not in chosen or status != JobStatus.READY for job_id, status in members):
            drop.update(job_id for job_id, _ in members)
    return [job_id for job_id in job_ids if job_id not in drop]


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{max(0.0, seconds):.0f} s"


def _recorded_status(status: str) -> str:
    return "failed" if status == "retry" else status


_FIGURES = ("return_code", "signal", "started_at", "ended_at", "peak_rss_bytes", "cpu_time_s", "avg_cpu_percent",
            "peak_cpu_percent", "avg_memory_bytes", "peak_memory_bytes", "avg_gpu_percent", "peak_gpu_memory_bytes")


def unblock(conn: sqlite3.Connection, finished: list[tuple[int, bool]]) -> int:
    """Count finished jobs out of the sets they belong to; release the jobs whose set emptied.
    Touches only those sets and their waiting jobs (through indexes), never the whole table, and
    releases all the waiters of a set in one statement. A waiter whose set holds a failed member
    is canceled (unless it opted out) with the reason "upstream job X failed", X being the job
    that failed first in its chain. Returns the jobs released or canceled."""
    released = 0
    work = list(finished)
    while work:
        job_id, failed = work.pop()
        for (set_id,) in conn.execute("SELECT set_id FROM dependency_members WHERE job_id = ?", (job_id,)).fetchall():
            conn.execute("UPDATE dependency_sets SET remaining = remaining - 1, failed = failed + ? WHERE id = ?",
                         (int(failed), set_id))
            remaining, failures = conn.execute("SELECT remaining, failed FROM dependency_sets WHERE id = ?",
                                               (set_id,)).fetchone()
            if remaining > 0:
                continue
            if failures:  # a prerequisite failed: waiters that asked for it are canceled, transitively
                canceled = [row[0] for row in conn.execute(
                    "SELECT id FROM jobs WHERE depset_id = ? AND status = 'blocked'"
                    " AND cancel_on_blocking_job_failure = 1", (set_id,))]
                if canceled:
                    conn.execute("UPDATE jobs SET status = 'canceled', reason = ? WHERE depset_id = ?"
                                 " AND status = 'blocked' AND cancel_on_blocking_job_failure = 1",
                                 (upstream_reason(conn, set_id), set_id))
                    work.extend((waiter, True) for waiter in canceled)
                    released += len(canceled)
            released += conn.execute("UPDATE jobs SET status = 'ready' WHERE depset_id = ? AND status = 'blocked'",
                                     (set_id,)).rowcount
    return released


def upstream_reason(conn: sqlite3.Connection, set_id: int) -> str:
    """'upstream job X failed' for the first failed member of a set (by rank); a member canceled
    for its own upstream passes its culprit on."""
    rows = conn.execute(
        "SELECT j.name, j.status, j.reason FROM dependency_members m JOIN jobs j ON j.id = m.job_id"
        " WHERE m.set_id = ? AND j.status IN ('failed', 'canceled', 'terminated') ORDER BY j.rank LIMIT 2",
        (set_id,)).fetchall()
    if not rows:
        return "upstream job failed"
    name, status, reason = rows[0]
    culprit = f"upstream job {name} failed"
    if status == "canceled" and reason and reason.startswith("upstream job"):
        culprit = reason
    elif status == "canceled":
        culprit = f"upstream job {name} was canceled"
    return culprit + (" (and others)" if len(rows) > 1 else "")


def _counts(conn: sqlite3.Connection, workflow_id: int) -> dict[str, int]:
    """Jobs per status, read from the trigger-kept ``status_counts`` (ten rows, not a count of
    every job under the lock)."""
    return {status: n for status, n in read_status_counts(conn, workflow_id).items() if n}
