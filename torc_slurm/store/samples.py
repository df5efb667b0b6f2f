"""Per-job time series (``job_samples``, schema 12): what `resource_monitor.granularity:
time_series` keeps, and how it is read.

Writing: the runner's resource monitor turns its passes into `JobSample` rows and, for a long
attempt, `Thin` marks; the runner hands both to its next queue cycle, which writes them in the
cycle's own transaction (`write`): never a lock acquisition of their own.

The bound: at most `MAX_ROWS` rows per attempt. An attempt's first `MAX_ROWS` passes are one row
each; when it reaches `MAX_ROWS` rows, every second row is deleted (a `Thin` mark) and from then on
one row stands for twice as many passes (their mean CPU, peak RSS and process count, mean GPU).
So an attempt keeps between `MAX_ROWS` / 2 and `MAX_ROWS` rows at an even spacing, whatever its
length: at a 5 s interval a 1-hour attempt keeps 720 rows of 5 s, a day 675 rows of 2 min 8 s.
Rows are about 40 bytes, so an attempt costs at most ~40 KB, and a workflow at most
``attempts x MAX_ROWS`` rows; attempts shorter than the interval have one row or none.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from torc_slurm.store.db import Database

MAX_ROWS = 1000
PAGE = 5_000


@dataclass(frozen=True)
class JobSample:
    """One row of ``job_samples``: t seconds after the attempt started."""

    job_id: int
    attempt: int
    t: float
    cpu_percent: float | None        # summed over the tree, 100 = one core; None: the first pass
    memory_bytes: int                # RSS summed over the tree
    num_processes: int
    gpu_percent: float | None = None
    gpu_memory_bytes: int | None = None


@dataclass(frozen=True)
class Thin:
    """Delete every second stored row of an attempt (the 2nd, 4th, … in time order)."""

    job_id: int
    attempt: int


Item = JobSample | Thin

_INSERT = ("INSERT OR REPLACE INTO job_samples (workflow_id, job_id, attempt, t, cpu_percent, memory_bytes,"
           " num_processes, gpu_percent, gpu_memory_bytes) VALUES (?,?,?,?,?,?,?,?,?)")
_THIN = ("DELETE FROM job_samples WHERE job_id = ? AND attempt = ? AND t IN (SELECT t FROM"
         " (SELECT t, row_number() OVER (ORDER BY t) AS n FROM job_samples WHERE job_id = ? AND attempt = ?)"
         " WHERE n % 2 = 0)")


def write(conn: sqlite3.Connection, workflow_id: int, items: Iterable[Item]) -> int:
    """Apply ``items`` in order inside the caller's transaction; returns the rows inserted."""
    batch: list[tuple[Any, ...]] = []
    inserted = 0
    for item in items:
        if isinstance(item, Thin):
            if batch:
                conn.executemany(_INSERT, batch)
                inserted += len(batch)
                batch = []
            conn.execute(_THIN, (item.job_id, item.attempt, item.job_id, item.attempt))
            continue
        batch.append((workflow_id, item.job_id, item.attempt, round(item.t, 3),
                      None if item.cpu_percent is None else round(item.cpu_percent, 1), item.memory_bytes,
                      item.num_processes, None if item.gpu_percent is None else round(item.gpu_percent, 1),
                      item.gpu_memory_bytes))
    if batch:
        conn.executemany(_INSERT, batch)
        inserted += len(batch)
    return inserted


def delete_workflow_samples(conn: sqlite3.Connection, workflow_id: int) -> None:
    conn.execute("DELETE FROM job_samples WHERE workflow_id = ?", (workflow_id,))


# -- reading ---------------------------------------------------------------------------------------
def attempt_samples(db: Database, job_id: int, attempt: int) -> list[dict[str, Any]]:
    """One attempt's rows in time order (paged on the primary key: short locked reads)."""
    rows: list[dict[str, Any]] = []
    after = float("-inf")
    while True:
        page = db.read("SELECT t, cpu_percent, memory_bytes, num_processes, gpu_percent, gpu_memory_bytes"
                       " FROM job_samples WHERE job_id = ? AND attempt = ? AND t > ? ORDER BY t LIMIT ?",
                       (job_id, attempt, after, PAGE))
        rows.extend(dict(r) for r in page)
        if len(page) < PAGE:
            return rows
        after = page[-1]["t"]


def sampled_attempts(db: Database, workflow_id: int, job_ids: Sequence[int] | None = None, *,
                     limit: int = 10_000) -> list[dict[str, Any]]:
    """The attempts with samples (at most ``limit``, job and attempt order; ``job_ids`` limits them
    to those jobs), each with its row count, time span, mean and peak CPU and peak memory."""
    sql = ("SELECT s.job_id, j.name AS job, s.attempt, COUNT(*) AS samples, MAX(s.t) - MIN(s.t) AS span_s,"
           " AVG(s.cpu_percent) AS avg_cpu_percent, MAX(s.cpu_percent) AS peak_cpu_percent,"
           " MAX(s.memory_bytes) AS peak_memory_bytes, MAX(s.gpu_percent) AS peak_gpu_percent"
           " FROM job_samples s JOIN jobs j ON j.id = s.job_id WHERE s.workflow_id = ?")
    params: tuple[Any, ...] = (workflow_id,)
    if job_ids is not None:
        if not job_ids:
            return []
        sql += f" AND s.job_id IN ({','.join('?' * len(job_ids))})"
        params += tuple(job_ids)
    sql += " GROUP BY s.job_id, s.attempt ORDER BY s.job_id, s.attempt LIMIT ?"
    return [dict(r) for r in db.read(sql, (*params, limit))]
