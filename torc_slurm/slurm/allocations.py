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
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any

from torc_slurm.compiler import CompiledWorkflow
from torc_slurm.errors import LockKindMismatch, SlurmError, SpecError
from torc_slurm.slurm.backend import SlurmBackend
from torc_slurm.slurm.fit import JobShape, Offer, misfits, offer, scheduler_problems, serve_verdict
from torc_slurm.slurm.partitions import ClusterInfo, from_site
from torc_slurm.slurm.plan import Plan, make_plan
from torc_slurm.slurm.render import render_sbatch
from torc_slurm.slurm.sites import SiteConfig
from torc_slurm.spec.models import SlurmScheduler, WorkflowSpec
from torc_slurm.states import UNFINISHED
from torc_slurm.store.allocations import (
    allocation_end,
    list_allocations,
    record_allocations,
    record_end_times,
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
    force: bool = False        # submit even when the checks against the partitions and jobs refuse
    job_name: str | None = None  # Slurm's job name (default torc_wf<ID>_<scheduler>); actions tag theirs


@dataclass
class ScheduleResult:
    scheduler: str
    script: str                         # the rendered text (all allocations share it)
    slurm_job_ids: list[str]
    script_dir: Path
    cluster: ClusterInfo | None = None
    problems: list[str] = field(default_factory=list)   # what --force overrode (or, in a dry run, would refuse)


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
    cluster = cluster_info(db, request.workflow_id, backend, site)
    source = db.read("SELECT spec_source FROM workflows WHERE id = ?", (request.workflow_id,))[0]["spec_source"]
    problems = preflight(settings.spec, [scheduler], job_shapes(db, request.workflow_id), cluster, site, source)
    if not request.force and not request.dry_run:
        refuse(problems, cluster)
    output = (request.output_dir or settings.working_dir / "torc_output").absolute()
    script_dir = output / "slurm"
    script = render_sbatch(
        scheduler=scheduler, site=site, slurm_defaults=settings.spec.slurm_defaults,
        job_name=request.job_name or f"torc_wf{request.workflow_id}_{scheduler.name}", output_dir=script_dir,
        runner_argv=runner_argv(db, request.workflow_id, output, scheduler.name, request.max_parallel_jobs),
        signal_buffer_seconds=max(settings.spec.compute_node_expiration_buffer_seconds, 10),
        account_fallback=site.default_account())
    result = ScheduleResult(scheduler.name, script, [], script_dir, cluster, problems)
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


# --- checks before submitting, and the plan ----------------------------------------------------

def job_shapes(db: Database, workflow_id: int) -> list[JobShape]:
    """The workflow's unfinished jobs as resource shapes with counts and dependency stages: one
    grouped query over the jobs and one over the dependency sets' distinct member sets (``equal sets
    are interned``, so this reads set-to-set links, not job-to-job edges)."""
    marks = ",".join("?" * len(UNFINISHED))
    with db.transaction(write=False) as conn:
        groups = conn.execute(
            f"SELECT depset_id, scheduler, num_nodes, num_gpus, memory_bytes, runtime_s, num_cpus, COUNT(*)"
            f" FROM jobs WHERE workflow_id = ? AND status IN ({marks})"
            f" GROUP BY depset_id, scheduler, num_nodes, num_gpus, memory_bytes, runtime_s, num_cpus",
            (workflow_id, *UNFINISHED)).fetchall()
        links = conn.execute(
            f"SELECT DISTINCT m.set_id, j.depset_id FROM dependency_members m JOIN jobs j ON j.id = m.job_id"
            f" WHERE j.workflow_id = ? AND j.status IN ({marks})", (workflow_id, *UNFINISHED)).fetchall()
    stage = set_stages(links)
    shapes: dict[tuple, int] = {}
    for depset, *shape, count in groups:
        key = (*shape, stage.get(depset, 1) if depset is not None else 1)
        shapes[key] = shapes.get(key, 0) + count
    return [JobShape(sched, nodes, gpus, memory, runtime, cpus, count, st)
            for (sched, nodes, gpus, memory, runtime, cpus, st), count in sorted(
                shapes.items(), key=lambda item: (item[0][-1], str(item[0][0]), item[0][1:-1]))]


def set_stages(links: list[tuple[int, int | None]]) -> dict[int, int]:
    """Dependency set -> the stage of the jobs that wait on it: 1 + the deepest stage among its
    unfinished members (``links``: (set, a member's own set or None)); a set with no unfinished
    member gives stage 1. Iterative, so a chain of any length is fine."""
    members: dict[int, set[int | None]] = {}
    for set_id, member_set in links:
        members.setdefault(set_id, set()).add(member_set)
    stage: dict[int, int] = {}
    for root in members:
        stack = [root]
        while stack:
            current = stack[-1]
            if current in stage:
                stack.pop()
                continue
            pending = [m for m in members[current] if m is not None and m in members and m not in stage]
            if pending:
                stack.extend(pending)
                continue
            stage[current] = 1 + max((stage.get(m, 1) if m is not None else 1) for m in members[current])
            stack.pop()
    return stage


def scheduler_partition(spec: WorkflowSpec, scheduler: SlurmScheduler, site: SiteConfig) -> str | None:
    """The partition an allocation of ``scheduler`` asks for, as the sbatch script renders it."""
    default = spec.slurm_defaults.get("partition")
    return scheduler.partition or (str(default) if default is not None else None) or site.default_partition


def cluster_info(db: Database, workflow_id: int, backend: SlurmBackend | None,
                 site: SiteConfig) -> ClusterInfo | None:
    """What the partitions offer: the workflow's cached copy of what Slurm said; else ask Slurm now
    and cache it for the workflow's life (asked again only while the copy shows a partition that is
    not UP); else (no Slurm, or it cannot say) the site config's table, not cached. None when
    neither is known."""
    rows = db.read("SELECT data FROM partition_cache WHERE workflow_id = ?", (workflow_id,))
    if rows:
        cached = ClusterInfo.from_json(rows[0]["data"])
        # Limits last; a partition's state does not: one cached as not UP is asked about again.
        if backend is None or all(p.up for p in cached.partitions):
            return cached
    if backend is not None:
        try:
            info = backend.cluster_info()
        except SlurmError as exc:
            log.info("partitions from the site config %s: %s", site.name, exc)
        else:
            with db.transaction() as conn:
                conn.execute("INSERT OR REPLACE INTO partition_cache (workflow_id, source, fetched_at, data)"
                             " VALUES (?, 'slurm', ?, ?)", (workflow_id, time.time(), info.to_json()))
            return info
    return from_site(site)


def _cluster_for(scheduler_partition_name: str | None, cluster: ClusterInfo | None,
                 site: SiteConfig) -> ClusterInfo | None:
    """A site entry that is a QOS/constraint selection, not a Slurm partition, is checked against
    the site's table, since Slurm does not know its name."""
    entry = site.partition(scheduler_partition_name) if scheduler_partition_name else None
    if entry is not None and getattr(entry, "is_partition", True) is False:
        return from_site(site)
    return cluster


def offers_for(spec: WorkflowSpec, schedulers: list[SlurmScheduler], cluster: ClusterInfo | None,
               site: SiteConfig) -> dict[str, Offer]:
    buffer_s = spec.compute_node_expiration_buffer_seconds
    out = {}
    for scheduler in schedulers:
        name = scheduler_partition(spec, scheduler, site)
        info = _cluster_for(name, cluster, site)
        out[scheduler.name] = offer(scheduler, info.partition(name) if info else None, buffer_s)
    return out


def preflight(spec: WorkflowSpec, schedulers: list[SlurmScheduler], shapes: list[JobShape],
              cluster: ClusterInfo | None, site: SiteConfig, source: str | None = None) -> list[str]:
    """Every reason not to submit allocations of ``schedulers`` (empty: go ahead): scheduler
    problems against the partitions, jobs too big for every node their scheduler allows, and a
    scheduler none of whose jobs fit its allocation."""
    problems: list[str] = []
    for scheduler in schedulers:
        name = scheduler_partition(spec, scheduler, site)
        info = _cluster_for(name, cluster, site)
        if info is not None:
            problems += scheduler_problems(scheduler, name, info)
    every = offers_for(spec, spec.slurm_schedulers or schedulers, cluster, site)
    names = {scheduler.name for scheduler in schedulers}
    # the jobs these allocations would serve: bound to one of them, or to none (those may go anywhere)
    problems += misfits([s for s in shapes if s.scheduler is None or s.scheduler in names], every)
    for scheduler in schedulers:
        verdict = serve_verdict(shapes, every[scheduler.name])
        if not verdict.ok:
            problems.append(verdict.message())
    where = f"{source}: " if source else ""
    return [where + p for p in problems]


def refuse(problems: list[str], cluster: ClusterInfo | None) -> None:
    if problems:
        origin = f" (partitions from {cluster.source})" if cluster else ""
        raise SlurmError("refusing to submit" + origin + ":\n  - " + "\n  - ".join(problems)
                         + "\n(--force submits anyway)")


def plan_workflow(db: Database, workflow_id: int, backend: SlurmBackend | None, site: SiteConfig,
                  spec: WorkflowSpec | None = None) -> tuple[Plan, ClusterInfo | None]:
    """The workflow's plan (``slurm.plan``) over its unfinished jobs, with the partitions it used.
    ``spec`` overrides the stored one (``torc submit`` adds a default scheduler to a spec with none)."""
    spec = spec or workflow_settings(db, workflow_id).spec
    if not spec.slurm_schedulers:
        raise SpecError("the workflow defines no slurm_schedulers; add one to plan its allocations",
                        field="slurm_schedulers")
    cluster = cluster_info(db, workflow_id, backend, site)
    offers = offers_for(spec, list(spec.slurm_schedulers), cluster, site)
    return make_plan(job_shapes(db, workflow_id), [offers[s.name] for s in spec.slurm_schedulers]), cluster


def end_time_source(db_path: Path, slurm_job_id: str, backend: SlurmBackend) -> Callable[[], float | None]:
    """A runner's end time, without every runner polling Slurm: read from the queue, where the
    allocation's first runner records what Slurm said (one squeue call per allocation) and
    `torc slurm status` records changes. Slurm is asked again only for an allocation this queue
    does not record (a runner started by hand). Each read opens its own connection: refreshes run
    in a background thread."""
    asked: list[float] = []

    def read() -> float | None:
        with Database(db_path, create=False) as db:
            known, end = allocation_end(db, slurm_job_id)
            if end is not None:
                return end
            if known and asked:
                return asked[-1]  # Slurm told us already; nothing newer recorded since
            info = backend.end_time(slurm_job_id)
            if info is None:
                return None
            asked.append(info.timestamp())
            record_end_times(db, {slurm_job_id: info.timestamp()})
            return info.timestamp()

    return read


def refresh_allocations(db: Database, backend: SlurmBackend, workflow_id: int) -> list[dict[str, Any]]:
    """Ask Slurm (one squeue call) about the workflow's live allocations, mark those it no longer
    knows as gone, and return every allocation with its runners, state and time left. Never
    sweeps: a status command changes no job (`torc workflows sync-status` does, on evidence)."""
    active = list_allocations(db, workflow_id, active_only=True)
    infos = backend.status([a["slurm_job_id"] for a in active]) if active else {}
    record_end_times(db, {job_id: info.end_time.timestamp() for job_id, info in infos.items() if info.end_time})
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

