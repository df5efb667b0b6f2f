"""`torc workflows update ID SPEC`: compile an edited spec into an existing workflow.

Jobs, files and user data are matched by name and keep their ids (so their results and attempt
numbers carry on). A job is *changed* when its definition (``compiler.job_definition``: command,
invocation_script, env, resources, the paths it reads and writes, its input user data) differs
between the workflow's current spec and the new one. Comparing the two specs, rather than the
new spec with the rows, keeps what `torc recover` changed on an unchanged job.

The whole rebuild is one transaction (it refuses while any job is pending or running, so no
runner is waiting on it): removed jobs go (their results stay), added jobs come in, dependency sets
are rebuilt from the new spec, and statuses are settled in topological order: changed and added
jobs and everything downstream run again; other unfinished jobs get the status their new
prerequisites give them; other finished jobs keep theirs. ``dry_run`` runs the same transaction
and rolls it back, so what it reports is what would happen.
"""

from __future__ import annotations

import heapq
import json
from dataclasses import dataclass, field
from typing import Any

from torc_slurm.compiler import (
    CompiledWorkflow,
    compile_workflow,
    job_definition,
    job_hash,
)
from torc_slurm.errors import QueueError, SpecError
from torc_slurm.spec.models import WorkflowSpec
from torc_slurm.states import HELD, UNFINISHED, JobStatus, sql_list
from torc_slurm.store import actions
from torc_slurm.store.db import Database
from torc_slurm.store.events import add_event
from torc_slurm.store.leases import next_ids
from torc_slurm.store.restarts import Change, deltas, next_status
from torc_slurm.store.workflows import add_groups, refresh_status_counts

_PARTS = ("command", "env", "resources", "files", "input user data")


@dataclass
class UpdateResult:
    workflow_id: int
    spec: str
    dry_run: bool
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[tuple[str, str]] = field(default_factory=list)  # (job, which parts)
    kept: list[str] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)           # jobs set to run again
    run_id: int = 0

    def as_dict(self) -> dict[str, Any]:
        reset = None
        if self.changes:
            reset = {"workflow_id": self.workflow_id, "kind": "reinit", "dry_run": self.dry_run,
                     "run_id": self.run_id - 1 if self.dry_run else self.run_id, "not_run": 0,
                     "changes": [{"job": c.name, "old": c.old, "new": c.new, "reason": c.reason}
                                 for c in self.changes]}
        return {"workflow_id": self.workflow_id, "spec": self.spec, "dry_run": self.dry_run, "added": self.added,
                "removed": self.removed, "changed": [{"job": j, "what": w} for j, w in self.changed],
                "kept": self.kept, "run_id": self.run_id, "reset": reset}


class _DryRun(Exception):
    pass


def diff_jobs(old: CompiledWorkflow, new: CompiledWorkflow) -> tuple[list[str], list[str], dict[str, str]]:
    """(added names, removed names, changed name -> the parts that changed). Pure."""
    old_defs = {j.name: job_definition(j, old.files, old.user_data) for j in old.jobs}
    added, changed = [], {}
    for job in new.jobs:
        before = old_defs.pop(job.name, None)
        if before is None:
            added.append(job.name)
            continue
        now = job_definition(job, new.files, new.user_data)
        if now != before:
            changed[job.name] = ", ".join(part[0] for part, was in zip(now, before) if part != was)
    return added, list(old_defs), changed


def settle(compiled: CompiledWorkflow, statuses: list[str],
           rerun: set[int]) -> tuple[list[str], list[list[int]], list[int]]:
    """New statuses and set counters (remaining, failed) for the whole workflow, in topological
    order: jobs in ``rerun`` and unfinished jobs get the status their set gives them (a rerun job
    counts as unfinished before that), finished jobs outside ``rerun`` keep theirs. Pure."""
    jobs = compiled.jobs
    member_of: list[list[int]] = [[] for _ in jobs]
    for set_id, members in enumerate(compiled.dependency_sets):
        for member in members:
            member_of[member].append(set_id)
    counters = [[len(members), 0] for members in compiled.dependency_sets]
    waiting: list[list[int]] = [[] for _ in compiled.dependency_sets]
    todo = [len(members) for members in compiled.dependency_sets]
    ready: list[int] = []
    for index, job in enumerate(jobs):
        (ready.append(index) if job.depset is None else waiting[job.depset].append(index))
    heapq.heapify(ready)
    final = list(statuses)
    order = []
    while ready:
        index = heapq.heappop(ready)
        order.append(index)
        job = jobs[index]
        status = statuses[index]
        if index in rerun or status in UNFINISHED:
            status = next_status(job.depset, None if job.depset is None else tuple(counters[job.depset]),
                                 job.cancel_on_blocking_job_failure)
        final[index] = status
        d_remaining, d_failed = deltas(JobStatus.BLOCKED.value, status)  # every member starts unfinished
        for set_id in member_of[index]:
            counters[set_id][0] += d_remaining
            counters[set_id][1] += d_failed
            todo[set_id] -= 1
            if todo[set_id] == 0:
                for waiter in waiting[set_id]:
                    heapq.heappush(ready, waiter)
    return final, counters, order


def downstream(compiled: CompiledWorkflow, start: set[int]) -> dict[int, int]:
    """Every job downstream of ``start`` -> the job that led to it. Pure."""
    waiters: dict[int, list[int]] = {}
    for index, job in enumerate(compiled.jobs):
        if job.depset is not None:
            waiters.setdefault(job.depset, []).append(index)
    member_of: dict[int, list[int]] = {}
    for set_id, members in enumerate(compiled.dependency_sets):
        for member in members:
            member_of.setdefault(member, []).append(set_id)
    parent: dict[int, int] = {}
    frontier = list(start)
    seen_sets: set[int] = set()
    while frontier:
        index = frontier.pop()
        for set_id in member_of.get(index, ()):
            if set_id in seen_sets:
                continue
            seen_sets.add(set_id)
            for waiter in waiters.get(set_id, ()):
                if waiter not in start and waiter not in parent:
                    parent[waiter] = index
                    frontier.append(waiter)
    return parent


def update_workflow(db: Database, workflow_id: int, compiled: CompiledWorkflow, *, source: str,
                    dry_run: bool = False) -> UpdateResult:
    rows = db.read("SELECT name, status, spec_json, run_id FROM workflows WHERE id = ?", (workflow_id,))
    if not rows:
        raise QueueError(f"no workflow {workflow_id} in {db.path}")
    workflow = rows[0]
    if compiled.spec.name != workflow["name"]:
        raise SpecError(f"the spec names the workflow {compiled.spec.name!r} but workflow {workflow_id} is "
                        f"{workflow['name']!r}: a renamed spec is a new workflow (`torc workflows create`, or "
                        "`--new` with `torc run`/`torc submit`); or put the name back", file=source)
    result = UpdateResult(workflow_id, source, dry_run, run_id=workflow["run_id"])
    new_json = compiled.spec.model_dump_json()
    if new_json == workflow["spec_json"]:
        result.kept = [j.name for j in compiled.jobs]
        if not dry_run:
            with db.transaction() as conn:
                conn.execute("UPDATE workflows SET spec_source = ? WHERE id = ?", (source, workflow_id))
        return result
    old = compile_workflow(WorkflowSpec.model_validate_json(workflow["spec_json"]), f"workflow {workflow_id}")
    result.added, result.removed, changed = diff_jobs(old, compiled)
    result.changed = list(changed.items())
    result.kept = [j.name for j in compiled.jobs if j.name not in changed and j.name not in result.added]
    try:
        with db.transaction() as conn:
            _rebuild(conn, workflow_id, workflow, compiled, result, changed, new_json, source)
            if dry_run:
                raise _DryRun
    except _DryRun:
        result.run_id = workflow["run_id"] + (1 if result.changes else 0)
        return result
    db.notify()
    return result


def _rebuild(conn, workflow_id: int, workflow, compiled: CompiledWorkflow, result: UpdateResult,
             changed: dict[str, str], new_json: str, source: str) -> None:
    busy = [name for (name,) in conn.execute(
        f"SELECT name FROM jobs WHERE workflow_id = ? AND status IN {sql_list(HELD)} LIMIT 11", (workflow_id,))]
    if busy:
        raise QueueError(f"workflow {workflow_id}: cannot update while jobs are pending or running: "
                         f"{', '.join(busy[:10])}{' …' if len(busy) > 10 else ''}. Wait for them, or cancel them")
    current = {row[0]: (row[1], row[2]) for row in conn.execute(
        "SELECT name, id, status FROM jobs WHERE workflow_id = ?", (workflow_id,))}
    initialized = workflow["status"] != "uninitialized"
    removed_ids = [current[name][0] for name in result.removed]
    ids = json.dumps(removed_ids)
    conn.execute("DELETE FROM job_io WHERE job_id IN (SELECT id FROM jobs WHERE workflow_id = ?)", (workflow_id,))
    conn.execute("DELETE FROM dependency_members WHERE set_id IN (SELECT id FROM dependency_sets WHERE workflow_id = ?)",
                 (workflow_id,))
    conn.execute("UPDATE jobs SET depset_id = NULL WHERE workflow_id = ?", (workflow_id,))
    conn.execute("DELETE FROM dependency_sets WHERE workflow_id = ?", (workflow_id,))
    conn.execute("DELETE FROM jobs WHERE id IN (SELECT value FROM json_each(?))", (ids,))

    base = next_ids(conn, "jobs", len(result.added)) if result.added else 0
    new_ids = iter(range(base, base + len(result.added)))
    job_ids = [current[j.name][0] if j.name in current else next(new_ids) for j in compiled.jobs]
    set_base = next_ids(conn, "dependency_sets", len(compiled.dependency_sets))

    file_ids = _merge_named(conn, "files", workflow_id, [(f.name, f.path) for f in compiled.files],
                            [None if f.producer is None else job_ids[f.producer] for f in compiled.files])
    data_ids = _merge_named(conn, "user_data", workflow_id,
                            [(d.name, json.dumps(d.data), int(d.is_ephemeral)) for d in compiled.user_data],
                            [None if d.producer is None else job_ids[d.producer] for d in compiled.user_data])

    statuses = [current[j.name][1] if j.name in current else JobStatus.BLOCKED.value for j in compiled.jobs]
    rerun_start = {i for i, j in enumerate(compiled.jobs) if j.name in changed or j.name not in current}
    parent = downstream(compiled, rerun_start) if initialized else {}
    rerun = rerun_start | set(parent)
    if initialized:
        final, counters, order = settle(compiled, statuses, rerun)
    else:
        final = [JobStatus.UNINITIALIZED.value] * len(compiled.jobs)
        counters = [[len(m), 0] for m in compiled.dependency_sets]
        order = []
    conn.executemany("INSERT INTO dependency_sets (id, workflow_id, size, remaining, failed) VALUES (?,?,?,?,?)",
                     ((set_base + i, workflow_id, len(m), *counters[i]) for i, m in enumerate(compiled.dependency_sets)))
    conn.executemany("INSERT INTO dependency_members (job_id, set_id) VALUES (?,?)",
                     ((job_ids[m], set_base + i) for i, members in enumerate(compiled.dependency_sets) for m in members))
    for i, job in enumerate(compiled.jobs):
        depset = None if job.depset is None else set_base + job.depset
        common = (job.rank, job.priority, job.scheduler, int(job.cancel_on_blocking_job_failure),
                  int(job.supports_termination), depset, job.max_attempts, job.failure_handler,
                  int(job.enforce_runtime), job.runtime_grace)
        if job.name not in current:
            conn.execute(
                "INSERT INTO jobs (id, workflow_id, name, command, invocation_script, env, status, rank, priority,"
                " scheduler, cancel_on_blocking_job_failure, supports_termination, depset_id, max_attempts,"
                " failure_handler, enforce_runtime, runtime_grace, num_cpus, num_gpus, num_nodes, memory_bytes,"
                " runtime_s, resource_requirements, spec_hash) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (job_ids[i], workflow_id, job.name, job.command, job.invocation_script,
                 json.dumps(job.env) if job.env else None, final[i], *common, job.num_cpus, job.num_gpus,
                 job.num_nodes, job.memory_bytes, job.runtime_s, job.resource_requirements,
                 job_hash(job, compiled.files, compiled.user_data)))
            continue
        conn.execute("UPDATE jobs SET rank = ?, priority = ?, scheduler = ?, cancel_on_blocking_job_failure = ?,"
                     " supports_termination = ?, depset_id = ?, max_attempts = ?, failure_handler = ?,"
                     " enforce_runtime = ?, runtime_grace = ?, status = ? WHERE id = ?",
                     (*common, final[i], job_ids[i]))
        if job.name in changed:
            conn.execute("UPDATE jobs SET command = ?, invocation_script = ?, env = ?, num_cpus = ?, num_gpus = ?,"
                         " num_nodes = ?, memory_bytes = ?, runtime_s = ?, resource_requirements = ?, spec_hash = ?"
                         " WHERE id = ?",
                         (job.command, job.invocation_script, json.dumps(job.env) if job.env else None, job.num_cpus,
                          job.num_gpus, job.num_nodes, job.memory_bytes, job.runtime_s, job.resource_requirements,
                          job_hash(job, compiled.files, compiled.user_data), job_ids[i]))
    add_groups(conn, workflow_id, compiled, job_ids)
    rerun_ids = [job_ids[i] for i in rerun if compiled.jobs[i].name in current]
    conn.execute("UPDATE jobs SET runner_id = NULL, pid = NULL, lease_token = NULL, return_code = NULL,"
                 " interrupted = 0, retries = 0, reason = NULL WHERE id IN (SELECT value FROM json_each(?))",
                 (json.dumps(rerun_ids),))
    conn.executemany("INSERT INTO job_io (job_id, kind, item_id) VALUES (?,?,?)",
                     ((job_ids[i], kind, ids_[item]) for i, j in enumerate(compiled.jobs)
                      for kind, items, ids_ in (("input_file", j.input_files, file_ids),
                                                ("output_file", j.output_files, file_ids),
                                                ("input_user_data", j.input_user_data, data_ids),
                                                ("output_user_data", j.output_user_data, data_ids))
                      for item in items))
    order = [i for i in order if i in rerun]
    result.changes = [Change(job_ids[i], compiled.jobs[i].name, statuses[i] if compiled.jobs[i].name in current
                             else "new", final[i],
                             f"changed: {changed[compiled.jobs[i].name]}" if compiled.jobs[i].name in changed
                             else "new job" if compiled.jobs[i].name not in current
                             else f"downstream of {compiled.jobs[parent[i]].name}") for i in order]
    run_id = workflow["run_id"] + (1 if result.changes else 0)
    result.run_id = run_id
    conn.execute("UPDATE workflows SET spec_json = ?, spec_source = ?, description = ?, run_id = ? WHERE id = ?",
                 (new_json, source, compiled.spec.description, run_id, workflow_id))
    refresh_status_counts(conn, workflow_id)  # jobs were inserted and deleted: recount (schema 6)
    actions.update_actions(conn, workflow_id, compiled, job_ids)  # the spec's actions, unchanged ones keep state
    add_event(conn, workflow_id, "updated", f"updated from {source}: {len(result.added)} added, "
                                            f"{len(result.removed)} removed, {len(changed)} changed; "
                                            f"{len(result.changes)} jobs to run again")


def _merge_named(conn, table: str, workflow_id: int, entries: list[tuple], producers: list[int | None]) -> list[int]:
    """Files or user data by name: keep the ids (and a file's stats, when its path is unchanged),
    update the rest, add the new, delete the gone. Returns the id of each entry."""
    existing = {name: (row_id, rest) for name, row_id, *rest in conn.execute(
        f"SELECT name, id, {'path' if table == 'files' else 'data, is_ephemeral'} FROM {table} WHERE workflow_id = ?",
        (workflow_id,))}
    wanted = {entry[0] for entry in entries}
    gone = [row_id for name, (row_id, _) in existing.items() if name not in wanted]
    if table == "user_data" and gone:  # data written while the workflow ran is kept (no producer now)
        kept = {row_id for (row_id,) in conn.execute(
            "SELECT id FROM user_data WHERE id IN (SELECT value FROM json_each(?)) AND updated_at IS NOT NULL",
            (json.dumps(gone),))}
        conn.execute("UPDATE user_data SET producer_job_id = NULL WHERE id IN (SELECT value FROM json_each(?))",
                     (json.dumps(sorted(kept)),))
        gone = [row_id for row_id in gone if row_id not in kept]
    conn.execute(f"DELETE FROM {table} WHERE id IN (SELECT value FROM json_each(?))", (json.dumps(gone),))
    fresh = [e for e in entries if e[0] not in existing]
    base = next_ids(conn, table, len(fresh)) if fresh else 0
    ids = []
    for entry, producer in zip(entries, producers):
        if entry[0] in existing:
            row_id, rest = existing[entry[0]]
            if table == "files":
                stats = "" if rest[0] == entry[1] else ", st_mtime = NULL, st_size = NULL, sha256 = NULL"
                conn.execute(f"UPDATE files SET path = ?, producer_job_id = ?{stats} WHERE id = ?",
                             (entry[1], producer, row_id))
            else:  # data a job produced, or anyone wrote while the workflow ran, is kept: only
                # data the spec gave (never written since) takes the spec's new value
                conn.execute("UPDATE user_data SET data = CASE WHEN producer_job_id IS NULL AND ? IS NULL"
                             " AND updated_at IS NULL THEN ? ELSE data END, is_ephemeral = ?, producer_job_id = ?"
                             " WHERE id = ?", (producer, entry[1], entry[2], producer, row_id))
        else:
            row_id = base
            base += 1
            columns = "(id, workflow_id, name, path, producer_job_id)" if table == "files" else \
                "(id, workflow_id, name, data, is_ephemeral, producer_job_id)"
            conn.execute(f"INSERT INTO {table} {columns} VALUES ({','.join('?' * (len(entry) + 3))})",
                         (row_id, workflow_id, *entry, producer))
        ids.append(row_id)
    return ids
