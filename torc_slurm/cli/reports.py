"""`torc reports results|resources ID`: what ran, where, and what it used."""

from __future__ import annotations

import click

from torc_slurm.cli.app import App, format_option, pass_app

RESULT_STATUSES = ("completed", "failed", "terminated", "lost", "canceled")


@click.group("reports")
def reports() -> None:
    """Reports on what ran: attempts, nodes, resource use."""


@reports.command("results")
@click.argument("workflow_id", metavar="ID", type=int)
@click.option("-s", "--status", type=click.Choice(RESULT_STATUSES), help="Only attempts with this outcome.")
@format_option
@pass_app
def results(app: App, workflow_id: int, status: str | None, fmt: str) -> None:
    """Every attempt of every job: outcome, return code, node, time and peak memory.

    Exits 1 when any attempt shown failed."""
    from torc_slurm.reports.results import results as query

    rows = query(app.db, workflow_id, status=status)
    app.emit(rows, fmt, _results_table)
    if any(r["status"] == "failed" for r in rows):
        raise click.exceptions.Exit(1)


@reports.command("resources")
@click.argument("workflow_id", metavar="ID", type=int)
@format_option
@pass_app
def resources(app: App, workflow_id: int, fmt: str) -> None:
    """Declared vs used, per resource_requirements: are the requests right-sized?"""
    from torc_slurm.reports.results import resource_summary

    app.emit(resource_summary(app.db, workflow_id), fmt, _resources_table)


def _results_table(rows):  # noqa: ANN001, ANN202
    from rich.table import Table

    from torc_slurm.reports import human_bytes, human_seconds

    table = Table(title="Attempts")
    for column in ("job", "attempt", "status", "reason", "rc", "node", "exec", "peak memory", "cpu time", "message"):
        table.add_column(column)
    for r in rows:
        code = f"sig {r['signal']}" if r["signal"] is not None else ("-" if r["return_code"] is None else str(r["return_code"]))
        table.add_row(r["job"], str(r["attempt"]), r["status"], r.get("reason") or "-", code, r["node"] or "-",
                      human_seconds(r["exec_s"]),
                      human_bytes(r["peak_memory_bytes"] or r["peak_rss_bytes"]), human_seconds(r["cpu_time_s"]),
                      r["message"] or "")
    return table


def _resources_table(rows):  # noqa: ANN001, ANN202
    from rich.table import Table

    from torc_slurm.reports import human_bytes, human_seconds

    table = Table(title="Declared vs used (completed attempts)")
    for column in ("requirements", "attempts", "CPUs", "memory asked", "peak memory", "runtime asked",
                   "longest run", "mean run", "peak CPU %"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["name"], str(r["attempts"]), str(r["num_cpus"]), human_bytes(r["memory_bytes"]),
                      human_bytes(r["peak_memory_bytes"]), human_seconds(r["runtime_s"]),
                      human_seconds(r["max_exec_s"]), human_seconds(r["avg_exec_s"]),
                      "-" if r["peak_cpu_percent"] is None else f"{r['peak_cpu_percent']:.0f}")
    return table
