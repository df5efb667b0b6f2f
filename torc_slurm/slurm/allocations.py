"""Scheduling, watching and cancelling a workflow's Slurm allocations (login-node side).

``schedule_nodes`` renders one sbatch script per allocation from ``templates/`` and the site config,
submits it, and records the allocation in the queue file. Each allocation runs
``torc slurm run-jobs`` on every node (see the template).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torc_slurm.compiler import CompiledWorkflow
from torc_slurm.errors import LockKindMismatch, SpecError
from torc_slurm.slurm.backend import SlurmBackend
from torc_slurm.slurm.render import render_sbatch
from torc_slurm.slurm.sites import SiteConfig
from torc_slurm.spec.models import SlurmScheduler, WorkflowSpec
from torc_slurm.store.allocations import (
    list_allocations,
    record_allocations,
    runners_by_allocation,
    update_allocation_states,
)
from torc_slurm.store.db import Database
from torc_slurm.store.workflows import workflow_settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScheduleRequest:
    workflow_id: int
    scheduler: str | None
    num_hpc_jobs: int
    max_parallel_jobs: int | None = None
    output_dir: Path | None = None
    keep_scripts: bool = False
    dry_run: bool = False


@dataclass
class ScheduleResult:
    scheduler: str
    script: str                         # the rendered text (all allocations share it)
    slurm_job_ids: list[str]
    script_dir: Path


def pick_scheduler(spec: WorkflowSpec, name: str | None) -> SlurmScheduler:
    """The named scheduler, or the only one; otherwise an error that lists the choices."""
    choices = {s.name: s for s in spec.slurm_schedulers}
    if name is not None:
        if name not in choices:
            listed = ", ".join(choices) or "none (add a slurm_schedulers entry to the spec)"
            raise SpecError(f"unknown scheduler {name!r}; the workflow's schedulers: {listed}")
        return choices[name]
    if len(choices) == 1:
        return next(iter(choices.values()))
    if not choices:
        raise SpecError("the workflow defines no slurm_schedulers; add one to the spec")
    raise SpecError(f"the workflow has several schedulers; pass --scheduler with one of: {', '.join(choices)}")


def runner_argv(db: Database, workflow_id: int, output_dir: Path, scheduler: str,
                max_parallel_jobs: int | None) -> list[str]:
    """The command each node runs: this Python, so the allocation uses the same installation."""
    argv = [sys.executable, "-m", "torc_slurm", "slurm", "run-jobs", str(db.path), str(workflow_id),
            str(output_dir), "--scheduler", scheduler]
    if max_parallel_jobs is not None:
        argv += ["--max-parallel-jobs", str(max_parallel_jobs)]
    return argv


def schedule_nodes(db: Database, backend: SlurmBackend | None, site: SiteConfig,
                   request: ScheduleRequest) -> ScheduleResult:
    settings = workflow_settings(db, request.workflow_id)
    scheduler = pick_scheduler(settings.spec, request.scheduler)
    if site.lock_kind != db.lock.kind:
        raise LockKindMismatch(
            f"site {site.name} says its compute nodes lock with {site.lock_kind!r}, but the queue {db.path} "
            f"was created with {db.lock.kind!r}; its runners could not open it. Create the workflow in a queue "
            f"made with --lock-kind {site.lock_kind}, or pick a site whose lock kind matches.")
    output = (request.output_dir or settings.working_dir / "torc_output").absolute()
    script_dir = output / "slurm"
    script = render_sbatch(
        scheduler=scheduler, site=site, slurm_defaults=settings.spec.slurm_defaults,
        job_name=f"torc_wf{request.workflow_id}_{scheduler.name}", output_dir=script_dir,
        runner_argv=runner_argv(db, request.workflow_id, output, scheduler.name, request.max_parallel_jobs),
        signal_buffer_seconds=max(settings.spec.compute_node_expiration_buffer_seconds, 10),
        account_fallback=site.default_account())
    result = ScheduleResult(scheduler.name, script, [], script_dir)
    if request.dry_run:
        return result
    assert backend is not None
    script_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    submitted: list[tuple[str, str | None]] = []
    try:
        for index in range(request.num_hpc_jobs):
            path = script_dir / f"wf{request.workflow_id}_{scheduler.name}_{int(time.time())}_{index}.sh"
            fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(script)
            job_id = backend.submit(path)
            submitted.append((job_id, str(path) if request.keep_scripts else None))
            if not request.keep_scripts:
                path.unlink()
    finally:  # record what was submitted even if a later submission failed
        if submitted:
            record_allocations(db, request.workflow_id, scheduler.name, scheduler.nodes, submitted)
    result.slurm_job_ids = [job_id for job_id, _ in submitted]
    return result


def refresh_allocations(db: Database, backend: SlurmBackend, workflow_id: int) -> list[dict[str, Any]]:
    """Ask Slurm (one squeue call) about the workflow's live allocations, mark those it no longer
    knows as gone, and return every allocation with its runners, state and time left. Never
    sweeps: a status command changes no job (`torc workflows sync-status` does, on evidence)."""
    active = list_allocations(db, workflow_id, active_only=True)
    infos = backend.status([a["slurm_job_id"] for a in active]) if active else {}
    update_allocation_states(db, workflow_id, {
        a["slurm_job_id"]: infos[a["slurm_job_id"]].state.value if a["slurm_job_id"] in infos else "gone"
        for a in active})
    runners = runners_by_allocation(db, workflow_id)
    rows = []
    for allocation in list_allocations(db, workflow_id):
        info = infos.get(allocation["slurm_job_id"])
        rows.append({**allocation,
                     "time_left_s": info.time_left_seconds if info else None,
                     "nodes": sorted({r["hostname"] for r in runners.get(allocation["slurm_job_id"], [])}),
                     "runners": runners.get(allocation["slurm_job_id"], [])})
    return rows


def cancel_allocations(db: Database, workflow_id: int, backend: SlurmBackend | None = None) -> list[str]:
    """scancel every live allocation of the workflow; returns their Slurm job ids."""
    active = [a["slurm_job_id"] for a in list_allocations(db, workflow_id, active_only=True)]
    if not active:
        return []
    if backend is None:
        from torc_slurm.slurm.backend import get_backend

        backend = get_backend()
    backend.cancel(active)
    update_allocation_states(db, workflow_id, {job_id: "canceled" for job_id in active})
    return active


def default_scheduler(compiled: CompiledWorkflow, site: SiteConfig) -> SlurmScheduler:
    """A scheduler for a spec that names none (an OSMO workflow, say): the site's default
    partition, as many nodes as the widest job needs, and a walltime that fits the longest job and
    the end-of-allocation buffer, rounded up to 10 minutes, within the partition's limit."""
    partition = site.partition()
    if partition is None:
        raise SpecError(f"the spec names no slurm_schedulers and site {site.name} has no default partition; "
                        "add a slurm_schedulers entry")
    longest = max((job.runtime_s for job in compiled.jobs), default=3600)
    wanted = longest + compiled.spec.compute_node_expiration_buffer_seconds
    seconds = min(partition.max_walltime_seconds, math.ceil(wanted / 600) * 600)
    hours, rest = divmod(seconds, 3600)
    return SlurmScheduler(name="default", partition=partition.name,
                          nodes=max((job.num_nodes for job in compiled.jobs), default=1),
                          walltime=f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}")


def allocations_needed(spec: WorkflowSpec, jobs: list[dict[str, Any]], site: SiteConfig,
                       max_allocations: int) -> dict[str, int]:
    """Simple sizing for ``torc submit``: per scheduler, enough allocations to hold the CPU-seconds
    of the jobs bound to it (a multi-node job counts its CPUs on every node; an unbound job goes to
    the first scheduler with enough nodes for it), at least one, at most ``max_allocations``. A job
    that no scheduler has the nodes for is an error that names it."""
    schedulers = spec.slurm_schedulers
    if not schedulers:
        raise SpecError("the spec defines no slurm_schedulers; `torc submit` needs at least one")
    work: dict[str, float] = {s.name: 0.0 for s in schedulers}
    by_name = {s.name: s for s in schedulers}
    for job in jobs:
        nodes = job.get("num_nodes", 1)
        fitting = [by_name[job["scheduler"]]] if job["scheduler"] else [s for s in schedulers if s.nodes >= nodes]
        if not fitting or fitting[0].nodes < nodes:
            largest = max(s.nodes for s in (fitting or schedulers))
            raise SpecError(f"job {job['name']!r} needs {nodes} nodes, but "
                            + (f"its scheduler {job['scheduler']!r} gives {largest}" if job["scheduler"] else
                               f"no slurm_schedulers entry gives more than {largest}")
                            + f"; set `nodes: {nodes}` (or more) on a scheduler", job=job["name"], field="num_nodes")
        work[fitting[0].name] += job["num_cpus"] * nodes * job["runtime_s"]
    needed = {}
    for s in schedulers:
        if not work[s.name]:
            continue
        partition = site.partition(s.partition)
        cpus = partition.cpus_per_node if partition else 1
        capacity = s.nodes * cpus * s.walltime_seconds
        needed[s.name] = max(1, min(max_allocations, math.ceil(work[s.name] / capacity)))
    return needed

