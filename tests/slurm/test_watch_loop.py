"""The watcher's loop with a fake Slurm: backoff and pause (with a ``watch_paused`` event), the
end of the workflow (exit codes, summary, pending allocations cancelled), one lock acquisition per
idle round, and Slurm states it does not know (UNKNOWN) or cannot get (no sacct)."""

from __future__ import annotations

import itertools
import json
import subprocess
from pathlib import Path

import pytest

from torc_slurm.compiler import compile_workflow
from torc_slurm.errors import SlurmError
from torc_slurm.slurm.backend import JobInfo, SlurmState
from torc_slurm.slurm.watch import Demand, Limits, Watcher, WatchOptions, query_states
from torc_slurm.spec.models import WorkflowSpec
from torc_slurm.store.allocations import record_allocations
from torc_slurm.store.db import Database
from torc_slurm.store.workflows import add_workflow, initialize_workflow

SPEC = {"name": "loop", "jobs": [{"name": "a", "command": "true"}, {"name": "b", "command": "true",
                                                                      "depends_on": ["a"]}],
        "slurm_schedulers": [{"name": "s", "partition": "cpu", "walltime": "00:10:00"}]}


class Fake:
    def __init__(self) -> None:
        self.canceled: list[str] = []

    def status(self, job_ids):
        return {i: JobInfo(i, SlurmState.PENDING, None, None) for i in job_ids if i not in self.canceled}

    def cancel(self, job_ids) -> None:
        self.canceled += list(job_ids)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def db(tmp_path: Path):
    database = Database(tmp_path / "torc.db")
    wf = add_workflow(database, compile_workflow(WorkflowSpec.model_validate(SPEC), "loop"), working_dir=tmp_path)
    initialize_workflow(database, wf)
    database.wf = wf
    yield database
    database.close()


def make(db, submit, *, clock=None, said=None, **options) -> Watcher:
    clock = clock or Clock()
    return Watcher(db, db.wf, Fake(), options=WatchOptions(interval=1.0, lease_timeout=100.0, **options),
                   clock=clock, sleep=clock.sleep, say=(said.append if said is not None else lambda t: None),
                   submit=submit)


def test_failed_submissions_back_off_then_pause_the_scheduler_with_an_event(db) -> None:
    tries: list[float] = []
    clock = Clock()

    def failing(scheduler: str, count: int) -> list[str]:
        tries.append(clock.t)
        raise SlurmError("sbatch: error: invalid partition specified: cpu")

    said: list[str] = []
    watcher = make(db, failing, clock=clock, said=said, backoff_first=2.0, backoff_max=8.0)
    summary = watcher.run()
    gaps = [b - a for a, b in itertools.pairwise(tries)]
    assert len(tries) == 5 and gaps == [2.0, 4.0, 8.0, 8.0], tries
    assert summary.exit_code == 1 and "paused" in summary.message
    assert any("paused after 5 consecutive failed submissions" in s and "invalid partition" in s for s in said)
    events = db.read("SELECT kind, message, data, source FROM events WHERE kind = 'watch_paused'")
    assert len(events) == 1 and events[0]["source"] == "watch"
    assert json.loads(events[0]["data"])["scheduler"] == "s"
    assert db.read("SELECT COUNT(*) FROM watchers")[0][0] == 0, "the lease is released on exit"


def test_one_lock_acquisition_per_idle_round(db) -> None:
    ids = iter(range(500, 600))

    def submit(scheduler: str, count: int) -> list[str]:
        new = [str(next(ids)) for _ in range(count)]
        record_allocations(db, db.wf, scheduler, 1, [(i, None) for i in new])
        return new

    watcher = make(db, submit, limits=Limits(max_queued=1))
    watcher.round()  # submits one (and records its state change)
    watcher.round()  # PENDING now: changes recorded
    before = db.lock.acquisitions
    for _ in range(20):
        watcher.round()
    assert db.lock.acquisitions - before == 20
    assert len(watcher.submitted) == 1


def test_the_workflow_done_ends_the_watcher_and_cancels_what_is_still_pending(db) -> None:
    record_allocations(db, db.wf, "s", 1, [("700", None)])
    with db.transaction() as conn:
        conn.execute("UPDATE jobs SET status = 'completed'")
        conn.execute("DELETE FROM status_counts WHERE workflow_id = ?", (db.wf,))
        conn.execute("INSERT INTO status_counts VALUES (?, 'completed', 2)", (db.wf,))
    watcher = make(db, lambda s, c: [])
    summary = watcher.run()
    assert summary.exit_code == 0 and "is complete" in summary.message
    assert watcher.backend.canceled == ["700"]
    assert "2 completed" in "\n".join(summary.lines())
    with db.transaction() as conn:
        conn.execute("UPDATE jobs SET status = 'failed' WHERE name = 'b'")
    assert make(db, lambda s, c: []).run().exit_code == 1


class CliLike:
    """A backend with the CLI backend's ``_run``: squeue prints what the test says; sacct fails."""

    def __init__(self, squeue_out: str, sacct: str | None) -> None:
        self.squeue_out, self.sacct, self.calls = squeue_out, sacct, []

    def _run(self, argv, gone_ok=False):
        self.calls.append(argv[0])
        if argv[0] == "squeue":
            return subprocess.CompletedProcess(argv, 0, self.squeue_out, "")
        if self.sacct is None:
            raise SlurmError("'sacct' failed with exit code 1: Slurm accounting storage is disabled")
        return subprocess.CompletedProcess(argv, 0, self.sacct, "")


def test_unknown_states_are_unknown_and_purged_jobs_use_sacct_or_are_gone() -> None:
    backend = CliLike("1|RUNNING\n2|BRAND_NEW_STATE\n", None)
    assert query_states(backend, ["1", "2", "3"]) == {"1": "RUNNING", "2": "UNKNOWN", "3": "gone"}
    assert backend.calls == ["squeue", "sacct"], "one squeue for all, one sacct for the purged"
    backend = CliLike("1|PENDING\n", "3|OUT_OF_MEMORY\n4|CANCELLED by 42\n5|WHATEVER\n")
    assert query_states(backend, ["1", "3", "4", "5"]) == {"1": "PENDING", "3": "OUT_OF_MEMORY", "4": "CANCELLED",
                                                           "5": "UNKNOWN"}
    assert query_states(backend, []) == {}


def test_an_unknown_state_from_another_backend_breaks_nothing() -> None:
    class Strict:
        def status(self, job_ids):
            raise SlurmError("unknown Slurm job state 'X': this Slurm version reports a state …")

    assert query_states(Strict(), ["9"]) == {"9": "UNKNOWN"}


def test_soon_ready_is_the_last_tenth_of_a_set_with_one_member_done(tmp_path: Path) -> None:
    spec = {"name": "soon", "jobs": [
        {"name": "one_{i}", "command": "true", "parameters": {"i": "1:20"}},
        {"name": "two", "command": "true", "depends_on_regexes": ["^one_"]},
        {"name": "three", "command": "true", "depends_on": ["two"]}],
        "slurm_schedulers": [{"name": "s", "partition": "cpu", "walltime": "00:10:00"}]}
    with Database(tmp_path / "torc.db") as db:
        wf = add_workflow(db, compile_workflow(WorkflowSpec.model_validate(spec), "soon"), working_dir=tmp_path)
        initialize_workflow(db, wf)
        watcher = Watcher(db, wf, Fake(), options=WatchOptions(), say=lambda t: None)

        def finish(n: int) -> None:
            with db.transaction() as conn:
                names = [f"one_{i}" for i in range(1, n + 1)]
                conn.execute(f"UPDATE jobs SET status = 'completed' WHERE name IN ({','.join('?' * n)})", names)
                conn.execute("UPDATE dependency_sets SET remaining = ? WHERE size = 20", (20 - n,))

        assert watcher.read().demand["s"] == Demand(ready=20, capacity=watcher.read().demand["s"].capacity)
        finish(17)
        assert (watcher.read().demand["s"].ready, watcher.read().demand["s"].soon) == (3, 0)
        finish(18)   # 2 of 20 left: 10 %
        assert (watcher.read().demand["s"].ready, watcher.read().demand["s"].soon) == (2, 1), \
            "`two` is soon; `three` (waiting on one job) is not"


def test_recover_reruns_an_oom_failure_with_more_memory_and_the_loop_schedules_it(db) -> None:
    with db.transaction() as conn:
        conn.execute("UPDATE jobs SET status = 'failed', reason = 'oom', attempt = 1 WHERE name = 'a'")
        conn.execute("UPDATE jobs SET status = 'canceled' WHERE name = 'b'")
    before = db.read("SELECT memory_bytes FROM jobs WHERE name = 'a'")[0][0]
    said: list[str] = []
    submitted: list[str] = []
    watcher = make(db, lambda s, c: submitted.append(s) or ["900"], said=said, recover=True)
    watcher.round()
    row = db.read("SELECT status, memory_bytes FROM jobs WHERE name = 'a'")[0]
    assert row["status"] == "ready" and row["memory_bytes"] == int(before * 1.5)
    assert any(s.startswith("recover: 1 job(s)") for s in said), said
    assert submitted == ["s"], "the rerun got an allocation in the same round"


def test_a_just_submitted_job_squeue_does_not_list_yet_is_not_gone(db) -> None:
    class Empty(Fake):
        def status(self, job_ids):
            return {}

    record_allocations(db, db.wf, "s", 1, [("801", None), ("802", None)])
    with db.transaction() as conn:
        conn.execute("UPDATE allocations SET submitted_at = submitted_at - 3600 WHERE slurm_job_id = '802'")
    watcher = make(db, lambda s, c: [])
    watcher.backend = Empty()
    watcher.round()
    states = {r[0]: r[1] for r in db.read("SELECT slurm_job_id, state FROM allocations")}
    assert states == {"801": "submitted", "802": "gone"}


def test_the_command_reports_a_workflow_without_schedulers_without_a_traceback(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from torc_slurm.cli import torc

    spec = {"name": "plain", "jobs": [{"name": "a", "command": "true"}]}
    with Database(tmp_path / "torc.db") as database:
        wf = add_workflow(database, compile_workflow(WorkflowSpec.model_validate(spec), "plain"), working_dir=tmp_path)
    result = CliRunner().invoke(torc, ["--db", str(tmp_path / "torc.db"), "slurm", "watch", str(wf), "--site",
                                       "localhost", "--once"])
    assert result.exit_code == 1, result.output
    assert "defines no slurm_schedulers" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(torc, ["--db", str(tmp_path / "torc.db"), "slurm", "watch", "99", "--site",
                                       "localhost"])
    assert result.exit_code != 0 and "Traceback" not in result.output and "99" in result.output
