"""`torc slurm watch` against the real local cluster: later stages are submitted on readiness, a
pending allocation with nothing left to do is cancelled, the workflow finishes and the watcher
exits 0, and two watchers started together submit no duplicates."""

from __future__ import annotations

import subprocess
from collections import Counter
from typing import Any

import pytest

from . import _TORC, E2E, squeue, wait_for

pytestmark = pytest.mark.slurm


def three_stages(env: E2E) -> dict[str, Any]:
    """Stage 1: 4 jobs ending 2, 4, 6, 8 s after they start (scheduler s1); stage 2: 2 jobs that
    wait on all of stage 1 (s2); stage 3: one job that waits on stage 2 (s3)."""
    s1, s2, s3 = (env.scheduler(f"s{i}") for i in (1, 2, 3))
    scheduler = {"partition": "cpu", "nodes": 1, "walltime": "00:10:00"}
    return {
        "name": f"stages_{env.tag}",
        "compute_node_wait_for_new_jobs_seconds": 20,
        "jobs": [
            {"name": "one_{i}", "command": "sleep {i}", "scheduler": s1, "resource_requirements": "small",
             "parameters": {"i": "2:8:2"}},
            {"name": "two_{i}", "command": "sleep 1", "scheduler": s2, "resource_requirements": "small",
             "depends_on_regexes": ["^one_"], "parameters": {"i": "1:2"}},
            {"name": "three", "command": "true", "scheduler": s3, "resource_requirements": "small",
             "depends_on_regexes": ["^two_"]},
        ],
        "resource_requirements": [{"name": "small", "num_cpus": 1, "memory": "50m", "runtime": "PT1M"}],
        "slurm_schedulers": [{"name": s, **scheduler} for s in (s1, s2, s3)],
    }


def watch_argv(env: E2E, workflow_id: int, *extra: object) -> list[str]:
    return [*_TORC, "--db", str(env.db), "slurm", "watch", str(workflow_id), "--interval", "1", *map(str, extra)]


def run_env() -> dict[str, str]:
    import os

    return {**os.environ, "TORC_TRUST_SLURM_CPUS": "1"}


def track(env: E2E, workflow_id: int) -> None:
    """Remember every allocation the watcher recorded, so teardown cancels them."""
    env.submitted.update(a["slurm_job_id"] for a in env.allocations(workflow_id))


def test_watch_submits_stages_on_readiness_and_finishes(e2e: E2E) -> None:
    spec = three_stages(e2e)
    workflow_id = e2e.create(spec)
    s1, s2, s3 = (s["name"] for s in spec["slurm_schedulers"])
    try:
        proc = subprocess.run(watch_argv(e2e, workflow_id), cwd=e2e.path, capture_output=True, text=True, check=False,
                              timeout=150, env=run_env())
    finally:
        track(e2e, workflow_id)
    assert proc.returncode == 0, f"watch exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    print(proc.stderr, proc.stdout)
    assert f"Workflow {workflow_id} is complete" in proc.stdout, proc.stdout
    status = e2e.workflow_status(workflow_id)
    assert status["counts"]["completed"] == 7, status

    allocations = e2e.allocations(workflow_id)
    per_scheduler = Counter(a["scheduler"] for a in allocations)
    assert per_scheduler == {s1: 1, s2: 1, s3: 1}, allocations
    submitted = {a["scheduler"]: a["submitted_at"] for a in allocations}
    ended = sorted(r["ended_at"] for r in e2e.results(workflow_id) if r["job_name"].startswith("one_"))
    stage2 = [r for r in e2e.results(workflow_id) if r["job_name"].startswith("two_")]
    # Stage 2's allocation went in once stage 1 was nearly done (3 of its 4 jobs), not before:
    assert submitted[s2] >= ended[2] - 0.5, (submitted, ended)
    assert submitted[s2] <= max(r["ended_at"] for r in stage2)
    # and stage 3's once stage 2 was nearly done (its set of 2: one left).
    assert submitted[s3] >= min(r["ended_at"] for r in stage2) - 0.5, (submitted, stage2)


def test_watch_cancels_a_pending_allocation_with_nothing_left(e2e: E2E) -> None:
    from torc_slurm.store.allocations import record_allocations
    from torc_slurm.store.db import Database

    spec = three_stages(e2e)
    workflow_id = e2e.create(spec)
    s3 = spec["slurm_schedulers"][2]["name"]
    held = subprocess.run(["sbatch", "--parsable", "--begin=now+1hour", f"--job-name=torc_e2e_{e2e.tag}_held",
                           "--partition=cpu", "--time=00:05:00", f"--chdir={e2e.path}", "--wrap=true"],
                          capture_output=True, text=True, timeout=60, check=True).stdout.strip().split(";")[0]
    e2e.submitted.add(held)
    with Database(e2e.db) as db:
        record_allocations(db, workflow_id, s3, 1, [(held, None)])
    # One round, submitting nothing (--max-queued 0): s3 has no ready or soon-ready job yet.
    proc = subprocess.run(watch_argv(e2e, workflow_id, "--once", "--max-queued", "0"), cwd=e2e.path,
                          capture_output=True, text=True, timeout=60, env=run_env(), check=False)
    track(e2e, workflow_id)
    assert proc.returncode == 0, f"watch exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert f"cancelled pending allocation(s) {held}" in proc.stderr, proc.stderr
    rows = {a["slurm_job_id"]: a for a in e2e.allocations(workflow_id)}
    assert rows[held]["state"] == "canceled"
    assert set(rows) == {held}, "nothing else was submitted"
    wait_for(lambda: squeue([held]).get(held, {"state": "CANCELLED"})["state"] == "CANCELLED", timeout=30,
             what=f"Slurm to cancel {held}")


def test_two_watchers_submit_no_duplicates(e2e: E2E) -> None:
    spec = three_stages(e2e)
    workflow_id = e2e.create(spec)
    e2e.torc("workflows", "init", workflow_id)
    procs = [subprocess.Popen(watch_argv(e2e, workflow_id), cwd=e2e.path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=run_env()) for _ in range(2)]
    outputs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=150)
            outputs.append((proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        track(e2e, workflow_id)
    codes = sorted(code for code, _, _ in outputs)
    assert codes == [0, 3], outputs
    loser = next(err for code, _, err in outputs if code == 3)
    assert "already watched" in loser, loser
    allocations = e2e.allocations(workflow_id)
    assert len({a["slurm_job_id"] for a in allocations}) == len(allocations)
    assert Counter(a["scheduler"] for a in allocations) == {s["name"]: 1 for s in spec["slurm_schedulers"]}
    assert e2e.workflow_status(workflow_id)["counts"]["completed"] == 7

