"""Workflows in the queue file: written whole in one transaction, initialized, counted, canceled,
deleted; many workflows with integer ids side by side."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import torc_slurm.store.workflows as workflows_module
from torc_slurm.compiler import CompiledWorkflow, compile_workflow
from torc_slurm.errors import QueueError, SpecError
from torc_slurm.spec.models import WorkflowSpec
from torc_slurm.store.db import Database
from torc_slurm.store.queue import Outcome, Queue
from torc_slurm.store.workflows import (
    add_workflow,
    cancel_workflow,
    delete_workflow,
    ensure_initialized,
    get_workflow,
    initialize_workflow,
    list_jobs,
    list_workflows,
    missing_inputs,
    status_counts,
)

WORKFLOW_TABLES = ("workflows", "jobs", "dependency_sets", "files", "user_data", "events", "runners", "results")


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(tmp_path / "torc.db")
    yield database
    database.close()


def compiled(jobs: list[dict[str, Any]], **top: Any) -> CompiledWorkflow:
    return compile_workflow(WorkflowSpec.model_validate({"name": "w", "jobs": jobs, **top}))


DIAMOND = dict(
    jobs=[
        {"name": "pre", "command": "make raw", "input_files": ["config"], "output_files": ["raw"],
         "output_user_data": ["meta"], "env": {"A": "1"}},
        {"name": "left", "command": "l", "input_files": ["raw"], "output_files": ["l_out"]},
        {"name": "right", "command": "r", "input_files": ["raw"], "input_user_data": ["meta"],
         "output_files": ["r_out"]},
        {"name": "post", "command": "p", "input_files": ["l_out", "r_out"], "priority": 3},
    ],
    files=[{"name": "config", "path": "config.yaml"}, {"name": "raw", "path": "raw.txt"},
           {"name": "l_out", "path": "l.txt"}, {"name": "r_out", "path": "r.txt"}],
    user_data=[{"name": "meta", "data": {"k": [1, 2]}}],
)


def diamond() -> CompiledWorkflow:
    return compiled(**DIAMOND)


def count(db: Database, table: str, workflow_id: int | None = None) -> int:
    if workflow_id is None:
        return db.read(f"SELECT COUNT(*) FROM {table}")[0][0]
    column = "id" if table == "workflows" else "workflow_id"
    return db.read(f"SELECT COUNT(*) FROM {table} WHERE {column} = ?", (workflow_id,))[0][0]


def rows_of(db: Database, workflow_id: int) -> dict[str, int]:
    """Every row that belongs to the workflow, table by table (members and job_io through jobs)."""
    counts = {table: count(db, table, workflow_id) for table in WORKFLOW_TABLES}
    counts["dependency_members"] = db.read(
        "SELECT COUNT(*) FROM dependency_members m JOIN dependency_sets s ON s.id = m.set_id"
        " WHERE s.workflow_id = ?", (workflow_id,))[0][0]
    counts["job_io"] = db.read("SELECT COUNT(*) FROM job_io io JOIN jobs j ON j.id = io.job_id"
                               " WHERE j.workflow_id = ?", (workflow_id,))[0][0]
    return counts


# -- writing --------------------------------------------------------------------------------------

def test_add_workflow_writes_everything(db: Database, tmp_path: Path) -> None:
    workflow_id = add_workflow(db, diamond(), working_dir=tmp_path, source="diamond.yaml")
    assert isinstance(workflow_id, int) and workflow_id == 1
    row = get_workflow(db, workflow_id)
    assert (row.name, row.status, row.spec_source) == ("w", "uninitialized", "diamond.yaml")
    assert row.working_dir == str(tmp_path.absolute())
    spec_json = db.read("SELECT spec_json FROM workflows WHERE id = ?", (workflow_id,))[0][0]
    assert WorkflowSpec.model_validate_json(spec_json).jobs[0].name == "pre"

    jobs = {r["name"]: dict(r) for r in db.read("SELECT * FROM jobs WHERE workflow_id = ?", (workflow_id,))}
    assert set(jobs) == {"pre", "left", "right", "post"}
    assert all(j["status"] == "uninitialized" for j in jobs.values())
    assert jobs["pre"]["depset_id"] is None and json.loads(jobs["pre"]["env"]) == {"A": "1"}
    assert jobs["post"]["priority"] == 3 and jobs["post"]["rank"] == 0
    assert (jobs["left"]["num_cpus"], jobs["left"]["memory_bytes"], jobs["left"]["runtime_s"]) == (1, 2**30, 60)  # the defaults: torc's one minute

    def members(job: str) -> set[str]:
        return {r[0] for r in db.read(
            "SELECT j.name FROM dependency_members m JOIN jobs j ON j.id = m.job_id WHERE m.set_id = ?",
            (jobs[job]["depset_id"],))}

    assert members("left") == {"pre"} and members("right") == {"pre"} and members("post") == {"left", "right"}
    assert jobs["left"]["depset_id"] == jobs["right"]["depset_id"]  # equal sets are one row
    sets = db.read("SELECT size, remaining FROM dependency_sets WHERE workflow_id = ? ORDER BY id", (workflow_id,))
    assert [tuple(r) for r in sets] == [(1, 1), (2, 2)]

    files = {r["name"]: r for r in db.read("SELECT * FROM files WHERE workflow_id = ?", (workflow_id,))}
    assert files["config"]["producer_job_id"] is None and files["raw"]["producer_job_id"] == jobs["pre"]["id"]
    data = db.read("SELECT data, producer_job_id FROM user_data WHERE workflow_id = ?", (workflow_id,))[0]
    assert json.loads(data[0]) == {"k": [1, 2]} and data[1] == jobs["pre"]["id"]
    io = {(r[0], r[1], r[2]) for r in db.read(
        "SELECT j.name, io.kind, COALESCE(f.name, u.name) FROM job_io io JOIN jobs j ON j.id = io.job_id"
        " LEFT JOIN files f ON f.id = io.item_id AND io.kind LIKE '%file'"
        " LEFT JOIN user_data u ON u.id = io.item_id AND io.kind LIKE '%user_data'")}
    assert ("right", "input_user_data", "meta") in io and ("post", "input_file", "r_out") in io
    assert ("pre", "output_file", "raw") in io and len(io) == 10


def test_one_transaction_per_workflow(db: Database, tmp_path: Path) -> None:
    before = db.lock.acquisitions
    add_workflow(db, diamond(), working_dir=tmp_path)
    assert db.lock.acquisitions == before + 1


def test_many_workflows_in_one_file(db: Database, tmp_path: Path) -> None:
    ids = [add_workflow(db, diamond(), working_dir=tmp_path) for _ in range(3)]
    assert ids == [1, 2, 3]
    assert [w.id for w in list_workflows(db)] == ids
    for workflow_id in ids:
        assert count(db, "jobs", workflow_id) == 4
        # every member of this workflow's sets is one of its own jobs
        foreign = db.read(
            "SELECT COUNT(*) FROM dependency_members m JOIN dependency_sets s ON s.id = m.set_id"
            " JOIN jobs j ON j.id = m.job_id WHERE s.workflow_id = ? AND j.workflow_id != ?",
            (workflow_id, workflow_id))[0][0]
        assert foreign == 0
    initialize_workflow(db, 2, force=True)
    assert status_counts(db, 2)["ready"] == 1 and status_counts(db, 1)["uninitialized"] == 4


def failing_add_event(*args: Any, **kwargs: Any) -> None:
    raise sqlite3.OperationalError("disk I/O error (injected)")


def test_a_failure_at_the_end_of_the_write_leaves_nothing(db: Database, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    first = add_workflow(db, diamond(), working_dir=tmp_path)
    before = rows_of(db, first)
    monkeypatch.setattr(workflows_module, "add_event", failing_add_event)  # the last insert of the write
    with pytest.raises(sqlite3.OperationalError, match="injected"):
        add_workflow(db, diamond(), working_dir=tmp_path)
    assert count(db, "workflows") == 1
    assert all(n == 0 for n in rows_of(db, first + 1).values())
    assert count(db, "jobs") == 4 and count(db, "dependency_members") == 3 and count(db, "job_io") == 10
    assert rows_of(db, first) == before


def test_a_failure_in_the_middle_of_the_write_leaves_nothing(db: Database, tmp_path: Path) -> None:
    first = add_workflow(db, diamond(), working_dir=tmp_path)
    bad = diamond()
    bad.user_data[0] = replace(bad.user_data[0], data={1, 2})  # jobs and files are written by then
    with pytest.raises(TypeError, match="JSON serializable"):
        add_workflow(db, bad, working_dir=tmp_path)
    assert all(n == 0 for n in rows_of(db, first + 1).values())
    assert count(db, "jobs") == 4 and count(db, "files") == 4 and count(db, "dependency_sets") == 2
    assert add_workflow(db, diamond(), working_dir=tmp_path) == first + 1  # the file is still usable


def test_naive_regex_workflow_is_about_2000_rows(db: Database, tmp_path: Path) -> None:
    jobs = ([{"name": f"pre_{i}", "command": "x"} for i in range(1000)]
            + [{"name": f"work_{i}", "command": "y", "depends_on_regexes": ["^pre_.*"]} for i in range(1000)])
    compiled_workflow = compiled(jobs)
    assert compiled_workflow.logical_dependencies == 1_000_000
    workflow_id = add_workflow(db, compiled_workflow, working_dir=tmp_path)
    assert count(db, "dependency_sets", workflow_id) == 1
    assert count(db, "dependency_members") == 1000
    pointers = db.read("SELECT COUNT(*) FROM jobs WHERE workflow_id = ? AND depset_id IS NOT NULL",
                       (workflow_id,))[0][0]
    assert pointers == 1000
    assert db.read("SELECT size FROM dependency_sets")[0][0] == 1000
    initialize_workflow(db, workflow_id)
    assert status_counts(db, workflow_id)["ready"] == 1000 and status_counts(db, workflow_id)["blocked"] == 1000


# -- initialization -------------------------------------------------------------------------------

def test_initialize_sets_ready_and_blocked(db: Database, tmp_path: Path) -> None:
    workflow_id = add_workflow(db, diamond(), working_dir=tmp_path)
    (tmp_path / "config.yaml").write_text("x")
    initialize_workflow(db, workflow_id)
    statuses = {j["name"]: j["status"] for j in list_jobs(db, workflow_id)}
    assert statuses == {"pre": "ready", "left": "blocked", "right": "blocked", "post": "blocked"}
    assert get_workflow(db, workflow_id).status == "initialized"
    assert db.read("SELECT SUM(size != remaining) FROM dependency_sets")[0][0] == 0


def test_missing_external_inputs_are_refused_naming_file_and_jobs(db: Database, tmp_path: Path) -> None:
    workflow = compiled(
        [{"name": "a", "command": "x", "input_files": ["cfg"]}, {"name": "b", "command": "x", "input_files": ["cfg"]},
         {"name": "c", "command": "x", "input_files": ["present"]}],
        files=[{"name": "cfg", "path": "inputs/cfg.json"}, {"name": "present", "path": "here.txt"}],
    )
    (tmp_path / "here.txt").write_text("x")
    workflow_id = add_workflow(db, workflow, working_dir=tmp_path)
    assert missing_inputs(db, workflow_id) == {"inputs/cfg.json": ["a", "b"]}
    with pytest.raises(SpecError) as info:
        initialize_workflow(db, workflow_id)
    assert "inputs/cfg.json (needed by a, b)" in str(info.value) and "here.txt" not in str(info.value)
    assert status_counts(db, workflow_id)["uninitialized"] == 3  # nothing changed
    initialize_workflow(db, workflow_id, force=True)
    assert status_counts(db, workflow_id)["ready"] == 3


def test_an_input_that_appears_later_is_fine(db: Database, tmp_path: Path) -> None:
    workflow_id = add_workflow(db, compiled([{"name": "a", "command": "x", "input_files": ["cfg"]}],
                                            files=[{"name": "cfg", "path": "cfg.json"}]), working_dir=tmp_path)
    with pytest.raises(SpecError, match="cfg.json"):
        ensure_initialized(db, workflow_id)
    (tmp_path / "cfg.json").write_text("{}")
    assert ensure_initialized(db, workflow_id) is True
    assert ensure_initialized(db, workflow_id) is False


def test_initialize_refuses_while_jobs_run_and_reinitializes_otherwise(db: Database, tmp_path: Path) -> None:
    workflow_id = add_workflow(db, compiled([{"name": "a", "command": "x"},
                                             {"name": "b", "command": "y", "depends_on": ["a"]}]),
                               working_dir=tmp_path)
    initialize_workflow(db, workflow_id)
    queue = Queue(db, workflow_id)
    runner = queue.register_runner(hostname="h", pid=1)
    claimed = queue.cycle(runner, choose=lambda ready: [j.job_id for j in ready]).claimed
    with pytest.raises(QueueError, match="1 jobs pending or running"):
        initialize_workflow(db, workflow_id)
    queue.cycle(runner, outcomes=[Outcome(claimed[0].id, claimed[0].attempt, "completed", claimed[0].lease_token, return_code=0)])
    assert status_counts(db, workflow_id)["ready"] == 1
    initialize_workflow(db, workflow_id)  # reinit: everything back to the start
    assert {j["name"]: j["status"] for j in list_jobs(db, workflow_id)} == {"a": "ready", "b": "blocked"}
    assert db.read("SELECT remaining FROM dependency_sets")[0][0] == 1


# -- reading, canceling, deleting -----------------------------------------------------------------

def test_status_counts_and_list_jobs(db: Database, tmp_path: Path) -> None:
    workflow_id = add_workflow(db, diamond(), working_dir=tmp_path)
    initialize_workflow(db, workflow_id, force=True)
    counts = status_counts(db, workflow_id)
    assert counts["ready"] == 1 and counts["blocked"] == 3 and sum(counts.values()) == 4
    assert set(counts) >= {"uninitialized", "completed", "failed", "canceled", "terminated", "disabled"}
    assert [j["name"] for j in list_jobs(db, workflow_id, status="blocked")] == ["left", "right", "post"]
    with pytest.raises(QueueError, match="no workflow 99"):
        status_counts(db, 99)
    with pytest.raises(QueueError):
        list_jobs(db, 99)


def test_cancel_workflow(db: Database, tmp_path: Path) -> None:
    workflow_id = add_workflow(db, diamond(), working_dir=tmp_path)
    other = add_workflow(db, diamond(), working_dir=tmp_path)
    initialize_workflow(db, workflow_id, force=True)
    assert cancel_workflow(db, workflow_id) == 4
    assert status_counts(db, workflow_id)["canceled"] == 4
    assert get_workflow(db, workflow_id).status == "canceled"
    assert status_counts(db, other)["uninitialized"] == 4
    assert cancel_workflow(db, workflow_id) == 0


def test_delete_workflow_removes_only_its_rows(db: Database, tmp_path: Path) -> None:
    keep = add_workflow(db, diamond(), working_dir=tmp_path)
    drop = add_workflow(db, diamond(), working_dir=tmp_path)
    for workflow_id in (keep, drop):
        initialize_workflow(db, workflow_id, force=True)
        queue = Queue(db, workflow_id)
        runner = queue.register_runner(hostname="h", pid=1)
        queue.cycle(runner, choose=lambda ready: [j.job_id for j in ready])
        queue.finish_runner(runner)
    kept = rows_of(db, keep)
    assert all(n > 0 for table, n in rows_of(db, drop).items() if table != "results")
    delete_workflow(db, drop)
    assert all(n == 0 for n in rows_of(db, drop).values())
    assert rows_of(db, keep) == kept
    assert count(db, "dependency_members") == kept["dependency_members"]
    with pytest.raises(QueueError):
        delete_workflow(db, drop)
