"""Stopping and losing runners, with real `torc` subprocesses: SIGTERM winds a runner down and hands
its jobs back; a runner killed with -9 (its node lost) is swept by another runner; many runners on
one queue file never claim a job twice.

Jobs that must outlive a first runner sleep while a ``phase1`` file exists; the test removes it
before the second runner starts, so the second attempts finish quickly.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from .helpers import (alive, create_workflow, finish, jobs, query, results, start_torc, torc, wait_until,
                      write_spec, write_spec_data)

# Each attempt logs "start ATTEMPT TIME PID" and, if it finishes, "end ATTEMPT TIME" to logs/NAME.
LOGGED = ('echo "start $TORC_ATTEMPT $(date +%s.%N) $$" >> logs/$TORC_JOB_NAME; '
          'echo "out $TORC_ATTEMPT"; echo "err $TORC_ATTEMPT" >&2; ')
SLEEP_IN_PHASE1 = "if [ -e phase1 ]; then sleep 1000 & echo $! > logs/$TORC_JOB_NAME.sleep; wait; fi; "
END = 'echo "end $TORC_ATTEMPT $(date +%s.%N)" >> logs/$TORC_JOB_NAME'


def attempts(work: Path, name: str) -> list[list[str]]:
    return [line.split() for line in (work / "logs" / name).read_text().splitlines()]


def job_pids(work: Path, name: str) -> list[int]:
    """The job's shell (its process group leader) and its background sleep, as the job logged them."""
    pids = [int(a[3]) for a in attempts(work, name) if a[0] == "start"]
    sleep = work / "logs" / f"{name}.sleep"
    return pids + ([int(sleep.read_text())] if sleep.exists() and sleep.read_text().strip() else [])


def running(db: Path, wf: int, n: int):  # noqa: ANN201
    return lambda: sum(r["status"] == "running" for r in jobs(db, wf).values()) == n


def sleeping(work: Path, names: list[str]):  # noqa: ANN201
    """Every named job has logged its background sleep's pid (so it is inside `wait`)."""
    return lambda: all((work / "logs" / f"{n}.sleep").exists()
                       and (work / "logs" / f"{n}.sleep").read_text().strip() for n in names)


def setup(tmp_path: Path, name: str, *job_specs: dict[str, Any]) -> tuple[Path, int]:
    (tmp_path / "logs").mkdir()
    (tmp_path / "phase1").touch()
    db = tmp_path / "torc.db"
    return db, create_workflow(db, write_spec_data(tmp_path, {"name": name, "jobs": list(job_specs)}))


# -- SIGTERM --------------------------------------------------------------------------------------
def test_sigterm_on_torc_run_stops_cleanly_and_a_second_run_resumes(tmp_path: Path) -> None:
    work = tmp_path
    polite = "trap 'echo got TERM > logs/$TORC_JOB_NAME.term; exit 143' TERM; "
    db, wf = setup(work, "sigterm",
                   {"name": "polite_{i}", "command": polite + LOGGED + SLEEP_IN_PHASE1 + END,
                    "supports_termination": True, "parameters": {"i": "1:2"}},
                   {"name": "rude_{i}", "command": LOGGED + SLEEP_IN_PHASE1 + END, "parameters": {"i": "1:2"}})
    names = ["polite_1", "polite_2", "rude_1", "rude_2"]
    log = work / "run1.log"
    proc = start_torc(db, "run", wf, "--num-cpus", 4, "--termination-grace", 1.5, cwd=work, log=log)
    try:
        wait_until(running(db, wf, 4), what="4 jobs running")
        wait_until(sleeping(work, names), what="every job inside its sleep")
    finally:
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = finish(proc, log)
    took = time.monotonic() - signalled
    output = log.read_text()
    assert rc == 143, output
    assert "Interrupted (SIGTERM)" in output and f"torc run {wf}" in output
    assert 1.5 <= took < 20, took  # the rude jobs were killed after the 1.5 s grace period (not 30 s)
    rows = jobs(db, wf)
    assert {n: (r["status"], r["attempt"], r["runner_id"]) for n, r in rows.items()} == {
        n: ("ready", 1, None) for n in names}
    first = {r["name"]: r for r in results(db, wf)}
    assert {n: r["status"] for n, r in first.items()} == {n: "terminated" for n in names}
    for name in names:
        assert not any(alive(pid) for pid in job_pids(work, name)), name
        assert [a[:2] for a in attempts(work, name)] == [["start", "1"]]  # no "end": it was stopped
    for name in ("polite_1", "polite_2"):
        assert (work / "logs" / f"{name}.term").exists() and first[name]["return_code"] == 143
    for name in ("rude_1", "rude_2"):
        assert not (work / "logs" / f"{name}.term").exists() and first[name]["signal"] == signal.SIGKILL
    assert query(db, "SELECT status FROM runners WHERE workflow_id = ?", (wf,)) == [{"status": "finished"}]

    (work / "phase1").unlink()
    second = torc(db, "run", wf, "--num-cpus", 4, cwd=work, timeout=60)
    assert second.returncode == 0, second.stdout + second.stderr
    rows = jobs(db, wf)
    assert {n: (r["status"], r["attempt"]) for n, r in rows.items()} == {n: ("completed", 2) for n in names}
    history = [(r["name"], r["attempt"], r["status"]) for r in results(db, wf)]
    assert sorted(history) == sorted([(n, 1, "terminated") for n in names] + [(n, 2, "completed") for n in names])
    # stdout/stderr: one pair of files per attempt, under <output>/job_stdio/
    stdio = work / "torc_output" / "job_stdio"
    for name, row in rows.items():
        for attempt in (1, 2):
            stem = stdio / f"wf{wf}_job{row['id']}_attempt{attempt}"
            assert Path(f"{stem}.out").read_text() == f"out {attempt}\n", name
            assert Path(f"{stem}.err").read_text() == f"err {attempt}\n", name


def test_sigterm_on_run_jobs_exits_zero_and_hands_jobs_back(tmp_path: Path) -> None:
    """What an allocation's runner does at `--signal=B:TERM@…`: stop, hand back, exit 0."""
    work = tmp_path
    polite = "trap 'echo got TERM > logs/$TORC_JOB_NAME.term; exit 143' TERM; "
    db, wf = setup(work, "runjobs", {"name": "job_{i}", "command": polite + LOGGED + SLEEP_IN_PHASE1 + END,
                                     "supports_termination": True, "parameters": {"i": "1:3"}})
    names = ["job_1", "job_2", "job_3"]
    log = work / "runner.log"
    proc = start_torc(db, "slurm", "run-jobs", db, wf, work / "out", "--num-cpus", 2,
                      "--wait-for-new-jobs", 0, cwd=work, log=log)
    try:
        wait_until(running(db, wf, 2), what="2 jobs running")
        wait_until(lambda: sum(sleeping(work, [n])() for n in names) == 2, what="2 jobs inside their sleep")
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = finish(proc, log)
    assert rc == 0, log.read_text()
    rows = jobs(db, wf)
    assert {r["status"] for r in rows.values()} == {"ready"} and {r["runner_id"] for r in rows.values()} == {None}
    started = [n for n in names if (work / "logs" / n).exists()]
    assert len(started) == 2
    # The started jobs count an attempt and have a 'terminated' record; the one only claimed does not.
    assert sorted((r["name"], r["attempt"], r["status"]) for r in results(db, wf)) == [
        (n, 1, "terminated") for n in started]
    assert {n: rows[n]["attempt"] for n in names} == {n: 1 if n in started else 0 for n in names}
    for name in started:
        assert (work / "logs" / f"{name}.term").exists()
        assert not any(alive(pid) for pid in job_pids(work, name))


# -- kill -9 and recovery ------------------------------------------------------------------------
def test_a_killed_runner_is_swept_and_its_jobs_rerun_exactly_once(tmp_path: Path) -> None:
    work = tmp_path
    db, wf = setup(work, "lost", {"name": "job_{i}", "command": LOGGED + SLEEP_IN_PHASE1 + END,
                                  "parameters": {"i": "1:6"}})
    names = [f"job_{i}" for i in range(1, 7)]
    log1 = work / "runner1.log"
    runner1 = start_torc(db, "run", wf, "--num-cpus", 2, cwd=work, log=log1)
    try:
        wait_until(running(db, wf, 2), what="runner 1 running 2 jobs")
        held = wait_until(lambda: [n for n, r in jobs(db, wf).items() if r["status"] == "pending"],
                          what="runner 1 holding claimed jobs it has not started")
        busy = [n for n, r in jobs(db, wf).items() if r["status"] == "running"]
        wait_until(sleeping(work, busy), what="runner 1's jobs inside their sleep")
    finally:
        runner1.kill()  # SIGKILL: no wind-down, no sign-off
        runner1.wait(timeout=30)
    # Its jobs die with it (its guardian kills them), background children included.
    wait_until(lambda: not any(alive(pid) for n in busy for pid in job_pids(work, n)), timeout=5,
               what="job processes gone")
    killed_at = time.time()
    rows = jobs(db, wf)
    runner1_id = rows[busy[0]]["runner_id"]
    lost = sorted(n for n, r in rows.items() if r["runner_id"] == runner1_id)
    assert set(busy) | set(held) <= set(lost) and len(busy) == 2

    (work / "phase1").unlink()
    log2 = work / "runner2.log"
    runner2 = start_torc(db, "slurm", "run-jobs", db, wf, work / "out", "--num-cpus", 2,
                         "--wait-for-new-jobs", 30, cwd=work, log=log2)  # the lease is 120 s: no waiting it out
    assert finish(runner2, log2, timeout=60) == 0, log2.read_text()

    rows = jobs(db, wf)
    assert {n: r["status"] for n, r in rows.items()} == {n: "completed" for n in names}, log2.read_text()
    runners = {r["id"]: r["status"] for r in query(db, "SELECT id, status FROM runners WHERE workflow_id = ?", (wf,))}
    assert runners[runner1_id] == "lost" and sorted(runners.values()) == ["finished", "lost"]
    history = results(db, wf)
    lost_rows = [r for r in history if r["status"] == "lost"]
    assert sorted(r["name"] for r in lost_rows) == lost
    assert all(r["runner_id"] == runner1_id and r["attempt"] == 1 and "is gone" in r["message"]
               for r in lost_rows)
    completed = [r for r in history if r["status"] == "completed"]
    assert sorted(r["name"] for r in completed) == names  # every job exactly once
    assert len(history) == len(names) + len(lost)  # nothing else: no duplicate, no failure
    for row in completed:
        assert row["attempt"] == (2 if row["name"] in lost else 1) == rows[row["name"]]["attempt"]
        assert row["runner_id"] != runner1_id
    # No two attempts of one job ran at the same time: the lost attempt was dead before the next began.
    for name in names:
        log = attempts(work, name)
        starts = [float(a[2]) for a in log if a[0] == "start"]
        if name in busy:
            assert [a[:2] for a in log] == [["start", "1"], ["start", "2"], ["end", "2"]], log
            assert starts[1] > killed_at
        else:  # never started by runner 1 (only claimed, or not even that)
            attempt = str(rows[name]["attempt"])
            assert [a[:2] for a in log] == [["start", attempt], ["end", attempt]], log
            assert starts[0] > killed_at


# -- many runners, one queue file ------------------------------------------------------------------
def test_eight_runners_never_claim_a_job_twice(tmp_path: Path) -> None:
    work = tmp_path
    db = work / "torc.db"
    wf = create_workflow(db, write_spec(work, """
        name: crowd
        jobs:
          - {name: "t_{i:04d}", command: "true", parameters: {i: "1:2000"}}
    """))
    procs = []
    for k in range(8):
        log = work / f"runner{k}.log"
        procs.append((start_torc(db, "slurm", "run-jobs", db, wf, work / "out", "--max-parallel-jobs", 4,
                                 "--wait-for-new-jobs", 2, "--monitor-interval", 0, cwd=work, log=log), log))
    for proc, log in procs:
        assert finish(proc, log, timeout=150) == 0, log.read_text()

    counts = query(db, "SELECT status, COUNT(*) AS n, MIN(attempt) AS lo, MAX(attempt) AS hi, COUNT(runner_id) AS held"
                       " FROM jobs WHERE workflow_id = ? GROUP BY status", (wf,))
    assert counts == [{"status": "completed", "n": 2000, "lo": 1, "hi": 1, "held": 0}]
    per_job = query(db, "SELECT job_id, COUNT(*) AS n, MIN(attempt) AS lo, MAX(attempt) AS hi,"
                        " SUM(status = 'completed') AS ok FROM results WHERE workflow_id = ? GROUP BY job_id", (wf,))
    assert len(per_job) == 2000
    assert all(r["n"] == 1 and r["lo"] == r["hi"] == 1 and r["ok"] == 1 for r in per_job), \
        [r for r in per_job if r["n"] != 1 or r["ok"] != 1][:5]
    workers = query(db, "SELECT runner_id, COUNT(*) AS n FROM results WHERE workflow_id = ? GROUP BY runner_id", (wf,))
    assert len(workers) >= 4, workers  # the runners really did share the queue
    assert query(db, "SELECT COUNT(*) AS n FROM runners WHERE workflow_id = ? AND status = 'finished'",
                 (wf,)) == [{"n": 8}]
