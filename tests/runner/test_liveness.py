"""The pure lease rules (`runner.liveness`) and the runner's small policies (`runner.policy`), as
tables of cases: time is an argument, so nothing sleeps."""

from __future__ import annotations

import signal

import pytest

from torc_slurm.runner.liveness import LeaseObserver, OwnLease
from torc_slurm.runner.policy import Exit, classify, prefetch_size
from torc_slurm.store.leases import PeerLease


def peer(runner_id: int, seq: int) -> PeerLease:
    return PeerLease(runner_id, "host", "key", 100 + runner_id, None, "tok", None, None, seq, "active", 0.0, None)


# -- own lease ------------------------------------------------------------------------------------

def test_own_lease_starts_nothing_near_its_end_and_expires_at_the_timeout() -> None:
    lease = OwnLease(timeout_s=10)
    assert not lease.may_start(0) and not lease.expired(0)  # never renewed: never runs anything
    lease.renew(100.0)
    assert lease.may_start(107.9) and not lease.may_start(108.0)  # margin: min(2 s, T/4)
    assert not lease.expired(109.99) and lease.expired(110.0)
    lease.renew(109.0)
    assert lease.may_start(115.0) and not lease.expired(118.9)


# -- observing others, in queue time --------------------------------------------------------------

def test_a_peer_expires_after_one_and_a_half_timeouts_unchanged() -> None:
    observer = LeaseObserver(timeout_s=10, stall_s=5)
    for now in range(0, 15):  # observing every second, as a healthy runner does
        assert observer.observe(float(now), [peer(1, 7)]) == []
    assert [p.runner_id for p in observer.observe(15.0, [peer(1, 7)])] == [1]


def test_a_renewal_restarts_the_observation() -> None:
    observer = LeaseObserver(timeout_s=10, stall_s=5)
    for now in range(0, 14):
        observer.observe(float(now), [peer(1, 7)])
    for now in range(14, 28):
        assert observer.observe(float(now), [peer(1, 8)]) == []
    assert observer.observe(29.0, [peer(1, 8)]) != []


@pytest.mark.parametrize("gap", [6.0, 70.0])
def test_a_stall_of_the_observer_ages_nobody(gap: float) -> None:
    """The observer could not reach the queue for ``gap`` s: neither could the peer, probably."""
    observer = LeaseObserver(timeout_s=10, stall_s=5)
    observer.observe(0.0, [peer(1, 7)])
    assert observer.observe(gap, [peer(1, 7)]) == []          # would be expired by the clock alone
    assert observer.observed_for(1, gap) == 0.0
    for now in range(1, 15):
        assert observer.observe(gap + now, [peer(1, 7)]) == []
    assert observer.observe(gap + 15, [peer(1, 7)]) != []     # still expires if it never renews


def test_peers_that_left_are_forgotten() -> None:
    observer = LeaseObserver(timeout_s=10, stall_s=5)
    observer.observe(0.0, [peer(1, 1), peer(2, 1)])
    observer.observe(1.0, [peer(2, 1)])
    assert observer.observed_for(1, 1.0) is None and observer.observed_for(2, 1.0) == 1.0


# -- outcomes -------------------------------------------------------------------------------------

TERM, KILL = int(signal.SIGTERM), int(signal.SIGKILL)
CASES = [
    # (exit, expected status)
    (Exit(0, None, 10.0), "completed"),
    (Exit(3, None, 10.0), "failed"),
    (Exit(None, 11, 10.0), "failed"),
    (Exit(0, None, 10.0, missing_outputs=("out.txt",)), "failed"),
    (Exit(None, None, 10.0, launch_error="no bash"), "failed"),
    # the runner was stopping it: terminated whatever the exit code (case 9: exit 0 on SIGTERM)
    (Exit(0, None, 10.0, stopped_by_runner=True, stop_reason="walltime"), "terminated"),
    (Exit(None, KILL, 10.0, stopped_by_runner=True), "terminated"),
    # Slurm's signal reached the job a moment before the runner's stop request
    (Exit(None, TERM, 10.0, stop_requested_at=10.5), "terminated"),
    (Exit(143, None, 10.0, stop_requested_at=10.5), "terminated"),
    (Exit(None, TERM, 5.0, stop_requested_at=10.5), "failed"),   # long before: its own failure
    (Exit(None, TERM, 10.0), "failed"),                          # nobody asked the runner to stop
    # the lease on it ended: lost, whatever else happened
    (Exit(0, None, 10.0, lease_lost=True, stopped_by_runner=True), "lost"),
    (Exit(None, KILL, 10.0, lease_lost=True), "lost"),
]


@pytest.mark.parametrize(("exit_", "status"), CASES)
def test_classify(exit_: Exit, status: str) -> None:
    got, message = classify(exit_)
    assert got == status
    if status != "completed":
        assert message


def test_failure_messages_name_the_cause() -> None:
    assert classify(Exit(3, None, 1.0))[1] == "exit code 3"
    assert classify(Exit(None, 11, 1.0))[1] == "killed by signal SIGSEGV"
    assert "out.txt" in classify(Exit(0, None, 1.0, missing_outputs=("out.txt",)))[1]
    assert "walltime" in classify(Exit(0, None, 1.0, stopped_by_runner=True, stop_reason="walltime"))[1]


@pytest.mark.parametrize(("slots", "rate", "expected"), [
    (4, 0, 4),        # one per slot at least
    (4, 100, 25),     # a quarter second's worth of jobs
    (4, 10_000, 512), # capped
    (64, 100, 64),
])
def test_prefetch_size(slots: int, rate: int, expected: int) -> None:
    assert prefetch_size(slots=slots, completions_last_second=rate, report_delay_s=0.25, ceiling=512) == expected
