"""A job runs once: the faults of shared filesystems and HPC nodes, injected into real `torc`
processes (the exactly-once issue's cases, one test each).

Every job runs ``once.py``: it takes an exclusive ``flock`` on ``locks/<job>`` for its whole life
(the kernel drops it when the process dies, kill -9 included), so a second attempt that starts
while an earlier one still runs cannot get it and logs DOUBLE. Each attempt appends
``start``/``end`` lines to ``events.log`` with O_APPEND. The checks: no DOUBLE, every job ended,
and what was rerun.

Timeouts are shrunk through the spec (``heartbeat_timeout_seconds``), never waited out.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any


from .helpers import (PYTHON, TORC, alive, clean_env, create_workflow, finish, jobs, query, results, run_runner,
                      start_torc, torc, wait_until, write_spec_data)

ONCE = r'''
import fcntl, os, sys, time
name, seconds = sys.argv[1], float(sys.argv[2])
attempt = os.environ.get("TORC_ATTEMPT", "?")
def log(event):
    fd = os.open("events.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(fd, f"{name} {attempt} {event} {time.time():.6f} {os.getpid()}\n".encode())
    os.close(fd)
lock = os.open(os.path.join("locks", name), os.O_CREAT | os.O_RDWR, 0o600)
try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    log("DOUBLE")
    sys.exit(3)
if len(sys.argv) > 3:  # a grandchild, to check that the whole tree dies with the runner
    child = os.fork()
    if child == 0:
        os.execvp("sleep", ["sleep", "1000"])
    with open(os.path.join("pids", name), "a") as f:
        f.write(f"{os.getpid()} {child}\n")
log("start")
time.sleep(seconds)
log("end")
'''


def make(work: Path, n: int, seconds: float, *, lease: int = 120, extra_job: dict[str, Any] | None = None,
         grandchild: bool = False, **workflow: Any) -> tuple[Path, int]:
    for folder in ("locks", "pids"):
        (work / folder).mkdir(exist_ok=True)
    (work / "once.py").write_text(ONCE)
    command = f"{PYTHON} once.py job_{{i}} {seconds}" + (" grandchild" if grandchild else "")
    spec = {"name": "faults", "heartbeat_timeout_seconds": lease, **workflow,
            "jobs": [{"name": "job_{i}", "command": command, "parameters": {"i": f"1:{n}"}, **(extra_job or {})}]}
    db = work / "torc.db"
    return db, create_workflow(db, write_spec_data(work, spec))


def events(work: Path) -> list[list[str]]:
    path = work / "events.log"
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def assert_ran_once_at_a_time(work: Path, n: int) -> Counter:
    """No attempt overlapped another of the same job, and every job ended; returns starts per job."""
    log = events(work)
    doubles = [e for e in log if e[2] == "DOUBLE"]
    assert not doubles, f"jobs ran twice at the same time: {doubles}"
    ended = {e[0] for e in log if e[2] == "end"}
    assert ended == {f"job_{i}" for i in range(1, n + 1)}, f"lost: {sorted({f'job_{i}' for i in range(1, n + 1)} - ended)}"
    return Counter(e[0] for e in log if e[2] == "start")


def all_completed(db: Path, wf: int) -> bool:
    return all(r["status"] == "completed" for r in jobs(db, wf).values())


def running_count(db: Path, wf: int) -> int:
    return sum(r["status"] == "running" for r in jobs(db, wf).values())


def hold_lock(db: Path, seconds: float, ready: Path) -> subprocess.Popen:
    """An outside process that holds the queue's lock file for ``seconds`` (a stalled metadata server)."""
    code = ("import filelock, sys, time\n"
            "lock = filelock.FileLock(sys.argv[1], thread_local=False)\n"
            "lock.acquire()\n"
            "open(sys.argv[3], 'w').close()\n"
            "time.sleep(float(sys.argv[2]))\n"
            "lock.release()\n")
    return subprocess.Popen([PYTHON, "-c", code, f"{db}.lock", str(seconds), str(ready)])


def start_runners(db: Path, wf: int, work: Path, count: int, cpus: int = 4, env: dict | None = None
                  ) -> list[tuple[subprocess.Popen, Path]]:
    runners = []
    for index in range(count):
        log = work / f"runner{index}.log"
        runners.append((start_torc(db, "-v", "run", wf, "--num-cpus", cpus, "--monitor-interval", 0,
                                   cwd=work, log=log, env=env), log))
    return runners


def finish_all(runners: list[tuple[subprocess.Popen, Path]], timeout: float = 120) -> list[str]:
    logs = []
    for proc, log in runners:
        finish(proc, log, timeout)
        logs.append(log.read_text())
    return logs


# -- case 1: a global lock stall ------------------------------------------------------------------

def test_a_lock_stall_shorter_than_the_lease_changes_nothing(tmp_path: Path) -> None:
    db, wf = make(tmp_path, 8, 3.0, lease=8)
    runners = start_runners(db, wf, tmp_path, 2)
    wait_until(lambda: running_count(db, wf) >= 4, what="4 jobs running")
    stall = hold_lock(db, 4.0, tmp_path / "held")
    wait_until(lambda: (tmp_path / "held").exists(), what="the stall")
    stall.wait(timeout=30)
    logs = finish_all(runners)
    starts = assert_ran_once_at_a_time(tmp_path, 8)
    assert set(starts.values()) == {1}, (starts, logs)
    assert all(r["status"] == "completed" and not r["late"] for r in results(db, wf))
    assert not any("lost" == r["status"] for r in results(db, wf))


def test_a_lock_stall_longer_than_the_lease_fences_jobs_but_never_runs_one_twice(tmp_path: Path) -> None:
    db, wf = make(tmp_path, 8, 5.0, lease=3)
    runners = start_runners(db, wf, tmp_path, 2)
    wait_until(lambda: running_count(db, wf) >= 4, what="4 jobs running")
    stall = hold_lock(db, 6.0, tmp_path / "held")
    wait_until(lambda: (tmp_path / "held").exists(), what="the stall")
    stall.wait(timeout=30)
    logs = finish_all(runners)
    starts = assert_ran_once_at_a_time(tmp_path, 8)
    assert all_completed(db, wf), logs
    lost = [r for r in results(db, wf) if r["status"] == "lost"]
    assert lost, "the stall outlived the lease: the first attempts should have been fenced"
    assert set(starts.values()) <= {1, 2} and list(starts.values()).count(2) >= 4, starts


# -- case 2: a live runner swept by mistake, and clock skew ----------------------------------------

def test_sync_status_does_not_sweep_a_live_runner(tmp_path: Path) -> None:
    db, wf = make(tmp_path, 4, 3.0, lease=60)
    (runner,) = start_runners(db, wf, tmp_path, 1)
    wait_until(lambda: running_count(db, wf) == 4, what="4 jobs running")
    out = torc(db, "workflows", "sync-status", wf, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "Returned 0 job(s)" in out.stdout and "looks alive" in out.stdout
    finish_all([runner])
    assert set(assert_ran_once_at_a_time(tmp_path, 4).values()) == {1}


def test_a_runner_swept_while_alive_kills_what_it_lost_and_carries_on(tmp_path: Path) -> None:
    from torc_slurm.store.db import Database
    from torc_slurm.store.leases import SweepRequest
    from torc_slurm.store.queue import Queue

    db, wf = make(tmp_path, 6, 4.0, lease=60)
    (runner,) = start_runners(db, wf, tmp_path, 1, cpus=3)
    wait_until(lambda: running_count(db, wf) == 3, what="3 jobs running")
    with Database(db, create=False) as handle:  # a wrong verdict: the runner is alive
        queue = Queue(handle, wf)
        (me,) = queue.peers()
        assert queue.sweep([SweepRequest(me.runner_id, me.lease_seq, "wrong verdict")], by="the test") == 6
    (log,) = finish_all([runner])
    assert "the queue took them back" in log and "Traceback" not in log
    assert_ran_once_at_a_time(tmp_path, 6)
    assert all_completed(db, wf)
    late = [r for r in results(db, wf) if r["late"]]  # what it reported after losing the jobs
    assert late and all("not applied" in r["message"] for r in late)
    assert len([r for r in results(db, wf) if r["status"] == "completed" and not r["late"]]) == 6


def test_a_runner_whose_clock_is_90_s_behind_runs_nothing_twice(tmp_path: Path) -> None:
    db, wf = make(tmp_path, 24, 0.5, lease=4)
    skewed = ("import time; _real = time.time; time.time = lambda: _real() - 90\n"
              "import sys; from torc_slurm.cli import main; main(sys.argv[1:])")
    env = clean_env()
    logs = [tmp_path / "skewed.log", tmp_path / "normal.log"]
    procs = [subprocess.Popen([PYTHON, "-c", skewed, "--db", str(db), "-v", "run", str(wf), "--num-cpus", "3",
                               "--monitor-interval", "0"], cwd=tmp_path, env=env,
                              stdout=open(logs[0], "wb"), stderr=subprocess.STDOUT),
             subprocess.Popen([*TORC, "--db", str(db), "-v", "run", str(wf), "--num-cpus", "3",
                               "--monitor-interval", "0"], cwd=tmp_path, env=env,
                              stdout=open(logs[1], "wb"), stderr=subprocess.STDOUT)]
    finish_all(list(zip(procs, logs)))
    starts = assert_ran_once_at_a_time(tmp_path, 24)
    assert set(starts.values()) == {1}, starts
    assert not [r for r in results(db, wf) if r["status"] == "lost" or r["late"]]


# -- case 3: kill -9 of a runner ------------------------------------------------------------------

def test_jobs_die_with_a_killed_runner_and_a_runner_here_recovers_at_once(tmp_path: Path) -> None:
    db, wf = make(tmp_path, 4, 1000.0, lease=600, grandchild=True)
    (first, log) = start_runners(db, wf, tmp_path, 1)[0]
    wait_until(lambda: len(list((tmp_path / "pids").iterdir())) == 4, what="4 jobs with grandchildren")
    pids = [int(p) for f in (tmp_path / "pids").iterdir() for p in f.read_text().split()]
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed_at = time.monotonic()
    wait_until(lambda: not any(alive(p) for p in pids), timeout=5, what="the jobs and their children to die")
    assert time.monotonic() - killed_at < 5
    # A second runner on this host sees the first one's pid gone: no 600 s lease to wait out.
    (tmp_path / "once.py").write_text(ONCE.replace("time.sleep(seconds)", "time.sleep(0.1)"))
    (second,) = start_runners(db, wf, tmp_path, 1)
    finish_all([second], timeout=60)
    starts = assert_ran_once_at_a_time(tmp_path, 4)
    assert set(starts.values()) == {2}
    lost = [r for r in results(db, wf) if r["status"] == "lost"]
    assert len(lost) == 4 and all("is gone" in r["message"] for r in lost)


# -- case 4: outcomes reach the queue within a second ----------------------------------------------

def test_outcomes_older_than_a_second_survive_a_kill(tmp_path: Path) -> None:
    n = 300
    db, wf = make(tmp_path, n, 0.02, lease=600)
    (first, log) = start_runners(db, wf, tmp_path, 1, cpus=2)[0]
    wait_until(lambda: sum(e[2] == "end" for e in events(tmp_path)) >= 100, what="100 jobs done", interval=0.01)
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed_at = time.time()
    (second,) = start_runners(db, wf, tmp_path, 1, cpus=2)
    finish_all([second], timeout=120)
    starts = assert_ran_once_at_a_time(tmp_path, n)
    first_end: dict[str, float] = {}
    for name, _, event, at, _pid in events(tmp_path):
        if event == "end":
            first_end.setdefault(name, float(at))
    rerun_after_reporting = [name for name, count in starts.items()
                             if count > 1 and first_end[name] < killed_at - 1.0]
    assert not rerun_after_reporting, rerun_after_reporting
    assert all_completed(db, wf)


# -- case 7: deleting a workflow under a live runner ------------------------------------------------

def test_delete_refuses_under_a_live_runner_and_force_stops_it_first(tmp_path: Path) -> None:
    db, wf = make(tmp_path, 2, 1000.0, lease=60)
    (runner, log) = start_runners(db, wf, tmp_path, 1)[0]
    wait_until(lambda: running_count(db, wf) == 2, what="2 jobs running")
    old_jobs = {r["id"] for r in jobs(db, wf).values()}
    refused = torc(db, "workflows", "delete", wf, "--yes", cwd=tmp_path)
    assert refused.returncode == 1 and "live runner" in refused.stderr
    deleted = torc(db, "workflows", "delete", wf, "--yes", "--force", "--timeout", 60, cwd=tmp_path)
    assert deleted.returncode == 0, deleted.stderr
    assert runner.wait(timeout=30) in (0, 1)
    new_db, new_wf = db, create_workflow(db, write_spec_data(tmp_path, {"name": "next", "jobs": [
        {"name": "x_{i}", "command": "true", "parameters": {"i": "1:2"}}]}, name="next.json"))
    assert new_wf > wf
    assert not old_jobs & {r["id"] for r in jobs(new_db, new_wf).values()}
    assert not any(e[2] == "end" for e in events(tmp_path))  # the old jobs were stopped, not finished


# -- cases 8 and 9: attempt limits; a polite job stopped at the walltime ----------------------------

def test_a_job_that_always_overruns_gives_up_after_max_attempts(tmp_path: Path) -> None:
    from torc_slurm.runner.walltime import EndTime

    db, wf = make(tmp_path, 1, 1000.0, max_attempts=2, extra_job={"resource_requirements": "short"},
                  resource_requirements=[{"name": "short", "runtime": "PT1S", "memory": "100m"}])
    for _ in range(2):
        run_runner(db, wf, end_time=EndTime(time.time() + 2.5), buffer_s=0.5, termination_grace_s=0.2,
                   heartbeat_timeout_s=30, monitor_interval_s=0)
    (row,) = jobs(db, wf).values()
    assert row["status"] == "failed" and row["attempt"] == 2
    assert "gave up after 2 attempts" in results(db, wf)[-1]["message"]
    run_runner(db, wf, end_time=EndTime(time.time() + 2.5), buffer_s=0.5)  # nothing left to run
    assert sum(e[2] == "start" for e in events(tmp_path)) == 2


def test_a_polite_job_that_exits_0_on_sigterm_at_the_walltime_is_terminated(tmp_path: Path) -> None:
    from torc_slurm.runner.walltime import EndTime

    work = tmp_path
    command = "trap 'echo partial > out.txt; exit 0' TERM; sleep 1000 & wait"
    db = work / "torc.db"
    wf = create_workflow(db, write_spec_data(work, {"name": "polite", "jobs": [
        {"name": "polite", "command": command, "supports_termination": True, "resource_requirements": "short"},
        {"name": "after", "command": "true", "depends_on": ["polite"]}],
        "resource_requirements": [{"name": "short", "runtime": "PT1S", "memory": "100m"}]}))
    _, summary = run_runner(db, wf, end_time=EndTime(time.time() + 2.5), buffer_s=0.5, termination_grace_s=5,
                            monitor_interval_s=0)
    assert summary.terminated == 1 and summary.completed == 0
    assert (work / "out.txt").read_text().strip() == "partial"  # it did exit 0 on SIGTERM
    rows = jobs(db, wf)
    assert (rows["polite"]["status"], rows["after"]["status"]) == ("ready", "blocked")
    (result,) = results(db, wf)
    assert result["status"] == "terminated" and result["return_code"] == 0


# -- case 5: a COMMIT that fails ----------------------------------------------------------------------

def test_a_reader_that_blocks_commits_is_ridden_out(tmp_path: Path) -> None:
    """An outside process holds ``BEGIN; SELECT …`` (SQLite's shared lock, not torc's) past the
    busy timeout: the runner's commits fail, roll back, and are retried until they pass; every
    outcome arrives, and no job is left without a holder."""
    db, wf = make(tmp_path, 6, 0.5, lease=30)
    env = clean_env(TORC_SQLITE_BUSY_TIMEOUT="0.3")
    (runner,) = start_runners(db, wf, tmp_path, 1, cpus=2, env=env)
    wait_until(lambda: running_count(db, wf) >= 1, what="a job running")
    reader = ("import sqlite3, sys, time\n"
              "conn = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
              "conn.execute('BEGIN'); conn.execute('SELECT COUNT(*) FROM jobs').fetchall()\n"
              "open(sys.argv[2], 'w').close(); time.sleep(3); conn.execute('COMMIT')\n")
    blocker = subprocess.Popen([PYTHON, "-c", reader, str(db), str(tmp_path / "reading")])
    wait_until(lambda: (tmp_path / "reading").exists(), what="the reader inside its transaction")
    blocker.wait(timeout=30)
    (log,) = finish_all([runner])
    assert "queue cycle failed" in log and "retrying" in log, log
    assert "Traceback" not in log and "within a transaction" not in log
    assert set(assert_ran_once_at_a_time(tmp_path, 6).values()) == {1}
    assert all_completed(db, wf)
    assert query(db, "SELECT COUNT(*) AS n FROM jobs WHERE runner_id IS NOT NULL")[0]["n"] == 0


def test_a_job_that_finishes_while_its_runner_waits_past_the_lease_keeps_its_outcome(tmp_path: Path) -> None:
    """The lease lapses while the runner waits for a held lock, but the job exited 0 on its own
    before anyone could take it: it is completed, not lost and rerun (found by the fault campaign)."""
    db, wf = make(tmp_path, 1, 1.0, lease=3)
    (runner,) = start_runners(db, wf, tmp_path, 1, cpus=1)
    wait_until(lambda: any(e[2] == "start" for e in events(tmp_path)), what="the job to start", interval=0.01)
    stall = hold_lock(db, 4.5, tmp_path / "held")
    stall.wait(timeout=30)
    finish_all([runner])
    assert set(assert_ran_once_at_a_time(tmp_path, 1).values()) == {1}
    assert [(r["status"], r["late"]) for r in results(db, wf)] == [("completed", 0)]


def test_delete_sweeps_a_runner_killed_with_nothing_left_to_do(tmp_path: Path) -> None:
    """A runner killed while idle stays 'active' in the queue; delete sees its pid gone on this
    host and does not call it live (found by the fault campaign)."""
    from torc_slurm.runner.fencing import host_key
    from torc_slurm.store.db import Database
    from torc_slurm.store.queue import Queue

    db, wf = make(tmp_path, 1, 0.1, lease=60)
    gone = subprocess.Popen([PYTHON, "-c", "pass"])
    gone.wait()
    with Database(db, create=False) as handle:
        idle = Queue(handle, wf).register_runner(hostname="here", pid=gone.pid, host_key=host_key(), token="idle")
    refused = torc(db, "workflows", "delete", wf, "--yes", cwd=tmp_path)
    assert refused.returncode == 0, refused.stderr
    assert query(db, "SELECT COUNT(*) AS n FROM runners WHERE id = ?", (idle,))[0]["n"] == 0
