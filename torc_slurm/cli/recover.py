"""``torc recover ID``: rerun the jobs that failed by OOM or timeout with bigger resources."""

from __future__ import annotations

import json
import re
from typing import Any

import click

from torc_slurm.cli.app import App, format_option, pass_app

_SLURM_MEM = re.compile(r"^(\d+)([KMGT]?)B?$", re.IGNORECASE)


@click.command("recover")
@click.argument("workflow_id", metavar="ID", type=int)
@click.option("--memory-factor", type=click.FloatRange(min=1.0), default=1.5, show_default=True,
              help="Jobs that ran out of memory get their memory times this.")
@click.option("--runtime-factor", type=click.FloatRange(min=1.0), default=1.5, show_default=True,
              help="Jobs that timed out get their runtime times this.")
@click.option("--retry-unknown", is_flag=True,
              help="Also rerun jobs that failed for other reasons (exit codes, signals), unchanged.")
@click.option("--dry-run", is_flag=True, help="Show every change and change nothing.")
@click.option("--submit", is_flag=True, help="Submit the Slurm allocations the rerun needs.")
@click.option("--site", help="Site config for node sizes and submission (default: detected).")
@click.option("--max-allocations", type=click.IntRange(min=1), default=10, show_default=True,
              help="With --submit: at most this many allocations per scheduler.")
@format_option
@pass_app
def recover(app: App, workflow_id: int, memory_factor: float, runtime_factor: float, retry_unknown: bool,
            dry_run: bool, submit: bool, site: str | None, max_allocations: int, fmt: str) -> None:
    """Give jobs of workflow ID that failed by OOM (memory x factor) or timeout (runtime x factor)
    bigger resources, and reset them and everything downstream of them.

    \b
    The new figures go on those jobs only; their resource_requirements entry is not changed (each
    change is recorded as an event). Growth stops at the largest node any of the workflow's
    schedulers offers (the site's partition or the scheduler's mem and walltime; without
    schedulers, the largest node a runner of the workflow had): a job already there is reported
    and left failed. Completed jobs outside the reset keep their results. Rerun with `torc run ID`,
    or, with Slurm schedulers, the allocations printed here (--submit submits them).

    Exits 1 when a job cannot grow further."""
    from torc_slurm.store.recovery import apply_recovery, plan_recovery
    from torc_slurm.store.workflows import workflow_settings

    db = app.db
    settings = workflow_settings(db, workflow_id)
    site_config = _site(site) if settings.spec.slurm_schedulers else None
    caps = node_caps(db, workflow_id, settings.spec, site_config)
    recovery = plan_recovery(db, workflow_id, caps, memory_factor=memory_factor, runtime_factor=runtime_factor,
                             retry_unknown=retry_unknown)
    sizing = _allocations(db, settings.spec, recovery, site_config, max_allocations)
    data = {"workflow_id": workflow_id, "dry_run": dry_run, "caps": caps.__dict__, "rerun": recovery.changes(),
            "cannot_grow": [{"job": g.name, "why": g.describe()} for g in recovery.stuck],
            "not_recovered": [{"job": j.name, "reason": j.reason or j.status} for j in recovery.skipped],
            "allocations": sizing}
    if submit and not sizing:
        app.abort("--submit: nothing to submit (no job to rerun, or the workflow has no slurm_schedulers)", 2)
    if fmt == "json":
        app.emit(data, fmt, lambda d: "")
    else:
        for line in report_lines(data, workflow_id):
            click.echo(line)
    if dry_run:
        app.note("Dry run: nothing was changed.")
    elif recovery.rerun:
        run_id = apply_recovery(db, recovery)
        app.note(f"Workflow {workflow_id}: {len(data['rerun'])} jobs reset (run {run_id}).")
        if submit:
            _submit(app, db, workflow_id, sizing, site_config)
    if recovery.stuck:
        raise click.exceptions.Exit(1)


def report_lines(data: dict[str, Any], workflow_id: int) -> list[str]:
    """The plain report (what --dry-run and the real run both print)."""
    lines = []
    caps = data["caps"]
    if data["rerun"]:
        lines.append(f"Jobs to rerun in workflow {workflow_id}:")
        width = max(len(c["job"]) for c in data["rerun"])
        move = max(len(f"{c['from']} -> {c['to']}") for c in data["rerun"])
        lines += [f"  {c['job']:<{width}}  {c['from'] + ' -> ' + c['to']:<{move}}  {c['why']}" for c in data["rerun"]]
    else:
        lines.append(f"Workflow {workflow_id}: nothing to recover.")
    if data["cannot_grow"]:
        lines.append(f"Cannot grow (left failed; the largest node: {caps['where'] or 'unknown'}):")
        lines += [f"  {c['job']}  {c['why']}" for c in data["cannot_grow"]]
    if data["not_recovered"]:
        lines.append("Not recovered (not OOM or timeout; --retry-unknown reruns them unchanged):")
        lines += [f"  {c['job']}  {c['reason']}" for c in data["not_recovered"]]
    if data["rerun"]:
        if data["allocations"]:
            listed = ", ".join(f"{count} x {name}" for name, count in data["allocations"].items())
            lines.append(f"Allocations the rerun needs: {listed} (--submit submits them; or "
                         f"`torc slurm schedule-nodes {workflow_id} --scheduler NAME --num-hpc-jobs N`)")
        else:
            lines.append(f"Rerun with: torc run {workflow_id}")
    return lines


def node_caps(db, workflow_id: int, spec, site_config):  # noqa: ANN001, ANN201
    """The largest memory and runtime a job may grow to (see `store.recovery.Caps`)."""
    from torc_slurm.store.recovery import Caps

    if spec.slurm_schedulers:
        memories, runtimes = [], []
        for scheduler in spec.slurm_schedulers:
            partition = site_config.partition(scheduler.partition) if site_config else None
            memory = _slurm_mem(scheduler.mem) if scheduler.mem else (partition.memory_bytes if partition else None)
            if memory:
                memories.append(memory)
            walltime = scheduler.walltime_seconds
            if partition:
                walltime = min(walltime, partition.max_walltime_seconds)
            runtimes.append(max(1, walltime - spec.compute_node_expiration_buffer_seconds))
        names = ", ".join(s.name for s in spec.slurm_schedulers)
        return Caps(max(memories) if memories else None, max(runtimes), f"schedulers {names}")
    rows = db.read("SELECT resources FROM runners WHERE workflow_id = ?", (workflow_id,))
    memories = [json.loads(r["resources"] or "{}").get("memory_bytes") or 0 for r in rows]
    if any(memories):
        return Caps(max(memories), None, "the runners' nodes")
    import psutil

    return Caps(psutil.virtual_memory().total, None, "this machine")


def _slurm_mem(text: str) -> int | None:
    """A Slurm --mem value (megabytes without a unit)."""
    match = _SLURM_MEM.match(text.strip())
    if not match:
        return None
    scale = {"": 2**20, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[match.group(2).upper()]
    return int(match.group(1)) * scale


def _site(name: str | None):  # noqa: ANN202
    from torc_slurm.slurm.sites import detect_current_site, load_site

    return load_site(name) if name else detect_current_site()


def _allocations(db, spec, recovery, site_config, max_allocations: int) -> dict[str, int]:  # noqa: ANN001
    """Per scheduler, the allocations the jobs to rerun need (`torc submit`'s sizing), with the
    grown runtimes."""
    if not spec.slurm_schedulers or site_config is None or not recovery.rerun:
        return {}
    from torc_slurm.slurm.allocations import allocations_needed

    grown = {g.job_id: g.new for g in recovery.rerun if g.field == "runtime"}
    ids = [c["job_id"] for c in recovery.changes()]
    marks = ",".join("?" * len(ids))
    rows = db.read(f"SELECT id, name, scheduler, num_cpus, num_nodes, runtime_s FROM jobs WHERE id IN ({marks})",
                   tuple(ids))
    jobs = [{"name": r["name"], "scheduler": r["scheduler"], "num_cpus": r["num_cpus"], "num_nodes": r["num_nodes"],
             "runtime_s": grown.get(r["id"], r["runtime_s"])} for r in rows]
    return allocations_needed(spec, jobs, site_config, max_allocations)


def _submit(app: App, db, workflow_id: int, sizing: dict[str, int], site_config) -> None:  # noqa: ANN001
    from torc_slurm.slurm.allocations import ScheduleRequest, schedule_nodes
    from torc_slurm.slurm.backend import get_backend

    backend = get_backend()
    for name, count in sizing.items():
        result = schedule_nodes(db, backend, site_config, ScheduleRequest(workflow_id, name, count))
        app.console.print(f"Submitted {count} allocation(s) of scheduler {name}: {', '.join(result.slurm_job_ids)}")

