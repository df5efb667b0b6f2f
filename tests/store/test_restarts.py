"""Restarts in the queue file: the pure plan (topological order, simulated statuses), reset-status,
reinit and update, each checked against the queue's invariants after every step; chunked
application, conflicts with runners, refusals and clear errors."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import torc_slurm.store.restarts as restarts
from torc_slurm.compiler import compile_workflow
from torc_slurm.errors import QueueError, SpecError
from torc_slurm.spec.models import WorkflowSpec
from torc_slurm.states import FINISHED, HELD, UNFINISHED
from torc_slurm.store.db import Database
from torc_slurm.store.queue import Outcome, Queue, Started
from torc_slurm.store.restarts import (
    Graph,
    JobRow,
    RestartConflict,
    UnknownJob,
    plan_changes,
    plan_reinit,
    plan_reset,
    reinit,
)
from torc_slurm.store.spec_update import diff_jobs, update_workflow
from torc_slurm.store.workflows import add_workflow, initialize_workflow

BAD = set(FINISHED) - {"completed"}


@pytest.fixture
def db(tmp_path: Path):
    database = Database(tmp_path / "torc.db")
    yield database
    database.close()


def spec(jobs: list[dict[str, Any]], **top: Any) -> WorkflowSpec:
    return WorkflowSpec.model_validate({"name": "w", "jobs": jobs, **top})


DIAMOND = [
    {"name": "pre", "command": "p"},
    {"name": "w1", "command": "a", "depends_on": ["pre"]},
    {"name": "w2", "command": "b", "depends_on": ["pre"]},
    {"name": "post", "command": "c", "depends_on": ["w1", "w2"]},
    {"name": "side", "command": "s"},
]


def make(db: Database, jobs: list[dict[str, Any]], folder: Path | None = None, **top: Any) -> int:
    workflow_id = add_workflow(db, compile_workflow(spec(jobs, **top)), working_dir=folder or db.path.parent)
    initialize_workflow(db, workflow_id)
    return workflow_id


def statuses(db: Database, workflow_id: int) -> dict[str, str]:
    return {r["name"]: r["status"] for r in db.read("SELECT name, status FROM jobs WHERE workflow_id = ?",
                                                     (workflow_id,))}


def attempts(db: Database, workflow_id: int) -> dict[str, int]:
    return {r["name"]: r["attempt"] for r in db.read("SELECT name, attempt FROM jobs WHERE workflow_id = ?",
                                                      (workflow_id,))}


def check_invariants(db: Database, workflow_id: int) -> None:
    """Counters match their members' statuses; nothing ready or held waits on an unfinished set;
    nothing blocked waits on a finished one."""
    jobs = {r["id"]: dict(r) for r in db.read("SELECT * FROM jobs WHERE workflow_id = ?", (workflow_id,))}
    sets = {r["id"]: dict(r) for r in db.read("SELECT * FROM dependency_sets WHERE workflow_id = ?", (workflow_id,))}
    members: dict[int, list[int]] = {}
    for r in db.read("SELECT job_id, set_id FROM dependency_members"):
        if r["set_id"] in sets:
            members.setdefault(r["set_id"], []).append(r["job_id"])
    for set_id, row in sets.items():
        inside = [jobs[j]["status"] for j in members.get(set_id, [])]
        assert row["remaining"] == sum(s in UNFINISHED for s in inside), (row, inside)
        assert row["failed"] == sum(s in BAD for s in inside), (row, inside)
    for job in jobs.values():
        if job["depset_id"] is None:
            assert job["status"] != "blocked", job
            continue
        counters = sets[job["depset_id"]]
        if job["status"] in ("ready", *HELD):
            assert counters["remaining"] == 0, job
        if job["status"] == "blocked":
            assert counters["remaining"] > 0, job


def run_all(db: Database, workflow_id: int, fail: set[str] = frozenset(), limit: int = 100) -> None:
    """A fake runner: claim every ready job and report it (failed if named in ``fail``) until none is ready."""
    queue = Queue(db, workflow_id)
    runner = queue.register_runner(hostname="node", pid=1)
    names = {r["id"]: r["name"] for r in db.read("SELECT id, name FROM jobs WHERE workflow_id = ?", (workflow_id,))}
    for _ in range(limit):
        claimed = queue.cycle(runner, choose=lambda ready: [j.job_id for j in ready]).claimed
        if not claimed:
            break
        now = time.time()
        queue.cycle(runner, started=[Started(c.id, c.lease_token) for c in claimed],
                    outcomes=[Outcome(c.id, c.attempt, "failed" if names[c.id] in fail else "completed",
                                      c.lease_token, return_code=1 if names[c.id] in fail else 0,
                                      started_at=now, ended_at=now) for c in claimed])
        check_invariants(db, workflow_id)
    queue.finish_runner(runner)


# -- the pure plan -----------------------------------------------------------------------------
def graph_of(rows: list[tuple[int, str, str, int | None]], members: dict[int, list[int]],
             counters: dict[int, tuple[int, int]]) -> Graph:
    graph = Graph(jobs={i: JobRow(i, n, s, 1, d, True) for i, n, s, d in rows}, counters=counters)
    for job_id, sets in members.items():
        graph.member_sets[job_id] = sets
    for i, _, _, d in rows:
        if d is not None:
            graph.waiters.setdefault(d, []).append(i)
    for i, _, _, d in rows:
        upstream = [j for j, sets in members.items() if d in sets and j in graph.jobs]
        if upstream:
            graph.parent[i] = min(upstream)
    return graph


@pytest.mark.parametrize("seeds, rows, expected", [
    # w2 failed, post canceled: w2 back to ready, post waits for it again.
    ({2: "failed"}, [(2, "w2", "failed", 10), (3, "post", "canceled", 20)],
     [("w2", "failed", "ready"), ("post", "canceled", "blocked")]),
    # pre reset: everything below waits; listed upstream first whatever the ids.
    ({9: "input changed"}, [(9, "pre", "completed", None), (1, "w1", "completed", 30), (2, "w2", "completed", 30),
                            (3, "post", "completed", 20)],
     [("pre", "completed", "ready"), ("w1", "completed", "blocked"), ("w2", "completed", "blocked"),
      ("post", "completed", "blocked")]),
])
def test_plan_orders_upstream_first_and_simulates_statuses(seeds, rows, expected) -> None:
    members = {9: [30], 1: [20], 2: [20], 3: []}
    counters = {10: (0, 0), 20: (0, 1), 30: (0, 0)}
    changes = plan_changes(graph_of(rows, members, counters), seeds)
    assert [(c.name, c.old, c.new) for c in changes] == expected
    assert changes[0].reason == seeds[changes[0].job_id]
    assert all(c.reason.startswith("downstream of ") for c in changes[1:] if c.job_id not in seeds)


# -- reset-status ------------------------------------------------------------------------------
def test_failed_only_resets_failures_and_downstream_keeps_the_rest(db: Database) -> None:
    wf = make(db, DIAMOND)
    run_all(db, wf, fail={"w2"})
    assert statuses(db, wf) == {"pre": "completed", "w1": "completed", "w2": "failed", "post": "canceled",
                                "side": "completed"}
    before = attempts(db, wf)
    restart = plan_reset(db, wf, failed_only=True)
    assert [(c.name, c.old, c.new) for c in restart.changes] == [("w2", "failed", "ready"),
                                                                 ("post", "canceled", "blocked")]
    assert restart.apply(db) == 2
    check_invariants(db, wf)
    assert statuses(db, wf) == {"pre": "completed", "w1": "completed", "w2": "ready", "post": "blocked",
                                "side": "completed"}
    run_all(db, wf)
    assert set(statuses(db, wf).values()) == {"completed"}
    after = attempts(db, wf)
    assert after == {**before, "w2": before["w2"] + 1, "post": 1}  # numbering continues; the rest kept
    runs = {(r["name"], r["attempt"]): r["run_id"] for r in db.read(
        "SELECT j.name, r.attempt, r.run_id FROM results r JOIN jobs j ON j.id = r.job_id WHERE r.workflow_id = ?",
        (wf,))}
    assert runs[("w2", 1)] == 1 and runs[("w2", 2)] == 2 and runs[("pre", 1)] == 1 and len(runs) == 6


def test_job_names_and_regexes_reset_their_downstream(db: Database) -> None:
    wf = make(db, DIAMOND)
    run_all(db, wf)
    assert [c.name for c in plan_reset(db, wf, jobs=["w1"]).changes] == ["w1", "post"]
    assert [c.name for c in plan_reset(db, wf, jobs=["^w"]).changes] == ["w1", "w2", "post"]
    assert [c.name for c in plan_reset(db, wf).changes] == ["pre", "w1", "w2", "post", "side"]
    plan_reset(db, wf, jobs=["pre"]).apply(db)
    check_invariants(db, wf)
    assert statuses(db, wf) == {"pre": "ready", "w1": "blocked", "w2": "blocked", "post": "blocked",
                                "side": "completed"}


def test_unknown_names_and_empty_regexes_are_usage_errors(db: Database) -> None:
    wf = make(db, DIAMOND)
    with pytest.raises(UnknownJob, match="no job named 'wrk1'.*nearest names: w1") as info:
        plan_reset(db, wf, jobs=["wrk1"])
    assert info.value.exit_code == 2
    with pytest.raises(UnknownJob, match="no job name matches it"):
        plan_reset(db, wf, jobs=["^zzz"])
    with pytest.raises(QueueError, match="no workflow 99"):
        plan_reset(db, 99, failed_only=True)


def test_refuses_while_a_job_it_would_change_runs_but_not_for_others(db: Database) -> None:
    wf = make(db, DIAMOND)
    queue = Queue(db, wf)
    runner = queue.register_runner(hostname="node", pid=1)
    claimed = queue.cycle(runner, choose=lambda ready: [j.job_id for j in ready if j.job_id <= 2]).claimed
    assert len(claimed) == 1  # pre
    with pytest.raises(QueueError, match="pending or running: pre"):
        plan_reset(db, wf, jobs=["pre"]).apply(db)
    plan_reset(db, wf, jobs=["side"]).apply(db)  # side is not held: fine
    check_invariants(db, wf)


def test_a_job_started_between_plan_and_apply_stops_the_restart_consistently(db: Database) -> None:
    wf = make(db, DIAMOND)
    run_all(db, wf, fail={"pre"})
    restart = plan_reinit(db, wf)  # pre failed; w1, w2, post canceled
    initialize_workflow(db, wf)  # meanwhile someone re-initialized, and a runner claims pre
    queue = Queue(db, wf)
    runner = queue.register_runner(hostname="node", pid=1)
    queue.cycle(runner, choose=lambda ready: [j.job_id for j in ready])
    with pytest.raises(RestartConflict, match="job pre started"):
        restart.apply(db)
    check_invariants(db, wf)


def test_chunked_application_matches_one_chunk(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    jobs = [{"name": f"a_{i}", "command": "x"} for i in range(40)]
    jobs += [{"name": f"b_{i}", "command": "x", "depends_on": [f"a_{i}"]} for i in range(40)]
    jobs += [{"name": "all", "command": "x", "depends_on_regexes": ["^b_"]}]
    one, many = make(db, jobs), make(db, jobs)
    for wf in (one, many):
        run_all(db, wf, fail={f"a_{i}" for i in range(0, 40, 3)})
    first = plan_reset(db, one, failed_only=True)
    first.apply(db)
    monkeypatch.setattr(restarts, "CHUNK", 4)
    monkeypatch.setattr(restarts, "READ_BATCH", 3)
    second = plan_reset(db, many, failed_only=True)
    assert [c.line() for c in second.changes] == [c.line() for c in first.changes]
    second.apply(db)
    for wf in (one, many):
        check_invariants(db, wf)
    assert statuses(db, one) == statuses(db, many)
    run_all(db, many)
    assert set(statuses(db, many).values()) == {"completed"}


# -- reinit ------------------------------------------------------------------------------------
FILES = [
    {"name": "pre", "command": "p", "input_files": ["in"], "output_files": ["mid"]},
    {"name": "use", "command": "u", "input_files": ["mid"], "output_files": ["out"]},
    {"name": "other", "command": "o", "input_files": ["cfg"]},
]
FILE_DEFS = [{"name": "in", "path": "in.txt"}, {"name": "mid", "path": "mid.txt"},
             {"name": "out", "path": "out.txt"}, {"name": "cfg", "path": "cfg.txt"}]


def test_reinit_reruns_changed_inputs_and_missing_outputs_not_touched_files(db: Database, tmp_path: Path) -> None:
    for name in ("in.txt", "cfg.txt", "mid.txt", "out.txt"):
        (tmp_path / name).write_text("v1")
    wf = make(db, FILES, tmp_path, files=FILE_DEFS)
    run_all(db, wf)
    assert plan_reinit(db, wf).changes == []
    later = time.time() + 5
    os.utime(tmp_path / "cfg.txt", (later, later))  # touched, same content: not a change
    assert plan_reinit(db, wf).changes == []
    (tmp_path / "in.txt").write_text("v2")  # same size, new content
    (tmp_path / "out.txt").unlink()
    restart, run_id = reinit(db, wf)
    assert [(c.name, c.old, c.new, c.reason) for c in restart.changes] == [
        ("pre", "completed", "ready", "input in.txt changed (content)"),
        ("use", "completed", "blocked", "output out.txt missing")]
    assert run_id == 2
    check_invariants(db, wf)
    assert plan_reinit(db, wf).changes == []  # the new stats are recorded
    run_all(db, wf)
    (tmp_path / "in.txt").write_text("v3 longer")
    assert [c.reason for c in plan_reinit(db, wf).changes][:1] == ["input in.txt changed (size)"]


def test_reinit_reruns_failures_and_changed_definitions(db: Database) -> None:
    wf = make(db, DIAMOND)
    run_all(db, wf, fail={"w1"})
    with db.transaction() as conn:
        conn.execute("UPDATE jobs SET spec_hash = 'edited' WHERE workflow_id = ? AND name = 'side'", (wf,))
    changes = plan_reinit(db, wf).changes
    assert [(c.name, c.reason.split(" (")[0]) for c in changes] == [
        ("w1", "failed last time"), ("post", "canceled last time"), ("side", "its definition changed since it ran")]


def test_reinit_of_an_uninitialized_workflow_initializes_it(db: Database) -> None:
    wf = add_workflow(db, compile_workflow(spec(DIAMOND)), working_dir=db.path.parent)
    restart, run_id = reinit(db, wf)
    assert restart.initialize and run_id == 1
    assert statuses(db, wf)["pre"] == "ready"


# -- update ------------------------------------------------------------------------------------
def edited(jobs: list[dict[str, Any]], **changes: dict[str, Any]) -> list[dict[str, Any]]:
    return [{**job, **changes.get(job["name"], {})} for job in jobs]


def test_diff_names_the_changed_parts() -> None:
    old = compile_workflow(spec(DIAMOND))
    new = compile_workflow(spec(edited(DIAMOND, w1={"command": "A", "env": {"X": "1"}}, w2={"priority": 5})
                                + [{"name": "extra", "command": "e"}]))
    assert diff_jobs(old, new) == (["extra"], [], {"w1": "command, env"})


def test_update_reruns_changed_jobs_and_downstream_keeps_the_rest(db: Database) -> None:
    wf = make(db, DIAMOND)
    run_all(db, wf)
    new_jobs = [j for j in edited(DIAMOND, w2={"command": "B"}) if j["name"] != "side"]
    new_jobs.append({"name": "extra", "command": "e", "depends_on": ["w1"]})
    dry = update_workflow(db, wf, compile_workflow(spec(new_jobs)), source="s.yaml", dry_run=True)
    assert statuses(db, wf)["side"] == "completed"  # nothing written
    result = update_workflow(db, wf, compile_workflow(spec(new_jobs)), source="s.yaml")
    assert [c.line() for c in dry.changes] == [c.line() for c in result.changes]
    assert (result.added, result.removed, result.changed) == (["extra"], ["side"], [("w2", "command")])
    assert {c.name: c.new for c in result.changes} == {"w2": "ready", "post": "blocked", "extra": "ready"}
    check_invariants(db, wf)
    assert statuses(db, wf) == {"pre": "completed", "w1": "completed", "w2": "ready", "post": "blocked",
                                "extra": "ready"}
    run_all(db, wf)
    assert set(statuses(db, wf).values()) == {"completed"}
    assert attempts(db, wf) == {"pre": 1, "w1": 1, "w2": 2, "post": 2, "extra": 1}
    assert update_workflow(db, wf, compile_workflow(spec(new_jobs)), source="s.yaml").changes == []


def test_update_refuses_a_renamed_spec_and_running_jobs(db: Database) -> None:
    wf = make(db, DIAMOND)
    renamed = compile_workflow(WorkflowSpec.model_validate({"name": "other", "jobs": DIAMOND}))
    with pytest.raises(SpecError, match="a renamed spec is a new workflow") as info:
        update_workflow(db, wf, renamed, source="s.yaml")
    assert info.value.exit_code == 2
    queue = Queue(db, wf)
    runner = queue.register_runner(hostname="node", pid=1)
    queue.cycle(runner, choose=lambda ready: [j.job_id for j in ready])
    with pytest.raises(QueueError, match="cannot update while jobs are pending or running: pre"):
        update_workflow(db, wf, compile_workflow(spec(edited(DIAMOND, w1={"command": "z"}))), source="s.yaml")


# -- random workflows, random outcomes, random restarts ---------------------------------------------


@st.composite
def dags(draw: st.DrawFn) -> list[dict[str, Any]]:
    size = draw(st.integers(2, 9))
    jobs = []
    for i in range(size):
        before = draw(st.lists(st.integers(0, i - 1), max_size=3, unique=True)) if i else []
        jobs.append({"name": f"j{i}", "command": "x", "depends_on": [f"j{b}" for b in before],
                     "cancel_on_blocking_job_failure": draw(st.booleans())})
    return jobs


STEPS = st.lists(st.tuples(st.sampled_from(["run", "failed-only", "job", "reinit", "all"]),
                           st.integers(0, 8), st.sets(st.integers(0, 8), max_size=3)), min_size=1, max_size=6)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(jobs=dags(), steps=STEPS)
def test_random_restarts_keep_the_queue_consistent_and_do_what_they_print(tmp_path_factory, jobs, steps) -> None:
    with Database(tmp_path_factory.mktemp("q") / "torc.db") as db:
        wf = make(db, jobs)
        names = [j["name"] for j in jobs]
        for action, pick, failing in steps:
            if action == "run":
                run_all(db, wf, fail={names[i] for i in failing if i < len(names)})
                continue
            if action == "reinit":
                restart = plan_reinit(db, wf)
            else:
                restart = plan_reset(db, wf, failed_only=action == "failed-only",
                                     jobs=[names[pick % len(names)]] if action == "job" else ())
            before = attempts(db, wf)
            restart.apply(db)
            check_invariants(db, wf)
            now = statuses(db, wf)
            assert {c.name: c.new for c in restart.changes} == {c.name: now[c.name] for c in restart.changes}
            assert attempts(db, wf) == before  # a reset never renumbers attempts
        for _ in range(len(names) + 1):  # then everything can be brought to completion
            plan_reset(db, wf, failed_only=True).apply(db)
            run_all(db, wf)
            if set(statuses(db, wf).values()) == {"completed"}:
                break
        assert set(statuses(db, wf).values()) == {"completed"}
        check_invariants(db, wf)
