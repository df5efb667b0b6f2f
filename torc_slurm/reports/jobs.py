"""Read-only questions about jobs: why is this job not running, what did its attempts do.

Each function reads the tables of ``store/schema.sql`` inside one locked read and returns plain
data (JSON-ready). Nothing here writes.
"""

from __future__ import annotations

import json

import sqlite3
from pathlib import Path
from typing import Any

from torc_slurm.errors import QueueError
from torc_slurm.reports import human_bytes, human_seconds
from torc_slurm.store.db import Database
from torc_slurm.states import DONE as FINISHED
from torc_slurm.states import FAILED, UNFINISHED
MAX_LISTED = 10
# Where the runner writes each attempt's stdout/stderr by default, relative to the workflow's
# working_dir (runner/loop.py: <output>/job_stdio/wf<W>_job<J>_attempt<A>.out / .err, with output
# defaulting to <working_dir>/torc_output). A runner given another --output is not found here.
STDIO_DIR = Path("torc_output") / "job_stdio"

def job_totals(db: Database) -> dict[int, dict[str, int]]:
    """workflow id -> {"jobs": all jobs, "done": finished jobs, "failed": failed or canceled}, from
    the per-status counts (schema 6): no pass over the jobs."""
    totals: dict[int, dict[str, int]] = {}
    for row in db.read("SELECT workflow_id, status, n FROM status_counts"):
        entry = totals.setdefault(row["workflow_id"], {"jobs": 0, "done": 0, "failed": 0})
        entry["jobs"] += row["n"]
        entry["done"] += row["n"] if row["status"] in FINISHED else 0
        entry["failed"] += row["n"] if row["status"] in FAILED else 0
    return totals


def failure_reasons(db: Database, workflow_id: int) -> dict[str, int]:
    """Why the workflow's failed and canceled jobs ended: reason -> jobs (for `workflows status`).
    "upstream job X failed" counts as "upstream failed"."""
    rows = db.read("SELECT CASE WHEN reason LIKE 'upstream%' THEN 'upstream failed'"
                   " ELSE COALESCE(reason, status) END AS why, COUNT(*) AS n FROM jobs"
                   " WHERE workflow_id = ? AND status IN ('failed', 'canceled', 'terminated')"
                   " GROUP BY why ORDER BY n DESC, why", (workflow_id,))
    return {row["why"]: row["n"] for row in rows}


def explain_job(db: Database, workflow_id: int, job: str) -> dict[str, Any]:
    """Everything that says why ``job`` (a name, or a numeric id) is where it is."""
    with db.transaction() as conn:
        workflow = conn.execute("SELECT id, status, working_dir, json_extract(spec_json, '$.slurm_schedulers')"
                                " AS schedulers FROM workflows WHERE id = ?", (workflow_id,)).fetchone()
        if workflow is None:
            from torc_slurm.reports.status import no_workflow

            raise no_workflow(conn, workflow_id, db.path)
        row = _find_job(conn, workflow_id, job)
        report: dict[str, Any] = {
            "workflow_id": workflow_id,
            "workflow_status": workflow["status"],
            "id": row["id"],
            "name": row["name"],
            "status": row["status"],
            "attempt": row["attempt"],
            "return_code": row["return_code"],
            "ended_because": row["reason"],   # the last attempt's reason, or "upstream job X failed"
            "retries": row["retries"],
            "failure_handler": row["failure_handler"],
            "enforce_runtime": bool(row["enforce_runtime"]),
            "command": row["command"],
            "priority": row["priority"],
            "resources": {
                "resource_requirements": row["resource_requirements"],
                "num_cpus": row["num_cpus"], "num_gpus": row["num_gpus"], "num_nodes": row["num_nodes"],
                "memory_bytes": row["memory_bytes"], "runtime_s": row["runtime_s"],
                "scheduler": row["scheduler"],
            },
            "schedulers": [{"name": s["name"], "nodes": s.get("nodes", 1)}
                           for s in json.loads(workflow["schedulers"] or "[]")],
            "dependencies": _dependencies(conn, row["depset_id"]),
            "dependents": conn.execute(
                "SELECT COUNT(*) FROM jobs WHERE depset_id IN"
                " (SELECT set_id FROM dependency_members WHERE job_id = ?)", (row["id"],)).fetchone()[0],
            "files": _files(conn, row["id"]),
            "runner": _runner(conn, row["runner_id"]),
            "results": _results(conn, row["id"]),
        }
        folders = _output_dirs(conn, row["id"])
    folders.append(Path(workflow["working_dir"]) / STDIO_DIR.parent)
    report["stdio"] = stdio_paths(folders, workflow_id, row["id"])
    report["reason"] = _reason(report, bool(row["cancel_on_blocking_job_failure"]))
    return report


def stdio_paths(output_dirs: list[Path], workflow_id: int, job_id: int) -> dict[str, list[str]]:
    """The existing stdout/stderr files of a job's attempts, by attempt (empty lists if none), looked
    for under the ``job_stdio`` folder of each output directory (runners record theirs)."""
    found: dict[str, list[str]] = {"stdout": [], "stderr": []}

    def attempt(path: Path) -> int:
        tail = path.stem.rsplit("_attempt", 1)[-1]
        return int(tail) if tail.isdigit() else 0
    for key, suffix in (("stdout", ".out"), ("stderr", ".err")):
        paths = {p for folder in dict.fromkeys(output_dirs)
                 for p in (folder / STDIO_DIR.name).glob(f"wf{workflow_id}_job{job_id}_attempt*{suffix}")}
        found[key] = [str(p) for p in sorted(paths, key=attempt)]
    return found


def _output_dirs(conn: sqlite3.Connection, job_id: int) -> list[Path]:
    """Output directories of the runners that ran this job (from their registration)."""
    rows = conn.execute("SELECT DISTINCT r.resources FROM results x JOIN runners r ON r.id = x.runner_id"
                        " WHERE x.job_id = ?", (job_id,)).fetchall()
    return [Path(d["output_dir"]) for (text,) in rows if (d := json.loads(text or "{}")).get("output_dir")]


# -- pieces (inside the caller's transaction) ---------------------------------------------------
def _find_job(conn: sqlite3.Connection, workflow_id: int, job: str) -> sqlite3.Row:
    """A job by exact name first; otherwise, if ``job`` is a number, by id. An unknown one is an
    error that lists the nearest names."""
    row = conn.execute("SELECT * FROM jobs WHERE workflow_id = ? AND name = ?", (workflow_id, job)).fetchone()
    if row is None and job.strip().isdigit():
        row = conn.execute("SELECT * FROM jobs WHERE workflow_id = ? AND id = ?",
                           (workflow_id, int(job))).fetchone()
    if row is None:
        near = nearest_names(conn, workflow_id, job)
        hint = f"; nearest: {', '.join(near)}" if near else ""
        raise QueueError(f"workflow {workflow_id} has no job named (or numbered) {job!r}{hint} "
                         f"(see `torc jobs list {workflow_id}`)")
    return row


NEAR_CANDIDATES = 5000   # names difflib compares at most (by index: no pass over a million jobs)


def nearest_names(conn: sqlite3.Connection, workflow_id: int, name: str, n: int = 5) -> list[str]:
    """Job names close to ``name`` (difflib), among the names sharing its first letters and those
    sorting just before and after it: index range reads on (workflow_id, name), bounded."""
    import difflib

    half = NEAR_CANDIDATES // 2
    candidates: set[str] = set()
    for prefix_len in (3, 1):
        prefix = name[:prefix_len]
        if prefix:
            candidates.update(r[0] for r in conn.execute(
                "SELECT name FROM jobs WHERE workflow_id = ? AND name >= ? AND name < ? ORDER BY name LIMIT ?",
                (workflow_id, prefix, prefix + "\U0010ffff", half)))
        if len(candidates) >= n:
            break
    candidates.update(r[0] for r in conn.execute(
        "SELECT name FROM jobs WHERE workflow_id = ? AND name < ? ORDER BY name DESC LIMIT 50", (workflow_id, name)))
    candidates.update(r[0] for r in conn.execute(
        "SELECT name FROM jobs WHERE workflow_id = ? AND name > ? ORDER BY name LIMIT 50", (workflow_id, name)))
    return difflib.get_close_matches(name, sorted(candidates), n=n, cutoff=0.5)


def attempt_logs(db: Database, workflow_id: int, job: str, attempt: int | None = None) -> dict[str, Any]:
    """Where one attempt's stdout and stderr are, and whether it is still going: ``job`` is a name
    or an id, ``attempt`` None means the latest. One locked read. The files are where the runner
    that ran the attempt writes them (``<its output dir>/job_stdio/wf<W>_job<J>_attempt<A>.out|.err``;
    ``<working dir>/torc_output`` when no runner recorded one)."""
    from torc_slurm.states import HELD

    with db.transaction(write=False) as conn:
        workflow = conn.execute("SELECT working_dir FROM workflows WHERE id = ?", (workflow_id,)).fetchone()
        if workflow is None:
            from torc_slurm.reports.status import no_workflow

            raise no_workflow(conn, workflow_id, db.path)
        row = _find_job(conn, workflow_id, job)
        latest = row["attempt"]
        if latest == 0:
            raise QueueError(f"job {row['name']} (id {row['id']}) has not run yet: it is {row['status']} "
                             f"(see `torc jobs explain {workflow_id} {row['name']}`)")
        number = latest if attempt is None else attempt
        if not 1 <= number <= latest:
            raise QueueError(f"job {row['name']} has attempts 1 to {latest}, not {number}")
        result = conn.execute("SELECT status, runner_id, return_code FROM results WHERE workflow_id = ? AND job_id = ?"
                              " AND attempt = ? ORDER BY id DESC LIMIT 1", (workflow_id, row["id"], number)).fetchone()
        live = result is None and number == latest and row["status"] in HELD
        runner_id = result["runner_id"] if result is not None else (row["runner_id"] if live else None)
        folder = None
        if runner_id is not None:
            text = conn.execute("SELECT resources FROM runners WHERE id = ?", (runner_id,)).fetchone()
            folder = json.loads(text[0] or "{}").get("output_dir") if text else None
    base = Path(folder) if folder else Path(workflow["working_dir"]) / STDIO_DIR.parent
    stem = f"wf{workflow_id}_job{row['id']}_attempt{number}"
    return {"workflow_id": workflow_id, "job_id": row["id"], "name": row["name"], "attempt": number,
            "latest_attempt": latest, "job_status": row["status"], "live": live,
            "result": None if result is None else result["status"],
            "return_code": None if result is None else result["return_code"],
            "stdout": str(base / STDIO_DIR.name / f"{stem}.out"), "stderr": str(base / STDIO_DIR.name / f"{stem}.err")}


def attempt_ended(db: Database, workflow_id: int, job_id: int, attempt: int) -> bool:
    """True once the attempt is over: a result row for it exists, or the job no longer holds it."""
    from torc_slurm.states import HELD

    with db.transaction(write=False) as conn:
        row = conn.execute("SELECT status, attempt FROM jobs WHERE id = ?", (job_id,)).fetchone()
        done = conn.execute("SELECT 1 FROM results WHERE workflow_id = ? AND job_id = ? AND attempt = ? LIMIT 1",
                            (workflow_id, job_id, attempt)).fetchone()
    return done is not None or row is None or row["attempt"] != attempt or row["status"] not in HELD


def _dependencies(conn: sqlite3.Connection, set_id: int | None) -> dict[str, Any] | None:
    if set_id is None:
        return None
    depset = conn.execute("SELECT size, remaining, failed FROM dependency_sets WHERE id = ?", (set_id,)).fetchone()

    def names(statuses: tuple[str, ...]) -> list[dict[str, str]]:
        marks = ",".join("?" * len(statuses))
        return [{"name": r["name"], "status": r["status"]} for r in conn.execute(
            f"SELECT j.name, j.status FROM dependency_members m JOIN jobs j ON j.id = m.job_id"
            f" WHERE m.set_id = ? AND j.status IN ({marks}) ORDER BY j.rank LIMIT ?",
            (set_id, *statuses, MAX_LISTED))]
    return {"set_id": set_id, "size": depset["size"], "remaining": depset["remaining"],
            "failed": depset["failed"], "unfinished": names(UNFINISHED), "failed_jobs": names(FAILED)}


def _files(conn: sqlite3.Connection, job_id: int) -> dict[str, list[dict[str, Any]]]:
    files: dict[str, list[dict[str, Any]]] = {"inputs": [], "outputs": []}
    for r in conn.execute(
            "SELECT io.kind, f.name, f.path, f.producer_job_id FROM job_io io JOIN files f ON f.id = io.item_id"
            " WHERE io.job_id = ? AND io.kind IN ('input_file', 'output_file') ORDER BY f.id", (job_id,)):
        key = "inputs" if r["kind"] == "input_file" else "outputs"
        files[key].append({"name": r["name"], "path": r["path"], "external": r["producer_job_id"] is None})
    return files


def _runner(conn: sqlite3.Connection, runner_id: int | None) -> dict[str, Any] | None:
    if runner_id is None:
        return None
    r = conn.execute("SELECT id, hostname, pid, slurm_job_id, status, heartbeat_at FROM runners WHERE id = ?",
                     (runner_id,)).fetchone()
    return dict(r) if r else {"id": runner_id}


def _results(conn: sqlite3.Connection, job_id: int) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(
        "SELECT r.attempt, r.run_id, r.status, r.reason, r.return_code, r.signal, r.started_at, r.ended_at, r.exec_s,"
        " COALESCE(r.peak_memory_bytes, r.peak_rss_bytes) AS peak_memory_bytes, r.cpu_time_s, r.message,"
        " r.runner_id, u.hostname, u.slurm_job_id FROM results r LEFT JOIN runners u ON u.id = r.runner_id"
        " WHERE r.job_id = ? ORDER BY r.id", (job_id,))]


def _multi_node_reason(report: dict[str, Any]) -> str:
    """A ready multi-node job waits for an allocation with enough nodes, or can never run."""
    res = report["resources"]
    nodes = res["num_nodes"]
    allowed = [s for s in report.get("schedulers", []) if not res["scheduler"] or s["name"] == res["scheduler"]]
    fitting = [s["name"] for s in allowed if s["nodes"] >= nodes]
    if not fitting:
        largest = max((s["nodes"] for s in allowed), default=0)
        which = f"its scheduler '{res['scheduler']}'" if res["scheduler"] else "no slurm_schedulers entry"
        return (f"ready, but it needs {nodes} nodes and {which} gives "
                + (f"only {largest}" if res["scheduler"] else f"more than {largest}" if largest else "any")
                + f": add a scheduler with `nodes: {nodes}`; `torc run` has one node")
    return (f"ready: waiting for an allocation of {nodes} nodes (scheduler {', '.join(fitting)}) whose runners have "
            f"{res['num_cpus']} CPUs, {res['num_gpus']} GPUs and {human_bytes(res['memory_bytes'])} free on {nodes} "
            f"nodes at once, and {human_seconds(res['runtime_s'])} of walltime left")


def _reason(report: dict[str, Any], cancel_on_failure: bool) -> str:
    """One sentence: why the job is in its state, and what would move it."""
    status, deps, wf = report["status"], report["dependencies"], report["workflow_id"]
    if status == "uninitialized":
        return f"the workflow is not initialized: run `torc workflows init {wf}` (or `torc run {wf}`)"
    if status == "blocked" and deps:
        text = f"waiting for {deps['remaining']} of its {deps['size']} prerequisites to finish"
        if deps["failed"]:
            then = "it will be canceled" if cancel_on_failure else "it will still run"
            text += f"; {deps['failed']} already failed, so {then}"
        return text
    if status == "ready" and report["resources"]["num_nodes"] > 1:
        return _multi_node_reason(report)
    if status == "ready":
        res = report["resources"]
        where = f" from scheduler '{res['scheduler']}'" if res["scheduler"] else ""
        return (f"ready: waiting for a runner{where} with {res['num_cpus']} free CPUs, {res['num_gpus']} GPUs, "
                f"{human_bytes(res['memory_bytes'])} of memory and {human_seconds(res['runtime_s'])} of walltime left")
    if status in ("pending", "running"):
        runner = report["runner"] or {}
        host = runner.get("hostname", "an unknown host")
        slurm = f", Slurm job {runner['slurm_job_id']}" if runner.get("slurm_job_id") else ""
        verb = "claimed, starting" if status == "pending" else "running"
        return f"{verb} on {host} (runner {runner.get('id')}{slurm}), attempt {report['attempt']}"
    last = report["results"][-1] if report["results"] else None
    if status == "completed":
        return "completed" + (f" (return code {report['return_code']})" if report["return_code"] is not None else "")
    why = report.get("ended_because")
    if status == "failed":
        text = f"failed ({why})" if why else f"failed with return code {report['return_code']}"
        text += f": {last['message']}" if last and last.get("message") else ""
        if why in ("oom", "timeout"):
            text += f"; `torc recover {wf}` reruns it with more {'memory' if why == 'oom' else 'runtime'}"
        return text
    if status == "canceled":
        if why and why.startswith("upstream"):
            return f"canceled because {why}" + (f"; {deps['failed']} of its prerequisites failed or were canceled"
                                                if deps and deps["failed"] else "")
        if deps and deps["failed"] and cancel_on_failure:
            return f"canceled because {deps['failed']} of its prerequisites failed or were canceled"
        if report["workflow_status"] == "canceled":
            return "canceled with the workflow (`torc workflows cancel`)"
        return "canceled (the workflow or the job was canceled)"
    if status == "disabled":
        return "disabled: it will not run"
    return status
