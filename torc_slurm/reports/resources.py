"""`torc reports resources ID`: were the resource requests right? Flags, suggestions, and `--apply`.

Per ``resource_requirements`` name, every attempt is compared with the request of its own job (a
group may mix old and applied values):

- **overuse**: an attempt's peak memory above its job's memory request, or its run time above its
  job's runtime request, or an attempt ended for ``oom`` / ``timeout``; CPU: the peak CPU above the
  CPUs asked (more than 10 % over: threads beyond the cores given).
- **waste**: every completed attempt used under 25 % of the memory, or of the runtime, it asked for;
  CPU: the peak stayed under 25 % of the CPUs asked; GPU (where sampled): mean utilisation under 25 %.

Waste is not flagged where the request is already the smallest the rules below would suggest
(64 MiB, one minute, one CPU): nothing could be saved.

Suggestions (made only for a flagged resource, and only where they differ from the request):

- memory: the peak of all attempts x 1.2, rounded up to a multiple of 64 MiB (under 1 GiB), of
  256 MiB (under 16 GiB), else of 1 GiB;
- runtime: the longest attempt x 1.5, rounded up to whole minutes;
- CPUs: the peak CPU use in cores, rounded up (at least 1).

An attempt killed for overuse gives a lower bound only (it would have used more): the suggestion is
still above what was asked, and a rerun shows whether it is enough.

`apply_suggestions` writes the suggested values to the jobs of each requirement that have not run
yet (uninitialized, blocked, ready; optionally the failed, canceled and terminated ones a reset would
run again): their ``memory_bytes``, ``runtime_s`` and ``num_cpus`` columns, in one transaction, with
a ``resources_applied`` event. Pending and running jobs keep theirs (a runner holds them with the old
size). ``spec_hash`` is left alone: it stands for the spec the workflow was created or updated with,
and a completed job must not rerun because its unfinished siblings were resized (`workflows update`
with the spec still compares spec with spec).

All reads are pages of ids (each its own short locked read), so a million results never hold the
lock for long.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict

from torc_slurm.errors import QueueError
from torc_slurm.states import JobStatus
from torc_slurm.store.db import Database
from torc_slurm.store.events import add_event
from torc_slurm.store.workflows import get_workflow

MIB = 2**20
GIB = 2**30
WASTE_BELOW = 0.25
CPU_OVER = 1.10
MEMORY_FACTOR = 1.2
RUNTIME_FACTOR = 1.5
PAGE = 5_000  # ids per locked read (a 1M-job workflow: ~300 reads of ~10-20 ms)
NOT_RUN = (JobStatus.UNINITIALIZED.value, JobStatus.BLOCKED.value, JobStatus.READY.value)
RERUNNABLE = (JobStatus.FAILED.value, JobStatus.CANCELED.value, JobStatus.TERMINATED.value)
GPU_NOT_SAMPLED = "GPU use not sampled (no nvidia-smi/NVML on the nodes)"

RULES = {
    "overuse": "peak memory or run time above the request (or ended for oom/timeout); peak CPU over "
               f"{CPU_OVER:.0%} of the CPUs asked",
    "waste": f"under {WASTE_BELOW:.0%} of the requested memory or runtime used by every completed attempt; "
             f"peak CPU under {WASTE_BELOW:.0%} of the CPUs asked; mean GPU use under {WASTE_BELOW:.0%}",
    "memory": f"peak x {MEMORY_FACTOR}, rounded up to 64 MiB (under 1 GiB), 256 MiB (under 16 GiB), else 1 GiB",
    "runtime": f"longest x {RUNTIME_FACTOR}, rounded up to whole minutes",
    "cpus": "peak CPU use in cores, rounded up (at least 1)",
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Flag(_Model):
    kind: str  # overuse | waste
    resource: str  # memory | runtime | cpus | gpus
    message: str


class Suggested(_Model):
    memory_bytes: int | None = None
    runtime_s: int | None = None
    num_cpus: int | None = None


class Requirement(_Model):
    name: str
    jobs: int
    not_run: int  # jobs --apply changes (uninitialized, blocked, ready)
    attempts: int
    completed: int
    num_cpus: int  # requests: the largest among the group's jobs
    num_gpus: int
    memory_bytes: int
    runtime_s: int
    mixed: list[str]  # requests that differ between the group's jobs (after an --apply): shown are the largest
    peak_memory_bytes: int | None
    longest_s: float | None
    mean_s: float | None  # completed attempts
    peak_cpu_percent: float | None
    oom: int
    timeouts: int
    gpu_sampled: bool
    avg_gpu_percent: float | None
    peak_gpu_memory_bytes: int | None
    gpu_note: str | None
    flags: list[Flag]
    suggested: Suggested


class ResourceReport(_Model):
    workflow_id: int
    rules: dict[str, str]
    requirements: list[Requirement]


class Applied(_Model):
    workflow_id: int
    dry_run: bool
    statuses: list[str]
    changes: list[dict[str, Any]]  # name, jobs, memory_bytes, runtime_s, num_cpus (None: kept)
    jobs: int


# -- rounding rules (pure) -------------------------------------------------------------------------
def round_memory(peak_bytes: float) -> int:
    """peak x 1.2, rounded up to a sensible unit (see the module's rules)."""
    want = peak_bytes * MEMORY_FACTOR
    unit = 64 * MIB if want < GIB else 256 * MIB if want < 16 * GIB else GIB
    return max(unit, math.ceil(want / unit) * unit)


def round_runtime(longest_s: float) -> int:
    """longest x 1.5, rounded up to whole minutes (at least one)."""
    return max(60, math.ceil(longest_s * RUNTIME_FACTOR / 60) * 60)


def round_cpus(peak_cpu_percent: float) -> int:
    return max(1, math.ceil(peak_cpu_percent / 100 - 1e-9))


# -- reading ---------------------------------------------------------------------------------------
# Per page and requirement: job counts and the largest requests; the smallest ones come negated
# (neg_*), so that merging pages by maximum keeps them right.
_JOBS_PAGE = (
    "SELECT resource_requirements AS name, COUNT(*) AS jobs, SUM(status IN ('uninitialized','blocked','ready'))"
    " AS not_run, MAX(num_cpus) AS num_cpus, MAX(num_gpus) AS num_gpus, MAX(memory_bytes) AS memory_bytes,"
    " MAX(runtime_s) AS runtime_s, -MIN(num_cpus) AS neg_num_cpus, -MIN(memory_bytes) AS neg_memory_bytes,"
    " -MIN(runtime_s) AS neg_runtime_s FROM jobs WHERE id BETWEEN ? AND ? AND +workflow_id = ?"
    " GROUP BY resource_requirements")
_RESULTS_PAGE = (
    "SELECT j.resource_requirements AS name, COUNT(*) AS attempts, SUM(x.status = 'completed') AS completed,"
    " MAX(COALESCE(x.peak_memory_bytes, x.peak_rss_bytes)) AS peak_memory_bytes,"
    " MAX(x.exec_s) AS longest_s,"
    " SUM(CASE WHEN x.status = 'completed' THEN x.exec_s END) AS completed_s,"
    " COUNT(CASE WHEN x.status = 'completed' THEN x.exec_s END) AS completed_timed,"
    " MAX(CASE WHEN x.status = 'completed' THEN x.peak_cpu_percent END) AS peak_cpu_percent,"
    " MAX(CASE WHEN x.status = 'completed' THEN x.peak_cpu_percent / NULLIF(100.0 * j.num_cpus, 0) END) AS cpu_ratio,"
    " MAX(COALESCE(x.peak_memory_bytes, x.peak_rss_bytes) * 1.0 / NULLIF(j.memory_bytes, 0)) AS memory_ratio,"
    " MAX(CASE WHEN x.status = 'completed' THEN COALESCE(x.peak_memory_bytes, x.peak_rss_bytes) * 1.0"
    "     / NULLIF(j.memory_bytes, 0) END) AS memory_ratio_completed,"
    " MAX(x.exec_s * 1.0 / NULLIF(j.runtime_s, 0)) AS runtime_ratio,"
    " MAX(CASE WHEN x.status = 'completed' THEN x.exec_s * 1.0 / NULLIF(j.runtime_s, 0) END) AS runtime_ratio_completed,"
    " SUM(x.reason = 'oom') AS oom, SUM(x.reason = 'timeout') AS timeouts,"
    " COUNT(x.avg_gpu_percent) AS gpu_samples, SUM(x.avg_gpu_percent) AS gpu_percent_sum,"
    " MAX(x.peak_gpu_memory_bytes) AS peak_gpu_memory_bytes"
    " FROM results x JOIN jobs j ON j.id = x.job_id"
    " WHERE x.id BETWEEN ? AND ? AND +x.workflow_id = ? AND x.late = 0 GROUP BY j.resource_requirements")
_SUMMED = ("jobs", "not_run", "attempts", "completed", "completed_s", "completed_timed", "oom", "timeouts",
           "gpu_samples", "gpu_percent_sum")


def _paged(db: Database, table: str, sql: str, workflow_id: int) -> dict[str, dict[str, Any]]:
    """Run a per-page GROUP BY over id ranges of ``table`` and merge the pages: sums add, the rest
    are maxima."""
    # Two subqueries: SQLite answers a lone MIN or MAX of the key in one step, but both in one
    # SELECT by scanning the table.
    low, high = db.read(f"SELECT (SELECT MIN(id) FROM {table}), (SELECT MAX(id) FROM {table})")[0]
    merged: dict[str, dict[str, Any]] = {}
    if low is None:
        return merged
    for start in range(low, high + 1, PAGE):
        for row in db.read(sql, (start, start + PAGE - 1, workflow_id)):
            new = dict(row)
            old = merged.setdefault(new["name"], new)
            if old is new:
                continue
            for key, value in new.items():
                if key == "name" or value is None:
                    continue
                if key in _SUMMED:
                    old[key] = (old[key] or 0) + value
                else:
                    old[key] = value if old[key] is None else max(old[key], value)
    return merged


def resource_report(db: Database, workflow_id: int) -> dict[str, Any]:
    """Requests versus use per requirement name, with flags and suggestions (plain data that
    validates against `ResourceReport`). A workflow with no results yet lists its requests only."""
    get_workflow(db, workflow_id)
    groups = _paged(db, "jobs", _JOBS_PAGE, workflow_id)
    used = _paged(db, "results", _RESULTS_PAGE, workflow_id)
    return {"workflow_id": workflow_id, "rules": dict(RULES),
            "requirements": [_assess(groups[name], used.get(name, {})) for name in sorted(groups)]}


def _assess(asked: dict[str, Any], used: dict[str, Any]) -> dict[str, Any]:
    """One requirement's row: figures, flags and suggestions. Pure."""
    def get(key: str) -> Any:
        return used.get(key)

    gpu_sampled = bool(get("gpu_samples"))
    avg_gpu = get("gpu_percent_sum") / get("gpu_samples") if gpu_sampled else None
    row: dict[str, Any] = {
        "name": asked["name"], "jobs": asked["jobs"], "not_run": asked["not_run"] or 0,
        "attempts": get("attempts") or 0, "completed": get("completed") or 0,
        "num_cpus": asked["num_cpus"], "num_gpus": asked["num_gpus"], "memory_bytes": asked["memory_bytes"],
        "runtime_s": asked["runtime_s"], "mixed": [k for k in ("memory_bytes", "runtime_s", "num_cpus")
                                                   if -asked.get("neg_" + k, -asked[k]) != asked[k]],
        "peak_memory_bytes": get("peak_memory_bytes"),
        "longest_s": get("longest_s"),
        "mean_s": get("completed_s") / get("completed_timed") if get("completed_timed") else None,
        "peak_cpu_percent": get("peak_cpu_percent"), "oom": get("oom") or 0, "timeouts": get("timeouts") or 0,
        "gpu_sampled": gpu_sampled, "avg_gpu_percent": avg_gpu,
        "peak_gpu_memory_bytes": get("peak_gpu_memory_bytes") if gpu_sampled else None,
        "gpu_note": None if gpu_sampled or not asked["num_gpus"] or not get("attempts") else GPU_NOT_SAMPLED,
    }
    flags: list[dict[str, str]] = []
    suggested: dict[str, int] = {}

    def flag(kind: str, resource: str, message: str) -> None:
        flags.append({"kind": kind, "resource": resource, "message": message})

    from torc_slurm.reports import human_bytes, human_seconds

    peak, oom = get("peak_memory_bytes"), row["oom"]
    over = (get("memory_ratio") or 0) > 1
    if over or oom:
        what = f"peak {human_bytes(peak)} over the {human_bytes(asked['memory_bytes'])} asked" if over else ""
        flag("overuse", "memory", ", ".join(filter(None, [what, f"{oom} ended for oom" if oom else ""])))
        # Killed for memory: what it reached is a lower bound, so at least the request x 1.2.
        suggested["memory_bytes"] = round_memory(max(peak or 0, asked["memory_bytes"]) if oom else peak)
    elif (get("memory_ratio_completed") is not None and get("memory_ratio_completed") < WASTE_BELOW
          and round_memory(peak) < asked["memory_bytes"]):
        flag("waste", "memory", f"peak {human_bytes(peak)} of {human_bytes(asked['memory_bytes'])} asked "
                                f"({get('memory_ratio_completed'):.0%})")
        suggested["memory_bytes"] = round_memory(peak)
    longest, timeouts = get("longest_s"), row["timeouts"]
    if (get("runtime_ratio") or 0) > 1 or timeouts:
        flag("overuse", "runtime", f"runtime asked {human_seconds(asked['runtime_s'])} / longest "
                                   f"{human_seconds(longest)}" + (f", {timeouts} timed out" if timeouts else ""))
        suggested["runtime_s"] = round_runtime(longest or asked["runtime_s"])
    elif (get("runtime_ratio_completed") is not None and get("runtime_ratio_completed") < WASTE_BELOW
          and round_runtime(longest) < asked["runtime_s"]):
        flag("waste", "runtime", f"longest {human_seconds(longest)} of {human_seconds(asked['runtime_s'])} asked "
                                 f"({get('runtime_ratio_completed'):.0%})")
        suggested["runtime_s"] = round_runtime(longest)
    cpu_peak, cpu_ratio = get("peak_cpu_percent"), get("cpu_ratio")
    if cpu_ratio is not None and cpu_ratio > CPU_OVER:
        flag("overuse", "cpus", f"peak CPU {cpu_peak:.0f}% on {asked['num_cpus']} CPU(s) asked")
        suggested["num_cpus"] = round_cpus(cpu_peak)
    elif cpu_ratio is not None and cpu_ratio < WASTE_BELOW and asked["num_cpus"] > 1:
        flag("waste", "cpus", f"peak CPU {cpu_peak:.0f}% of {asked['num_cpus']} CPU(s) asked ({cpu_ratio:.0%})")
        suggested["num_cpus"] = round_cpus(cpu_peak)
    if avg_gpu is not None and avg_gpu < 100 * WASTE_BELOW and asked["num_gpus"]:
        flag("waste", "gpus", f"mean GPU use {avg_gpu:.0f}% of {asked['num_gpus']} GPU(s)")
    row["flags"] = flags
    # A suggestion equal to every job's request changes nothing; a group of mixed requests (after an
    # earlier --apply) keeps it, for the jobs still at the old value.
    row["suggested"] = {k: v for k, v in suggested.items() if v != asked[k] or k in row["mixed"]}
    return row


# -- applying --------------------------------------------------------------------------------------
class _DryRun(Exception):
    pass


def apply_suggestions(db: Database, workflow_id: int, *, names: list[str] | None = None,
                      include_failed: bool = False, dry_run: bool = False,
                      report: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the report's suggestions to the jobs of each requirement that have not run yet (and,
    with ``include_failed``, to its failed, canceled and terminated jobs), in one transaction with a
    ``resources_applied`` event. ``names`` limits it to those requirements (unknown ones are an
    error). ``dry_run`` counts the jobs and rolls back. Returns what changed (validates as `Applied`)."""
    report = report or resource_report(db, workflow_id)
    known = {r["name"]: r for r in report["requirements"]}
    if names:
        unknown = [n for n in names if n not in known]
        if unknown:
            raise QueueError(f"workflow {workflow_id} has no resource requirements named {', '.join(unknown)}"
                             f" (it has: {', '.join(sorted(known)) or 'none'})")
    chosen = [known[n] for n in (names or sorted(known)) if known[n]["suggested"]]
    statuses = [*NOT_RUN, *(RERUNNABLE if include_failed else ())]
    marks = ",".join("?" * len(statuses))
    changes: list[dict[str, Any]] = []
    try:
        with db.transaction() as conn:
            for req in chosen:
                new = req["suggested"]
                cursor = conn.execute(
                    "UPDATE jobs SET memory_bytes = COALESCE(?, memory_bytes), runtime_s = COALESCE(?, runtime_s),"
                    f" num_cpus = COALESCE(?, num_cpus) WHERE workflow_id = ? AND status IN ({marks})"
                    " AND resource_requirements = ?",
                    (new.get("memory_bytes"), new.get("runtime_s"), new.get("num_cpus"), workflow_id, *statuses,
                     req["name"]))
                changes.append({"name": req["name"], "jobs": cursor.rowcount, "memory_bytes": new.get("memory_bytes"),
                                "runtime_s": new.get("runtime_s"), "num_cpus": new.get("num_cpus")})
            total = sum(c["jobs"] for c in changes)
            if total:
                add_event(conn, workflow_id, "resources_applied",
                          f"resource suggestions applied to {total} job(s): "
                          + "; ".join(f"{c['name']} ({c['jobs']})" for c in changes if c["jobs"]),
                          data={"statuses": statuses, "changes": changes}, source="user")
            if dry_run:
                raise _DryRun
    except _DryRun:
        pass
    else:
        if any(c["jobs"] for c in changes):
            db.notify()  # a smaller job may now fit a waiting runner
    return {"workflow_id": workflow_id, "dry_run": dry_run, "statuses": statuses, "changes": changes,
            "jobs": sum(c["jobs"] for c in changes)}
