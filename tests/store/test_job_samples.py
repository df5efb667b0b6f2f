"""``job_samples`` (schema 12): rows and Thin marks written in the runner's cycle transaction, the
per-attempt bound, reads, deletion with the workflow, and migration numbering.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import torc_slurm.store.db as db_module
from torc_slurm.compiler import compile_workflow
from torc_slurm.spec.models import WorkflowSpec
from torc_slurm.store.db import Database
from torc_slurm.store.queue import NodeUse, Queue
from torc_slurm.store.samples import JobSample, Thin, attempt_samples, sampled_attempts, write
from torc_slurm.store.workflows import add_workflow, delete_workflow, initialize_workflow


@pytest.fixture
def db(tmp_path: Path):
    database = Database(tmp_path / "torc.db")
    yield database
    database.close()


def workflow(db: Database, tmp_path: Path) -> tuple[int, dict[str, int]]:
    spec = WorkflowSpec.model_validate({"name": "w", "jobs": [{"name": "a", "command": "x"},
                                                              {"name": "b", "command": "y"}]})
    wf = add_workflow(db, compile_workflow(spec), working_dir=tmp_path)
    initialize_workflow(db, wf)
    ids = {r["name"]: r["id"] for r in db.read("SELECT id, name FROM jobs WHERE workflow_id = ?", (wf,))}
    return wf, ids


def row(job_id: int, t: float, memory: int = 100, attempt: int = 1) -> JobSample:
    return JobSample(job_id, attempt, t, None if t == 0 else 50.0, memory, 1)


def test_rows_and_thin_marks_apply_in_order(db: Database, tmp_path: Path) -> None:
    wf, ids = workflow(db, tmp_path)
    a = ids["a"]
    with db.transaction() as conn:
        inserted = write(conn, wf, [row(a, float(t), 100 + t) for t in range(10)] + [Thin(a, 1), row(a, 10.0)])
    assert inserted == 11
    rows = attempt_samples(db, a, 1)
    assert [r["t"] for r in rows] == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]  # the 2nd, 4th, … went; then the new one
    assert rows[0]["cpu_percent"] is None and rows[1]["memory_bytes"] == 102
    [listed] = sampled_attempts(db, wf)
    assert (listed["job"], listed["attempt"], listed["samples"], listed["peak_memory_bytes"]) == ("a", 1, 6, 108)
    assert listed["span_s"] == 10.0


def test_thin_touches_only_its_attempt(db: Database, tmp_path: Path) -> None:
    wf, ids = workflow(db, tmp_path)
    a, b = ids["a"], ids["b"]
    with db.transaction() as conn:
        write(conn, wf, [row(a, float(t)) for t in range(4)] + [row(a, float(t), attempt=2) for t in range(4)]
              + [row(b, float(t)) for t in range(4)] + [Thin(a, 2)])
    counts = {(r["job_id"], r["attempt"]): r["samples"] for r in sampled_attempts(db, wf)}
    assert counts == {(a, 1): 4, (a, 2): 2, (b, 1): 4}
    assert sampled_attempts(db, wf, [b]) == [r for r in sampled_attempts(db, wf) if r["job_id"] == b]


def test_the_cycle_writes_job_rows_beside_node_use_in_one_transaction(db: Database, tmp_path: Path) -> None:
    wf, ids = workflow(db, tmp_path)
    queue = Queue(db, wf)
    runner = queue.register_runner(hostname="h", pid=1)
    before = db.lock.acquisitions
    # what a failed cycle gives back comes first, so node use and job rows may interleave
    samples = [NodeUse(1.0, 10.0, 5), row(ids["a"], 0.0), row(ids["a"], 1.0), NodeUse(2.0, 20.0, 6),
               Thin(ids["a"], 1), row(ids["a"], 2.0)]
    queue.cycle(runner, samples=samples)  # type: ignore[arg-type]
    assert db.lock.acquisitions == before + 1  # no lock of their own
    assert [r["t"] for r in attempt_samples(db, ids["a"], 1)] == [0.0, 2.0]
    assert len(db.read("SELECT * FROM runner_samples WHERE runner_id = ?", (runner,))) == 2
    queue.finish_runner(runner, samples=[row(ids["b"], 0.0)])  # type: ignore[list-item]
    assert len(attempt_samples(db, ids["b"], 1)) == 1


def test_deleting_the_workflow_deletes_its_samples(db: Database, tmp_path: Path) -> None:
    wf, ids = workflow(db, tmp_path)
    other, other_ids = workflow(db, tmp_path)
    with db.transaction() as conn:
        write(conn, wf, [row(ids["a"], 0.0)])
        write(conn, other, [row(other_ids["a"], 0.0)])
    delete_workflow(db, wf)
    assert db.read("SELECT workflow_id FROM job_samples")[0][0] == other
    assert len(db.read("SELECT * FROM job_samples")) == 1


# -- migration numbering -------------------------------------------------------------------------
def test_two_migrations_with_one_number_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import resources

    folder = tmp_path / "pkg"
    (folder / "migrations").mkdir(parents=True)
    (folder / "schema.sql").write_text("CREATE TABLE t (x);")
    (folder / "migrations" / "002_a.sql").write_text("SELECT 1;")
    (folder / "migrations" / "002_b.sql").write_text("SELECT 2;")
    monkeypatch.setattr(resources, "files", lambda _package: folder)
    with pytest.raises(RuntimeError, match="two schema migrations are numbered 2"):
        db_module._load_migrations()
