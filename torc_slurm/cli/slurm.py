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
@click.option("--force", is_flag=True, help="Skip the check that input files no job produces exist.")
@click.option("--dry-run", is_flag=True, help="Print the sbatch script and submit nothing.")
@click.pass_obj
def schedule_nodes(app, workflow_id: int, scheduler, num_hpc_jobs, max_parallel_jobs, output_dir, site,
                   keep_submission_scripts, force, dry_run) -> None:
    """Submit NUM_HPC_JOBS Slurm allocations that run WORKFLOW_ID's jobs, one runner per node."""
    from torc_slurm.slurm.allocations import ScheduleRequest, schedule_nodes as schedule
    from torc_slurm.slurm.backend import get_backend
    from torc_slurm.store.workflows import ensure_initialized, get_workflow

    db = app.db
    get_workflow(db, workflow_id)
    backend = None if dry_run else get_backend()
    site_config = _site(site, backend)
    request = ScheduleRequest(workflow_id, scheduler, num_hpc_jobs, max_parallel_jobs, output_dir,
                              keep_submission_scripts, dry_run)
    if dry_run:
        result = schedule(db, None, site_config, request)
        click.echo(result.script, nl=False)
        app.note(f"(dry run: would submit {num_hpc_jobs} allocation(s) of scheduler {result.scheduler}, site {site_config.name})")
        return
    ensure_initialized(db, workflow_id, force=force)
    result = schedule(db, backend, site_config, request)
    app.console.print(f"Submitted {len(result.slurm_job_ids)} allocation(s) of scheduler {result.scheduler} "
                      f"(site {site_config.name}): {', '.join(result.slurm_job_ids)}")


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
@click.option("--monitor-interval", type=click.FloatRange(min=0), default=5.0, show_default=True)
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
        end_time=_end_time(end_time, slurm_job), monitor_interval_s=monitor_interval, gpu_variable=gpu_variable,
        slurm_job_id=slurm_job, slurm_probe=default_probe(),
        allocation_nodes=int(os.environ.get("SLURM_JOB_NUM_NODES") or os.environ.get("SLURM_NNODES") or 1))
    if wait_for_new_jobs is not None:
        options["wait_for_new_jobs_s"] = wait_for_new_jobs
    runner = make_runner(db, workflow_id, node, output_dir=output_dir, **options)
    summary = runner.run()
    logging.getLogger("torc_slurm.runner").info(
        "runner %d done (%s): %d completed, %d failed, %d returned to ready", summary.runner_id,
        summary.exit_reason or runner.stop_reason, summary.completed, summary.failed, summary.terminated)


def _end_time(fixed: float | None, slurm_job: str | None):  # noqa: ANN202
    from torc_slurm.runner.walltime import EndTime

    if fixed is not None or slurm_job is None:
        return EndTime(fixed)
    from torc_slurm.slurm.backend import get_backend

    backend = get_backend()

    def read() -> float | None:
        end = backend.end_time(slurm_job)
        return end.timestamp() if end else None

    return EndTime(source=read, refresh_s=300.0)


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
              help="At most this many allocations per scheduler.")
@click.option("-o", "--output", "output_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Skip the check that input files no job produces exist.")
@click.option("--new", "new", is_flag=True,
              help="Create a new workflow even if one was created from this spec file.")
@click.pass_obj
def submit(app, spec: str, site, max_allocations: int, output_dir, force, new) -> None:
    """Create a workflow from SPEC and schedule Slurm allocations for each of its schedulers.

    When a workflow was already created from this spec file (same absolute path), it is RESUMED:
    updated from the spec and reinitialized, so only jobs that are out of date run (`torc run
    SPEC` does the same); --new creates a new workflow. Each scheduler gets enough allocations to
    hold the CPU-hours of the jobs still to run that are bound to it (jobs bound to none count for
    the first scheduler), at least one; none when nothing is left to run."""
    from torc_slurm.cli.run import create_or_resume
    from torc_slurm.compiler import compile_workflow
    from torc_slurm.slurm.allocations import ScheduleRequest, allocations_needed, default_scheduler
    from torc_slurm.slurm.allocations import schedule_nodes as schedule
    from torc_slurm.slurm.backend import get_backend
    from torc_slurm.spec.load import load_spec
    from torc_slurm.states import UNFINISHED
    from torc_slurm.store.workflows import initialize_workflow, list_jobs

    backend = get_backend()
    site_config = _site(site, backend)
    compiled = compile_workflow(load_spec(spec), spec)
    if not compiled.spec.slurm_schedulers:  # e.g. an OSMO workflow: one scheduler from the site
        scheduler = default_scheduler(compiled, site_config)
        compiled = compile_workflow(compiled.spec.model_copy(update={"slurm_schedulers": [scheduler]}), spec)
        app.note(f"{spec} names no slurm_schedulers: using '{scheduler.name}' (site {site_config.name}: partition "
                 f"{scheduler.partition}, {scheduler.nodes} node(s), walltime {scheduler.walltime})")
    db = app.open_db(create=True)
    workflow_id, resumed = create_or_resume(app, db, Path(spec), compiled, new=new, force=force, stdout=True)
    if not resumed:
        initialize_workflow(db, workflow_id, force=force)
    to_run = [job for job in list_jobs(db, workflow_id) if job["status"] in UNFINISHED]
    if not to_run:
        app.console.print(f"Workflow {workflow_id} is complete: nothing to submit")
        return
    sizing = allocations_needed(compiled.spec, to_run, site_config, max_allocations)
    for name, count in sizing.items():
        result = schedule(db, backend, site_config, ScheduleRequest(workflow_id, name, count, output_dir=output_dir))
        app.console.print(f"Submitted {count} allocation(s) of scheduler {name}: {', '.join(result.slurm_job_ids)}")


def run_jobs_main() -> None:
    """Console script `torc-slurm-job-runner DB ID OUTPUT_DIR [options]` = `torc slurm run-jobs …`."""
    from torc_slurm.cli import main

    main(["slurm", "run-jobs", *sys.argv[1:]])
