"""``torc jobs …``: list a workflow's jobs, and explain where one job stands and why."""

from __future__ import annotations

import datetime
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
@format_option
@pass_app
def list_(app: App, workflow_id: int, status: str | None, fmt: str) -> None:
    """List the jobs of workflow ID.

    Shows each job's state, attempt, return code and requested resources (CPUs, GPUs, memory,
    runtime, scheduler).
    """
    from torc_slurm.store.workflows import list_jobs

    rows = list_jobs(app.db, workflow_id, status)
    app.emit(rows, fmt, lambda data: _jobs_table(data, workflow_id, status))


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

    app.emit(explain_job(app.db, workflow_id, job), fmt, _explain_view)


# -- rendering -----------------------------------------------------------------------------------
def _jobs_table(rows: list[dict[str, Any]], workflow_id: int, status: str | None):  # noqa: ANN202
    from rich.table import Table
    from rich.text import Text

    from torc_slurm.reports import human_bytes, human_seconds

    where = f" with status {status}" if status else ""
    table = Table(box=None, pad_edge=False,
                  title=None if rows else f"Workflow {workflow_id} has no jobs{where}", title_justify="left")
    for name, justify in (("ID", "right"), ("Name", "left"), ("Status", "left"), ("Attempt", "right"),
                          ("RC", "right"), ("CPUs", "right"), ("GPUs", "right"), ("Memory", "right"),
                          ("Runtime", "right"), ("Scheduler", "left")):
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for r in rows:
        style = _STYLES.get(r["status"], "")
        table.add_row(str(r["id"]), Text(r["name"]), Text(r["status"], style=style),
                      str(r["attempt"]), "-" if r["return_code"] is None else str(r["return_code"]),
                      str(r["num_cpus"]), str(r["num_gpus"]), human_bytes(r["memory_bytes"]),
                      human_seconds(r["runtime_s"]), Text(r["scheduler"] or "-"))
    if rows:
        table.caption = f"{len(rows):,} jobs{where}"
        table.caption_justify = "left"
    return table


def _explain_view(report: dict[str, Any]):  # noqa: ANN202
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
        parts.append(_results_table(report["results"]))
    return Group(*parts)


def _results_table(results: list[dict[str, Any]]):  # noqa: ANN202
    from rich.table import Table
    from rich.text import Text

    from torc_slurm.reports import human_bytes, human_seconds

    table = Table(title="Attempts", title_justify="left", box=None, pad_edge=False)
    for name, justify in (("Attempt", "right"), ("Status", "left"), ("RC", "right"), ("Host", "left"),
                          ("Started", "left"), ("Exec time", "right"), ("Peak memory", "right"),
                          ("Message", "left")):
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for r in results:
        rc = "-" if r["return_code"] is None else str(r["return_code"])
        if r.get("signal"):
            rc += f" (signal {r['signal']})"
        started = (datetime.datetime.fromtimestamp(r["started_at"]).strftime("%m-%d %H:%M:%S")
                   if r["started_at"] else "-")
        style = _STYLES.get(r["status"], "")
        table.add_row(str(r["attempt"]), Text(r["status"], style=style), rc,
                      Text(r["hostname"] or "-"), started, human_seconds(r["exec_s"]),
                      human_bytes(r["peak_memory_bytes"]), Text(r["message"] or ""))
    return table
