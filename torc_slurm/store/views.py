"""Cheap views of the queue for read commands: jobs per status, pages of jobs.

Counts come from the ``status_counts`` table (schema 6): a trigger on ``jobs`` keeps it exact on
every status change; bulk inserts and deletes of jobs (``add_workflow``, ``workflows update``) and
bulk rewrites (``bulk_status_change``) fill or recount it in the same transaction. This module
stays light (sqlite3 only; no compiler, no pydantic) so read commands start fast.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from torc_slurm.errors import QueueError
from torc_slurm.states import ALL as JOB_STATUSES

if TYPE_CHECKING:
    from torc_slurm.store.db import Database


def read_status_counts(conn: sqlite3.Connection, workflow_id: int) -> dict[str, int]:
    """``status_counts`` inside the caller's transaction: status -> jobs, every status listed."""
    counts = {status: 0 for status in JOB_STATUSES}
    counts.update({row[0]: row[1] for row in conn.execute(
        "SELECT status, n FROM status_counts WHERE workflow_id = ? AND n != 0", (workflow_id,))})
    return counts


def refresh_status_counts(conn: sqlite3.Connection, workflow_id: int) -> None:
    """Recount the workflow's jobs by status into ``status_counts`` (inside the caller's write
    transaction). For bulk inserts and deletes of jobs, which the status trigger does not see."""
    conn.execute("DELETE FROM status_counts WHERE workflow_id = ?", (workflow_id,))
    conn.execute("INSERT INTO status_counts (workflow_id, status, n) SELECT workflow_id, status, COUNT(*)"
                 " FROM jobs WHERE workflow_id = ? GROUP BY status", (workflow_id,))


@contextmanager
def bulk_status_change(conn: sqlite3.Connection, workflow_id: int) -> Iterator[None]:
    """Inside the caller's write transaction: the status trigger skips this workflow's jobs while
    the body rewrites many of them at once, and one recount follows (a per-row trigger over a
    million rows costs seconds; one GROUP BY costs a fraction of one). Rolled back with the body."""
    conn.execute("INSERT OR IGNORE INTO status_counts_bulk (workflow_id) VALUES (?)", (workflow_id,))
    yield
    conn.execute("DELETE FROM status_counts_bulk WHERE workflow_id = ?", (workflow_id,))
    refresh_status_counts(conn, workflow_id)


def status_counts(db: Database, workflow_id: int) -> dict[str, int]:
    """Jobs per status (every status, zeros included), from the ``status_counts`` table that a
    trigger keeps exact (schema 6): ten rows read, not a million counted."""
    with db.transaction(write=False) as conn:
        if conn.execute("SELECT 1 FROM workflows WHERE id = ?", (workflow_id,)).fetchone() is None:
            raise QueueError(f"no workflow {workflow_id} in {db.path}")
        return read_status_counts(conn, workflow_id)


def list_jobs(db: Database, workflow_id: int, status: str | None = None, *, limit: int | None = None,
              offset: int = 0) -> list[dict[str, Any]]:
    """The workflow's jobs in id order (``status``: only those; ``limit``/``offset``: one page).
    With a status, the ``jobs_by_status`` index finds them: no scan of the other jobs."""
    sql = ("SELECT id, name, status, attempt, return_code, num_cpus, num_gpus, memory_bytes, runtime_s,"
           " scheduler, priority, runner_id, command, num_nodes FROM jobs WHERE workflow_id = ?")
    params: tuple = (workflow_id,)
    if status:
        sql += " AND status = ?"
        params += (status,)
    sql += " ORDER BY id"
    if limit is not None:
        sql += " LIMIT ? OFFSET ?"
        params += (limit, offset)
    with db.transaction(write=False) as conn:
        if conn.execute("SELECT 1 FROM workflows WHERE id = ?", (workflow_id,)).fetchone() is None:
            ids = [str(r[0]) for r in conn.execute("SELECT id FROM workflows ORDER BY ABS(id - ?), id LIMIT 5",
                                                   (workflow_id,))]
            raise QueueError(f"no workflow {workflow_id} in {db.path}"
                             + (f"; nearest: {', '.join(sorted(ids, key=int))}" if ids else ""))
        return [dict(row) for row in conn.execute(sql, params)]
