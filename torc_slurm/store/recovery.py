"""`torc recover`: give jobs that failed by OOM or timeout bigger resources and run them again.

Three steps, like every restart (`store.restarts`):

1. **Read** the failed jobs with their last reason and figures (one locked read).
2. **Plan** (pure, ``plan_growth``): an ``oom`` job gets memory x ``memory_factor``, a ``timeout``
   job runtime x ``runtime_factor``, each capped at the largest node or walltime any scheduler
   offers (``Caps``, found by the caller: this layer knows no Slurm). A job already at the cap
   cannot grow: it is reported and left failed, never resubmitted forever. Other failures are
   reset unchanged with ``retry_unknown``, else listed as not recovered. The downstream of every
   job to rerun comes from ``restarts.plan_reset`` (completed jobs elsewhere keep their results).
3. **Apply**: the new figures go on those jobs only (``jobs.memory_bytes`` / ``runtime_s``; the
   shared ``resource_requirements`` entry is left alone), each change recorded as an event, in
   one transaction that first checks each job is still failed at the attempt planned; then the
   reset is applied. ``--dry-run`` prints the same plan and stops before this step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from torc_slurm.errors import QueueError
from torc_slurm.store.db import Database
from torc_slurm.store.events import add_event

GROWABLE = {"oom": "memory", "timeout": "runtime"}
MIB = 2**20


class RecoverConflict(QueueError):
    """A job recover meant to change moved on (was reset or rerun) while it was being applied."""


@dataclass(frozen=True)
class FailedJob:
    id: int
    name: str
    status: str
    reason: str | None
    attempt: int
    memory_bytes: int
    runtime_s: int
    scheduler: str | None


@dataclass(frozen=True)
class Caps:
    """The most a job may grow to: the largest node's memory and the longest walltime (minus the
    runner's end buffer) any of the workflow's schedulers offers; None: no known limit. ``where``
    says what the caps come from, for the report."""

    memory_bytes: int | None = None
    runtime_s: int | None = None
    where: str = ""


@dataclass(frozen=True)
class Growth:
    """One failed job in the plan: what it grows (``field``: memory, runtime or None) from ``old``
    to ``new``; ``stuck`` when it cannot grow (left failed, reported)."""

    job_id: int
    name: str
    reason: str
    field: str | None
    old: int | None = None
    new: int | None = None
    capped: bool = False
    stuck: bool = False

    def describe(self) -> str:
        if self.field is None:
            return f"{self.reason}: rerun unchanged (--retry-unknown)"
        old, new = (_bytes(self.old), _bytes(self.new)) if self.field == "memory" else \
            (_seconds(self.old), _seconds(self.new))
        if self.stuck:
            return f"{self.reason}: cannot grow, {self.field} {old} is already the most any node offers"
        return f"{self.reason}: {self.field} {old} -> {new}" + (" (capped: the largest node)" if self.capped else "")


def plan_growth(jobs: Sequence[FailedJob], caps: Caps, *, memory_factor: float, runtime_factor: float,
                retry_unknown: bool) -> tuple[list[Growth], list[FailedJob]]:
    """(the jobs to grow or rerun, including those that cannot grow; the failed jobs left alone)."""
    plan: list[Growth] = []
    skipped: list[FailedJob] = []
    for job in jobs:
        kind = GROWABLE.get(job.reason or "")
        if kind == "memory":
            plan.append(_grow(job, "memory", job.memory_bytes, memory_factor, caps.memory_bytes, MIB))
        elif kind == "runtime":
            plan.append(_grow(job, "runtime", job.runtime_s, runtime_factor, caps.runtime_s, 1))
        elif retry_unknown:
            plan.append(Growth(job.id, job.name, job.reason or job.status, None))
        else:
            skipped.append(job)
    return plan, skipped


def _grow(job: FailedJob, what: str, old: int, factor: float, cap: int | None, unit: int) -> Growth:
    wanted = math.ceil(old * factor / unit) * unit
    new = wanted if cap is None else min(wanted, cap)
    if new <= old:
        return Growth(job.id, job.name, job.reason or "", what, old, old, stuck=True)
    return Growth(job.id, job.name, job.reason or "", what, old, new, capped=new < wanted)


# -- reading and applying ------------------------------------------------------------------------
def failed_jobs(db: Database, workflow_id: int) -> list[FailedJob]:
    """The workflow's failed jobs (and terminated ones, which a gave-up left failed anyway)."""
    rows = db.read("SELECT id, name, status, reason, attempt, memory_bytes, runtime_s, scheduler FROM jobs"
                   " WHERE workflow_id = ? AND status IN ('failed', 'terminated') ORDER BY rank, id", (workflow_id,))
    if not rows and not db.read("SELECT 1 FROM workflows WHERE id = ?", (workflow_id,)):
        raise QueueError(f"no workflow {workflow_id} in {db.path}")
    return [FailedJob(*row) for row in rows]


@dataclass
class Recovery:
    """The whole plan: growths, the reset (with downstream), and what is left alone."""

    workflow_id: int
    growth: list[Growth]
    skipped: list[FailedJob]
    caps: Caps
    reset: object | None = None             # restarts.Restart of the jobs to rerun and their downstream
    seen: dict[int, tuple[str, int]] = field(default_factory=dict)  # job -> (status, attempt) when planned

    @property
    def rerun(self) -> list[Growth]:
        return [g for g in self.growth if not g.stuck]

    @property
    def stuck(self) -> list[Growth]:
        return [g for g in self.growth if g.stuck]

    def changes(self) -> list[dict[str, object]]:
        """Every job that will run again, in order: seeds with their change, then downstream."""
        mine = {g.job_id: g for g in self.growth}
        out = []
        for change in getattr(self.reset, "changes", []):
            growth = mine.get(change.job_id)
            out.append({"job": change.name, "job_id": change.job_id, "from": change.old, "to": change.new,
                        "why": growth.describe() if growth else change.reason,
                        **({"field": growth.field, "old": growth.old, "new": growth.new} if growth and growth.field
                           else {})})
        return out


def plan_recovery(db: Database, workflow_id: int, caps: Caps, *, memory_factor: float = 1.5,
                  runtime_factor: float = 1.5, retry_unknown: bool = False) -> Recovery:
    if memory_factor < 1 or runtime_factor < 1:
        raise QueueError("--memory-factor and --runtime-factor must be at least 1")
    failed = failed_jobs(db, workflow_id)
    growth, skipped = plan_growth(failed, caps, memory_factor=memory_factor,
                                  runtime_factor=runtime_factor, retry_unknown=retry_unknown)
    recovery = Recovery(workflow_id, growth, skipped, caps, seen={j.id: (j.status, j.attempt) for j in failed})
    if recovery.rerun:
        recovery.reset = _plan_reset(db, workflow_id, [g.name for g in recovery.rerun])
    return recovery


def _plan_reset(db: Database, workflow_id: int, names: list[str]):  # noqa: ANN202
    from torc_slurm.store.restarts import plan_reset

    restart = plan_reset(db, workflow_id, jobs=names)
    restart.kind = "recover"
    return restart


def apply_recovery(db: Database, recovery: Recovery) -> int:
    """Write the new figures (checked: each job still failed at the planned attempt), then apply
    the reset. Returns the new run id (the workflow's run id when there was nothing to do)."""
    if not recovery.rerun:
        return 0
    recovery.reset.check_not_busy()  # type: ignore[union-attr]
    with db.transaction() as conn:
        for g in recovery.rerun:
            row = conn.execute("SELECT status, attempt FROM jobs WHERE id = ?", (g.job_id,)).fetchone()
            if row is None or (row[0], row[1]) != recovery.seen.get(g.job_id):
                raise RecoverConflict(f"job {g.name} changed while recover was being applied (it was reset or "
                                      "rerun); nothing was changed. Run `torc recover` again")
            if g.field == "memory":
                conn.execute("UPDATE jobs SET memory_bytes = ? WHERE id = ?", (g.new, g.job_id))
            elif g.field == "runtime":
                conn.execute("UPDATE jobs SET runtime_s = ? WHERE id = ?", (g.new, g.job_id))
            add_event(conn, recovery.workflow_id, "recover", f"job {g.name}: {g.describe()}")
    return recovery.reset.apply(db)  # type: ignore[union-attr]


def _bytes(value: int | None) -> str:
    if value is None:
        return "-"
    if value % 2**30 == 0:
        return f"{value // 2**30} GiB"
    return f"{math.ceil(value / MIB)} MiB"


def _seconds(value: int | None) -> str:
    if value is None:
        return "-"
    if value < 120:
        return f"{value} s"
    minutes, seconds = divmod(value, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"
