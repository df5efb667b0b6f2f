"""Restarts: run again only what needs it (`torc workflows reset-status`, `reinit`).

Every restart goes through the same four steps:

1. **Seeds**: the jobs that must run again, each with its reason (failed last time, an input file
   changed, an output is missing, the job's definition changed, named by ``--job``). Found by
   indexed reads; input files are read and hashed outside the lock.
2. **Closure**: everything downstream of the seeds, walked through ``dependency_members`` (job ->
   the sets it belongs to: the primary key) and ``jobs.depset_id`` (set -> its waiters:
   ``jobs_by_set``), in short read transactions. Only the structure is walked, and only
   ``update`` changes it.
3. **Plan** (pure, ``plan_changes``): the closure in topological order, and each job's next status
   simulated from the dependency counters as read. This is what ``--dry-run`` prints.
4. **Apply**: chunks of ``CHUNK`` jobs in that order, one transaction each. A chunk re-checks each
   job (same dependency set, not pending or running, no attempt started since the plan was made)
   and computes its status from the counters as they are *then*, so every committed chunk leaves
   the queue consistent: counters match their members' statuses, nothing ready waits on an
   unfinished job, nothing blocked waits on nothing. Upstream jobs come first, so a job made
   ready by an early chunk may run while later chunks are applied. A chunk that finds a job
   started meanwhile rolls back and stops with ``RestartConflict``; running the command again
   finishes the work.

A reset keeps attempt numbers growing (never reused), zeroes the interrupted and retry counters,
keeps every result, and starts a new run (``workflows.run_id`` + 1), which new results carry.
"""

from __future__ import annotations

import difflib
import heapq
import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torc_slurm.errors import QueueError, SpecError
from torc_slurm.states import FINISHED, HELD, UNFINISHED, JobStatus, sql_list
from torc_slurm.store.db import Database
from torc_slurm.store.events import add_event
from torc_slurm.store.input_stats import (
    FileStat,
    compare,
    record_input_stats,
    stat_inputs,
)

__all__ = ["FileStat", "Restart", "plan_reinit", "plan_reset", "record_input_stats", "reinit", "stat_inputs"]

CHUNK = 200              # jobs per apply transaction (~30-110 ms each at 100k jobs: benchmarks/restarts.py)
READ_BATCH = 5_000       # ids per read transaction (tens of ms each)
_BAD = frozenset(FINISHED) - {JobStatus.COMPLETED.value}  # what dependency_sets.failed counts
RERUNNABLE = tuple(sorted(_BAD))  # failed, canceled, terminated (timed-out jobs end failed or terminated)


class RestartConflict(QueueError):
    """A job the restart was changing started (or was restructured) while it was being applied."""


class UnknownJob(QueueError):
    """``--job`` named no job of the workflow (exit 2, a usage mistake)."""

    exit_code = 2


# -- the plan (pure) -----------------------------------------------------------------------------
@dataclass(frozen=True)
class JobRow:
    id: int
    name: str
    status: str
    attempt: int
    depset: int | None
    cancel: bool  # cancel_on_blocking_job_failure


@dataclass(frozen=True)
class Change:
    """One job a restart sets to run again: one line of ``--dry-run`` and of the real thing."""

    job_id: int
    name: str
    old: str
    new: str
    reason: str

    def line(self, width: int = 0) -> str:
        return f"{self.name:<{width}}  {self.old} -> {self.new}  {self.reason}"


@dataclass
class Graph:
    """The closure as read: its jobs, the sets each belongs to, each set's waiters in the closure,
    the counters (remaining, failed) of the sets involved, and who led to whom."""

    jobs: dict[int, JobRow] = field(default_factory=dict)
    member_sets: dict[int, list[int]] = field(default_factory=dict)
    waiters: dict[int, list[int]] = field(default_factory=dict)
    counters: dict[int, tuple[int, int]] = field(default_factory=dict)
    parent: dict[int, int] = field(default_factory=dict)


def next_status(depset: int | None, counters: dict[int, tuple[int, int]] | tuple[int, int] | None,
                cancel: bool) -> str:
    """The status a reset job gets from its set's counters: the rule the queue applies."""
    if depset is None:
        return JobStatus.READY.value
    remaining, failed = counters[depset] if isinstance(counters, dict) else counters  # type: ignore[misc]
    if remaining > 0:
        return JobStatus.BLOCKED.value
    return JobStatus.CANCELED.value if failed and cancel else JobStatus.READY.value


def deltas(old: str, new: str) -> tuple[int, int]:
    """How the counters of the sets a job belongs to move when it goes from ``old`` to ``new``."""
    return (int(new in UNFINISHED) - int(old in UNFINISHED), int(new in _BAD) - int(old in _BAD))


def plan_changes(graph: Graph, seeds: dict[int, str]) -> list[Change]:
    """The closure in topological order (upstream first, then by id), each with its next status
    simulated on a copy of the counters, and its reason (its own, or the job that led to it)."""
    in_closure = graph.jobs
    pending_members: dict[int, int] = {}
    for job_id in in_closure:
        for set_id in graph.member_sets.get(job_id, ()):
            pending_members[set_id] = pending_members.get(set_id, 0) + 1
    heap = [job_id for job_id, job in in_closure.items() if pending_members.get(job.depset, 0) == 0]  # type: ignore[arg-type]
    heapq.heapify(heap)
    counters = dict(graph.counters)
    changes = []
    while heap:
        job_id = heapq.heappop(heap)
        job = in_closure[job_id]
        new = next_status(job.depset, counters, job.cancel)
        d_remaining, d_failed = deltas(job.status, new)
        for set_id in graph.member_sets.get(job_id, ()):
            if d_remaining or d_failed:
                remaining, failed = counters[set_id]
                counters[set_id] = (remaining + d_remaining, failed + d_failed)
            pending_members[set_id] -= 1
            if pending_members[set_id] == 0:
                for waiter in graph.waiters.get(set_id, ()):
                    heapq.heappush(heap, waiter)
        reason = seeds.get(job_id) or f"downstream of {in_closure[graph.parent[job_id]].name}"
        changes.append(Change(job_id, job.name, job.status, new, reason))
    if len(changes) != len(in_closure):  # a cycle: the compiler refuses them, so the DB is damaged
        raise QueueError("the dependency sets of this workflow form a cycle; the queue file is damaged")
    return changes


# -- reading the closure -------------------------------------------------------------------------
_JOB_COLUMNS = "id, name, status, attempt, depset_id, cancel_on_blocking_job_failure"
_IDS = "(SELECT value FROM json_each(?))"


def _job_row(row: sqlite3.Row | tuple) -> JobRow:
    return JobRow(row[0], row[1], row[2], row[3], row[4], bool(row[5]))


def read_closure(db: Database, seeds: Iterable[JobRow]) -> Graph:
    """Walk downstream from ``seeds`` (disabled jobs are never included), in read transactions of
    at most ``READ_BATCH`` jobs each."""
    graph = Graph()
    frontier = []
    for job in seeds:
        if job.id not in graph.jobs and job.status != JobStatus.DISABLED:
            graph.jobs[job.id] = job
            frontier.append(job.id)
    while frontier:
        batch, frontier = frontier[:READ_BATCH], frontier[READ_BATCH:]
        with db.transaction(write=False) as conn:
            new_sets: list[int] = []
            for job_id, set_id in conn.execute(
                    f"SELECT job_id, set_id FROM dependency_members WHERE job_id IN {_IDS}", (json.dumps(batch),)):
                if set_id not in graph.waiters:
                    graph.waiters[set_id] = []
                    new_sets.append(set_id)
                graph.member_sets.setdefault(job_id, []).append(set_id)
            if not new_sets:
                continue
            by_set: dict[int, int] = {}
            for job_id in batch:
                for set_id in graph.member_sets.get(job_id, ()):
                    by_set.setdefault(set_id, job_id)
            for row in conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE depset_id IN {_IDS}"
                                    " AND status != 'disabled'", (json.dumps(new_sets),)):
                job = _job_row(row)
                graph.waiters[job.depset].append(job.id)  # type: ignore[index]
                if job.id not in graph.jobs:
                    graph.jobs[job.id] = job
                    graph.parent[job.id] = by_set[job.depset]  # type: ignore[index]
                    frontier.append(job.id)
    needed = {s for sets in graph.member_sets.values() for s in sets}
    needed.update(j.depset for j in graph.jobs.values() if j.depset is not None)
    wanted = sorted(needed)
    for start in range(0, len(wanted), READ_BATCH):
        with db.transaction(write=False) as conn:
            for set_id, remaining, failed in conn.execute(
                    f"SELECT id, remaining, failed FROM dependency_sets WHERE id IN {_IDS}",
                    (json.dumps(wanted[start:start + READ_BATCH]),)):
                graph.counters[set_id] = (remaining, failed)
    return graph


# -- a restart, planned --------------------------------------------------------------------------
@dataclass
class Restart:
    """What a reset or reinit will do. ``changes`` is what ``--dry-run`` prints; ``apply`` does it."""

    workflow_id: int
    kind: str                                   # 'reset' | 'reinit'
    changes: list[Change]
    graph: Graph
    busy: list[str] = field(default_factory=list)       # closure jobs pending or running: refused
    file_stats: list[tuple[int, FileStat]] = field(default_factory=list)  # recorded by apply
    not_run: int = 0                            # unfinished jobs outside the closure (they run anyway)
    initialize: bool = False                    # reinit of a never-initialized workflow: initialize it
    run_id: int = 0                             # the workflow's run now; apply starts run_id + 1

    def check_not_busy(self) -> None:
        if self.busy:
            shown = ", ".join(self.busy[:10]) + (f" and {len(self.busy) - 10} more" if len(self.busy) > 10 else "")
            raise QueueError(f"workflow {self.workflow_id}: cannot {self.kind} while jobs it would change are "
                             f"pending or running: {shown}. Wait for them to finish, or cancel them")

    def apply(self, db: Database) -> int:
        """Apply the plan in chunks; returns the new run id (unchanged when there was nothing to do)."""
        self.check_not_busy()
        if not self.changes:
            if self.file_stats:
                with db.transaction() as conn:
                    record_input_stats(conn, self.file_stats)
            return self.run_id
        run_id = self.run_id
        chunks = [self.changes[i:i + CHUNK] for i in range(0, len(self.changes), CHUNK)]
        for number, chunk in enumerate(chunks):
            with db.transaction() as conn:
                if number == 0:
                    run_id = _start_run(conn, self)
                _apply_chunk(conn, self.graph, chunk, done=number * CHUNK, total=len(self.changes))
                if number == len(chunks) - 1:
                    record_input_stats(conn, self.file_stats)
            db.notify()
        return run_id


def _start_run(conn: sqlite3.Connection, restart: Restart) -> int:
    conn.execute("UPDATE workflows SET run_id = run_id + 1, status = 'initialized' WHERE id = ?",
                 (restart.workflow_id,))
    (run_id,) = conn.execute("SELECT run_id FROM workflows WHERE id = ?", (restart.workflow_id,)).fetchone()
    names = ", ".join(c.name for c in restart.changes[:5]) + (" …" if len(restart.changes) > 5 else "")
    add_event(conn, restart.workflow_id, restart.kind, f"run {run_id}: {len(restart.changes)} jobs set to run "
                                                       f"again ({names})")
    return run_id


def _apply_chunk(conn: sqlite3.Connection, graph: Graph, chunk: Sequence[Change], *, done: int, total: int) -> None:
    from torc_slurm.store.queue import (
        unblock,  # the queue's own release rule, for the rare unfinished -> canceled
    )

    held = sql_list(HELD)
    for change in chunk:
        planned = graph.jobs[change.job_id]
        row = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (change.job_id,)).fetchone()
        if row is None or row[4] != planned.depset or row[3] != planned.attempt or row[2] in HELD:
            what = "was removed" if row is None else "was restructured" if row[4] != planned.depset else "started"
            raise RestartConflict(f"job {planned.name} {what} while the restart was being applied; {done} of "
                                  f"{total} jobs were reset (the queue is consistent). Run the command again")
        old = row[2]
        counters = None
        if planned.depset is not None:
            counters = conn.execute("SELECT remaining, failed FROM dependency_sets WHERE id = ?",
                                    (planned.depset,)).fetchone()
        new = next_status(planned.depset, tuple(counters) if counters else None, planned.cancel)
        d_remaining, d_failed = deltas(old, new)
        conn.execute("UPDATE jobs SET status = ?, runner_id = NULL, pid = NULL, lease_token = NULL,"
                     " return_code = NULL, interrupted = 0, retries = 0, reason = ? WHERE id = ?",
                     (new, "upstream failed" if new == JobStatus.CANCELED else None, change.job_id))
        if d_remaining < 0:  # unfinished -> canceled: count it out and release, as the queue does
            unblock(conn, [(change.job_id, True)])
            continue
        if not (d_remaining or d_failed):
            continue
        sets = [s for (s,) in conn.execute("SELECT set_id FROM dependency_members WHERE job_id = ?",
                                           (change.job_id,))]
        if not sets:
            continue
        marks = json.dumps(sets)
        conn.execute(f"UPDATE dependency_sets SET remaining = remaining + ?, failed = failed + ? WHERE id IN {_IDS}",
                     (d_remaining, d_failed, marks))
        if d_remaining > 0:  # its waiters must wait again
            running = conn.execute(f"SELECT name FROM jobs WHERE depset_id IN {_IDS} AND status IN {held} LIMIT 1",
                                   (marks,)).fetchone()
            if running:
                raise RestartConflict(f"job {running[0]}, downstream of {change.name}, started while the restart "
                                      f"was being applied; {done} of {total} jobs were reset (the queue is "
                                      "consistent). Run the command again")
            conn.execute(f"UPDATE jobs SET status = 'blocked' WHERE depset_id IN {_IDS} AND status = 'ready'", (marks,))


# -- seeds ---------------------------------------------------------------------------------------
def _workflow(db: Database, workflow_id: int) -> sqlite3.Row:
    rows = db.read("SELECT id, status, run_id, working_dir FROM workflows WHERE id = ?", (workflow_id,))
    if not rows:
        raise QueueError(f"no workflow {workflow_id} in {db.path}")
    return rows[0]


def _finish(db: Database, workflow: sqlite3.Row, kind: str, seeds: dict[int, str], rows: Iterable[JobRow],
            **extra: object) -> Restart:
    rows = _with_groups(db, seeds, list(rows))
    graph = read_closure(db, rows)
    changes = plan_changes(graph, seeds)
    busy = [c.name for c in changes if c.old in HELD]
    return Restart(workflow["id"], kind, changes, graph, busy=busy, run_id=workflow["run_id"], **extra)  # type: ignore[arg-type]


def _with_groups(db: Database, seeds: dict[int, str], rows: list[JobRow]) -> list[JobRow]:
    """A group runs again whole: add the other members of every seed's group to the seeds."""
    ids = [job.id for job in rows]
    if not ids:
        return rows
    have = set(ids)
    siblings = db.read(f"SELECT {_JOB_COLUMNS}, group_id FROM jobs WHERE group_id IN (SELECT group_id FROM jobs"
                       f" WHERE id IN {_IDS} AND group_id IS NOT NULL) ORDER BY id", (json.dumps(ids),))
    by_group: dict[int, list[str]] = {}
    for row in siblings:
        if row[0] in have:
            by_group.setdefault(row["group_id"], []).append(row[1])
    for row in siblings:
        if row[0] not in have and row[2] != JobStatus.DISABLED:
            rows.append(_job_row(row))
            have.add(row[0])
            seeds[row[0]] = f"its group runs again whole (with {', '.join(by_group.get(row['group_id'], [])[:3])})"
    return rows


def plan_reset(db: Database, workflow_id: int, *, failed_only: bool = False,
               jobs: Sequence[str] = ()) -> Restart:
    """``reset-status``: the failed, canceled and terminated jobs (``failed_only``), the jobs
    ``jobs`` names (a name, else a regex searched in the names), or with neither, every job; and
    everything downstream of them."""
    workflow = _workflow(db, workflow_id)
    if workflow["status"] == "uninitialized":
        raise QueueError(f"workflow {workflow_id} was never initialized: nothing to reset "
                         f"(`torc workflows init {workflow_id}` or `torc run {workflow_id}`)")
    seeds: dict[int, str] = {}
    rows: dict[int, JobRow] = {}
    if failed_only:
        for row in db.read(f"SELECT {_JOB_COLUMNS}, reason FROM jobs WHERE workflow_id = ? AND status IN"
                           f" {sql_list(RERUNNABLE)}", (workflow_id,)):
            job = rows[row[0]] = _job_row(row)
            seeds[job.id] = f"{job.status} last time" + (f" ({row['reason']})" if row["reason"] else "")
    if jobs:
        for job, why in _named(db, workflow_id, jobs):
            rows.setdefault(job.id, job)
            seeds.setdefault(job.id, why)
    if not failed_only and not jobs:
        for row in db.read(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE workflow_id = ? AND status != 'disabled'",
                           (workflow_id,)):
            job = rows[row[0]] = _job_row(row)
            seeds[job.id] = "reset all"
    return _finish(db, workflow, "reset", seeds, rows.values())


def _named(db: Database, workflow_id: int, patterns: Sequence[str]) -> list[tuple[JobRow, str]]:
    """``--job`` arguments: an exact name, else a regex searched in the names (at least one match)."""
    found: list[tuple[JobRow, str]] = []
    exact = {row[1]: _job_row(row) for row in db.read(
        f"SELECT {_JOB_COLUMNS} FROM jobs WHERE workflow_id = ? AND name IN {_IDS}", (workflow_id, json.dumps(list(patterns))))}
    rest = [p for p in patterns if p not in exact]
    found += [(exact[p], "named by --job") for p in patterns if p in exact]
    if not rest:
        return found
    from torc_slurm.spec.regexes import compile_regex

    every = [_job_row(row) for row in db.read(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE workflow_id = ? ORDER BY id",
                                              (workflow_id,))]
    for pattern in rest:
        near = difflib.get_close_matches(pattern, [j.name for j in every], n=5, cutoff=0.5)
        hint = f"; nearest names: {', '.join(near)}" if near else ""
        try:
            search = compile_regex(pattern).search
        except ValueError:
            raise UnknownJob(f"workflow {workflow_id} has no job named {pattern!r}, and it is not a valid "
                             f"regular expression{hint}") from None
        matched = [j for j in every if search(j.name.encode("utf-8"))]
        if not matched:
            raise UnknownJob(f"workflow {workflow_id} has no job named {pattern!r}, and no job name matches it as "
                             f"a regular expression{hint}")
        found += [(j, f"matches --job {pattern}") for j in matched]
    return found


def plan_reinit(db: Database, workflow_id: int, *, force: bool = False) -> Restart:
    """``reinit``: the jobs that did not complete (failed, canceled, terminated); completed jobs
    whose input files changed, whose output files are missing, or whose definition changed since
    they ran (``spec_hash`` != ``ran_hash``); and everything downstream of them."""
    workflow = _workflow(db, workflow_id)
    folder = Path(workflow["working_dir"])
    seeds: dict[int, list[str]] = {}
    stats: list[tuple[int, FileStat]] = []
    changed_inputs: dict[int, str] = {}
    missing_outputs: dict[int, list[str]] = {}
    missing_inputs: list[str] = []
    for row in db.read("SELECT id, name, path, producer_job_id, st_mtime, st_size, sha256 FROM files"
                       " WHERE workflow_id = ?", (workflow_id,)):
        path = folder / row["path"]
        if row["producer_job_id"] is not None:
            if not path.exists():
                missing_outputs.setdefault(row["producer_job_id"], []).append(row["path"])
            continue
        why, now = compare((row["st_mtime"], row["st_size"], row["sha256"]), path)
        if now is None:
            missing_inputs.append(row["path"])
            continue
        if why:
            changed_inputs[row["id"]] = f"input {row['path']} changed ({why})"
        if why or (row["st_mtime"], row["st_size"]) != (now.mtime, now.size):
            stats.append((row["id"], now))
    if missing_inputs and not force:
        from torc_slurm.store.workflows import missing_inputs as needed

        missing = needed(db, workflow_id)
        if missing:
            lines = "; ".join(f"{p} (needed by {', '.join(j[:5])})" for p, j in missing.items())
            raise SpecError(f"input files that no job produces do not exist: {lines}. "
                            "Create them, or pass --force to skip this check.")
    if workflow["status"] == "uninitialized":
        return Restart(workflow_id, "reinit", [], Graph(), run_id=workflow["run_id"], initialize=True)
    rows: dict[int, JobRow] = {}
    # Short reads, each consistent on its own: the apply re-checks every job it changes.
    for row in db.read(f"SELECT {_JOB_COLUMNS}, reason FROM jobs WHERE workflow_id = ? AND status IN"
                       f" {sql_list(RERUNNABLE)}", (workflow_id,)):
        job = rows[row[0]] = _job_row(row)
        seeds[job.id] = [f"{job.status} last time" + (f" ({row['reason']})" if row["reason"] else "")]
    for row in db.read(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE workflow_id = ? AND status = 'completed'"
                       " AND spec_hash IS NOT NULL AND ran_hash IS NOT NULL AND spec_hash != ran_hash", (workflow_id,)):
        job = rows[row[0]] = _job_row(row)
        seeds.setdefault(job.id, []).append("its definition changed since it ran")
    after = -1
    while changed_inputs:  # consumers of changed inputs, a page of job ids at a time (job_io's key order)
        page = db.read(f"SELECT job_id, item_id FROM job_io WHERE job_id > ? AND kind = 'input_file' AND item_id IN"
                       f" {_IDS} ORDER BY job_id LIMIT ?", (after, json.dumps(list(changed_inputs)), READ_BATCH))
        for job_id, item in page:
            seeds.setdefault(job_id, []).append(changed_inputs[item])
        if len(page) < READ_BATCH:
            break
        after = page[-1][0]
    lookup = [j for j in {*seeds, *missing_outputs} if j not in rows]
    for start in range(0, len(lookup), READ_BATCH):
        for row in db.read(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id IN {_IDS}",
                           (json.dumps(lookup[start:start + READ_BATCH]),)):
            rows[row[0]] = _job_row(row)
    for job_id, paths in missing_outputs.items():  # a job that did not complete reruns anyway
        if job_id in rows and rows[job_id].status == JobStatus.COMPLETED:
            seeds.setdefault(job_id, []).append(f"output {', '.join(paths)} missing")
    not_run_total = db.read(f"SELECT COUNT(*) FROM jobs WHERE workflow_id = ? AND status IN {sql_list(UNFINISHED)}",
                            (workflow_id,))[0][0]
    # Only finished jobs are set to run again; an unfinished one runs anyway (and is listed when a
    # reset reaches it from upstream).
    finished = {j: r for j, r in rows.items() if r.status in FINISHED and j in seeds}
    restart = _finish(db, workflow, "reinit", {j: "; ".join(seeds[j]) for j in finished}, finished.values(),
                      file_stats=stats)
    restart.not_run = not_run_total - sum(1 for c in restart.changes if c.old in UNFINISHED)
    return restart


def reinit(db: Database, workflow_id: int, *, force: bool = False) -> tuple[Restart, int]:
    """Plan and apply a reinit; an uninitialized workflow is initialized. Returns (plan, run id)."""
    restart = plan_reinit(db, workflow_id, force=force)
    if restart.initialize:
        from torc_slurm.store.workflows import initialize_workflow

        initialize_workflow(db, workflow_id, force=force)
        return restart, _workflow(db, workflow_id)["run_id"]
    return restart, restart.apply(db)
