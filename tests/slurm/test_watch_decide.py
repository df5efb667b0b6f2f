"""`torc slurm watch`'s pure decision core: table tests of ``decide`` and of the backoff."""

from __future__ import annotations

import pytest

from torc_slurm.slurm.watch import (
    Allocation,
    Cancel,
    Demand,
    Failures,
    Limits,
    Pause,
    SchedulerShape,
    Submit,
    WatchState,
    after_failure,
    after_success,
    capacity,
    decide,
    demand_from_rows,
)


def allocs(scheduler: str, *states: str) -> list[Allocation]:
    return [Allocation(f"{scheduler}{i}", scheduler, s) for i, s in enumerate(states)]


def summary(actions: list) -> list[tuple]:
    out = []
    for a in actions:
        if isinstance(a, Submit):
            out.append(("submit", a.scheduler, a.count))
        elif isinstance(a, Cancel):
            out.append(("cancel", a.scheduler, a.slurm_job_ids))
        else:
            out.append(("pause", a.scheduler))
    return out


CASES = [
    # id, demand, allocations, limits, failures, may_submit, expected
    ("nothing to do", Demand(), [], Limits(), {}, True, []),
    ("ready jobs, one allocation takes them all", Demand(ready=5, capacity=8), [], Limits(), {}, True,
     [("submit", "a", 1)]),
    ("ready jobs, many allocations wanted, capped by max queued", Demand(ready=100, capacity=10), [], Limits(), {},
     True, [("submit", "a", 2)]),
    ("queued ones count against max queued", Demand(ready=100, capacity=10), allocs("a", "PENDING"), Limits(), {},
     True, [("submit", "a", 1)]),
    ("queue full", Demand(ready=100, capacity=10), allocs("a", "PENDING", "submitted"), Limits(), {}, True, []),
    ("running ones count against max running", Demand(ready=100, capacity=1), allocs("a", *["RUNNING"] * 9),
     Limits(max_queued=5, max_running=10), {}, True, [("submit", "a", 1)]),
    ("max running reached", Demand(ready=100, capacity=1), allocs("a", *["RUNNING"] * 10), Limits(), {}, True, []),
    ("live allocations already cover the demand", Demand(ready=3, held=5, capacity=8), allocs("a", "RUNNING"),
     Limits(), {}, True, []),
    ("soon-ready jobs alone get an allocation queued", Demand(soon=2, capacity=4), [], Limits(), {}, True,
     [("submit", "a", 1)]),
    ("held jobs only: nothing queued, nothing cancelled", Demand(held=3), allocs("a", "RUNNING"), Limits(), {},
     True, []),
    ("no work left: pending and submitted ones are cancelled, running and unknown kept", Demand(),
     allocs("a", "PENDING", "submitted", "RUNNING", "UNKNOWN", "COMPLETED"), Limits(), {}, True,
     [("cancel", "a", ("a0", "a1"))]),
    ("an UNKNOWN allocation counts as queued", Demand(ready=100, capacity=10), allocs("a", "UNKNOWN", "UNKNOWN"),
     Limits(), {}, True, []),
    ("ended allocations do not count", Demand(ready=10, capacity=10), allocs("a", "COMPLETED", "gone", "canceled"),
     Limits(), {}, True, [("submit", "a", 1)]),
    ("in backoff: no submission", Demand(ready=1), [], Limits(), {"a": Failures(1, next_try_at=200.0)}, True, []),
    ("backoff over: submit", Demand(ready=1), [], Limits(), {"a": Failures(1, next_try_at=50.0)}, True,
     [("submit", "a", 1)]),
    ("N failures: pause", Demand(ready=1), [], Limits(pause_after=5), {"a": Failures(5, next_try_at=0.0)}, True,
     [("pause", "a")]),
    ("paused: nothing", Demand(ready=1), [], Limits(), {"a": Failures(5, paused=True)}, True, []),
    ("paused but no work: still cancels", Demand(), allocs("a", "PENDING"), Limits(),
     {"a": Failures(5, paused=True)}, True, [("cancel", "a", ("a0",))]),
    ("lease not fresh: no submission", Demand(ready=5), [], Limits(), {}, False, []),
    ("max queued 0 submits nothing", Demand(ready=5), [], Limits(max_queued=0), {}, True, []),
]


@pytest.mark.parametrize(("demand", "allocations", "limits", "failures", "may_submit", "expected"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decide(demand, allocations, limits, failures, may_submit, expected) -> None:
    state = WatchState(now=100.0, demand={"a": demand}, allocations=allocations, limits=limits, failures=failures,
                       may_submit=may_submit)
    assert summary(decide(state)) == expected


def test_schedulers_are_decided_independently_in_spec_order() -> None:
    state = WatchState(now=0.0, demand={"s1": Demand(), "s2": Demand(ready=4, capacity=2), "s3": Demand(soon=1)},
                       allocations=[*allocs("s1", "PENDING"), *allocs("s2", "RUNNING")])
    assert summary(decide(state)) == [("cancel", "s1", ("s10",)), ("submit", "s2", 1), ("submit", "s3", 1)]


def test_backoff_doubles_and_is_capped_and_success_resets() -> None:
    f = Failures()
    waits = []
    for _ in range(8):
        f = after_failure(f, 1000.0, "boom", first=2.0, cap=30.0)
        waits.append(f.next_try_at - 1000.0)
    assert waits == [2, 4, 8, 16, 30, 30, 30, 30]
    assert f.consecutive == 8 and f.last_error == "boom"
    assert after_success(f) == Failures()


def test_pause_says_why() -> None:
    state = WatchState(now=0.0, demand={"gpu": Demand(ready=1)},
                       failures={"gpu": Failures(5, last_error="sbatch: invalid partition")})
    (pause,) = decide(state)
    assert isinstance(pause, Pause)
    assert "5 consecutive" in pause.reason and "invalid partition" in pause.reason


def test_capacity_and_demand_assignment() -> None:
    shapes = [SchedulerShape("small", 1, 600, 8), SchedulerShape("wide", 4, 3600, 8)]
    assert capacity(shapes[0], mean_cpus=1, mean_runtime_s=60) == 80      # 8 slots x 10 runtimes
    assert capacity(shapes[0], mean_cpus=16, mean_runtime_s=7200) == 1    # never below 1
    rows = [  # unbound 1-node jobs go to the first scheduler, unbound 2-node ones to the first wide enough
        {"scheduler": None, "num_nodes": 1, "kind": "ready", "n": 3, "cpus": 3, "runtime": 180},
        {"scheduler": None, "num_nodes": 2, "kind": "soon", "n": 1, "cpus": 1, "runtime": 60},
        {"scheduler": "wide", "num_nodes": 1, "kind": "held", "n": 2, "cpus": 2, "runtime": 120},
        {"scheduler": "gone", "num_nodes": 1, "kind": "ready", "n": 9, "cpus": 9, "runtime": 9},
    ]
    demand = demand_from_rows(rows, shapes)
    assert demand["small"] == Demand(ready=3, capacity=80)
    assert (demand["wide"].soon, demand["wide"].held, demand["wide"].ready) == (1, 2, 0)
