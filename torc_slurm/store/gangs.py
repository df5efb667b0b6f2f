"""Multi-node jobs (gangs) inside one Slurm allocation; every function runs inside the caller's
transaction (a queue cycle).

The runner that claims a job needing N nodes launches it. In the same transaction it books a
share (the job's per-node CPUs, GPUs and memory) on N - 1 other runners of its allocation whose
published free resources fit, lowering what they publish, so two gangs can never each hold half
of their nodes. Each member then acknowledges its share at its next cycle, setting the resources
aside (with the GPU ids), or refuses it (it no longer fits), which hands the job back to ready. The
job starts once every share is acknowledged. Shares die with their attempt: a share whose job no
longer holds its lease token is removed by its member. A member runner that is swept takes the
job's attempt down with it: the job is interrupted (lost) and its launcher, told the job was
revoked, kills it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from torc_slurm.states import HELD, sql_list


@dataclass(frozen=True)
class Share:
    """A share of another runner's multi-node job that this runner holds (or is asked to)."""

    job_id: int
    lease_token: int
    cpus: int
    gpus: int
    memory_bytes: int
    gpu_ids: tuple[str, ...] | None = None  # None until acknowledged


@dataclass(frozen=True)
class Member:
    """Where a multi-node job runs besides its launcher."""

    runner_id: int
    node: str
    acked: bool
    gpu_ids: tuple[str, ...]


@dataclass(frozen=True)
class Free:
    cpus: int
    gpus: int
    memory_bytes: int

    def fits(self, cpus: int, gpus: int, memory_bytes: int) -> bool:
        return cpus <= self.cpus and gpus <= self.gpus and memory_bytes <= self.memory_bytes

    def minus(self, cpus: int, gpus: int, memory_bytes: int) -> Free:
        return Free(self.cpus - cpus, self.gpus - gpus, self.memory_bytes - memory_bytes)

    def as_json(self) -> str:
        return json.dumps({"cpus": self.cpus, "gpus": self.gpus, "memory_bytes": self.memory_bytes})

    @classmethod
    def from_json(cls, text: str | None) -> Free | None:
        if not text:
            return None
        data = json.loads(text)
        return cls(int(data["cpus"]), int(data["gpus"]), int(data["memory_bytes"]))


def publish(conn: sqlite3.Connection, runner_id: int, free: Free | None) -> None:
    conn.execute("UPDATE runners SET free = ? WHERE id = ?", (None if free is None else free.as_json(), runner_id))


def clean(conn: sqlite3.Connection, runner_id: int) -> None:
    """Remove this member's shares whose attempt is over (the job finished, was handed back, swept
    or claimed again under another token)."""
    conn.execute(
        "DELETE FROM gang_shares WHERE runner_id = ? AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = gang_shares.job_id"
        f" AND j.lease_token = gang_shares.lease_token AND j.status IN {sql_list(HELD)})", (runner_id,))


def shares(conn: sqlite3.Connection, runner_id: int) -> list[Share]:
    """This member's live shares, acknowledged or not."""
    return [Share(job_id, token, cpus, gpus, memory, tuple(ids.split(",")) if acked and ids else () if acked else None)
            for job_id, token, cpus, gpus, memory, acked, ids in conn.execute(
                "SELECT job_id, lease_token, cpus, gpus, memory_bytes, acked, gpu_ids FROM gang_shares"
                " WHERE runner_id = ? ORDER BY job_id", (runner_id,))]


def acknowledge(conn: sqlite3.Connection, runner_id: int, share: Share, gpu_ids: Sequence[str]) -> None:
    conn.execute("UPDATE gang_shares SET acked = 1, gpu_ids = ? WHERE job_id = ? AND runner_id = ? AND lease_token = ?",
                 (",".join(gpu_ids), share.job_id, runner_id, share.lease_token))


def refuse(conn: sqlite3.Connection, share: Share) -> int:
    """A member cannot set its share aside: the job goes back to ready (its claim never started,
    so its attempt number is given back) and every share of that attempt goes."""
    back = conn.execute("UPDATE jobs SET status = 'ready', runner_id = NULL, pid = NULL, attempt = attempt - 1"
                        " WHERE id = ? AND lease_token = ? AND status = 'pending'",
                        (share.job_id, share.lease_token)).rowcount
    conn.execute("DELETE FROM gang_shares WHERE job_id = ? AND lease_token = ?", (share.job_id, share.lease_token))
    return back


def book(conn: sqlite3.Connection, workflow_id: int, launcher_id: int, job_id: int, lease_token: int,
         nodes: int, cpus: int, gpus: int, memory_bytes: int) -> bool:
    """Book shares of a job on ``nodes - 1`` other live runners of the launcher's allocation whose
    published free resources fit (first by free CPUs); False, booking nothing, if too few fit."""
    row = conn.execute("SELECT slurm_job_id FROM runners WHERE id = ?", (launcher_id,)).fetchone()
    if row is None or row[0] is None:
        return False
    candidates = []
    for runner_id, hostname, free_text in conn.execute(
            "SELECT id, hostname, free FROM runners WHERE workflow_id = ? AND slurm_job_id = ? AND id != ?"
            " AND status = 'active' AND free IS NOT NULL", (workflow_id, row[0], launcher_id)):
        free = Free.from_json(free_text)
        if free is not None and free.fits(cpus, gpus, memory_bytes):
            candidates.append((free.cpus, hostname, runner_id, free))
    if len(candidates) < nodes - 1:
        return False
    candidates.sort(key=lambda c: (-c[0], c[1]))
    for _, hostname, runner_id, free in candidates[:nodes - 1]:
        conn.execute("INSERT OR REPLACE INTO gang_shares (job_id, runner_id, lease_token, node, cpus, gpus, memory_bytes)"
                     " VALUES (?,?,?,?,?,?,?)", (job_id, runner_id, lease_token, hostname, cpus, gpus, memory_bytes))
        publish(conn, runner_id, free.minus(cpus, gpus, memory_bytes))
    return True


def members(conn: sqlite3.Connection, job_ids: Sequence[int]) -> dict[int, list[Member]]:
    """The member runners of the given (launcher's) jobs, by job, in node order."""
    if not job_ids:
        return {}
    marks = ",".join("?" * len(job_ids))
    found: dict[int, list[Member]] = {}
    for job_id, runner_id, node, acked, ids in conn.execute(
            f"SELECT s.job_id, s.runner_id, s.node, s.acked, s.gpu_ids FROM gang_shares s JOIN jobs j ON j.id = s.job_id"
            f" AND j.lease_token = s.lease_token WHERE s.job_id IN ({marks}) ORDER BY s.job_id, s.node", tuple(job_ids)):
        found.setdefault(job_id, []).append(Member(runner_id, node, bool(acked), tuple(ids.split(",")) if ids else ()))
    return found


def jobs_with_member(conn: sqlite3.Connection, runner_id: int) -> list[tuple[int, int, int, int]]:
    """(job id, attempt, lease token, launcher runner id) of the live multi-node jobs that have an
    acknowledged share on ``runner_id`` (to stop them when that member is gone)."""
    return conn.execute(
        f"SELECT j.id, j.attempt, j.lease_token, j.runner_id FROM gang_shares s JOIN jobs j ON j.id = s.job_id"
        f" AND j.lease_token = s.lease_token WHERE s.runner_id = ? AND s.acked = 1 AND j.status IN {sql_list(HELD)}",
        (runner_id,)).fetchall()


def with_group(conn: sqlite3.Connection, job_id: int, attempt: int, token: int,
               launcher: int) -> list[tuple[int, int, int]]:
    """(job id, attempt, lease token) of the job and of the other members of its group that the
    same launcher holds (a group's attempt ends whole)."""
    siblings = conn.execute(
        f"SELECT id, attempt, lease_token FROM jobs WHERE group_id = (SELECT group_id FROM jobs WHERE id = ?)"
        f" AND id != ? AND runner_id = ? AND status IN {sql_list(HELD)}", (job_id, job_id, launcher)).fetchall()
    return [(job_id, attempt, token), *((row[0], row[1], row[2]) for row in siblings)]


def give_up_unanswered(conn: sqlite3.Connection, runner_id: int) -> int:
    """A member that ends (or is swept) before answering its bookings refuses them: their jobs go
    back to ready (they never started) instead of waiting for an answer that will not come."""
    return sum(refuse(conn, share) for share in shares(conn, runner_id) if share.gpu_ids is None)
