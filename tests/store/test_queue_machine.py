"""The queue, specified by its invariants: a hypothesis state machine drives claims, starts,
outcomes (current and late), sweeps, releases, sign-offs and re-initializations in random order,
and after every step checks that

* every job is in exactly one known state, and is held by a runner (with a lease token) exactly
  when it is pending or running;
* at most one attempt of a job is live: the one runner the model believes holds it, under the one
  token the queue last issued for it; every other report about the job is late and changes nothing;
* every dependency set counts exactly its unfinished members, and a job waits (blocked) exactly
  while its set has unfinished members;
* no job used more interrupted attempts than its limit.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, precondition, rule

from torc_slurm.compiler import compile_workflow
from torc_slurm.spec.models import WorkflowSpec
from torc_slurm.states import ALL, HELD
from torc_slurm.store.db import Database
from torc_slurm.store.leases import SweepRequest
from torc_slurm.store.queue import Outcome, Queue, Started
from torc_slurm.store.workflows import add_workflow, initialize_workflow

SPEC = {
    "name": "machine",
    "max_attempts": 2,
    "jobs": [
        {"name": "a", "command": "a"},
        {"name": "b", "command": "b", "depends_on": ["a"], "cancel_on_blocking_job_failure": True},
        {"name": "c", "command": "c", "depends_on": ["a"]},
        {"name": "d", "command": "d", "depends_on": ["b", "c"], "cancel_on_blocking_job_failure": True},
        {"name": "e", "command": "e"},
        {"name": "f", "command": "f", "depends_on": ["e", "a"]},
    ],
}
FINISHED = ("completed", "failed", "canceled")


class QueueMachine(RuleBasedStateMachine):
    runners = Bundle("runners")

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self._tmp = tempfile.TemporaryDirectory()
        self.db = Database(Path(self._tmp.name) / "q.db")
        compiled = compile_workflow(WorkflowSpec.model_validate(SPEC), "machine")
        self.wf = add_workflow(self.db, compiled, working_dir=self._tmp.name)
        initialize_workflow(self.db, self.wf, force=True)
        self.queue = Queue(self.db, self.wf)
        # the model: job id -> (runner, token) of its live attempt; every token ever issued per job
        self.live: dict[int, tuple[int, int]] = {}
        self.tokens: dict[int, list[tuple[int, int, int]]] = {}  # job -> [(runner, token, attempt)]
        self.active: set[int] = set()

    def teardown(self) -> None:
        self.db.close()
        self._tmp.cleanup()

    # -- rules ------------------------------------------------------------------------------
    @rule(target=runners)
    def register(self) -> int:
        runner = self.queue.register_runner(hostname="h", pid=1)
        self.active.add(runner)
        return runner

    @rule(runner=runners, count=st.integers(1, 3))
    def claim(self, runner: int, count: int) -> None:
        result = self.queue.cycle(runner, choose=lambda ready: [j.job_id for j in ready[:count]],
                                  held=self._held(runner))
        self.active.add(runner)
        self._forget(runner, result.revoked)
        for job in result.claimed:
            assert job.id not in self.live, f"job {job.id} claimed while an attempt of it is live"
            self.live[job.id] = (runner, job.lease_token)
            self.tokens.setdefault(job.id, []).append((runner, job.lease_token, job.attempt))

    @rule(runner=runners, data=st.data())
    def start(self, runner: int, data: st.DataObject) -> None:
        mine = [j for j, (r, _) in self.live.items() if r == runner]
        if mine:
            job = data.draw(st.sampled_from(mine))
            self.queue.cycle(runner, started=[Started(job, self.live[job][1], 99)])

    @rule(runner=runners, data=st.data(), status=st.sampled_from(["completed", "failed", "terminated", "lost"]),
          stale=st.booleans())
    def report(self, runner: int, data: st.DataObject, status: str, stale: bool) -> None:
        """An outcome of the runner's live attempt, or (stale) of any attempt it ever had."""
        if stale:
            issued = [(j, t, a) for j, history in self.tokens.items() for r, t, a in history if r == runner]
            if not issued:
                return
            job, token, attempt = data.draw(st.sampled_from(issued))
        else:
            mine = [j for j, (r, _) in self.live.items() if r == runner]
            if not mine:
                return
            job = data.draw(st.sampled_from(mine))
            token = self.live[job][1]
            attempt = next(a for r, t, a in self.tokens[job] if t == token)
        applies = self.live.get(job) == (runner, token)
        before = self._job(job)
        self.queue.cycle(runner, outcomes=[Outcome(job, attempt, status, token, 0 if status == "completed" else 1)])
        after = self._job(job)
        if applies:
            del self.live[job]
            assert after["runner_id"] is None
        else:
            assert (after["status"], after["runner_id"], after["lease_token"]) == \
                (before["status"], before["runner_id"], before["lease_token"]), "a late outcome changed the job"

    @rule(runner=runners, renewed=st.booleans())
    def sweep(self, runner: int, renewed: bool) -> None:
        seq = self.db.read("SELECT lease_seq FROM runners WHERE id = ?", (runner,))[0][0]
        if renewed:  # the runner renewed after the verdict: it must be left alone
            self.queue.cycle(runner, held=self._held(runner))
        taken = self.queue.sweep([SweepRequest(runner, seq, "machine")], by="machine")
        if renewed:
            assert taken == 0
        else:
            self._forget(runner, [j for j, (r, _) in self.live.items() if r == runner])
            self.active.discard(runner)

    @rule(runner=runners, data=st.data())
    def release(self, runner: int, data: st.DataObject) -> None:
        pending = [j for j, (r, _) in self.live.items() if r == runner and self._job(j)["status"] == "pending"]
        if pending:
            job = data.draw(st.sampled_from(pending))
            self.queue.cycle(runner, release=[job], held=self._held(runner, without=job))
            del self.live[job]

    @rule(runner=runners)
    def sign_off(self, runner: int) -> None:
        self.queue.finish_runner(runner)
        self._forget(runner, [j for j, (r, _) in self.live.items() if r == runner])
        self.active.discard(runner)

    @precondition(lambda self: not self.live)
    @rule()
    def reinitialize(self) -> None:
        initialize_workflow(self.db, self.wf, force=True)

    # -- invariants -------------------------------------------------------------------------
    @invariant()
    def states_and_holders(self) -> None:
        for row in self.db.read("SELECT id, status, runner_id, lease_token FROM jobs WHERE workflow_id = ?", (self.wf,)):
            assert row["status"] in ALL
            held = row["status"] in HELD
            assert (row["runner_id"] is not None) == held, dict(row)
            if held:
                assert self.live.get(row["id"]) == (row["runner_id"], row["lease_token"]), dict(row)
            else:
                assert row["id"] not in self.live, dict(row)

    @invariant()
    def dependency_counts(self) -> None:
        status = {r["id"]: r["status"] for r in self.db.read("SELECT id, status FROM jobs WHERE workflow_id = ?",
                                                             (self.wf,))}
        members: dict[int, list[int]] = {}
        for job_id, set_id in self.db.read("SELECT job_id, set_id FROM dependency_members"):
            members.setdefault(set_id, []).append(job_id)
        remaining = dict(self.db.read("SELECT id, remaining FROM dependency_sets WHERE workflow_id = ?", (self.wf,)))
        for set_id, jobs in members.items():
            assert remaining[set_id] == sum(status[j] not in FINISHED for j in jobs), (set_id, jobs, status)
        for row in self.db.read("SELECT status, depset_id FROM jobs WHERE workflow_id = ?", (self.wf,)):
            if row["depset_id"] is not None and row["status"] in ("blocked", "ready"):
                assert (row["status"] == "blocked") == (remaining[row["depset_id"]] > 0), dict(row)

    @invariant()
    def attempt_limits(self) -> None:
        for row in self.db.read("SELECT interrupted, max_attempts FROM jobs WHERE workflow_id = ?", (self.wf,)):
            assert row["interrupted"] <= row["max_attempts"]

    # -- helpers ----------------------------------------------------------------------------
    def _held(self, runner: int, without: int | None = None) -> dict[int, int]:
        return {j: t for j, (r, t) in self.live.items() if r == runner and j != without}

    def _forget(self, runner: int, job_ids: list[int]) -> None:
        for job in job_ids:
            if self.live.get(job, (None,))[0] == runner:
                del self.live[job]

    def _job(self, job_id: int) -> dict:
        return dict(self.db.read("SELECT * FROM jobs WHERE id = ?", (job_id,))[0])


QueueMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=40, deadline=None,
                                          suppress_health_check=[HealthCheck.too_slow])
TestQueueMachine = QueueMachine.TestCase
