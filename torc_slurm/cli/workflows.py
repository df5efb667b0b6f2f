"""``torc workflows …``: create, initialize, list, inspect, cancel and delete workflows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from torc_slurm.cli.app import App, can_prompt, format_option, pass_app
from torc_slurm.states import FINISHED

_COUNT_LABELS = {
    "jobs": "jobs",
    "dependency_sets": "dependency sets",
    "logical_dependencies": "logical dependencies",
    "stored_dependency_rows": "stored dependency rows",
    "files": "files",
    "user_data": "user data",
}


@click.group("workflows")
def workflows() -> None:
    """Create, initialize, inspect, cancel and delete workflows in the queue file."""


@workflows.command("create")
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Validate and count only; write nothing (no DB file is created).")
@format_option
@pass_app
def create(app: App, spec: Path, dry_run: bool, fmt: str) -> None:
    """Compile SPEC (YAML, JSON or JSON5; a torc spec as it is, or an OSMO workflow) into a new workflow.

    Prints the new workflow's id and what it holds: jobs, dependency sets, logical dependencies
    (one per job and prerequisite pair), the dependency rows actually stored, and files. The
    workflow is not initialized yet: `torc workflows init ID` or `torc run ID` does that.
    """
    from torc_slurm.compiler import compile_workflow
    from torc_slurm.spec.load import load_spec

    compiled = compile_workflow(load_spec(spec), source=str(spec))
    counts = compiled.counts()
    if dry_run:
        app.emit({"dry_run": True, "spec": str(spec), "counts": counts}, fmt,
                 lambda d: _counts_table(f"{spec} is valid; dry run, nothing was written.", d["counts"]))
        return

    from torc_slurm.store.workflows import add_workflow

    workflow_id = add_workflow(app.open_db(create=True), compiled, working_dir=Path.cwd(),
                               source=str(spec.absolute()))
    app.emit({"workflow_id": workflow_id, "counts": counts}, fmt,
             lambda d: _counts_table(f"Created workflow {workflow_id}", d["counts"]))


@workflows.command("init")
@click.argument("workflow_id", metavar="ID", type=int)
@click.option("--force", is_flag=True,
              help="Initialize even if input files no job produces are missing, or the workflow already ran "
                   "(which resets every job).")
@pass_app
def init(app: App, workflow_id: int, force: bool) -> None:
    """Initialize workflow ID so its jobs can run.

    Jobs with no prerequisites become ready, the others blocked.

    Refuses when input files that no job produces do not exist (it names the files and the jobs
    that need them), and when the workflow already has finished jobs, since initializing resets
    them; --force skips both checks.
    """
    from torc_slurm.store.workflows import get_workflow, initialize_workflow, status_counts

    workflow = get_workflow(app.db, workflow_id)
    if workflow.status != "uninitialized" and not force:
        finished = sum(n for s, n in status_counts(app.db, workflow_id).items()
                       if s in FINISHED)
        if finished:
            app.abort(f"workflow {workflow_id} is {workflow.status} and {finished} of its jobs have finished; "
                      "initializing would reset them. Pass --force to reset anyway.")
    initialize_workflow(app.db, workflow_id, force=force)
    counts = status_counts(app.db, workflow_id)
    app.console.print(f"Initialized workflow {workflow_id}: {counts['ready']:,} ready, "
                      f"{counts['blocked']:,} blocked")
    from torc_slurm.cli.actions import perform_due

    perform_due(app, workflow_id, "init")


@workflows.command("reset-status")
@click.argument("workflow_id", metavar="ID", type=int)
@click.option("--failed-only", is_flag=True,
              help="Reset the failed, canceled and terminated jobs (timed-out ones included).")
@click.option("--job", "job_names", multiple=True, metavar="NAME|REGEX",
              help="Reset this job (a name, else a regular expression searched in the names); repeatable.")
@click.option("--dry-run", is_flag=True, help="List what would be reset and why; change nothing.")
@format_option
@pass_app
def reset_status(app: App, workflow_id: int, failed_only: bool, job_names: tuple[str, ...], dry_run: bool,
                 fmt: str) -> None:
    """Set jobs of workflow ID to run again, with everything downstream of them.

    Without --failed-only or --job, every job is reset. Completed jobs outside the reset keep their
    results; every attempt is kept, attempt numbers keep growing, and the reset starts a new run
    (its results carry the new run id). Refuses while a job it would change is pending or running.
    Run the workflow again with `torc run ID` or `torc slurm schedule-nodes ID`."""
    from torc_slurm.store.restarts import plan_reset

    restart = plan_reset(app.db, workflow_id, failed_only=failed_only, jobs=job_names)
    _restart_outcome(app, restart, dry_run, fmt)


@workflows.command("reinit")
@click.argument("workflow_id", metavar="ID", type=int)
@click.option("--dry-run", is_flag=True, help="List what would run again and why; change nothing.")
@click.option("--force", is_flag=True, help="Skip the check that input files no job produces exist.")
@format_option
@pass_app
def reinit(app: App, workflow_id: int, dry_run: bool, force: bool, fmt: str) -> None:
    """Start a new run of workflow ID that reruns only what is out of date.

    Reruns the jobs that did not complete (failed, canceled, terminated), the completed jobs whose
    input files changed since the workflow was (re)initialized (content hash for files up to
    64 MiB, else size and mtime), whose output files are missing, or whose command, env,
    resources, files or input user data changed since they ran, and everything downstream of
    them. An uninitialized workflow is initialized."""
    from torc_slurm.store.restarts import plan_reinit, reinit as do_reinit

    if dry_run:
        restart = plan_reinit(app.db, workflow_id, force=force)
        if restart.initialize:
            app.console.print(f"Workflow {workflow_id} was never initialized: would initialize it "
                              f"(run {restart.run_id + 1}); every job runs")
            return
        _restart_outcome(app, restart, True, fmt)
        return
    restart, run_id = do_reinit(app.db, workflow_id, force=force)
    if restart.initialize:
        app.console.print(f"Workflow {workflow_id} was never initialized: initialized it (run {run_id}); every job runs")
        return
    _restart_outcome(app, restart, False, fmt, run_id=run_id)


@workflows.command("update")
@click.argument("workflow_id", metavar="ID", type=int)
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="List what would be added, removed and rerun; change nothing.")
@format_option
@pass_app
def update(app: App, workflow_id: int, spec: Path, dry_run: bool, fmt: str) -> None:
    """Compile an edited SPEC into workflow ID, rerunning only what changed.

    Jobs are matched by name. Completed jobs whose command, invocation_script, env, resources,
    files and input user data are unchanged keep their results; new jobs are added, jobs no
    longer in the spec are removed (their results are kept), and changed jobs are reset with
    everything downstream of them. The spec's name must be the workflow's (a renamed spec is a
    new workflow: `torc workflows create`). Refuses while any job is pending or running."""
    from torc_slurm.compiler import compile_workflow
    from torc_slurm.spec.load import load_spec
    from torc_slurm.store.spec_update import update_workflow

    compiled = compile_workflow(load_spec(spec), source=str(spec))
    result = update_workflow(app.db, workflow_id, compiled, source=str(spec.absolute()), dry_run=dry_run)
    app.emit(result.as_dict(), fmt, lambda d: _text(update_lines(d)))


def _restart_outcome(app: App, restart, dry_run: bool, fmt: str, *, run_id: int | None = None) -> None:  # noqa: ANN001
    """Print what a restart would do (dry run) or apply it and print what it did: the same lines."""
    restart.check_not_busy()  # a dry run says so too
    if not dry_run:
        run_id = restart.apply(app.db) if run_id is None else run_id
    data = restart_dict(restart, dry_run, run_id)
    app.emit(data, fmt, lambda d: _text(restart_lines(d)))


def restart_dict(restart, dry_run: bool, run_id: int | None) -> dict[str, Any]:  # noqa: ANN001
    return {"workflow_id": restart.workflow_id, "kind": restart.kind, "dry_run": dry_run,
            "run_id": restart.run_id if dry_run or not restart.changes else run_id,
            "not_run": restart.not_run,
            "changes": [{"job": c.name, "old": c.old, "new": c.new, "reason": c.reason} for c in restart.changes]}


def restart_lines(data: dict[str, Any]) -> list[str]:
    """A header, then one line per job: `name  old -> new  reason` (the same in a dry run)."""
    changes = data["changes"]
    workflow = data["workflow_id"]
    verb = "reset" if data["kind"] == "reset" else "rerun"
    if not changes:
        head = f"Workflow {workflow}: nothing to {verb}"
    elif data["dry_run"]:
        head = f"Workflow {workflow}: would {verb} {len(changes):,} job(s) in run {data['run_id'] + 1}:"
    else:
        head = f"Workflow {workflow}: {'reset' if verb == 'reset' else 'rerunning'} {len(changes):,} job(s) in run {data['run_id']}:"
    if data.get("not_run"):
        head += f" ({data['not_run']:,} other job(s) have not run yet)" if changes else \
            f"; {data['not_run']:,} job(s) have not run yet"
    width = max((len(c["job"]) for c in changes), default=0)
    move = max((len(c["old"]) + len(c["new"]) for c in changes), default=0) + 4
    return [head, *(f"  {c['job']:<{width}}  {c['old'] + ' -> ' + c['new']:<{move}}  {c['reason']}" for c in changes)]


def _text(lines: list[str]):  # noqa: ANN202
    from rich.text import Text  # plain text: job names are never read as markup

    return Text("\n".join(lines))


def update_lines(data: dict[str, Any]) -> list[str]:
    lines = [f"Workflow {data['workflow_id']}: " + ("would update" if data["dry_run"] else "updated") +
             f" from {data['spec']}: {len(data['added'])} added, {len(data['removed'])} removed, "
             f"{len(data['changed'])} changed, {len(data['kept'])} kept"]
    lines += [f"  added    {name}" for name in data["added"]]
    lines += [f"  removed  {name}" for name in data["removed"]]
    lines += [f"  changed  {c['job']}: {c['what']}" for c in data["changed"]]
    if data.get("reset"):
        lines += restart_lines(data["reset"])
    return lines


@workflows.command("list")
@format_option
@pass_app
def list_(app: App, fmt: str) -> None:
    """List the workflows in the queue file, with job totals."""
    from torc_slurm.reports.jobs import job_totals
    from torc_slurm.store.workflows import list_workflows

    totals = job_totals(app.db)
    data = [{"id": w.id, "name": w.name, "status": w.status, "user": w.user,
             **totals.get(w.id, {"jobs": 0, "done": 0, "failed": 0}),
             "created_at": w.created_at, "working_dir": w.working_dir, "spec_source": w.spec_source}
            for w in list_workflows(app.db)]
    app.emit(data, fmt, lambda d: _workflows_table(d, app.console.width))


@workflows.command("status")
@click.argument("workflow_id", metavar="ID", type=int)
@click.option("--watch", is_flag=True,
              help="Refresh in place until the workflow is done (or Ctrl-C); without a terminal, print one "
                   "line per change.")
@click.option("--interval", type=click.FloatRange(min=1.0), default=5.0, show_default=True, metavar="S",
              help="Seconds between two refreshes of --watch (at least 1).")
@format_option
@pass_app
def status(app: App, workflow_id: int, watch: bool, interval: float, fmt: str) -> None:
    """Show where workflow ID stands.

    Jobs per state (pending: claimed by a runner, not started yet; running: started), done/total,
    elapsed time and an ETA from the exec times of recent attempts, the live Slurm allocations and
    runners with their time left, the last failures, and the jobs that cannot run, by reason (no
    scheduler fits, no live runner fits, upstream failed). Each look is one short locked read.

    Exits 1 if any job failed, was canceled or was terminated, and 0 otherwise (--watch too, once
    the workflow is done; 130 after Ctrl-C).
    """
    from torc_slurm.reports.status import workflow_status

    if watch:
        _watch(app, workflow_id, interval, fmt)
        return
    report = workflow_status(app.db, workflow_id)
    from torc_slurm.cli.status_view import status_view

    app.emit(report, fmt, lambda d: status_view(d, app.console.width))
    if report["failed"]:
        raise click.exceptions.Exit(1)


def _watch(app: App, workflow_id: int, interval: float, fmt: str) -> None:
    """Refresh until the workflow is done: rich Live on a terminal, else one line (or one JSON
    object with -f json) per change of the counts. One locked read per refresh."""
    import datetime
    import json
    import threading

    from torc_slurm.reports.status import change_line, counts_key, workflow_status

    stop = threading.Event()   # waits between refreshes; nothing sets it but the tests' patience
    report = workflow_status(app.db, workflow_id)
    try:
        if app.console.is_terminal and fmt != "json":
            from rich.live import Live

            from torc_slurm.cli.status_view import watch_view

            with Live(watch_view(report, app.console.width, interval), console=app.console, auto_refresh=False,
                      redirect_stdout=False, redirect_stderr=False) as live:
                while not report["finished"]:
                    stop.wait(interval)
                    report = workflow_status(app.db, workflow_id)
                    live.update(watch_view(report, app.console.width, interval), refresh=True)
        else:
            last = None
            while True:
                if counts_key(report) != last:
                    last = counts_key(report)
                    if fmt == "json":
                        click.echo(json.dumps(report, default=str))
                    else:
                        click.echo(change_line(report, datetime.datetime.now().strftime("%H:%M:%S")))
                if report["finished"]:
                    break
                stop.wait(interval)
                report = workflow_status(app.db, workflow_id)
    except KeyboardInterrupt:
        raise click.exceptions.Exit(130) from None
    if report["failed"]:
        raise click.exceptions.Exit(1)


@workflows.command("sync-status")
@click.argument("workflow_id", metavar="ID", type=int)
@pass_app
def sync_status(app: App, workflow_id: int) -> None:
    """Take back the jobs of workflow ID's runners that are provably dead.

    Proof is a runner whose process on this host is gone, or whose Slurm allocation Slurm reports
    ended; their jobs' leftover processes on this host are killed first. A runner that cannot be
    checked from here is listed with what to do. Live runners do this themselves, and also take
    over from runners whose lease expired; run this after a node loss when no runner is left."""
    import time

    from torc_slurm.store.workflows import get_workflow

    get_workflow(app.db, workflow_id)
    peers, verdicts, taken = _sweep_dead_runners(app, workflow_id)
    for request in verdicts.sweep:
        app.console.print(f"Runner {request.runner_id} is dead ({request.reason})")
    app.console.print(f"Returned {taken} job(s) of dead runners to ready")
    swept = {r.runner_id for r in verdicts.sweep}
    for peer in peers:
        if peer.runner_id in swept:
            continue
        where = f"Slurm allocation {peer.slurm_job_id}" if peer.slurm_job_id else f"pid {peer.pid}"
        app.console.print(f"Runner {peer.runner_id} on {peer.hostname} ({where}) looks alive: last heartbeat "
                          f"{time.time() - peer.heartbeat_at:.0f} s ago by its own clock. If it is gone, end it "
                          f"({'scancel ' + peer.slurm_job_id if peer.slurm_job_id else 'kill it on ' + peer.hostname}) "
                          "and run this again; live runners take it over once its lease expires.")


@workflows.command("cancel")
@click.argument("workflow_id", metavar="ID", type=int)
@pass_app
def cancel(app: App, workflow_id: int) -> None:
    """Cancel workflow ID and its Slurm allocations.

    Every unfinished job becomes canceled (runners stop the running ones) and the workflow's live
    Slurm allocations are scancel'ed.
    """
    from torc_slurm.store.workflows import cancel_workflow

    count = cancel_workflow(app.db, workflow_id)
    message = f"Canceled workflow {workflow_id}: {count:,} unfinished jobs canceled"
    allocations = _cancel_allocations(app, workflow_id)
    if allocations:
        message += f"; Slurm allocations canceled: {', '.join(map(str, allocations))}"
    app.console.print(message)


@workflows.command("delete")
@click.argument("workflow_id", metavar="ID", type=int)
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation (needed when not at a terminal).")
@click.option("--force", is_flag=True,
              help="Stop the workflow's live runners first (cancel its jobs and allocations, wait for them).")
@click.option("--timeout", type=click.FloatRange(min=0), default=120.0, show_default=True,
              help="With --force: how long to wait for the runners to stop.")
@pass_app
def delete(app: App, workflow_id: int, yes: bool, force: bool, timeout: float) -> None:
    """Delete workflow ID and everything recorded about it.

    Refuses while runners of the workflow are live, unless --force, which cancels its jobs and
    Slurm allocations and waits for every runner to stop. Asks first unless --yes is given; when
    not at a terminal it refuses without --yes. Ids of deleted workflows are never reused.
    """
    from torc_slurm.store.workflows import delete_workflow, get_workflow, live_runners, status_counts

    workflow = get_workflow(app.db, workflow_id)
    _sweep_dead_runners(app, workflow_id)  # a runner killed with nothing left to do is not live
    live = live_runners(app.db, workflow_id)
    if live and not force:
        names = ", ".join(f"{r['id']} on {r['hostname']}" for r in live[:5])
        app.abort(f"workflow {workflow_id} has {len(live)} live runner(s) ({names}); stop them first, or pass "
                  "--force to cancel its jobs and allocations and wait for the runners to stop")
    if not yes:
        jobs = sum(status_counts(app.db, workflow_id).values())
        question = f"Delete workflow {workflow_id} ({workflow.name!r}, {jobs:,} jobs)?"
        if not can_prompt():
            app.abort(f"refusing to delete workflow {workflow_id} without confirmation; pass --yes")
        if not click.confirm(question, default=False, err=True):
            app.abort("nothing deleted")
    canceled = _cancel_allocations(app, workflow_id)
    if canceled:
        app.note(f"Canceled Slurm allocation(s) {', '.join(canceled)}")
    if live:
        _stop_runners(app, workflow_id, timeout)
    delete_workflow(app.db, workflow_id)
    app.console.print(f"Deleted workflow {workflow_id}")


# -- helpers ---------------------------------------------------------------------------------------
def _sweep_dead_runners(app: App, workflow_id: int):  # noqa: ANN202
    """(the live runners, the verdicts on them, jobs taken back): sweeps on evidence only."""
    from torc_slurm.runner.fencing import Fencer, host_key
    from torc_slurm.slurm.probe import default_probe
    from torc_slurm.store.queue import Queue

    queue = Queue(app.db, workflow_id)
    peers = queue.peers()
    verdicts = Fencer(my_host_key=host_key(), slurm=default_probe()).assess(peers, [], evidence_only=True)
    return peers, verdicts, queue.sweep(verdicts.sweep, by="torc workflows sync-status")


def _stop_runners(app: App, workflow_id: int, timeout: float) -> None:
    """Cancel the workflow's jobs (its runners kill them and, with nothing left to do, exit), take
    back the jobs of provably dead runners, and wait until no runner is live."""
    import time

    from torc_slurm.store.workflows import cancel_workflow, live_runners

    cancel_workflow(app.db, workflow_id)
    deadline = time.monotonic() + timeout
    while True:
        _sweep_dead_runners(app, workflow_id)
        live = live_runners(app.db, workflow_id)
        if not live:
            return
        if time.monotonic() >= deadline:
            app.abort(f"{len(live)} runner(s) of workflow {workflow_id} are still live after {timeout:.0f} s "
                      f"({', '.join(str(r['id']) for r in live)}); nothing deleted")
        time.sleep(0.5)


def _cancel_allocations(app: App, workflow_id: int) -> list[str]:
    """scancel the workflow's live Slurm allocations; their job ids (Slurm is asked only if any)."""
    from torc_slurm.slurm.allocations import cancel_allocations

    return cancel_allocations(app.db, workflow_id)


def _counts_table(title: str, counts: dict[str, int]):  # noqa: ANN202
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(justify="right")
    for key, value in counts.items():
        table.add_row(_COUNT_LABELS.get(key, key.replace("_", " ")), f"{value:,}")
    return Group(Text(title), table)


def _workflows_table(rows: list[dict[str, Any]], width: int = 80):  # noqa: ANN202
    """Fits the console without cutting a word: names and users fold, statuses and numbers never
    wrap; the creation time, then the user, are left out when it is narrow (``-f json`` has them)."""
    import datetime

    from rich.text import Text

    from torc_slurm.cli.status_view import fit

    cells = [[str(r["id"]), Text(r["name"]), r["status"], f"{r['jobs']:,}", f"{r['done']:,}",
              Text(f"{r['failed']:,}", style="red") if r["failed"] else "0", Text(r["user"] or "-"),
              datetime.datetime.fromtimestamp(r["created_at"]).strftime("%Y-%m-%d %H:%M")] for r in rows]
    return fit([("ID", "num"), ("Name", "text"), ("Status", "status"), ("Jobs", "num"), ("Done", "num"),
                ("Failed", "num"), ("User", "text"), ("Created", "word")], cells, width, drop=("Created", "User"),
               title=None if rows else "No workflows in this queue file")
