"""``torc_slurm.api`` for job scripts: the TORC_* variables stand in for every argument, a put is
recorded as the job's attempt (and refused once that attempt is stale), events carry their
source, and bad input raises torc's errors. Plus: importing it stays light (no click, no rich)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from torc_slurm import api
from torc_slurm.compiler import compile_workflow
from torc_slurm.errors import QueueError, TorcError
from torc_slurm.spec.models import WorkflowSpec
from torc_slurm.store.db import Database
from torc_slurm.store.events import InvalidJSON, list_events
from torc_slurm.store.leases import SweepRequest
from torc_slurm.store.queue import Queue, Started
from torc_slurm.store.workflows import add_workflow, initialize_workflow

SPEC = {"name": "api", "user_data": [{"name": "result"}, {"name": "params", "data": {"lr": 0.01}}],
        "jobs": [{"name": "train", "command": "true", "output_user_data": ["result"]},
                 {"name": "report", "command": "true", "input_user_data": ["result"]}]}


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Queue, dict[str, int]]:
    """A workflow whose job 'train' is claimed and started (attempt 1); the environment is the
    one the runner gives that job."""
    for name in ("TORC_WORKFLOW_ID", "TORC_JOB_ID", "TORC_ATTEMPT", "TORC_DB", "TORC_LOCK_KIND"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "queue" / "torc.db"
    db = Database(path)
    workflow_id = add_workflow(db, compile_workflow(WorkflowSpec.model_validate(SPEC)), working_dir=tmp_path)
    initialize_workflow(db, workflow_id, force=True)
    queue = Queue(db, workflow_id)
    ids = {r[0]: r[1] for r in db.read("SELECT name, id FROM jobs WHERE workflow_id = ?", (workflow_id,))}
    runner = queue.register_runner(hostname="n1", pid=1)
    (claimed,) = queue.cycle(runner, choose=lambda ready: [ids["train"]]).claimed
    queue.cycle(runner, started=[Started(ids["train"], claimed.lease_token)])
    ids["runner"] = runner
    monkeypatch.setenv("TORC_WORKFLOW_ID", str(workflow_id))
    monkeypatch.setenv("TORC_JOB_ID", str(ids["train"]))
    monkeypatch.setenv("TORC_ATTEMPT", str(claimed.attempt))
    monkeypatch.setenv("TORC_DB", str(path))
    monkeypatch.chdir(tmp_path)  # not the queue's folder: ./torc.db would be the wrong file
    return path, queue, ids


def stored(path: Path, name: str) -> dict[str, Any]:
    with Database(path, create=False) as db:
        return dict(db.read("SELECT * FROM user_data WHERE name = ?", (name,))[0])


def test_inside_a_job_no_arguments_beyond_the_data(setup: tuple[Path, Queue, dict[str, int]]) -> None:
    path, queue, ids = setup
    api.put_user_data("result", {"loss": 0.1, "curve": [1.0, 0.5]})
    row = stored(path, "result")
    assert json.loads(row["data"]) == {"loss": 0.1, "curve": [1.0, 0.5]}
    assert (row["written_by_job_id"], row["written_attempt"]) == (ids["train"], 1)
    assert api.get_user_data("result") == {"loss": 0.1, "curve": [1.0, 0.5]}
    assert api.get_user_data("params") == {"lr": 0.01}
    event_id = api.add_event("checkpoint_saved", {"step": 1000}, message="saved")
    with Database(path, create=False) as db:
        (event,) = [e for e in list_events(db, queue.workflow_id).events if e.id == event_id]
    assert (event.category, event.data, event.message, event.source) == \
        ("checkpoint_saved", {"step": 1000}, "saved", f"job {ids['train']} attempt 1")


def test_a_stale_attempt_cannot_write(setup: tuple[Path, Queue, dict[str, int]]) -> None:
    path, queue, ids = setup
    lease = queue.db.read("SELECT lease_seq FROM runners WHERE id = ?", (ids["runner"],))[0][0]
    queue.sweep([SweepRequest(ids["runner"], lease, "node gone")], by="test")  # attempt 1 is over
    before = stored(path, "result")
    with pytest.raises(api.StaleAttempt, match="attempt 1 is no longer current"):
        api.put_user_data("result", {"loss": 0.5})
    assert stored(path, "result") == before


def test_outside_a_job_the_workflow_and_queue_are_arguments(setup: tuple[Path, Queue, dict[str, int]],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path, queue, _ = setup
    for name in ("TORC_WORKFLOW_ID", "TORC_JOB_ID", "TORC_ATTEMPT", "TORC_DB"):
        monkeypatch.delenv(name)
    with pytest.raises(QueueError, match="no workflow id"):
        api.get_user_data("params")
    with pytest.raises(QueueError, match="no torc database at"):  # ./torc.db: not there
        api.get_user_data("params", workflow_id=queue.workflow_id)
    assert api.get_user_data("params", workflow_id=queue.workflow_id, db=path) == {"lr": 0.01}
    with Database(path, create=False) as db:  # an open Database is used as it is, not closed
        api.put_user_data("free", [1, 2], workflow_id=queue.workflow_id, db=db)
        assert api.get_user_data("free", workflow_id=queue.workflow_id, db=db) == [1, 2]
        assert db.read("SELECT 1")  # still open
    assert stored(path, "free")["written_by_job_id"] is None
    event_id = api.add_event("note", workflow_id=queue.workflow_id, db=str(path))
    with Database(path, create=False) as db:
        assert [e.source for e in list_events(db, queue.workflow_id).events if e.id == event_id] == ["user"]


def test_a_job_of_another_workflow_acts_as_a_person(setup: tuple[Path, Queue, dict[str, int]]) -> None:
    path, queue, _ = setup
    with Database(path) as db:
        other = add_workflow(db, compile_workflow(WorkflowSpec.model_validate(SPEC)), working_dir=path.parent)
    api.put_user_data("params", {"lr": 1}, workflow_id=other)
    assert stored_in(path, other, "params")["written_by_job_id"] is None


def stored_in(path: Path, workflow_id: int, name: str) -> dict[str, Any]:
    with Database(path, create=False) as db:
        return dict(db.read("SELECT * FROM user_data WHERE workflow_id = ? AND name = ?", (workflow_id, name))[0])


def test_bad_input_raises_torc_errors(setup: tuple[Path, Queue, dict[str, int]],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidJSON, match="cannot be stored as JSON"):
        api.put_user_data("result", {"loss": float("nan")})
    with pytest.raises(InvalidJSON, match="cannot be stored as JSON"):
        api.put_user_data("result", {1, 2})
    with pytest.raises(api.UnknownUserData, match="nearest names: result"):
        api.get_user_data("reslt")
    with pytest.raises(api.UserDataNotWritten, match="has not written it yet"):
        api.get_user_data("result")
    with pytest.raises(QueueError, match="invalid event category"):
        api.add_event("two words")
    with pytest.raises(QueueError, match="no workflow 99 "):
        api.get_user_data("result", workflow_id=99)
    monkeypatch.setenv("TORC_ATTEMPT", "one")
    with pytest.raises(TorcError, match="TORC_ATTEMPT='one' is not an integer"):
        api.put_user_data("result", 1)


def test_importing_the_api_stays_light(tmp_path: Path) -> None:
    code = "import sys, torc_slurm.api; print(sorted(m for m in ('click', 'rich', 'pydantic') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
