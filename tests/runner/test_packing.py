"""Tests for torc_slurm.runner.packing: table-driven cases (EASY backfill, the plan order that puts
wide jobs first within a priority, gangs' not_before), starvation checks, queue-depth mode, input
validation, and hypothesis properties against an independent oracle."""

from __future__ import annotations

import math
from typing import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torc_slurm.runner.packing import (
    Candidate,
    NodeCapacity,
    Placement,
    fits_node,
    fits_time,
    is_wide,
    pack,
    plan_order,
    shadow_time,
)

GB = 1024**3


# --- tiny builders ---------------------------------------------------------------------------


def cap(cpus: int | Sequence[int] = 4, gpus: Sequence[str] = (), mem: int = 16 * GB) -> NodeCapacity:
    cpu_ids = tuple(range(cpus)) if isinstance(cpus, int) else tuple(cpus)
    return NodeCapacity(cpu_ids, tuple(gpus), mem)


def job(job_id: int, cpus: int = 1, gpus: int = 0, mem: int = GB, runtime: int = 100, prio: int | None = None,
        nodes: int = 1) -> Candidate:
    return Candidate(job_id, cpus, gpus, mem, runtime, prio, nodes)


def run(
    job_id: int, cpus: Sequence[int] = (), gpus: Sequence[str] = (), mem: int = GB, end: float = 100.0
) -> Placement:
    return Placement(job_id, tuple(cpus), tuple(gpus), mem, end)


def ids(placed: Sequence[Placement]) -> list[tuple]:
    """(job_id, cpu_ids, gpu_ids) per placement: what the table cases compare."""
    return [(p.job_id, p.cpu_ids, p.gpu_ids) for p in placed]


# --- invariant checker, run after every case -------------------------------------------------


def validate(
    capacity: NodeCapacity,
    running: Sequence[Placement],
    placed: Sequence[Placement],
    *,
    candidates: Sequence[Candidate],
    now: float,
    end_time: float | None,
    buffer_s: float = 0.0,
    queue_depth: int | None = None,
    not_before: dict[int, float] | None = None,
) -> None:
    """No id given twice, all ids within capacity, sums within capacity, time rule respected,
    each placement matches its candidate, placements come in candidate order, no placement
    before its not_before time."""
    everyone = [*running, *placed]
    cpus = [c for p in everyone for c in p.cpu_ids]
    gpus = [g for p in everyone for g in p.gpu_ids]
    assert len(cpus) == len(set(cpus)), "a CPU id is given twice"
    assert len(gpus) == len(set(gpus)), "a GPU id is given twice"
    assert set(cpus) <= set(capacity.cpu_ids)
    assert set(gpus) <= set(capacity.gpu_ids)
    if queue_depth is None:
        assert sum(p.memory_bytes for p in everyone) <= capacity.memory_bytes
    else:
        assert len(everyone) <= max(queue_depth, len(running))
    by_id = {c.job_id: c for c in candidates}
    order = [c.job_id for c in candidates]
    positions = [order.index(p.job_id) for p in placed]
    assert positions == sorted(positions), "placements must follow candidate order"
    assert not {p.job_id for p in placed} & {p.job_id for p in running}
    for p in placed:
        c = by_id[p.job_id]
        assert (not_before or {}).get(p.job_id, now) <= now, "started before its not_before time"
        assert p.expected_end == now + c.runtime_s
        assert end_time is None or now + c.runtime_s <= end_time - buffer_s, "time rule"
        if queue_depth is None:
            assert (len(p.cpu_ids), len(p.gpu_ids), p.memory_bytes) == (c.num_cpus, c.num_gpus, c.memory_bytes)
            assert fits_node(capacity, c)
        else:
            assert (p.cpu_ids, p.gpu_ids, p.memory_bytes) == ((), (), 0)


def checked_pack(capacity, running, candidates, *, now=0.0, end_time=None, buffer_s=0.0, max_parallel_jobs=None,
                 not_before=None):
    placed = pack(
        capacity, running, candidates, now=now, end_time=end_time, buffer_s=buffer_s,
        max_parallel_jobs=max_parallel_jobs, not_before=not_before,
    )
    validate(
        capacity, running, placed, candidates=candidates, now=now, end_time=end_time,
        buffer_s=buffer_s, queue_depth=max_parallel_jobs, not_before=not_before,
    )
    return placed


# --- table-driven cases (resource-aware mode) ------------------------------------------------

CASES = [
    pytest.param(cap(4), [], [job(1), job(2), job(3)], {},
                 [(1, (0,), ()), (2, (1,), ()), (3, (2,), ())], id="empty-node-lowest-ids"),
    pytest.param(cap(8), [run(9, cpus=(1,)), run(8, cpus=(4,))], [job(1, cpus=2), job(2, cpus=3), job(3)], {},
                 [(1, (2, 3), ()), (2, (5, 6, 7), ()), (3, (0,), ())], id="lowest-contiguous-block"),
    pytest.param(cap(6), [run(9, cpus=(1, 3, 5))], [job(1, cpus=2)], {},
                 [(1, (0, 2), ())], id="no-contiguous-block-lowest-ids"),
    pytest.param(cap([10, 11, 20, 21]), [], [job(1, cpus=3)], {},
                 [(1, (10, 11, 20), ())], id="non-contiguous-capacity-ids"),
    pytest.param(cap(4), [], [job(1, cpus=0, mem=0)], {}, [(1, (), ())], id="zero-cpu-job"),
    pytest.param(cap(4, gpus=("2", "3")), [run(9, cpus=(0,), gpus=("2",))], [job(1, gpus=1)], {},
                 [(1, (1,), ("3",))], id="gpu-not-held"),
    pytest.param(cap(4, gpus=("3", "1")), [], [job(1, gpus=1), job(2, gpus=1)], {},
                 [(1, (0,), ("3",)), (2, (1,), ("1",))], id="gpus-in-capacity-order"),
    pytest.param(cap(8, mem=4 * GB), [], [job(1, mem=2 * GB), job(2, mem=2 * GB), job(3, mem=2 * GB)], {},
                 [(1, (0,), ()), (2, (1,), ())], id="memory-bound"),
    pytest.param(cap(4, gpus=("0",)), [], [job(1, cpus=5), job(2, gpus=2), job(3, mem=17 * GB), job(4)], {},
                 [(4, (0,), ())], id="never-fits-node-is-skipped-without-reservation"),
    pytest.param(cap(4), [], [job(1, runtime=90), job(2, runtime=91), job(3, runtime=80)],
                 {"end_time": 100.0, "buffer_s": 10.0},
                 [(1, (0,), ()), (3, (1,), ())], id="time-window-with-buffer"),
    pytest.param(cap(4), [], [job(1, runtime=10**9)], {"end_time": None}, [(1, (0,), ())], id="no-end-time"),
    pytest.param(cap(4), [], [job(1, cpus=3), job(2), job(3)], {},
                 [(1, (0, 1, 2), ()), (2, (3,), ())], id="greedy-in-candidate-order"),
    # EASY backfill: a 3-CPU job is blocked until t=100, when jobs 8 and 9 end.
    pytest.param(cap(4), [run(8, cpus=(0, 1), end=100), run(9, cpus=(2,), end=200)],
                 [job(1, cpus=3, runtime=50), job(2, runtime=101), job(3, runtime=100)], {},
                 [(3, (3,), ())], id="backfill-only-jobs-ending-by-shadow"),
    pytest.param(cap(4), [run(8, cpus=(0, 1), end=100)],
                 [job(1, cpus=3), job(2, runtime=1000), job(3, runtime=1000), job(4, runtime=50)], {},
                 [(2, (2,), ()), (4, (3,), ())], id="backfill-into-extra-cpus"),
    pytest.param(cap(4), [run(8, cpus=(0,), end=100), run(9, cpus=(1,), end=100)],
                 [job(1, cpus=3), job(2, runtime=1000), job(3, runtime=1000)], {},
                 [(2, (2,), ())], id="jobs-ending-together-all-count-for-extra"),
    pytest.param(cap(4, mem=8 * GB), [run(8, cpus=(0, 1), mem=6 * GB, end=100)],
                 [job(1, mem=7 * GB), job(2, mem=2 * GB, runtime=1000), job(3, mem=GB, runtime=1000)], {},
                 [(3, (2,), ())], id="extra-memory-limits-backfill"),
    pytest.param(cap(4, gpus=("0", "1")), [run(8, cpus=(0,), gpus=("0",), end=100)],
                 [job(1, gpus=2), job(2, gpus=1, runtime=1000), job(3, gpus=1, runtime=100), job(4, runtime=1000)], {},
                 [(3, (1,), ("1",)), (4, (2,), ())], id="gpu-reservation"),
    pytest.param(cap(8), [run(8, cpus=(0, 1, 2, 3), end=-10)], [job(1, cpus=8), job(2, runtime=1)], {},
                 [], id="overrun-job-frees-at-now-for-shadow"),
    pytest.param(cap(8), [run(8, cpus=(0, 1, 2, 3), end=-10)], [job(1, cpus=8), job(2, runtime=0)], {},
                 [(2, (4,), ())], id="overrun-shadow-is-now-not-in-the-past"),
    pytest.param(cap(8), [run(8, cpus=(0, 1, 2, 3), end=50)], [job(1, cpus=8), job(2, runtime=40)], {},
                 [(2, (4,), ())], id="on-time-job-leaves-room-before-shadow"),
    # The blocked job could only start at t=80 and would not end by t=100: no reservation.
    pytest.param(cap(4), [run(8, cpus=(0, 1, 2), end=80)], [job(1, cpus=4, runtime=30), job(2, runtime=90)],
                 {"end_time": 100.0}, [(2, (3,), ())], id="no-reservation-when-blocked-job-cannot-finish"),
    pytest.param(cap(4), [run(8, cpus=(0, 1, 2), end=80)], [job(1, cpus=4, runtime=30), job(2, runtime=90)],
                 {"end_time": 200.0}, [], id="reservation-when-blocked-job-can-finish"),
    # Only the first blocked job reserves: job 2 alone would reserve t=50 and block job 3.
    pytest.param(cap(4), [run(8, cpus=(0, 1), end=100), run(9, cpus=(2,), end=50)],
                 [job(1, cpus=4, runtime=10), job(2, cpus=2, runtime=10), job(3, runtime=70)], {},
                 [(3, (3,), ())], id="only-first-blocked-job-reserves"),
]


@pytest.mark.parametrize("capacity, running, candidates, kwargs, expected", CASES)
def test_pack_cases(capacity, running, candidates, kwargs, expected):
    kwargs = {"now": 0.0, "end_time": None, **kwargs}
    assert ids(checked_pack(capacity, running, candidates, **kwargs)) == expected


def test_expected_end_is_start_plus_runtime():
    [p] = checked_pack(cap(2), [], [job(1, runtime=30)], now=1000.5, end_time=None)
    assert p.expected_end == 1030.5 and p.memory_bytes == GB


def test_fits_helpers():
    assert fits_node(cap(4, gpus=("0",), mem=GB), job(1, cpus=4, gpus=1, mem=GB))
    assert not fits_node(cap(4, gpus=("0",), mem=GB), job(1, cpus=4, gpus=1, mem=GB + 1))
    assert fits_time(job(1, runtime=50), now=10, end_time=70, buffer_s=10)
    assert not fits_time(job(1, runtime=51), now=10, end_time=70, buffer_s=10)
    assert fits_time(job(1, runtime=10**9), now=10, end_time=None, buffer_s=10)


# --- anti-starvation ---------------------------------------------------------------------------


def test_big_job_is_not_starved_by_small_ones():
    capacity = cap(16)
    running = [run(i, cpus=(i,), end=10 + i) for i in range(16)]  # end at t=10..25
    big = job(100, cpus=16, runtime=50)
    smalls = [job(200 + k, runtime=30) for k in range(20)]

    # t=10: job 0 ended, one CPU is free, but no small job may run past the shadow time t=25.
    assert checked_pack(capacity, running[1:], [big, *smalls], now=10, end_time=None) == []
    # A small job that ends by t=25 may use the hole.
    short = job(300, runtime=15)
    assert ids(checked_pack(capacity, running[1:], [big, *smalls, short], now=10, end_time=None)) == [(300, (0,), ())]
    # As soon as the running jobs are gone, the big job starts.
    assert ids(checked_pack(capacity, [], [big, *smalls], now=25, end_time=None)) == [(100, tuple(range(16)), ())]


def simulate(capacity, running, queue, *, end_time=None):
    """Drive pack() like the runner loop: jobs end exactly at expected_end. -> {job_id: start}."""
    now, running, queue, starts = 0.0, list(running), list(queue), {}
    while queue or running:
        for p in checked_pack(capacity, running, queue, now=now, end_time=end_time):
            starts[p.job_id] = now
            running.append(p)
            queue = [c for c in queue if c.job_id != p.job_id]
        if not running:
            break  # what is left can never run
        now = min(p.expected_end for p in running)
        running = [p for p in running if p.expected_end > now]
    return starts


def test_simulation_big_job_starts_when_the_first_jobs_drain():
    capacity = cap(16)
    running = [run(i, cpus=(i,), end=10 + i) for i in range(16)]
    smalls = [job(200 + k, runtime=30 + k % 7) for k in range(60)]
    starts = simulate(capacity, running, [job(100, cpus=16, runtime=50), *smalls])
    assert starts[100] == 25  # the last of the original jobs ends at t=25
    assert all(start >= 75 for jid, start in starts.items() if jid >= 200)  # nothing fit around it
    assert len(starts) == 61


# --- plan order: wide jobs first within a priority -------------------------------------------

PLAN_CASES = [
    # Empty 16-CPU node, equal priority: the wide job goes first and fills the node.
    pytest.param(cap(16), [], [job(1, prio=0), job(2, cpus=16, prio=0)], {},
                 [(2, tuple(range(16)), ())], id="wide-first-within-priority"),
    # Unknown priorities: the given order, as before (the narrow job starts, the wide one reserves).
    pytest.param(cap(16), [], [job(1), job(2, cpus=16)], {}, [(1, (0,), ())], id="no-priorities-given-order"),
    # A higher-priority narrow job stays ahead of a lower-priority wide one.
    pytest.param(cap(16), [], [job(1, prio=1), job(2, cpus=16, prio=0)], {}, [(1, (0,), ())],
                 id="priority-boundary-is-kept"),
    # One unknown priority among known ones is a run of its own: job 2 stays ahead of job 3.
    pytest.param(cap(16), [], [job(1, prio=0), job(2, prio=None), job(3, cpus=16, prio=0)], {},
                 [(1, (0,), ()), (2, (1,), ())], id="unknown-priority-splits-the-run"),
    # Busy node: the wide job reserves t=100 (when both running jobs end) although narrow jobs rank
    # ahead of it; they start now only if they end by then, and the same goes for those behind it.
    pytest.param(cap(16), [run(8, cpus=(0, 1), end=50), run(9, cpus=(2, 3), end=100)],
                 [job(1, runtime=150, prio=0), job(2, runtime=100, prio=0), job(3, cpus=16, runtime=10, prio=0),
                  job(4, runtime=10, prio=0), job(5, runtime=200, prio=0)], {},
                 [(2, (4,), ()), (4, (5,), ())], id="busy-node-wide-reserves-first"),
    pytest.param(cap(16), [run(8, cpus=(0, 1), end=50), run(9, cpus=(2, 3), end=100)],
                 [job(1, runtime=150), job(2, runtime=100), job(3, cpus=16, runtime=10), job(4, runtime=10),
                  job(5, runtime=200)], {},
                 [(1, (4,), ()), (2, (5,), ()), (4, (6,), ())], id="busy-node-no-priorities"),
    # Placements come back in the given order, even when the plan order differs.
    pytest.param(cap(16), [], [job(1, runtime=5, prio=0), job(2, cpus=9, runtime=5, prio=0), job(3, prio=0)], {},
                 [(1, (9,), ()), (2, tuple(range(9)), ()), (3, (10,), ())], id="placements-in-given-order"),
    # Wide by GPUs (3 of 4) or by memory (more than half): the same rule.
    pytest.param(cap(16, gpus=("0", "1", "2", "3")), [],
                 [job(1, gpus=2, runtime=60, prio=0), job(2, gpus=3, runtime=10, prio=0)], {},
                 [(2, (0,), ("0", "1", "2"))], id="gpu-wide-first"),
    pytest.param(cap(16, mem=16 * GB), [run(9, cpus=(0,), mem=4 * GB, end=50)],
                 [job(1, mem=4 * GB, runtime=60, prio=0), job(2, mem=9 * GB, runtime=10, prio=0),
                  job(3, mem=2 * GB, runtime=60, prio=0)], {},
                 [(2, (1,), ()), (3, (2,), ())], id="memory-wide-first"),
    # A gang member (num_nodes 2) is wide whatever its per-node share.
    pytest.param(cap(16), [], [job(1, cpus=8, prio=0), job(2, cpus=4, nodes=2, prio=0), job(3, cpus=8, prio=0)], {},
                 [(1, (4, 5, 6, 7, 8, 9, 10, 11), ()), (2, (0, 1, 2, 3), ())], id="gang-is-wide"),
    # not_before: job 1 fits now but may not start before t=40; it holds the reservation at 40, so
    # job 2 (ends at 60, and the node has no extra at 40) waits and job 3 (ends at 30) starts.
    pytest.param(cap(4), [], [job(1, cpus=4, runtime=10), job(2, runtime=60), job(3, runtime=30)],
                 {"not_before": {1: 40.0}}, [(3, (0,), ())], id="not-before-holds-a-reservation"),
    # Past not_before times are ignored.
    pytest.param(cap(4), [], [job(1, cpus=4, runtime=10), job(2)], {"not_before": {1: 0.0}},
                 [(1, (0, 1, 2, 3), ())], id="not-before-in-the-past"),
    # A reservation that could not end in time is not made: the next blocked job may take it.
    pytest.param(cap(4), [], [job(1, cpus=4, runtime=10), job(2, runtime=60)],
                 {"not_before": {1: 95.0}, "end_time": 100.0}, [(2, (0,), ())], id="not-before-past-the-end"),
]


@pytest.mark.parametrize("capacity, running, candidates, kwargs, expected", PLAN_CASES)
def test_plan_cases(capacity, running, candidates, kwargs, expected):
    kwargs = {"now": 0.0, "end_time": None, **kwargs}
    assert ids(checked_pack(capacity, running, candidates, **kwargs)) == expected


def test_plan_order_runs():
    c = cap(16)
    given = [job(1, prio=2), job(2, cpus=16, prio=2), job(3, prio=1), job(4, cpus=12, prio=1), job(5, cpus=9, prio=1),
             job(6), job(7, cpus=16), job(8, prio=1), job(9, cpus=16, prio=1)]
    assert [x.job_id for x in plan_order(c, given)] == [2, 1, 4, 5, 3, 6, 7, 9, 8]
    assert plan_order(c, []) == []
    plain = [job(1), job(2, cpus=16)]
    assert plan_order(c, plain) == plain


def test_is_wide():
    c = cap(16, gpus=("0", "1", "2", "3"), mem=64 * GB)
    assert not is_wide(c, job(1, cpus=8, gpus=2, mem=32 * GB))
    assert is_wide(c, job(1, cpus=9))
    assert is_wide(c, job(1, gpus=3))
    assert is_wide(c, job(1, mem=33 * GB))
    assert is_wide(c, job(1, nodes=2))


def test_shadow_time():
    c = cap(4)
    busy = [run(8, cpus=(0, 1), end=50), run(9, cpus=(2,), end=80)]
    assert shadow_time(c, busy, job(1), now=10) == 10
    assert shadow_time(c, busy, job(1, cpus=3), now=10) == 50
    assert shadow_time(c, busy, job(1, cpus=4), now=10) == 80
    assert shadow_time(c, busy, job(1, cpus=5), now=10) == math.inf
    assert shadow_time(c, [run(8, cpus=(0, 1, 2, 3), end=5)], job(1, cpus=4), now=10) == 10  # overrun: ends now


def test_wide_jobs_run_first_on_an_empty_node_and_narrow_ones_fill_after():
    """The benchmark's failure, small: in the given order each wide job drains the node; planned
    first, they run back to back at the start and the node never drains."""
    capacity = cap(4)
    narrow = [job(10 + k, runtime=31 - 3 * k, prio=0) for k in range(8)]  # longest first, as ranked
    wide = [job(1, cpus=4, runtime=5, prio=0), job(2, cpus=4, runtime=5, prio=0)]
    queue = [*narrow[:4], wide[0], *narrow[4:], wide[1]]
    starts = simulate(capacity, [], queue)
    assert starts[1] == 0 and starts[2] == 5
    assert all(starts[j.job_id] >= 10 for j in narrow)
    assert max(starts[j.job_id] + j.runtime_s for j in queue) == 51  # = total CPU-s / 4: no idle CPU
    unplanned = simulate(capacity, [], [Candidate(j.job_id, j.num_cpus, j.num_gpus, j.memory_bytes, j.runtime_s)
                                        for j in queue])
    assert unplanned[1] == 31 and unplanned[2] == 55  # each waits for a drain
    assert max(unplanned[j.job_id] + j.runtime_s for j in queue) == 60


def test_wide_job_follows_a_wide_job_without_a_drain():
    """A wide job runs; the next wide job of the same priority goes right after it, ahead of the
    narrow jobs ranked before it, which then fill the node. Without priorities the narrow jobs go
    first and the wide job waits for them all to drain."""
    capacity = cap(4)
    running = [run(9, cpus=(0, 1, 2, 3), end=50)]
    queue = [*(job(10 + k, runtime=30 + k, prio=0) for k in range(4)), job(1, cpus=4, runtime=10, prio=0)]
    starts = simulate(capacity, running, queue)
    assert starts[1] == 50 and all(starts[10 + k] == 60 for k in range(4))
    plain = simulate(capacity, running, [Candidate(c.job_id, c.num_cpus, c.num_gpus, c.memory_bytes, c.runtime_s)
                                         for c in queue])
    assert plain[1] == 83 and all(plain[10 + k] == 50 for k in range(4))


def test_lower_priority_wide_job_is_not_starved():
    """A wide job below a stream of higher-priority narrow jobs: EASY still reserves for it once it
    is the first blocked job, so it starts when the running jobs drain, not after the stream."""
    capacity = cap(4)
    running = [run(90 + i, cpus=(i,), end=10 * (i + 1)) for i in range(4)]
    stream = [job(10 + k, runtime=30, prio=5) for k in range(2)]
    wide = job(1, cpus=4, runtime=5, prio=0)
    later = [job(20 + k, runtime=30, prio=0) for k in range(20)]
    starts = simulate(capacity, running, [*stream, wide, *later])
    assert starts[10] == 10 and starts[11] == 20  # higher priority first
    assert starts[1] == 50  # when jobs 11 and 12 (started at 10 and 20) and the running ones are done
    assert all(starts[j.job_id] >= 55 for j in later)


# --- queue-depth mode ------------------------------------------------------------------------


def test_queue_depth_mode_ignores_resources_but_not_time():
    capacity = cap(1, mem=0)
    running = [run(9, end=50)]
    candidates = [job(1, cpus=100, gpus=3, mem=10**15), job(2, runtime=500), job(3), job(4)]
    placed = checked_pack(capacity, running, candidates, now=0, end_time=200, max_parallel_jobs=3)
    assert [(p.job_id, p.cpu_ids, p.gpu_ids, p.memory_bytes) for p in placed] == [(1, (), (), 0), (3, (), (), 0)]
    assert checked_pack(capacity, running, candidates, now=0, end_time=None, max_parallel_jobs=1) == []
    assert checked_pack(capacity, [], candidates, now=0, end_time=None, max_parallel_jobs=0) == []
    with pytest.raises(ValueError):
        pack(capacity, [], candidates, now=0, end_time=None, max_parallel_jobs=-1)


# --- input validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "capacity, running, candidates",
    [
        pytest.param(cap(2), [run(9, cpus=(2,))], [], id="cpu-outside-capacity"),
        pytest.param(cap(2, gpus=("0",)), [run(9, gpus=("1",))], [], id="gpu-outside-capacity"),
        pytest.param(cap(2), [run(8, cpus=(0,)), run(9, cpus=(0, 1))], [], id="cpu-held-twice"),
        pytest.param(cap(2, gpus=("0",)), [run(8, gpus=("0",)), run(9, gpus=("0",))], [], id="gpu-held-twice"),
        pytest.param(cap(2), [run(9, cpus=(1, 1))], [], id="cpu-twice-in-one-job"),
        pytest.param(cap(2, mem=GB), [run(8, mem=GB), run(9, mem=1)], [], id="memory-over-capacity"),
        pytest.param(cap(2), [run(9)], [job(9)], id="candidate-already-running"),
        pytest.param(cap(2), [], [job(1), job(1)], id="duplicate-candidate"),
        pytest.param(cap(2), [], [job(1, cpus=-1)], id="negative-requirement"),
        pytest.param(NodeCapacity((0, 0), (), GB), [], [], id="duplicate-capacity-cpu"),
    ],
)
def test_inconsistent_input_is_a_value_error(capacity, running, candidates):
    with pytest.raises(ValueError):
        pack(capacity, running, candidates, now=0, end_time=None)


# --- hypothesis properties ---------------------------------------------------------------------


# Times on a coarse grid so that ties (jobs ending together, a job ending exactly at the shadow
# time or at end_time - buffer) are common: the boundaries are where packing rules go wrong.
_TICKS = st.integers(0, 12).map(lambda k: 25 * k)


def _size(limit: int, small: Sequence[int] = (0, 1, 1, 2)) -> st.SearchStrategy[int]:
    """Mostly small requests (so several jobs share the node), sometimes up to past the limit."""
    return st.sampled_from(small) | st.integers(0, limit + 1)


@st.composite
def scenarios(draw):
    cpu_ids = draw(st.lists(st.integers(0, 31), min_size=1, max_size=10, unique=True))
    gpu_ids = draw(st.lists(st.sampled_from([str(i) for i in range(8)]), max_size=4, unique=True))
    memory = draw(st.integers(0, 16))
    now = float(draw(st.integers(0, 100)))
    free_cpus, free_gpus, free_mem, running = list(cpu_ids), list(gpu_ids), memory, []
    for job_id in range(draw(st.integers(0, 6))):
        cpus = draw(st.permutations(free_cpus))[: draw(_size(len(free_cpus)))]
        gpus = draw(st.permutations(free_gpus))[: draw(_size(len(free_gpus)))]
        mem = min(draw(_size(free_mem)), free_mem)
        free_cpus = [c for c in free_cpus if c not in cpus]
        free_gpus = [g for g in free_gpus if g not in gpus]
        free_mem -= mem
        running.append(Placement(job_id, tuple(cpus), tuple(gpus), mem, now - 25 + draw(_TICKS)))
    candidates = [
        Candidate(
            100 + i,
            draw(_size(len(cpu_ids))),
            draw(_size(len(gpu_ids), (0, 0, 0, 1))),  # GPU jobs rarer, so CPU-only nodes still pack
            draw(_size(memory)),
            draw(_TICKS),
        )
        for i in range(draw(st.integers(0, 14)))
    ]
    end_time = draw(st.none() | _TICKS.map(lambda d: now + 2 * d))
    buffer_s = float(draw(st.sampled_from([0, 10, 25])))
    return NodeCapacity(tuple(cpu_ids), tuple(gpu_ids), memory), running, candidates, now, end_time, buffer_s


@st.composite
def blocked_scenarios(draw):
    """A busy node, a job near the head that fits the node but not the free resources, and
    small jobs behind it: exercises the reservation and the backfill decisions it makes."""
    n_cpus, n_gpus, memory = draw(st.integers(2, 10)), draw(st.integers(0, 3)), draw(st.integers(2, 12))
    capacity = NodeCapacity(tuple(range(n_cpus)), tuple(str(i) for i in range(n_gpus)), memory)
    now = 100.0
    cpus, gpus, mem, running = list(capacity.cpu_ids), list(capacity.gpu_ids), memory, []
    keep_free = draw(st.integers(0, n_cpus - 1))
    while len(cpus) > keep_free:
        take_c = min(draw(st.integers(1, 3)), len(cpus) - keep_free)
        take_g, take_m = draw(st.integers(0, 1)), min(draw(st.integers(0, 2)), mem)
        held_c, cpus = tuple(cpus[:take_c]), cpus[take_c:]
        held_g, gpus = tuple(gpus[:take_g]), gpus[take_g:]
        mem -= take_m
        running.append(Placement(len(running), held_c, held_g, take_m, now - 25 + draw(_TICKS)))
    free = (len(cpus), len(gpus), mem)
    total = (n_cpus, n_gpus, memory)
    dims = [i for i in range(3) if free[i] < total[i]]
    if not dims:
        return draw(scenarios())
    needs = [min(f, draw(st.integers(0, 1))) for f in free]
    dim = draw(st.sampled_from(dims))
    needs[dim] = draw(st.integers(free[dim] + 1, total[dim]))
    small = [
        Candidate(100 + i, draw(st.sampled_from([0, 1, 1, 1, 2])), draw(st.sampled_from([0, 0, 0, 1])),
                  draw(st.sampled_from([0, 0, 1, 1, 2])), draw(_TICKS))
        for i in range(draw(st.integers(2, 12)))
    ]
    position = draw(st.integers(0, 2))
    candidates = [*small[:position], Candidate(99, *needs, draw(_TICKS)), *small[position:]]
    end_time = draw(st.sampled_from([None, None, now + 300, now + 600]))
    return capacity, running, candidates, now, end_time, float(draw(st.sampled_from([0, 10, 25])))


def _amount(x) -> tuple[int, int, int]:
    if isinstance(x, Candidate):
        return (x.num_cpus, x.num_gpus, x.memory_bytes)
    return (len(x.cpu_ids), len(x.gpu_ids), x.memory_bytes)


def _within(a, b) -> bool:
    return all(x <= y for x, y in zip(a, b))


def _sub(a, b) -> tuple[int, int, int]:
    return tuple(x - y for x, y in zip(a, b))


def _held_after(busy, t, now) -> tuple[int, int, int]:
    """Resources still held just after time t (a job past its expected_end ends at `now`)."""
    held = [_amount(p) for p in busy if max(p.expected_end, now) > t]
    return tuple(sum(h[i] for h in held) for i in range(3))


def _oracle_shadow(total, busy, cand, now) -> float:
    """Brute force: the first release time at which the candidate fits."""
    for t in sorted({now, *(max(p.expected_end, now) for p in busy)}):
        if _within(_amount(cand), _sub(total, _held_after(busy, t, now))):
            return t
    return math.inf


def _oracle_wide(total, c) -> bool:
    return c.num_nodes > 1 or any(2 * need > have for need, have in zip(_amount(c), total))


def _oracle_plan(total, candidates) -> list:
    """Consecutive candidates of one known priority form a run (None: a run of its own); each run
    is stably sorted wide-first."""
    runs: list[list] = []
    for c in candidates:
        if runs and c.priority is not None and runs[-1][0].priority == c.priority:
            runs[-1].append(c)
        else:
            runs.append([c])
    return [c for r in runs for c in sorted(r, key=lambda c: not _oracle_wide(total, c))]


def check_against_oracle(capacity, running, candidates, placed, now, end_time, buffer_s, not_before=None):
    """Replay the candidates in plan order: a job is placed iff greedy packing under the (single)
    EASY reservation allows it; every job left out although it fits the free resources and the
    time window is explained by that reservation; the reservation is kept at its shadow time
    (for a job with a later not_before, at that time if it is later). -> (holder, shadow) or None."""
    total = (len(capacity.cpu_ids), len(capacity.gpu_ids), capacity.memory_bytes)
    waits = {k: v for k, v in (not_before or {}).items() if v > now}
    by_id = {p.job_id: p for p in placed}
    busy = list(running)
    holder = None  # (candidate, shadow time)
    for c in _oracle_plan(total, candidates):
        p = by_id.get(c.job_id)
        in_time = end_time is None or now + c.runtime_s <= end_time - buffer_s
        if not _within(_amount(c), total) or not in_time:
            assert p is None
            continue
        fits_free = _within(_amount(c), _sub(total, _held_after(busy, -math.inf, now))) and c.job_id not in waits
        if not fits_free:
            assert p is None
        if holder is None:
            if fits_free:
                assert p is not None, f"{c} fits and nothing is reserved, yet it was not placed"
            else:
                shadow = max(_oracle_shadow(total, busy, c, now), waits.get(c.job_id, now))
                if end_time is None or shadow + c.runtime_s <= end_time - buffer_s:
                    holder = (c, shadow)
        elif fits_free:
            reserved, shadow = holder
            extra = _sub(_sub(total, _held_after(busy, shadow, now)), _amount(reserved))
            allowed = now + c.runtime_s <= shadow or _within(_amount(c), extra)
            assert (p is not None) == allowed, f"{c} vs reservation of {reserved} at {shadow}"
        if p is not None:
            busy.append(p)
    if holder is not None:  # the reserved job can still start at its shadow time
        reserved, shadow = holder
        assert _within(_amount(reserved), _sub(total, _held_after(busy, shadow, now)))
    return holder


@st.composite
def planned(draw, base):
    """A scenario whose candidates carry priorities (none, sorted best first as the queue hands
    them, or in any order), sometimes a gang (num_nodes 2), and a not_before map."""
    capacity, running, candidates, now, end_time, buffer_s = draw(base)
    mode = draw(st.sampled_from(["none", "sorted", "sorted", "any"]))
    prios = [draw(st.none() | st.integers(0, 2)) if mode == "any" else draw(st.integers(0, 2)) for _ in candidates]
    if mode == "sorted":
        prios.sort(reverse=True)
    candidates = [Candidate(c.job_id, c.num_cpus, c.num_gpus, c.memory_bytes, c.runtime_s,
                            None if mode == "none" else prio, draw(st.sampled_from([1, 1, 1, 2])))
                  for c, prio in zip(candidates, prios)]
    not_before = {c.job_id: now - 25 + draw(_TICKS) for c in candidates if draw(st.integers(0, 4)) == 0}
    return capacity, running, candidates, now, end_time, buffer_s, not_before


@settings(max_examples=600, deadline=None)
@given(scenarios() | blocked_scenarios())
def test_property_invariants_and_oracle(scenario):
    capacity, running, candidates, now, end_time, buffer_s = scenario
    placed = checked_pack(capacity, running, candidates, now=now, end_time=end_time, buffer_s=buffer_s)
    check_against_oracle(capacity, running, candidates, placed, now, end_time, buffer_s)


@settings(max_examples=600, deadline=None)
@given(planned(scenarios() | blocked_scenarios()))
def test_property_plan_order_invariants_and_oracle(scenario):
    """With priorities, gangs and not_before: no over-subscription, the time rule, and EASY in plan
    order against the oracle (its own plan order, written independently)."""
    capacity, running, candidates, now, end_time, buffer_s, not_before = scenario
    placed = checked_pack(capacity, running, candidates, now=now, end_time=end_time, buffer_s=buffer_s,
                          not_before=not_before)
    check_against_oracle(capacity, running, candidates, placed, now, end_time, buffer_s, not_before)


@settings(max_examples=400, deadline=None)
@given(planned(scenarios() | blocked_scenarios()))
def test_property_lower_priorities_change_nothing_for_higher_ones(scenario):
    """Candidates best first (priorities non-increasing): for every priority p, the placements of
    the candidates of priority >= p are exactly what packing those candidates alone gives, with the
    same CPU and GPU ids. So a lower-priority job neither takes a higher one's place nor moves the
    reservation a higher one holds."""
    capacity, running, candidates, now, end_time, buffer_s, not_before = scenario
    candidates = sorted(candidates, key=lambda c: -(c.priority or 0))
    candidates = [Candidate(c.job_id, c.num_cpus, c.num_gpus, c.memory_bytes, c.runtime_s, c.priority or 0,
                            c.num_nodes) for c in candidates]
    everything = pack(capacity, running, candidates, now=now, end_time=end_time, buffer_s=buffer_s,
                      not_before=not_before)
    for level in {c.priority for c in candidates}:
        high = [c for c in candidates if c.priority >= level]
        alone = pack(capacity, running, high, now=now, end_time=end_time, buffer_s=buffer_s, not_before=not_before)
        ids_high = {c.job_id for c in high}
        assert [p for p in everything if p.job_id in ids_high] == alone


@settings(max_examples=300, deadline=None)
@given(planned(scenarios() | blocked_scenarios()), st.integers(0, 16))
def test_property_prefix_of_the_plan_order(scenario, cut):
    """plan_order is idempotent, and packing a prefix of a list already in plan order gives the
    same placements for that prefix as packing the whole list (what Runner._pack's prefix cut
    relies on; with priorities it must cut the plan-ordered list, not the given one)."""
    capacity, running, candidates, now, end_time, buffer_s, not_before = scenario
    planned_list = plan_order(capacity, candidates)
    assert plan_order(capacity, planned_list) == planned_list
    assert plan_order(capacity, planned_list[:cut]) == planned_list[:cut]
    kwargs = {"now": now, "end_time": end_time, "buffer_s": buffer_s, "not_before": not_before}
    whole = pack(capacity, running, planned_list, **kwargs)
    prefix_ids = {c.job_id for c in planned_list[:cut]}
    assert pack(capacity, running, planned_list[:cut], **kwargs) == [p for p in whole if p.job_id in prefix_ids]


@settings(max_examples=150, deadline=None)
@given(planned(blocked_scenarios()))
def test_property_reserved_job_starts_by_its_shadow_time(scenario):
    """Drive pack like the runner (jobs end exactly at expected_end; no end time): at every call
    the oracle names the reservation holder and its shadow time, and that job starts by then. So no
    job that fits the node is starved, wide or gang ones included; and every job starts."""
    capacity, running, candidates, now, _end, _buffer, not_before = scenario
    total = (len(capacity.cpu_ids), len(capacity.gpu_ids), capacity.memory_bytes)
    queue = [c for c in candidates if _within(_amount(c), total)]
    running, starts, promised = list(running), {}, {}
    for _ in range(10 * len(queue) + 10):
        if not queue:
            break
        placed = checked_pack(capacity, running, queue, now=now, end_time=None, not_before=not_before)
        holder = check_against_oracle(capacity, running, queue, placed, now, None, 0.0, not_before)
        if holder is not None:
            promised[holder[0].job_id] = min(promised.get(holder[0].job_id, math.inf), holder[1])
        for p in placed:
            starts[p.job_id] = now
        running += placed
        queue = [c for c in queue if c.job_id not in starts]
        if any(p.expected_end <= now for p in running):  # overrun (or zero-length) jobs end now
            running = [p for p in running if p.expected_end > now]
            continue
        events = [p.expected_end for p in running]
        events += [t for t in not_before.values() if t > now]
        if not events:
            assert not queue, f"{queue} can never start"
            break
        now = min(events)
        running = [p for p in running if p.expected_end > now]
    assert not queue
    for job_id, shadow in promised.items():
        assert starts[job_id] <= shadow


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_property_deterministic(scenario):
    capacity, running, candidates, now, end_time, buffer_s = scenario
    first = pack(capacity, running, candidates, now=now, end_time=end_time, buffer_s=buffer_s)
    again = pack(capacity, list(running), list(candidates), now=now, end_time=end_time, buffer_s=buffer_s)
    assert first == again


@settings(max_examples=200, deadline=None)
@given(scenarios(), st.integers(0, 8))
def test_property_queue_depth(scenario, depth):
    capacity, running, candidates, now, end_time, buffer_s = scenario
    placed = checked_pack(
        capacity, running, candidates, now=now, end_time=end_time, buffer_s=buffer_s, max_parallel_jobs=depth
    )
    in_time = [c.job_id for c in candidates if end_time is None or now + c.runtime_s <= end_time - buffer_s]
    assert [p.job_id for p in placed] == in_time[: max(0, depth - len(running))]
