"""``torc jobs …``: list a workflow's jobs, and explain where one job stands and why."""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any

import click

from torc_slurm.cli.app import App, format_option, pass_app
from torc_slurm.states import ALL as JOB_STATUSES

_STYLES = {"completed": "green", "failed": "red", "canceled": "red", "terminated": "red", "running": "cyan",
           "pending": "cyan", "ready": "yellow", "uninitialized": "dim"}


@click.group("jobs")
def jobs() -> None:
    """Inspect the jobs of a workflow."""


@jobs.command("list")
@click.argument("workflow_id", metavar="ID", type=int)
@click.option("-s", "--status", type=click.Choice(JOB_STATUSES), help="Only jobs in this state.")
@click.option("--limit", type=click.IntRange(min=1), default=None, metavar="N", help="At most N jobs (in id order).")
@click.option("--offset", type=click.IntRange(min=0), default=0, metavar="N", help="Skip the first N jobs (with --limit: pages).")
@format_option
@pass_app
def list_(app: App, workflow_id: int, status: str | None, limit: int | None, offset: int, fmt: str) -> None:
    """List the jobs of workflow ID.

    Shows each job's state, attempt, return code and requested resources (CPUs, GPUs, memory,
    runtime, scheduler). With --status the jobs are found by index, so
    `--status failed --limit 50` is quick on a million jobs.
    """
    from torc_slurm.store.views import list_jobs

    rows = list_jobs(app.db, workflow_id, status, limit=limit, offset=offset)
    app.emit(rows, fmt, lambda data: _jobs_table(data, workflow_id, status, app.console.width))


@jobs.command("explain")
@click.argument("workflow_id", metavar="ID", type=int)
@click.argument("job", metavar="JOB")
@format_option
@pass_app
def explain(app: App, workflow_id: int, job: str, fmt: str) -> None:
    """Explain why a job is in its state.

    JOB is a job name or a numeric job id of workflow ID. Shows its state and the reason for it, its resources, the dependency set it waits on (how many
    prerequisites remain or failed, and up to 10 unfinished ones by name), its attempts with their
    return codes, run times, peak memory and messages, and its stdout/stderr files when they exist.
    """
    from torc_slurm.reports.jobs import explain_job

    app.emit(explain_job(app.db, workflow_id, job), fmt, lambda d: _explain_view(d, app.console.width))


# -- rendering -----------------------------------------------------------------------------------
def _jobs_table(rows: list[dict[str, Any]], workflow_id: int, status: str | None, width: int = 80):
    from rich.text import Text

    from torc_slurm.cli.status_view import fit
    from torc_slurm.reports import human_bytes, human_seconds

    where = f" with status {status}" if status else ""
    cells = [[str(r["id"]), Text(r["name"]), Text(r["status"], style=_STYLES.get(r["status"], "")),
              str(r["attempt"]), "-" if r["return_code"] is None else str(r["return_code"]),
              str(r["num_cpus"]), str(r["num_gpus"]), human_bytes(r["memory_bytes"]),
              human_seconds(r["runtime_s"]), r["scheduler"] or "-"] for r in rows]
    return fit([("ID", "num"), ("Name", "text"), ("Status", "status"), ("Try", "num"), ("RC", "num"),
                ("CPUs", "num"), ("GPUs", "num"), ("Memory", "num"), ("Runtime", "num"), ("Scheduler", "word")],
               cells, width, drop=("GPUs", "Try", "RC", "Runtime", "CPUs"),
               title=None if rows else f"Workflow {workflow_id} has no jobs{where}",
               caption=f"{len(rows):,} jobs{where}" if rows else None)


def _explain_view(report: dict[str, Any], width: int = 80):
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from torc_slurm.reports import human_bytes, human_seconds

    style = _STYLES.get(report["status"], "")
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column(overflow="fold")
    facts.add_row("Job", Text(f"{report['name']} (id {report['id']}, workflow {report['workflow_id']})"))
    facts.add_row("Status", Text(f"{report['status']}", style=style) + Text(f": {report['reason']}"))
    facts.add_row("Attempts", str(report["attempt"]))
    res = report["resources"]
    facts.add_row("Resources", Text(
        f"{res['num_cpus']} CPUs, {res['num_gpus']} GPUs, {res['num_nodes']} node(s), "
        f"{human_bytes(res['memory_bytes'])}, {human_seconds(res['runtime_s'])} "
        f"({res['resource_requirements']}); scheduler: {res['scheduler'] or 'any'}"))
    facts.add_row("Command", Text(report["command"]))
    deps = report["dependencies"]
    if deps is None:
        facts.add_row("Waits on", "nothing (no prerequisites)")
    else:
        text = (f"dependency set {deps['set_id']}: {deps['size']:,} prerequisites, "
                f"{deps['remaining']:,} not finished, {deps['failed']:,} failed")
        facts.add_row("Waits on", Text(text))
        if deps["unfinished"]:
            more = " …" if deps["remaining"] > len(deps["unfinished"]) else ""
            facts.add_row("Unfinished", Text(", ".join(f"{d['name']} ({d['status']})"
                                                      for d in deps["unfinished"]) + more))
        if deps["failed_jobs"]:
            facts.add_row("Failed", Text(", ".join(f"{d['name']} ({d['status']})" for d in deps["failed_jobs"]),
                                         style="red"))
    facts.add_row("Needed by", f"{report['dependents']:,} jobs wait on it")
    for key, label in (("inputs", "Inputs"), ("outputs", "Outputs")):
        if report["files"][key]:
            facts.add_row(label, Text(", ".join(f["path"] + (" (external)" if f.get("external") and key == "inputs"
                                                              else "") for f in report["files"][key])))
    for key in ("stdout", "stderr"):
        if report["stdio"][key]:
            facts.add_row(key, Text("\n".join(report["stdio"][key])))
    parts: list[Any] = [facts]
    if report["results"]:
        parts.append(_results_table(report["results"], width))
    return Group(*parts)


def _results_table(results: list[dict[str, Any]], width: int = 80):
    from rich.text import Text

    from torc_slurm.cli.status_view import fit
    from torc_slurm.reports import human_bytes, human_seconds

    cells = []
    for r in results:
        rc = "-" if r["return_code"] is None else str(r["return_code"])
        if r.get("signal"):
            rc += f"/sig{r['signal']}"
        started = (datetime.datetime.fromtimestamp(r["started_at"]).strftime("%m-%d %H:%M:%S")
                   if r["started_at"] else "-")
        cells.append([str(r["attempt"]), Text(r["status"], style=_STYLES.get(r["status"], "")), rc,
                      Text(r["hostname"] or "-"), started, human_seconds(r["exec_s"]),
                      human_bytes(r["peak_memory_bytes"]), Text(r["message"] or r.get("reason") or "")])
    return fit([("Try", "num"), ("Status", "status"), ("RC", "num"), ("Host", "text"), ("Started", "word"),
                ("Exec", "num"), ("Peak mem", "num"), ("Message", "text")], cells, width,
               drop=("Peak mem", "Started", "Host"), title="Attempts")


# -- logs ------------------------------------------------------------------------------------------
FILE_POLL_S = 0.25    # --follow reads the file this often (a stat and a read: no lock)
QUEUE_POLL_S = 3.0    # and asks the queue whether the attempt ended this often (one short read)


@jobs.command("logs")
@click.argument("workflow_id", metavar="ID", type=int)
@click.argument("job", metavar="JOB")
@click.option("--attempt", type=click.IntRange(min=1), default=None, metavar="N",
              help="This attempt (default: the latest).")
@click.option("--stderr", "use_stderr", is_flag=True, help="Print stderr instead of stdout.")
@click.option("--tail", type=click.IntRange(min=0), default=None, metavar="N", help="Only the last N lines.")
@click.option("-F", "--follow", is_flag=True, help="Keep printing what the attempt writes until it ends.")
@pass_app
def logs(app: App, workflow_id: int, job: str, attempt: int | None, use_stderr: bool, tail: int | None,
         follow: bool) -> None:
    """Print the stdout (or --stderr) of one attempt of a job of workflow ID.

    JOB is a job name or id. The file is read where the runner that ran the attempt wrote it.
    --follow keeps reading as the file grows and stops once the attempt has ended (its outcome is
    recorded), reading the file often and the queue rarely. A note about the attempt goes to
    stderr, so stdout holds the job's output only."""
    from torc_slurm.errors import TorcError
    from torc_slurm.reports.jobs import attempt_logs

    key = "stderr" if use_stderr else "stdout"
    info = attempt_logs(app.db, workflow_id, job, attempt)
    path = Path(info[key])
    state = "running" if info["live"] else (info["result"] or info["job_status"])
    app.note(f"== {key} of {info['name']} (id {info['job_id']}), attempt {info['attempt']} of "
             f"{info['latest_attempt']} ({state}): {path}")
    out = click.get_binary_stream("stdout")
    if not path.exists() and not (follow and info["live"]):
        raise TorcError(f"the {key} of attempt {info['attempt']} of job {info['name']} is gone: {path} does not "
                        "exist (the output folder was moved or cleaned, or the runner could not write it)")
    position = 0
    if path.exists():
        position = _print_file(path, tail, out)
    if not follow:
        return
    _follow(app, info, path, position, out)
    if not path.exists():
        raise TorcError(f"attempt {info['attempt']} of job {info['name']} ended without a {key} file at {path}")


def _print_file(path: Path, tail: int | None, out) -> int:
    """Print the file (or its last ``tail`` lines); returns the offset read up to."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        start = 0 if tail is None else _tail_offset(f, size, tail)
        f.seek(start)
        position = start
        while position < size:
            chunk = f.read(min(1 << 20, size - position))
            if not chunk:
                break
            out.write(chunk)
            position += len(chunk)
    out.flush()
    return position


def _tail_offset(f, size: int, lines: int) -> int:
    """Offset of the start of the last ``lines`` lines (reading backwards in blocks)."""
    if lines == 0:
        return size
    block, end, newlines = 1 << 16, size, 0
    if size and (f.seek(size - 1) or True) and f.read(1) == b"\n":
        end -= 1   # a final newline ends the last line, it does not start a new one
    pos = end
    while pos > 0:
        step = min(block, pos)
        pos -= step
        f.seek(pos)
        data = f.read(step)
        for i in range(len(data) - 1, -1, -1):
            if data[i] == 10:
                newlines += 1
                if newlines == lines:
                    return pos + i + 1
    return 0


def _follow(app: App, info: dict[str, Any], path: Path, position: int, out) -> None:
    """Print what is appended to ``path`` until the attempt ends, then what is left."""
    import time

    from torc_slurm.reports.jobs import attempt_ended

    next_check = 0.0
    ended = not info["live"]
    while True:
        position = _copy_new(path, position, out)
        if ended:
            _copy_new(path, position, out)
            return
        now = time.monotonic()
        if now >= next_check:
            ended = attempt_ended(app.db, info["workflow_id"], info["job_id"], info["attempt"])
            next_check = now + QUEUE_POLL_S
            if ended:
                continue   # one last read of the file
        time.sleep(FILE_POLL_S)


def _copy_new(path: Path, position: int, out) -> int:
    try:
        with open(path, "rb") as f:
            f.seek(position)
            while chunk := f.read(1 << 20):
                out.write(chunk)
                position += len(chunk)
    except FileNotFoundError:
        return position
    out.flush()
    return position
