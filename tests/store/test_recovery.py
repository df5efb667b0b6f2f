"""`torc recover` in the store: the pure growth plan (a table of cases), and applying it to a queue
driven through the runner's own cycle: new figures on the failed jobs only, their downstream reset,
completed jobs elsewhere untouched, conflicts refused, and the queue's fencing kept for retries and
upstream reasons."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from torc_slurm.compiler import compile_workflow
from torc_slurm.spec.models import WorkflowSpec
from torc_slurm.store.db import Database
from torc_slurm.store.queue import Outcome, Queue
from torc_slurm.store.recovery import (Caps, FailedJob, RecoverConflict, apply_recovery, plan_growth,
                                       plan_recovery)
from torc_slurm.store.workflows import add_workflow, cancel_workflow, initialize_workflow

MIB = 2**20


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(tmp_path / "torc.db")
    yield database
    database.close()


def failed(name: str, reason: str | None, memory_mib: int = 100, runtime_s: int = 60) -> FailedJob:
    return FailedJob(1, name, "failed", reason, 1, memory_mib * MIB, runtime_s, None)


# -- the plan (pure) -----------------------------------------------------------------------------
@pytest.mark.parametrize(("job", "caps", "expected"), [
    (failed("a", "oom"), Caps(), ("memory", 100 * MIB, 150 * MIB, False, False)),
    (failed("a", "oom", 101), Caps(), ("memory", 101 * MIB, 152 * MIB, False, False)),  # whole MiB, up
    (failed("a", "oom"), Caps(memory_bytes=120 * MIB), ("memory", 100 * MIB, 120 * MIB, True, False)),
    (failed("a", "oom"), Caps(memory_bytes=100 * MIB), ("memory", 100 * MIB, 100 * MIB, False, True)),
    (failed("a", "oom"), Caps(memory_bytes=64 * MIB), ("memory", 100 * MIB, 100 * MIB, False, True)),
    (failed("a", "timeout"), Caps(), ("runtime", 60, 90, False, False)),
    (failed("a", "timeout", runtime_s=7), Caps(), ("runtime", 7, 11, False, False)),  # whole seconds, up
    (failed("a", "timeout"), Caps(runtime_s=80), ("runtime", 60, 80, True, False)),
    (failed("a", "timeout"), Caps(runtime_s=60), ("runtime", 60, 60, False, True)),
])
def test_growth(job: FailedJob, caps: Caps, expected: tuple) -> None:
    (growth,), skipped = plan_growth([job], caps, memory_factor=1.5, runtime_factor=1.5, retry_unknown=False)
    assert not skipped
    assert (growth.field, growth.old, growth.new, growth.capped, growth.stuck) == expected


def test_other_failures_are_left_alone_unless_retry_unknown() -> None:
    jobs = [failed("a", "exit code 3"), failed("b", "signal SIGSEGV"), failed("c", None)]
    plan, skipped = plan_growth(jobs, Caps(), memory_factor=2, runtime_factor=2, retry_unknown=False)
    assert plan == [] and skipped == jobs
    plan, skipped = plan_growth(jobs, Caps(), memory_factor=2, runtime_factor=2, retry_unknown=True)
    assert [(g.name, g.field, g.describe()) for g in plan] == [
        ("a", None, "exit code 3: rerun unchanged (--retry-unknown)"),
        ("b", None, "signal SIGSEGV: rerun unchanged (--retry-unknown)"),
        ("c", None, "failed: rerun unchanged (--retry-unknown)")]
    assert skipped == []


def test_descriptions() -> None:
    (grow,), _ = plan_growth([failed("a", "oom", 1024)], Caps(memory_bytes=1536 * MIB), memory_factor=4,
                             runtime_factor=1.5, retry_unknown=False)
    assert grow.describe() == "oom: memory 1 GiB -> 1536 MiB (capped: the largest node)"
    (stuck,), _ = plan_growth([failed("a", "timeout", runtime_s=7200)], Caps(runtime_s=7200), memory_factor=1.5,
                              runtime_factor=1.5, retry_unknown=False)
    assert stuck.describe() == "timeout: cannot grow, runtime 2h00m00s is already the most any node offers"


# -- applied to a queue --------------------------------------------------------------------------
DIAMOND = [
    {"name": "pre", "command": "pre"},
    {"name": "w1", "command": "w1", "depends_on": ["pre"], "resource_requirements": "big"},
    {"name": "w2", "command": "w2", "depends_on": ["pre"], "resource_requirements": "big"},
    {"name": "post", "command": "post", "depends_on": ["w1", "w2"]},
]


def make(db: Database, tmp_path: Path, jobs: list[dict[str, Any]] = DIAMOND) -> Queue:
    spec = WorkflowSpec.model_validate({"name": "d", "jobs": jobs, "resource_requirements": [
        {"name": "big", "memory": "100m", "runtime": "PT1M"}]})
    workflow_id = add_workflow(db, compile_workflow(spec), working_dir=tmp_path)
    initialize_workflow(db, workflow_id, force=True)
    return Queue(db, workflow_id)


def rows(db: Database, workflow_id: int) -> dict[str, dict[str, Any]]:
    return {r["name"]: dict(r) for r in db.read("SELECT * FROM jobs WHERE workflow_id = ?", (workflow_id,))}


def finish(queue: Queue, runner: int, outcomes: dict[str, tuple[str, str | None]]) -> None:
    """Claim what is ready and report the given (status, reason) for the named jobs."""
    claimed = queue.cycle(runner, choose=lambda ready: [r.job_id for r in ready]).claimed
    by_name = {c.name: c for c in claimed}
    queue.cycle(runner, outcomes=[
        Outcome(by_name[n].id, by_name[n].attempt, s, by_name[n].lease_token,  # type: ignore[arg-type]
                return_code=0 if s == "completed" else 137, ended_at=100.0 + by_name[n].id, reason=r)
        for n, (s, r) in outcomes.items()])


def test_recover_grows_the_oom_job_only_and_resets_its_downstream(db: Database, tmp_path: Path) -> None:
    queue = make(db, tmp_path)
    wf = queue.workflow_id
    runner = queue.register_runner(hostname="h", pid=1)
    finish(queue, runner, {"pre": ("completed", None)})
    finish(queue, runner, {"w1": ("completed", None), "w2": ("failed", "oom")})
    before = rows(db, wf)
    assert (before["post"]["status"], before["post"]["reason"]) == ("canceled", "upstream job w2 failed")

    recovery = plan_recovery(db, wf, Caps(memory_bytes=8 * 2**30))
    assert [(c["job"], c["from"], c["to"]) for c in recovery.changes()] == [
        ("w2", "failed", "ready"), ("post", "canceled", "blocked")]
    assert rows(db, wf) == before  # planning changes nothing
    apply_recovery(db, recovery)

    after = rows(db, wf)
    assert after["w2"]["memory_bytes"] == 150 * MIB and after["w1"]["memory_bytes"] == 100 * MIB
    assert {n: after[n]["status"] for n in after} == {"pre": "completed", "w1": "completed", "w2": "ready",
                                                      "post": "blocked"}
    assert after["w1"]["attempt"] == before["w1"]["attempt"]
    # the rerun: post runs once w2 completes
    finish(queue, runner, {"w2": ("completed", None)})
    finish(queue, runner, {"post": ("completed", None)})
    assert {r["status"] for r in rows(db, wf).values()} == {"completed"}
    assert rows(db, wf)["w2"]["attempt"] == 2


def test_recover_refuses_a_job_that_moved_on_since_the_plan(db: Database, tmp_path: Path) -> None:
    queue = make(db, tmp_path, [{"name": "a", "command": "a"}])
    runner = queue.register_runner(hostname="h", pid=1)
    finish(queue, runner, {"a": ("failed", "timeout")})
    recovery = plan_recovery(db, queue.workflow_id, Caps())
    apply_recovery(db, plan_recovery(db, queue.workflow_id, Caps()))  # someone else recovered it first
    finish(queue, runner, {"a": ("failed", "timeout")})
    with pytest.raises(RecoverConflict):
        apply_recovery(db, recovery)
    assert rows(db, queue.workflow_id)["a"]["runtime_s"] == 90  # the default PT1M grown once (x 1.5), not twice


def test_a_retry_under_a_lease_that_ended_is_late_and_changes_nothing(db: Database, tmp_path: Path) -> None:
    queue = make(db, tmp_path, [{"name": "a", "command": "a"}])
    runner = queue.register_runner(hostname="h", pid=1)
    (claimed,) = queue.cycle(runner, choose=lambda ready: [r.job_id for r in ready]).claimed
    cancel_workflow(db, queue.workflow_id)
    queue.cycle(runner, outcomes=[Outcome(claimed.id, claimed.attempt, "retry", claimed.lease_token,
                                          return_code=3, reason="exit code 3", message="exit code 3; retried")])
    row = rows(db, queue.workflow_id)["a"]
    assert (row["status"], row["retries"]) == ("canceled", 0)
    (result,) = db.read("SELECT status, late, reason FROM results WHERE job_id = ?", (claimed.id,))
    assert tuple(result) == ("failed", 1, "exit code 3")


def test_a_current_retry_puts_the_job_back_to_ready_with_one_more_retry(db: Database, tmp_path: Path) -> None:
    queue = make(db, tmp_path, [{"name": "a", "command": "a"}, {"name": "b", "command": "b", "depends_on": ["a"]}])
    runner = queue.register_runner(hostname="h", pid=1)
    (claimed,) = queue.cycle(runner, choose=lambda ready: [r.job_id for r in ready]).claimed
    queue.cycle(runner, outcomes=[Outcome(claimed.id, claimed.attempt, "retry", claimed.lease_token,
                                          return_code=3, reason="exit code 3")])
    a, b = rows(db, queue.workflow_id)["a"], rows(db, queue.workflow_id)["b"]
    assert (a["status"], a["retries"], a["attempt"], a["reason"]) == ("ready", 1, 1, "exit code 3")
    assert b["status"] == "blocked"  # a retry does not finish the job: nothing downstream moves
