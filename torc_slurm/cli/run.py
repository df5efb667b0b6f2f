"""`torc run SPEC|ID`: create the workflow if given a spec, initialize it, run it on this machine."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from torc_slurm.states import DONE


@click.command("run")
@click.argument("spec_or_id")
@click.option("--num-cpus", type=click.IntRange(min=1), help="CPUs to use (default: this process's affinity mask).")
@click.option("--num-gpus", type=click.IntRange(min=0), help="GPUs to use (default: CUDA_VISIBLE_DEVICES etc.).")
@click.option("--memory-gb", type=click.FloatRange(min=0, min_open=True), help="Memory to pack into (default: all).")
@click.option("--max-parallel-jobs", type=click.IntRange(min=1),
              help="Queue-depth mode: run up to N jobs at once and ignore resource requirements.")
@click.option("--output", "output_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where job stdout/stderr go (default: <working dir>/torc_output).")
@click.option("--force", is_flag=True, help="Skip the check that input files no job produces exist.")
@click.option("--monitor-interval", type=click.FloatRange(min=0),
              help="Seconds between CPU/memory samples of running jobs (0 = off; default: the spec's "
                   "resource_monitor.sample_interval_seconds, 5).")
@click.option("--termination-grace", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="On Ctrl-C/SIGTERM: seconds jobs that support termination get to exit after SIGTERM "
                   "before every job still running is killed.")
@click.option("--new", "new", is_flag=True,
              help="With a spec file: create a new workflow even if one was created from this file.")
@click.option("--dry-execute", is_flag=True, hidden=True, help="Mark jobs completed without running them.")
@click.pass_obj
def run(app, spec_or_id: str, num_cpus, num_gpus, memory_gb, max_parallel_jobs, output_dir, force,
        monitor_interval, termination_grace, new, dry_execute) -> None:
    """Run a workflow on this machine until it is done.

    SPEC_OR_ID is a spec file or the id of a workflow in the DB. Given a spec file from which a
    workflow in the DB was created (the same absolute path), the run RESUMES that workflow: the
    edited spec is compiled into it (`torc workflows update`), then it is reinitialized (`torc
    workflows reinit`), so only jobs that are out of date run; what will run is printed first.
    --new creates a new workflow instead.
    Exits 0 when every job completed, 1 when any failed or could not run, 130 on Ctrl-C and 143 on
    SIGTERM (running jobs are stopped and returned to ready, so `torc run ID` resumes)."""
    from torc_slurm.runner.resources import detect_node
    from torc_slurm.runner.session import make_runner
    from torc_slurm.store.workflows import ensure_initialized

    db = app.open_db(create=True)
    workflow_id = _workflow_id(app, db, spec_or_id, new=new, force=force)
    ensure_initialized(db, workflow_id, force=force)
    try:
        node = detect_node(num_cpus=num_cpus, num_gpus=num_gpus, memory_gb=memory_gb)
    except ValueError as exc:
        app.abort(str(exc), 2)
    _warn_multi_node(app, db, workflow_id)
    with _Progress(app.console, workflow_id) as progress:
        runner = make_runner(db, workflow_id, node, output_dir=output_dir, max_parallel_jobs=max_parallel_jobs,
                             wait_for_new_jobs_s=None, monitor_interval_s=monitor_interval,
                             termination_grace_s=termination_grace, dry_execute=dry_execute,
                             on_progress=progress.update, actions=_action_performer())
        summary = runner.run()
    _plots_at_end(app, db, workflow_id, runner, summary)
    _report(app, db, workflow_id, summary, runner.stop_reason)


def _plots_at_end(app, db, workflow_id: int, runner, summary) -> None:
    """resource_monitor.generate_plots: a finished workflow's picture in its output folder."""
    from torc_slurm.reports.plot import plots_at_end

    note = plots_at_end(db, workflow_id, runner.config.output_dir, summary.exit_reason)
    if note:
        app.note(note)


def _action_performer():  # noqa: ANN202
    """Workflow actions under `torc run`: run_commands run here; schedule_nodes are not applicable."""
    from torc_slurm.runner.actions import ActionPerformer

    return ActionPerformer(can_schedule=False, no_slurm_reason="`torc run` runs the jobs on this machine; "
                           "no Slurm allocation is submitted")


def _warn_multi_node(app, db, workflow_id: int) -> None:
    """Jobs needing more than one node never run here: say so before anything runs."""
    rows = db.read("SELECT name, num_nodes FROM jobs WHERE workflow_id = ? AND num_nodes > 1"
                   " AND status NOT IN ('completed', 'canceled', 'disabled') ORDER BY rank LIMIT 4", (workflow_id,))
    if rows:
        named = ", ".join(f"{r['name']} ({r['num_nodes']} nodes)" for r in rows[:3]) + (" …" if len(rows) > 3 else "")
        app.err_console.print(f"[yellow]Warning:[/] `torc run` has one node, so jobs needing more never run here: "
                              f"{named}. Run the workflow on Slurm (`torc submit`).")


def _workflow_id(app, db, spec_or_id: str, *, new: bool, force: bool) -> int:
    if spec_or_id.isdigit() and not Path(spec_or_id).exists():
        return int(spec_or_id)
    from torc_slurm.compiler import compile_workflow
    from torc_slurm.spec.load import load_spec

    compiled = compile_workflow(load_spec(spec_or_id), spec_or_id)
    return create_or_resume(app, db, Path(spec_or_id), compiled, new=new, force=force)[0]


def find_workflow_from(db, spec: Path) -> int | None:
    """The newest workflow created (or last updated) from the spec file at ``spec``'s absolute path."""
    rows = db.read("SELECT id FROM workflows WHERE spec_source = ? ORDER BY id DESC LIMIT 1",
                   (str(spec.absolute()),))
    return rows[0]["id"] if rows else None


def create_or_resume(app, db, spec: Path, compiled, *, new: bool, force: bool,
                     stdout: bool = False) -> tuple[int, bool]:
    """(workflow id, resumed). Without ``new``, a workflow created from the same spec file is
    updated from it and reinitialized, and what will run again is printed (on stderr, or stdout
    with ``stdout``); otherwise a new workflow is created."""
    from torc_slurm.cli.workflows import restart_dict, restart_lines, update_lines
    from torc_slurm.store.restarts import reinit
    from torc_slurm.store.spec_update import update_workflow
    from torc_slurm.store.workflows import add_workflow

    source = str(spec.absolute())
    existing = None if new else find_workflow_from(db, spec)
    if existing is None:
        workflow_id = add_workflow(db, compiled, working_dir=Path.cwd(), source=source)
        click.echo(f"Created workflow {workflow_id} ({len(compiled.jobs)} jobs)", err=not stdout)
        return workflow_id, False
    updated = update_workflow(db, existing, compiled, source=source)
    lines = [f"Resumed workflow {existing} from {spec} (--new starts a new one)"]
    if updated.added or updated.removed or updated.changed:
        lines += update_lines({**updated.as_dict(), "reset": None})
    restart, run_id = reinit(db, existing, force=force)
    if restart.initialize:
        lines.append(f"Workflow {existing}: initialized (run {run_id}); every job will run")
    else:
        data = restart_dict(restart, False, run_id)
        by_update = {c.name for c in updated.changes}
        changes = [*({"job": c.name, "old": c.old, "new": c.new, "reason": c.reason} for c in updated.changes),
                   *(c for c in data["changes"] if c["job"] not in by_update)]
        data.update(changes=changes, run_id=run_id, not_run=data["not_run"] - (len(changes) - len(data["changes"])))
        lines += restart_lines(data)
    for line in lines:
        click.echo(line, err=not stdout)
    return existing, True


def _report(app, db, workflow_id: int, summary, stop_reason: str | None) -> None:
    from torc_slurm.states import UNFINISHED
    from torc_slurm.store.workflows import status_counts

    counts = status_counts(db, workflow_id)
    line = ", ".join(f"{n} {status}" for status, n in counts.items() if n)
    app.console.print(f"Workflow {workflow_id}: {line}")
    if stop_reason in ("SIGINT", "SIGTERM"):
        app.err_console.print(f"Interrupted ({stop_reason}): running jobs were stopped and returned to ready; "
                              f"`torc run {workflow_id}` resumes.")
        sys.exit(130 if stop_reason == "SIGINT" else 143)  # 128 + the signal's number, as shells report
    if summary.unrunnable:
        listed = "; ".join(summary.unrunnable[:10])
        app.abort(f"{len(summary.unrunnable)} ready jobs need more than this machine has: {listed}", 1)
    unfinished = sum(counts[s] for s in UNFINISHED)
    if unfinished:
        app.abort(f"{unfinished} jobs could not run here ({summary.exit_reason}); see `torc jobs list {workflow_id}`", 1)
    if counts["failed"] or counts["canceled"]:
        sys.exit(1)


class _Progress:
    """A rich progress bar on a terminal; one plain line per change otherwise."""

    def __init__(self, console, workflow_id: int) -> None:
        self.console = console
        self.workflow_id = workflow_id
        self._last: tuple[int, ...] | None = None
        self._bar = None

    def __enter__(self) -> "_Progress":
        if self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn(f"workflow {self.workflow_id}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=self.console)
            self._bar.start()
            self._task = self._bar.add_task("run", total=None, detail="")
        return self

    def update(self, counts: dict[str, int]) -> None:
        total = sum(counts.values())
        done = sum(counts.get(s, 0) for s in DONE)
        # claimed-but-not-started jobs are pending, not running (a 2-CPU runner claims ahead)
        key = (done, counts.get("failed", 0), counts.get("running", 0), counts.get("pending", 0))
        detail = (f"[green]{counts.get('completed', 0)} completed[/] [red]{key[1]} failed[/] {key[2]} running "
                  f"{key[3]} pending")
        if self._bar is not None:
            self._bar.update(self._task, total=total, completed=done, detail=detail)
        elif key != self._last:
            from torc_slurm.reports.status import progress_line

            print(progress_line(self.workflow_id, counts), flush=True)
        self._last = key

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
