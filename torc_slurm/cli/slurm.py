"""`torc slurm …` (schedule-nodes, run-jobs, status, cancel) and `torc submit`."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import click

from torc_slurm.cli.app import format_option


@click.group("slurm")
def slurm() -> None:
    """Run a workflow on Slurm allocations that share its queue file."""


def _site(name: str | None, backend):  # noqa: ANN001
    from torc_slurm.slurm.sites import detect_current_site, load_site

    return load_site(name) if name else detect_current_site(backend)


@slurm.command("schedule-nodes")
@click.argument("workflow_id", type=int)
@click.option("-s", "--scheduler", help="The slurm_schedulers entry to use (optional when the spec has one).")
@click.option("-n", "--num-hpc-jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="How many allocations to submit.")
@click.option("--max-parallel-jobs", type=click.IntRange(min=1),
              help="Queue-depth mode on each node: run up to N jobs at once, ignoring resources.")
@click.option("-o", "--output", "output_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where scripts, Slurm logs and job stdio go (default: <working dir>/torc_output).")
@click.option("--site", help="A site config name or file (default: detected from Slurm's ClusterName).")
@click.option("--keep-submission-scripts", is_flag=True, help="Keep the rendered sbatch scripts.")
@click.option("--force", is_flag=True,
              help="Submit even when the checks refuse: input files no job produces, the scheduler against its "
                   "partition (MaxTime, MaxNodes, GRES), and jobs that cannot run in the allocation.")
@click.option("--dry-run", is_flag=True,
              help="Print the sbatch script and what `sbatch --test-only` says of it; submit nothing.")
@click.pass_obj
def schedule_nodes(app, workflow_id: int, scheduler, num_hpc_jobs, max_parallel_jobs, output_dir, site,
                   keep_submission_scripts, force, dry_run) -> None:
    """Submit NUM_HPC_JOBS Slurm allocations that run WORKFLOW_ID's jobs, one runner per node.

    Before submitting, the scheduler is checked against its partition as Slurm describes it
    (cached in the queue for the workflow's life; the site config's table when Slurm cannot say),
    and the unfinished jobs it would serve against what one allocation gives: it refuses, with
    counts, when none of them could run there. --force submits anyway."""
    from torc_slurm.slurm.allocations import ScheduleRequest, schedule_nodes as schedule
    from torc_slurm.store.workflows import ensure_initialized, get_workflow

    db = app.db
    get_workflow(db, workflow_id)
    backend = _backend_or_none() if dry_run else _backend()
    site_config = _site(site, backend)
    request = ScheduleRequest(workflow_id, scheduler, num_hpc_jobs, max_parallel_jobs, output_dir,
                              keep_submission_scripts, dry_run, force)
    if dry_run:
        result = schedule(db, backend, site_config, request)
        click.echo(result.script, nl=False)
        app.note(f"(dry run: would submit {num_hpc_jobs} allocation(s) of scheduler {result.scheduler}, "
                 f"site {site_config.name})")
        # stdout holds the script alone (so it can be piped or saved); Slurm's answer goes to stderr
        _print_test_only(app, backend, result.script, result.scheduler, err=True)
        _print_problems(app, result.problems, result.cluster, force, err=True)
        return
    ensure_initialized(db, workflow_id, force=force)
    result = schedule(db, backend, site_config, request)
    for problem in result.problems:
        app.note(f"warning (--force): {problem}")
    app.console.print(f"Submitted {len(result.slurm_job_ids)} allocation(s) of scheduler {result.scheduler} "
                      f"(site {site_config.name}): {', '.join(result.slurm_job_ids)}")


def _backend():  # noqa: ANN202
    from torc_slurm.slurm.backend import get_backend

    return get_backend()


def _backend_or_none():  # noqa: ANN202
    """The backend, or None where Slurm is not installed (a dry run still renders and checks)."""
    from torc_slurm.errors import SlurmError

    try:
        return _backend()
    except SlurmError:
        return None


def _print_test_only(app, backend, script: str, scheduler: str, *, err: bool = False) -> None:  # noqa: ANN001
    """Run ``sbatch --test-only`` on ``script`` and print Slurm's answer (or its refusal)."""
    import tempfile

    from torc_slurm.errors import SlurmError

    if backend is None:
        click.echo(f"sbatch --test-only ({scheduler}): not run: no Slurm here", err=err)
        return
    with tempfile.NamedTemporaryFile("w", suffix=".sh", prefix="torc_test_only_") as handle:
        handle.write(script)
        handle.flush()
        try:
            answer = backend.test_only(Path(handle.name))
        except SlurmError as exc:
            answer = f"error: {exc}"
    click.echo(f"sbatch --test-only ({scheduler}): {answer}", err=err)


def _print_problems(app, problems: list[str], cluster, force: bool, *, err: bool = False) -> None:  # noqa: ANN001
    if not problems:
        return
    origin = f" (partitions from {cluster.source})" if cluster else ""
    click.echo(("would submit anyway (--force)" if force else "would refuse to submit") + origin + ":", err=err)
    for problem in problems:
        click.echo(f"  - {problem}", err=err)
    if not force:
        app.abort("the checks refuse this submission; --force submits anyway", 1)


@slurm.command("plan")
@click.argument("workflow_id", type=int)
@click.option("--site", help="A site config name or file (default: detected from Slurm's ClusterName).")
@format_option
@click.pass_obj
def plan(app, workflow_id: int, site, fmt: str) -> None:
    """How many allocations of each scheduler WORKFLOW_ID's unfinished jobs need, stage by stage.

    Simulates the runner's packer over the jobs' declared resources on one node of each
    scheduler's partition for its walltime; stages follow the dependencies (a stage starts when the
    one before it is done). Consecutive stages whose times fit one walltime share allocations (a
    wave); the total per scheduler is what `torc submit` submits. Makespan leaves queue waits out."""
    from torc_slurm.slurm.allocations import plan_workflow
    from torc_slurm.store.workflows import get_workflow

    get_workflow(app.db, workflow_id)
    backend = _backend_or_none()
    result, cluster = plan_workflow(app.db, workflow_id, backend, _site(site, backend))
    data = {"workflow_id": workflow_id, "partitions_from": cluster.source if cluster else None, **result.to_dict()}
    app.emit(data, fmt, _plan_table)


def _waves(waves: list[list[int]]) -> str:
    """' (waves: stages 1-2, 3)': the stages that share allocations, one after the other."""
    if sum(len(w) for w in waves) < 2:
        return ""
    return " (waves: stages " + ", ".join(f"{w[0]}-{w[-1]}" if len(w) > 1 else f"{w[0]}" for w in waves) + ")"


def _plan_table(data):  # noqa: ANN001, ANN202
    from rich.table import Table

    from torc_slurm.slurm.fit import human_seconds

    table = Table(title=f"Plan for workflow {data['workflow_id']}", title_justify="left", caption_justify="left",
                  box=None, pad_edge=False, padding=(0, 2, 0, 0), header_style="bold")
    for name, justify in (("scheduler", "left"), ("stage", "right"), ("jobs", "right"), ("node-hours", "right"),
                          ("allocations", "right"), ("time", "right")):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for sched in data["schedulers"]:
        for stage in sched["stages"]:
            table.add_row(sched["scheduler"], str(stage["stage"]), str(stage["jobs"]), f"{stage['node_hours']:.2f}",
                          f"{stage['allocations']} x {sched['nodes']} node(s)", human_seconds(stage["duration_s"]))
    totals = "; ".join(f"{s['scheduler']}: {s['allocations']} allocation(s) of {s['nodes']} node(s), "
                       f"walltime {human_seconds(s['walltime_s'])}" + _waves(s["waves"])
                       for s in data["schedulers"] if s["allocations"])
    caption = [f"expected makespan {human_seconds(data['makespan_s'])} (queue waits not included)"]
    if totals:
        caption.append(totals)
    if data["unplaceable_jobs"]:
        caption.append(f"{data['unplaceable_jobs']} job(s) fit no scheduler and are not planned")
    caption.append(f"partitions from {data['partitions_from'] or 'nowhere (node size: the biggest job)'}")
    table.caption = "\n".join(caption)
    return table


@slurm.command("run-jobs")
@click.argument("db_path", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("workflow_id", type=int)
@click.argument("output_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("-s", "--scheduler", help="Claim jobs bound to this scheduler, and unbound jobs.")
@click.option("--strict-scheduler", is_flag=True, help="Claim only jobs bound to --scheduler.")
@click.option("--max-parallel-jobs", type=click.IntRange(min=1), help="Queue-depth mode: ignore resources.")
@click.option("--num-cpus", type=click.IntRange(min=1), envvar="TORC_NUM_CPUS", show_envvar=True,
              help="Override the detected CPUs (min of SLURM_CPUS_ON_NODE and the affinity mask).")
@click.option("--num-gpus", type=click.IntRange(min=0), help="Override the detected GPUs.")
@click.option("--memory-gb", type=click.FloatRange(min=0, min_open=True), help="Override the detected memory.")
@click.option("--end-time", type=float, help="Epoch seconds when this runner must be done (default: from Slurm).")
@click.option("--wait-for-new-jobs", type=click.FloatRange(min=0),
              help="Idle seconds before exiting (default: the spec's compute_node_wait_for_new_jobs_seconds).")
@click.option("--monitor-interval", type=click.FloatRange(min=0),
              help="Seconds between samples (default: the spec's resource_monitor.sample_interval_seconds).")
@click.pass_obj
def run_jobs(app, db_path: Path, workflow_id: int, output_dir: Path, scheduler, strict_scheduler,
             max_parallel_jobs, num_cpus, num_gpus, memory_gb, end_time, wait_for_new_jobs,
             monitor_interval) -> None:
    """The node-local runner an allocation starts on each node (what the sbatch script calls).

    Its lease timeout is the workflow's heartbeat_timeout_seconds."""
    import os

    from torc_slurm.runner.resources import detect_node
    from torc_slurm.runner.session import make_runner
    from torc_slurm.slurm import env as slurm_env
    from torc_slurm.slurm.probe import default_probe
    from torc_slurm.store.db import Database

    if not logging.getLogger().handlers or app.verbosity == 0:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    gpu_variable = os.environ.get("TORC_GPU_VISIBILITY_VARIABLE", "CUDA_VISIBLE_DEVICES")
    slurm_job = slurm_env.job_id()
    try:
        node = detect_node(num_cpus=num_cpus, num_gpus=num_gpus, memory_gb=memory_gb,
                           trust_slurm_cpus=os.environ.get("TORC_TRUST_SLURM_CPUS") == "1",
                           gpu_variable_names=(gpu_variable, "SLURM_JOB_GPUS", "CUDA_VISIBLE_DEVICES",
                                               "ROCR_VISIBLE_DEVICES"))
    except ValueError as exc:
        app.abort(str(exc), 2)
    db = Database(db_path, lock_kind=app.lock_kind, create=False)
    options: dict[str, object] = dict(
        scheduler=scheduler, strict_scheduler=strict_scheduler, max_parallel_jobs=max_parallel_jobs,
        end_time=_end_time(end_time, slurm_job, db_path), monitor_interval_s=monitor_interval,
        gpu_variable=gpu_variable,
        slurm_job_id=slurm_job, slurm_probe=default_probe(),
        allocation_nodes=int(os.environ.get("SLURM_JOB_NUM_NODES") or os.environ.get("SLURM_NNODES") or 1))
    if wait_for_new_jobs is not None:
        options["wait_for_new_jobs_s"] = wait_for_new_jobs
    options["actions"] = _action_performer(db_path, output_dir)
    runner = make_runner(db, workflow_id, node, output_dir=output_dir, **options)
    summary = runner.run()
    logging.getLogger("torc_slurm.runner").info(
        "runner %d done (%s): %d completed, %d failed, %d returned to ready", summary.runner_id,
        summary.exit_reason or runner.stop_reason, summary.completed, summary.failed, summary.terminated)
    from torc_slurm.reports.plot import plots_at_end  # resource_monitor.generate_plots

    note = plots_at_end(db, workflow_id, runner.config.output_dir, summary.exit_reason)
    if note:
        logging.getLogger("torc_slurm.runner").info("%s", note)


def _action_performer(db_path: Path, output_dir: Path):  # noqa: ANN202
    """The workflow actions this runner performs: run_commands always; schedule_nodes when the
    allocation's site (TORC_SITE, set by the sbatch script) lets compute nodes submit."""
    import os

    from torc_slurm.runner.actions import ActionPerformer
    from torc_slurm.slurm.actions import make_schedule, site_allows_compute_submit
    from torc_slurm.slurm.backend import get_backend
    from torc_slurm.slurm.sites import load_site

    try:
        site = load_site(os.environ["TORC_SITE"]) if os.environ.get("TORC_SITE") else None
    except Exception as exc:  # an unknown site: actions that need it are left to the login node
        logging.getLogger(__name__).warning("site %s: %s; schedule_nodes actions are left to `torc slurm watch`",
                                            os.environ.get("TORC_SITE"), exc)
        return ActionPerformer(can_schedule=False)
    if site is None:
        site = load_site("generic")
    return ActionPerformer(schedule=make_schedule(db_path, site, get_backend(), output_dir.absolute()),
                           can_schedule=site_allows_compute_submit(site))


def _end_time(fixed: float | None, slurm_job: str | None, db_path: Path):  # noqa: ANN202
    from torc_slurm.runner.walltime import EndTime

    if fixed is not None or slurm_job is None:
        return EndTime(fixed)
    from torc_slurm.slurm.backend import get_backend

    from torc_slurm.slurm.allocations import end_time_source

    return EndTime(source=end_time_source(db_path, slurm_job, get_backend()), refresh_s=300.0)


@slurm.command("status")
@click.argument("workflow_id", type=int)
@format_option
@click.pass_obj
def status(app, workflow_id: int, fmt: str) -> None:
    """The workflow's allocations: Slurm state, time left, nodes, runners and the jobs they hold.

    Allocations Slurm no longer knows are marked gone. No job changes hands here: runners and
    `torc workflows sync-status` take back the jobs of dead runners."""
    from torc_slurm.slurm.allocations import refresh_allocations
    from torc_slurm.slurm.backend import get_backend
    from torc_slurm.store.workflows import get_workflow

    get_workflow(app.db, workflow_id)
    rows = refresh_allocations(app.db, get_backend(), workflow_id)
    app.emit(rows, fmt, _status_table)


def _status_table(rows):  # noqa: ANN001, ANN202
    """Fits 80 columns: short words never wrap (``no_wrap``), long values (scheduler names, node
    lists) fold; the runners' last heartbeat goes in its own short column."""
    from rich.table import Table

    table = Table(title="Slurm allocations", title_justify="left", caption_justify="left", box=None,
                  pad_edge=False, padding=(0, 2, 0, 0), header_style="bold")
    table.add_column("job", no_wrap=True)
    table.add_column("scheduler", no_wrap=True, overflow="ellipsis", min_width=9)
    table.add_column("state", no_wrap=True)
    table.add_column("left", no_wrap=True, justify="right")
    table.add_column("nodes", overflow="fold", min_width=5)
    table.add_column("runners", no_wrap=True)
    table.add_column("beat", no_wrap=True, justify="right")
    table.add_column("jobs", no_wrap=True, justify="right")
    now = time.time()
    for row in rows:
        runners = row["runners"]
        active = [r for r in runners if r["status"] == "active"]
        lost = [r for r in runners if r["status"] == "lost"]
        runner_text = f"{len(active)} up" + (f", {len(lost)} lost" if lost else "")
        beat = f"{now - max(r['heartbeat_at'] for r in active):.0f}s ago" if active else "-"
        left = row["time_left_s"]
        table.add_row(row["slurm_job_id"], row["scheduler"], row["state"],
                      "-" if left is None else f"{left // 60}m" if left >= 60 else f"{left}s",
                      ", ".join(row["nodes"]) or "-", runner_text, beat,
                      f"{sum(r['jobs'] for r in runners)}/{sum(r['completed'] for r in runners)}")
    if not rows:
        table.caption = "no allocations yet: torc slurm schedule-nodes ID"
    else:
        table.caption = "left: until the allocation ends; beat: last heartbeat; jobs: held now/completed"
    return table


@slurm.command("cancel")
@click.argument("workflow_id", type=int)
@click.pass_obj
def cancel(app, workflow_id: int) -> None:
    """scancel the workflow's live allocations (their runners return unfinished jobs to ready)."""
    from torc_slurm.slurm.allocations import cancel_allocations
    from torc_slurm.store.workflows import get_workflow

    get_workflow(app.db, workflow_id)
    canceled = cancel_allocations(app.db, workflow_id)
    app.console.print(f"Canceled {len(canceled)} allocation(s){': ' + ', '.join(canceled) if canceled else ''}")


@click.command("submit")
@click.argument("spec", type=click.Path(dir_okay=False, exists=True))
@click.option("--site", help="A site config name or file (default: detected).")
@click.option("--max-allocations", type=click.IntRange(min=1), default=10, show_default=True,
              help="At most this many allocations per scheduler (the plan may want more: it says so).")
@click.option("-o", "--output", "output_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True,
              help="Skip the checks: input files no job produces, the schedulers against their partitions, "
                   "and jobs that cannot run in any allocation.")
@click.option("--new", "new", is_flag=True,
              help="Create a new workflow even if one was created from this spec file.")
@click.option("--dry-run", is_flag=True,
              help="Print the plan, the checks and `sbatch --test-only`'s answer for each scheduler; create and "
                   "submit nothing (the plan is made in a temporary queue).")
@click.pass_obj
def submit(app, spec: str, site, max_allocations: int, output_dir, force, new, dry_run) -> None:
    """Create a workflow from SPEC and schedule Slurm allocations for each of its schedulers.

    When a workflow was already created from this spec file (same absolute path), it is RESUMED:
    updated from the spec and reinitialized, so only jobs that are out of date run (`torc run
    SPEC` does the same); --new creates a new workflow. Each scheduler gets the allocations the
    plan (`torc slurm plan`) says its unfinished jobs need, summed over the stages, at most
    --max-allocations; none when nothing is left to run. Nothing is submitted when a check
    refuses (--force overrides)."""
    from torc_slurm.cli.run import create_or_resume
    from torc_slurm.compiler import compile_workflow
    from torc_slurm.slurm.allocations import default_scheduler
    from torc_slurm.spec.load import load_spec
    from torc_slurm.store.workflows import initialize_workflow

    backend = _backend_or_none() if dry_run else _backend()
    site_config = _site(site, backend)
    compiled = compile_workflow(load_spec(spec), spec)
    if not compiled.spec.slurm_schedulers:  # e.g. an OSMO workflow: one scheduler from the site
        scheduler = default_scheduler(compiled, site_config)
        compiled = compile_workflow(compiled.spec.model_copy(update={"slurm_schedulers": [scheduler]}), spec)
        app.note(f"{spec} names no slurm_schedulers: using '{scheduler.name}' (site {site_config.name}: partition "
                 f"{scheduler.partition}, {scheduler.nodes} node(s), walltime {scheduler.walltime})")
    if dry_run:
        _submit_dry_run(app, spec, compiled, backend, site_config, max_allocations, output_dir, force)
        return
    db = app.open_db(create=True)
    workflow_id, resumed = create_or_resume(app, db, Path(spec), compiled, new=new, force=force, stdout=True)
    if not resumed:
        initialize_workflow(db, workflow_id, force=force)
    from torc_slurm.cli.actions import perform_due

    # on_workflow_start and whatever else is due, with the site, backend and output folder given here
    perform_due(app, workflow_id, "submit", site=site_config, backend=backend, output_dir=output_dir)
    if any(a.action_type == "schedule_nodes" for a in compiled.spec.actions):
        app.note(f"workflow {workflow_id} schedules its allocations with its actions: nothing planned here "
                 "(`torc workflows actions` shows them)")
        return
    _submit_planned(app, db, workflow_id, compiled.spec, backend, site_config, max_allocations, output_dir,
                    force, dry_run=False)


def _submit_planned(app, db, workflow_id: int, spec, backend, site_config, max_allocations: int,  # noqa: ANN001
                    output_dir, force: bool, *, dry_run: bool) -> None:
    from torc_slurm.slurm.allocations import ScheduleRequest, job_shapes, plan_workflow, preflight, refuse
    from torc_slurm.slurm.allocations import schedule_nodes as schedule

    result, cluster = plan_workflow(db, workflow_id, backend, site_config, spec)
    if not any(s.jobs for s in result.schedulers) and not result.unplaceable:
        app.console.print(f"Workflow {workflow_id} is complete: nothing to submit")
        return
    wanted = {s.scheduler: s.allocations for s in result.schedulers if s.allocations}
    source = db.read("SELECT spec_source FROM workflows WHERE id = ?", (workflow_id,))[0]["spec_source"]
    chosen = [s for s in spec.slurm_schedulers if s.name in wanted] or list(spec.slurm_schedulers)
    problems = preflight(spec, chosen, job_shapes(db, workflow_id), cluster, site_config, source)
    if dry_run:
        app.emit({"workflow_id": workflow_id, "partitions_from": cluster.source if cluster else None,
                  **result.to_dict()}, "table", _plan_table)
    elif not force:
        refuse(problems, cluster)
    for name, count in wanted.items():
        if count > max_allocations:
            app.note(f"the plan wants {count} allocation(s) of scheduler {name}; --max-allocations cuts it to "
                     f"{max_allocations}")
    for name, count in wanted.items():
        count = min(count, max_allocations)
        request = ScheduleRequest(workflow_id, name, count, output_dir=output_dir, dry_run=dry_run, force=True)
        scheduled = schedule(db, backend, site_config, request)
        if dry_run:
            click.echo(f"would submit {count} allocation(s) of scheduler {name}")
            _print_test_only(app, backend, scheduled.script, name)
        else:
            app.console.print(f"Submitted {count} allocation(s) of scheduler {name}: "
                              f"{', '.join(scheduled.slurm_job_ids)}")
    if dry_run:
        _print_problems(app, problems, cluster, force)
    else:
        for problem in problems:
            app.note(f"warning (--force): {problem}")


def _submit_dry_run(app, spec: str, compiled, backend, site_config, max_allocations: int,  # noqa: ANN001
                    output_dir, force: bool) -> None:
    """The plan and the checks on a copy of the workflow in a temporary queue: nothing is created in
    the real queue and nothing is submitted."""
    import tempfile

    from torc_slurm.store.db import Database
    from torc_slurm.store.workflows import add_workflow, initialize_workflow

    with tempfile.TemporaryDirectory(prefix="torc_dry_run_") as folder:
        db = Database(Path(folder) / "torc.db", lock_kind=site_config.lock_kind, create=True)
        try:
            workflow_id = add_workflow(db, compiled, working_dir=Path.cwd(), source=str(Path(spec).absolute()))
            initialize_workflow(db, workflow_id, force=True)
            _submit_planned(app, db, workflow_id, compiled.spec, backend, site_config, max_allocations,
                            output_dir or Path.cwd() / "torc_output", force, dry_run=True)
        finally:
            db.close()


def run_jobs_main() -> None:
    """Console script `torc-slurm-job-runner DB ID OUTPUT_DIR [options]` = `torc slurm run-jobs …`."""
    from torc_slurm.cli import main

    main(["slurm", "run-jobs", *sys.argv[1:]])
