"""`torc workflows status` and `--watch` on workflows the runner really runs.

* status, through CliRunner and as a subprocess: counts with pending (claimed by a runner, not
  started) apart from running, exit codes, JSON validated against ``StatusReport``, the jobs that
  cannot run by reason (no scheduler fits, no runner fits, upstream failed), unknown ids;
* `--watch` without a terminal: one line per change, exits by itself when the workflow is done;
* `--watch` under a pseudo-terminal (``pty``): rich Live frames, a gated job seen running, then
  the final frame once the test opens the gate, and exit 1 because another job failed; Ctrl-C
  gives 130.

Nothing sleeps in place of synchronisation: every wait is on a condition with a deadline.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from runner.helpers import TORC, clean_env, finish, jobs, start_torc, torc, wait_until

from torc_slurm.errors import QueueError
from torc_slurm.reports.status import StatusReport, estimate_eta

from . import invoke, write_spec

LINE = re.compile(r"^\d\d:\d\d:\d\d done \d+/\d+ running \d+ pending \d+ ready \d+ blocked \d+ failed \d+")


@pytest.fixture()
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in ("TORC_DB", "TORC_LOCK_KIND", "SLURM_CPUS_ON_NODE", "SLURM_MEM_PER_NODE", "SLURM_JOB_ID",
                 "SLURM_JOB_GPUS", "CUDA_VISIBLE_DEVICES", "COLUMNS"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def gated_spec(work: Path, *, failing: bool = False) -> Path:
    """`gated` runs until the test creates the file `gate`; `quick` completes; `bad` exits 3."""
    gate = work / "gate"
    text = f"""
    name: gated
    jobs:
      - {{name: quick, command: "true"}}
      - {{name: gated, command: "sh -c 'while [ ! -e {gate} ]; do sleep 0.05; done; echo opened'"}}
      - {{name: after, command: "true", depends_on: [gated]}}
    """
    if failing:
        text += '  - {name: bad, command: "exit 3"}\n'
    return write_spec(work, text)


def start_gated_run(work: Path, *, failing: bool = False) -> subprocess.Popen:
    db = work / "torc.db"
    proc = start_torc(db, "run", gated_spec(work, failing=failing), "--num-cpus", 2, "--monitor-interval", 0,
                      cwd=work, log=work / "run.log")
    wait_until(lambda: job_status(db, "gated") == "running", timeout=60, what="the gated job to run")
    return proc


def job_status(db: Path, name: str, workflow_id: int = 1) -> str | None:
    """The job's status, or None while the queue file or the workflow does not exist yet."""
    if not db.exists() or db.stat().st_size == 0:
        return None
    try:
        return jobs(db, workflow_id).get(name, {}).get("status")
    except (QueueError, sqlite3.Error):  # the queue is being created
        return None


def status_json(db: Path, workflow_id: int = 1) -> dict:
    result = invoke(db, "workflows", "status", workflow_id, "-f", "json")
    report = StatusReport.model_validate_json(result.stdout)  # the JSON output is what the model says
    return report.model_dump() | {"exit_code": result.exit_code}


# -- status ---------------------------------------------------------------------------------------
def test_status_of_a_running_workflow_keeps_pending_and_running_apart(work: Path) -> None:
    db = work / "torc.db"
    run = start_gated_run(work, failing=True)
    try:
        report = wait_until(lambda: (r := status_json(db))["counts"]["completed"] >= 1 and r["failed"] >= 1 and r,
                            timeout=60, what="quick completed and bad failed")
        assert report["counts"]["running"] == 1 and report["counts"]["pending"] == 0
        assert report["counts"]["blocked"] == 1 and report["total"] == 4
        assert report["exit_code"] == 1  # a job failed
        assert [r["hostname"] for r in report["runners"]] and report["runners"][0]["running"] == 1
        assert report["runners"][0]["cpus"] == 2
        assert report["last_failures"][0]["job"] == "bad" and report["last_failures"][0]["return_code"] == 3
        assert report["eta_s"] is not None and report["eta_s"] > 0  # two attempts completed, one runs
        assert report["elapsed_s"] is not None and report["elapsed_s"] >= 0
        # The table says the same, pending apart from running (a subprocess: what a user sees).
        shown = torc(db, "workflows", "status", 1, cwd=work, env=clean_env(COLUMNS="80"))
        assert shown.returncode == 1, shown.stderr
        rows = dict(re.findall(r"^(\w+) +([\d,]+) *$", shown.stdout, re.MULTILINE))
        assert rows["running"] == "1" and "pending" not in rows and rows["failed"] == "1"
        assert "ETA" in shown.stdout and "Last failures" in shown.stdout and "Runners" in shown.stdout
    finally:
        (work / "gate").touch()
        finish(run, work / "run.log")
    final = status_json(db)
    assert final["finished"] and final["counts"]["completed"] == 3 and final["eta_s"] == 0
    assert final["ended_at"] is not None and final["elapsed_s"] > 0


def test_a_claimed_job_is_pending_not_running(work: Path) -> None:
    """A runner that claimed a job and did not start it yet: pending 1, running 0."""
    from torc_slurm.store.db import Database
    from torc_slurm.store.queue import Queue

    db = work / "torc.db"
    spec = write_spec(work, """
    name: claim
    jobs:
      - {name: one, command: "true"}
      - {name: two, command: "true"}
    """)
    assert invoke(db, "workflows", "create", spec).exit_code == 0
    assert invoke(db, "workflows", "init", 1).exit_code == 0
    with Database(db, create=False) as handle:
        queue = Queue(handle, 1)
        runner = queue.register_runner(hostname="node-1", pid=os.getpid(),
                                       resources={"cpus": 4, "gpus": [], "memory_bytes": 8 << 30,
                                                  "end_time": time.time() + 3600})
        queue.cycle(runner, choose=lambda ready: [ready[0].job_id])
    report = status_json(db)
    assert (report["counts"]["pending"], report["counts"]["running"], report["counts"]["ready"]) == (1, 0, 1)
    assert report["pending"] == 1 and report["running"] == 0 and report["exit_code"] == 0
    assert report["eta_s"] is None            # nothing completed yet: no estimate
    assert report["runners"][0]["time_left_s"] == pytest.approx(3600, abs=60)


def test_jobs_that_cannot_run_by_reason(work: Path) -> None:
    db = work / "torc.db"
    spec = write_spec(work, """
    name: misfits
    resource_requirements:
      - {name: small, num_cpus: 1, memory: 100m, runtime: PT10M}
      - {name: long, num_cpus: 1, memory: 100m, runtime: PT3H}
      - {name: wide, num_cpus: 4, memory: 100m, runtime: PT10M}
    slurm_schedulers:
      - {name: short_partition, walltime: "02:00:00"}
    jobs:
      - {name: fails, command: "exit 2", resource_requirements: small}
      - {name: child_of_failure, command: "true", depends_on: [fails], resource_requirements: small}
      - {name: too_long, command: "true", resource_requirements: long}
      - {name: too_wide, command: "true", resource_requirements: wide}
    """)
    assert invoke(db, "workflows", "create", spec).exit_code == 0
    assert invoke(db, "workflows", "init", 1).exit_code == 0
    # `fails` fails through the real queue (a fake runner reports it), so its child is canceled.
    from torc_slurm.store.db import Database
    from torc_slurm.store.queue import Queue

    from . import finish_job

    finish_job(db, 1, "fails", status="failed", return_code=2, message="exit code 2")
    report = status_json(db)
    assert report["cannot_run"]["no scheduler fits"]["count"] == 1
    assert report["cannot_run"]["no scheduler fits"]["examples"] == ["too_long"]
    assert report["cannot_run"]["upstream failed"] == {"count": 1, "at_least": False,
                                                       "examples": ["child_of_failure"]}
    assert "no runner fits" not in report["cannot_run"]     # no live runner
    # A live 2-CPU runner with 2 h left: too_wide (4 CPUs) and too_long (3 h) fit nowhere.
    with Database(db, create=False) as handle:
        Queue(handle, 1).register_runner(hostname="small-node", pid=os.getpid(),
                                         resources={"cpus": 2, "gpus": [], "memory_bytes": 1 << 30,
                                                    "end_time": time.time() + 7200})
    report = status_json(db)
    assert sorted(report["cannot_run"]["no runner fits"]["examples"]) == ["too_long", "too_wide"]
    assert report["cannot_run"]["no runner fits"]["count"] == 2
    shown = invoke(db, "workflows", "status", 1, env={"COLUMNS": "80"})
    assert shown.exit_code == 1
    assert "no scheduler fits" in shown.stdout and "too_long" in shown.stdout and "upstream failed" in shown.stdout
    assert all(len(line) <= 80 for line in shown.stdout.splitlines())


def test_status_exit_codes_and_unknown_workflow(work: Path) -> None:
    db = work / "torc.db"
    ok = write_spec(work, "name: fine\njobs:\n  - {name: a, command: 'true'}\n", "ok.yaml")
    assert invoke(db, "run", ok, "--monitor-interval", 0).exit_code == 0
    assert invoke(db, "workflows", "status", 1).exit_code == 0
    done = torc(db, "workflows", "status", 1, "-f", "json", cwd=work)
    assert done.returncode == 0 and StatusReport.model_validate_json(done.stdout).finished
    missing = torc(db, "workflows", "status", 9, cwd=work)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert "no workflow 9" in missing.stderr and "nearest: 1 (fine)" in missing.stderr
    watch_missing = invoke(db, "workflows", "status", 9, "--watch")
    assert watch_missing.exit_code == 1 and "no workflow 9" in watch_missing.output
    bad_interval = invoke(db, "workflows", "status", 1, "--watch", "--interval", "0.2")
    assert bad_interval.exit_code == 2 and "0.2" in bad_interval.output


def test_eta_rule() -> None:
    assert estimate_eta(0, [], 0) == 0.0
    assert estimate_eta(10, [], 4) is None            # nothing completed yet
    assert estimate_eta(10, [5.0, 15.0], 0) is None   # nothing running
    assert estimate_eta(10, [5.0, 15.0], 4) == pytest.approx(25.0)


# -- --watch without a terminal ---------------------------------------------------------------------
def test_watch_without_a_terminal_prints_one_line_per_change_and_exits_when_done(work: Path) -> None:
    db = work / "torc.db"
    run = start_gated_run(work)
    log = work / "watch.log"
    with open(log, "wb") as out:
        watch = subprocess.Popen([*TORC, "--db", str(db), "workflows", "status", "1", "--watch", "--interval", "1"],
                                 cwd=work, env=clean_env(), stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: "running 1" in log.read_text(), timeout=30, what="the watch to show the running job")
        (work / "gate").touch()
        assert finish(watch, log, timeout=60) == 0
    finally:
        (work / "gate").touch()
        if watch.poll() is None:
            watch.kill()
        finish(run, work / "run.log")
    lines = log.read_text().splitlines()
    assert lines and all(LINE.match(line) for line in lines), lines
    assert "running 1" in lines[0] and lines[-1].split(" ", 1)[1].startswith("done 3/3 running 0")
    assert len(lines) == len({line.split(" ", 1)[1] for line in lines})  # a line only when counts change
    assert "\x1b" not in log.read_text()


# -- --watch under a pseudo-terminal ---------------------------------------------------------------
def read_pty(fd: int, buffer: bytearray, timeout: float = 0.2) -> None:
    ready, _, _ = select.select([fd], [], [], timeout)
    if ready:
        try:
            buffer += os.read(fd, 65536)
        except OSError:  # EIO: the other side closed
            pass


def start_in_pty(args: list[str], cwd: Path) -> tuple[subprocess.Popen, int]:
    master, slave = pty.openpty()
    os.set_blocking(master, False)
    env = clean_env(TERM="xterm-256color", COLUMNS="80", LINES="40")
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    return proc, master


def plain(data: bytes) -> str:
    """The terminal output without escape sequences."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r", "", data.decode(errors="replace"))


def test_watch_in_a_terminal_refreshes_in_place_and_exits_1_when_a_job_failed(work: Path) -> None:
    db = work / "torc.db"
    run = start_gated_run(work, failing=True)
    wait_until(lambda: job_status(db, "bad") == "failed", timeout=60, what="bad to fail")
    watch, master = start_in_pty([*TORC, "--db", str(db), "workflows", "status", "1", "--watch", "--interval", "1"],
                                 cwd=work)
    seen = bytearray()
    try:
        wait_until(lambda: read_pty(master, seen) or "running 1" in plain(bytes(seen)), timeout=30,
                   what="a Live frame with the running job")
        first = plain(bytes(seen))
        assert "Workflow 1 (gated)" in first and "━" in first  # the progress bar
        assert "Last failures" in first and "bad" in first and "Ctrl-C" in first
        assert "\x1b[" in seen.decode(errors="replace")        # a terminal: escape codes, redrawn in place
        (work / "gate").touch()
        wait_until(lambda: read_pty(master, seen) or watch.poll() is not None, timeout=60,
                   what="the watch to exit by itself")
        read_pty(master, seen)
        assert watch.returncode == 1                           # a job failed
        final = plain(bytes(seen))
        assert "finished" in final and "completed 3" in final
        drawn = re.split(r"\r\n|\n|\r|\x1b\[2K|\x1b\[\d*A", seen.decode(errors="replace"))
        assert max(len(plain(line.encode())) for line in drawn) <= 80   # every line Live drew fits 80
    finally:
        (work / "gate").touch()
        if watch.poll() is None:
            watch.kill()
        os.close(master)
        finish(run, work / "run.log")


def test_watch_in_a_terminal_stops_on_ctrl_c_with_130(work: Path) -> None:
    db = work / "torc.db"
    run = start_gated_run(work)
    watch, master = start_in_pty([*TORC, "--db", str(db), "workflows", "status", "1", "--watch", "--interval", "1"],
                                 cwd=work)
    seen = bytearray()
    try:
        wait_until(lambda: read_pty(master, seen) or "running 1" in plain(bytes(seen)), timeout=30,
                   what="the first frame")
        os.killpg(watch.pid, signal.SIGINT)
        wait_until(lambda: read_pty(master, seen) or watch.poll() is not None, timeout=30, what="the watch to stop")
        assert watch.returncode == 130
        assert "Traceback" not in plain(bytes(seen))
    finally:
        (work / "gate").touch()
        if watch.poll() is None:
            watch.kill()
        os.close(master)
        finish(run, work / "run.log")


def test_watch_json_emits_one_object_per_change(work: Path) -> None:
    db = work / "torc.db"
    ok = write_spec(work, "name: fine\njobs:\n  - {name: a, command: 'true'}\n", "ok.yaml")
    assert invoke(db, "run", ok, "--monitor-interval", 0).exit_code == 0
    result = invoke(db, "workflows", "status", 1, "--watch", "-f", "json")
    assert result.exit_code == 0
    objects = [StatusReport.model_validate_json(line) for line in result.stdout.splitlines()]
    assert len(objects) == 1 and objects[0].finished and json.loads(result.stdout)["counts"]["completed"] == 1
    lines = invoke(db, "workflows", "status", 1, "--watch", "--interval", 1)   # CliRunner: no terminal
    assert lines.exit_code == 0 and len(lines.stdout.splitlines()) == 1 and LINE.match(lines.stdout)
    assert " done 1/1 running 0 pending 0 ready 0 blocked 0 failed 0" in lines.stdout
