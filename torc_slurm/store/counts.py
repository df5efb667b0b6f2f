"""Jobs per workflow per status, from the ``status_counts`` table (schema 6).

A trigger on ``jobs`` keeps the table exact on every status change; bulk inserts and deletes of
jobs (``add_workflow``, ``workflows update``) fill or recount it in the same transaction. This
module stays light (sqlite3 only) so read commands import nothing heavy to use it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from torc_slurm.states import ALL as JOB_STATUSES


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
