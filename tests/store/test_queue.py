"""The runner's side of the queue: claim (resources, time, rank, window), start, complete, unblock
through dependency sets, failures, termination, heartbeats and the sweep of lost runners, and two
processes claiming from one file."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from torc_slurm.compiler import compile_workflow
from torc_slurm.errors import QueueError
from torc_slurm.spec.models import WorkflowSpec
from torc_slurm.store.db import Database
from torc_slurm.store.leases import SweepRequest
from torc_slurm.store.queue import Limits, Outcome, Queue, ReadyJob, Started
from torc_slurm.store.workflows import (add_workflow, cancel_workflow, delete_workflow, initialize_workflow,
                                        status_counts)

REPO = Path(__file__).resolve().parents[2]
GIB = 2**30


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(tmp_path / "torc.db")
    yield database
    database.close()


def make_queue(db: Database, tmp_path: Path, jobs: list[dict[str, Any]], **top: Any) -> Queue:
    spec = WorkflowSpec.model_validate({"name": "w", "jobs": jobs, **top})
    workflow_id = add_workflow(db, compile_workflow(spec), working_dir=tmp_path)
    initialize_workflow(db, workflow_id, force=True)
    return Queue(db, workflow_id)


def take_all(ready: list[ReadyJob]) -> list[int]:
    return [job.job_id for job in ready]


def ids(db: Database, workflow_id: int | None = None) -> dict[str, int]:
    sql, params = "SELECT name, id FROM jobs", ()
    if workflow_id is not None:
        sql, params = sql + " WHERE workflow_id = ?", (workflow_id,)
    return {row[0]: row[1] for row in db.read(sql, params)}


def statuses(db: Database, workflow_id: int) -> dict[str, str]:
    return {r[0]: r[1] for r in db.read("SELECT name, status FROM jobs WHERE workflow_id = ?", (workflow_id,))}


def job_row(db: Database, job_id: int) -> dict[str, Any]:
    return dict(db.read("SELECT * FROM jobs WHERE id = ?", (job_id,))[0])


def results(db: Database, job_id: int) -> list[dict[str, Any]]:
    return [dict(r) for r in db.read("SELECT * FROM results WHERE job_id = ? ORDER BY id", (job_id,))]


def done(db: Database, job_id: int, attempt: int | None = None, status: str = "completed", code: int | None = 0,
         token: int | None = None, **extra: Any) -> Outcome:
    """The outcome of the job's current attempt (or of ``attempt``/``token``: an older one)."""
    row = job_row(db, job_id)
    return Outcome(job_id, row["attempt"] if attempt is None else attempt, status,  # type: ignore[arg-type]
                   row["lease_token"] if token is None else token, return_code=code, **extra)


def started(db: Database, *job_ids: int) -> list[Started]:
    return [Started(job_id, job_row(db, job_id)["lease_token"], 1000 + job_id) for job_id in job_ids]


def sweep(queue: Queue, runner_id: int, reason: str = "test") -> int:
    seq = queue.db.read("SELECT lease_seq FROM runners WHERE id = ?", (runner_id,))[0][0]
    return queue.sweep([SweepRequest(runner_id, seq, reason)], by="the test")


def job(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "command": f"run {name}", **fields}


# -- claiming -------------------------------------------------------------------------------------

RESOURCES = [
    {"name": "small", "num_cpus": 1, "memory": "1g", "runtime": "PT10M"},
    {"name": "gpu", "num_cpus": 1, "num_gpus": 2, "memory": "1g", "runtime": "PT10M"},
    {"name": "fat", "num_cpus": 1, "memory": "64g", "runtime": "PT10M"},
    {"name": "wide", "num_cpus": 16, "memory": "1g", "runtime": "PT10M"},
    {"name": "long", "num_cpus": 1, "memory": "1g", "runtime": "PT5H"},
]


def test_claim_by_resources_and_remaining_time(db: Database, tmp_path: Path) -> None:
    queue = make_queue(db, tmp_path, [job(rr["name"], resource_requirements=rr["name"]) for rr in RESOURCES],
                       resource_requirements=RESOURCES)
    names = {v: k for k, v in ids(db).items()}
    runner = queue.register_runner(hostname="node1", pid=10)
    seen: list[list[str]] = []

    def chooser(ready: list[ReadyJob]) -> list[int]:
        seen.append([names[j.job_id] for j in ready])
        return take_all(ready)

    small_node = Limits(cpus=4, gpus=0, memory_bytes=8 * GIB, runtime_s=3600)
    claimed = queue.cycle(runner, choose=chooser, limits=small_node).claimed
    assert [c.name for c in claimed] == ["small"] and seen == [["small"]]
    assert (claimed[0].num_cpus, claimed[0].memory_bytes, claimed[0].runtime_s) == (1, GIB, 600)
    claimed = queue.cycle(runner, choose=chooser, limits=Limits(cpus=4, gpus=2, memory_bytes=8 * GIB,
                                                                runtime_s=3600)).claimed
    assert [c.name for c in claimed] == ["gpu"]
    claimed = queue.cycle(runner, choose=chooser, limits=Limits(cpus=32, gpus=0, memory_bytes=128 * GIB,
                                                                runtime_s=5 * 3600 - 1)).claimed
    assert sorted(c.name for c in claimed) == ["fat", "wide"]  # 'long' needs 5 h, 1 s more than is left
    claimed = queue.cycle(runner, choose=chooser, limits=Limits(runtime_s=5 * 3600)).claimed
    assert [c.name for c in claimed] == ["long"]
    assert queue.cycle(runner, choose=chooser).claimed == []


def test_claim_in_rank_order_with_a_window(db: Database, tmp_path: Path) -> None:
    queue = make_queue(db, tmp_path, [
        job("first"), job("second"), job("gpu", resource_requirements="gpu"), job("long", resource_requirements="long"),
        job("urgent", priority=5), job("last")], resource_requirements=RESOURCES)
    names = {v: k for k, v in ids(db).items()}
    runner = queue.register_runner(hostname="h", pid=1)
    offered: list[list[str]] = []

    def chooser(ready: list[ReadyJob]) -> list[int]:
        offered.append([names[j.job_id] for j in ready])
        return [ready[-1].job_id]  # take the last one offered

    claimed = queue.cycle(runner, choose=chooser, window=3).claimed
    assert offered[-1] == ["urgent", "gpu", "long"] and [c.name for c in claimed] == ["long"]
    claimed = queue.cycle(runner, choose=chooser, window=3).claimed
    assert offered[-1] == ["urgent", "gpu", "first"] and [c.name for c in claimed] == ["first"]
    queue.cycle(runner, choose=chooser, window=100)
    assert offered[-1] == ["urgent", "gpu", "second", "last"]
    assert statuses(db, queue.workflow_id) == {"first": "pending", "second": "ready", "gpu": "ready",
                                               "long": "pending", "urgent": "ready", "last": "pending"}


def test_an_empty_choice_claims_nothing_and_the_chooser_is_not_called_without_candidates(
        db: Database, tmp_path: Path) -> None:
    queue = make_queue(db, tmp_path, [job("a")])
    runner = queue.register_runner(hostname="h", pid=1)
    assert queue.cycle(runner, choose=lambda ready: []).claimed == []
    assert statuses(db, queue.workflow_id) == {"a": "ready"}
    queue.cycle(runner, choose=take_all)
    calls = []
    queue.cycle(runner, choose=lambda ready: calls.append(ready) or [])
    assert calls == []


def test_scheduler_filter(db: Database, tmp_path: Path) -> None:
    queue = make_queue(db, tmp_path, [job("any"), job("on_gpu", scheduler="gpu"), job("on_cpu", scheduler="cpu")],
                       slurm_schedulers=[{"name": "gpu"}, {"name": "cpu"}])
    runner = queue.register_runner(hostname="h", pid=1)

    def offered(**kwargs: Any) -> list[str]:
        names: list[str] = []
        queue.cycle(runner, choose=lambda ready: names.extend(str(j.job_id) for j in ready) or [], **kwargs)
        by_id = {str(v): k for k, v in ids(db).items()}
        return sorted(by_id[n] for n in names)

    assert offered() == ["any", "on_cpu", "on_gpu"]
    assert offered(scheduler="gpu") == ["any", "on_gpu"]
    assert offered(scheduler="gpu", strict_scheduler=True) == ["on_gpu"]
    assert offered(strict_scheduler=True) == ["any"]


def test_claims_stay_within_the_workflow(db: Database, tmp_path: Path) -> None:
    mine = make_queue(db, tmp_path, [job("mine")])
    theirs = make_queue(db, tmp_path, [job("theirs")])
    foreign = ids(db, theirs.workflow_id)["theirs"]
    runner = mine.register_runner(hostname="h", pid=1)
    claimed = mine.cycle(runner, choose=lambda ready: [foreign, *take_all(ready), ready[0].job_id]).claimed
    assert [c.name for c in claimed] == ["mine"]  # a foreign id is ignored, a repeated one claimed once
    assert statuses(db, theirs.workflow_id) == {"theirs": "ready"}


def test_claimed_jobs_carry_what_the_runner_needs(db: Database, tmp_path: Path) -> None:
    queue = make_queue(db, tmp_path, [job("a", env={"X": "1"}, output_files=["o1", "o2"], supports_termination=True,
                                          invocation_script="wrap.sh")],
                       files=[{"name": "o1", "path": "out/1.txt"}, {"name": "o2", "path": "out/2.txt"}])
    runner = queue.register_runner(hostname="h", pid=1)
    (claimed,) = queue.cycle(runner, choose=take_all).claimed
    assert (claimed.command, claimed.env, claimed.invocation_script) == ("run a", {"X": "1"}, "wrap.sh")
    assert claimed.supports_termination and sorted(claimed.output_files) == ["out/1.txt", "out/2.txt"]
    assert claimed.attempt == 1


def test_register_runner_for_an_unknown_workflow(db: Database) -> None:
    with pytest.raises(QueueError, match="no workflow 5"):
        Queue(db, 5).register_runner(hostname="h", pid=1)


# -- start, complete, unblock -----------------------------------------------------------------------

def test_start_complete_and_unblock(db: Database, tmp_path: Path) -> None:
    queue = make_queue(db, tmp_path, [job("a"), job("b", depends_on=["a"]), job("c", depends_on=["a", "b"])])
    jid = ids(db)
    runner = queue.register_runner(hostname="h", pid=1)
    (a,) = queue.cycle(runner, choose=take_all).claimed
    assert job_row(db, a.id)["status"] == "pending" and job_row(db, a.id)["runner_id"] == runner
    queue.cycle(runner, started=[Started(a.id, a.lease_token + 1), Started(a.id, a.lease_token - 1)])  # wrong tokens
    assert job_row(db, a.id)["status"] == "pending"
    queue.cycle(runner, started=[Started(a.id, a.lease_token, 4321)])
    assert (job_row(db, a.id)["status"], job_row(db, a.id)["pid"]) == ("running", 4321)
    outcome = Outcome(a.id, a.attempt, "completed", a.lease_token, return_code=0, started_at=100.0, ended_at=112.5,
                      peak_rss_bytes=5_000_000, cpu_time_s=11.0, avg_cpu_percent=88.0, peak_cpu_percent=100.0,
                      avg_memory_bytes=4_000_000, peak_memory_bytes=6_000_000, message="ok")
    result = queue.cycle(runner, outcomes=[outcome], choose=take_all, want_counts=True)
    assert [c.name for c in result.claimed] == ["b"]
    assert result.counts == {"completed": 1, "pending": 1, "blocked": 1}
    row = job_row(db, a.id)
    assert (row["status"], row["return_code"], row["runner_id"]) == ("completed", 0, None)
    (res,) = results(db, a.id)
    assert (res["status"], res["return_code"], res["attempt"], res["runner_id"]) == ("completed", 0, 1, runner)
    assert (res["started_at"], res["ended_at"], res["exec_s"]) == (100.0, 112.5, 12.5)
    assert (res["peak_rss_bytes"], res["cpu_time_s"], res["avg_cpu_percent"], res["peak_cpu_percent"]) == \
        (5_000_000, 11.0, 88.0, 100.0)
    assert (res["avg_memory_bytes"], res["peak_memory_bytes"], res["message"]) == (4_000_000, 6_000_000, "ok")
    assert [tuple(r) for r in db.read("SELECT remaining FROM dependency_sets ORDER BY id")] == [(0,), (1,)]
    queue.cycle(runner, outcomes=[done(db, jid["b"])])
    assert statuses(db, queue.workflow_id)["c"] == "ready"


def test_a_failed_job_cancels_its_dependents_by_default(db: Database, tmp_path: Path) -> None:
    queue = make_queue(db, tmp_path, [job("a"), job("b", depends_on=["a"])])
    runner = queue.register_runner(hostname="h", pid=1)
    (a,) = queue.cycle(runner, choose=take_all).claimed
    queue.cycle(runner, outcomes=[done(db, a.id, status="failed", code=3)])
    assert statuses(db, queue.workflow_id) == {"a": "failed", "b": "canceled"}


def test_a_failed_job_without_cancel_lets_dependents_run(db: Database, tmp_path: Path) -> None:
    queue = make_queue(db, tmp_path, [job("a"), job("b", depends_on=["a"], cancel_on_blocking_job_failure=False)])
    runner = queue.register_runner(hostname="h", pid=1)
    (a,) = queue.cycle(runner, choose=take_all).claimed
    queue.cycle(runner, outcomes=[done(db, a.id, status="failed", code=3)])
    assert statuses(db, queue.workflow_id) == {"a": "failed", "b": "ready"}
    assert job_row(db, a.id)["return_code"] == 3 and results(db, a.id)[0]["return_code"] == 3
    assert db.read("SELECT failed FROM dependency_sets")[0][0] == 1


def test_cancel_on_blocking_job_failure_is_transitive(db: Database, tmp_path: Path) -> None:
    cancel = {"cancel_on_blocking_job_failure": True}
    queue = make_queue(db, tmp_path, [
        job("a"), job("ok"),
        job("b", depends_on=["a"], **cancel),
        job("c", depends_on=["b"], **cancel),
        job("d", depends_on=["c"], cancel_on_blocking_job_failure=False),  # still runs once c is done (canceled)
        job("e", depends_on=["a", "ok"], **cancel),     # waits for 'ok' too before it is decided
        job("f", depends_on=["ok"], **cancel),          # its prerequisite succeeded: runs
    ])
    jid = ids(db)
    runner = queue.register_runner(hostname="h", pid=1)
    queue.cycle(runner, choose=take_all)
    queue.cycle(runner, outcomes=[done(db, jid["a"], status="failed", code=1)])
    assert statuses(db, queue.workflow_id) == {"a": "failed", "ok": "pending", "b": "canceled", "c": "canceled",
                                               "d": "ready", "e": "blocked", "f": "blocked"}
    queue.cycle(runner, outcomes=[done(db, jid["ok"])])
    got = statuses(db, queue.workflow_id)
    assert (got["e"], got["f"]) == ("canceled", "ready")


def test_terminated_returns_to_ready_and_the_next_claim_is_a_new_attempt(db: Database, tmp_path: Path) -> None:
    queue = make_queue(db, tmp_path, [job("a"), job("b", depends_on=["a"])])
    runner = queue.register_runner(hostname="h", pid=1)
    (a,) = queue.cycle(runner, choose=take_all).claimed
    queue.cycle(runner, started=[Started(a.id, a.lease_token)])
    queue.cycle(runner, outcomes=[done(db, a.id, status="terminated", code=None, signal=15)])
    assert statuses(db, queue.workflow_id) == {"a": "ready", "b": "blocked"}  # not a failure, nothing unblocked
    assert results(db, a.id)[0]["status"] == "terminated" and results(db, a.id)[0]["signal"] == 15
    (again,) = queue.cycle(runner, choose=take_all).claimed
    assert (again.id, again.attempt) == (a.id, 2) and again.lease_token != a.lease_token
    queue.cycle(runner, outcomes=[done(db, a.id, attempt=1, token=a.lease_token)])  # the old attempt: late
    assert statuses(db, queue.workflow_id)["a"] == "pending"
    assert results(db, a.id)[-1]["late"] == 1
    queue.cycle(runner, outcomes=[done(db, a.id)])
    assert statuses(db, queue.workflow_id) == {"a": "completed", "b": "ready"}
    assert [r["attempt"] for r in results(db, a.id)] == [1, 1, 2]


# -- unblocking cost ------------------------------------------------------------------------------

TOUCHES = re.compile(r"\b(jobs|dependency_sets|dependency_members)\b")


def barrier_queue(db: Database, tmp_path: Path, n: int) -> Queue:
    return make_queue(db, tmp_path, [
        {"name": "gen_{i}", "command": "g", "parameters": {"i": f"1:{n}"}},
        {"name": "barrier", "command": "b", "depends_on_regexes": [r"^gen_\d+$"]},
        {"name": "post_{i}", "command": "p", "depends_on": ["barrier"], "parameters": {"i": f"1:{n}"}},
    ])


def traced(db: Database, action: Any) -> list[str]:
    statements: list[str] = []
    db._conn.set_trace_callback(statements.append)
    try:
        action()
    finally:
        db._conn.set_trace_callback(None)
    # A statement that fires triggers (status_counts) is traced once more per trigger program run:
    # count the statements issued, not the trigger runs.
    issued = [s for i, s in enumerate(statements) if i == 0 or s != statements[i - 1]]
    return [s for s in issued if TOUCHES.search(s)]


def unblocking_statements(tmp_path: Path, n: int) -> dict[str, list[str]]:
    db = Database(tmp_path / f"unblock{n}.db")
    queue = barrier_queue(db, tmp_path, n)
    runner = queue.register_runner(hostname="h", pid=1)
    gens = queue.cycle(runner, choose=take_all, window=n + 10).claimed
    assert len(gens) == n
    counted = {
        "one member": traced(db, lambda: queue.cycle(runner, outcomes=[done(db, gens[0].id)])),
    }
    queue.cycle(runner, outcomes=[done(db, g.id) for g in gens[1:-1]])
    counted["last member"] = traced(db, lambda: queue.cycle(runner, outcomes=[done(db, gens[-1].id)]))
    (barrier,) = queue.cycle(runner, choose=take_all).claimed
    counted["release all"] = traced(db, lambda: queue.cycle(runner, outcomes=[done(db, barrier.id)]))
    assert status_counts(db, queue.workflow_id)["ready"] == n
    # every statement that touched the big tables went through an index, never a scan
    for statements in counted.values():
        for sql in statements:
            plan = " | ".join(row[3] for row in db._conn.execute("EXPLAIN QUERY PLAN " + sql))
            assert not re.search(r"\bSCAN (jobs|dependency_sets|dependency_members)\b", plan), (sql, plan)
    db.close()
    return counted


def test_completion_touches_only_the_jobs_sets(tmp_path: Path) -> None:
    small = unblocking_statements(tmp_path, 1000)
    large = unblocking_statements(tmp_path, 10_000)
    for case in small:
        assert len(large[case]) == len(small[case]), (case, large[case])
        assert len(large[case]) <= 10, (case, large[case])


# -- runners: heartbeats, the sweep, signing off ---------------------------------------------------

def age(db: Database, runner_id: int, seconds: float) -> None:
    with db.transaction() as conn:
        conn.execute("UPDATE runners SET heartbeat_at = heartbeat_at - ? WHERE id = ?", (seconds, runner_id))


def runner_row(db: Database, runner_id: int) -> dict[str, Any]:
    return dict(db.read("SELECT * FROM runners WHERE id = ?", (runner_id,))[0])


def test_heartbeats(db: Database, tmp_path: Path) -> None:
    queue = make_queue(db, tmp_path, [job("a")])
    start = time.time()
    runner = queue.register_runner(hostname="node7", pid=4242, slurm_job_id="123", scheduler="cpu",
                                   resources={"cpus": 8})
    row = runner_row(db, runner)
    assert (row["status"], row["hostname"], row["pid"], row["slurm_job_id"]) == ("active", "node7", 4242, "123")
    assert json.loads(row["resources"]) == {"cpus": 8} and row["heartbeat_at"] >= start - 1
    age(db, runner, 500)
    queue.cycle(runner)
    assert runner_row(db, runner)["heartbeat_at"] >= start - 1


def two_runners_holding_jobs(db: Database, tmp_path: Path) -> tuple[Queue, int, int, dict[str, int]]:
    queue = make_queue(db, tmp_path, [job("p"), job("r"), job("other"), job("after", depends_on=["r"])])
    jid = ids(db)
    lost = queue.register_runner(hostname="dead", pid=1)
    alive = queue.register_runner(hostname="alive", pid=2)
    queue.cycle(lost, choose=lambda ready: [jid["p"], jid["r"]])
    queue.cycle(lost, started=started(db, jid["r"]))
    queue.cycle(alive, choose=lambda ready: [jid["other"]])
    return queue, lost, alive, jid


def test_sweep_returns_a_lost_runners_jobs_and_records_them(db: Database, tmp_path: Path) -> None:
    queue, lost, alive, jid = two_runners_holding_jobs(db, tmp_path)
    tokens = {name: job_row(db, jid[name])["lease_token"] for name in ("p", "r")}
    assert sweep(queue, lost, "its node is gone") == 2
    assert statuses(db, queue.workflow_id) == {"p": "ready", "r": "ready", "other": "pending", "after": "blocked"}
    assert job_row(db, jid["p"])["runner_id"] is None
    for name in ("p", "r"):
        (res,) = results(db, jid[name])
        assert (res["status"], res["attempt"], res["runner_id"], res["lease_token"]) == ("lost", 1, lost, tokens[name])
        assert "dead" in res["message"] and "its node is gone" in res["message"]
        assert job_row(db, jid[name])["interrupted"] == 1
    assert runner_row(db, lost)["status"] == "lost" and runner_row(db, alive)["status"] == "active"
    assert queue.sweep([SweepRequest(lost, runner_row(db, lost)["lease_seq"], "again")], by="t") == 0  # once only
    events = [r[0] for r in db.read("SELECT kind FROM events WHERE workflow_id = ?", (queue.workflow_id,))]
    assert events.count("runner_swept") == 1
    (again,) = queue.cycle(alive, choose=lambda ready: [jid["r"]]).claimed
    assert again.attempt == 2


def test_any_runners_cycle_can_sweep_and_peers_are_reported(db: Database, tmp_path: Path) -> None:
    queue, lost, alive, jid = two_runners_holding_jobs(db, tmp_path)
    peers = queue.cycle(alive, want_peers=True).peers
    assert [(p.runner_id, p.hostname) for p in peers] == [(lost, "dead")]
    claimed = queue.cycle(alive, sweep=[SweepRequest(lost, peers[0].lease_seq, "x")], choose=take_all).claimed
    assert sorted(c.name for c in claimed) == ["p", "r"] and all(c.attempt == 2 for c in claimed)


def test_a_runner_that_renewed_since_the_verdict_is_not_swept(db: Database, tmp_path: Path) -> None:
    queue, lost, alive, jid = two_runners_holding_jobs(db, tmp_path)
    seq = runner_row(db, lost)["lease_seq"]
    queue.cycle(lost)  # it renewed: alive after all
    assert queue.sweep([SweepRequest(lost, seq, "stale verdict")], by="t") == 0
    assert statuses(db, queue.workflow_id)["p"] == "pending" and runner_row(db, lost)["status"] == "active"


def test_a_swept_runners_late_outcomes_are_not_applied(db: Database, tmp_path: Path) -> None:
    queue, lost, alive, jid = two_runners_holding_jobs(db, tmp_path)
    old = {name: job_row(db, jid[name])["lease_token"] for name in ("p", "r")}
    sweep(queue, lost)
    queue.cycle(alive, choose=lambda ready: [jid["p"]])  # p is now attempt 2 on the live runner
    queue.cycle(lost, outcomes=[done(db, jid["p"], attempt=1, token=old["p"]),
                                done(db, jid["r"], attempt=1, token=old["r"], status="failed", code=9)])
    assert statuses(db, queue.workflow_id) == {"p": "pending", "r": "ready", "other": "pending", "after": "blocked"}
    assert job_row(db, jid["p"])["runner_id"] == alive and job_row(db, jid["r"])["return_code"] is None
    assert tuple(db.read("SELECT remaining, failed FROM dependency_sets")[0]) == (1, 0)
    late = results(db, jid["r"])[-1]
    assert late["status"] == "failed" and "not applied" in late["message"] and late["late"] == 1


def test_a_swept_runner_that_comes_back_is_told_to_kill_what_it_lost(db: Database, tmp_path: Path) -> None:
    queue, lost, alive, jid = two_runners_holding_jobs(db, tmp_path)
    held = {jid[name]: job_row(db, jid[name])["lease_token"] for name in ("p", "r")}
    sweep(queue, lost)
    result = queue.cycle(lost, held=held, choose=lambda ready: [jid["p"]])  # it was only slow
    assert sorted(result.revoked) == sorted(held)
    assert [c.name for c in result.claimed] == ["p"] and runner_row(db, lost)["status"] == "active"
    assert sweep(queue, lost) == 1  # so its new claim is not stranded
    assert statuses(db, queue.workflow_id)["p"] == "ready"


def test_claims_the_runner_does_not_know_of_are_handed_back(db: Database, tmp_path: Path) -> None:
    """A cycle whose claim committed although the runner saw it fail: the next cycle returns them."""
    queue = make_queue(db, tmp_path, [job("a"), job("b")])
    runner = queue.register_runner(hostname="h", pid=1)
    a, b = queue.cycle(runner, choose=take_all).claimed
    result = queue.cycle(runner, held={a.id: a.lease_token})
    assert result.revoked == [] and statuses(db, queue.workflow_id) == {"a": "pending", "b": "ready"}
    assert job_row(db, b.id)["attempt"] == 0


def test_a_deleted_workflows_runner_is_told_so(db: Database, tmp_path: Path) -> None:
    queue = make_queue(db, tmp_path, [job("a")])
    runner = queue.register_runner(hostname="h", pid=1)
    queue.cycle(runner, choose=take_all)
    with pytest.raises(QueueError, match="live runner"):
        delete_workflow(db, queue.workflow_id)
    queue.finish_runner(runner)
    delete_workflow(db, queue.workflow_id)
    assert queue.cycle(runner, choose=take_all).runner_gone


def test_ids_are_never_reused_after_a_delete(db: Database, tmp_path: Path) -> None:
    first = make_queue(db, tmp_path, [job("a"), job("b")])
    first_jobs = set(ids(db).values())
    delete_workflow(db, first.workflow_id)
    second = make_queue(db, tmp_path, [job("a"), job("b")])
    assert second.workflow_id > first.workflow_id
    assert not first_jobs & set(ids(db).values())


def test_interrupted_attempts_give_up_at_max_attempts(db: Database, tmp_path: Path) -> None:
    queue = make_queue(db, tmp_path, [job("poison", max_attempts=2), job("after", depends_on=["poison"],
                                                                          cancel_on_blocking_job_failure=True)])
    jid = ids(db)
    runner = queue.register_runner(hostname="h", pid=1)
    for attempt, status, expected in ((1, "terminated", "ready"), (2, "lost", "failed")):
        (claimed,) = queue.cycle(runner, choose=take_all).claimed
        assert claimed.attempt == attempt
        queue.cycle(runner, outcomes=[done(db, claimed.id, status=status, code=None, signal=9)])
        assert statuses(db, queue.workflow_id)["poison"] == expected
    assert statuses(db, queue.workflow_id)["after"] == "canceled"
    assert "gave up after 2 attempts" in results(db, jid["poison"])[-1]["message"]


def test_finish_runner_hands_back_what_it_holds(db: Database, tmp_path: Path) -> None:
    queue = make_queue(db, tmp_path, [job("done"), job("started"), job("unstarted"), job("after", depends_on=["done"])])
    jid = ids(db)
    runner = queue.register_runner(hostname="h", pid=1)
    queue.cycle(runner, choose=lambda ready: [jid["done"], jid["started"], jid["unstarted"]])
    queue.cycle(runner, started=started(db, jid["done"], jid["started"]))
    queue.finish_runner(runner, outcomes=[done(db, jid["done"])])
    assert statuses(db, queue.workflow_id) == {"done": "completed", "started": "ready", "unstarted": "ready",
                                               "after": "ready"}
    assert job_row(db, jid["unstarted"])["attempt"] == 0  # never started: not an attempt
    assert job_row(db, jid["started"])["attempt"] == 1
    row = runner_row(db, runner)
    assert row["status"] == "finished" and row["ended_at"] is not None
    other = queue.register_runner(hostname="h2", pid=2)
    claimed = {c.name: c.attempt for c in queue.cycle(other, choose=take_all).claimed}
    assert claimed == {"started": 2, "unstarted": 1, "after": 1}


def test_release_returns_unstarted_claims(db: Database, tmp_path: Path) -> None:
    queue = make_queue(db, tmp_path, [job("a"), job("b")])
    runner = queue.register_runner(hostname="h", pid=1)
    claimed = queue.cycle(runner, choose=take_all).claimed
    queue.cycle(runner, release=[claimed[1].id])
    assert statuses(db, queue.workflow_id) == {"a": "pending", "b": "ready"}
    assert job_row(db, claimed[1].id)["attempt"] == 0


def test_a_runner_learns_its_jobs_were_canceled(db: Database, tmp_path: Path) -> None:
    queue = make_queue(db, tmp_path, [job("a"), job("b", depends_on=["a"])])
    runner = queue.register_runner(hostname="h", pid=1)
    (a,) = queue.cycle(runner, choose=take_all).claimed
    queue.cycle(runner, started=[Started(a.id, a.lease_token)])
    assert cancel_workflow(db, queue.workflow_id) == 2
    assert queue.cycle(runner, held={a.id: a.lease_token}).revoked == [a.id]
    queue.cycle(runner, outcomes=[done(db, a.id, status="lost", code=None)])
    assert statuses(db, queue.workflow_id) == {"a": "canceled", "b": "canceled"}
    assert job_row(db, a.id)["runner_id"] is None and queue.cycle(runner, held={}).revoked == []
    assert "not applied" in results(db, a.id)[0]["message"]


# -- two processes, one file ----------------------------------------------------------------------

WORKER = r"""
import json, os, sys, time
from torc_slurm.store.db import Database
from torc_slurm.store.queue import Outcome, Queue, Started

path, workflow_id, sync_dir, lock_kind = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
db = Database(path, lock_kind=lock_kind)
queue = Queue(db, workflow_id)
runner = queue.register_runner(hostname="proc", pid=os.getpid())


def wait_for(prefix):  # until both processes have reached the same point
    deadline = time.time() + 60
    while len([n for n in os.listdir(sync_dir) if n.startswith(prefix)]) < 2 and time.time() < deadline:
        time.sleep(0.002)


open(os.path.join(sync_dir, f"registered.{runner}"), "w").close()
wait_for("registered.")
claimed_log, held = [], []
for cycle in range(100_000):
    outcomes = [Outcome(job_id, attempt, "completed", token, return_code=0) for job_id, attempt, token in held]
    result = queue.cycle(runner, started=[Started(j, t) for j, _, t in held], outcomes=outcomes, want_counts=True,
                         choose=lambda ready: [j.job_id for j in ready[:4]])
    held = [(c.id, c.attempt, c.lease_token) for c in result.claimed]
    claimed_log += [(j, a) for j, a, _ in held]
    if cycle == 0:  # both hold claims at the same time before anyone completes anything
        open(os.path.join(sync_dir, f"claimed.{runner}"), "w").close()
        wait_for("claimed.")
    counts = result.counts
    if not held and not any(counts.get(s) for s in ("ready", "blocked", "pending", "running")):
        break
    time.sleep(0.001)  # "run" the jobs outside the lock
queue.finish_runner(runner)
print(json.dumps({"runner": runner, "claimed": claimed_log, "locks": db.lock.acquisitions}))
"""


@pytest.mark.parametrize("lock_kind", ["flock", "soft"])
def test_two_processes_never_double_claim(tmp_path: Path, lock_kind: str) -> None:
    db = Database(tmp_path / "shared.db", lock_kind=lock_kind)  # type: ignore[arg-type]
    n = 80
    queue = make_queue(db, tmp_path, [
        {"name": "a_{i}", "command": "a", "parameters": {"i": f"1:{n}"}},
        {"name": "b_{i}", "command": "b", "depends_on": ["a_{i}"], "parameters": {"i": f"1:{n}"}},
        {"name": "end", "command": "e", "depends_on_regexes": ["^b_"]},
    ])
    sync_dir = tmp_path / "sync"
    sync_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(db.path), str(queue.workflow_id), str(sync_dir),
                               lock_kind], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
    total = 2 * n + 1
    claims = [tuple(c) for report in reports for c in report["claimed"]]
    assert len(claims) == total and len(set(claims)) == total  # no job claimed twice
    assert all(attempt == 1 for _, attempt in claims)
    assert all(report["claimed"] for report in reports), "both processes should have taken work"
    rows = db.read("SELECT job_id, attempt, status FROM results")
    per_attempt = Counter((r[0], r[1]) for r in rows)
    assert len(rows) == total and set(per_attempt.values()) == {1}
    assert {r[2] for r in rows} == {"completed"}
    assert status_counts(db, queue.workflow_id)["completed"] == total
    assert db.read("SELECT COUNT(*) FROM dependency_sets WHERE remaining != 0")[0][0] == 0
    db.close()
