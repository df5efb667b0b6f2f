"""Where a workflow stands, as plain data: what `torc workflows status` prints, `-f json` emits and
`--watch` refreshes.

Everything the report needs is read in ONE short locked read (``db.transaction(write=False)``),
with indexed lookups only, so it stays in milliseconds on a million jobs:

- counts per status from ``status_counts`` (schema 6, kept by a trigger): pending (claimed, not
  started) and running are separate;
- the live allocations and runners (a handful of rows), their time left from the runners' end time;
- the last few failed attempts (``results_by_status``, newest first);
- the exec times of the last completed attempts, for the ETA;
- the jobs that cannot run, by reason, found through the distinct resource shapes of the workflow
  (``jobs_by_shape``, one seek per shape) rather than job by job.

Arithmetic (elapsed, ETA, fits) happens after the lock is released. ``StatusReport`` is the
pydantic model of the returned dict; tests validate the JSON output against it.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from torc_slurm.errors import QueueError
from torc_slurm.states import ALL as JOB_STATUSES
from torc_slurm.states import DONE, FAILED, UNFINISHED, sql_list
from torc_slurm.store.db import Database
from torc_slurm.store.views import read_status_counts

LAST_FAILURES = 5
EXAMPLES = 3
ETA_SAMPLE = 200          # completed attempts whose exec times the ETA averages
MAX_SHAPES = 2000         # distinct resource shapes examined (far above any real workflow)
COUNT_CAP = 2000          # jobs canceled by a failed upstream counted exactly up to this; beyond it "at least"
EXAMINE = 1000            # rows a "cannot run" count or the failure reasons read at most per index range
RUN_STARTS = ("initialized", "reset", "reinit", "updated")   # events that start a new run
ALLOCATION_FINAL = ("gone", "canceled", "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL",
                    "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED", "REVOKED")
WAITING = ("uninitialized", "blocked", "ready")   # jobs that have not been claimed


# -- the model of the output ---------------------------------------------------------------------
MODELS = ("Allocation", "Runner", "Failure", "Blocked", "StatusReport")


def __getattr__(name: str) -> Any:
    """The pydantic models of the report (``StatusReport`` and its parts), built on first use:
    `torc workflows status` itself does not pay for them; tests validate its JSON with them."""
    if name not in MODELS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    models = _build_models()
    globals().update(models)
    return models[name]


def _build_models() -> dict[str, Any]:
    from pydantic import BaseModel, ConfigDict

    class _Model(BaseModel):
        model_config = ConfigDict(extra="forbid")


    class Allocation(_Model):
        slurm_job_id: str
        scheduler: str
        num_nodes: int
        state: str
        submitted_at: float
        runners: int
        time_left_s: float | None


    class Runner(_Model):
        id: int
        hostname: str
        slurm_job_id: str | None
        status: str
        cpus: int | None
        gpus: int | None
        memory_bytes: int | None
        running: int
        started_at: float
        heartbeat_age_s: float
        time_left_s: float | None


    class Failure(_Model):
        job_id: int
        job: str
        attempt: int
        status: str
        reason: str | None
        return_code: int | None
        signal: int | None
        ended_at: float | None
        message: str | None


    class Blocked(_Model):
        count: int
        at_least: bool
        examples: list[str]


    class StatusReport(_Model):
        workflow_id: int
        name: str
        status: str
        run_id: int
        now: float
        counts: dict[str, int]
        total: int
        done: int
        failed: int
        pending: int
        running: int
        started_at: float | None
        ended_at: float | None
        elapsed_s: float | None
        mean_exec_s: float | None
        parallelism: int
        eta_s: float | None
        finished: bool
        allocations: list[Allocation]
        runners: list[Runner]
        last_failures: list[Failure]
        failure_reasons: dict[str, int]
        failure_reasons_sampled: bool
        cannot_run: dict[str, Blocked]

    return {"Allocation": Allocation, "Runner": Runner, "Failure": Failure, "Blocked": Blocked,
            "StatusReport": StatusReport}


# -- reading ---------------------------------------------------------------------------------------
def no_workflow(conn: sqlite3.Connection, workflow_id: int, path: object) -> QueueError:
    """The error for an unknown workflow id, naming the nearest ids that exist."""
    rows = conn.execute("SELECT id, name FROM workflows ORDER BY ABS(id - ?), id LIMIT 5", (workflow_id,)).fetchall()
    if not rows:
        return QueueError(f"no workflow {workflow_id} in {path}: the queue holds no workflows")
    near = ", ".join(f"{r['id']} ({r['name']})" for r in sorted(rows, key=lambda r: r["id"]))
    return QueueError(f"no workflow {workflow_id} in {path}; nearest: {near} (see `torc workflows list`)")


def workflow_status(db: Database, workflow_id: int, *, now: float | None = None,
                    failures: int = LAST_FAILURES, examples: int = EXAMPLES) -> dict[str, Any]:
    """The status report of ``workflow_id`` (a dict shaped like ``StatusReport``)."""
    import torc_slurm.spec.units  # noqa: F401  (imported before the lock is taken, not while holding it)

    with db.transaction(write=False) as conn:
        raw = read_raw(conn, workflow_id, failures=failures, examples=examples, path=db.path)
    return build_report(raw, time.time() if now is None else now)


@dataclass
class Raw:
    """What one locked read returns; the rest is arithmetic."""

    workflow: dict[str, Any]
    counts: dict[str, int]
    allocations: list[dict[str, Any]]
    runners: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    failure_reasons: dict[str, int]
    failure_reasons_sampled: bool
    exec_times: list[float]
    run_start: float | None
    last_end: float | None
    cannot_run: dict[str, dict[str, Any]]


def read_raw(conn: sqlite3.Connection, workflow_id: int, *, failures: int = LAST_FAILURES,
             examples: int = EXAMPLES, path: object = "the queue") -> Raw:
    """Every query of the report, inside the caller's (read) transaction."""
    row = conn.execute("SELECT id, name, status, run_id, created_at,"
                       " json_extract(spec_json, '$.slurm_schedulers') AS schedulers"
                       " FROM workflows WHERE id = ?", (workflow_id,)).fetchone()
    if row is None:
        raise no_workflow(conn, workflow_id, path)
    workflow = dict(row)
    counts = read_status_counts(conn, workflow_id)
    allocations = [dict(r) for r in conn.execute(
        f"SELECT slurm_job_id, scheduler, num_nodes, state, submitted_at FROM allocations"
        f" WHERE workflow_id = ? AND state NOT IN {sql_list(ALLOCATION_FINAL)} ORDER BY id", (workflow_id,))]
    runners = [dict(r) for r in conn.execute(
        "SELECT r.id, r.hostname, r.slurm_job_id, r.status, r.resources, r.started_at, r.heartbeat_at,"
        " (SELECT COUNT(*) FROM jobs j WHERE j.runner_id = r.id AND j.status IN ('pending', 'running')) AS held"
        " FROM runners r WHERE r.workflow_id = ? AND r.status IN ('active', 'fencing') ORDER BY r.id",
        (workflow_id,))]
    reasons_sampled = False
    failed = []
    for status in ("failed", "terminated", "canceled"):  # each through results_by_status, newest first
        failed += conn.execute(
            "SELECT r.id, r.job_id, j.name AS job, r.attempt, r.status, r.reason, r.return_code, r.signal,"
            " r.ended_at, r.message FROM results r JOIN jobs j ON j.id = r.job_id"
            " WHERE r.workflow_id = ? AND r.status = ? ORDER BY r.id DESC LIMIT ?",
            (workflow_id, status, failures)).fetchall()
    failed = [dict(r) for r in sorted(failed, key=lambda r: r["id"], reverse=True)[:failures]]
    for f in failed:
        f.pop("id")
    reasons: dict[str, int] = {}
    for status in FAILED:   # why they ended: at most EXAMINE jobs of each status are read
        if counts[status] > EXAMINE:
            reasons_sampled = True
        for why, n in conn.execute(
                "SELECT CASE WHEN reason LIKE 'upstream%' THEN 'upstream failed' ELSE COALESCE(reason, status) END,"
                " COUNT(*) FROM (SELECT reason, status FROM jobs WHERE workflow_id = ? AND status = ? LIMIT ?)"
                " GROUP BY 1", (workflow_id, status, EXAMINE)) if counts[status] else ():
            reasons[why] = reasons.get(why, 0) + n
    reasons = dict(sorted(reasons.items(), key=lambda item: (-item[1], item[0])))
    exec_times = [r[0] for r in conn.execute(
        "SELECT exec_s FROM results WHERE workflow_id = ? AND status = 'completed' ORDER BY id DESC LIMIT ?",
        (workflow_id, ETA_SAMPLE)) if r[0] is not None]
    starts = [r[0] for kind in RUN_STARTS for r in conn.execute(
        "SELECT at FROM events WHERE workflow_id = ? AND kind = ? ORDER BY id DESC LIMIT 1", (workflow_id, kind))]
    run_start = max(starts) if starts else None
    if run_start is not None:  # the first runner that joined this run: about when its first attempt started
        first = conn.execute("SELECT MIN(started_at) FROM runners WHERE workflow_id = ? AND started_at >= ?",
                             (workflow_id, run_start)).fetchone()[0]
        run_start = first if first is not None else run_start
    last = None
    if not any(counts[s] for s in UNFINISHED):   # finished: when the last attempt ended (newest per outcome)
        ends = [tuple(r) for status in ("completed", "failed", "terminated", "canceled", "lost") for r in conn.execute(
            "SELECT id, ended_at FROM results WHERE workflow_id = ? AND status = ? ORDER BY id DESC LIMIT 1",
            (workflow_id, status))]
        last = (max(ends)[1],) if ends else None
    cannot_run = _cannot_run(conn, workflow_id, workflow.pop("schedulers"), runners, counts, examples)
    return Raw(workflow, counts, allocations, runners, failed, reasons, reasons_sampled, exec_times, run_start,
               last[0] if last else None, cannot_run)


# -- jobs that cannot run ---------------------------------------------------------------------------
_SHAPE = ("num_nodes", "num_gpus", "memory_bytes", "runtime_s", "num_cpus")


@dataclass(frozen=True)
class Shape:
    scheduler: str | None
    num_nodes: int
    num_gpus: int
    memory_bytes: int
    runtime_s: int
    num_cpus: int


def shapes(conn: sqlite3.Connection, workflow_id: int, limit: int = MAX_SHAPES) -> list[Shape]:
    """The distinct resource shapes of the workflow's jobs: a loose scan of ``jobs_by_shape``, one
    index seek per distinct value at each level (scheduler, nodes, GPUs, memory, runtime, CPUs),
    never a pass over the jobs. (A row-value ``>`` seek would step over equal entries one by one.)"""
    found: list[Shape] = []

    def walk(level: int, prefix: list[Any]) -> None:
        column = _SHAPE[level]
        where = "workflow_id = ? AND scheduler IS ?" + "".join(f" AND {c} = ?" for c in _SHAPE[:level])
        value = None
        while len(found) < limit:
            row = conn.execute(f"SELECT {column} FROM jobs WHERE {where}"
                               + (f" AND {column} > ?" if value is not None else "")
                               + f" ORDER BY {column} LIMIT 1",
                               (workflow_id, *prefix, *(() if value is None else (value,)))).fetchone()
            if row is None:
                return
            value = row[0]
            if level + 1 == len(_SHAPE):
                found.append(Shape(*prefix, value))
            else:
                walk(level + 1, [*prefix, value])

    row = conn.execute("SELECT scheduler FROM jobs WHERE workflow_id = ? ORDER BY scheduler LIMIT 1",
                       (workflow_id,)).fetchone()
    while row is not None and len(found) < limit:
        scheduler = row[0]
        walk(0, [scheduler])
        row = conn.execute(
            "SELECT scheduler FROM jobs WHERE workflow_id = ? AND scheduler > ? ORDER BY scheduler LIMIT 1"
            if scheduler is not None else
            "SELECT scheduler FROM jobs WHERE workflow_id = ? AND scheduler IS NOT NULL ORDER BY scheduler LIMIT 1",
            (workflow_id, scheduler) if scheduler is not None else (workflow_id,)).fetchone()
    return found


_GRES_GPUS = re.compile(r"(?:^|,)gpu(?::[A-Za-z0-9_.\-]+)?:(\d+)(?:,|$)")


@dataclass(frozen=True)
class Offer:
    """What one scheduler entry or one live runner can give a single job (None: not limited)."""

    name: str
    nodes: int | None
    gpus: int | None
    memory_bytes: int | None
    runtime_s: float | None
    cpus: int | None

    def fits(self, shape: Shape) -> bool:
        return all(limit is None or need <= limit for need, limit in (
            (shape.num_nodes, self.nodes), (shape.num_gpus, self.gpus), (shape.memory_bytes, self.memory_bytes),
            (shape.runtime_s, self.runtime_s), (shape.num_cpus, self.cpus)))


def scheduler_offers(schedulers_json: str | None) -> list[Offer]:
    """What each ``slurm_schedulers`` entry gives one job: its nodes, walltime, ``mem`` (per node; no
    limit when unset) and the GPUs of its ``gres`` (none without a gpu gres). CPUs per node come
    from the site's partitions, which the queue does not know: not limited here."""
    from torc_slurm.spec.units import parse_memory, parse_walltime

    offers = []
    for entry in json.loads(schedulers_json or "[]"):
        gres = _GRES_GPUS.search(entry.get("gres") or "")
        try:
            memory = parse_memory(entry["mem"]) if entry.get("mem") else None
        except ValueError:  # a Slurm size like '64G' or '500M' parse_memory may not take: no limit
            memory = None
        offers.append(Offer(entry["name"], entry.get("nodes", 1), int(gres.group(1)) if gres else 0, memory,
                            parse_walltime(entry.get("walltime", "01:00:00")), None))
    return offers


def runner_offers(runners: list[dict[str, Any]], now: float) -> list[Offer]:
    """What each live runner gives one job: its CPUs, GPUs, memory and the time to its end."""
    offers = []
    for r in runners:
        res = json.loads(r["resources"] or "{}")
        gpus = res.get("gpus")
        end = res.get("end_time")
        offers.append(Offer(f"runner {r['id']}", 1, len(gpus) if isinstance(gpus, list) else gpus,
                            res.get("memory_bytes"), None if end is None else end - now, res.get("cpus")))
    return offers


def _cannot_run(conn: sqlite3.Connection, workflow_id: int, schedulers_json: str | None,
                runners: list[dict[str, Any]], counts: dict[str, int], examples: int) -> dict[str, dict[str, Any]]:
    """reason -> {count, at_least, examples}. "no scheduler fits": unclaimed jobs bigger than every
    ``slurm_schedulers`` entry can give (only the entry they name, when they name one); "no runner
    fits": ready jobs bigger than every live runner (only when runners are live); "upstream failed":
    jobs canceled because a prerequisite failed."""
    found: dict[str, dict[str, Any]] = {}
    waiting = sum(counts[s] for s in WAITING)
    offers = scheduler_offers(schedulers_json)
    live = runner_offers([r for r in runners if r["status"] == "active"], time.time())
    if waiting and (offers or (live and counts["ready"])):
        all_shapes = shapes(conn, workflow_id)
        if offers:
            by_name = {o.name: o for o in offers}
            misfits = [s for s in all_shapes
                       if not any(o.fits(s) for o in ([by_name[s.scheduler]] if s.scheduler in by_name else []
                                                      if s.scheduler else offers))]
            found["no scheduler fits"] = _count_shapes(conn, workflow_id, misfits, WAITING, counts, examples)
        if live and counts["ready"]:
            misfits = [s for s in all_shapes if not any(o.fits(s) for o in live)]
            found["no runner fits"] = _count_shapes(conn, workflow_id, misfits, ("ready",), counts, examples)
    if counts["canceled"]:
        n = conn.execute("SELECT COUNT(*) FROM (SELECT 1 FROM jobs WHERE workflow_id = ? AND status = 'canceled'"
                         " AND reason LIKE 'upstream%' LIMIT ?)", (workflow_id, COUNT_CAP + 1)).fetchone()[0]
        names = [r[0] for r in conn.execute(
            "SELECT name FROM jobs WHERE workflow_id = ? AND status = 'canceled' AND reason LIKE 'upstream%'"
            " ORDER BY rank LIMIT ?", (workflow_id, examples))]
        found["upstream failed"] = {"count": min(n, COUNT_CAP), "at_least": n > COUNT_CAP, "examples": names}
    return {k: v for k, v in found.items() if v["count"]}


def _count_shapes(conn: sqlite3.Connection, workflow_id: int, misfits: list[Shape], statuses: tuple[str, ...],
                  counts: dict[str, int], examples: int) -> dict[str, Any]:
    """How many jobs in ``statuses`` have one of the ``misfits`` shapes, reading at most ``EXAMINE``
    rows per index range: first the jobs of each misfit shape (``jobs_by_shape``); when a shape has
    more, also the next jobs of each status in claim order (``jobs_by_status``: those a runner would
    take next). Exact when no range was cut short; otherwise the larger count, flagged ``at_least``."""
    if not misfits:
        return {"count": 0, "at_least": False, "examples": []}
    names: list[str] = []
    by_shape, shape_cut = 0, False
    where = f"workflow_id = ? AND scheduler IS ? AND {' AND '.join(c + ' = ?' for c in _SHAPE)}"
    for shape in misfits:
        params = (workflow_id, shape.scheduler, *(getattr(shape, c) for c in _SHAPE))
        rows = conn.execute(f"SELECT name, status FROM jobs WHERE {where} LIMIT ?", (*params, EXAMINE)).fetchall()
        shape_cut |= len(rows) >= EXAMINE
        hits = [name for name, status in rows if status in statuses]
        by_shape += len(hits)
        names += hits[:max(0, examples - len(names))]
    if not shape_cut:
        return {"count": by_shape, "at_least": False, "examples": names}
    wanted = set(misfits)
    cols = ", ".join(_SHAPE)
    by_status, status_names = 0, []
    for status in statuses:
        if not counts.get(status):
            continue
        for row in conn.execute(f"SELECT name, scheduler, {cols} FROM jobs WHERE workflow_id = ? AND status = ?"
                                f" ORDER BY rank LIMIT ?", (workflow_id, status, EXAMINE)):
            if Shape(*row[1:]) in wanted:
                by_status += 1
                if len(status_names) < examples:
                    status_names.append(row[0])
    return {"count": max(by_shape, by_status), "at_least": True,
            "examples": status_names if by_status > by_shape else names}


# -- arithmetic, outside the lock -----------------------------------------------------------------
def estimate_eta(remaining: int, exec_times: list[float], parallelism: int) -> float | None:
    """Seconds until the workflow is done, estimated as

        remaining jobs × mean exec time of the last ``ETA_SAMPLE`` completed attempts ÷ parallelism

    where *remaining* counts the unfinished jobs (uninitialized, blocked, ready, pending, running)
    and *parallelism* the jobs held by runners right now (pending + running). No estimate (None)
    before any attempt has completed, or while nothing runs; 0 when nothing remains. It assumes the
    remaining jobs look like the recent ones and the present parallelism lasts: a rough guide."""
    if remaining == 0:
        return 0.0
    if not exec_times or parallelism <= 0:
        return None
    return remaining * (sum(exec_times) / len(exec_times)) / parallelism


def build_report(raw: Raw, now: float) -> dict[str, Any]:
    counts = {s: raw.counts.get(s, 0) for s in JOB_STATUSES}
    total = sum(counts.values())
    unfinished = sum(counts[s] for s in UNFINISHED)
    parallelism = counts["pending"] + counts["running"]
    finished = unfinished == 0   # an empty workflow is done too: --watch must not wait on it
    start = raw.run_start if raw.run_start is not None else None
    end = raw.last_end if finished else None
    elapsed = None if start is None else max(0.0, (end if end is not None and end >= start else now) - start)
    allocation_runners: dict[str, list[dict[str, Any]]] = {}
    runners = []
    for r in raw.runners:
        res = json.loads(r["resources"] or "{}")
        gpus = res.get("gpus")
        end_time = res.get("end_time")
        entry = {"id": r["id"], "hostname": r["hostname"], "slurm_job_id": r["slurm_job_id"], "status": r["status"],
                 "cpus": res.get("cpus"), "gpus": len(gpus) if isinstance(gpus, list) else gpus,
                 "memory_bytes": res.get("memory_bytes"), "running": r["held"], "started_at": r["started_at"],
                 "heartbeat_age_s": max(0.0, now - r["heartbeat_at"]),
                 "time_left_s": None if end_time is None else end_time - now}
        runners.append(entry)
        if r["slurm_job_id"]:
            allocation_runners.setdefault(r["slurm_job_id"], []).append(entry)
    allocations = []
    for a in raw.allocations:
        mine = allocation_runners.get(a["slurm_job_id"], [])
        lefts = [r["time_left_s"] for r in mine if r["time_left_s"] is not None]
        allocations.append({**a, "runners": len(mine), "time_left_s": max(lefts) if lefts else None})
    mean = sum(raw.exec_times) / len(raw.exec_times) if raw.exec_times else None
    return {
        "workflow_id": raw.workflow["id"], "name": raw.workflow["name"], "status": raw.workflow["status"],
        "run_id": raw.workflow["run_id"], "now": now, "counts": counts, "total": total,
        "done": sum(counts[s] for s in DONE), "failed": sum(counts[s] for s in FAILED),
        "pending": counts["pending"], "running": counts["running"],
        "started_at": start, "ended_at": end, "elapsed_s": elapsed, "mean_exec_s": mean,
        "parallelism": parallelism, "eta_s": estimate_eta(unfinished, raw.exec_times, parallelism),
        "finished": finished, "allocations": allocations, "runners": runners, "last_failures": raw.failures,
        "failure_reasons": raw.failure_reasons, "failure_reasons_sampled": raw.failure_reasons_sampled,
        "cannot_run": {k: {**v, "examples": list(v["examples"])} for k, v in raw.cannot_run.items()},
    }


def counts_key(report: dict[str, Any]) -> tuple[int, ...]:
    """What a change line compares: the count of every status."""
    return tuple(report["counts"][s] for s in JOB_STATUSES)


def change_line(report: dict[str, Any], clock: str) -> str:
    """One line per change without a terminal:
    ``12:01:05 done 40/202 running 8 pending 2 ready 30 blocked 122 failed 0``."""
    c = report["counts"]
    line = (f"{clock} done {report['done']}/{report['total']} running {c['running']} pending {c['pending']}"
            f" ready {c['ready']} blocked {c['blocked']} failed {report['failed']}")
    if c["uninitialized"]:
        line += f" uninitialized {c['uninitialized']}"
    return line


def progress_line(workflow_id: int, counts: dict[str, int]) -> str:
    """A one-line progress summary that keeps claimed (pending) jobs apart from running ones, for
    any progress display (``torc run``'s plain lines can use it)."""
    total = sum(counts.values())
    done = sum(counts.get(s, 0) for s in DONE)
    return (f"workflow {workflow_id}: {done}/{total} done, {counts.get('completed', 0)} completed, "
            f"{sum(counts.get(s, 0) for s in FAILED)} failed, {counts.get('running', 0)} running, "
            f"{counts.get('pending', 0)} pending")
