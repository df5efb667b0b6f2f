"""What a queue cycle records beyond job states: output user data a job declares but did not write,
the resources a runner's jobs held and used, and the events runners post (started, ended, work
left behind, timeouts, OOM kills, walltime stops)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.store.test_queue import db, done, ids, job, job_row, make_queue, results, started, take_all  # noqa: F401
from torc_slurm.store.db import Database
from torc_slurm.store.queue import Queue


def events(db: Database, workflow_id: int, kind: str | None = None) -> list[dict[str, Any]]:
    sql, params = "SELECT kind, message, data, source FROM events WHERE workflow_id = ?", (workflow_id,)
    if kind:
        sql, params = sql + " AND kind = ?", (workflow_id, kind)
    return [{**dict(r), "data": json.loads(r["data"]) if r["data"] else None}
            for r in db.read(sql + " ORDER BY id", params)]


def write_user_data(db: Database, workflow_id: int, name: str, job_id: int | None, attempt: int | None) -> None:
    """What `torc user-data put` records (the store's own writer is tested with the CLI)."""
    with db.transaction() as conn:
        conn.execute("UPDATE user_data SET data = '1', updated_at = ?, written_by_job_id = ?, written_attempt = ?"
                     " WHERE workflow_id = ? AND name = ?", (time.time(), job_id, attempt, workflow_id, name))


def claim_all(queue: Queue, runner: int) -> None:
    result = queue.cycle(runner, choose=take_all)
    queue.cycle(runner, started=started(queue.db, *[j.id for j in result.claimed]))


@pytest.fixture
def producer_queue(db: Database, tmp_path: Path) -> Queue:  # noqa: F811
    return make_queue(db, tmp_path, [job("train", output_user_data=["result"]),
                                     job("report", input_user_data=["result"])],
                      user_data=[{"name": "result"}])


def test_a_job_that_exits_0_without_writing_its_output_user_data_fails(db: Database, producer_queue: Queue) -> None:  # noqa: F811
    queue = producer_queue
    runner = queue.register_runner(hostname="n1", pid=1)
    claim_all(queue, runner)
    jid = ids(db)
    queue.cycle(runner, outcomes=[done(db, jid["train"])])
    train = job_row(db, jid["train"])
    assert (train["status"], train["reason"]) == ("failed", "missing output user data")
    assert "result" in results(db, jid["train"])[-1]["message"]
    assert job_row(db, jid["report"])["status"] == "canceled"  # its consumer cannot run


def test_output_user_data_counts_only_when_written_by_this_attempt(db: Database, producer_queue: Queue) -> None:  # noqa: F811
    queue = producer_queue
    jid = ids(db)
    runner = queue.register_runner(hostname="n1", pid=1)
    claim_all(queue, runner)
    attempt = job_row(db, jid["train"])["attempt"]
    write_user_data(db, queue.workflow_id, "result", jid["train"], attempt - 1)  # an older attempt's write
    queue.cycle(runner, outcomes=[done(db, jid["train"], status="terminated", code=None)])
    assert job_row(db, jid["train"])["status"] == "ready"
    claim_all(queue, runner)
    write_user_data(db, queue.workflow_id, "result", jid["train"], attempt)  # still the old attempt
    queue.cycle(runner, outcomes=[done(db, jid["train"])])
    assert job_row(db, jid["train"])["reason"] == "missing output user data"


def test_a_job_that_wrote_its_output_user_data_completes_and_releases_its_consumer(
        db: Database, producer_queue: Queue) -> None:  # noqa: F811
    queue = producer_queue
    jid = ids(db)
    runner = queue.register_runner(hostname="n1", pid=1)
    claim_all(queue, runner)
    write_user_data(db, queue.workflow_id, "result", jid["train"], job_row(db, jid["train"])["attempt"])
    queue.cycle(runner, outcomes=[done(db, jid["train"])])
    assert job_row(db, jid["train"])["status"] == "completed"
    assert job_row(db, jid["report"])["status"] == "ready"


def test_the_runner_totals_what_its_jobs_held_and_used(db: Database, tmp_path: Path) -> None:  # noqa: F811
    queue = make_queue(db, tmp_path, [job("a", resource_requirements="two"), job("b", resource_requirements="one")],
                       resource_requirements=[{"name": "two", "num_cpus": 2, "num_gpus": 1},
                                              {"name": "one", "num_cpus": 1}])
    runner = queue.register_runner(hostname="n1", pid=1, resources={"cpus": 4, "gpus": ["0"]})
    claim_all(queue, runner)
    jid = ids(db)
    queue.cycle(runner, outcomes=[done(db, jid["a"], started_at=100.0, ended_at=110.0, cpu_time_s=15.0),
                                  done(db, jid["b"], status="failed", code=1, started_at=100.0, ended_at=104.0,
                                       cpu_time_s=3.5)])
    row = dict(db.read("SELECT job_cpu_s, held_cpu_s, held_gpu_s FROM runners WHERE id = ?", (runner,))[0])
    assert row == {"job_cpu_s": 18.5, "held_cpu_s": 2 * 10 + 1 * 4, "held_gpu_s": 10.0}


def test_runners_post_started_and_ended_events(db: Database, tmp_path: Path) -> None:  # noqa: F811
    queue = make_queue(db, tmp_path, [job("a")])
    runner = queue.register_runner(hostname="n7", pid=42, slurm_job_id="99", resources={"cpus": 4})
    claim_all(queue, runner)
    queue.finish_runner(runner, outcomes=[done(db, ids(db)["a"])], report={"completed": 1, "exit_reason": "done"})
    posted = [e for e in events(db, queue.workflow_id) if e["kind"].startswith("runner_")]
    kinds = [e["kind"] for e in posted]
    assert kinds == ["runner_started", "runner_ended"]
    assert posted[0]["data"]["hostname"] == "n7" and posted[0]["data"]["cpus"] == 4
    assert posted[0]["source"] == f"runner {runner}" and "Slurm job 99" in posted[0]["message"]
    assert posted[1]["data"]["completed"] == 1 and "1 completed" in posted[1]["message"]


def test_a_runner_leaving_ready_jobs_says_how_many_need_more_time(db: Database, tmp_path: Path) -> None:  # noqa: F811
    queue = make_queue(db, tmp_path, [job("short", resource_requirements="minute"),
                                      job("long_{i}", parameters={"i": "1:3"}, resource_requirements="hour")],
                       resource_requirements=[{"name": "minute", "runtime": "PT1M"}, {"name": "hour", "runtime": "PT1H"}])
    runner = queue.register_runner(hostname="n1", pid=1)
    queue.finish_runner(runner, report={"exit_reason": "idle for 10 s"}, time_left_s=540)
    [left] = events(db, queue.workflow_id, "runner_exit_with_work_left")
    assert left["data"]["ready"] == 4 and left["data"]["need_more_time"] == 3
    assert "3 need more time than the 9 min left" in left["message"]


def test_timeouts_oom_kills_and_walltime_stops_are_posted(db: Database, tmp_path: Path) -> None:  # noqa: F811
    queue = make_queue(db, tmp_path, [job("slow"), job("greedy"), job("cut_{i}", parameters={"i": "1:2"})])
    runner = queue.register_runner(hostname="n1", pid=1)
    claim_all(queue, runner)
    jid = ids(db)
    queue.cycle(runner, outcomes=[
        done(db, jid["slow"], status="failed", code=None, reason="timeout", message="ran past 1m x 1.5"),
        done(db, jid["greedy"], status="failed", code=None, reason="oom"),
        done(db, jid["cut_1"], status="terminated", code=None, reason="walltime"),
        done(db, jid["cut_2"], status="terminated", code=None, reason="walltime")])
    assert [e["data"]["job"] for e in events(db, queue.workflow_id, "job_timeout")] == ["slow"]
    assert [e["data"]["job"] for e in events(db, queue.workflow_id, "job_oom")] == ["greedy"]
    [walltime] = events(db, queue.workflow_id, "job_walltime_terminated")
    assert walltime["data"]["jobs"] == ["cut_1", "cut_2"] and walltime["data"]["count"] == 2


def test_finish_runner_returns_the_work_left_sentence_for_the_log(db: Database, tmp_path: Path) -> None:  # noqa: F811
    queue = make_queue(db, tmp_path, [job("a"), job("b")])
    runner = queue.register_runner(hostname="n1", pid=1)
    left = queue.finish_runner(runner, report={"exit_reason": "walltime"}, time_left_s=None)
    assert left == f"runner {runner} ended (walltime) with 2 ready job(s) left"
    other = make_queue(db, tmp_path, [job("c")])
    runner2 = other.register_runner(hostname="n1", pid=2)
    claimed = other.cycle(runner2, choose=take_all).claimed
    other.cycle(runner2, started=started(db, claimed[0].id))
    assert other.finish_runner(runner2, outcomes=[done(db, claimed[0].id)]) is None
