"""`torc run SPEC|ID` end to end: the examples complete, exit codes say what happened, failures
propagate (or not) to dependents, a job this machine can never run is reported instead of waited
for, queue-depth mode, Ctrl-C, and plain progress lines when stdout is not a terminal.

Subprocesses where the process matters (exit status, signals, a real pipe for stdout), the
in-process CliRunner elsewhere (faster; same code path under `TorcGroup`).
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from runner.helpers import (create_workflow, finish, jobs, results, start_torc, torc, wait_until,
                            write_spec)

from . import EXAMPLES, invoke

PROGRESS = re.compile(r"^workflow \d+: \d+/\d+ done, \d+ completed, \d+ failed, \d+ running, \d+ pending$")


@pytest.fixture()
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TORC_DB", raising=False)
    monkeypatch.delenv("TORC_LOCK_KIND", raising=False)
    for name in ("SLURM_CPUS_ON_NODE", "SLURM_MEM_PER_NODE", "SLURM_MEM_PER_CPU", "SLURM_JOB_GPUS",
                 "SLURM_JOB_ID", "CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def by_name(db: Path, wf: int) -> dict[str, str]:
    return {name: row["status"] for name, row in jobs(db, wf).items()}


# -- the examples --------------------------------------------------------------------------------
def test_diamond_example_completes(work: Path) -> None:
    db = work / "torc.db"
    done = torc(db, "run", EXAMPLES / "diamond.yaml", cwd=work)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Created workflow 1 (4 jobs)" in done.stderr
    assert done.stdout.splitlines()[-1] == "Workflow 1: 4 completed"
    assert (work / "diamond_output" / "result.txt").read_text() == "RAW DATA\natad war\n"
    # Progress on a pipe: plain lines, no colour codes, no progress-bar redraws.
    progress = done.stdout.splitlines()[:-1]
    assert progress and all(PROGRESS.match(line) for line in progress), done.stdout
    assert "\x1b" not in done.stdout and "\r" not in done.stdout
    assert progress[-1].startswith("workflow 1: 4/4 done, 4 completed, 0 failed")


def test_barrier_example_completes_in_dependency_order(work: Path) -> None:
    db = work / "torc.db"
    result = invoke(db, "run", EXAMPLES / "barrier_demo.yaml", "--num-cpus", 4, "--monitor-interval", 0)
    assert result.exit_code == 0, result.output
    assert set(by_name(db, 1).values()) == {"completed"} and len(by_name(db, 1)) == 202
    spans = {r["name"]: (r["started_at"], r["ended_at"]) for r in results(db, 1)}
    generators = [s for n, s in spans.items() if n.startswith("generate_")]
    processors = [s for n, s in spans.items() if n.startswith("process_")]
    assert len(generators) == len(processors) == 100 and len(spans) == 202
    assert spans["barrier"][0] >= max(end for _, end in generators)
    assert min(start for start, _ in processors) >= spans["barrier"][1]
    assert spans["final"][0] >= max(end for _, end in processors)


# -- failures --------------------------------------------------------------------------------------
FAILING = """
name: failing
jobs:
  - {name: setup, command: "exit 4"}
  - {name: careful, command: "true", depends_on: [setup], cancel_on_blocking_job_failure: true}
  - {name: careful_child, command: "true", depends_on: [careful], cancel_on_blocking_job_failure: true}
  - {name: carefree_child, command: "true", depends_on: [careful], cancel_on_blocking_job_failure: false}
  - {name: carefree, command: "true", depends_on: [setup], cancel_on_blocking_job_failure: false}
  - {name: bystander, command: "true"}
"""


def test_a_failed_job_makes_run_exit_1_and_cancels_only_careful_dependents(work: Path) -> None:
    db = work / "torc.db"
    result = invoke(db, "run", write_spec(work, FAILING), "--num-cpus", 2)
    assert result.exit_code == 1, result.output
    # A canceled prerequisite counts as failed for jobs with the flag (the cancellation cascades);
    # jobs without it run once their prerequisites are done, however they ended.
    assert by_name(db, 1) == {"setup": "failed", "careful": "canceled", "careful_child": "canceled",
                              "carefree_child": "completed", "carefree": "completed", "bystander": "completed"}
    assert jobs(db, 1)["setup"]["return_code"] == 4
    assert "1 failed" in result.stdout and "2 canceled" in result.stdout
    # canceled jobs never ran
    assert sorted(r["name"] for r in results(db, 1)) == ["bystander", "carefree", "carefree_child", "setup"]


def test_missing_output_file_fails_the_job(work: Path) -> None:
    db = work / "torc.db"
    spec = write_spec(work, """
        name: outputs
        jobs:
          - {name: liar, command: "echo done", output_files: [report]}
          - {name: reader, command: "cat report.txt", input_files: [report], cancel_on_blocking_job_failure: false}
        files:
          - {name: report, path: report.txt}
    """)
    result = invoke(db, "run", spec, "--num-cpus", 1)
    assert result.exit_code == 1
    rows = {r["name"]: r for r in results(db, 1)}
    liar = rows["liar"]
    assert (liar["status"], liar["return_code"]) == ("failed", 0)
    assert liar["message"] == "exited 0 but did not create its output files: report.txt"
    # Without cancel_on_blocking_job_failure the reader still ran after it (and found no file).
    assert (rows["reader"]["status"], rows["reader"]["return_code"]) == ("failed", 1)
    assert rows["reader"]["started_at"] >= liar["ended_at"]


def test_missing_binary_is_a_failed_job_with_127(work: Path) -> None:
    db = work / "torc.db"
    spec = write_spec(work, """
        name: typo
        jobs:
          - {name: typo, command: "pyhton3 --version"}
    """)
    result = invoke(db, "run", spec, "--num-cpus", 1)
    assert result.exit_code == 1
    [row] = results(db, 1)
    assert (row["status"], row["return_code"]) == ("failed", 127)
    assert "Workflow 1: 1 failed" in result.stdout


# -- what this machine cannot run ---------------------------------------------------------------
def test_a_job_too_big_for_this_machine_is_reported_not_waited_for(work: Path) -> None:
    db = work / "torc.db"
    spec = write_spec(work, """
        name: too_big
        jobs:
          - {name: small, command: "true"}
          - {name: big, command: "true", resource_requirements: big}
          - {name: after_big, command: "true", depends_on: [big]}
        resource_requirements:
          - {name: big, num_cpus: 4, memory: 1g}
    """)
    done = torc(db, "run", spec, "--num-cpus", 2, cwd=work, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 ready jobs need more than this machine has: big (needs 4 CPUs, 0 GPUs, 1.0 GiB)" in done.stderr
    assert by_name(db, 1) == {"small": "completed", "big": "ready", "after_big": "blocked"}
    assert jobs(db, 1)["big"]["attempt"] == 0


def test_queue_depth_mode_runs_what_resources_would_refuse(work: Path) -> None:
    db = work / "torc.db"
    spec = write_spec(work, """
        name: depth
        jobs:
          - {name: "big_{i}", command: "test $OMP_NUM_THREADS = 64", resource_requirements: big,
             parameters: {i: "1:3"}}
        resource_requirements:
          - {name: big, num_cpus: 64, num_gpus: 2, memory: 5000g}
    """)
    result = invoke(db, "run", spec, "--num-cpus", 1, "--max-parallel-jobs", 2)
    assert result.exit_code == 0, result.output
    assert set(by_name(db, 1).values()) == {"completed"}
    refused = invoke(db, "run", spec, "--num-cpus", 1, "--new")  # a second workflow, resource-aware this time
    assert refused.exit_code == 1 and "3 ready jobs need more than this machine has" in refused.stderr


def test_run_by_id_resumes_and_a_finished_workflow_just_reports(work: Path) -> None:
    db = work / "torc.db"
    wf = create_workflow(db, write_spec(work, """
        name: by_id
        jobs:
          - {name: a, command: "true"}
          - {name: b, command: "true", depends_on: [a]}
    """), init=False)
    result = invoke(db, "run", wf, "--num-cpus", 1)
    assert result.exit_code == 0 and by_name(db, wf) == {"a": "completed", "b": "completed"}
    again = invoke(db, "run", wf, "--num-cpus", 1)
    assert again.exit_code == 0 and "Workflow 1: 2 completed" in again.stdout
    assert len(results(db, wf)) == 2  # nothing ran twice


# -- Ctrl-C ---------------------------------------------------------------------------------------
def test_ctrl_c_stops_jobs_returns_them_to_ready_and_exits_130(work: Path) -> None:
    db = work / "torc.db"
    wf = create_workflow(db, write_spec(work, f"""
        name: interrupted
        jobs:
          - name: napping
            command: "echo $$ > {work}/nap.pid; sleep 1000 & wait"
            supports_termination: true
    """))
    log = work / "run.log"
    proc = start_torc(db, "run", wf, "--num-cpus", 1, cwd=work, log=log)
    try:
        wait_until(lambda: jobs(db, wf)["napping"]["status"] == "running" and (work / "nap.pid").exists(),
                   what="the job running")
    finally:
        proc.send_signal(signal.SIGINT)
        rc = finish(proc, log)
    assert rc == 130, log.read_text()
    assert "Interrupted (SIGINT)" in log.read_text()
    assert (jobs(db, wf)["napping"]["status"], jobs(db, wf)["napping"]["attempt"]) == ("ready", 1)
    [row] = results(db, wf)
    assert row["status"] == "terminated" and row["signal"] == signal.SIGTERM
