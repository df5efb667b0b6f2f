"""Slurm allocations and runners as the queue file records them (SQL only; no Slurm calls here)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from torc_slurm.store.db import Database
from torc_slurm.store.workflows import add_event

FINAL_STATES = ("gone", "canceled", "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL",
                "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED", "REVOKED")


def record_allocations(db: Database, workflow_id: int, scheduler: str, num_nodes: int,
                       submitted: list[tuple[str, str | None]]) -> None:
    """``submitted`` holds (slurm_job_id, script_path) pairs, all written in one transaction."""
    now = time.time()
    with db.transaction() as conn:
        conn.executemany(
            "INSERT INTO allocations (workflow_id, slurm_job_id, scheduler, script_path, num_nodes, state,"
            " submitted_at, updated_at) VALUES (?,?,?,?,?,'submitted',?,?)",
            [(workflow_id, job_id, scheduler, path, num_nodes, now, now) for job_id, path in submitted])
        add_event(conn, workflow_id, "allocations_submitted",
                  f"{len(submitted)} allocations of scheduler {scheduler}: {', '.join(j for j, _ in submitted)}")


def list_allocations(db: Database, workflow_id: int, *, active_only: bool = False) -> list[dict[str, Any]]:
    sql = "SELECT * FROM allocations WHERE workflow_id = ?"
    if active_only:
        sql += f" AND state NOT IN ({','.join('?' * len(FINAL_STATES))})"
    return [dict(r) for r in db.read(sql + " ORDER BY id", (workflow_id, *(FINAL_STATES if active_only else ())))]


def update_allocation_states(db: Database, workflow_id: int, states: Mapping[str, str]) -> None:
    """slurm_job_id -> new state, for this workflow's allocations, in one transaction."""
    if not states:
        return
    now = time.time()
    with db.transaction() as conn:
        conn.executemany("UPDATE allocations SET state = ?, updated_at = ? WHERE workflow_id = ? AND slurm_job_id = ?",
                         [(state, now, workflow_id, job_id) for job_id, state in states.items()])


def runners_by_allocation(db: Database, workflow_id: int) -> dict[str, list[dict[str, Any]]]:
    """slurm_job_id -> its runners, each with the number of jobs it holds now."""
    rows = db.read(
        "SELECT r.id, r.slurm_job_id, r.hostname, r.status, r.heartbeat_at, r.started_at,"
        " (SELECT COUNT(*) FROM jobs j WHERE j.runner_id = r.id AND j.status IN ('pending','running')) AS jobs,"
        " (SELECT COUNT(*) FROM results x WHERE x.runner_id = r.id AND x.status = 'completed') AS completed"
        " FROM runners r WHERE r.workflow_id = ? AND r.slurm_job_id IS NOT NULL ORDER BY r.id", (workflow_id,))
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(row["slurm_job_id"], []).append(dict(row))
    return grouped
