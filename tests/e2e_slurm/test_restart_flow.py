"""Restarts on the local Slurm cluster: after a failure, `reset-status --failed-only` then
`schedule-nodes` finishes only the reset jobs; `torc submit SPEC` a second time resumes the
workflow and submits nothing when nothing is left to run."""

from __future__ import annotations

import pytest

from . import E2E

pytestmark = pytest.mark.slurm


def diamond(e2e: E2E, scheduler: str) -> dict:
    """A diamond whose `right` job fails until the file `fixed` exists."""
    small = "small"
    return {
        "name": f"restart_{e2e.tag}",
        "compute_node_wait_for_new_jobs_seconds": 5,
        "jobs": [
            {"name": "left_root", "command": "echo root > root.txt", "resource_requirements": small},
            {"name": "left", "command": "cat root.txt > left.txt", "depends_on": ["left_root"],
             "resource_requirements": small},
            {"name": "right", "command": "test -e fixed && echo right > right.txt", "depends_on": ["left_root"],
             "resource_requirements": small},
            {"name": "join", "command": "cat left.txt right.txt > joined.txt", "depends_on": ["left", "right"],
             "resource_requirements": small},
        ],
        "resource_requirements": [{"name": small, "num_cpus": 1, "memory": "100m", "runtime": "PT2M"}],
        "slurm_schedulers": [{"name": scheduler, "partition": "cpu", "walltime": "00:05:00"}],
    }


def test_reset_then_schedule_nodes_finishes_only_the_reset_jobs(e2e: E2E) -> None:
    scheduler = e2e.scheduler("rst")
    workflow_id = e2e.create(diamond(e2e, scheduler))
    e2e.schedule(workflow_id, scheduler)
    e2e.wait_workflow_done(workflow_id)
    statuses = {name: row["status"] for name, row in e2e.jobs(workflow_id).items()}
    assert statuses == {"left_root": "completed", "left": "completed", "right": "failed", "join": "canceled"}
    first = {name: row["attempt"] for name, row in e2e.jobs(workflow_id).items()}

    (e2e.path / "fixed").touch()
    reset = e2e.torc_json("workflows", "reset-status", workflow_id, "--failed-only")
    assert [(c["job"], c["new"]) for c in reset["changes"]] == [("right", "ready"), ("join", "blocked")]
    e2e.schedule(workflow_id, scheduler)
    e2e.wait_workflow_done(workflow_id)
    jobs = e2e.jobs(workflow_id)
    assert {name: row["status"] for name, row in jobs.items()} == dict.fromkeys(jobs, "completed")
    assert {name: row["attempt"] for name, row in jobs.items()} == {**first, "right": first["right"] + 1, "join": 1}
    runs = sorted((r["job_name"], r["attempt"], r["run_id"], r["status"]) for r in e2e.results(workflow_id))
    assert runs == [("join", 1, 2, "completed"), ("left", 1, 1, "completed"), ("left_root", 1, 1, "completed"),
                    ("right", 1, 1, "failed"), ("right", 2, 2, "completed")]
    assert (e2e.path / "joined.txt").read_text() == "root\nright\n"

    again = e2e.torc("submit", "spec.yaml")
    assert f"Resumed workflow {workflow_id}" in again.stdout and "nothing to rerun" in again.stdout, again.stdout
    assert f"Workflow {workflow_id} is complete: nothing to submit" in again.stdout
    assert len(e2e.allocations(workflow_id)) == 2
