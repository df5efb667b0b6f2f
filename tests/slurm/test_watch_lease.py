"""The watchers lease: two watchers on one queue file never both submit.

Watchers here are real ``Watcher`` objects on one real queue file; Slurm is a fake backend that
records submissions (every allocation stays PENDING) and each watcher has its own monotonic clock
(the same rate, different origins: the lease never compares two watchers' clocks)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torc_slurm.compiler import compile_workflow
from torc_slurm.slurm.backend import JobInfo, SlurmState
from torc_slurm.slurm.watch import Limits, Watcher, WatchLeaseLost, WatchOptions
from torc_slurm.spec.models import WorkflowSpec
from torc_slurm.store.allocations import record_allocations
from torc_slurm.store.db import Database
from torc_slurm.store.workflows import add_workflow, initialize_workflow

SPEC = {"name": "lease", "jobs": [{"name": "job_{i}", "command": "true", "parameters": {"i": "1:50"}}],
        "slurm_schedulers": [{"name": "s", "partition": "cpu", "walltime": "00:01:00"}]}
TIMEOUT = 10.0


class FakeSlurm:
    """Records submissions (who, when in real time); every job stays PENDING."""

    def __init__(self) -> None:
        self.submissions: list[tuple[str, float]] = []
        self.canceled: list[str] = []
        self.next_id = 1000

    def status(self, job_ids):
        return {i: JobInfo(i, SlurmState.PENDING, None, None) for i in job_ids if i not in self.canceled}

    def cancel(self, job_ids) -> None:
        self.canceled += list(job_ids)


class World:
    """One queue file, one fake Slurm, real time ``t`` and watchers with their own clock origins."""

    def __init__(self, path: Path) -> None:
        self.path = path / "torc.db"
        with Database(self.path) as db:
            self.wf = add_workflow(db, compile_workflow(WorkflowSpec.model_validate(SPEC), "lease"),
                                   working_dir=path)
            initialize_workflow(db, self.wf)
        self.slurm = FakeSlurm()
        self.t = 0.0
        self.hook: Callable[[str], None] = lambda name: None

    def watcher(self, name: str, origin: float) -> Watcher:
        db = Database(self.path, create=False)

        def submit(scheduler: str, count: int) -> list[str]:
            self.hook(name)  # whatever else happens between this watcher's decision and its sbatch
            ids = []
            for _ in range(count):
                self.slurm.next_id += 1
                ids.append(str(self.slurm.next_id))
                self.slurm.submissions.append((name, self.t))
            record_allocations(db, self.wf, scheduler, 1, [(i, None) for i in ids])
            return ids

        options = WatchOptions(interval=1.0, limits=Limits(max_queued=2, max_running=10), lease_timeout=TIMEOUT)
        return Watcher(db, self.wf, self.slurm, options=options, clock=lambda: self.t + origin,
                       sleep=lambda s: None, say=lambda text: None, submit=submit, holder=name)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def lease_row(world: World) -> dict | None:
    with Database(world.path, create=False) as db:
        rows = db.read("SELECT holder, lease_seq FROM watchers WHERE workflow_id = ?", (world.wf,))
    return dict(rows[0]) if rows else None


def test_the_first_watcher_takes_the_lease_and_a_second_exits_when_it_sees_it_renewed(world: World) -> None:
    a, b = world.watcher("a", 0.0), world.watcher("b", 5e6)
    a.round()
    assert a.lease.held and lease_row(world) == {"holder": "a", "lease_seq": 0}
    assert len(world.slurm.submissions) == 2  # max queued
    b.round()  # sees a's lease for the first time: waits
    assert not b.lease.held
    world.t += 1
    a.round()
    world.t += 1
    with pytest.raises(WatchLeaseLost, match="already watched by a"):
        b.round()
    assert {who for who, _ in world.slurm.submissions} == {"a"}


def test_a_lease_unrenewed_for_the_timeout_on_the_newcomers_clock_is_taken_over(world: World) -> None:
    a, b = world.watcher("a", 0.0), world.watcher("b", -777.0)
    a.round()
    # a freezes. Its wall-clock heartbeat is made to look fresh, far in the future: it is never read.
    with Database(world.path, create=False) as db, db.transaction() as conn:
        conn.execute("UPDATE watchers SET heartbeat_at = heartbeat_at + 1e6")
        conn.execute("UPDATE allocations SET state = 'COMPLETED'")  # so b has room to submit
    world.slurm.canceled += [str(i) for i in range(1001, 1003)]
    b.round()
    world.t += TIMEOUT - 0.5
    b.round()
    assert not b.lease.held, "taken over before the timeout"
    world.t += 1.0
    b.round()
    assert b.lease.held and lease_row(world)["holder"] == "b"
    assert [who for who, _ in world.slurm.submissions] == ["a", "a", "b", "b"]
    # a wakes up: its lease is gone; it submits nothing and says so.
    with pytest.raises(WatchLeaseLost, match="took the lease over"):
        a.round()
    assert [who for who, _ in world.slurm.submissions] == ["a", "a", "b", "b"]


def test_a_holder_whose_renewal_is_stale_fences_itself(world: World) -> None:
    a = world.watcher("a", 0.0)
    a.round()
    assert a.lease.fresh()
    world.t += TIMEOUT / 2 + 0.1
    assert not a.lease.fresh()


def test_the_lease_is_released_on_exit(world: World) -> None:
    a = world.watcher("a", 0.0)
    a.options.once = True
    summary = a.run()
    assert summary.exit_code == 0 and lease_row(world) is None
    b = world.watcher("b", 0.0)
    b.round()
    assert b.lease.held, "a released lease is free at once"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(st.sampled_from(["a", "b", "advance"]), st.floats(0.0, 2 * TIMEOUT),
                                st.integers(0, 3)), min_size=1, max_size=25),
       origins=st.tuples(st.floats(-1e6, 1e6), st.floats(-1e6, 1e6)))
def test_two_watchers_never_both_submit(tmp_path_factory: pytest.TempPathFactory, steps, origins) -> None:
    """Any interleaving of rounds, stalls (time passes for one watcher while the other runs) and
    up to 3 rounds of one run between the other's decision and its sbatch's return (a slow sbatch):
    after a watcher has taken the lease, the one it took it from keeps no submission (a late one is
    scancelled at once); and at most max_queued allocations are ever kept pending."""
    world = World(tmp_path_factory.mktemp("w"))
    watchers = {"a": world.watcher("a", origins[0]), "b": world.watcher("b", origins[1])}
    gone: set[str] = set()
    acquired: dict[str, float] = {}
    pending_interrupts: list[tuple[str, float]] = []

    def step(name: str) -> None:
        if name in gone:
            return
        try:
            watchers[name].round()
        except WatchLeaseLost:
            gone.add(name)
            return
        if watchers[name].lease.held and name not in acquired:
            acquired[name] = world.t

    def hook(submitter: str) -> None:  # the other watcher runs while this one is in sbatch
        while pending_interrupts and pending_interrupts[-1][0] != submitter:
            other, dt = pending_interrupts.pop()
            world.t += dt
            step(other)

    world.hook = hook
    for who, dt, interrupts in steps:
        if who == "advance":
            world.t += dt
            continue
        pending_interrupts.extend([("b" if who == "a" else "a", dt)] * interrupts)
        step(who)
        pending_interrupts.clear()
        world.t += 1.0
    kept = [(i, who, t) for i, (who, t) in enumerate(world.slurm.submissions, start=1001)
            if str(i) not in world.slurm.canceled]
    for name, since in acquired.items():
        other = "b" if name == "a" else "a"
        if other in acquired and acquired[other] < since:
            late = [t for _, who, t in kept if who == other and t >= since]
            assert not late, f"{other} submitted (and kept) at {late} after {name} took the lease at {since}"
    assert len(kept) <= 2, (kept, world.slurm.submissions)


def test_a_holder_whose_process_is_gone_from_this_host_is_replaced_at_once(world: World) -> None:
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    a, b = world.watcher("a", 0.0), world.watcher("b", 0.0)
    a.round()
    with Database(world.path, create=False) as db, db.transaction() as conn:
        conn.execute("UPDATE watchers SET pid = ?", (int(gone),))
    b.round()
    assert b.lease.held and lease_row(world)["holder"] == "b"
    with pytest.raises(WatchLeaseLost, match="took the lease over"):
        a.round()
