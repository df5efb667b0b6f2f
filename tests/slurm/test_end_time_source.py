"""Runners learn their end time from the queue, not each from Slurm: the first runner of an
allocation asks once and records it, the others read it, and `torc slurm status` records a
changed limit (one squeue call for all allocations)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from torc_slurm.compiler import compile_workflow
from torc_slurm.slurm.allocations import end_time_source, refresh_allocations
from torc_slurm.slurm.backend import JobInfo, SlurmState
from torc_slurm.spec.models import WorkflowSpec
from torc_slurm.store.allocations import record_allocations
from torc_slurm.store.db import Database
from torc_slurm.store.workflows import add_workflow


class CountingSlurm:
    """Only what the end time needs; counts every question."""

    def __init__(self, end: float) -> None:
        self.end = end
        self.asked: list[str] = []

    def end_time(self, job_id: str) -> datetime:
        self.asked.append(f"end_time {job_id}")
        return datetime.fromtimestamp(self.end, tz=timezone.utc)

    def status(self, job_ids):  # noqa: ANN001, ANN201
        self.asked.append(f"status {','.join(job_ids)}")
        return {j: JobInfo(j, SlurmState.RUNNING, 600, datetime.fromtimestamp(self.end, tz=timezone.utc))
                for j in job_ids}


def queue_with_allocation(tmp_path: Path) -> tuple[Path, int]:
    path = tmp_path / "torc.db"
    with Database(path) as db:
        wf = add_workflow(db, compile_workflow(WorkflowSpec.model_validate(
            {"name": "w", "jobs": [{"name": "a", "command": "true"}]})), working_dir=tmp_path)
        record_allocations(db, wf, "cpu", 2, [("77", None)])
    return path, wf


def test_the_first_runner_asks_once_and_the_others_read_the_queue(tmp_path: Path) -> None:
    path, _ = queue_with_allocation(tmp_path)
    slurm = CountingSlurm(5000.0)
    first, second = end_time_source(path, "77", slurm), end_time_source(path, "77", slurm)
    assert first() == 5000.0 and second() == 5000.0 and first() == 5000.0
    assert slurm.asked == ["end_time 77"]


def test_status_records_an_extended_limit_that_runners_then_read(tmp_path: Path) -> None:
    path, wf = queue_with_allocation(tmp_path)
    slurm = CountingSlurm(5000.0)
    source = end_time_source(path, "77", slurm)
    assert source() == 5000.0
    slurm.end = 9000.0  # scontrol update TimeLimit=…
    with Database(path) as db:
        refresh_allocations(db, slurm, wf)
    assert source() == 9000.0
    assert slurm.asked == ["end_time 77", "status 77"]


def test_an_allocation_the_queue_does_not_know_is_asked_about(tmp_path: Path) -> None:
    path, _ = queue_with_allocation(tmp_path)
    slurm = CountingSlurm(5000.0)
    source = end_time_source(path, "99", slurm)  # a runner started by hand
    assert source() == 5000.0 and source() == 5000.0
    assert slurm.asked == ["end_time 99", "end_time 99"]
