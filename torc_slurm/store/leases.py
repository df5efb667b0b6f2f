"""Runner leases in the queue file: what the queue records of each runner's liveness, and the two
ways a job's attempt ends without an outcome from its process: swept (the runner was declared
dead) and handed back.

Every function here runs inside the caller's transaction. Nothing here decides that a runner is
dead; `runner.liveness` and `runner.fencing` do, with evidence, and ask for the sweep.

Attempt limits: an attempt that ends *interrupted* (lost with its runner, terminated at the
walltime, timed out) counts against the job's ``max_attempts``; past it the job fails with
"gave up after N attempts", and its dependents are handled like those of any failed job.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass

from torc_slurm.states import HELD, JobStatus, sql_list
from torc_slurm.store import gangs
from torc_slurm.store.events import add_event

RUNNER_COLUMNS = ("r.id, r.hostname, r.host_key, r.pid, r.pid_started, r.token, r.slurm_job_id, r.slurm_step_id,"
                  " r.lease_seq, r.status, r.heartbeat_at, r.fence_note, a.state")


@dataclass(frozen=True)
class PeerLease:
    """Another runner of the workflow as the queue records it."""

    runner_id: int
    hostname: str
    host_key: str | None
    pid: int
    pid_started: float | None
    token: str | None
    slurm_job_id: str | None
    slurm_step_id: str | None
    lease_seq: int
    status: str              # active | fencing
    heartbeat_at: float      # the runner's own wall clock: for people, never for decisions
    fence_note: str | None
    allocation_state: str | None = None  # as last recorded from Slurm (`torc slurm status`, watch)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "PeerLease":
        return cls(*row)


@dataclass(frozen=True)
class SweepRequest:
    """Declare ``runner_id`` dead, if its lease still stands at ``lease_seq`` (a runner that renewed
    since the decision is alive, and is left alone)."""

    runner_id: int
    lease_seq: int
    reason: str


def next_ids(conn: sqlite3.Connection, name: str, count: int = 1) -> int:
    """Reserve ``count`` ids of kind ``name``; returns the first. Ids only ever grow."""
    (first,) = conn.execute("SELECT next FROM sequences WHERE name = ?", (name,)).fetchone()
    conn.execute("UPDATE sequences SET next = next + ? WHERE name = ?", (count, name))
    return int(first)


def peers(conn: sqlite3.Connection, workflow_id: int, runner_id: int | None) -> list[PeerLease]:
    """The workflow's live runners other than ``runner_id`` (active, or being fenced)."""
    return [PeerLease.from_row(row) for row in conn.execute(
        f"SELECT {RUNNER_COLUMNS} FROM runners r LEFT JOIN allocations a ON a.workflow_id = r.workflow_id"
        " AND a.slurm_job_id = r.slurm_job_id WHERE r.workflow_id = ? AND r.status IN ('active', 'fencing')"
        " AND r.id IS NOT ?", (workflow_id, runner_id))]


def mark_fencing(conn: sqlite3.Connection, runner_id: int, note: str) -> None:
    conn.execute("UPDATE runners SET status = 'fencing', fence_note = ? WHERE id = ? AND status = 'active'",
                 (note, runner_id))


def sweep(conn: sqlite3.Connection, workflow_id: int, requests: Sequence[SweepRequest],
          *, by: str) -> tuple[int, list[tuple[int, bool]]]:
    """Declare runners dead and take back their jobs. Returns (jobs taken back, finished jobs for
    ``unblock``: those that gave up)."""
    taken, finished = 0, []
    now = time.time()
    for request in requests:
        swept = conn.execute(
            "UPDATE runners SET status = 'lost', ended_at = ? WHERE id = ? AND lease_seq = ?"
            " AND status IN ('active', 'fencing')", (now, request.runner_id, request.lease_seq)).rowcount
        if not swept:
            continue
        host = conn.execute("SELECT hostname FROM runners WHERE id = ?", (request.runner_id,)).fetchone()[0]
        held = conn.execute(f"SELECT id, attempt, lease_token FROM jobs WHERE runner_id = ? AND status IN {sql_list(HELD)}",
                            (request.runner_id,)).fetchall()
        message = f"runner {request.runner_id} on {host} declared dead by {by}: {request.reason}"
        gave_up = 0
        for job_id, attempt, token in held:
            ended = interrupt(conn, workflow_id, request.runner_id, job_id, attempt, token, "lost", message)
            finished += ended
            gave_up += len(ended)
        taken += gangs.give_up_unanswered(conn, request.runner_id)
        for job_id, attempt, token, launcher in gangs.jobs_with_member(conn, request.runner_id):
            # a multi-node job (or a group member) with a share on the dead runner: its attempt is
            # over, and its group's (their launcher, told so at its next cycle, kills what is left)
            for member in gangs.with_group(conn, job_id, attempt, token, launcher):
                finished += interrupt(conn, workflow_id, launcher, *member, "lost",
                                      f"a node of this job or of its group was lost: {message}")
        # jobs_returned: back to ready; jobs_failed: out of attempts (both were taken from the runner)
        add_event(conn, workflow_id, "runner_swept", f"{message}; {len(held)} of its jobs taken back",
                  data={"runner_id": request.runner_id, "hostname": host, "reason": request.reason,
                        "jobs_returned": len(held) - gave_up, "jobs_failed": gave_up}, source=by)
        taken += len(held)
    return taken, finished


def interrupt(conn: sqlite3.Connection, workflow_id: int, runner_id: int, job_id: int, attempt: int,
              token: int | None, status: str, message: str, *, reason: str | None = None,
              **figures: object) -> list[tuple[int, bool]]:
    """End an attempt that was interrupted (``status`` lost or terminated; ``reason`` lost,
    walltime or timeout, by default from the status): record it and return the job to ready, or
    fail it once it has used up its attempts. Returns [(job_id, True)] when the job failed (its
    dependents must be told), else []."""
    interrupted, max_attempts = conn.execute("SELECT interrupted + 1, max_attempts FROM jobs WHERE id = ?",
                                             (job_id,)).fetchone()
    gave_up = interrupted >= max_attempts
    if gave_up:
        message += f"; gave up after {interrupted} attempts"
    record_result(conn, workflow_id, runner_id, job_id, attempt, token, status, message,
                  reason=reason or ("walltime" if status == "terminated" else status), **figures)
    conn.execute("UPDATE jobs SET status = ?, interrupted = ?, runner_id = NULL, pid = NULL WHERE id = ?",
                 (JobStatus.FAILED if gave_up else JobStatus.READY, interrupted, job_id))
    return [(job_id, True)] if gave_up else []


def hand_back(conn: sqlite3.Connection, runner_id: int, job_ids: Sequence[int] | None = None) -> int:
    """Return the runner's held jobs (all, or ``job_ids``) to ready without counting an interrupted
    attempt: a claim never started gives its attempt number back; a started one keeps it."""
    where, params = "runner_id = ?", [runner_id]
    if job_ids is not None:
        where += f" AND id IN ({','.join('?' * len(job_ids))})"
        params += list(job_ids)
    unstarted = conn.execute(f"UPDATE jobs SET status = 'ready', runner_id = NULL, pid = NULL,"
                             f" attempt = attempt - 1 WHERE {where} AND status = 'pending'", params).rowcount
    started = conn.execute(f"UPDATE jobs SET status = 'ready', runner_id = NULL, pid = NULL WHERE {where}"
                           f" AND status = 'running'", params).rowcount
    return unstarted + started


_RESULT_FIGURES = ("return_code", "signal", "started_at", "ended_at", "peak_rss_bytes", "cpu_time_s",
                   "avg_cpu_percent", "peak_cpu_percent", "avg_memory_bytes", "peak_memory_bytes",
                   "avg_gpu_percent", "peak_gpu_memory_bytes")


def record_result(conn: sqlite3.Connection, workflow_id: int, runner_id: int | None, job_id: int, attempt: int,
                  token: int | None, status: str, message: str | None, *, late: bool = False,
                  reason: str | None = None, **figures: object) -> None:
    """One attempt's record, in the workflow's current run; ``reason`` says why it ended (exit
    code, signal, oom, timeout, walltime, lost, upstream failed), also kept on the job."""
    unknown = set(figures) - set(_RESULT_FIGURES)
    if unknown:
        raise TypeError(f"unknown result fields {sorted(unknown)}")
    started, ended = figures.get("started_at"), figures.get("ended_at")
    exec_s = ended - started if isinstance(started, float | int) and isinstance(ended, float | int) else None
    conn.execute(
        "INSERT INTO results (workflow_id, job_id, attempt, runner_id, status, lease_token, late, exec_s, message,"
        f" reason, run_id, {', '.join(_RESULT_FIGURES)}) VALUES (?,?,?,?,?,?,?,?,?,?,"
        f" (SELECT run_id FROM workflows WHERE id = ?){',?' * len(_RESULT_FIGURES)})",
        (workflow_id, job_id, attempt, runner_id, status, token, int(late), exec_s, message, reason, workflow_id,
         *(figures.get(name) for name in _RESULT_FIGURES)))
    if reason is not None and not late:
        conn.execute("UPDATE jobs SET reason = ? WHERE id = ?", (reason, job_id))
