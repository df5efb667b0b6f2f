"""Attempt records of a workflow: one row per attempt (requests versus use per requirement: see
`torc_slurm.reports.resources`)."""

from __future__ import annotations

from typing import Any

from torc_slurm.store.db import Database
from torc_slurm.store.workflows import get_workflow


def results(db: Database, workflow_id: int, *, status: str | None = None) -> list[dict[str, Any]]:
    """Every attempt of every job, oldest first, with where it ran and what it used."""
    get_workflow(db, workflow_id)
    sql = ("SELECT j.name AS job, x.job_id, x.attempt, x.status, x.return_code, x.signal, r.hostname AS node,"
           " r.slurm_job_id, x.started_at, x.exec_s, x.peak_rss_bytes, x.peak_memory_bytes, x.cpu_time_s,"
           " x.avg_cpu_percent, x.peak_cpu_percent, x.reason, x.run_id, x.message FROM results x JOIN jobs j ON j.id = x.job_id"
           " LEFT JOIN runners r ON r.id = x.runner_id WHERE x.workflow_id = ?")
    params: tuple = (workflow_id,)
    if status:
        sql += " AND x.status = ?"
        params += (status,)
    return [dict(row) for row in db.read(sql + " ORDER BY x.id", params)]
