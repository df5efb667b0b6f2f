"""schedule-nodes, submit and status against the real local cluster: whole-node allocations on
partition ``cpu``, fake GPUs on partition ``gpu``, a 2-node allocation with one runner per node."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from . import E2E, barrier_spec, squeue, wait_idle_nodes

pytestmark = pytest.mark.slurm


def _completed_once(env: E2E, workflow_id: int) -> list[dict]:
    """Every job completed, with exactly one completed result row; returns those rows."""
    status = env.workflow_status(workflow_id)
    assert status["failed"] == 0 and status["done"] == status["total"], status
    assert status["counts"]["completed"] == status["total"], status
    rows = [r for r in env.results(workflow_id) if r["status"] == "completed"]
    per_job = Counter(r["job_name"] for r in rows)
    assert set(per_job) == set(env.jobs(workflow_id)), "some job has no completed result"
    assert max(per_job.values()) == 1, f"jobs completed more than once: {[j for j, n in per_job.items() if n > 1]}"
    return rows


def test_barrier_demo_on_two_cpu_nodes(e2e: E2E) -> None:
    """The seed barrier demo on two whole-node allocations of partition cpu: it completes, both
    nodes complete jobs, and the barrier's ordering holds across nodes."""
    scheduler = e2e.scheduler("cpu")
    spec = barrier_spec(scheduler, partition="cpu", walltime="00:10:00")
    spec["name"] = f"barrier_{e2e.tag}"
    spec["compute_node_wait_for_new_jobs_seconds"] = 10
    # The demo's echo jobs finish in milliseconds; one node could drain all 202 before the second
    # allocation starts. A short sleep keeps both nodes busy without changing the workflow's shape.
    for job in spec["jobs"]:
        if job["name"].startswith(("generate_", "process_")):
            job["command"] += " && sleep 1"
    workflow_id = e2e.create(spec)

    wait_idle_nodes("cpu", 2)  # so both allocations start together
    allocation_ids = e2e.schedule(workflow_id, scheduler, 2)
    e2e.wait_workflow_done(workflow_id, timeout=420)
    ended = e2e.wait_allocations_ended(allocation_ids, timeout=120)

    rows = _completed_once(e2e, workflow_id)
    assert len(rows) == 202
    by_host = Counter(r["hostname"] for r in rows)
    assert set(by_host) == {"cpu1", "cpu2"}, f"completed jobs per node: {dict(by_host)}"

    runners = e2e.runners(workflow_id)
    assert sorted(r["slurm_job_id"] for r in runners) == allocation_ids, runners
    assert all(r["status"] == "finished" for r in runners), runners
    assert all(r["resources"]["cpus"] == 8 for r in runners), "a whole cpu node has 8 CPUs"
    assert {e["state"] for e in ended.values()} <= {"COMPLETED"}, ended

    # Dependencies held across the two nodes: the barrier started after every generator ended on
    # either node, and the final job after every processor.
    by_name = {r["job_name"]: r for r in rows}
    generators = [r for n, r in by_name.items() if n.startswith("generate_")]
    processors = [r for n, r in by_name.items() if n.startswith("process_")]
    assert by_name["barrier"]["started_at"] >= max(r["ended_at"] for r in generators)
    assert min(r["started_at"] for r in processors) >= by_name["barrier"]["ended_at"]
    assert by_name["final"]["started_at"] >= max(r["ended_at"] for r in processors)

    states = {a["slurm_job_id"]: a["state"] for a in e2e.slurm_status(workflow_id)}
    assert states == {i: "COMPLETED" for i in allocation_ids}, states


def test_gpu_jobs_get_disjoint_devices(e2e: E2E) -> None:
    """8 one-GPU and 2 two-GPU jobs on the gpu node (4 fake GPUs): each gets as many ids as it
    asked for, all in {0,1,2,3}, and jobs that overlap in time never share one."""
    scheduler = e2e.scheduler("gpu")
    (e2e.path / "records").mkdir()
    record = ('printf "%s|%s|%s\\n" "$TORC_JOB_NAME" "${CUDA_VISIBLE_DEVICES-unset}" "$(date +%s.%N)"'
              ' > "records/$TORC_JOB_NAME" && sleep 4 && date +%s.%N >> "records/$TORC_JOB_NAME"')
    spec = {
        "name": f"gpus_{e2e.tag}",
        "compute_node_wait_for_new_jobs_seconds": 5,
        "jobs": [
            {"name": "one_gpu_{i}", "command": record, "resource_requirements": "gpu1", "parameters": {"i": "1:8"}},
            {"name": "two_gpus_{i}", "command": record, "resource_requirements": "gpu2", "parameters": {"i": "1:2"}},
        ],
        "resource_requirements": [
            {"name": "gpu1", "num_cpus": 1, "num_gpus": 1, "memory": "100m", "runtime": "PT1M"},
            {"name": "gpu2", "num_cpus": 2, "num_gpus": 2, "memory": "100m", "runtime": "PT1M"},
        ],
        "slurm_schedulers": [{"name": scheduler, "partition": "gpu", "gres": "gpu:4", "walltime": "00:10:00"}],
    }
    workflow_id = e2e.create(spec)
    [allocation] = e2e.schedule(workflow_id, scheduler, 1)
    e2e.wait_workflow_done(workflow_id, timeout=300)
    rows = _completed_once(e2e, workflow_id)
    assert {r["hostname"] for r in rows} == {"gpu1"}

    [runner] = e2e.runners(workflow_id)
    assert runner["slurm_job_id"] == allocation
    assert sorted(runner["resources"]["gpus"]) == ["0", "1", "2", "3"], runner["resources"]

    jobs = []
    for path in sorted((e2e.path / "records").iterdir()):
        first, end = path.read_text().splitlines()
        name, devices, start = first.split("|")
        ids = devices.split(",") if devices not in ("", "unset") else []
        jobs.append({"name": name, "ids": ids, "start": float(start), "end": float(end)})
    assert sorted(j["name"] for j in jobs) == sorted(e2e.jobs(workflow_id)), "every job left its record"
    for job in jobs:
        wanted = 2 if job["name"].startswith("two_gpus_") else 1
        assert len(job["ids"]) == wanted and len(set(job["ids"])) == wanted, job
        assert set(job["ids"]) <= {"0", "1", "2", "3"}, job

    overlapping = 0
    for a, b in itertools.combinations(jobs, 2):
        if a["start"] < b["end"] and b["start"] < a["end"]:
            overlapping += 1
            assert not set(a["ids"]) & set(b["ids"]), f"{a} and {b} ran at once on the same GPU"
    # Not vacuous: the node ran jobs side by side (10 jobs of 4 s, up to 4 at once).
    assert overlapping >= 3, f"only {overlapping} overlapping pairs: {jobs}"
    assert len({i for j in jobs for i in j["ids"]}) == 4, "all four GPUs were used"


def test_two_node_allocation_runs_one_runner_per_node(e2e: E2E) -> None:
    """A `nodes: 2` allocation starts one runner on each node (same Slurm job id) and completes the
    workflow, and Slurm sees the allocation complete cleanly."""
    scheduler = e2e.scheduler("2n")
    spec = {
        "name": f"two_nodes_{e2e.tag}",
        "compute_node_wait_for_new_jobs_seconds": 5,
        "jobs": [{"name": "work_{i:02d}", "command": "sleep 2", "resource_requirements": "small",
                  "parameters": {"i": "1:24"}}],
        "resource_requirements": [{"name": "small", "num_cpus": 1, "memory": "100m", "runtime": "PT1M"}],
        "slurm_schedulers": [{"name": scheduler, "partition": "cpu", "nodes": 2, "walltime": "00:10:00"}],
    }
    workflow_id = e2e.create(spec)
    wait_idle_nodes("cpu", 2)
    [allocation] = e2e.schedule(workflow_id, scheduler, 1)
    e2e.wait_workflow_done(workflow_id, timeout=300)
    ended = e2e.wait_allocations_ended([allocation], timeout=120)

    runners = e2e.runners(workflow_id)
    assert len(runners) == 2, runners
    assert {r["slurm_job_id"] for r in runners} == {allocation}
    assert sorted(r["hostname"] for r in runners) == ["cpu1", "cpu2"]
    assert all(r["status"] == "finished" for r in runners), runners
    rows = _completed_once(e2e, workflow_id)
    assert len(rows) == 24
    assert set(Counter(r["hostname"] for r in rows)) == {"cpu1", "cpu2"}, "both nodes ran jobs"
    assert ended[allocation]["state"] == "COMPLETED", ended


def test_status_marks_allocations_slurm_forgot_as_gone(e2e: E2E) -> None:
    """`torc slurm status` reports a finished allocation's Slurm state, and marks one Slurm no
    longer knows (purged after MinJobAge; here an id Slurm never issued) as gone."""
    from torc_slurm.store.allocations import record_allocations
    from torc_slurm.store.db import Database

    scheduler = e2e.scheduler("st")
    spec = {
        "name": f"status_{e2e.tag}",
        "compute_node_wait_for_new_jobs_seconds": 2,
        "jobs": [{"name": "only", "command": "true", "resource_requirements": "small"}],
        "resource_requirements": [{"name": "small", "num_cpus": 1, "memory": "100m", "runtime": "PT1M"}],
        "slurm_schedulers": [{"name": scheduler, "partition": "cpu", "walltime": "00:05:00"}],
    }
    workflow_id = e2e.create(spec)
    [allocation] = e2e.schedule(workflow_id, scheduler, 1)
    e2e.wait_workflow_done(workflow_id, timeout=300)
    e2e.wait_allocations_ended([allocation], timeout=120)

    # Above MaxJobId (67043328 by default): Slurm never issued it and never will.
    forgotten = "99999999"
    assert not squeue([forgotten])
    db = Database(e2e.db, create=False)
    try:
        record_allocations(db, workflow_id, scheduler, 1, [(forgotten, None)])
    finally:
        db.close()

    states = {a["slurm_job_id"]: a["state"] for a in e2e.slurm_status(workflow_id)}
    assert states == {allocation: "COMPLETED", forgotten: "gone"}, states
    stored = {a["slurm_job_id"]: a["state"] for a in e2e.allocations(workflow_id)}
    assert stored == states, "the states were written to the queue file"


def test_submit_creates_and_schedules(e2e: E2E) -> None:
    """`torc submit SPEC` creates the workflow, submits allocations for it, and they finish it."""
    scheduler = e2e.scheduler("sub")
    spec = {
        "name": f"submit_{e2e.tag}",
        "compute_node_wait_for_new_jobs_seconds": 5,
        "jobs": [{"name": "step_{i}", "command": "echo step {i} > step_{i}.txt", "parameters": {"i": "1:4"},
                  "resource_requirements": "small"},
                 {"name": "gather", "command": "cat step_*.txt > gathered.txt", "depends_on_regexes": ["^step_"],
                  "resource_requirements": "small"}],
        "resource_requirements": [{"name": "small", "num_cpus": 1, "memory": "100m", "runtime": "PT2M"}],
        "slurm_schedulers": [{"name": scheduler, "partition": "cpu", "walltime": "00:05:00"}],
    }
    path = e2e.write_spec(spec)
    proc = e2e.torc("submit", path.name)
    assert "Created workflow 1" in proc.stdout, proc.stdout
    allocations = e2e.allocations(1)
    e2e.submitted.update(a["slurm_job_id"] for a in allocations)
    assert len(allocations) > 0 and {a["scheduler"] for a in allocations} == {scheduler}, allocations
    for allocation in allocations:
        assert allocation["slurm_job_id"] in proc.stdout
    e2e.wait_workflow_done(1, timeout=300)
    _completed_once(e2e, 1)
    assert sorted((e2e.path / "gathered.txt").read_text().split()) == sorted(
        ["step"] * 4 + ["1", "2", "3", "4"])
    e2e.wait_allocations_ended([a["slurm_job_id"] for a in allocations], timeout=120)
