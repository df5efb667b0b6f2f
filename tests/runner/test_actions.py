"""Workflow actions performed by real runners (`torc run` processes on a real SQLite queue):
every trigger once, output recorded, a failing command fails the action and not the workflow, and
a runner killed right after its claim (fault injection) is taken over by the next runner: the
action runs once, never twice."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

TORC = [sys.executable, "-m", "torc_slurm"]


def torc(tmp_path: Path, *args: str, env: dict[str, str] | None = None, check: bool = True,
         timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*TORC, "--db", str(tmp_path / "torc.db"), *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=timeout, check=False, env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"torc {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def query(tmp_path: Path, sql: str, params: tuple = ()) -> list[dict[str, Any]]:
    conn = sqlite3.connect(f"file:{tmp_path / 'torc.db'}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql, params)]
    finally:
        conn.close()


def kinds(tmp_path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in query(tmp_path, "SELECT kind FROM events WHERE kind LIKE 'action_%'"):
        counts[row["kind"]] = counts.get(row["kind"], 0) + 1
    return counts


def spec(actions: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": "acts", "jobs": [
        {"name": "a", "command": "echo a"},
        {"name": "b", "command": "sleep 0.5", "depends_on": ["a"]},
        {"name": "c", "command": "echo c", "depends_on": ["b"]},
    ], "actions": actions}


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_every_trigger_runs_once_with_torc_variables_and_recorded_output(tmp_path: Path) -> None:
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec([
        {"trigger_type": "on_workflow_start", "action_type": "run_commands",
         "commands": ['echo "start $TORC_WORKFLOW_ID" >> log', "echo to-stdout; echo to-stderr >&2"]},
        {"trigger_type": "on_jobs_ready", "action_type": "run_commands", "jobs": ["b"],
         "commands": ["echo ready_b >> log"]},
        {"trigger_type": "on_jobs_complete", "action_type": "run_commands", "job_name_regexes": ["^[ab]$"],
         "commands": ["echo complete_ab >> log", "exit 3", "echo never >> log"]},
        {"trigger_type": "on_workflow_complete", "action_type": "run_commands",
         "commands": ['test -n "$TORC_DB" && echo complete >> log']},
        {"trigger_type": "on_worker_start", "action_type": "run_commands", "commands": ["echo worker >> workers"]},
        {"trigger_type": "on_workflow_start", "action_type": "schedule_nodes", "scheduler": "s",
         "scheduler_type": "local"},
    ])) + "slurm_schedulers: [{name: s, walltime: '00:10:00'}]\n")
    torc(tmp_path, "workflows", "create", "spec.yaml")
    torc(tmp_path, "run", "1")  # initializes; the runner is the only observer (no init CLI)
    assert lines(tmp_path / "log") == ["start", "1", "ready_b", "complete_ab", "complete"]
    assert lines(tmp_path / "workers") == ["worker"]
    states = {r["idx"]: r["state"] for r in query(tmp_path, "SELECT idx, state FROM actions")}
    assert states == {0: "done", 1: "done", 2: "failed", 3: "done", 4: "per_runner", 5: "skipped"}
    assert query(tmp_path, "SELECT COUNT(*) n FROM jobs WHERE status = 'completed'")[0]["n"] == 3
    assert kinds(tmp_path) == {"action_claimed": 4, "action_done": 4, "action_failed": 1, "action_skipped": 1}
    result = json.loads(query(tmp_path, "SELECT result FROM actions WHERE idx = 0")[0]["result"])
    out, err = (Path(p) for p in result["files"][2:4])
    assert out.read_text() == "to-stdout\n" and err.read_text() == "to-stderr\n"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert stat.S_IMODE(out.parent.stat().st_mode) == 0o700
    view = torc(tmp_path, "workflows", "actions", "1").stdout
    assert max(len(line) for line in view.splitlines()) <= 80 and "failed" in view


def test_a_runner_killed_after_its_claim_is_taken_over_and_the_action_runs_once(tmp_path: Path) -> None:
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec([
        {"trigger_type": "on_jobs_ready", "action_type": "run_commands", "jobs": ["b"],
         "commands": ["echo ready_b >> log"]},
    ])))
    torc(tmp_path, "workflows", "create", "spec.yaml")
    killed = torc(tmp_path, "run", "1", env={"TORC_FAULT_ACTION_CLAIMED": "on_jobs_ready"}, check=False)
    assert killed.returncode == -9, killed.stderr
    (row,) = query(tmp_path, "SELECT state, attempts, claim_runner FROM actions")
    assert (row["state"], row["attempts"]) == ("claimed", 1)
    assert not (tmp_path / "log").exists()  # claimed, never performed
    torc(tmp_path, "run", "1")  # a new runner: the claimant's pid is gone from this host
    assert lines(tmp_path / "log") == ["ready_b"]
    (row,) = query(tmp_path, "SELECT state, attempts, claim_runner FROM actions")
    assert (row["state"], row["attempts"]) == ("done", 2)
    assert kinds(tmp_path) == {"action_claimed": 2, "action_taken_over": 1, "action_done": 1}
    assert query(tmp_path, "SELECT COUNT(*) n FROM jobs WHERE status = 'completed'")[0]["n"] == 3


def test_commands_of_a_killed_runner_die_with_it_and_run_again_once(tmp_path: Path) -> None:
    """kill -9 of a runner in the middle of a run_commands action: the command's processes are
    killed by the runner's guardian (they carry its token), and the next runner takes the claim
    over and runs the commands again (at-least-once: never two at the same time)."""
    import signal
    import time

    marker = f"torc_action_marker_{os.getpid()}"
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec([
        {"trigger_type": "on_workflow_start", "action_type": "run_commands",
         "commands": [f"echo start >> log; [ -e second ] || exec -a {marker} sleep 60"]},
    ])))
    torc(tmp_path, "workflows", "create", "spec.yaml")
    first = subprocess.Popen([*TORC, "--db", str(tmp_path / "torc.db"), "run", "1"], cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while subprocess.run(["pgrep", "-f", marker], capture_output=True, check=False).returncode != 0:
        assert time.monotonic() < deadline and first.poll() is None, "the action's command never started"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    deadline = time.monotonic() + 30
    while subprocess.run(["pgrep", "-f", marker], capture_output=True, check=False).returncode == 0:
        assert time.monotonic() < deadline, "the action's command outlived its runner"
        time.sleep(0.05)
    (tmp_path / "second").touch()
    torc(tmp_path, "run", "1")
    assert lines(tmp_path / "log") == ["start", "start"]
    assert kinds(tmp_path) == {"action_claimed": 2, "action_taken_over": 1, "action_done": 1}


def test_a_site_whose_compute_nodes_cannot_submit_leaves_schedule_nodes_to_the_login_node(tmp_path: Path,
                                                                                          monkeypatch) -> None:
    from torc_slurm.cli.slurm import _action_performer
    from torc_slurm.slurm.sites import site_config_dir

    site = yaml.safe_load((site_config_dir() / "localhost.yaml").read_text())
    for allowed in (True, False):
        site["compute_nodes_can_submit"] = allowed
        (tmp_path / "site.yaml").write_text(yaml.safe_dump(site))
        monkeypatch.setenv("TORC_SITE", str(tmp_path / "site.yaml"))
        performer = _action_performer(tmp_path / "torc.db", tmp_path)
        assert performer.can_schedule is allowed and performer.schedule is not None


def test_two_runners_racing_perform_each_action_once(tmp_path: Path) -> None:
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump({"name": "race", "jobs": [
        *({"name": f"w{i}", "command": "sleep 0.2"} for i in range(12)),
        {"name": "last", "command": "true", "depends_on_regexes": ["^w"]},
    ], "actions": [
        {"trigger_type": "on_workflow_start", "action_type": "run_commands", "commands": ["echo start >> log"]},
        {"trigger_type": "on_jobs_ready", "action_type": "run_commands", "jobs": ["last"],
         "commands": ["echo ready >> log"]},
        {"trigger_type": "on_workflow_complete", "action_type": "run_commands", "commands": ["echo end >> log"]},
        {"trigger_type": "on_worker_complete", "action_type": "run_commands", "commands": ["echo bye >> workers"]},
    ]}))
    torc(tmp_path, "workflows", "create", "spec.yaml")
    torc(tmp_path, "workflows", "init", "1")  # performs on_workflow_start here
    logs = [(tmp_path / f"runner{i}.err").open("w") for i in range(2)]
    runners = [subprocess.Popen([*TORC, "--db", str(tmp_path / "torc.db"), "run", "1", "--num-cpus", "2"],
                                cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=log) for log in logs]
    for i, runner in enumerate(runners):
        logs[i].close()
        assert runner.wait(timeout=120) == 0, (tmp_path / f"runner{i}.err").read_text()
    assert sorted(lines(tmp_path / "log")) == ["end", "ready", "start"]
    assert lines(tmp_path / "workers") == ["bye", "bye"]  # once per runner
    assert kinds(tmp_path) == {"action_claimed": 3, "action_done": 5}


def _wait_for(predicate, what: str, proc: subprocess.Popen | None = None, timeout: float = 60) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        assert proc is None or proc.poll() is None, f"the runner ended while waiting for {what}"
        time.sleep(0.05)  # polling an observable state, not standing in for it


def test_a_stopping_runner_records_its_jobs_then_drains_actions_until_the_grace_then_kills_them(
        tmp_path: Path) -> None:
    """C1: SIGTERM with --termination-grace 2 while job b runs and an on_jobs_complete action (a
    long command) is in flight: b is handed back at once (not left running until a sweep), the
    action's command group is killed at the grace, and the claim is left to be taken over (the
    runner signed off): the next runner performs it once."""
    import signal
    import time

    marker = f"torc_c1_marker_{os.getpid()}"
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump({"name": "c1", "jobs": [
        {"name": "a", "command": "true"},
        {"name": "b", "command": "[ -e second ] || sleep 100", "depends_on": ["a"]},
    ], "actions": [
        {"trigger_type": "on_jobs_complete", "action_type": "run_commands", "jobs": ["a"],
         "commands": [f"echo act >> log; [ -e second ] || exec -a {marker} sleep 25"]},
        {"trigger_type": "on_worker_complete", "action_type": "run_commands",
         "commands": [f"[ -e second ] || exec -a {marker}w sleep 25"]},
    ]}))
    torc(tmp_path, "workflows", "create", "spec.yaml")
    err = (tmp_path / "runner.err").open("w")
    runner = subprocess.Popen([*TORC, "--db", str(tmp_path / "torc.db"), "run", "1", "--termination-grace", "2"],
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=err)
    err.close()
    _wait_for(lambda: query(tmp_path, "SELECT status FROM jobs WHERE name = 'b'")[0]["status"] == "running"
              and subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 0, "b and the action",
              runner)
    began = time.monotonic()
    runner.send_signal(signal.SIGTERM)
    assert runner.wait(timeout=15) == 143, (tmp_path / "runner.err").read_text()
    took = time.monotonic() - began
    assert took < 2 + 2 + 4, took  # the grace, TERM -> KILL of the command, and the sign-off
    assert subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode != 0  # group killed
    assert query(tmp_path, "SELECT status FROM jobs WHERE name = 'b'")[0]["status"] == "ready"
    (row,) = query(tmp_path, "SELECT state, attempts FROM actions WHERE trigger = 'on_jobs_complete'")
    assert (row["state"], row["attempts"]) == ("claimed", 1)
    assert query(tmp_path, "SELECT status FROM runners")[0]["status"] == "finished"
    (tmp_path / "second").touch()
    torc(tmp_path, "run", "1")
    assert lines(tmp_path / "log") == ["act", "act"]  # killed once, performed once more (at-least-once)
    assert kinds(tmp_path)["action_taken_over"] == 1
    (row,) = query(tmp_path, "SELECT state, attempts FROM actions WHERE trigger = 'on_jobs_complete'")
    assert (row["state"], row["attempts"]) == ("done", 2)


def test_a_second_signal_cuts_the_actions_drain_short(tmp_path: Path) -> None:
    """C1: with a 60 s grace, the first SIGTERM hands b back (recorded before the drain), the
    second one kills the action's commands at once; the claim is left to be taken over."""
    import signal
    import time

    marker = f"torc_c1b_marker_{os.getpid()}"
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump({"name": "c1b", "jobs": [
        {"name": "a", "command": "true"},
        {"name": "b", "command": "sleep 100", "depends_on": ["a"], "supports_termination": True},
    ], "actions": [
        {"trigger_type": "on_jobs_complete", "action_type": "run_commands", "jobs": ["a"],
         "commands": [f"exec -a {marker} sleep 60"]},
    ]}))
    torc(tmp_path, "workflows", "create", "spec.yaml")
    runner = subprocess.Popen([*TORC, "--db", str(tmp_path / "torc.db"), "run", "1", "--termination-grace", "60"],
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(lambda: query(tmp_path, "SELECT status FROM jobs WHERE name = 'b'")[0]["status"] == "running"
              and subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 0, "b and the action",
              runner)
    runner.send_signal(signal.SIGTERM)
    _wait_for(lambda: query(tmp_path, "SELECT status FROM jobs WHERE name = 'b'")[0]["status"] == "ready",
              "b handed back", runner)
    began = time.monotonic()
    runner.send_signal(signal.SIGTERM)
    assert runner.wait(timeout=15) == 143
    assert time.monotonic() - began < 6
    assert subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode != 0
    (row,) = query(tmp_path, "SELECT state FROM actions")
    assert row["state"] == "claimed" and query(tmp_path, "SELECT status FROM runners")[0]["status"] == "finished"


def test_an_action_run_by_init_under_umask_002_leaves_an_output_folder_runners_accept(tmp_path: Path) -> None:
    """M1: `workflows init` performing on_workflow_start creates <working dir>/torc_output/actions
    as 0700 at every level (not with the umask), so the runner that follows starts; an action's
    output file that is a planted symlink is refused (O_NOFOLLOW), not written through."""
    work = tmp_path / "deep" / "work"
    work.mkdir(parents=True)
    (work / "spec.yaml").write_text(yaml.safe_dump({"name": "m1", "jobs": [{"name": "a", "command": "true"}],
                                                    "actions": [
        {"trigger_type": "on_workflow_start", "action_type": "run_commands", "commands": ["echo start >> log"]},
        {"trigger_type": "on_workflow_complete", "action_type": "run_commands", "commands": ["echo end"]},
    ]}))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*TORC, "--db", str(tmp_path / "torc.db"), *args], cwd=work, capture_output=True,
                              text=True, timeout=120, check=False, umask=0o002)

    assert run("workflows", "create", "spec.yaml").returncode == 0
    init = run("workflows", "init", "1")
    assert init.returncode == 0, init.stderr
    assert lines(work / "log") == ["start"]
    for folder in (work / "torc_output", work / "torc_output" / "actions"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    (work / "torc_output" / "actions" / "a2_t2_1.out").symlink_to(victim)  # the next claim's token is 2
    runner = run("run", "1")
    assert runner.returncode == 0, runner.stderr
    assert victim.read_text() == "untouched\n"
    states = {r["idx"]: r["state"] for r in query(tmp_path, "SELECT idx, state FROM actions")}
    assert states == {0: "done", 1: "failed"}


def test_commands_of_a_login_observer_die_with_it(tmp_path: Path) -> None:
    """M7: `workflows init` performing on_workflow_start is stopped (SIGTERM, Ctrl-C, SIGHUP):
    the command's whole process group dies with it, never left running unowned (a same-host
    observer would see init gone and run it again, concurrently)."""
    import signal

    for number, sig in enumerate((signal.SIGTERM, signal.SIGINT, signal.SIGHUP)):
        marker = f"torc_m7_marker_{os.getpid()}_{number}"
        work = tmp_path / str(number)
        work.mkdir()
        (work / "spec.yaml").write_text(yaml.safe_dump({"name": "m7", "jobs": [{"name": "a", "command": "true"}],
                                                        "actions": [
            {"trigger_type": "on_workflow_start", "action_type": "run_commands",
             "commands": [f"bash -c 'exec -a {marker} sleep 60' & wait"]},
        ]}))
        torc(work, "workflows", "create", "spec.yaml")
        init = subprocess.Popen([*TORC, "--db", str(work / "torc.db"), "workflows", "init", "1"], cwd=work,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for(lambda: subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 0,
                  "the action's command", init)
        init.send_signal(sig)
        assert init.wait(timeout=15) != 0
        _wait_for(lambda: subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode != 0,
                  f"the command to die with init ({sig.name})", timeout=10)


def test_a_same_host_observer_does_not_take_over_while_a_killed_observers_command_runs(tmp_path: Path) -> None:
    """M7: `workflows init` SIGKILLed mid-command (no handler can run): its command's process group
    is recorded in the claim, so an observer of this host does not take the claim over (and run
    the command a second time, concurrently) until that group is gone."""
    import signal

    from torc_slurm.slurm.actions import login_observer
    from torc_slurm.store import actions as store_actions
    from torc_slurm.store.db import Database

    marker = f"torc_m7k_marker_{os.getpid()}"
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump({"name": "m7k", "jobs": [{"name": "a", "command": "true"}],
                                                        "actions": [
        {"trigger_type": "on_workflow_start", "action_type": "run_commands",
         "commands": [f"echo run >> log; exec -a {marker} bash -c 'while [ ! -e stop ]; do sleep 0.05; done'"]},
    ]}))
    torc(tmp_path, "workflows", "create", "spec.yaml")
    init = subprocess.Popen([*TORC, "--db", str(tmp_path / "torc.db"), "workflows", "init", "1"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(lambda: subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 0
              and "pgid" in (query(tmp_path, "SELECT result FROM actions")[0]["result"] or ""), "the command", init)
    init.send_signal(signal.SIGKILL)
    init.wait(timeout=15)
    observer = login_observer("watch")
    with Database(tmp_path / "torc.db", create=False) as db:
        try:
            with db.transaction() as conn:
                assert store_actions.observe(conn, 1, observer) == []  # init is gone, its command is not
            (tmp_path / "stop").touch()
            _wait_for(lambda: subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode != 0,
                      "the command to end", timeout=10)
            with db.transaction() as conn:
                (claim,) = store_actions.observe(conn, 1, observer)
            assert claim.attempt == 2
        finally:
            (tmp_path / "stop").touch()
    assert lines(tmp_path / "log") == ["run"]
