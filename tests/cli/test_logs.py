"""`torc jobs logs` on workflows the runner really ran: stdout and stderr by name or id, the latest
or a given attempt, --tail, --follow until the attempt ends (a real subprocess while the job runs),
and clear errors: unknown job (nearest names), unknown workflow (nearest ids), an attempt that does
not exist, a job that has not run, files that are gone."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest
from runner.helpers import TORC, clean_env, finish, jobs, start_torc, torc, wait_until

from torc_slurm.errors import QueueError

from . import invoke, write_spec

SPEC = """
name: chatty
jobs:
  - {name: talker, command: "sh -c 'for i in 1 2 3 4 5; do echo line $i; done; echo oops >&2; echo attempt $TORC_ATTEMPT'"}
  - {name: talker_two, command: "echo second"}
  - {name: later, command: "true", depends_on: [talker]}
"""


@pytest.fixture()
def ran(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A workflow the runner has run to the end (in this process, through CliRunner)."""
    monkeypatch.chdir(tmp_path)
    for name in ("TORC_DB", "TORC_LOCK_KIND", "SLURM_CPUS_ON_NODE", "SLURM_JOB_ID", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    db = tmp_path / "torc.db"
    result = invoke(db, "run", write_spec(tmp_path, SPEC), "--monitor-interval", 0)
    assert result.exit_code == 0, result.output
    return tmp_path


def test_stdout_stderr_tail_and_job_id(ran: Path) -> None:
    db = ran / "torc.db"
    out = invoke(db, "jobs", "logs", 1, "talker")
    assert out.exit_code == 0 and out.stdout == "line 1\nline 2\nline 3\nline 4\nline 5\nattempt 1\n"
    assert "attempt 1 of 1 (completed)" in out.stderr and "wf1_job1_attempt1.out" in out.stderr
    assert invoke(db, "jobs", "logs", 1, "talker", "--stderr").stdout == "oops\n"
    assert invoke(db, "jobs", "logs", 1, "talker", "--tail", 2).stdout == "line 5\nattempt 1\n"
    assert invoke(db, "jobs", "logs", 1, "talker", "--tail", 0).stdout == ""
    ended = invoke(db, "jobs", "logs", 1, "talker", "--follow", "--tail", 1)   # already over: prints, returns
    assert ended.exit_code == 0 and ended.stdout == "attempt 1\n"
    job_id = jobs(db, 1)["talker_two"]["id"]
    assert invoke(db, "jobs", "logs", 1, job_id).stdout == "second\n"
    # The same as a real subprocess: stdout holds the job's output only.
    done = torc(db, "jobs", "logs", 1, "talker", "--tail", 1, cwd=ran)
    assert done.returncode == 0 and done.stdout == "attempt 1\n" and "== stdout of talker" in done.stderr


def test_latest_attempt_by_default_and_an_older_one_on_request(ran: Path) -> None:
    db = ran / "torc.db"
    assert invoke(db, "workflows", "reset-status", 1, "--job", "talker").exit_code == 0
    assert invoke(db, "run", 1, "--monitor-interval", 0).exit_code == 0
    assert invoke(db, "jobs", "logs", 1, "talker", "--tail", 1).stdout == "attempt 2\n"
    assert invoke(db, "jobs", "logs", 1, "talker", "--attempt", 1, "--tail", 1).stdout == "attempt 1\n"
    missing = invoke(db, "jobs", "logs", 1, "talker", "--attempt", 3)
    assert missing.exit_code == 1 and "attempts 1 to 2, not 3" in missing.output


def test_clear_errors(ran: Path) -> None:
    db = ran / "torc.db"
    typo = torc(db, "jobs", "logs", 1, "talkr", cwd=ran)
    assert typo.returncode == 1 and "Traceback" not in typo.stderr
    assert "no job named (or numbered) 'talkr'" in typo.stderr and "nearest: talker, talker_two" in typo.stderr
    explain = invoke(db, "jobs", "explain", 1, "latr")
    assert explain.exit_code == 1 and "nearest: later" in explain.output
    unknown = torc(db, "jobs", "logs", 4, "talker", cwd=ran)
    assert unknown.returncode == 1 and "no workflow 4" in unknown.stderr and "nearest: 1 (chatty)" in unknown.stderr
    for args in (("jobs", "explain", 4, "talker"), ("jobs", "list", 4)):
        other = invoke(db, *args)
        assert other.exit_code == 1 and "no workflow 4" in other.output and "nearest: 1" in other.output
    # Files gone: say so, with the path.
    stdout = next((ran / "torc_output" / "job_stdio").glob("wf1_job2_attempt1.out"))
    stdout.unlink()
    gone = torc(db, "jobs", "logs", 1, "talker_two", cwd=ran)
    assert gone.returncode == 1 and "Traceback" not in gone.stderr
    assert "is gone" in gone.stderr and str(stdout) in gone.stderr


def test_a_job_that_has_not_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "torc.db"
    assert invoke(db, "workflows", "create", write_spec(tmp_path, SPEC)).exit_code == 0
    result = invoke(db, "jobs", "logs", 1, "talker")
    assert result.exit_code == 1 and "has not run yet: it is uninitialized" in result.output


def test_follow_prints_until_the_attempt_ends(tmp_path: Path) -> None:
    """The job prints, waits for a gate the test opens, prints again and ends; `--follow` (a real
    subprocess started while the job runs) shows both parts and exits by itself."""
    gate = tmp_path / "gate"
    spec = write_spec(tmp_path, f"""
    name: follow
    jobs:
      - {{name: slow, command: "sh -c 'echo before; while [ ! -e {gate} ]; do sleep 0.05; done; echo after'"}}
    """)
    db = tmp_path / "torc.db"
    run = start_torc(db, "run", spec, "--monitor-interval", 0, cwd=tmp_path, log=tmp_path / "run.log")
    log = tmp_path / "follow.log"
    follower = None
    try:
        wait_until(lambda: db.exists() and db.stat().st_size > 0 and _status(db) == "running", timeout=60,
                   what="the job to run")
        with open(log, "wb") as out:
            follower = subprocess.Popen([*TORC, "--db", str(db), "jobs", "logs", "1", "slow", "--follow"],
                                        cwd=tmp_path, env=clean_env(), stdout=out, stderr=subprocess.DEVNULL,
                                        stdin=subprocess.DEVNULL)
        wait_until(lambda: "before" in log.read_text(), timeout=30, what="the first line")
        assert follower.poll() is None           # still following: the attempt goes on
        gate.touch()
        assert finish(follower, log, timeout=60) == 0
    finally:
        gate.touch()
        if follower is not None and follower.poll() is None:
            follower.kill()
        finish(run, tmp_path / "run.log")
    assert log.read_text() == "before\nafter\n"


def _status(db: Path) -> str | None:
    try:
        return jobs(db, 1).get("slow", {}).get("status")
    except (QueueError, sqlite3.Error):  # the queue is being created
        return None
