"""Attempt records of a workflow: one row per attempt, and per-resource-requirement summaries."""

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


def resource_summary(db: Database, workflow_id: int) -> list[dict[str, Any]]:
    """Per resource_requirements name: completed attempts, declared vs used (peak memory, runtime,
    CPU), so users can right-size their requirements."""
    get_workflow(db, workflow_id)
    rows = db.read(
        "SELECT j.resource_requirements AS name, COUNT(*) AS attempts, MAX(j.num_cpus) AS num_cpus,"
        " MAX(j.memory_bytes) AS memory_bytes, MAX(j.runtime_s) AS runtime_s,"
        " MAX(COALESCE(x.peak_memory_bytes, x.peak_rss_bytes)) AS peak_memory_bytes,"
        " MAX(x.exec_s) AS max_exec_s, AVG(x.exec_s) AS avg_exec_s, MAX(x.peak_cpu_percent) AS peak_cpu_percent"
        " FROM results x JOIN jobs j ON j.id = x.job_id WHERE x.workflow_id = ? AND x.status = 'completed'"
        " GROUP BY j.resource_requirements ORDER BY j.resource_requirements", (workflow_id,))
    return [dict(row) for row in rows]
