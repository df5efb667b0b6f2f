"""Workflow actions on the local Slurm cluster: a 3-stage workflow whose only scheduling is its
actions (on_workflow_start -> the stage-1 allocation; on_jobs_ready of stage 2 -> its allocation;
run_commands when the last job completes) runs to the end from `workflows create` + `init` alone,
each action performed exactly once (events and sbatch submissions counted). In the second test
the stage-1 runner SIGKILLs itself right after the commit that claims the stage-2 action (fault
injection); `torc slurm watch` on the "login node" takes the claim over (the claimant's pid is gone
from this host), finds no allocation of the dead claim in squeue, submits it once, and the
workflow ends. In the third, the claimant dies right after its sbatch: the allocation it submitted
is found by name and adopted, not submitted again."""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from typing import Any

import pytest

from . import _TORC, E2E, my_slurm_jobs, wait_for

pytestmark = pytest.mark.slurm


def three_stages(e2e: E2E) -> dict[str, Any]:
    s1, s2 = e2e.scheduler("one"), e2e.scheduler("two")
    scheduler = {"partition": "cpu", "nodes": 1, "walltime": "00:05:00"}
    return {
        "name": f"actions_{e2e.tag}",
        "compute_node_wait_for_new_jobs_seconds": 5,
        "compute_node_expiration_buffer_seconds": 30,
        "heartbeat_timeout_seconds": 10,
        "jobs": [
            *({"name": f"first_{i}", "command": "sleep 1", "scheduler": s1} for i in range(2)),
            *({"name": f"second_{i}", "command": "sleep 1", "depends_on_regexes": ["^first_"], "scheduler": s2}
              for i in range(2)),
            {"name": "third", "command": "echo third", "depends_on_regexes": ["^second_"], "scheduler": s2},
        ],
        "slurm_schedulers": [{"name": s1, **scheduler}, {"name": s2, **scheduler}],
        "actions": [
            {"trigger_type": "on_workflow_start", "action_type": "schedule_nodes", "scheduler": s1,
             "scheduler_type": "slurm", "num_allocations": 1},
            {"trigger_type": "on_jobs_ready", "action_type": "schedule_nodes", "job_name_regexes": ["^second_"],
             "scheduler": s2, "scheduler_type": "slurm", "num_allocations": 1},
            {"trigger_type": "on_jobs_complete", "action_type": "run_commands", "jobs": ["third"],
             "commands": ['echo "done $TORC_WORKFLOW_ID" >> actions_done.txt']},
        ],
    }


def torc(e2e: E2E, *args: object, env: dict[str, str] | None = None, timeout: float = 120) -> str:
    proc = subprocess.run([*_TORC, "--db", str(e2e.db), *map(str, args)], cwd=e2e.path, capture_output=True,
                          text=True, timeout=timeout, check=False, env={**os.environ, "TORC_TRUST_SLURM_CPUS": "1", **(env or {})})
    assert proc.returncode == 0, f"torc {args} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def action_events(e2e: E2E, workflow_id: int) -> Counter:
    return Counter(r["kind"] for r in e2e.query(
        "SELECT kind FROM events WHERE workflow_id = ? AND kind LIKE 'action_%'", (workflow_id,)))


def wait_actions_settled(e2e: E2E, workflow_id: int, timeout: float) -> list[dict[str, Any]]:
    def settled() -> list[dict[str, Any]] | None:
        rows = e2e.query("SELECT idx, state, attempts, result FROM actions WHERE workflow_id = ? ORDER BY idx",
                         (workflow_id,))
        return rows if all(r["state"] in ("done", "failed") for r in rows) else None

    return wait_for(settled, timeout=timeout, what="every action to be performed",
                    describe=lambda: e2e.describe(workflow_id) + "\n" + str(e2e.query("SELECT * FROM actions")))


def check_ran_once(e2e: E2E, workflow_id: int) -> None:
    status = e2e.wait_workflow_done(workflow_id, timeout=90)
    assert status["counts"]["completed"] == 5, status
    rows = wait_actions_settled(e2e, workflow_id, timeout=30)
    assert [r["state"] for r in rows] == ["done", "done", "done"], rows
    assert (e2e.path / "actions_done.txt").read_text() == f"done {workflow_id}\n"
    allocations = e2e.allocations(workflow_id)
    assert sorted(a["scheduler"] for a in allocations) == sorted(e2e.scheduler(s) for s in ("one", "two"))
    named = my_slurm_jobs(e2e.tag)  # every sbatch of this test that Slurm still lists
    assert set(named) <= {a["slurm_job_id"] for a in allocations}, (named, allocations)
    e2e.wait_allocations_ended([a["slurm_job_id"] for a in allocations], timeout=60)


def test_actions_alone_schedule_a_three_stage_workflow(e2e: E2E) -> None:
    workflow_id = e2e.create(three_stages(e2e))
    out = torc(e2e, "workflows", "init", workflow_id)
    assert "submitted 1 allocation(s)" in out, out
    check_ran_once(e2e, workflow_id)
    assert action_events(e2e, workflow_id) == {"action_claimed": 3, "action_done": 3}
    by = {r["idx"]: r["claimed_by"] for r in e2e.query("SELECT idx, claimed_by FROM actions WHERE workflow_id = ?",
                                                        (workflow_id,))}
    assert by[0] == "init" and by[1].startswith("runner ") and by[2].startswith("runner "), by


def test_a_runner_killed_after_claiming_is_taken_over_by_watch_once(e2e: E2E) -> None:
    workflow_id = e2e.create(three_stages(e2e))
    # The stage-1 allocation inherits the variable (sbatch exports the environment): its runner
    # kills itself right after the commit that claims on_jobs_ready.
    torc(e2e, "workflows", "init", workflow_id, env={"TORC_FAULT_ACTION_CLAIMED": "on_jobs_ready"})

    def claimed_by_dead_runner() -> dict[str, Any] | None:
        rows = e2e.query("SELECT a.state, a.attempts, a.claim_runner FROM actions a WHERE a.workflow_id = ?"
                         " AND a.idx = 1", (workflow_id,))
        return rows[0] if rows and rows[0]["state"] == "claimed" else None

    claim = wait_for(claimed_by_dead_runner, timeout=60, what="the stage-1 runner to claim the stage-2 action",
                     describe=lambda: e2e.describe(workflow_id))
    assert claim["attempts"] == 1 and claim["claim_runner"] is not None
    stage1 = [a["slurm_job_id"] for a in e2e.allocations(workflow_id)]
    e2e.wait_allocations_ended(stage1, timeout=60)  # the runner died; its allocation ended
    assert len(e2e.allocations(workflow_id)) == 1, "the dead claimant submitted nothing"

    out = torc(e2e, "slurm", "watch", workflow_id, "--interval", "1", timeout=120)
    assert "action #2 (on_jobs_ready schedule_nodes): submitted 1 allocation(s)" in out, out
    check_ran_once(e2e, workflow_id)
    events = action_events(e2e, workflow_id)
    assert events == {"action_claimed": 4, "action_taken_over": 1, "action_done": 3}, events
    rows = e2e.query("SELECT idx, attempts, claimed_by FROM actions WHERE workflow_id = ? ORDER BY idx",
                     (workflow_id,))
    assert [(r["attempts"], r["claimed_by"]) for r in rows][:2] == [(1, "init"), (2, "watch")], rows


def test_a_claimant_that_died_after_its_sbatch_is_adopted_not_resubmitted(e2e: E2E) -> None:
    """The stage-1 runner submits the stage-2 allocation and dies before recording "done". The
    next observer (the stage-2 runner itself) takes the claim over, finds the dead claim's
    allocation in squeue by its name, and adopts it: two allocations in all, never three."""
    workflow_id = e2e.create(three_stages(e2e))
    torc(e2e, "workflows", "init", workflow_id, env={"TORC_FAULT_ACTION_SUBMITTED": "on_jobs_ready"})
    check_ran_once(e2e, workflow_id)
    events = action_events(e2e, workflow_id)
    assert events == {"action_claimed": 4, "action_taken_over": 1, "action_done": 3}, events
    (row,) = e2e.query("SELECT attempts, result FROM actions WHERE workflow_id = ? AND idx = 1", (workflow_id,))
    result = json.loads(row["result"])
    stage2 = [a["slurm_job_id"] for a in e2e.allocations(workflow_id) if a["scheduler"] == e2e.scheduler("two")]
    assert row["attempts"] == 2 and result["adopted"] == stage2 == result["slurm_job_ids"], result


def test_submit_performs_due_actions_with_its_output_folder(e2e: E2E) -> None:
    """M5: `torc submit -o OUT` performs on_workflow_start with what it was given: the
    action's output goes under OUT, not <working dir>/torc_output (no allocation is submitted:
    the only schedule_nodes action is scheduler_type local, recorded as skipped)."""
    s1 = e2e.scheduler("one")
    spec = {"name": f"submit_out_{e2e.tag}", "jobs": [{"name": "a", "command": "true", "scheduler": s1}],
            "slurm_schedulers": [{"name": s1, "partition": "cpu", "nodes": 1, "walltime": "00:05:00"}],
            "actions": [
                {"trigger_type": "on_workflow_start", "action_type": "run_commands", "commands": ["echo hi"]},
                {"trigger_type": "on_workflow_start", "action_type": "schedule_nodes", "scheduler": s1,
                 "scheduler_type": "local"}]}
    (e2e.path / "spec.json").write_text(json.dumps(spec))
    torc(e2e, "submit", "spec.json", "--site", "localhost", "-o", e2e.path / "out")
    assert (e2e.path / "out" / "actions" / "a1_t1_1.out").read_text() == "hi\n"
    assert not (e2e.path / "torc_output").exists()
    assert [r["state"] for r in e2e.query("SELECT state FROM actions ORDER BY idx")] == ["done", "skipped"]
