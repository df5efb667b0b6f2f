"""User data and events in the queue file: the rules of a put (valid JSON, one run per attempt,
who may write what), reads that name the nearest names, event reads that walk an index with a
limit (category, since, after an id), and the events posted by allocations and the sweep."""

from __future__ import annotations

import datetime
import json
import random
from pathlib import Path
from typing import Any

import pytest

from torc_slurm.compiler import compile_workflow
from torc_slurm.errors import QueueError
from torc_slurm.spec.models import WorkflowSpec
from torc_slurm.store import events as ev
from torc_slurm.store.allocations import record_allocations, update_allocation_states
from torc_slurm.store.db import Database
from torc_slurm.store.leases import SweepRequest
from torc_slurm.store.queue import Queue, Started
from torc_slurm.store.user_data import (JobContext, StaleAttempt, UnknownUserData, UserDataNotWritten,
                                        UserDataOwned, get_user_data, list_user_data, put_user_data)
from torc_slurm.store.workflows import add_workflow, initialize_workflow


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(tmp_path / "torc.db")
    yield database
    database.close()


SPEC = {
    "name": "ud",
    "user_data": [{"name": "result"}, {"name": "other_result"}, {"name": "params", "data": {"lr": 0.01}},
                  {"name": "shared"}],
    "jobs": [
        {"name": "train", "command": "true", "output_user_data": ["result"], "input_user_data": ["params"]},
        {"name": "train2", "command": "true", "output_user_data": ["other_result"]},
        {"name": "report", "command": "true", "input_user_data": ["result"]},
    ],
}


def make(db: Database, tmp_path: Path, spec: dict[str, Any] = SPEC) -> Queue:
    workflow_id = add_workflow(db, compile_workflow(WorkflowSpec.model_validate(spec)), working_dir=tmp_path)
    initialize_workflow(db, workflow_id, force=True)
    return Queue(db, workflow_id)


def job_id(db: Database, queue: Queue, name: str) -> int:
    return db.read("SELECT id FROM jobs WHERE workflow_id = ? AND name = ?", (queue.workflow_id, name))[0][0]


def claim(queue: Queue, runner: int, job: int, *, start: bool = True) -> JobContext:
    """Claim ``job`` as ``runner`` (and mark it started); the job's context as the runner gives it."""
    (claimed,) = queue.cycle(runner, choose=lambda ready: [j.job_id for j in ready if j.job_id == job]).claimed
    if start:
        queue.cycle(runner, started=[Started(job, claimed.lease_token)])
    return JobContext(job, claimed.attempt)


def row(db: Database, workflow_id: int, name: str) -> dict[str, Any]:
    return dict(db.read("SELECT * FROM user_data WHERE workflow_id = ? AND name = ?", (workflow_id, name))[0])


# -- put and get -----------------------------------------------------------------------------------
def test_a_put_by_hand_is_read_back_and_records_when(db: Database, tmp_path: Path) -> None:
    queue = make(db, tmp_path)
    entry = put_user_data(db, queue.workflow_id, "shared", '{"a": [1, 2.5, "x"], "b": null}')
    assert entry.data == {"a": [1, 2.5, "x"], "b": None} and entry.written
    assert (entry.written_by_job_id, entry.written_attempt) == (None, None)
    got = get_user_data(db, queue.workflow_id, "shared")
    assert got.data == {"a": [1, 2.5, "x"], "b": None}
    assert got.updated_at is not None and abs(got.updated_at - entry.updated_at) < 1e-6  # type: ignore[operator]
    # The spec's own value counts as written (by the spec: no time, no writer).
    params = get_user_data(db, queue.workflow_id, "params")
    assert params.data == {"lr": 0.01} and params.written and params.updated_at is None


def test_invalid_json_is_refused_with_its_position_and_changes_nothing(db: Database, tmp_path: Path) -> None:
    queue = make(db, tmp_path)
    before = row(db, queue.workflow_id, "shared")
    with pytest.raises(ev.InvalidJSON, match=r"Expecting ',' delimiter at line 2, column 9") as caught:
        put_user_data(db, queue.workflow_id, "shared", '{"a": 1,\n "b": 2 "c": 3}')
    excerpt, caret = str(caught.value).splitlines()[-2:]
    assert excerpt == '   "b": 2 "c": 3}' and caret == "  " + " " * 8 + "^"  # under the '"' of "c"
    with pytest.raises(ev.InvalidJSON, match="NaN is not valid JSON"):
        put_user_data(db, queue.workflow_id, "shared", '{"loss": NaN}')
    with pytest.raises(ev.InvalidJSON, match="line 1, column 1"):
        put_user_data(db, queue.workflow_id, "shared", "")
    assert row(db, queue.workflow_id, "shared") == before


def test_unknown_name_lists_the_nearest_names(db: Database, tmp_path: Path) -> None:
    queue = make(db, tmp_path)
    with pytest.raises(UnknownUserData, match=r"no user data named 'reslt' .*nearest names: result") as caught:
        get_user_data(db, queue.workflow_id, "reslt")
    assert caught.value.suggestions[0] == "result"
    with pytest.raises(UnknownUserData, match=r"it has 4 entries"):
        get_user_data(db, queue.workflow_id, "zzzzzz")


def test_a_declared_entry_never_written_says_so(db: Database, tmp_path: Path) -> None:
    queue = make(db, tmp_path)
    with pytest.raises(UserDataNotWritten, match=r"'result' .* has no value: its producer job 'train' \(id \d+\) "
                                                 "has not written it yet"):
        get_user_data(db, queue.workflow_id, "result")
    entry = get_user_data(db, queue.workflow_id, "result", require_written=False)
    assert not entry.written and entry.producer_job == "train"
    with pytest.raises(UserDataNotWritten, match="no job or person has written it yet"):
        get_user_data(db, queue.workflow_id, "shared")


def test_unknown_workflow_names_the_nearest_ids(db: Database, tmp_path: Path) -> None:
    make(db, tmp_path)
    make(db, tmp_path)
    with pytest.raises(QueueError, match=r"no workflow 9 in .*nearest workflow ids: 1, 2"):
        get_user_data(db, 9, "result")
    with pytest.raises(QueueError, match=r"no workflow 9 "):
        put_user_data(db, 9, "result", "1")
    with pytest.raises(QueueError, match=r"no workflow 9 "):
        ev.list_events(db, 9)


# -- puts from jobs: the first law -----------------------------------------------------------------
def test_a_job_writes_its_declared_output_as_its_current_attempt(db: Database, tmp_path: Path) -> None:
    queue = make(db, tmp_path)
    runner = queue.register_runner(hostname="n1", pid=1)
    train = job_id(db, queue, "train")
    context = claim(queue, runner, train, start=False)  # pending: the process may run before 'started' is recorded
    entry = put_user_data(db, queue.workflow_id, "result", '{"loss": 0.1}', job=context)
    assert (entry.written_by_job_id, entry.written_attempt, entry.written_by_job) == (train, 1, "train")
    stored = row(db, queue.workflow_id, "result")
    assert (stored["written_by_job_id"], stored["written_attempt"], json.loads(stored["data"])) == \
        (train, 1, {"loss": 0.1})


def test_a_stale_attempt_is_refused_and_changes_nothing(db: Database, tmp_path: Path) -> None:
    """First law: a job runs once. Attempt 1 is swept with its runner and the job runs again as
    attempt 2; attempt 1's process, still alive somewhere, must not be able to write."""
    queue = make(db, tmp_path)
    train = job_id(db, queue, "train")
    lost = queue.register_runner(hostname="dead", pid=1)
    first = claim(queue, lost, train)
    lease = db.read("SELECT lease_seq FROM runners WHERE id = ?", (lost,))[0][0]
    assert queue.sweep([SweepRequest(lost, lease, "node gone")], by="test") == 1
    alive = queue.register_runner(hostname="alive", pid=2)
    second = claim(queue, alive, train)
    assert (first.attempt, second.attempt) == (1, 2)
    put_user_data(db, queue.workflow_id, "result", '{"loss": 0.2}', job=second)
    before = row(db, queue.workflow_id, "result")
    with pytest.raises(StaleAttempt, match=r"job 'train' \(id \d+\) attempt 1 is no longer current \(the job is "
                                           r"now at attempt 2, running\).*Nothing was written"):
        put_user_data(db, queue.workflow_id, "result", '{"loss": 0.9}', job=first)
    assert row(db, queue.workflow_id, "result") == before
    # Once attempt 2 is over, it cannot write either (a background process left behind, say).
    queue.cycle(alive, outcomes=[_completed(db, train)])
    with pytest.raises(StaleAttempt, match=r"attempt 2 is no longer current \(the job is now at attempt 2, "
                                           r"completed\)"):
        put_user_data(db, queue.workflow_id, "result", '{"loss": 0.3}', job=second)
    with pytest.raises(StaleAttempt):
        put_user_data(db, queue.workflow_id, "brand_new", "1", job=second)
    assert row(db, queue.workflow_id, "result") == before
    assert not db.read("SELECT 1 FROM user_data WHERE name = 'brand_new'")


def _completed(db: Database, job: int):  # noqa: ANN202
    from torc_slurm.store.queue import Outcome

    attempt, token = db.read("SELECT attempt, lease_token FROM jobs WHERE id = ?", (job,))[0]
    return Outcome(job, attempt, "completed", token, return_code=0)


def test_a_job_may_not_write_another_jobs_output(db: Database, tmp_path: Path) -> None:
    queue = make(db, tmp_path)
    runner = queue.register_runner(hostname="n1", pid=1)
    context = claim(queue, runner, job_id(db, queue, "train2"))
    before = row(db, queue.workflow_id, "result")
    with pytest.raises(UserDataOwned, match=r"'result' is the declared output of job 'train' .*job 'train2'"):
        put_user_data(db, queue.workflow_id, "result", "1", job=context)
    assert row(db, queue.workflow_id, "result") == before
    # Entries nobody produces are shared; a new name is created with no producer.
    put_user_data(db, queue.workflow_id, "shared", '"from train2"', job=context)
    created = put_user_data(db, queue.workflow_id, "made_at_run_time", "[1, 2]", job=context)
    assert created.producer_job_id is None and created.written_by_job == "train2" and created.data == [1, 2]
    assert get_user_data(db, queue.workflow_id, "shared").data == "from train2"


def test_a_job_of_another_workflow_is_refused(db: Database, tmp_path: Path) -> None:
    first = make(db, tmp_path)
    second = make(db, tmp_path)
    runner = first.register_runner(hostname="n1", pid=1)
    context = claim(first, runner, job_id(db, first, "train"))
    with pytest.raises(QueueError, match="is not a job of workflow"):
        put_user_data(db, second.workflow_id, "shared", "1", job=context)


def test_by_hand_a_produced_entry_needs_force(db: Database, tmp_path: Path) -> None:
    queue = make(db, tmp_path)
    with pytest.raises(UserDataOwned, match="pass --force"):
        put_user_data(db, queue.workflow_id, "result", "1")
    entry = put_user_data(db, queue.workflow_id, "result", "1", force=True)
    assert entry.data == 1 and entry.written_by_job_id is None  # not the producer's output


def test_bad_names_are_refused(db: Database, tmp_path: Path) -> None:
    queue = make(db, tmp_path)
    for name in ("a/b", "..", ""):
        with pytest.raises(QueueError, match="not allowed"):
            put_user_data(db, queue.workflow_id, name, "1")


def test_list_is_by_name_with_a_limit(db: Database, tmp_path: Path) -> None:
    queue = make(db, tmp_path)
    entries, more = list_user_data(db, queue.workflow_id, limit=2)
    assert [e.name for e in entries] == ["other_result", "params"] and more
    entries, more = list_user_data(db, queue.workflow_id)
    assert [e.name for e in entries] == ["other_result", "params", "result", "shared"] and not more


# -- events ----------------------------------------------------------------------------------------
def test_events_by_category_since_and_after_an_id(db: Database, tmp_path: Path) -> None:
    queue = make(db, tmp_path)
    wf = queue.workflow_id
    posted = [ev.post_event(db, wf, "step" if i % 2 else "note", data_json=json.dumps({"i": i}), source="user")
              for i in range(10)]
    page = ev.list_events(db, wf, category="step")
    assert [e.data for e in page.events] == [{"i": i} for i in (1, 3, 5, 7, 9)] and not page.more
    page = ev.list_events(db, wf, limit=3)
    assert [e.data["i"] for e in page.events if e.data] == [7, 8, 9] and page.more
    assert page.last_id == posted[-1].id
    after = ev.events_after(db, wf, posted[4].id)
    assert [e.id for e in after] == [e.id for e in posted[5:]]
    assert [e.data["i"] for e in ev.events_after(db, wf, posted[4].id, category="note")] == [6, 8]  # type: ignore[index]
    assert ev.events_after(db, wf, posted[-1].id) == []


def _stamp(db: Database, stamps: dict[int, float]) -> None:
    with db.transaction() as conn:
        conn.executemany("UPDATE events SET at = ? WHERE id = ?", [(at, i) for i, at in stamps.items()])


def test_since_finds_the_first_event_at_or_after_the_time(db: Database, tmp_path: Path) -> None:
    """Two workflows' events interleaved (ids are shared), stamped one second apart, some seconds
    without events: every boundary gives exactly the events at or after it."""
    one, two = make(db, tmp_path), make(db, tmp_path)
    rng = random.Random(7)
    stamps: dict[int, float] = {}
    mine: list[tuple[int, float]] = []
    at = 1_000_000.0
    for _ in range(60):
        at += rng.choice((1.0, 1.0, 3.0))
        target = rng.choice((one, two)).workflow_id
        event = ev.post_event(db, target, "tick")
        stamps[event.id] = at
        if target == one.workflow_id:
            mine.append((event.id, at))
    with db.transaction() as conn:  # the 'created'/'initialized' events come first in time
        conn.execute("UPDATE events SET at = 0 WHERE kind != 'tick'")
    _stamp(db, stamps)
    for since in (0.0, 999_999.0, *(a for _, a in mine), *(a + 0.5 for _, a in mine), at + 1):
        page = ev.list_events(db, one.workflow_id, category="tick", since=since, limit=1000)
        assert [e.id for e in page.events] == [i for i, a in mine if a >= since], since


def test_event_reads_walk_an_index_in_one_lock(db: Database, tmp_path: Path) -> None:
    queue = make(db, tmp_path)
    for i in range(5):
        ev.post_event(db, queue.workflow_id, "tick", data_json=str(i))
    statements: list[str] = []
    conn = db._connection()
    conn.set_trace_callback(statements.append)
    try:
        before = db.lock.acquisitions
        ev.list_events(db, queue.workflow_id, category="tick", since=0.0, limit=3)
        ev.list_events(db, queue.workflow_id, since=0.0)
        ev.list_events(db, queue.workflow_id)
        ev.events_after(db, queue.workflow_id, 2)
        ev.events_after(db, queue.workflow_id, 2, category="tick")
        assert db.lock.acquisitions - before == 5
    finally:
        conn.set_trace_callback(None)
    reads = [s for s in statements if s.lstrip().upper().startswith("SELECT") and "events" in s]
    assert len(reads) >= 5
    for sql in set(reads):
        plan = " ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql))
        assert "SCAN events" not in plan or "USING" in plan and "INDEX" in plan, (sql, plan)
        assert "events_by" in plan or "INTEGER PRIMARY KEY" in plan, (sql, plan)
        # Each statement either fetches one row by id or stops at a LIMIT, in index order.
        assert "rowid=?" in plan or "LIMIT" in sql, (sql, plan)
        assert "TEMP B-TREE" not in plan, (sql, plan)


@pytest.mark.parametrize(("text", "seconds_ago"), [
    ("10m", 600), ("2h", 7200), ("1d", 86400), ("1h30m", 5400), ("45s", 45), ("1.5h", 5400),
    ("PT10M", 600), ("1w", 604800), ("90 min", 5400)])
def test_since_accepts_relative_durations(text: str, seconds_ago: float) -> None:
    assert ev.parse_since(text, now=1_000_000.0) == pytest.approx(1_000_000.0 - seconds_ago)


def test_since_accepts_iso_times_and_refuses_the_rest() -> None:
    utc = datetime.timezone.utc
    assert ev.parse_since("2026-11-28T10:00:00Z") == datetime.datetime(2026, 11, 28, 10, tzinfo=utc).timestamp()
    assert ev.parse_since("2026-11-28T10:00+01:00") == \
        datetime.datetime(2026, 11, 28, 9, tzinfo=utc).timestamp()
    assert ev.parse_since("2026-11-28") == datetime.datetime(2026, 11, 28).timestamp()  # local midnight
    for bad in ("yesterday", "10 parsecs", "", "PT", "-5m"):
        with pytest.raises(QueueError, match="invalid time"):
            ev.parse_since(bad)


def test_categories_and_sizes_are_checked(db: Database, tmp_path: Path) -> None:
    queue = make(db, tmp_path)
    for bad in ("", "has space", "x" * 65, "-lead"):
        with pytest.raises(QueueError, match="invalid event category"):
            ev.post_event(db, queue.workflow_id, bad)
    with pytest.raises(ev.InvalidJSON, match="line 1, column 2"):
        ev.post_event(db, queue.workflow_id, "ok", data_json="{bad}")
    with pytest.raises(ev.InvalidJSON, match="over the 1,048,576-byte limit"):
        ev.post_event(db, queue.workflow_id, "ok", data_json=json.dumps("x" * (1 << 20)))


# -- events posted by allocations and the sweep ------------------------------------------------------
def kinds(db: Database, workflow_id: int, *wanted: str) -> list[tuple[str, Any, str | None]]:
    return [(e.category, e.data, e.source) for e in ev.list_events(db, workflow_id, limit=1000).events
            if e.category in wanted]


def test_allocations_post_submitted_started_and_ended(db: Database, tmp_path: Path) -> None:
    wf = make(db, tmp_path).workflow_id
    record_allocations(db, wf, "cpu", 2, [("101", None), ("102", "/s.sh"), ("103", None)])
    assert kinds(db, wf, "allocation_submitted") == [
        ("allocation_submitted", {"slurm_job_id": j, "scheduler": "cpu", "num_nodes": 2}, "torc")
        for j in ("101", "102", "103")]
    update_allocation_states(db, wf, {"101": "PENDING", "102": "RUNNING"})
    update_allocation_states(db, wf, {"101": "RUNNING", "102": "RUNNING", "103": "gone"})  # 102: no change
    update_allocation_states(db, wf, {"101": "COMPLETED", "102": "TIMEOUT"})
    update_allocation_states(db, wf, {"101": "COMPLETED"})  # no change, no event
    seen = [(kind, data["slurm_job_id"], data["previous_state"], data["state"])
            for kind, data, _ in kinds(db, wf, "allocation_started", "allocation_ended")]
    assert seen == [("allocation_started", "102", "submitted", "RUNNING"),
                    ("allocation_started", "101", "PENDING", "RUNNING"),
                    ("allocation_ended", "103", "submitted", "gone"),
                    ("allocation_ended", "101", "RUNNING", "COMPLETED"),
                    ("allocation_ended", "102", "RUNNING", "TIMEOUT")]


def test_the_sweep_posts_one_event_per_runner_with_its_figures(db: Database, tmp_path: Path) -> None:
    queue = make(db, tmp_path)
    lost = queue.register_runner(hostname="dead", pid=1)
    claim(queue, lost, job_id(db, queue, "train"))
    claim(queue, lost, job_id(db, queue, "train2"), start=False)
    idle = queue.register_runner(hostname="idle", pid=2)
    leases = dict(db.read("SELECT id, lease_seq FROM runners"))
    queue.sweep([SweepRequest(lost, leases[lost], "node gone"), SweepRequest(idle, leases[idle], "silent")],
                by="runner 9")
    swept = kinds(db, queue.workflow_id, "runner_swept")
    assert swept == [
        ("runner_swept", {"runner_id": lost, "hostname": "dead", "reason": "node gone", "jobs_returned": 2,
                          "jobs_failed": 0}, "runner 9"),
        ("runner_swept", {"runner_id": idle, "hostname": "idle", "reason": "silent", "jobs_returned": 0,
                          "jobs_failed": 0}, "runner 9")]


def test_refreshing_from_slurm_posts_what_changed(db: Database, tmp_path: Path) -> None:
    """Through `slurm.allocations`: squeue's answer moves allocations on (gone when Slurm forgot
    them), scancel ends the rest; each change is one event."""
    from torc_slurm.slurm.allocations import cancel_allocations, refresh_allocations
    from torc_slurm.slurm.backend import JobInfo, SlurmState

    class FakeSlurm:
        def __init__(self) -> None:
            self.states = {"201": SlurmState.RUNNING, "202": SlurmState.PENDING}
            self.canceled: list[str] = []

        def status(self, job_ids: list[str]) -> dict[str, JobInfo]:
            return {j: JobInfo(j, self.states[j], 60, None) for j in job_ids if j in self.states}

        def cancel(self, job_ids: list[str]) -> None:
            self.canceled += job_ids

    wf = make(db, tmp_path).workflow_id
    record_allocations(db, wf, "cpu", 1, [("201", None), ("202", None), ("203", None)])
    slurm = FakeSlurm()
    refresh_allocations(db, slurm, wf)  # type: ignore[arg-type]
    refresh_allocations(db, slurm, wf)  # type: ignore[arg-type]  (nothing new)
    assert cancel_allocations(db, wf, slurm) == ["201", "202"]  # type: ignore[arg-type]
    seen = [(kind, data["slurm_job_id"], data["state"])
            for kind, data, _ in kinds(db, wf, "allocation_started", "allocation_ended")]
    assert seen == [("allocation_started", "201", "RUNNING"), ("allocation_ended", "203", "gone"),
                    ("allocation_ended", "201", "canceled"), ("allocation_ended", "202", "canceled")]


def test_a_workflow_update_keeps_user_data_written_while_it_ran(db: Database, tmp_path: Path) -> None:
    """Entries created by `torc user-data put` (in no spec) and spec entries written at run time
    survive `workflows update` (and so `torc run SPEC` resuming); an unwritten spec entry takes the
    spec's new value."""
    from torc_slurm.store.spec_update import update_workflow

    queue = make(db, tmp_path)
    put_user_data(db, queue.workflow_id, "made_at_runtime", '{"n": 1}')
    put_user_data(db, queue.workflow_id, "shared", '{"by": "hand"}')
    edited = json.loads(json.dumps(SPEC))
    edited["user_data"] = [d for d in edited["user_data"] if d["name"] != "shared"] + [{"name": "extra", "data": 3}]
    edited["user_data"][2]["data"] = {"lr": 0.1}  # params: never written at run time
    update_workflow(db, queue.workflow_id, compile_workflow(WorkflowSpec.model_validate(edited)), source="s.yaml")
    assert get_user_data(db, queue.workflow_id, "made_at_runtime").data == {"n": 1}
    assert get_user_data(db, queue.workflow_id, "shared").data == {"by": "hand"}
    assert get_user_data(db, queue.workflow_id, "params").data == {"lr": 0.1}
    assert get_user_data(db, queue.workflow_id, "extra").data == 3
