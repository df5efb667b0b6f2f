"""`torc reports summary ID`: where a workflow stands, on one screen.

Everything here is read through indexes or per-runner totals, in short separate reads (each its own
locked transaction), so it stays fast on a million jobs and never holds the lock for long:

- jobs by status: the ``status_counts`` rows a trigger keeps (schema 6);
- failed attempts by reason and by exit code: the non-completed results over ``results_by_status``;
- wall time and allocation use: the workflow's runners (``runners_by_workflow``), whose rows carry
  their size (``resources``), lifetime, and the CPU time used / core- and GPU-seconds held by their
  jobs, summed as outcomes are recorded;
- GPU use: the node samples of runners that had a GPU sampler (primary-key range per runner);
- the five longest attempts: the top of ``results_by_exec``.

The counts are each consistent on their own; together they are a snapshot taken over a few
milliseconds, which is what a summary needs.
"""

from __future__ import annotations

import json
import time
from typing import Any

from torc_slurm.store.db import Database
from torc_slurm.store.views import status_counts

# Attempt outcomes other than 'completed' (results.status).
NOT_COMPLETED = ("failed", "terminated", "lost", "canceled")
LONGEST = 5
FAILURE_PAGE = 5_000  # failed attempts counted per locked read
LIVE_RUNNER = ("active", "fencing")


_MODELS = ("ReasonCount", "ExitCount", "Failures", "WallTime", "Usage", "Allocation", "LongJob", "Summary")


def __getattr__(name: str) -> Any:
    """The pydantic models of the JSON output live in ``summary_model`` (imported on first use:
    pydantic costs a tenth of a second that `torc reports summary` itself does not need)."""
    if name in _MODELS:
        from torc_slurm.reports import summary_model

        return getattr(summary_model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def summary(db: Database, workflow_id: int, *, now: float | None = None) -> dict[str, Any]:
    """The summary as plain data (validates against `Summary`)."""
    workflow = _workflow(db, workflow_id)
    now = time.time() if now is None else now
    by_status = {s: n for s, n in status_counts(db, workflow_id).items() if n}
    runners = [dict(r) for r in db.read(
        "SELECT id, status, resources, started_at, heartbeat_at, ended_at, job_cpu_s, held_cpu_s, held_gpu_s,"
        " gpu_sampler FROM runners WHERE workflow_id = ?", (workflow_id,))]
    return {
        "workflow_id": workflow_id,
        "name": workflow["name"],
        "jobs_total": sum(by_status.values()),
        "jobs_by_status": by_status,
        "failures": _failures(db, workflow_id),
        "wall": _wall(runners, now),
        "allocation": _allocation(db, runners, now),
        "longest": _longest(db, workflow_id),
    }


def _workflow(db: Database, workflow_id: int) -> Any:
    """The workflow's row, or the error naming the nearest ids (one short read)."""
    with db.transaction(write=False) as conn:
        row = conn.execute("SELECT id, name, status FROM workflows WHERE id = ?", (workflow_id,)).fetchone()
        if row is None:
            from torc_slurm.reports.status import no_workflow

            raise no_workflow(conn, workflow_id, db.path)
        return row


def _failures(db: Database, workflow_id: int) -> dict[str, Any]:
    """Attempts that did not complete, by (status, reason) and, for failed ones, by exit code or signal.
    Read in pages along ``results_by_status`` (id order within a status), each page counted in SQL,
    so the lock is never held for more than one page however many attempts failed."""
    by_reason: dict[tuple[str, str], int] = {}
    by_code: dict[tuple[int | None, int | None], int] = {}
    for status in NOT_COMPLETED:
        after = -1
        while True:
            rows = db.read(
                "SELECT reason, return_code, signal, SUM(late = 0) AS n, COUNT(*) AS seen, MAX(id) AS last FROM"
                " (SELECT id, reason, return_code, signal, late FROM results INDEXED BY results_by_status"
                "  WHERE workflow_id = ? AND status = ? AND id > ? ORDER BY id LIMIT ?)"
                " GROUP BY reason, return_code, signal", (workflow_id, status, after, FAILURE_PAGE))
            for r in rows:
                if not r["n"]:
                    continue
                key = (status, reason_kind(r["reason"]) or status)
                by_reason[key] = by_reason.get(key, 0) + r["n"]
                if status == "failed":
                    code = (r["return_code"], r["signal"])
                    by_code[code] = by_code.get(code, 0) + r["n"]
            if sum(r["seen"] for r in rows) < FAILURE_PAGE:
                break
            after = max(r["last"] for r in rows)
    return {
        "attempts": sum(by_reason.values()),
        "by_reason": [{"status": s, "reason": why, "attempts": n}
                      for (s, why), n in sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0]))],
        "by_exit_code": [{"return_code": rc, "signal": sig, "attempts": n}
                         for (rc, sig), n in sorted(by_code.items(), key=lambda kv: (-kv[1], str(kv[0])))],
    }


def reason_kind(reason: str | None) -> str | None:
    """'exit code 3' -> 'exit code', 'signal SIGKILL' -> 'signal' (the codes have their own list);
    other reasons (oom, timeout, walltime, lost, …) as they are."""
    if reason is None:
        return None
    for kind in ("exit code", "signal"):
        if reason.startswith(kind):
            return kind
    return reason


def runner_end(runner: dict[str, Any], now: float) -> float:
    """When a runner stopped holding its node: its end, now while it is live, else its last heartbeat
    (a lost runner's best known end)."""
    if runner["ended_at"] is not None:
        return runner["ended_at"]
    return now if runner["status"] in LIVE_RUNNER else runner["heartbeat_at"]


def runner_size(runner: dict[str, Any]) -> tuple[int, int]:
    """(CPUs, GPUs) from ``runners.resources`` (``gpus`` is a list of device ids, or a count)."""
    try:
        resources = json.loads(runner["resources"] or "{}")
    except ValueError:
        return 0, 0
    gpus = resources.get("gpus") or 0
    return int(resources.get("cpus") or 0), len(gpus) if isinstance(gpus, list) else int(gpus)


def _wall(runners: list[dict[str, Any]], now: float) -> dict[str, Any]:
    if not runners:
        return {"started_at": None, "ended_at": None, "running": False, "seconds": None}
    start = min(r["started_at"] for r in runners)
    running = any(r["status"] in LIVE_RUNNER and r["ended_at"] is None for r in runners)
    end = now if running else max(runner_end(r, now) for r in runners)
    return {"started_at": start, "ended_at": end, "running": running, "seconds": max(0.0, end - start)}


def _usage(allocated_s: float, held_s: float, used_s: float | None) -> dict[str, Any]:
    def percent(part: float | None) -> float | None:
        return None if part is None or allocated_s <= 0 else round(100.0 * part / allocated_s, 1)

    return {"allocated_hours": allocated_s / 3600, "held_hours": held_s / 3600,
            "used_hours": None if used_s is None else used_s / 3600,
            "held_percent": percent(held_s), "used_percent": percent(used_s)}


def _allocation(db: Database, runners: list[dict[str, Any]], now: float) -> dict[str, Any]:
    cpu_alloc = cpu_held = cpu_used = gpu_alloc = gpu_held = 0.0
    gpu_used: float | None = None
    samplers = set()
    for r in runners:
        cpus, gpus = runner_size(r)
        life = max(0.0, runner_end(r, now) - r["started_at"])
        cpu_alloc += cpus * life
        gpu_alloc += gpus * life
        cpu_held += r["held_cpu_s"] or 0.0
        cpu_used += r["job_cpu_s"] or 0.0
        gpu_held += r["held_gpu_s"] or 0.0
        if gpus and r["gpu_sampler"]:
            samplers.add(r["gpu_sampler"])
            mean = db.read("SELECT AVG(gpu_percent) FROM runner_samples WHERE runner_id = ?", (r["id"],))[0][0]
            if mean is not None:
                gpu_used = (gpu_used or 0.0) + mean / 100 * gpus * life
    return {"runners": len(runners), "live_runners": sum(r["status"] in LIVE_RUNNER and r["ended_at"] is None
                                                         for r in runners),
            "cpu": _usage(cpu_alloc, cpu_held, cpu_used), "gpu": _usage(gpu_alloc, gpu_held, gpu_used),
            "gpu_sampled": gpu_used is not None, "gpu_samplers": sorted(samplers)}


def _longest(db: Database, workflow_id: int) -> list[dict[str, Any]]:
    rows = db.read(
        "SELECT j.name AS job, x.job_id, x.attempt, x.status, x.exec_s, r.hostname AS node"
        " FROM results x INDEXED BY results_by_exec JOIN jobs j ON j.id = x.job_id"
        " LEFT JOIN runners r ON r.id = x.runner_id"
        " WHERE x.workflow_id = ? AND x.exec_s IS NOT NULL ORDER BY x.exec_s DESC LIMIT ?", (workflow_id, LONGEST))
    return [dict(r) for r in rows]
