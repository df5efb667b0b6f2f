"""`torc events …` and `torc user-data …`: through click's runner and as real processes.

Covers posting and listing events (filters, JSON output, 80-column tables), following them in a
real process stopped with Ctrl-C, user data put/get/list by hand and from a job's environment
(ID optional there), bad input (invalid JSON with its position, unknown names with the nearest
ones, an unknown workflow, a stale attempt), and a workflow run with `torc run` in which a job
writes user data from its command and a dependent job reads it.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from runner.helpers import clean_env, finish, query, start_torc, torc, wait_until

from . import create, invoke, write_spec

SPEC = """
name: ud
user_data:
  - name: result
  - name: params
    data: {"lr": 0.01}
jobs:
  - name: train
    command: "true"
    output_user_data: [result]
  - name: report
    command: "true"
    input_user_data: [result]
"""


@pytest.fixture()
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in ("TORC_DB", "TORC_LOCK_KIND", "TORC_WORKFLOW_ID", "TORC_JOB_ID", "TORC_ATTEMPT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COLUMNS", "80")
    return tmp_path


@pytest.fixture()
def wf(work: Path) -> int:
    return create(work / "torc.db", write_spec(work, SPEC))


def claim_train(db: Path, workflow_id: int) -> dict[str, str]:
    """Claim and start job 'train' as a fake runner; the TORC_* variables its process would get."""
    from torc_slurm.store.db import Database
    from torc_slurm.store.queue import Queue, Started
    from torc_slurm.store.workflows import initialize_workflow

    with Database(db, create=False) as database:
        initialize_workflow(database, workflow_id, force=True)
        queue = Queue(database, workflow_id)
        runner = queue.register_runner(hostname="n1", pid=1)
        train = database.read("SELECT id FROM jobs WHERE workflow_id = ? AND name = 'train'", (workflow_id,))[0][0]
        (claimed,) = queue.cycle(runner, choose=lambda ready: [train]).claimed
        queue.cycle(runner, started=[Started(claimed.id, claimed.lease_token)])
    return {"TORC_WORKFLOW_ID": str(workflow_id), "TORC_JOB_ID": str(claimed.id),
            "TORC_ATTEMPT": str(claimed.attempt)}


def lines_fit(text: str, width: int = 80) -> None:
    too_long = [line for line in text.splitlines() if len(line) > width]
    assert not too_long, too_long


# -- events -----------------------------------------------------------------------------------------
def test_events_add_and_list(work: Path, wf: int) -> None:
    db = work / "torc.db"
    added = invoke(db, "events", "add", wf, "--category", "checkpoint_saved", "--data", '{"step": 1000}',
                   "--message", "saved the model", "-f", "json")
    assert added.exit_code == 0, added.output
    event = json.loads(added.stdout)
    assert (event["category"], event["data"], event["message"], event["source"]) == \
        ("checkpoint_saved", {"step": 1000}, "saved the model", "user")
    assert invoke(db, "events", "add", wf, "-c", "note").exit_code == 0
    listed = invoke(db, "events", "list", wf, "-f", "json")
    assert listed.exit_code == 0, listed.output
    records = json.loads(listed.stdout)
    assert [r["category"] for r in records] == ["created", "checkpoint_saved", "note"]
    assert set(records[1]) == {"id", "workflow_id", "at", "time", "category", "message", "data", "source"}
    only = json.loads(invoke(db, "events", "list", wf, "--category", "checkpoint_saved", "-f", "json").stdout)
    assert [r["id"] for r in only] == [event["id"]]
    recent = json.loads(invoke(db, "events", "list", wf, "--since", "1h", "-n", "2", "-f", "json").stdout)
    assert [r["category"] for r in recent] == ["checkpoint_saved", "note"]
    future = json.loads(invoke(db, "events", "list", wf, "--since", "2999-01-01T00:00", "-f", "json").stdout)
    assert future == []


def test_events_table_fits_80_columns_and_keeps_words(work: Path, wf: int) -> None:
    db = work / "torc.db"
    long = {"path": "/scratch/project/" + "deeply_nested_folder/" * 4 + "model.ckpt", "metrics": list(range(30))}
    invoke(db, "events", "add", wf, "-c", "runner_exit_with_work_left", "--data", json.dumps(long),
           "-m", "a message long enough that it has to wrap over several lines of the table at eighty columns")
    shown = invoke(db, "events", "list", wf)
    assert shown.exit_code == 0, shown.output
    lines_fit(shown.stdout)
    assert "runner_exit_with_work_left" in shown.stdout  # the category is never cut
    for word in ("message", "several", "eighty", "columns"):
        assert word in shown.stdout.split(), word


def test_events_bad_input(work: Path, wf: int) -> None:
    db = work / "torc.db"
    bad = invoke(db, "events", "add", wf, "-c", "x", "--data", '{"a": [1, 2}')
    assert bad.exit_code == 2
    assert "not valid JSON: Expecting ',' delimiter at line 1, column 12" in bad.stderr
    unknown = invoke(db, "events", "list", 5)
    assert unknown.exit_code == 1 and f"no workflow 5 in {db}; nearest workflow ids: {wf}" in unknown.stderr
    no_id = invoke(db, "events", "list")
    assert no_id.exit_code == 1 and "no workflow id" in no_id.stderr and "TORC_WORKFLOW_ID" in no_id.stderr
    since = invoke(db, "events", "list", wf, "--since", "last tuesday")
    assert since.exit_code == 1 and "invalid time 'last tuesday'" in since.stderr
    category = invoke(db, "events", "add", wf, "-c", "two words")
    assert category.exit_code == 1 and "invalid event category" in category.stderr
    for result in (bad, unknown, no_id, since, category):
        assert "Traceback" not in result.output


def test_events_add_from_a_job_needs_no_id(work: Path, wf: int) -> None:
    db = work / "torc.db"
    env = claim_train(db, wf)
    added = invoke(db, "events", "add", "-c", "epoch_done", "--data", '{"epoch": 3}', "-f", "json", env=env)
    assert added.exit_code == 0, added.output
    assert json.loads(added.stdout)["source"] == f"job {env['TORC_JOB_ID']} attempt 1"


def test_events_follow_prints_new_events_until_ctrl_c(work: Path, wf: int) -> None:
    """A real process: it prints what is there, then each event posted later, once, in order;
    Ctrl-C ends it with status 0."""
    db = work / "torc.db"
    log = work / "follow.log"
    proc = start_torc(db, "events", "list", wf, "--follow", "-f", "json", cwd=work, log=log)
    try:
        def records() -> list[dict[str, Any]]:
            return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]

        wait_until(lambda: [r["category"] for r in records()] == ["created"], timeout=30, what="the first event")
        for step in range(3):
            done = torc(db, "events", "add", wf, "-c", "step", "--data", json.dumps({"step": step}), cwd=work)
            assert done.returncode == 0, done.stderr
            wait_until(lambda: len(records()) == step + 2, timeout=30, what=f"event {step} in the follow output")
        proc.send_signal(signal.SIGINT)
        assert finish(proc, log, timeout=30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    seen = records()
    assert [r["data"] for r in seen[1:]] == [{"step": 0}, {"step": 1}, {"step": 2}]
    assert [r["id"] for r in seen] == sorted({r["id"] for r in seen})  # in order, none twice
    assert "Traceback" not in log.read_text()


def test_follow_backs_off_when_nothing_changes(work: Path, wf: int) -> None:
    from torc_slurm.cli.app import App
    from torc_slurm.cli.events import follow_events

    app = App(db_path=work / "torc.db")
    sleeps: list[float] = []
    seen: list[dict[str, Any]] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 6:  # something happens after a quiet while
            invoke(work / "torc.db", "events", "add", wf, "-c", "late")

    newest = query(work / "torc.db", "SELECT MAX(id) AS id FROM events")[0]["id"]
    try:
        last = follow_events(app, wf, newest, None, seen.append, sleep=sleep, polls=9)
    finally:
        app.close()
    assert [r["category"] for r in seen] == ["late"] and last == seen[0]["id"]
    assert sleeps[:6] == pytest.approx([1.5, 2.25, 3.375, 5.0, 5.0, 5.0])  # quiet: 1 s growing to 5 s
    assert sleeps[6] == 1.0  # an event came: back to every second
    assert sleeps[7] == pytest.approx(1.5)


# -- user data ----------------------------------------------------------------------------------------
def test_user_data_put_get_list_by_hand(work: Path, wf: int) -> None:
    db = work / "torc.db"
    put = invoke(db, "user-data", "put", wf, "notes", "--data", '{"a": [1, 2]}')
    assert put.exit_code == 0, put.output
    assert "Stored user data 'notes' in workflow" in put.stderr
    got = invoke(db, "user-data", "get", wf, "notes")
    assert got.exit_code == 0 and json.loads(got.stdout) == {"a": [1, 2]}
    full = json.loads(invoke(db, "user-data", "get", wf, "notes", "-f", "json").stdout)
    assert full["data"] == {"a": [1, 2]} and full["written"] and full["written_by_job_id"] is None
    (work / "value.json").write_text('{\n  "from": "file"\n}\n')
    assert invoke(db, "user-data", "put", wf, "from_file", "--file", work / "value.json").exit_code == 0
    assert invoke(db, "user-data", "put", wf, "from_stdin", "--file", "-", input="[true, null]").exit_code == 0
    assert json.loads(invoke(db, "user-data", "get", wf, "from_file").stdout) == {"from": "file"}
    assert json.loads(invoke(db, "user-data", "get", wf, "from_stdin").stdout) == [True, None]
    listed = json.loads(invoke(db, "user-data", "list", wf, "-f", "json").stdout)
    assert [(r["name"], r["written"]) for r in listed] == [
        ("from_file", True), ("from_stdin", True), ("notes", True), ("params", True), ("result", False)]
    table = invoke(db, "user-data", "list", wf)
    assert table.exit_code == 0
    lines_fit(table.stdout)
    assert "never" in table.stdout and "train" in table.stdout


def test_user_data_table_fits_80_columns(work: Path, wf: int) -> None:
    db = work / "torc.db"
    name = "a_rather_long_user_data_entry_name_for_the_table"
    value = {"description": "words that must wrap between words and never inside one " * 3}
    assert invoke(db, "user-data", "put", wf, name, "--data", json.dumps(value)).exit_code == 0
    table = invoke(db, "user-data", "list", wf)
    lines_fit(table.stdout)
    assert "inside" in table.stdout.split()


def test_user_data_bad_input(work: Path, wf: int) -> None:
    db = work / "torc.db"
    bad = invoke(db, "user-data", "put", wf, "x", "--data", '{"loss": 0.1,\n "acc": }')
    assert bad.exit_code == 2 and "Expecting value at line 2, column 9" in bad.stderr
    assert '"acc": }' in bad.stderr
    unknown = invoke(db, "user-data", "get", wf, "resutl")
    assert unknown.exit_code == 1 and "no user data named 'resutl'" in unknown.stderr
    assert "nearest names: result" in unknown.stderr
    never = invoke(db, "user-data", "get", wf, "result")
    assert never.exit_code == 1 and "has no value: its producer job 'train'" in never.stderr
    no_wf = invoke(db, "user-data", "get", 42, "result")
    assert no_wf.exit_code == 1 and "no workflow 42" in no_wf.stderr
    no_id = invoke(db, "user-data", "get", "result")
    assert no_id.exit_code == 1 and "no workflow id" in no_id.stderr
    both = invoke(db, "user-data", "put", wf, "x", "--data", "1", "--file", "f")
    neither = invoke(db, "user-data", "put", wf, "x")
    assert both.exit_code == neither.exit_code == 2 and "exactly one of --data JSON or --file FILE" in both.stderr
    not_id = invoke(db, "user-data", "get", "abc", "result")
    assert not_id.exit_code == 2 and "ID must be a workflow id" in not_id.stderr
    missing = invoke(db, "user-data", "put", wf, "x", "--file", "nope.json")
    assert missing.exit_code == 1 and "no such file: nope.json" in missing.stderr
    owned = invoke(db, "user-data", "put", wf, "result", "--data", "1")
    assert owned.exit_code == 1 and "declared output of job 'train'" in owned.stderr and "--force" in owned.stderr
    for result in (bad, unknown, never, no_wf, no_id, both, neither, not_id, missing, owned):
        assert "Traceback" not in result.output


def test_user_data_from_a_job_and_a_stale_attempt(work: Path, wf: int) -> None:
    db = work / "torc.db"
    env = claim_train(db, wf)
    put = invoke(db, "user-data", "put", "result", "--data", '{"loss": 0.1}', env=env)
    assert put.exit_code == 0, put.output
    assert "by job train attempt 1" in put.stderr
    row = query(db, "SELECT written_by_job_id, written_attempt FROM user_data WHERE name = 'result'")[0]
    assert row == {"written_by_job_id": int(env["TORC_JOB_ID"]), "written_attempt": 1}
    forced = invoke(db, "user-data", "put", "result", "--data", "2", "--force", env=env)
    assert forced.exit_code == 2 and "not for jobs" in forced.stderr
    stale = invoke(db, "user-data", "put", "result", "--data", '{"loss": 9}', env={**env, "TORC_ATTEMPT": "7"})
    assert stale.exit_code == 1
    assert "attempt 7 is no longer current (the job is now at attempt 1, running)" in stale.stderr
    assert json.loads(invoke(db, "user-data", "get", wf, "result").stdout) == {"loss": 0.1}
    listed = invoke(db, "user-data", "list", env=env)  # ID from the job's environment
    assert listed.exit_code == 0 and "train #1" in listed.stdout


# -- end to end: a job writes, its dependent reads --------------------------------------------------
E2E_SPEC = """
name: handoff
user_data:
  - name: result
  - name: result_py
jobs:
  - name: train
    command: >-
      torc user-data put result --data '{"loss": 0.1}' &&
      {python} -c 'from torc_slurm.api import put_user_data; put_user_data("result_py", {"loss": 0.25})'
    output_user_data: [result, result_py]
  - name: report
    command: >-
      torc user-data get result > report_cli.json &&
      {python} -c 'import json; from torc_slurm.api import get_user_data, add_event;
      v = get_user_data("result_py"); open("report_py.json", "w").write(json.dumps(v)); add_event("report_done", v)'
    input_user_data: [result, result_py]
"""


def test_a_job_writes_user_data_and_its_dependent_reads_it(work: Path) -> None:
    """`torc run`: job `train` writes two entries from its command (the CLI and the Python API,
    no arguments beyond the data); `report` waits for it, reads both, and posts an event."""
    spec = write_spec(work, E2E_SPEC.replace("{python}", sys.executable))
    queue_dir = work / "queue"  # not the jobs' folder: the jobs must find the queue through TORC_DB
    queue_dir.mkdir()
    db = queue_dir / "torc.db"
    bin_dir = Path(sys.executable).parent
    env = clean_env(PATH=f"{bin_dir}:{clean_env().get('PATH', '')}")
    done = torc(db, "run", spec, "--num-cpus", 2, cwd=work, env=env, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    statuses = {r["name"]: r["status"] for r in query(db, "SELECT name, status FROM jobs")}
    assert statuses == {"train": "completed", "report": "completed"}
    assert json.loads((work / "report_cli.json").read_text()) == {"loss": 0.1}
    assert json.loads((work / "report_py.json").read_text()) == {"loss": 0.25}
    train_id = query(db, "SELECT id FROM jobs WHERE name = 'train'")[0]["id"]
    rows = query(db, "SELECT name, written_by_job_id, written_attempt FROM user_data ORDER BY name")
    assert rows == [{"name": "result", "written_by_job_id": train_id, "written_attempt": 1},
                    {"name": "result_py", "written_by_job_id": train_id, "written_attempt": 1}]
    events = json.loads(torc(db, "events", "list", 1, "-c", "report_done", "-f", "json", cwd=work).stdout)
    assert [e["data"] for e in events] == [{"loss": 0.25}]
    assert events[0]["source"].startswith("job ")
