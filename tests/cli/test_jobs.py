"""`torc jobs list|explain` on real queue files in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from torc_slurm.cli.jobs import JOB_STATUSES

from . import EXAMPLES, create, finish_job, invoke, write_spec

GUARDED = """
name: guarded
jobs:
  - {name: setup, command: "true"}
  - {name: careful, command: "true", depends_on: [setup], cancel_on_blocking_job_failure: true}
  - {name: carefree, command: "true", depends_on: [setup], cancel_on_blocking_job_failure: false}
"""


@pytest.fixture()
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TORC_DB", raising=False)
    return tmp_path / "torc.db"


@pytest.fixture()
def diamond(db: Path) -> int:
    workflow = create(db, EXAMPLES / "diamond.yaml")
    assert invoke(db, "workflows", "init", workflow).exit_code == 0
    return workflow


def explain(db: Path, workflow: int, job: str) -> dict:
    result = invoke(db, "jobs", "explain", workflow, job, "-f", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_statuses_match_the_store() -> None:
    from torc_slurm.store.workflows import JOB_STATUSES as STORE_STATUSES

    assert JOB_STATUSES == STORE_STATUSES


# -- list ----------------------------------------------------------------------------------------
def test_list_all(db: Path, diamond: int) -> None:
    result = invoke(db, "jobs", "list", diamond)
    assert result.exit_code == 0
    for name in ("preprocess", "work1", "work2", "postprocess", "100 MiB", "1m", "4 jobs"):
        assert name in result.output
    rows = json.loads(invoke(db, "jobs", "list", diamond, "-f", "json").stdout)
    assert [r["name"] for r in rows] == ["preprocess", "work1", "work2", "postprocess"]
    assert rows[0]["memory_bytes"] == 100 * 1024**2 and rows[0]["runtime_s"] == 60


def test_list_by_status(db: Path, diamond: int) -> None:
    rows = json.loads(invoke(db, "jobs", "list", diamond, "--status", "ready", "-f", "json").stdout)
    assert [r["name"] for r in rows] == ["preprocess"]
    finish_job(db, diamond, "preprocess")
    rows = json.loads(invoke(db, "jobs", "list", diamond, "-s", "ready", "-f", "json").stdout)
    assert sorted(r["name"] for r in rows) == ["work1", "work2"]
    result = invoke(db, "jobs", "list", diamond, "--status", "completed")
    assert "preprocess" in result.output and "work1" not in result.output
    result = invoke(db, "jobs", "list", diamond, "--status", "failed")
    assert result.exit_code == 0 and "has no jobs with status failed" in result.output


def test_list_rejects_unknown_status(db: Path, diamond: int) -> None:
    result = invoke(db, "jobs", "list", diamond, "--status", "done")
    assert result.exit_code == 2
    assert "Invalid value" in result.output and "completed" in result.output


def test_list_unknown_workflow(db: Path, diamond: int) -> None:
    result = invoke(db, "jobs", "list", 42)
    assert result.exit_code == 1 and "no workflow 42" in result.stderr


# -- explain -------------------------------------------------------------------------------------
def test_explain_uninitialized(db: Path) -> None:
    workflow = create(db, EXAMPLES / "diamond.yaml")
    report = explain(db, workflow, "work1")
    assert report["status"] == "uninitialized" and "torc workflows init 1" in report["reason"]


def test_explain_blocked_job_names_its_prerequisites(db: Path, diamond: int) -> None:
    result = invoke(db, "jobs", "explain", diamond, "postprocess")
    assert result.exit_code == 0, result.output
    assert "waiting for 2 of its 2 prerequisites" in result.output
    assert "work1 (blocked)" in result.output and "work2 (blocked)" in result.output
    report = explain(db, diamond, "postprocess")
    assert report["dependencies"]["size"] == 2 and report["dependencies"]["remaining"] == 2
    assert [f["path"] for f in report["files"]["inputs"]] == ["diamond_output/r1.txt", "diamond_output/r2.txt"]
    assert report["resources"]["num_cpus"] == 1


def test_explain_by_id_equals_by_name(db: Path, diamond: int) -> None:
    by_name = explain(db, diamond, "work2")
    assert explain(db, diamond, str(by_name["id"])) == by_name


def test_explain_ready_and_dependents(db: Path, diamond: int) -> None:
    report = explain(db, diamond, "preprocess")
    assert report["status"] == "ready" and report["dependencies"] is None
    assert report["reason"].startswith("ready: waiting for a runner")
    assert report["dependents"] == 2


def test_explain_lists_at_most_ten_unfinished(db: Path) -> None:
    workflow = create(db, EXAMPLES / "barrier_demo.yaml")
    invoke(db, "workflows", "init", workflow)
    finish_job(db, workflow, "generate_001")
    deps = explain(db, workflow, "barrier")["dependencies"]
    assert deps["size"] == 100 and deps["remaining"] == 99
    assert len(deps["unfinished"]) == 10 and deps["unfinished"][0]["name"] == "generate_002"
    result = invoke(db, "jobs", "explain", workflow, "barrier")
    assert "generate_011 (ready) …" in result.output


def test_explain_attempts_and_output_files(db: Path, diamond: int, tmp_path: Path) -> None:
    job_id = finish_job(db, diamond, "preprocess", "failed", return_code=3, message="disk full",
                        peak_memory_bytes=3 * 1024**3 // 2)
    stdio = tmp_path / "torc_output" / "job_stdio"
    stdio.mkdir(parents=True)
    (stdio / f"wf{diamond}_job{job_id}_attempt1.out").write_text("hello\n")
    (stdio / f"wf{diamond}_job{job_id}_attempt1.err").write_text("oops\n")

    report = explain(db, diamond, "preprocess")
    assert report["status"] == "failed" and report["return_code"] == 3
    assert report["reason"] == "failed with return code 3: disk full"
    [attempt] = report["results"]
    assert attempt["attempt"] == 1 and attempt["status"] == "failed" and attempt["hostname"] == "node-7"
    assert attempt["exec_s"] == pytest.approx(2.5)
    assert report["stdio"]["stdout"] == [str(stdio / f"wf{diamond}_job{job_id}_attempt1.out")]
    assert report["stdio"]["stderr"] == [str(stdio / f"wf{diamond}_job{job_id}_attempt1.err")]

    result = invoke(db, "jobs", "explain", diamond, "preprocess")
    for text in ("Attempts", "node-7", "disk full", "1.5 GiB", "2.5s", "attempt1.out", "attempt1.err"):
        assert text in result.output
    # its dependents learn that a prerequisite failed
    assert explain(db, diamond, "work1")["dependencies"]["failed"] == 1


def test_explain_canceled_by_a_failed_prerequisite(db: Path, tmp_path: Path) -> None:
    workflow = create(db, write_spec(tmp_path, GUARDED))
    invoke(db, "workflows", "init", workflow)
    finish_job(db, workflow, "setup", "failed", return_code=1)
    careful = explain(db, workflow, "careful")
    assert careful["status"] == "canceled" and "prerequisites failed" in careful["reason"]
    assert careful["dependencies"]["failed_jobs"] == [{"name": "setup", "status": "failed"}]
    carefree = explain(db, workflow, "carefree")
    assert carefree["status"] == "ready"
    result = invoke(db, "jobs", "explain", workflow, "careful")
    assert "setup (failed)" in result.output


def test_explain_unknown_job(db: Path, diamond: int) -> None:
    result = invoke(db, "jobs", "explain", diamond, "nobody")
    assert result.exit_code == 1
    assert "'nobody'" in result.stderr and "Traceback" not in result.output
    assert invoke(db, "jobs", "explain", 7, "work1").exit_code == 1
