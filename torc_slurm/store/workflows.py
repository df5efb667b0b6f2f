"""Workflows in the queue file: write a compiled workflow whole, initialize it, list, count, delete."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torc_slurm.compiler import CompiledWorkflow, job_hash
from torc_slurm.errors import QueueError, SpecError
from torc_slurm.spec.models import WorkflowSpec
from torc_slurm.states import ALL as JOB_STATUSES
from torc_slurm.states import HELD, UNFINISHED, sql_list
from torc_slurm.store import actions
from torc_slurm.store.db import Database
from torc_slurm.store.events import add_event
from torc_slurm.store.views import (  # noqa: F401 (status_counts, list_jobs: re-exported)
    bulk_status_change, list_jobs, read_status_counts, refresh_status_counts, status_counts)
from torc_slurm.store.leases import next_ids

__all__ = ["JOB_STATUSES", "UNFINISHED", "add_event", "add_workflow", "WorkflowRow"]


@dataclass(frozen=True)
class WorkflowRow:
    id: int
    name: str
    description: str | None
    user: str | None
    status: str
    working_dir: str
    spec_source: str | None
    created_at: float

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "WorkflowRow":
        return cls(row["id"], row["name"], row["description"], row["user"], row["status"],
                   row["working_dir"], row["spec_source"], row["created_at"])


@contextmanager
def _page_cache(conn: sqlite3.Connection, jobs: int) -> Iterator[None]:
    """A larger SQLite page cache while a big workflow's rows and index entries go in (64 MiB from
    100,000 jobs; the default 2 MiB makes every index insert of a million rows a read from the OS:
    a 1M-job sweep's add_workflow 19.6 -> 14.7 s), back to the connection's own size after."""
    if jobs < 100_000:
        yield
        return
    before = conn.execute("PRAGMA cache_size").fetchone()[0]
    conn.execute("PRAGMA cache_size=-65536")
    try:
        yield
    finally:
        conn.execute(f"PRAGMA cache_size={int(before)}")


def add_workflow(db: Database, compiled: CompiledWorkflow, *, working_dir: str | Path,
                 source: str | None = None) -> int:
    """Write the whole compiled workflow in one transaction; returns its id. Jobs start
    'uninitialized' until ``initialize_workflow``."""
    spec = compiled.spec
    now = time.time()
    with db.transaction(foreign_keys=False) as conn, _page_cache(conn, len(compiled.jobs)):  # ids allocated here
        workflow_id = next_ids(conn, "workflows")
        conn.execute(
            "INSERT INTO workflows (id, name, description, user, project, spec_source, spec_json, working_dir,"
            " created_at) VALUES (?,?,?,?,?,?,?,?,?)",
            (workflow_id, spec.name, spec.description, spec.user or os.environ.get("USER"), spec.project, source,
             spec.model_dump_json(), str(Path(working_dir).absolute()), now))
        job_base = next_ids(conn, "jobs", len(compiled.jobs))
        set_base = next_ids(conn, "dependency_sets", len(compiled.dependency_sets))
        conn.executemany(
            "INSERT INTO dependency_sets (id, workflow_id, size, remaining) VALUES (?,?,?,?)",
            ((set_base + i, workflow_id, len(m), len(m)) for i, m in enumerate(compiled.dependency_sets)))
        conn.executemany(
            "INSERT INTO dependency_members (job_id, set_id) VALUES (?,?)",
            ((job_base + member, set_base + i) for i, members in enumerate(compiled.dependency_sets)
             for member in members))
        conn.executemany(
            "INSERT INTO jobs (id, workflow_id, name, command, invocation_script, env, status, rank, priority,"
            " num_cpus, num_gpus, num_nodes, memory_bytes, runtime_s, resource_requirements, scheduler,"
            " cancel_on_blocking_job_failure, supports_termination, depset_id, max_attempts, failure_handler,"
            " enforce_runtime, runtime_grace, spec_hash)"
            " VALUES (?,?,?,?,?,?,'uninitialized',?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            ((job_base + i, workflow_id, j.name, j.command, j.invocation_script,
              json.dumps(j.env) if j.env else None, j.rank, j.priority, j.num_cpus, j.num_gpus,
              j.num_nodes, j.memory_bytes, j.runtime_s, j.resource_requirements, j.scheduler,
              int(j.cancel_on_blocking_job_failure), int(j.supports_termination),
              None if j.depset is None else set_base + j.depset, j.max_attempts, j.failure_handler,
              int(j.enforce_runtime), j.runtime_grace, job_hash(j, compiled.files, compiled.user_data))
             for i, j in enumerate(compiled.jobs)))
        add_groups(conn, workflow_id, compiled, range(job_base, job_base + len(compiled.jobs)))
        actions.add_actions(conn, workflow_id, compiled, range(job_base, job_base + len(compiled.jobs)))
        file_base = next_ids(conn, "files", len(compiled.files))
        conn.executemany(
            "INSERT INTO files (id, workflow_id, name, path, producer_job_id) VALUES (?,?,?,?,?)",
            ((file_base + i, workflow_id, f.name, f.path, None if f.producer is None else job_base + f.producer)
             for i, f in enumerate(compiled.files)))
        data_base = next_ids(conn, "user_data", len(compiled.user_data))
        conn.executemany(
            "INSERT INTO user_data (id, workflow_id, name, data, is_ephemeral, producer_job_id)"
            " VALUES (?,?,?,?,?,?)",
            ((data_base + i, workflow_id, d.name, json.dumps(d.data), int(d.is_ephemeral),
              None if d.producer is None else job_base + d.producer) for i, d in enumerate(compiled.user_data)))
        conn.executemany(
            "INSERT INTO job_io (job_id, kind, item_id) VALUES (?,?,?)",
            ((job_base + i, kind, base + item) for i, j in enumerate(compiled.jobs)
             for kind, items, base in (("input_file", j.input_files, file_base),
                                       ("output_file", j.output_files, file_base),
                                       ("input_user_data", j.input_user_data, data_base),
                                       ("output_user_data", j.output_user_data, data_base))
             for item in items))
        if compiled.jobs:  # every job starts uninitialized: the status counts, without a per-row trigger
            conn.execute("INSERT INTO status_counts (workflow_id, status, n) VALUES (?, 'uninitialized', ?)",
                         (workflow_id, len(compiled.jobs)))
        add_event(conn, workflow_id, "created", f"created from {source or 'a spec'} with {len(compiled.jobs)} jobs")
    return workflow_id


def add_groups(conn: sqlite3.Connection, workflow_id: int, compiled: CompiledWorkflow,
               job_ids: Sequence[int]) -> None:
    """The workflow's groups (replacing any), each member's group and rank within it, and
    multi-node launchers and images (rare fields, set after the bulk insert). ``job_ids[i]`` is the
    id of ``compiled.jobs[i]``."""
    if conn.execute("SELECT 1 FROM job_groups WHERE workflow_id = ? LIMIT 1", (workflow_id,)).fetchone():
        conn.execute("UPDATE jobs SET group_id = NULL, group_rank = NULL WHERE group_id IN"
                     " (SELECT id FROM job_groups WHERE workflow_id = ?)", (workflow_id,))
        conn.execute("DELETE FROM job_groups WHERE workflow_id = ?", (workflow_id,))
    if compiled.groups:
        group_base = next_ids(conn, "job_groups", len(compiled.groups))
        conn.executemany(
            "INSERT INTO job_groups (id, workflow_id, name, lead_job_id, group_end, size) VALUES (?,?,?,?,?,?)",
            ((group_base + i, workflow_id, g.name, None if g.lead is None else job_ids[g.lead], g.group_end,
              len(g.members)) for i, g in enumerate(compiled.groups)))
        conn.executemany("UPDATE jobs SET group_id = ?, group_rank = ? WHERE id = ?",
                         ((group_base + i, rank, job_ids[member]) for i, g in enumerate(compiled.groups)
                          for rank, member in enumerate(g.members)))
    conn.executemany("UPDATE jobs SET launcher = ?, image = ? WHERE id = ?",
                     ((j.launcher, j.image, job_ids[i]) for i, j in enumerate(compiled.jobs)
                      if j.launcher is not None or j.image is not None))


def get_workflow(db: Database, workflow_id: int) -> WorkflowRow:
    rows = db.read("SELECT * FROM workflows WHERE id = ?", (workflow_id,))
    if not rows:
        raise QueueError(f"no workflow {workflow_id} in {db.path}")
    return WorkflowRow.from_row(rows[0])


@dataclass(frozen=True)
class WorkflowSettings:
    working_dir: Path
    spec: WorkflowSpec


def workflow_settings(db: Database, workflow_id: int) -> WorkflowSettings:
    """The workflow's folder and its spec, as created."""
    rows = db.read("SELECT working_dir, spec_json FROM workflows WHERE id = ?", (workflow_id,))
    if not rows:
        raise QueueError(f"no workflow {workflow_id} in {db.path}")
    return WorkflowSettings(Path(rows[0]["working_dir"]), WorkflowSpec.model_validate_json(rows[0]["spec_json"]))


def list_workflows(db: Database) -> list[WorkflowRow]:
    return [WorkflowRow.from_row(r) for r in db.read("SELECT * FROM workflows ORDER BY id")]


def missing_inputs(db: Database, workflow_id: int) -> dict[str, list[str]]:
    """Input files no job produces and that do not exist yet: path -> the jobs that need them."""
    workflow = get_workflow(db, workflow_id)
    rows = db.read(
        "SELECT f.path, j.name FROM files f JOIN job_io io ON io.item_id = f.id AND io.kind = 'input_file'"
        " JOIN jobs j ON j.id = io.job_id WHERE f.workflow_id = ? AND f.producer_job_id IS NULL"
        " ORDER BY f.path, j.id", (workflow_id,))
    missing: dict[str, list[str]] = {}
    for row in rows:
        if not (Path(workflow.working_dir) / row["path"]).exists():
            missing.setdefault(row["path"], []).append(row["name"])
    return missing


def initialize_workflow(db: Database, workflow_id: int, *, force: bool = False) -> None:
    """Set every job to ready or blocked and every dependency count to full, start a new run
    (``workflows.run_id`` + 1) and record the input files' stats (mtime, size, content hash) for
    ``torc workflows reinit``. Refuses while jobs run."""
    from torc_slurm.store.input_stats import record_input_stats, stat_inputs

    if not force:
        missing = missing_inputs(db, workflow_id)
        if missing:
            lines = "; ".join(f"{path} (needed by {', '.join(jobs[:5])}{' …' if len(jobs) > 5 else ''})"
                              for path, jobs in missing.items())
            raise SpecError(f"input files that no job produces do not exist: {lines}. "
                            "Create them, or pass --force to skip this check.")
    stats = stat_inputs(db, workflow_id)  # outside the lock: reading files can take a while
    with db.transaction() as conn:
        busy = conn.execute(f"SELECT COUNT(*) FROM jobs WHERE workflow_id = ? AND status IN {sql_list(HELD)}",
                            (workflow_id,)).fetchone()[0]
        if busy:
            raise QueueError(f"workflow {workflow_id} has {busy} jobs pending or running; cancel them first")
        conn.execute("UPDATE dependency_sets SET remaining = size, failed = 0 WHERE workflow_id = ?", (workflow_id,))
        with bulk_status_change(conn, workflow_id):  # every job changes: one recount, not a trigger per row
            conn.execute("UPDATE jobs SET status = CASE WHEN depset_id IS NULL THEN 'ready' ELSE 'blocked' END,"
                         " runner_id = NULL, return_code = NULL, pid = NULL, lease_token = NULL, interrupted = 0,"
                         " retries = 0, reason = NULL WHERE workflow_id = ? AND status != 'disabled'",
                         (workflow_id,))
        conn.execute("UPDATE workflows SET status = 'initialized', run_id = run_id + 1 WHERE id = ?", (workflow_id,))
        actions.rearm(conn, workflow_id)  # a new run: on_workflow_start is due (performed by `init`'s caller)
        record_input_stats(conn, stats)
        add_event(conn, workflow_id, "initialized", "jobs set to ready or blocked")
    db.notify()


def ensure_initialized(db: Database, workflow_id: int, *, force: bool = False) -> bool:
    """Initialize if the workflow never was; True when this call did it."""
    if get_workflow(db, workflow_id).status == "uninitialized":
        initialize_workflow(db, workflow_id, force=force)
        return True
    return False


def live_runners(db: Database, workflow_id: int) -> list[dict[str, Any]]:
    """The workflow's runners that have not signed off and were not declared dead."""
    return [dict(r) for r in db.read(
        "SELECT id, hostname, pid, slurm_job_id, heartbeat_at FROM runners WHERE workflow_id = ?"
        " AND status IN ('active', 'fencing') ORDER BY id", (workflow_id,))]


def delete_workflow(db: Database, workflow_id: int) -> None:
    """Delete the workflow and everything recorded about it. Refuses while any of its runners is
    live: stop them first (``torc workflows delete --force`` does). Ids are never reused."""
    get_workflow(db, workflow_id)
    with db.transaction() as conn:
        live = conn.execute("SELECT COUNT(*) FROM runners WHERE workflow_id = ? AND status IN ('active', 'fencing')",
                            (workflow_id,)).fetchone()[0]
        if live:
            raise QueueError(f"workflow {workflow_id} has {live} live runner(s); stop them first "
                             "(`torc workflows delete --force` stops them, then deletes)")
        conn.execute("DELETE FROM dependency_members WHERE set_id IN"
                     " (SELECT id FROM dependency_sets WHERE workflow_id = ?)", (workflow_id,))
        conn.execute("DELETE FROM job_io WHERE job_id IN (SELECT id FROM jobs WHERE workflow_id = ?)", (workflow_id,))
        actions.delete_actions(conn, workflow_id)
        for table in ("results", "runner_samples", "job_samples", "runners", "allocations", "events", "jobs", "files",
                      "user_data", "dependency_sets", "job_groups", "partition_cache", "watchers"):
            conn.execute(f"DELETE FROM {table} WHERE workflow_id = ?", (workflow_id,))
        conn.execute("DELETE FROM workflows WHERE id = ?", (workflow_id,))


def cancel_workflow(db: Database, workflow_id: int) -> int:
    """Cancel every unfinished job (running ones are stopped by their runners); returns how many."""
    get_workflow(db, workflow_id)
    with db.transaction() as conn:
        with bulk_status_change(conn, workflow_id):
            count = conn.execute(f"UPDATE jobs SET status = 'canceled' WHERE workflow_id = ? AND status IN"
                                 f" {sql_list(UNFINISHED)}", (workflow_id,)).rowcount
        conn.execute("UPDATE workflows SET status = 'canceled' WHERE id = ?", (workflow_id,))
        actions.on_cancel(conn, workflow_id)
        add_event(conn, workflow_id, "canceled", f"{count} unfinished jobs canceled")
    db.notify()
    return count
