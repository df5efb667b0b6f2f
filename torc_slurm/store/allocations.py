"""Slurm allocations and runners as the queue file records them (SQL only; no Slurm calls here)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from torc_slurm.store.db import Database
from torc_slurm.store.workflows import add_event

FINAL_STATES = ("gone", "canceled", "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL",
                "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED", "REVOKED")


def record_allocations(db: Database, workflow_id: int, scheduler: str, num_nodes: int,
                       submitted: list[tuple[str, str | None]]) -> None:
    """``submitted`` holds (slurm_job_id, script_path) pairs, all written in one transaction, with
    one ``allocation_submitted`` event each."""
    now = time.time()
    with db.transaction() as conn:
        conn.executemany(
            "INSERT INTO allocations (workflow_id, slurm_job_id, scheduler, script_path, num_nodes, state,"
            " submitted_at, updated_at) VALUES (?,?,?,?,?,'submitted',?,?)",
            [(workflow_id, job_id, scheduler, path, num_nodes, now, now) for job_id, path in submitted])
        for job_id, _ in submitted:
            add_event(conn, workflow_id, "allocation_submitted",
                      f"Slurm job {job_id} submitted: {num_nodes} node(s) of scheduler {scheduler}",
                      data={"slurm_job_id": job_id, "scheduler": scheduler, "num_nodes": num_nodes},
                      source="torc")


def list_allocations(db: Database, workflow_id: int, *, active_only: bool = False) -> list[dict[str, Any]]:
    sql = "SELECT * FROM allocations WHERE workflow_id = ?"
    if active_only:
        sql += f" AND state NOT IN ({','.join('?' * len(FINAL_STATES))})"
    return [dict(r) for r in db.read(sql + " ORDER BY id", (workflow_id, *(FINAL_STATES if active_only else ())))]


# States in which an allocation holds its nodes: reaching one (from submitted, PENDING …) is a start.
STARTED_STATES = ("RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESIZING")


def record_end_times(db: Database, ends: Mapping[str, float]) -> int:
    """slurm_job_id -> when Slurm says it ends (epoch seconds), in one transaction; returns the
    allocations this queue knows that were updated."""
    if not ends:
        return 0
    with db.transaction() as conn:
        return conn.executemany("UPDATE allocations SET end_at = ? WHERE slurm_job_id = ? AND end_at IS NOT ?",
                                [(end, job_id, end) for job_id, end in ends.items()]).rowcount


def allocation_end(db: Database, slurm_job_id: str) -> tuple[bool, float | None]:
    """(whether this queue records the allocation, when it ends if known): one short read."""
    rows = db.read("SELECT end_at FROM allocations WHERE slurm_job_id = ? ORDER BY id DESC LIMIT 1", (slurm_job_id,))
    return (bool(rows), rows[0]["end_at"] if rows else None)


def update_allocation_states(db: Database, workflow_id: int, states: Mapping[str, str]) -> None:
    """slurm_job_id -> new state, for this workflow's allocations, in one transaction. A change
    into RUNNING (or another state that holds nodes) posts ``allocation_started``; a change into a
    final state posts ``allocation_ended`` (only the end, if both happened between two looks)."""
    if not states:
        return
    now = time.time()
    with db.transaction() as conn:
        before = {row[0]: (row[1], row[2]) for row in conn.execute(
            "SELECT slurm_job_id, state, scheduler FROM allocations WHERE workflow_id = ?"
            " AND slurm_job_id IN (SELECT value FROM json_each(?))", (workflow_id, json.dumps(list(states))))}
        conn.executemany("UPDATE allocations SET state = ?, updated_at = ? WHERE workflow_id = ? AND slurm_job_id = ?",
                         [(state, now, workflow_id, job_id) for job_id, state in states.items()])
        for job_id, state in states.items():
            if job_id not in before or before[job_id][0] == state:
                continue
            old, scheduler = before[job_id]
            data = {"slurm_job_id": job_id, "scheduler": scheduler, "state": state, "previous_state": old}
            if state in FINAL_STATES and old not in FINAL_STATES:
                how = "no longer known to Slurm" if state == "gone" else state
                add_event(conn, workflow_id, "allocation_ended", f"Slurm job {job_id} ended: {how}", data=data,
                          source="torc")
            elif state in STARTED_STATES and old not in STARTED_STATES and old not in FINAL_STATES:
                add_event(conn, workflow_id, "allocation_started", f"Slurm job {job_id} started ({state})",
                          data=data, source="torc")


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
