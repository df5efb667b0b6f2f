"""The ``status_counts`` table (schema 6) stays exactly what ``GROUP BY status`` over the jobs says,
through a sequence of real operations on one queue file with two workflows: create, init, runs
that complete and fail jobs (and cancel their dependents), reset-status, reinit, update (jobs added,
removed, changed), cancel and delete."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from torc_slurm.states import ALL
from torc_slurm.store.db import Database
from torc_slurm.store.workflows import status_counts

from . import invoke, write_spec

SPEC = """
name: counted
jobs:
  - {name: a, command: "true"}
  - {name: b, command: "exit 3", depends_on: [a]}
  - {name: c, command: "true", depends_on: [b]}
  - {name: d, command: "true", depends_on: [c]}
  - {name: e, command: "true", depends_on: [a]}
  - {name: f, command: "true"}
"""

EDITED = """
name: counted
jobs:
  - {name: a, command: "true"}
  - {name: b, command: "true", depends_on: [a]}
  - {name: c, command: "true", depends_on: [b]}
  - {name: e, command: "echo changed", depends_on: [a]}
  - {name: g, command: "true", depends_on: [e]}
  - {name: h, command: "true"}
"""


def counted(db_path: Path) -> dict[int, dict[str, int]]:
    """workflow -> status -> jobs, from a plain GROUP BY (the truth) and from the table."""
    conn = sqlite3.connect(db_path)
    try:
        truth: dict[int, dict[str, int]] = {}
        for wf, status, n in conn.execute("SELECT workflow_id, status, COUNT(*) FROM jobs GROUP BY 1, 2"):
            truth.setdefault(wf, {s: 0 for s in ALL})[status] = n
        table: dict[int, dict[str, int]] = {}
        for wf, status, n in conn.execute("SELECT workflow_id, status, n FROM status_counts"):
            assert n >= 0, (wf, status, n)
            table.setdefault(wf, {s: 0 for s in ALL})[status] = n
        workflows = {wf for (wf,) in conn.execute("SELECT id FROM workflows")}
        assert conn.execute("SELECT COUNT(*) FROM status_counts_bulk").fetchone()[0] == 0  # no bulk left open
    finally:
        conn.close()
    table = {wf: c for wf, c in table.items() if any(c.values())}
    assert set(table) <= workflows, "counts left behind by a deleted workflow"
    return {"truth": truth, "table": table}  # type: ignore[return-value]


def check(db_path: Path, step: str) -> dict[int, dict[str, int]]:
    seen = counted(db_path)
    assert seen["table"] == seen["truth"], f"after {step}: table {seen['table']} != jobs {seen['truth']}"
    with Database(db_path, create=False) as db:
        for wf, counts in seen["truth"].items():
            assert status_counts(db, wf) == counts
    return seen["truth"]


@pytest.fixture()
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in ("TORC_DB", "TORC_LOCK_KIND", "SLURM_CPUS_ON_NODE", "SLURM_JOB_ID", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def ok(db: Path, *args: object, code: int = 0) -> str:
    result = invoke(db, *args)
    assert result.exit_code == code, (args, result.output)
    return result.output


def test_counts_stay_exact_through_every_operation(work: Path) -> None:
    db = work / "torc.db"
    spec = write_spec(work, SPEC)
    ok(db, "workflows", "create", spec)
    ok(db, "workflows", "create", spec)          # a second workflow: counts are per workflow
    assert check(db, "create")[1]["uninitialized"] == 6
    ok(db, "workflows", "init", 1)
    assert check(db, "init")[1] == {**dict.fromkeys(ALL, 0), "ready": 2, "blocked": 4}
    ok(db, "run", 1, "--num-cpus", 2, "--monitor-interval", 0, code=1)   # b fails: c, d canceled
    counts = check(db, "run")[1]
    assert (counts["completed"], counts["failed"], counts["canceled"]) == (3, 1, 2)
    ok(db, "workflows", "reset-status", 1, "--failed-only")
    assert check(db, "reset-status --failed-only")[1]["completed"] == 3
    ok(db, "run", 1, "--num-cpus", 2, "--monitor-interval", 0, code=1)
    check(db, "second run")
    ok(db, "workflows", "reset-status", 1)
    check(db, "reset-status")
    ok(db, "workflows", "reinit", 1)
    check(db, "reinit")
    ok(db, "run", 2, "--num-cpus", 2, "--monitor-interval", 0, code=1)  # workflow 2 ran too
    check(db, "run of workflow 2")
    edited = write_spec(work, EDITED, "edited.yaml")
    ok(db, "workflows", "update", 2, edited)     # d, f removed; g, h added; b, e changed
    counts = check(db, "update")[2]
    assert sum(counts.values()) == 6
    ok(db, "run", 2, "--num-cpus", 2, "--monitor-interval", 0)
    assert check(db, "run after update")[2]["completed"] == 6
    ok(db, "workflows", "cancel", 1)
    check(db, "cancel")
    ok(db, "workflows", "delete", 1, "--yes")
    assert set(check(db, "delete")) == {2}
    ok(db, "workflows", "delete", 2, "--yes")
    assert check(db, "delete all") == {}


def test_migration_fills_counts_of_an_older_queue(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A queue made at schema 5 (before status_counts) gets its counts filled when opened by this
    version, which migrates it."""
    import torc_slurm.store.db as db_module

    db = work / "torc.db"
    with monkeypatch.context() as patch:
        patch.setattr(db_module, "SCHEMA_VERSION", 5)
        Database(db).close()
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO workflows (id, name, spec_json, working_dir, created_at) VALUES (1, 'old', '{}', '.', 0)")
    conn.executemany("INSERT INTO jobs (workflow_id, name, command, status, rank, priority, num_cpus, num_gpus,"
                     " num_nodes, memory_bytes, runtime_s, resource_requirements, cancel_on_blocking_job_failure,"
                     " supports_termination) VALUES (1, ?, 'true', ?, 0, 0, 1, 0, 1, 1, 1, 'default', 1, 0)",
                     [("a", "ready"), ("b", "blocked"), ("c", "blocked"), ("d", "completed")])
    conn.commit()
    conn.close()
    Database(db, create=False).close()  # opening migrates it
    assert check(db, "migration")[1] == {**dict.fromkeys(ALL, 0), "ready": 1, "blocked": 2, "completed": 1}
