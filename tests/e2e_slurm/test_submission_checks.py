"""Checks before submitting, against the real local cluster (partitions cpu: MaxTime 1 h, 2 nodes
of 8 CPUs / 8000 MB; gpu: MaxTime 2 h, 1 node of 16 CPUs / 16000 MB / 4 GPUs): what cannot run is
refused before anything reaches Slurm, --dry-run shows sbatch --test-only's answer, `plan` gives
the counts worked out by hand, and the seed barrier demo with no declared resources runs to the
end on a 10-minute allocation."""

from __future__ import annotations

import pytest

from . import E2E, barrier_spec, squeue

pytestmark = pytest.mark.slurm


def _bare_barrier(e2e: E2E, **scheduler: object) -> dict:
    """The seed barrier demo with its resource_requirements removed: every job gets the default."""
    spec = barrier_spec(e2e.scheduler("chk"), **scheduler)
    spec["name"] = f"checks_{e2e.tag}"
    spec.pop("resource_requirements")
    for job in spec["jobs"]:
        job.pop("resource_requirements")
    spec["compute_node_wait_for_new_jobs_seconds"] = 10
    return spec


def _refused(e2e: E2E, spec: dict, *needles: str) -> None:
    workflow_id = e2e.create(spec)
    proc = e2e.torc("slurm", "schedule-nodes", workflow_id, check=False)
    assert proc.returncode != 0, proc.stdout
    assert not e2e.allocations(workflow_id), "nothing may be submitted"
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr
    assert "refusing to submit (partitions from slurm)" in proc.stderr


def test_the_seed_barrier_demo_without_resources_completes_on_a_ten_minute_allocation(e2e: E2E) -> None:
    workflow_id = e2e.create(_bare_barrier(e2e, partition="cpu", walltime="00:10:00"))
    assert {job["runtime_s"] for job in e2e.jobs(workflow_id).values()} == {60}
    (allocation,) = e2e.schedule(workflow_id, e2e.scheduler("chk"), 1)
    status = e2e.wait_workflow_done(workflow_id, timeout=420)
    assert status["total"] == 202 and status["counts"]["completed"] == 202, status
    e2e.wait_allocations_ended([allocation], timeout=120)


def test_a_walltime_over_maxtime_is_refused(e2e: E2E) -> None:
    _refused(e2e, _bare_barrier(e2e, partition="cpu", walltime="08:00:00"),
             f"scheduler `{e2e.scheduler('chk')}`: walltime 08:00:00 is over partition cpu's MaxTime 1 h")


def test_an_unknown_partition_is_refused(e2e: E2E) -> None:
    _refused(e2e, _bare_barrier(e2e, partition="nosuch", walltime="00:10:00"),
             "partition 'nosuch' does not exist (slurm lists: cpu, gpu)")


def test_a_job_too_big_for_any_node_is_refused(e2e: E2E) -> None:
    spec = _bare_barrier(e2e, partition="cpu", walltime="00:10:00")
    spec["jobs"].append({"name": "huge", "command": "true", "resource_requirements": "huge"})
    spec["resource_requirements"] = [{"name": "huge", "num_cpus": 32, "memory": "1g"}]
    _refused(e2e, spec, "1 job needs 32 CPUs", "bigger than every node their scheduler allows")


def test_dry_run_prints_what_sbatch_test_only_says(e2e: E2E) -> None:
    workflow_id = e2e.create(_bare_barrier(e2e, partition="cpu", walltime="00:10:00"))
    proc = e2e.torc("slurm", "schedule-nodes", workflow_id, "--dry-run")
    assert proc.stdout.startswith("#!/bin/bash") and "#SBATCH" in proc.stdout  # the script alone
    answer = next(line for line in proc.stderr.splitlines() if line.startswith("sbatch --test-only"))
    assert "to start at" in answer and "in partition cpu" in answer, answer
    assert not e2e.allocations(workflow_id)
    assert not squeue(e2e.own_job_ids())


def test_plan_on_a_three_stage_workflow(e2e: E2E) -> None:
    """By hand, on a cpu node (8 CPUs, 8000 MB) with a 10-minute walltime and the 60 s end buffer:
    stage 1, 100 one-minute 1-CPU jobs: 8 at a time, 9 waves -> 72 per node run -> 2 allocations;
    stage 2, 1 job -> 1; stage 3, 30 two-minute 2-CPU jobs: 4 at a time, 4 waves -> 16 per run -> 2."""
    spec = {
        "name": f"plan_{e2e.tag}",
        "jobs": [{"name": "a_{i}", "command": "true", "resource_requirements": "one", "parameters": {"i": "1:100"}},
                 {"name": "mid", "command": "true", "resource_requirements": "one", "depends_on_regexes": ["^a_"]},
                 {"name": "c_{i}", "command": "true", "resource_requirements": "two", "depends_on": ["mid"],
                  "parameters": {"i": "1:30"}}],
        "resource_requirements": [{"name": "one", "num_cpus": 1, "memory": "100m", "runtime": "PT1M"},
                                  {"name": "two", "num_cpus": 2, "memory": "100m", "runtime": "PT2M"}],
        "slurm_schedulers": [{"name": e2e.scheduler("plan"), "partition": "cpu", "walltime": "00:10:00"}],
    }
    workflow_id = e2e.create(spec)
    data = e2e.torc_json("slurm", "plan", workflow_id)
    (sched,) = data["schedulers"]
    assert [(s["stage"], s["jobs"], s["allocations"]) for s in sched["stages"]] == [(1, 100, 2), (2, 1, 1), (3, 30, 2)]
    # stage times 390 s, 60 s, 480 s: stages 1 and 2 share a wave within the 540 usable seconds, stage 3 cannot follow
    assert sched["waves"] == [[1, 2], [3]] and sched["allocations"] == 2 + 2 and data["partitions_from"] == "slurm"
    table = e2e.torc("slurm", "plan", workflow_id).stdout
    assert "expected makespan" in table and "2 x 1 node(s)" in table
