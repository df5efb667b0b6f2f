"""`torc workflows actions ID`: one line per workflow action; and the login-node observer that
`workflows init` runs (it performs the actions its initialization made due)."""

from __future__ import annotations

import time

import click

from torc_slurm.cli.app import format_option
from torc_slurm.cli.workflows import workflows


def perform_due(app, workflow_id: int, source: str, *, site=None, backend=None, output_dir=None) -> None:
    """Claim and perform, here, the due actions (on_workflow_start after init); one line each.
    ``site``/``backend``/``output_dir``: what the command was given (`slurm submit --site -o`)."""
    from torc_slurm.slurm.actions import login_observe

    for claim, ok, message in login_observe(app.db, workflow_id, source, site=site, backend=backend,
                                            output_dir=output_dir):
        colour = "green" if ok else "red"
        app.err_console.print(f"[{colour}]{claim.label}[/]: {message}")


@workflows.command("actions")
@click.argument("workflow_id", metavar="ID", type=int)
@click.option("--retry", "retry", type=click.IntRange(min=1), metavar="N",
              help="Re-arm failed action N (as numbered in the list): it is due again, its attempts counted "
                   "afresh; the next observer (a runner, `slurm watch`) performs it.")
@format_option
@click.pass_obj
def actions(app, workflow_id: int, retry: int | None, fmt: str) -> None:
    """The workflow's actions: trigger, type, state, who performed them and what came of it.

    \b
    state: waiting (trigger not reached), due (reached; the next observer claims it),
    claimed (being performed), done, failed (a Slurm error that may pass is retried with a
    backoff, up to TORC_ACTION_MAX_ATTEMPTS, 5; then --retry N re-arms it), skipped (not applicable here), per runner
    (on_worker_start/complete: every runner performs it itself)."""
    from torc_slurm.store.actions import list_actions
    from torc_slurm.store.workflows import get_workflow

    get_workflow(app.db, workflow_id)
    if retry is not None:
        from torc_slurm.errors import QueueError
        from torc_slurm.store.actions import retry_failed

        try:
            retry_failed(app.db, workflow_id, retry)
        except QueueError as exc:
            app.abort(str(exc), 1)
        app.err_console.print(f"action #{retry} is due again")
    app.emit(list_actions(app.db, workflow_id), fmt, _table)


def _table(rows):
    """Within 80 columns: '#', trigger, type, progress, state, attempts, what it did."""
    from rich.table import Table

    table = Table(title="Actions", title_justify="left", box=None, pad_edge=False, padding=(0, 2, 0, 0),
                  header_style="bold")
    table.add_column("#", no_wrap=True, justify="right")
    table.add_column("trigger", no_wrap=True)
    table.add_column("type", no_wrap=True)
    table.add_column("jobs", no_wrap=True, justify="right")
    table.add_column("state", no_wrap=True)
    table.add_column("by", no_wrap=True, overflow="ellipsis", max_width=10)
    table.add_column("result", overflow="fold", min_width=10)
    for row in rows:
        result = row["result"] or {}
        what = (", ".join(result.get("slurm_job_ids") or []) or result.get("message") or result.get("reason") or "")
        table.add_row(str(row["idx"] + 1), row["trigger"].removeprefix("on_"), row["type"].replace("_", " "),
                      f"{row['reached']}/{row['size']}" if row["size"] else "-",
                      row["state"].replace("_", " ") + (f" x{row['attempts']}" if row["attempts"] > 1 else ""),
                      row["claimed_by"] or "-", what)
    if not rows:
        table.caption = "no actions in this workflow's spec"
    else:
        table.caption = f"at {time.strftime('%H:%M:%S')}; jobs: matched jobs that reached the trigger"
    return table
