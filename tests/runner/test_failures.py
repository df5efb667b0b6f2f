"""Failure handling with real job processes: timeouts (enforced, and at the allocation's end after an
overrun), OOM told apart from other kills, each attempt's reason, failure-handler retries with
recovery scripts, and dependents canceled with the name of the job that failed upstream.

Runners run in this process (``run_runner``); the clock is never waited out beyond a job's few
seconds of declared runtime.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from torc_slurm.runner.policy import Exit, judge, matching_rule
from torc_slurm.runner.resources import detect_node
from torc_slurm.spec.models import FailureRule

from .helpers import PYTHON, create_workflow, jobs, results, run_runner, wait_until, write_spec_data

ALLOC = """\
import os, signal, sys, time
mb, then = int(sys.argv[1]), sys.argv[2]
block = bytearray(mb * 2**20)
for i in range(0, len(block), 4096):
    block[i] = 1
time.sleep(float(sys.argv[3]) if len(sys.argv) > 3 else 1.0)
if then == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
"""

TERM_TRAP = """\
import signal, sys, time
def on_term(*_):
    open(sys.argv[1], "w").write("got TERM")
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
time.sleep(60)
"""


def make(work: Path, jobs_: list[dict[str, Any]], **workflow: Any) -> tuple[Path, int]:
    (work / "alloc.py").write_text(ALLOC)
    (work / "term_trap.py").write_text(TERM_TRAP)
    spec = {"name": "failures", "jobs": jobs_, **workflow}
    db = work / "torc.db"
    return db, create_workflow(db, write_spec_data(work, spec))


def run(db: Path, wf: int, work: Path, **options: Any):  # noqa: ANN201
    return run_runner(db, wf, node=detect_node(environ={}, num_cpus=4, memory_gb=8), output_dir=work / "out",
                      **options)


def attempts(db: Path, wf: int, name: str) -> list[dict[str, Any]]:
    return [r for r in results(db, wf) if r["name"] == name]


# -- timeouts ----------------------------------------------------------------------------------
def test_an_enforced_runtime_times_the_job_out_and_an_unenforced_one_is_only_a_request(tmp_path: Path) -> None:
    db, wf = make(tmp_path, [
        {"name": "overrun", "command": "sleep 30", "resource_requirements": "short"},
        {"name": "polite", "command": f"{PYTHON} term_trap.py polite.txt", "resource_requirements": "short",
         "supports_termination": True},
        {"name": "quick", "command": "sleep 0.2", "resource_requirements": "short"},
        {"name": "free", "command": "sleep 2", "resource_requirements": "short", "enforce_runtime": False},
    ], enforce_runtime=True, runtime_grace=1.5,
        resource_requirements=[{"name": "short", "memory": "50m", "runtime": "PT1S"}])
    begun = time.monotonic()
    _, summary = run(db, wf, tmp_path, termination_grace_s=1.0)
    assert time.monotonic() - begun < 15

    rows = jobs(db, wf)
    assert {n: (r["status"], r["reason"]) for n, r in rows.items()} == {
        "overrun": ("failed", "timeout"), "polite": ("failed", "timeout"),
        "quick": ("completed", None), "free": ("completed", None)}
    (overrun,) = attempts(db, wf, "overrun")
    assert overrun["reason"] == "timeout" and "timed out" in overrun["message"]
    assert 1.4 <= overrun["exec_s"] < 4.0, overrun  # killed at 1 s x 1.5, not at the end of its sleep
    # supports_termination: SIGTERM at the limit; exiting 0 on it is still a timeout
    assert (tmp_path / "polite.txt").read_text() == "got TERM"
    (polite,) = attempts(db, wf, "polite")
    assert polite["return_code"] == 0 and polite["status"] == "failed" and polite["exec_s"] < 4.0
    assert summary.failed == 2 and summary.completed == 2


def test_a_job_stopped_at_the_allocations_end_after_overrunning_its_runtime_timed_out(tmp_path: Path) -> None:
    """Slurm's SIGTERM (the allocation's end) stops both jobs after 2 s: the one whose runtime was
    1 s overran it (timeout), the other was within its request (walltime). Both go back to ready,
    and count against max_attempts."""
    db, wf = make(tmp_path, [
        {"name": "overran", "command": "sleep 30", "resource_requirements": "short"},
        {"name": "honest", "command": "sleep 30", "resource_requirements": "long"},
    ], resource_requirements=[{"name": "short", "runtime": "PT1S", "memory": "50m"},
                              {"name": "long", "runtime": "PT1M", "memory": "50m"}], max_attempts=1)
    (tmp_path / "out").mkdir(mode=0o700)
    signal_at = threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGTERM))
    signal_at.start()
    try:
        _, summary = run(db, wf, tmp_path, termination_grace_s=0.5)
    finally:
        signal_at.cancel()
    assert summary.terminated == 2
    by_name = {r["name"]: r for r in results(db, wf)}
    assert by_name["overran"]["status"] == "terminated" and by_name["overran"]["reason"] == "timeout"
    assert "past its runtime" in by_name["overran"]["message"]
    assert by_name["honest"]["status"] == "terminated" and by_name["honest"]["reason"] == "walltime"
    # max_attempts caps interrupted attempts, timed-out ones included
    rows = jobs(db, wf)
    assert rows["overran"]["status"] == "failed" and rows["overran"]["reason"] == "timeout"


# -- out of memory -------------------------------------------------------------------------------
def test_oom_is_told_apart_from_other_kills(tmp_path: Path) -> None:
    db, wf = make(tmp_path, [
        # SIGKILL while its sampled peak (200 MB) is past its declared 50 MB
        {"name": "killed_big", "command": f"{PYTHON} alloc.py 200 kill", "resource_requirements": "small"},
        # a wrapper reporting its child's SIGKILL as 137, after a peak past the declared memory
        {"name": "wrapped_137", "command": f"{PYTHON} alloc.py 200 exit; exit 137", "resource_requirements": "small"},
        # SIGKILL far below its declared memory: a kill, not an OOM
        {"name": "killed_small", "command": f"{PYTHON} alloc.py 1 kill", "resource_requirements": "large"},
        {"name": "exit_3", "command": "exit 3", "resource_requirements": "small"},
    ], resource_requirements=[{"name": "small", "memory": "50m", "runtime": "PT1M"},
                              {"name": "large", "memory": "4g", "runtime": "PT1M"}])
    run(db, wf, tmp_path, monitor_interval_s=0.1)
    reasons = {n: r["reason"] for n, r in jobs(db, wf).items()}
    assert reasons == {"killed_big": "oom", "wrapped_137": "oom", "killed_small": "signal SIGKILL",
                       "exit_3": "exit code 3"}
    (big,) = attempts(db, wf, "killed_big")
    assert big["peak_memory_bytes"] >= 150 * 2**20 and "out of memory" in big["message"]


def test_a_memory_kill_factor_makes_the_runner_kill_a_job_past_its_memory(tmp_path: Path) -> None:
    db, wf = make(tmp_path, [
        {"name": "hog", "command": f"{PYTHON} alloc.py 200 exit 30", "resource_requirements": "small"},
        {"name": "fine", "command": f"{PYTHON} alloc.py 10 exit 0.5", "resource_requirements": "small"},
    ], resource_requirements=[{"name": "small", "memory": "50m", "runtime": "PT1M"}])
    begun = time.monotonic()
    run(db, wf, tmp_path, monitor_interval_s=0.1, memory_kill_factor=1.2)
    assert time.monotonic() - begun < 15
    rows = jobs(db, wf)
    assert (rows["hog"]["status"], rows["hog"]["reason"]) == ("failed", "oom")
    assert rows["fine"]["status"] == "completed"
    assert "killed by the runner" in attempts(db, wf, "hog")[0]["message"]


# -- failure handlers ----------------------------------------------------------------------------
RECORD_ENV = (f"{PYTHON} -c \"import json, os; open('recovery_' + os.environ['TORC_ATTEMPT'] + '.json', 'w')"
              ".write(json.dumps({k: v for k, v in os.environ.items() if k.startswith('TORC_')}))\"")


def handled(work: Path, command: str, *, recovery: str | None = RECORD_ENV, max_retries: int = 2,
            exit_codes: list[int] | None = None) -> tuple[Path, int]:
    rule: dict[str, Any] = {"exit_codes": exit_codes or [3], "max_retries": max_retries}
    if recovery:
        rule["recovery_script"] = recovery
    return make(work, [
        {"name": "flaky", "command": command, "failure_handler": "retry3"},
        {"name": "after", "command": "true", "depends_on": ["flaky"]},
    ], failure_handlers=[{"name": "retry3", "rules": [rule]}])


def test_a_matching_failure_is_retried_after_its_recovery_script(tmp_path: Path) -> None:
    db, wf = handled(tmp_path, 'test "$TORC_ATTEMPT" -ge 2 || exit 3')
    _, summary = run(db, wf, tmp_path)
    rows = jobs(db, wf)
    assert rows["flaky"]["status"] == "completed" and rows["flaky"]["attempt"] == 2 and rows["flaky"]["retries"] == 1
    assert rows["after"]["status"] == "completed"
    first, second = attempts(db, wf, "flaky")
    assert (first["status"], first["reason"], first["attempt"]) == ("failed", "exit code 3", 1)
    assert "retried by failure handler retry3 (retry 1 of 2)" in first["message"]
    assert (second["status"], second["reason"]) == ("completed", None)
    seen = json.loads((tmp_path / "recovery_1.json").read_text())
    assert seen["TORC_RETURN_CODE"] == "3" and seen["TORC_ATTEMPT"] == seen["TORC_ATTEMPT_ID"] == "1"
    assert seen["TORC_JOB_NAME"] == "flaky" and seen["TORC_JOB_ID"] == str(rows["flaky"]["id"])
    assert seen["TORC_WORKFLOW_ID"] == str(wf) and seen["TORC_OUTPUT_DIR"] == str((tmp_path / "out").absolute())
    assert summary.retried == 1 and summary.completed == 2


def test_exhausted_retries_fail_the_job_and_cancel_its_dependents_with_the_reason(tmp_path: Path) -> None:
    db, wf = handled(tmp_path, "exit 3", recovery=None, max_retries=2)
    run(db, wf, tmp_path)
    rows = jobs(db, wf)
    assert (rows["flaky"]["status"], rows["flaky"]["attempt"], rows["flaky"]["retries"]) == ("failed", 3, 2)
    last = attempts(db, wf, "flaky")[-1]
    assert "no retries left (2 of 2 used)" in last["message"]
    assert (rows["after"]["status"], rows["after"]["reason"]) == ("canceled", "upstream job flaky failed")


def test_an_exit_code_no_rule_matches_fails_at_once(tmp_path: Path) -> None:
    db, wf = handled(tmp_path, "exit 4")
    run(db, wf, tmp_path)
    rows = jobs(db, wf)
    assert (rows["flaky"]["status"], rows["flaky"]["attempt"], rows["flaky"]["reason"]) == ("failed", 1, "exit code 4")
    assert not (tmp_path / "recovery_1.json").exists()


def test_a_failing_recovery_script_fails_the_job_with_its_output(tmp_path: Path) -> None:
    db, wf = handled(tmp_path, "exit 3", recovery="echo cannot repair the input >&2; exit 5")
    run(db, wf, tmp_path)
    rows = jobs(db, wf)
    assert (rows["flaky"]["status"], rows["flaky"]["attempt"], rows["flaky"]["retries"]) == ("failed", 1, 0)
    (only,) = attempts(db, wf, "flaky")
    assert only["reason"] == "exit code 3"
    assert "recovery script failed (exit code 5)" in only["message"] and "cannot repair the input" in only["message"]
    assert rows["after"]["status"] == "canceled"


def test_a_recovery_script_past_its_timeout_is_killed(tmp_path: Path) -> None:
    db, wf = handled(tmp_path, "exit 3", recovery="sleep 30")
    begun = time.monotonic()
    run(db, wf, tmp_path, recovery_timeout_s=0.5)
    assert time.monotonic() - begun < 10
    (only,) = attempts(db, wf, "flaky")
    assert "recovery script failed (timed out" in only["message"]


def test_a_job_canceled_during_its_recovery_script_is_not_retried(tmp_path: Path) -> None:
    """The script runs under the job's lease: when the queue takes the job back (here: the workflow
    is canceled), the runner kills the script, and the retry is recorded late and changes nothing."""
    from torc_slurm.store.db import Database
    from torc_slurm.store.workflows import cancel_workflow

    db, wf = handled(tmp_path, "exit 3", recovery="echo started > recovering.txt; exec sleep 60")

    def cancel_once_recovering() -> None:
        wait_until(lambda: (tmp_path / "recovering.txt").exists(), timeout=20, what="the recovery script")
        with Database(db, create=False) as database:
            cancel_workflow(database, wf)

    canceler = threading.Thread(target=cancel_once_recovering)
    canceler.start()
    begun = time.monotonic()
    try:
        _, summary = run(db, wf, tmp_path)
    finally:
        canceler.join()
    assert time.monotonic() - begun < 20  # the script was killed, not waited out
    rows = jobs(db, wf)
    assert (rows["flaky"]["status"], rows["flaky"]["retries"]) == ("canceled", 0)
    (only,) = attempts(db, wf, "flaky")
    assert only["late"] == 1 and "recovery script" in only["message"]
    assert summary.retried == 0


# -- the pure rules ------------------------------------------------------------------------------
KILL = 9


@pytest.mark.parametrize(("exit_", "reason"), [
    (Exit(3, None, 1.0), "exit code 3"),
    (Exit(None, 11, 1.0), "signal SIGSEGV"),
    (Exit(None, KILL, 1.0, memory_bytes=100, peak_memory_bytes=95), "oom"),
    (Exit(137, None, 1.0, memory_bytes=100, peak_memory_bytes=120), "oom"),
    (Exit(None, KILL, 1.0, memory_bytes=100, peak_memory_bytes=50), "signal SIGKILL"),
    (Exit(None, KILL, 1.0, oom_kills=1), "oom"),
    (Exit(1, None, 1.0, memory_bytes=100, peak_memory_bytes=120), "exit code 1"),  # no kill: its own failure
    (Exit(None, KILL, 1.0, timed_out=True, runtime_s=2, limit_s=3), "timeout"),
    (Exit(None, KILL, 1.0, stopped_by_runner=True, runtime_s=10, ran_s=5), "walltime"),
    (Exit(None, KILL, 1.0, stopped_by_runner=True, runtime_s=10, ran_s=11), "timeout"),
    (Exit(None, KILL, 1.0, lease_lost=True, timed_out=True), "lost"),
    (Exit(0, None, 1.0), None),
    (Exit(0, None, 1.0, missing_outputs=("f",)), "missing outputs"),
])
def test_reasons(exit_: Exit, reason: str | None) -> None:
    assert judge(exit_).reason == reason


def test_rules_match_exit_codes_and_signals_but_not_timeouts_or_oom() -> None:
    rules = [FailureRule(exit_codes=[3]), FailureRule(match_all_exit_codes=True, max_retries=1)]
    assert matching_rule(rules, "exit code 3", 3) is rules[0]
    assert matching_rule(rules, "signal SIGSEGV", 139) is rules[1]
    assert matching_rule(rules, "oom", 137) is None
    assert matching_rule(rules, "timeout", 137) is None
    assert matching_rule([FailureRule(exit_codes=[3])], "exit code 4", 4) is None
