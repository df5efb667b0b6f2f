"""`torc workflows …` (and the root group) on real queue files in tmp_path."""

from __future__ import annotations

import importlib
import json
import sqlite3
import subprocess
import sys
import types
from pathlib import Path

import pytest

from torc_slurm.cli import main

from . import EXAMPLES, REPO, create, finish_job, invoke, write_spec

BIG = """
name: big
jobs:
  - name: pre_{i:04d}
    command: "true"
    parameters: {i: "1:1000"}
  - name: post_{i:04d}
    command: "true"
    depends_on_regexes: ["^pre_"]
    parameters: {i: "1:1000"}
"""
CHAIN = """
name: chain
jobs:
  - {name: first, command: "true"}
  - {name: second, command: "true", depends_on: [first]}
  - {name: third, command: "true", depends_on: [second]}
"""
NEEDS_INPUT = """
name: needs_input
jobs:
  - name: consume
    command: cat data/in.txt
    input_files: [raw]
files:
  - {name: raw, path: data/in.txt}
"""
BAD_SPECS = {
    "unknown_key": ("name: typo\njobs:\n  - name: alpha\n    command: 'true'\n    comand: oops\n",
                    ["job 'alpha'", "comand", "unknown key", ":5"]),
    "yaml_syntax": ("name: broken\njobs: [\n  {name: a, command: x\n", ["not valid YAML", ":"]),
    "cycle": ("name: loop\njobs:\n  - {name: a, command: 'true', depends_on: [b]}\n"
              "  - {name: b, command: 'true', depends_on: [a]}\n", ["cycle", "job 'a'", "'b'"]),
}


@pytest.fixture()
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TORC_DB", raising=False)
    monkeypatch.delenv("TORC_LOCK_KIND", raising=False)
    return tmp_path / "torc.db"


def workflow_ids(db: Path) -> list[int]:
    result = invoke(db, "workflows", "list", "-f", "json")
    assert result.exit_code == 0, result.output
    return [w["id"] for w in json.loads(result.stdout)]


# -- the root group ------------------------------------------------------------------------------
def test_help_lists_every_group() -> None:
    result = invoke(Path("unused.db"), "--help")
    assert result.exit_code == 0
    for name in ("workflows", "jobs", "run", "slurm", "submit", "--db", "--lock-kind", "TORC_DB"):
        assert name in result.output


def test_version() -> None:
    result = invoke(Path("unused.db"), "--version")
    assert result.exit_code == 0 and "0.1.0" in result.output


def test_help_imports_nothing_heavy() -> None:
    code = ("import sys\nfrom torc_slurm.cli import torc\n"
            "try:\n    torc.main(['--help'], prog_name='torc')\nexcept SystemExit:\n    pass\n"
            "heavy = ['sqlite3', 'torc_slurm.compiler', 'torc_slurm.store.db', 'pydantic', 'rich.table']\n"
            "print('HEAVY', [m for m in heavy if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert "HEAVY []" in out


def test_python_dash_m_is_torc(db: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "torc_slurm", "--db", str(db), "workflows", "list"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 1  # no DB yet: a clear error, not a traceback
    assert "no torc database" in proc.stderr and "Traceback" not in proc.stderr
    assert not db.exists()


# -- create --------------------------------------------------------------------------------------
@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_create_examples(db: Path, example: str) -> None:
    result = invoke(db, "workflows", "create", EXAMPLES / example)
    assert result.exit_code == 0, result.output
    assert "Created workflow 1" in result.output
    assert "logical dependencies" in result.output and "stored dependency rows" in result.output
    assert db.exists()


def test_create_numbers_workflows_and_records_source(db: Path, tmp_path: Path) -> None:
    assert create(db, EXAMPLES / "diamond.yaml") == 1
    assert create(db, EXAMPLES / "barrier_demo.yaml") == 2
    listed = json.loads(invoke(db, "workflows", "list", "-f", "json").stdout)
    assert [w["name"] for w in listed] == ["diamond", "barrier_demo"]
    assert listed[0]["working_dir"] == str(tmp_path)
    assert listed[0]["spec_source"] == str(EXAMPLES / "diamond.yaml")
    assert listed[1]["jobs"] == 202 and listed[1]["status"] == "uninitialized"


def test_create_json_is_only_json(db: Path) -> None:
    result = invoke(db, "workflows", "create", EXAMPLES / "barrier_demo.yaml", "-f", "json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["workflow_id"] == 1
    assert data["counts"] == {"jobs": 202, "dependency_sets": 3, "logical_dependencies": 300,
                              "stored_dependency_rows": 201, "files": 0, "user_data": 0}


def test_dry_run_counts_a_million_dependencies_and_writes_nothing(db: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, BIG)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = invoke(db, "workflows", "create", spec, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "1,000,000" in result.output and "nothing was written" in result.output
    assert "2,000" in result.output and "1,000" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no torc.db, no lock file

    data = json.loads(invoke(db, "workflows", "create", spec, "--dry-run", "-f", "json").stdout)
    assert data["dry_run"] is True
    assert data["counts"]["logical_dependencies"] == 1_000_000
    assert data["counts"]["stored_dependency_rows"] == 1000
    assert data["counts"]["dependency_sets"] == 1
    assert not db.exists()


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_spec_exits_2_and_leaves_db_unchanged(db: Path, tmp_path: Path, case: str) -> None:
    create(db, EXAMPLES / "diamond.yaml")
    text, expected = BAD_SPECS[case]
    spec = write_spec(tmp_path, text, name=f"{case}.yaml")
    result = invoke(db, "workflows", "create", spec)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert str(spec) in result.stderr
    for fragment in expected:
        assert fragment in result.stderr
    assert result.stdout == ""
    assert workflow_ids(db) == [1]


def test_bad_spec_on_dry_run_too(db: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, BAD_SPECS["cycle"][0])
    result = invoke(db, "workflows", "create", spec, "--dry-run")
    assert result.exit_code == 2 and "cycle" in result.stderr
    assert not db.exists()


def test_missing_spec_file(db: Path, tmp_path: Path) -> None:
    result = invoke(db, "workflows", "create", tmp_path / "nope.yaml")
    assert result.exit_code == 2 and "not found" in result.stderr
    assert not db.exists()


# -- the queue file ------------------------------------------------------------------------------
def test_not_a_database_file(db: Path) -> None:
    db.write_text("just some notes\n" * 100)
    for args in (("workflows", "list"), ("workflows", "create", EXAMPLES / "diamond.yaml")):
        result = invoke(db, *args)
        assert result.exit_code == 1, result.output
        assert "not a torc database" in result.stderr and "Traceback" not in result.output
    assert db.read_text() == "just some notes\n" * 100


def test_someone_elses_sqlite_file_is_refused(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE mine (x)")
    result = invoke(db, "workflows", "create", EXAMPLES / "diamond.yaml")
    assert result.exit_code == 1
    assert "not a torc database" in result.stderr
    with sqlite3.connect(db) as conn:
        assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["mine"]


def test_read_commands_do_not_create_the_db(db: Path) -> None:
    for args in (("workflows", "list"), ("workflows", "status", 1), ("jobs", "list", 1)):
        result = invoke(db, *args)
        assert result.exit_code == 1 and "no torc database" in result.stderr
    assert not db.exists()


def test_db_from_environment_and_soft_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    from click.testing import CliRunner

    from torc_slurm.cli import torc

    env = {"TORC_DB": str(tmp_path / "env.db"), "TORC_LOCK_KIND": "soft"}
    result = CliRunner().invoke(torc, ["workflows", "create", str(EXAMPLES / "diamond.yaml")], env=env,
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "env.db").exists() and not (tmp_path / "torc.db").exists()


def test_main_turns_errors_into_exit_codes(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--db", str(db), "workflows", "status", "1"])
    assert exc.value.code == 1
    assert "no torc database" in capsys.readouterr().err


# -- init, status --------------------------------------------------------------------------------
def test_init_and_status(db: Path, tmp_path: Path) -> None:
    workflow = create(db, write_spec(tmp_path, CHAIN))
    result = invoke(db, "workflows", "status", workflow)
    assert result.exit_code == 0 and "uninitialized" in result.output
    result = invoke(db, "workflows", "init", workflow)
    assert result.exit_code == 0 and "1 ready, 2 blocked" in result.output
    data = json.loads(invoke(db, "workflows", "status", workflow, "-f", "json").stdout)
    assert data["counts"]["ready"] == 1 and data["counts"]["blocked"] == 2 and data["total"] == 3
    assert data["status"] == "initialized"

    finish_job(db, workflow, "first")
    result = invoke(db, "workflows", "status", workflow)
    assert result.exit_code == 0 and "1 of 3 jobs finished" in result.output

    finish_job(db, workflow, "second", "failed", return_code=3)
    result = invoke(db, "workflows", "status", workflow)
    assert result.exit_code == 1, "a failed job makes status exit 1"
    assert "failed" in result.output
    result = invoke(db, "workflows", "status", workflow, "-f", "json")
    data = json.loads(result.stdout)
    assert result.exit_code == 1 and data["failed"] == 2  # second failed, so third was canceled
    assert (data["counts"]["failed"], data["counts"]["canceled"]) == (1, 1)
    assert data["failure_reasons"] == {"upstream failed": 1, "failed": 1}  # the fake runner gives no reason
    assert "upstream failed: 1" in invoke(db, "workflows", "status", workflow).output


def test_init_refuses_to_reset_finished_jobs(db: Path, tmp_path: Path) -> None:
    workflow = create(db, write_spec(tmp_path, CHAIN))
    invoke(db, "workflows", "init", workflow)
    finish_job(db, workflow, "first")
    result = invoke(db, "workflows", "init", workflow)
    assert result.exit_code == 1 and "--force" in result.stderr
    assert json.loads(invoke(db, "workflows", "status", workflow, "-f", "json").stdout)["counts"]["completed"] == 1
    assert invoke(db, "workflows", "init", workflow, "--force").exit_code == 0
    counts = json.loads(invoke(db, "workflows", "status", workflow, "-f", "json").stdout)["counts"]
    assert counts["completed"] == 0 and counts["ready"] == 1


def test_init_names_missing_inputs(db: Path, tmp_path: Path) -> None:
    workflow = create(db, write_spec(tmp_path, NEEDS_INPUT))
    result = invoke(db, "workflows", "init", workflow)
    assert result.exit_code == 2
    assert "data/in.txt" in result.stderr and "consume" in result.stderr and "Traceback" not in result.output
    assert invoke(db, "workflows", "init", workflow, "--force").exit_code == 0
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "in.txt").write_text("x")
    workflow = create(db, write_spec(tmp_path, NEEDS_INPUT))
    assert invoke(db, "workflows", "init", workflow).exit_code == 0


def test_unknown_workflow(db: Path) -> None:
    create(db, EXAMPLES / "diamond.yaml")
    for args in (("status", 9), ("init", 9), ("cancel", 9), ("delete", 9, "--yes")):
        result = invoke(db, "workflows", *args)
        assert result.exit_code == 1 and "no workflow 9" in result.stderr


def test_list_table(db: Path) -> None:
    create(db, EXAMPLES / "diamond.yaml")
    create(db, EXAMPLES / "parameter_sweep.yaml")
    result = invoke(db, "workflows", "list")
    assert result.exit_code == 0
    assert "diamond" in result.output and "parameter_sweep" in result.output
    invoke(db, "workflows", "delete", 1, "--yes")
    invoke(db, "workflows", "delete", 2, "--yes")
    result = invoke(db, "workflows", "list")
    assert result.exit_code == 0 and "No workflows" in result.output
    assert json.loads(invoke(db, "workflows", "list", "-f", "json").stdout) == []


# -- cancel, delete ------------------------------------------------------------------------------
def test_cancel(db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    workflow = create(db, write_spec(tmp_path, CHAIN))
    invoke(db, "workflows", "init", workflow)
    finish_job(db, workflow, "first")
    result = invoke(db, "workflows", "cancel", workflow)
    assert result.exit_code == 0, result.output
    assert "2 unfinished jobs canceled" in result.output
    data = json.loads(invoke(db, "workflows", "status", workflow, "-f", "json").stdout)
    assert data["status"] == "canceled" and data["counts"]["canceled"] == 2 and data["counts"]["completed"] == 1
    assert invoke(db, "workflows", "status", workflow).exit_code == 1


def test_cancel_also_cancels_allocations(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    fake = types.ModuleType("torc_slurm.slurm.allocations")

    def cancel_allocations(database: object, workflow_id: int) -> list[str]:
        calls.append(workflow_id)
        return ["101", "102"]

    fake.cancel_allocations = cancel_allocations  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torc_slurm.slurm.allocations", fake)
    workflow = create(db, EXAMPLES / "diamond.yaml")
    result = invoke(db, "workflows", "cancel", workflow)
    assert result.exit_code == 0 and calls == [workflow]
    assert "Slurm allocations canceled: 101, 102" in result.output


def test_cancel_without_allocations_needs_no_slurm(db: Path) -> None:
    workflow = create(db, EXAMPLES / "diamond.yaml")
    result = invoke(db, "workflows", "cancel", workflow)
    assert result.exit_code == 0, result.output
    assert "4 unfinished jobs canceled" in result.output and "Slurm" not in result.output


def test_delete_with_yes(db: Path) -> None:
    create(db, EXAMPLES / "diamond.yaml")
    keep = create(db, EXAMPLES / "barrier_demo.yaml")
    result = invoke(db, "workflows", "delete", 1, "--yes")
    assert result.exit_code == 0 and "Deleted workflow 1" in result.output
    assert workflow_ids(db) == [keep]
    assert json.loads(invoke(db, "workflows", "status", keep, "-f", "json").stdout)["total"] == 202


def test_delete_refuses_without_a_terminal(db: Path) -> None:
    create(db, EXAMPLES / "diamond.yaml")
    result = invoke(db, "workflows", "delete", 1, input="y\n")
    assert result.exit_code == 1 and "--yes" in result.stderr
    assert workflow_ids(db) == [1]


@pytest.mark.parametrize(("answer", "remaining"), [("y\n", []), ("n\n", [1]), ("\n", [1])])
def test_delete_asks_at_a_terminal(db: Path, monkeypatch: pytest.MonkeyPatch, answer: str,
                                   remaining: list[int]) -> None:
    module = importlib.import_module("torc_slurm.cli.workflows")  # the attribute is the click group
    monkeypatch.setattr(module, "can_prompt", lambda: True)
    create(db, EXAMPLES / "diamond.yaml")
    result = invoke(db, "workflows", "delete", 1, input=answer)
    assert "Delete workflow 1 ('diamond', 4 jobs)?" in result.output
    assert result.exit_code == (0 if not remaining else 1)
    assert workflow_ids(db) == remaining


# -- what reaches the user when things go wrong ----------------------------------------------------
def test_ctrl_c_exits_130(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    create(db, EXAMPLES / "diamond.yaml")

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("torc_slurm.store.workflows.list_workflows", interrupted)
    result = invoke(db, "workflows", "list")
    assert result.exit_code == 130 and "interrupted" in result.stderr


def test_bugs_keep_their_traceback(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    create(db, EXAMPLES / "diamond.yaml")

    def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("torc_slurm.store.workflows.list_workflows", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        invoke(db, "workflows", "list")


def test_sync_status_returns_jobs_of_silent_runners(tmp_path: Path) -> None:
    """sync-status takes back jobs on evidence only: a runner on this host whose process is gone
    loses its jobs; one on another host that cannot be checked keeps them, however old its heartbeat."""
    import subprocess
    import sys

    from torc_slurm.runner.fencing import host_key
    from torc_slurm.store.db import Database
    from torc_slurm.store.queue import Queue

    db_path = tmp_path / "torc.db"
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: s\njobs:\n  - {name: a, command: 'true'}\n  - {name: b, command: 'true'}\n")
    assert invoke(db_path, "workflows", "create", str(spec)).exit_code == 0
    assert invoke(db_path, "workflows", "init", "1").exit_code == 0
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with Database(db_path) as db:
        queue = Queue(db, 1)
        remote = queue.register_runner(hostname="lost-node", pid=1, host_key="another-boot:1")
        dead = queue.register_runner(hostname="here", pid=gone.pid, host_key=host_key(), token="t0ken")
        queue.cycle(remote, choose=lambda ready: [ready[0].job_id])
        queue.cycle(dead, choose=lambda ready: [ready[0].job_id])
        with db.transaction() as conn:  # an ancient heartbeat proves nothing
            conn.execute("UPDATE runners SET heartbeat_at = 0 WHERE id = ?", (remote,))
    result = invoke(db_path, "workflows", "sync-status", "1")
    assert result.exit_code == 0 and "Returned 1 job(s)" in result.output, result.output
    assert f"process {gone.pid} on this host is gone" in result.output
    assert "Runner 1 on lost-node" in result.output and "looks alive" in result.output
    with Database(db_path) as db:
        statuses = [r["status"] for r in db.read("SELECT status FROM jobs WHERE workflow_id = 1 ORDER BY id")]
        lost = db.read("SELECT status FROM runners WHERE id = ?", (dead,))[0]["status"]
        kept = db.read("SELECT status FROM runners WHERE id = ?", (remote,))[0]["status"]
    assert sorted(statuses) == ["pending", "ready"] and (lost, kept) == ("lost", "active")

