"""`torc reports samples ID [JOB]`: the per-job time series that `resource_monitor.granularity:
time_series` keeps (`torc_slurm.store.samples`).

Without JOB: one line per sampled attempt (rows kept, span, mean and peak CPU, peak memory). With
JOB (a name or an id): every row of its attempts (or of ``--attempt N``). When nothing was kept,
``note`` says why: monitoring disabled, summary granularity, or no attempt long enough yet.
"""

from __future__ import annotations

import json
from typing import Any

from torc_slurm.errors import QueueError
from torc_slurm.store.db import Database
from torc_slurm.store.samples import attempt_samples, sampled_attempts

DEFAULTS = {"enabled": True, "granularity": "summary", "sample_interval_seconds": 5, "generate_plots": False}


def monitor_settings(db: Database, workflow_id: int) -> dict[str, Any]:
    """The workflow's resource_monitor (its defaults where the spec has none), read without pydantic."""
    rows = db.read("SELECT spec_json FROM workflows WHERE id = ?", (workflow_id,))
    if not rows:
        raise QueueError(f"no workflow {workflow_id} in {db.path}")
    given = json.loads(rows[0]["spec_json"]).get("resource_monitor") or {}
    return {**DEFAULTS, **{k: v for k, v in given.items() if k in DEFAULTS}}


def why_none(monitor: dict[str, Any]) -> str:
    """Why a workflow (or job) has no time series."""
    if not monitor["enabled"]:
        return "not sampled: the workflow's resource_monitor has enabled: false"
    if monitor["granularity"] != "time_series":
        return ("not kept: resource_monitor granularity is summary (each attempt's peak and mean are in "
                "`torc reports results`); granularity: time_series keeps every sample")
    return (f"no samples (the sampler runs every {monitor['sample_interval_seconds']} s: an attempt shorter than "
            "that may have none)")


def samples_report(db: Database, workflow_id: int, job: str | None = None,
                   attempt: int | None = None) -> dict[str, Any]:
    monitor = monitor_settings(db, workflow_id)
    job_ids = None
    job_name = None
    if job is not None:
        from torc_slurm.reports.jobs import _find_job

        with db.transaction(write=False) as conn:
            row = _find_job(conn, workflow_id, job)
        job_ids, job_name = [row["id"]], row["name"]
    attempts = sampled_attempts(db, workflow_id, job_ids)
    if attempt is not None:
        attempts = [a for a in attempts if a["attempt"] == attempt]
    if job is not None:
        for a in attempts:
            a["rows"] = attempt_samples(db, a["job_id"], a["attempt"])
    note = None
    if not attempts:
        note = why_none(monitor)
        if job_name is not None:
            note = f"job {job_name}" + (f" attempt {attempt}" if attempt else "") + f": {note}"
    return {"workflow_id": workflow_id, "job": job_name, "resource_monitor": monitor, "attempts": attempts,
            "note": note}
