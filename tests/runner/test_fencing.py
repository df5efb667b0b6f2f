"""`Fencer`: which evidence sweeps a runner, and what it does first. Slurm is a fake probe (the
real one is exercised on the local cluster in tests/e2e_slurm); processes are real."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

from torc_slurm.runner.fencing import Fencer, host_key, process_started
from torc_slurm.runner.guardian import TOKEN_VARIABLE, processes_left
from torc_slurm.store.leases import PeerLease

HERE = host_key()


class FakeSlurm:
    def __init__(self, alive: set[str]) -> None:
        self.alive_ids = alive
        self.asked: list[list[str]] = []
        self.canceled: list[str] = []

    def alive(self, job_ids: Sequence[str]) -> set[str]:
        self.asked.append(list(job_ids))
        return self.alive_ids & set(job_ids)

    def cancel(self, job_id: str) -> None:
        self.canceled.append(job_id)


def peer(runner_id: int, *, key: str | None = "elsewhere:1", pid: int = 1, token: str | None = None,
         slurm: str | None = None, status: str = "active", allocation: str | None = None,
         started: float | None = None) -> PeerLease:
    return PeerLease(runner_id, f"host{runner_id}", key, pid, started, token, slurm, None, 5, status, 0.0, None,
                     allocation)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_live_runner_with_a_fresh_lease_is_left_alone() -> None:
    me = os.getpid()
    peers = [peer(1, key=HERE, pid=me, started=process_started(me)), peer(2), peer(3, slurm="77")]
    slurm = FakeSlurm({"77"})
    verdicts = Fencer(my_host_key=HERE, slurm=slurm).assess(peers, [])
    assert verdicts.sweep == [] and verdicts.fence == [] and slurm.asked == []  # no squeue without cause


def test_a_dead_pid_here_is_swept_after_its_jobs_are_killed(tmp_path) -> None:  # noqa: ANN001
    token = "t" * 24
    job = subprocess.Popen(["sleep", "100"], env={**os.environ, TOKEN_VARIABLE: token}, start_new_session=True)
    try:
        verdicts = Fencer(my_host_key=HERE).assess([peer(1, key=HERE, pid=dead_pid(), token=token)], [])
        assert [(r.runner_id, r.lease_seq) for r in verdicts.sweep] == [(1, 5)]
        assert "is gone" in verdicts.sweep[0].reason
        assert job.wait(timeout=5) == -9 and processes_left(token) == []
    finally:
        job.kill()


def test_a_reused_pid_counts_as_dead() -> None:
    me = os.getpid()
    verdicts = Fencer(my_host_key=HERE).assess([peer(1, key=HERE, pid=me, started=1.0)], [])
    assert [r.runner_id for r in verdicts.sweep] == [1]


def test_an_expired_runner_elsewhere_under_slurm_is_canceled_first_then_swept_once_ended() -> None:
    slurm = FakeSlurm({"77"})
    running = peer(1, slurm="77")
    verdicts = Fencer(my_host_key=HERE, slurm=slurm).assess([running], [running])
    assert verdicts.sweep == [] and slurm.canceled == ["77"] and verdicts.fence[0][0] == 1
    fencing = peer(1, slurm="77", status="fencing")
    again = Fencer(my_host_key=HERE, slurm=slurm).assess([fencing], [fencing])
    assert again.sweep == [] and slurm.canceled == ["77"]  # not canceled twice
    slurm.alive_ids.clear()
    ended = Fencer(my_host_key=HERE, slurm=slurm).assess([fencing], [fencing])
    assert [r.runner_id for r in ended.sweep] == [1] and "ended" in ended.sweep[0].reason


def test_without_a_way_to_ask_slurm_an_allocations_runner_is_left_alone() -> None:
    expired = peer(1, slurm="77")
    verdicts = Fencer(my_host_key=HERE, slurm=None).assess([expired], [expired])
    assert verdicts.sweep == [] and "left alone" in verdicts.fence[0][1]


def test_a_recorded_ended_allocation_sweeps_at_once_and_canceled_by_us_does_not() -> None:
    verdicts = Fencer(my_host_key=HERE).assess([peer(1, slurm="77", allocation="TIMEOUT"),
                                               peer(2, slurm="78", allocation="canceled")], [])
    assert [r.runner_id for r in verdicts.sweep] == [1] and "TIMEOUT" in verdicts.sweep[0].reason


def test_an_expired_runner_on_an_uncheckable_host_is_swept_but_not_on_evidence_only() -> None:
    expired = peer(1)
    assert [r.runner_id for r in Fencer(my_host_key=HERE).assess([expired], [expired]).sweep] == [1]
    assert Fencer(my_host_key=HERE).assess([expired], [], evidence_only=True).sweep == []
