"""The end of an allocation: its time limit, an scancel, and `torc workflows cancel`.

Slurm on this build delivers ``--signal=B:TERM@N`` up to ~30-60 s early, so nothing here depends on
the moment the signal comes: the tests check what must hold whenever it comes.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Any

import pytest

from . import E2E, LIVE_STATES, slurm_end_epoch, squeue, wait_for

pytestmark = pytest.mark.slurm

# Attempt 1 runs far longer than declared, so it is still running when the allocation's time is up;
# any later attempt is quick.
SLOW_FIRST = 'if [ "$TORC_ATTEMPT" = 1 ]; then sleep 300; else sleep 2; fi'
# Also notes its pid, and whether a process of an earlier attempt of the same job is still alive
# (all emulated nodes are this host, so /proc shows every attempt's process; zombies do not count).
TRACKED = ('for p in $(cat "marks/$TORC_JOB_NAME.pids" 2>/dev/null); do'
           ' state=$(cut -d")" -f2 /proc/$p/stat 2>/dev/null | cut -c2); case "$state" in ""|Z*) ;; *)'  # a zombie runs nothing
           ' echo "$TORC_JOB_NAME attempt $TORC_ATTEMPT: pid $p of an earlier attempt is alive" >> marks/overlaps;;'
           ' esac; done; echo $$ >> "marks/$TORC_JOB_NAME.pids";'
           ' if [ "$TORC_ATTEMPT" = 1 ]; then exec sleep 300; else exec sleep 2; fi')


def _resources(*entries: tuple[str, str]) -> list[dict[str, Any]]:
    return [{"name": name, "num_cpus": 1, "memory": "100m", "runtime": runtime} for name, runtime in entries]


def _assert_no_concurrent_attempts(rows: list[dict[str, Any]]) -> None:
    """No two result rows of one job have overlapping [started_at, ended_at] intervals."""
    by_job: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["started_at"] is not None and row["ended_at"] is not None:
            by_job[row["job_name"]].append(row)
    for name, runs in by_job.items():
        for a, b in itertools.combinations(runs, 2):
            assert a["ended_at"] <= b["started_at"] or b["ended_at"] <= a["started_at"], \
                f"{name}: attempts {a['attempt']} and {b['attempt']} ran at the same time"


def _assert_completed_exactly_once(env: E2E, workflow_id: int) -> list[dict[str, Any]]:
    status = env.workflow_status(workflow_id)
    assert status["counts"]["completed"] == status["total"], status
    rows = env.results(workflow_id)
    completed = defaultdict(int)
    for row in rows:
        completed[row["job_name"]] += row["status"] == "completed"
    assert completed == {name: 1 for name in env.jobs(workflow_id)}, dict(completed)
    return rows


def test_walltime_starts_only_what_can_finish_and_hands_back_the_rest(e2e: E2E) -> None:
    """A 2-minute allocation: every job it starts could finish (by its declared runtime) before the
    end time minus the buffer; jobs still running when time runs out get a 'terminated' result and
    go back to ready (whether they honour SIGTERM or must be killed), the runner exits cleanly before
    Slurm's limit, and a second allocation finishes the workflow."""
    scheduler = e2e.scheduler("wt")
    buffer = 15
    spec = {
        "name": f"walltime_{e2e.tag}",
        "compute_node_expiration_buffer_seconds": buffer,
        "compute_node_wait_for_new_jobs_seconds": 5,
        "jobs": [
            {"name": "polite_{i}", "command": SLOW_FIRST, "resource_requirements": "r90",
             "supports_termination": True, "parameters": {"i": "1:2"}},
            {"name": "stubborn_{i}", "command": SLOW_FIRST, "resource_requirements": "r90",
             "parameters": {"i": "1:2"}},
            # Finishes ~25 s in; what depends on it then no longer fits in the time left.
            {"name": "short", "command": "sleep 20", "resource_requirements": "r30"},
            {"name": "after_short_{i}", "command": "sleep 2", "resource_requirements": "r90",
             "depends_on": ["short"], "parameters": {"i": "1:2"}},
        ],
        "resource_requirements": _resources(("r90", "PT90S"), ("r30", "PT30S")),
        "slurm_schedulers": [{"name": scheduler, "partition": "cpu", "walltime": "00:02:00"}],
    }
    workflow_id = e2e.create(spec)
    [first] = e2e.schedule(workflow_id, scheduler, 1)

    def running_with_end() -> float | None:
        info = squeue([first]).get(first, {})
        return slurm_end_epoch(info["end"]) if info.get("state") == "RUNNING" else None

    slurm_end = wait_for(running_with_end, timeout=300, what=f"allocation {first} to run", describe=e2e.describe)
    e2e.wait_allocations_ended([first], timeout=240)

    # The allocation is over: look at what it did.
    [runner] = e2e.runners(workflow_id)
    assert runner["slurm_job_id"] == first and runner["hostname"] in ("cpu1", "cpu2")
    end = runner["resources"]["end_time"]
    assert abs(end - slurm_end) <= 2, f"runner's end time {end} vs squeue's {slurm_end}"
    assert runner["status"] == "finished", "the runner must hand its jobs back itself, not be killed"
    assert squeue([first])[first]["state"] == "COMPLETED", "the runner exited 0 before Slurm's limit"

    rows = e2e.results(workflow_id)
    assert rows, "the first allocation started jobs"
    for row in rows:
        room = end - buffer - row["started_at"]
        assert room >= row["runtime_s"] - 2, (
            f"{row['job_name']} started with {room:.0f} s left before end - buffer; it declares {row['runtime_s']} s")
    jobs = e2e.jobs(workflow_id)
    by_name = defaultdict(list)
    for row in rows:
        by_name[row["job_name"]].append(row)
    assert [r["status"] for r in by_name["short"]] == ["completed"]
    for name in ("polite_1", "polite_2", "stubborn_1", "stubborn_2"):
        assert [(r["status"], r["attempt"]) for r in by_name[name]] == [("terminated", 1)], by_name[name]
        assert by_name[name][0]["ended_at"] <= end, f"{name} was stopped before the allocation ended"
        assert jobs[name]["status"] == "ready" and jobs[name]["runner_id"] is None, jobs[name]
    for name in ("after_short_1", "after_short_2"):
        assert not by_name[name], f"{name} could not finish in the time left, yet it was started"
        assert jobs[name]["status"] == "ready"

    # A second allocation finishes the work; attempt 2 of the long jobs is quick.
    [second] = e2e.schedule(workflow_id, scheduler, 1)
    e2e.wait_workflow_done(workflow_id, timeout=300)
    rows = _assert_completed_exactly_once(e2e, workflow_id)
    _assert_no_concurrent_attempts(rows)
    runners = {r["id"]: r for r in e2e.runners(workflow_id)}
    for row in rows:
        if row["status"] == "completed" and row["job_name"] != "short":
            assert runners[row["runner_id"]]["slurm_job_id"] == second, row
            room = runners[row["runner_id"]]["resources"]["end_time"] - buffer - row["started_at"]
            assert room >= row["runtime_s"] - 2, row
    attempts = {r["job_name"]: r["attempt"] for r in rows if r["status"] == "completed"}
    assert attempts["polite_1"] == attempts["stubborn_1"] == 2 and attempts["after_short_1"] == 1, attempts


def test_scancel_returns_jobs_and_a_new_allocation_finishes_them(e2e: E2E) -> None:
    """scancel of a running allocation: its jobs go back to ready (the runner's graceful SIGTERM
    path, or `torc workflows sync-status` if Slurm killed it first: the allocation has ended),
    and a new allocation completes every job exactly once, never two attempts of a job at once."""
    scheduler = e2e.scheduler("sc")
    (e2e.path / "marks").mkdir()
    spec = {
        "name": f"scancel_{e2e.tag}",
        "compute_node_wait_for_new_jobs_seconds": 5,
        "jobs": [
            {"name": "polite_{i}", "command": TRACKED, "resource_requirements": "r2m",
             "supports_termination": True, "parameters": {"i": "1:3"}},
            {"name": "stubborn_{i}", "command": TRACKED, "resource_requirements": "r2m", "parameters": {"i": "1:3"}},
        ],
        "resource_requirements": _resources(("r2m", "PT2M")),
        "slurm_schedulers": [{"name": scheduler, "partition": "cpu", "walltime": "00:10:00"}],
    }
    workflow_id = e2e.create(spec)
    [first] = e2e.schedule(workflow_id, scheduler, 1)

    def all_running() -> bool:
        return e2e.workflow_status(workflow_id)["counts"]["running"] == 6

    wait_for(all_running, timeout=300, what="the 6 jobs to run", describe=lambda: e2e.describe(workflow_id))
    wait_for(lambda: len(list((e2e.path / "marks").glob("*.pids"))) == 6, timeout=60,
             what="every job to note its pid")
    e2e.cancel_ids([first])
    ended = e2e.wait_allocations_ended([first], timeout=120)
    assert ended[first]["state"] == "CANCELLED", ended

    def handed_back() -> list[dict[str, Any]] | None:
        # Takes back the jobs of a runner Slurm killed before it could hand them back itself.
        e2e.torc("workflows", "sync-status", workflow_id)
        rows = e2e.slurm_status(workflow_id)
        counts = e2e.workflow_status(workflow_id)["counts"]
        return rows if counts["running"] == counts["pending"] == 0 else None

    rows = wait_for(handed_back, timeout=120, what="the canceled allocation's jobs to return to ready",
                    describe=lambda: e2e.describe(workflow_id))
    assert [(r["slurm_job_id"], r["state"]) for r in rows] == [(first, "CANCELLED")], rows
    jobs = e2e.jobs(workflow_id)
    assert {j["status"] for j in jobs.values()} == {"ready"}, {n: j["status"] for n, j in jobs.items()}
    results = e2e.results(workflow_id)
    assert sorted(r["job_name"] for r in results) == sorted(jobs), "one result per interrupted job"
    assert {r["status"] for r in results} <= {"terminated", "lost"}, [(r["job_name"], r["status"], r["message"])
                                                                     for r in results]
    [runner] = e2e.runners(workflow_id)
    path = "graceful" if runner["status"] == "finished" else "sync-status sweep"
    assert runner["status"] in ("finished", "lost"), runner
    print(f"scancel: jobs returned by the {path}: {sorted({(r['status'], r['message']) for r in results})}")

    [second] = e2e.schedule(workflow_id, scheduler, 1)
    e2e.wait_workflow_done(workflow_id, timeout=300)
    rows = _assert_completed_exactly_once(e2e, workflow_id)
    _assert_no_concurrent_attempts(rows)
    assert not (e2e.path / "marks" / "overlaps").exists(), (e2e.path / "marks" / "overlaps").read_text()
    for name in jobs:
        assert len((e2e.path / "marks" / f"{name}.pids").read_text().split()) == 2, name
    assert {r["slurm_job_id"] for r in rows if r["status"] == "completed"} == {second}


def test_workflows_cancel_cancels_live_allocations(e2e: E2E) -> None:
    """`torc workflows cancel ID` scancels the workflow's running and pending allocations."""
    scheduler = e2e.scheduler("wc")
    spec = {
        "name": f"wfcancel_{e2e.tag}",
        "compute_node_wait_for_new_jobs_seconds": 120,
        "jobs": [{"name": "hold_{i}", "command": "sleep 300", "resource_requirements": "r10m",
                  "supports_termination": True, "parameters": {"i": "1:2"}}],
        "resource_requirements": _resources(("r10m", "PT10M")),
        "slurm_schedulers": [{"name": scheduler, "partition": "cpu", "walltime": "00:20:00"}],
    }
    workflow_id = e2e.create(spec)
    ids = e2e.schedule(workflow_id, scheduler, 3)  # 3 whole-node allocations on 2 nodes: one waits

    def running_and_pending() -> dict[str, dict[str, str]] | None:
        seen = squeue(ids)
        states = {info["state"] for info in seen.values()}
        busy = e2e.workflow_status(workflow_id)["counts"]["running"] > 0
        return seen if busy and "RUNNING" in states and "PENDING" in states else None

    before = wait_for(running_and_pending, timeout=300, what="a running job and a pending allocation",
                      describe=lambda: e2e.describe(workflow_id))
    proc = e2e.torc("workflows", "cancel", workflow_id)
    live = [i for i, info in before.items() if info["state"] in LIVE_STATES]
    for job_id in live:
        assert job_id in proc.stdout, proc.stdout
    after = e2e.wait_allocations_ended(ids, timeout=120)
    assert all(after.get(i, {}).get("state") in (None, "CANCELLED", "COMPLETED") for i in ids), after
    assert not any(info["state"] in ("RUNNING", "PENDING") for info in squeue(ids).values())
    assert {a["state"] for a in e2e.allocations(workflow_id)} <= {"canceled", "CANCELLED", "COMPLETED"}
    status = e2e.workflow_status(workflow_id)
    assert status["status"] == "canceled" and status["counts"]["canceled"] == 2, status
