"""schedule-nodes refuses a site whose compute nodes would lock the queue with another kind than
the one it was created with: every allocation would start, then fail to open the queue."""

from __future__ import annotations

from pathlib import Path

import pytest

from torc_slurm.compiler import compile_workflow
from torc_slurm.errors import LockKindMismatch
from torc_slurm.slurm.allocations import ScheduleRequest, schedule_nodes
from torc_slurm.slurm.sites import load_site
from torc_slurm.spec.models import WorkflowSpec
from torc_slurm.store.db import Database
from torc_slurm.store.workflows import add_workflow

SPEC = {"name": "k", "jobs": [{"name": "a", "command": "true"}],
        "slurm_schedulers": [{"name": "short", "partition": "cpu", "walltime": "00:10:00"}]}


def test_a_site_that_locks_differently_is_refused_before_anything_is_rendered(tmp_path: Path) -> None:
    db_path = tmp_path / "torc.db"
    with Database(db_path) as db:
        wf = add_workflow(db, compile_workflow(WorkflowSpec.model_validate(SPEC), "k"), working_dir=tmp_path)
    soft_site = load_site("localhost").model_copy(update={"lock_kind": "soft"})
    request = ScheduleRequest(workflow_id=wf, scheduler="short", num_hpc_jobs=1, dry_run=True)
    with Database(db_path, create=False) as db:
        assert db.lock.kind == "flock"
        with pytest.raises(LockKindMismatch, match="created with 'flock'"):
            schedule_nodes(db, None, soft_site, request)
        result = schedule_nodes(db, None, load_site("localhost"), request)
    assert "export TORC_LOCK_KIND=flock" in result.script
    assert not (tmp_path / "torc_output" / "slurm").exists()
