"""Workflow actions in the queue (schema 11): triggers counted by SQL triggers in the transaction
that changes the jobs, one claim per trigger, takeover only from a dead claimant, late outcomes
changing nothing, re-arming on initialize, and real processes racing for one action."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from torc_slurm.compiler import compile_workflow
from torc_slurm.spec.models import WorkflowSpec
from torc_slurm.states import DONE
from torc_slurm.store import actions
from torc_slurm.store.actions import Observer
from torc_slurm.store.db import Database
from torc_slurm.store.queue import Outcome, Queue
from torc_slurm.store.workflows import (
    add_workflow,
    cancel_workflow,
    delete_workflow,
    initialize_workflow,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(tmp_path / "torc.db")
    yield database
    database.close()


def make(db: Database, tmp_path: Path, action_list: list[dict[str, Any]], jobs: list[dict[str, Any]] | None = None,
         init: bool = True) -> Queue:
    jobs = jobs or [{"name": "a", "command": "true"}, {"name": "b", "command": "true", "depends_on": ["a"]},
                    {"name": "c", "command": "true", "depends_on": ["b"]}]
    spec = WorkflowSpec.model_validate({"name": "w", "jobs": jobs, "actions": action_list,
                                        "slurm_schedulers": [{"name": "s", "walltime": "00:10:00"}]})
    workflow_id = add_workflow(db, compile_workflow(spec), working_dir=tmp_path)
    if init:
        initialize_workflow(db, workflow_id, force=True)
    return Queue(db, workflow_id)


def rows(db: Database, workflow_id: int) -> list[dict[str, Any]]:
    return [dict(r) for r in db.read("SELECT * FROM actions WHERE workflow_id = ? ORDER BY idx", (workflow_id,))]


def events(db: Database, workflow_id: int, kind: str) -> list[dict[str, Any]]:
    return [dict(r) | {"data": json.loads(r["data"]) if r["data"] else None} for r in db.read(
        "SELECT kind, message, data, source FROM events WHERE workflow_id = ? AND kind = ? ORDER BY id",
        (workflow_id, kind))]


def observe(db: Database, workflow_id: int, observer: Observer) -> list[actions.Claim]:
    with db.transaction() as conn:
        return actions.observe(conn, workflow_id, observer)


def run(queue: Queue, runner: int, names: list[str], status: str = "completed") -> None:
    """Claim and complete ``names`` (ready now) through real cycles."""
    ids = {r[0]: r[1] for r in queue.db.read("SELECT name, id FROM jobs WHERE workflow_id = ?", (queue.workflow_id,))}
    wanted = {ids[n] for n in names}
    claimed = queue.cycle(runner, choose=lambda ready: [j.job_id for j in ready if j.job_id in wanted]).claimed
    assert {c.id for c in claimed} == wanted
    queue.cycle(runner, outcomes=[Outcome(c.id, c.attempt, status, c.lease_token, return_code=0) for c in claimed])


RUN = {"action_type": "run_commands", "commands": ["true"]}
A = Observer("A", host_key="h", pid=1)
B = Observer("B", host_key="h", pid=2)


def test_workflow_start_is_due_after_init_and_claimed_once(db: Database, tmp_path: Path) -> None:
    queue = make(db, tmp_path, [{"trigger_type": "on_workflow_start", **RUN}], init=False)
    wf = queue.workflow_id
    assert rows(db, wf)[0]["state"] == "waiting"
    assert observe(db, wf, A) == []
    initialize_workflow(db, wf, force=True)
    first = observe(db, wf, A)
    assert [c.trigger for c in first] == ["on_workflow_start"]
    assert observe(db, wf, B) == [] and observe(db, wf, A) == []  # claimed: nobody claims again
    assert actions.finish(db, first[0], True, "ok", {}, source="A")
    assert rows(db, wf)[0]["state"] == "done"
    assert len(events(db, wf, "action_claimed")) == 1 and len(events(db, wf, "action_done")) == 1


def test_jobs_ready_counts_every_matched_job_reaching_ready_or_later(db: Database, tmp_path: Path) -> None:
    queue = make(db, tmp_path, [{"trigger_type": "on_jobs_ready", "job_name_regexes": ["^[ab]$"], **RUN},
                                {"trigger_type": "on_jobs_complete", "jobs": ["b", "c"], **RUN},
                                {"trigger_type": "on_workflow_complete", **RUN}])
    wf = queue.workflow_id
    runner = queue.register_runner(hostname="n", pid=99)
    # a is ready, b blocked: 1 of 2 (a already counts: ready or later)
    assert [(r["reached"], r["size"], r["state"]) for r in rows(db, wf)[:2]] == [(1, 2, "waiting"), (0, 2, "waiting")]
    run(queue, runner, ["a"])  # b ready: the cycle that recorded a made the action due
    assert rows(db, wf)[0]["state"] == "due"
    run(queue, runner, ["b"])
    assert [r["state"] for r in rows(db, wf)] == ["due", "waiting", "waiting"]
    run(queue, runner, ["c"])
    assert [r["state"] for r in rows(db, wf)] == ["due", "due", "due"]
    claims = observe(db, wf, A)
    assert sorted(c.index for c in claims) == [0, 1, 2]


def test_runner_cycle_claims_in_its_own_transaction_and_delivers_after_commit(db: Database, tmp_path: Path) -> None:
    queue = make(db, tmp_path, [{"trigger_type": "on_jobs_complete", "jobs": ["a"], **RUN}])
    runner = queue.register_runner(hostname="n", pid=99)
    delivered: list[list[actions.Claim]] = []

    class Performer:
        accepting = True
        observer = Observer(f"runner {runner}", host_key="h", pid=99, runner_id=runner)

        def deliver(self, claims: list[actions.Claim]) -> None:
            assert rows(db, queue.workflow_id)[0]["state"] == "claimed"  # committed before delivery
            delivered.append(list(claims))

    queue.action_observer = Performer()
    run(queue, runner, ["a"])
    assert [[c.index for c in batch] for batch in delivered] == [[0]]
    queue.cycle(runner)
    assert len(delivered) == 1  # claimed once, not again by later cycles
    row = rows(db, queue.workflow_id)[0]
    assert (row["claim_runner"], row["attempts"]) == (runner, 1)


def test_a_dead_runner_claimant_is_taken_over_and_its_late_outcome_changes_nothing(db: Database,
                                                                                 tmp_path: Path) -> None:
    queue = make(db, tmp_path, [{"trigger_type": "on_workflow_start", **RUN}])
    wf = queue.workflow_id
    runner = queue.register_runner(hostname="n", pid=99)
    mine = Observer(f"runner {runner}", host_key="h1", pid=99, runner_id=runner)
    (first,) = observe(db, wf, mine)
    assert observe(db, wf, B) == []  # its runner is active: the claim stands
    queue.finish_runner(runner)       # signed off without recording the outcome (it died performing)
    (second,) = observe(db, wf, B)
    assert second.previous_tokens == (first.token,) and second.attempt == 2
    assert observe(db, wf, A) == []
    assert not actions.finish(db, first, True, "late", {}, source="old")  # superseded token
    assert rows(db, wf)[0]["state"] == "claimed"
    assert actions.finish(db, second, True, "ok", {}, source="B")
    assert [len(events(db, wf, k)) for k in ("action_claimed", "action_taken_over", "action_late", "action_done")] \
        == [2, 1, 1, 1]


def test_a_claimant_gone_from_this_host_is_hard_evidence(db: Database, tmp_path: Path) -> None:
    queue = make(db, tmp_path, [{"trigger_type": "on_workflow_start", **RUN}])
    wf = queue.workflow_id
    gone = Observer("init", host_key="h", pid=123, pid_started=1.0)
    observe(db, wf, gone)
    elsewhere = Observer("watch", host_key="other", pid=5, alive=lambda pid, started: False)
    assert observe(db, wf, elsewhere) == []  # another host cannot check the pid; the lease is fresh
    here = Observer("watch", host_key="h", pid=5, alive=lambda pid, started: pid != 123)
    (claim,) = observe(db, wf, here)
    assert claim.previous_tokens and claim.attempt == 2


def test_a_non_runner_claim_expires_when_its_lease_stands_still_on_the_observers_clock(
        db: Database, tmp_path: Path, monkeypatch) -> None:
    queue = make(db, tmp_path, [{"trigger_type": "on_workflow_start", **RUN}])
    wf = queue.workflow_id
    (claim,) = observe(db, wf, Observer("init", host_key="x", pid=1))
    monkeypatch.setenv("TORC_ACTION_LEASE_TIMEOUT", "60")
    watch = Observer("watch", host_key="h", pid=2)

    def look(at: float) -> list[actions.Claim]:
        with db.transaction() as conn:
            return actions.observe(conn, wf, watch, clock=at)

    assert look(1000.0) == [] and look(1050.0) == []
    actions.renew(db, [claim])            # the claimant is alive: its lease moved
    assert look(1070.0) == [] and look(1129.0) == []  # aged from when the watcher saw it move
    (taken,) = look(1131.0)
    assert taken.previous_tokens == (claim.token,)


def test_observers_that_cannot_perform_leave_it_due(db: Database, tmp_path: Path) -> None:
    queue = make(db, tmp_path, [{"trigger_type": "on_workflow_start", "action_type": "schedule_nodes",
                                 "scheduler": "s"}])
    wf = queue.workflow_id
    assert observe(db, wf, Observer("runner", can_schedule=False)) == []
    assert rows(db, wf)[0]["state"] == "due"
    observe(db, wf, Observer("torc run", no_slurm_reason="no Slurm under torc run"))
    assert rows(db, wf)[0]["state"] == "skipped"
    assert len(events(db, wf, "action_skipped")) == 1


def test_initialize_rearms_and_a_claim_from_the_previous_run_is_late(db: Database, tmp_path: Path) -> None:
    queue = make(db, tmp_path, [{"trigger_type": "on_workflow_start", **RUN},
                                {"trigger_type": "on_jobs_ready", "jobs": ["b"], **RUN}])
    wf = queue.workflow_id
    runner = queue.register_runner(hostname="n", pid=99)
    old = observe(db, wf, A)
    run(queue, runner, ["a"])
    for claim in observe(db, wf, A):
        actions.finish(db, claim, True, "ok", {}, source="A")
    queue.finish_runner(runner)
    initialize_workflow(db, wf, force=True)
    assert [(r["state"], r["reached"]) for r in rows(db, wf)] == [("due", 0), ("waiting", 0)]
    assert not actions.finish(db, old[0], True, "late", {}, source="A")


def test_counts_follow_the_jobs_both_ways_and_match_a_recount(db: Database, tmp_path: Path) -> None:
    queue = make(db, tmp_path, [{"trigger_type": "on_jobs_complete", "jobs": ["a", "b", "c"], **RUN},
                                {"trigger_type": "on_jobs_ready", "jobs": ["a", "b", "c"], **RUN}])
    wf = queue.workflow_id
    runner = queue.register_runner(hostname="n", pid=99)
    run(queue, runner, ["a"])
    run(queue, runner, ["b"], status="failed")  # c canceled (upstream failed): finished
    kept = [(r["reached"], r["size"]) for r in rows(db, wf)]
    with db.transaction() as conn:
        actions.recount(conn, wf)
    assert [(r["reached"], r["size"]) for r in rows(db, wf)] == kept == [(3, 3), (3, 3)]
    cancel_workflow(db, wf)  # nothing left to do; counts stay exact through the bulk rewrite
    assert [(r["reached"], r["size"]) for r in rows(db, wf)] == [(3, 3), (3, 3)]


def test_delete_removes_actions_and_members(db: Database, tmp_path: Path) -> None:
    queue = make(db, tmp_path, [{"trigger_type": "on_jobs_ready", "jobs": ["b"], **RUN}])
    delete_workflow(db, queue.workflow_id)
    assert db.read("SELECT COUNT(*) FROM actions")[0][0] == 0
    assert db.read("SELECT COUNT(*) FROM action_members")[0][0] == 0


RACER = """
import sys
from torc_slurm.store import actions
from torc_slurm.store.db import Database
db = Database(sys.argv[1], create=False)
sys.stdin.readline()  # all racers start together
with db.transaction() as conn:
    claims = actions.observe(conn, int(sys.argv[2]), actions.Observer("racer " + sys.argv[3], host_key="h"))
print(len(claims))
"""


def test_processes_racing_for_one_action_claim_it_once(db: Database, tmp_path: Path) -> None:
    queue = make(db, tmp_path, [{"trigger_type": "on_workflow_start", **RUN}])
    racers = [subprocess.Popen([sys.executable, "-c", RACER, str(db.path), str(queue.workflow_id), str(i)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
              for i in range(6)]
    outputs = [p.communicate("go\n", timeout=60)[0].strip() for p in racers]
    assert sorted(outputs) == ["0"] * 5 + ["1"]
    assert len(events(db, queue.workflow_id, "action_claimed")) == 1


def test_update_keeps_unchanged_actions_and_resolves_their_jobs_again(db: Database, tmp_path: Path) -> None:
    from torc_slurm.store.spec_update import update_workflow

    done = {"trigger_type": "on_workflow_start", **RUN}
    ready = {"trigger_type": "on_jobs_ready", "job_name_regexes": ["^[bc]"], **RUN}
    queue = make(db, tmp_path, [done, ready])
    wf = queue.workflow_id
    for claim in observe(db, wf, A):
        actions.finish(db, claim, True, "ok", {}, source="A")
    jobs = [{"name": "a", "command": "true"}, {"name": "b", "command": "true", "depends_on": ["a"]},
            {"name": "c", "command": "true", "depends_on": ["b"]}, {"name": "c2", "command": "true"}]
    spec = WorkflowSpec.model_validate({"name": "w", "jobs": jobs, "actions": [done, ready,
                                                                               {"trigger_type": "on_workflow_complete",
                                                                                **RUN}],
                                        "slurm_schedulers": [{"name": "s", "walltime": "00:10:00"}]})
    update_workflow(db, wf, compile_workflow(spec), source="v2")
    assert [(r["idx"], r["state"], r["size"]) for r in rows(db, wf)] == [(0, "done", 0), (1, "waiting", 3),
                                                                         (2, "waiting", 0)]
    assert rows(db, wf)[1]["reached"] == 1  # c2 is ready


def test_a_reset_rearms_what_it_undoes_and_the_action_happens_once_more(db: Database, tmp_path: Path) -> None:
    from torc_slurm.store.restarts import plan_reset

    queue = make(db, tmp_path, [{"trigger_type": "on_jobs_complete", "jobs": ["b"], **RUN},
                                {"trigger_type": "on_workflow_complete", **RUN},
                                {"trigger_type": "on_jobs_ready", "jobs": ["a"], **RUN}])
    wf = queue.workflow_id
    runner = queue.register_runner(hostname="n", pid=99)
    run(queue, runner, ["a"])
    run(queue, runner, ["b"], status="failed")  # c canceled: the workflow is complete
    for claim in observe(db, wf, A):
        actions.finish(db, claim, True, "ok", {}, source="A")
    assert [r["state"] for r in rows(db, wf)] == ["done", "done", "done"]
    queue.finish_runner(runner)
    plan_reset(db, wf, failed_only=True).apply(db)  # b and c run again; a stays completed
    assert [r["state"] for r in rows(db, wf)] == ["waiting", "waiting", "done"]
    runner = queue.register_runner(hostname="n", pid=99)
    run(queue, runner, ["b"])
    run(queue, runner, ["c"])
    assert sorted(c.index for c in observe(db, wf, A)) == [0, 1]  # once more each, nothing else
    assert len(events(db, wf, "action_claimed")) == 5


READY_OR_LATER = set(actions.READY_OR_LATER)
FINISHED = set(DONE)


@pytest.mark.parametrize("seed", range(6))
def test_counts_and_states_hold_through_random_runs_and_resets(db: Database, tmp_path: Path, seed: int) -> None:
    """Random outcomes, partial resets, claims and completions: after every step each job-triggered
    action's count equals a count of its jobs' statuses, and its state agrees with it (reached ->
    due or performed; not reached -> waiting, unless a claim is out)."""
    import random

    from torc_slurm.store.restarts import plan_reset

    rng = random.Random(seed)
    names = [f"j{i}" for i in range(7)]
    jobs = [{"name": n, "command": "true", **({"depends_on": rng.sample(names[:i], k=min(i, rng.randint(0, 2)))}
                                              if i else {})} for i, n in enumerate(names)]
    chosen = [sorted(rng.sample(names, k=rng.randint(1, 4))) for _ in range(4)]
    queue = make(db, tmp_path, [{"trigger_type": t, "jobs": c, **RUN}
                                for t, c in zip(["on_jobs_ready", "on_jobs_complete"] * 2, chosen)], jobs=jobs)
    wf = queue.workflow_id
    runner = queue.register_runner(hostname="n", pid=99)
    for _ in range(25):
        ready = [r[0] for r in db.read("SELECT name FROM jobs WHERE workflow_id = ? AND status = 'ready'", (wf,))]
        step = rng.random()
        if ready and step < 0.6:
            run(queue, runner, [rng.choice(ready)], status=rng.choice(["completed", "completed", "failed"]))
        elif step < 0.8:
            for claim in observe(db, wf, A):
                if rng.random() < 0.7:
                    actions.finish(db, claim, True, "ok", {}, source="A")
        elif db.read("SELECT 1 FROM jobs WHERE workflow_id = ? AND status IN ('failed', 'canceled')", (wf,)):
            queue.finish_runner(runner)
            plan_reset(db, wf, failed_only=True).apply(db)
            runner = queue.register_runner(hostname="n", pid=99)
        status = {r[0]: r[1] for r in db.read("SELECT name, status FROM jobs WHERE workflow_id = ?", (wf,))}
        for row, members in zip(rows(db, wf), chosen):
            wanted = READY_OR_LATER if row["trigger"] == "on_jobs_ready" else FINISHED
            assert row["reached"] == sum(status[m] in wanted for m in members), (row, status)
            if row["reached"] >= row["size"]:
                assert row["state"] in ("due", "claimed", "done", "failed"), row
            else:
                assert row["state"] in ("waiting", "claimed"), row


def _performer(db: Database, queue: Queue, tmp_path: Path):
    from torc_slurm.runner.actions import ActionPerformer

    runner = queue.register_runner(hostname="h", pid=os.getpid())
    performer = ActionPerformer()
    performer.attach(db=db, queue=queue, runner_id=runner, working_dir=tmp_path, output_dir=tmp_path / "out",
                     identity={})
    return runner, performer


def test_an_outcome_a_runner_thread_could_not_record_is_written_by_its_next_cycle(db: Database, tmp_path: Path,
                                                                                  monkeypatch) -> None:
    """M2: the performer's thread fails to record (an unexpected error): the outcome is kept and
    the runner's next cycle writes it, so the claim never stays 'claimed' under a live runner."""
    queue = make(db, tmp_path, [{"trigger_type": "on_workflow_start", "action_type": "run_commands",
                                 "commands": ["echo once >> log"]}])
    runner, performer = _performer(db, queue, tmp_path)
    real = actions.finish
    monkeypatch.setattr(actions, "finish", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("disk hiccup")))
    queue.cycle(runner)  # claims on_workflow_start; a thread performs it
    performer.drain(lambda: queue.cycle(runner), 0.05)
    monkeypatch.setattr(actions, "finish", real)
    queue.cycle(runner)
    (row,) = rows(db, queue.workflow_id)
    assert (row["state"], row["attempts"]) == ("done", 1)
    assert len(events(db, queue.workflow_id, "action_done")) == 1
    assert (tmp_path / "log").read_text() == "once\n"


def test_a_login_observer_retries_finish_and_keeps_performing_its_other_claims(db: Database, tmp_path: Path,
                                                                               monkeypatch) -> None:
    """M2: ``finish`` failing (the queue unavailable for a moment) is retried while the lease is
    renewed; the claims after it are still performed and recorded."""
    from torc_slurm.errors import QueueUnavailable
    from torc_slurm.runner.actions import Context, perform_claims

    queue = make(db, tmp_path, [{"trigger_type": "on_workflow_start", "action_type": "run_commands",
                                 "commands": [f"echo {i} >> log"]} for i in range(2)])
    claims = observe(db, queue.workflow_id, A)
    assert len(claims) == 2
    real, failures = actions.finish, []

    def flaky(*args, **kwargs):
        if len(failures) < 2:
            failures.append(1)
            raise QueueUnavailable("locked for a moment")
        return real(*args, **kwargs)

    monkeypatch.setattr(actions, "finish", flaky)
    ctx = Context(db.path, queue.workflow_id, tmp_path, tmp_path / "out", "init")
    done = perform_claims(claims, ctx, db)
    assert [recorded for _, recorded, _ in done] == [True, True]
    assert [r["state"] for r in rows(db, queue.workflow_id)] == ["done", "done"]
    assert (tmp_path / "log").read_text() == "0\n1\n"


def test_a_login_observers_renewals_survive_a_failed_renewal(db: Database, tmp_path: Path, monkeypatch) -> None:
    """M2: one renewal failing does not end the renewals (else the claim would be taken over
    after the lease timeout while it is still being performed)."""
    from torc_slurm.errors import QueueUnavailable
    from torc_slurm.runner.actions import Context, perform_claims

    monkeypatch.setenv("TORC_ACTION_LEASE_TIMEOUT", "0.2")  # a renewal every 0.05 s
    queue = make(db, tmp_path, [{"trigger_type": "on_workflow_start", "action_type": "run_commands",
                                 "commands": ["sleep 0.6"]}])
    claims = observe(db, queue.workflow_id, A)
    real, calls = actions.renew, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise QueueUnavailable("locked for a moment")
        return real(*args, **kwargs)

    monkeypatch.setattr(actions, "renew", flaky)
    perform_claims(claims, Context(db.path, queue.workflow_id, tmp_path, tmp_path / "out", "init"), db)
    assert len(calls) >= 3
    assert [r["state"] for r in rows(db, queue.workflow_id)] == ["done"]


def test_a_retryable_slurm_failure_puts_schedule_nodes_back_to_due_after_a_backoff_then_caps(
        db: Database, tmp_path: Path, monkeypatch) -> None:
    """M4: a transient Slurm error does not fail schedule_nodes for good: it is due again, claimed
    only once the backoff passed on the observer's own clock, carrying the failed claim's token
    (its allocations are adopted); past TORC_ACTION_MAX_ATTEMPTS it fails, and `torc workflows
    actions ID --retry N` re-arms it."""
    monkeypatch.setenv("TORC_ACTION_RETRY_BACKOFF", "10")
    monkeypatch.setenv("TORC_ACTION_MAX_ATTEMPTS", "2")
    queue = make(db, tmp_path, [{"trigger_type": "on_workflow_start", "action_type": "schedule_nodes",
                                 "scheduler": "s"}])
    wf = queue.workflow_id
    watcher = Observer("watch", host_key="h", pid=1)
    with db.transaction() as conn:
        (first,) = actions.observe(conn, wf, watcher, clock=100.0)
    assert actions.finish(db, first, False, "sbatch: Unable to contact slurm controller", {"retry": True},
                          source="watch")
    (row,) = rows(db, wf)
    assert row["state"] == "due" and json.loads(row["result"])["retry_in_s"] == 10
    with db.transaction() as conn:
        assert actions.observe(conn, wf, watcher, clock=200.0) == []  # first seen now
        assert actions.observe(conn, wf, watcher, clock=209.0) == []  # 9 s of its own clock
        (second,) = actions.observe(conn, wf, watcher, clock=210.5)
    assert (second.attempt, second.previous_tokens) == (2, (first.token,))
    assert actions.finish(db, second, False, "squeue timed out", {"retry": True}, source="watch") is True
    (row,) = rows(db, wf)
    assert row["state"] == "failed" and "--retry 1" in json.loads(row["result"])["message"]
    assert len(events(db, wf, "action_retry")) == 1 and len(events(db, wf, "action_failed")) == 1
    cli = subprocess.run([sys.executable, "-m", "torc_slurm", "--db", str(db.path), "workflows", "actions", str(wf),
                          "--retry", "1"], capture_output=True, text=True, timeout=60, check=False)
    assert cli.returncode == 0, cli.stderr
    (row,) = rows(db, wf)
    assert (row["state"], row["attempts"]) == ("due", 0)
    with db.transaction() as conn:
        (third,) = actions.observe(conn, wf, watcher, clock=300.0)
    assert third.previous_tokens == (first.token, second.token)
    refused = subprocess.run([sys.executable, "-m", "torc_slurm", "--db", str(db.path), "workflows", "actions",
                              str(wf), "--retry", "1"], capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 1 and "not failed" in refused.stderr


def test_slurm_errors_that_may_pass_are_retryable_and_refusals_are_not(db: Database, tmp_path: Path,
                                                                      monkeypatch) -> None:
    """M4: squeue failing while a retry looks for earlier allocations (a real failing squeue on
    PATH) makes the attempt retryable; sbatch refusing the request does not."""
    from torc_slurm.errors import SlurmError
    from torc_slurm.slurm.actions import make_schedule, retryable

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "squeue").write_text("#!/bin/sh\necho 'squeue: error: Unable to contact slurm controller' >&2\nexit 1\n")
    (fake / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    claim = actions.Claim(1, 1, 0, "on_workflow_start", "schedule_nodes", {"scheduler": "s"}, 7, 2, (5,))
    ok, message, result = make_schedule(db.path, None, None)(claim)
    assert not ok and result["retry"] is True and "squeue" in message
    assert retryable(SlurmError("'sbatch x' did not answer within 30 s (gave up after 3 attempts)"))
    assert retryable(SlurmError("'sbatch x' failed with exit code 1: sbatch: error: slurm_persist_conn_open"))
    assert not retryable(SlurmError("'sbatch x' failed with exit code 1: sbatch: error: Invalid account"))
    assert not retryable(SlurmError("refusing to submit: - partition gpu has no node"))


def test_a_takeover_adopts_only_this_users_allocations_of_this_queue_in_live_or_completed_states(
        tmp_path: Path, monkeypatch) -> None:
    """M3: allocation names carry a random key of the queue file (two queues with the same
    workflow id, scheduler and token name theirs apart); squeue is asked with --me, sacct with
    -u <user> -S <the first claim's day, less one>; cancelled/failed allocations are not adopted
    (real squeue/sacct stand-ins on PATH record their arguments)."""
    import getpass
    import time

    from torc_slurm.slurm.actions import find_submitted, job_name

    keys = set()
    for name in ("one", "two"):
        with Database(tmp_path / f"{name}.db") as own:
            key = actions.queue_key(own)
            assert actions.queue_key(own) == key  # made once
            keys.add(key)
    assert len(keys) == 2
    claim = actions.Claim(1, 1, 0, "on_jobs_ready", "schedule_nodes", {"scheduler": "s"}, 7, 1)
    names = {job_name(claim, 5, key) for key in keys}
    assert len(names) == 2 and all(len(n) < 64 for n in names)
    fake = tmp_path / "bin"
    fake.mkdir()
    for tool, out in (("squeue", "11|PENDING\n12|CANCELLED\n13|RUNNING"),
                      ("sacct", "14|COMPLETED\n15|CANCELLED by 0\n16|FAILED\n13|RUNNING")):
        (fake / tool).write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/{tool}.args\nprintf '{out}\\n'\n")
        (fake / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    assert find_submitted(["x"], since=86400 * 365 * 50) == ["11", "13", "14"]
    assert "--me" in (tmp_path / "squeue.args").read_text().split()
    sacct = (tmp_path / "sacct.args").read_text().split()
    assert sacct[sacct.index("-u") + 1] == getpass.getuser() and sacct[sacct.index("-S") + 1] == time.strftime(
        "%Y-%m-%d", time.localtime(86400 * 365 * 50 - 86400))
