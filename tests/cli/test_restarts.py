"""Restarts from the command line, with real processes on torc's diamond (examples/diamond):
reinit after the inputs change (the seed's first sentence), update with one edited command,
`torc run spec.yaml` twice, reset-status, and every --dry-run checked against what then happens.
Clear errors for unknown workflows and jobs, renamed specs and jobs that are running."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from runner.helpers import jobs, results, start_torc, torc, wait_until

from torc_slurm.errors import QueueError

from . import EXAMPLES

INPUTS = {"values": [1, 2, 3, 4, 5, 6], "scale": 2}


def expected_total(inputs: dict) -> int:
    return sum((v * inputs["scale"]) ** 2 for v in inputs["values"])


@pytest.fixture()
def diamond(tmp_path: Path) -> Path:
    folder = tmp_path / "diamond"
    shutil.copytree(EXAMPLES / "diamond", folder, ignore=shutil.ignore_patterns("output", "torc*"))
    return folder


def ok(folder: Path, *args: object) -> subprocess.CompletedProcess:
    done = torc(folder / "torc.db", *args, cwd=folder)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def job_lines(text: str) -> list[str]:
    """The per-job lines of a restart's output (indented), without its header."""
    return [line for line in text.splitlines() if line.startswith("  ")]


def attempts(folder: Path, workflow_id: int = 1) -> dict[str, int]:
    return {name: row["attempt"] for name, row in jobs(folder / "torc.db", workflow_id).items()}


def total(folder: Path) -> int:
    return json.loads((folder / "output" / "f5.json").read_text())["total"]


def test_new_inputs_rerun_everything_and_reach_the_output(diamond: Path) -> None:
    ok(diamond, "run", "diamond.yaml")
    assert total(diamond) == expected_total(INPUTS)
    new_inputs = {"values": [1, 2, 3, 4, 5, 6], "scale": 3}
    (diamond / "inputs.json").write_text(json.dumps(new_inputs))
    dry = ok(diamond, "workflows", "reinit", 1, "--dry-run")
    assert "would rerun 4 job(s) in run 2" in dry.stdout
    real = ok(diamond, "workflows", "reinit", 1)
    assert job_lines(real.stdout) == job_lines(dry.stdout)
    assert [line.split()[0] for line in job_lines(real.stdout)] == ["preprocess", "work1", "work2", "postprocess"]
    assert "input inputs.json changed (size)" in job_lines(real.stdout)[0]
    ok(diamond, "run", 1)
    assert attempts(diamond) == {"preprocess": 2, "work1": 2, "work2": 2, "postprocess": 2}
    assert total(diamond) == expected_total(new_inputs)
    runs = sorted((r["name"], r["attempt"], r["run_id"]) for r in results(diamond / "torc.db", 1))
    assert len(runs) == 8 and {(a, run) for _, a, run in runs} == {(1, 1), (2, 2)}  # every attempt kept
    assert ok(diamond, "workflows", "reinit", 1, "--dry-run").stdout.startswith("Workflow 1: nothing to rerun")


def test_update_with_one_edited_command_reruns_that_job_and_downstream(diamond: Path) -> None:
    ok(diamond, "run", "diamond.yaml")
    spec = diamond / "diamond.yaml"
    spec.write_text(spec.read_text().replace("work.py output/f2.json output/f4.json",
                                             "work.py output/f2.json output/f4.json --sleep 0.1"))
    before = {r["name"]: r["ended_at"] for r in results(diamond / "torc.db", 1)}
    dry = ok(diamond, "workflows", "update", 1, spec, "--dry-run")
    real = ok(diamond, "workflows", "update", 1, spec)
    assert job_lines(real.stdout) == job_lines(dry.stdout)
    assert "changed  work2: command" in real.stdout
    assert [line.split()[0] for line in job_lines(real.stdout) if "->" in line] == ["work2", "postprocess"]
    ok(diamond, "run", 1)
    assert attempts(diamond) == {"preprocess": 1, "work1": 1, "work2": 2, "postprocess": 2}
    after = {(r["name"], r["attempt"]): r["ended_at"] for r in results(diamond / "torc.db", 1)}
    assert after[("preprocess", 1)] == before["preprocess"] and after[("work1", 1)] == before["work1"]


def test_run_spec_twice_resumes_and_reruns_nothing(diamond: Path) -> None:
    first = ok(diamond, "run", "diamond.yaml")
    assert "Created workflow 1 (4 jobs)" in first.stderr
    second = ok(diamond, "run", "diamond.yaml")
    assert "Resumed workflow 1 from diamond.yaml" in second.stderr
    assert "Workflow 1: nothing to rerun" in second.stderr
    assert second.stdout.splitlines()[-1] == "Workflow 1: 4 completed"
    assert len(results(diamond / "torc.db", 1)) == 4 and attempts(diamond)["postprocess"] == 1
    # An edited job: the resumed run prints it and reruns exactly it and its downstream.
    spec = diamond / "diamond.yaml"
    spec.write_text(spec.read_text().replace("postprocess.py output/f3.json", "postprocess.py --sleep 0 output/f3.json"))
    third = ok(diamond, "run", "diamond.yaml")
    assert [line.split()[0] for line in job_lines(third.stderr) if "->" in line] == ["postprocess"]
    assert attempts(diamond) == {"preprocess": 1, "work1": 1, "work2": 1, "postprocess": 2}
    fresh = ok(diamond, "run", "diamond.yaml", "--new")
    assert "Created workflow 2 (4 jobs)" in fresh.stderr


def test_failed_only_reruns_the_failure_and_downstream(diamond: Path) -> None:
    spec = diamond / "diamond.yaml"
    spec.write_text(spec.read_text().replace("work.py output/f2.json", "work.py output/missing.json"))
    failed = torc(diamond / "torc.db", "run", "diamond.yaml", cwd=diamond)
    assert failed.returncode == 1
    assert {n: r["status"] for n, r in jobs(diamond / "torc.db", 1).items()} == {
        "preprocess": "completed", "work1": "completed", "work2": "failed", "postprocess": "canceled"}
    spec.write_text(spec.read_text().replace("work.py output/missing.json", "work.py output/f2.json"))
    ok(diamond, "workflows", "update", 1, spec)  # fixes work2's command; it already reruns
    dry = ok(diamond, "workflows", "reset-status", 1, "--failed-only", "--dry-run")
    real = ok(diamond, "workflows", "reset-status", 1, "--failed-only")
    assert job_lines(real.stdout) == job_lines(dry.stdout)
    ok(diamond, "run", 1)
    assert attempts(diamond) == {"preprocess": 1, "work1": 1, "work2": 2, "postprocess": 1}
    assert total(diamond) == expected_total(INPUTS)


def test_reset_by_job_and_regex_then_run_by_id(diamond: Path) -> None:
    ok(diamond, "run", "diamond.yaml")
    dry = ok(diamond, "workflows", "reset-status", 1, "--job", "^work", "--dry-run", "-f", "json")
    planned = json.loads(dry.stdout)["changes"]
    assert [(c["job"], c["new"]) for c in planned] == [("work1", "ready"), ("work2", "ready"),
                                                        ("postprocess", "blocked")]
    real = json.loads(ok(diamond, "workflows", "reset-status", 1, "--job", "^work", "-f", "json").stdout)
    assert real["changes"] == planned and real["run_id"] == 2
    assert {n: r["status"] for n, r in jobs(diamond / "torc.db", 1).items()} == {
        "preprocess": "completed", **{c["job"]: c["new"] for c in planned}}
    ok(diamond, "run", 1)
    assert attempts(diamond) == {"preprocess": 1, "work1": 2, "work2": 2, "postprocess": 2}


@pytest.mark.parametrize("args, code, message", [
    (("workflows", "reset-status", 7, "--failed-only"), 1, "no workflow 7"),
    (("workflows", "reinit", 7), 1, "no workflow 7"),
    (("workflows", "reset-status", 1, "--job", "wrok1"), 2, "no job named 'wrok1'.*nearest names: work1"),
    (("workflows", "reset-status", 1, "--job", "^zz"), 2, "no job name matches it"),
])
def test_mistakes_are_clear_errors(diamond: Path, args: tuple, code: int, message: str) -> None:
    import re

    ok(diamond, "workflows", "create", "diamond.yaml")
    ok(diamond, "workflows", "init", 1)
    done = torc(diamond / "torc.db", *args, cwd=diamond)
    assert done.returncode == code and re.search(message, done.stderr), done.stderr
    assert "Traceback" not in done.stderr


def test_a_renamed_spec_is_refused_and_running_jobs_block_resets(diamond: Path) -> None:
    spec = diamond / "diamond.yaml"
    spec.write_text(spec.read_text().replace("work.py output/f1.json output/f3.json",
                                             "work.py output/f1.json output/f3.json --sleep 30"))
    log = diamond / "run.log"
    proc = start_torc(diamond / "torc.db", "run", "diamond.yaml", "--termination-grace", 0, cwd=diamond, log=log)
    try:
        def work1_running() -> bool:
            try:
                return jobs(diamond / "torc.db", 1).get("work1", {}).get("status") == "running"
            except QueueError:  # the queue file is still being created
                return False

        wait_until(work1_running, timeout=60, what="work1 running")
        refused = torc(diamond / "torc.db", "workflows", "reset-status", 1, "--job", "work1", cwd=diamond)
        assert refused.returncode == 1 and "pending or running: work1" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
        allowed = torc(diamond / "torc.db", "workflows", "reset-status", 1, "--job", "preprocess", "--dry-run",
                       cwd=diamond)
        assert allowed.returncode == 1 and "work1" in allowed.stderr  # work1 is downstream of preprocess
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    renamed = diamond / "renamed.yaml"
    renamed.write_text(spec.read_text().replace("name: diamond", "name: diamond2"))
    done = torc(diamond / "torc.db", "workflows", "update", 1, renamed, cwd=diamond)
    assert done.returncode == 2 and "a renamed spec is a new workflow" in done.stderr


def test_reinit_of_a_new_workflow_initializes_it_and_its_dry_run_says_so(diamond: Path) -> None:
    ok(diamond, "workflows", "create", "diamond.yaml")
    dry = ok(diamond, "workflows", "reinit", 1, "--dry-run")
    assert dry.stdout.strip() == "Workflow 1 was never initialized: would initialize it (run 1); every job runs"
    real = ok(diamond, "workflows", "reinit", 1)
    assert real.stdout.strip() == "Workflow 1 was never initialized: initialized it (run 1); every job runs"
    assert {n: r["status"] for n, r in jobs(diamond / "torc.db", 1).items()} == {
        "preprocess": "ready", "work1": "blocked", "work2": "blocked", "postprocess": "blocked"}
