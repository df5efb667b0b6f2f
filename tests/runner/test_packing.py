"""Tests for torc_slurm.runner.packing: table-driven cases, EASY-backfill starvation checks,
queue-depth mode, input validation, and hypothesis properties against an independent oracle."""

from __future__ import annotations

import math
from typing import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torc_slurm.runner.packing import Candidate, NodeCapacity, Placement, fits_node, fits_time, pack

GB = 1024**3


# --- tiny builders ---------------------------------------------------------------------------


def cap(cpus: int | Sequence[int] = 4, gpus: Sequence[str] = (), mem: int = 16 * GB) -> NodeCapacity:
    cpu_ids = tuple(range(cpus)) if isinstance(cpus, int) else tuple(cpus)
    return NodeCapacity(cpu_ids, tuple(gpus), mem)


def job(job_id: int, cpus: int = 1, gpus: int = 0, mem: int = GB, runtime: int = 100) -> Candidate:
    return Candidate(job_id, cpus, gpus, mem, runtime)


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
) -> None:
    """No id given twice, all ids within capacity, sums within capacity, time rule respected,
    each placement matches its candidate, placements come in candidate order."""
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
        assert p.expected_end == now + c.runtime_s
        assert end_time is None or now + c.runtime_s <= end_time - buffer_s, "time rule"
        if queue_depth is None:
            assert (len(p.cpu_ids), len(p.gpu_ids), p.memory_bytes) == (c.num_cpus, c.num_gpus, c.memory_bytes)
            assert fits_node(capacity, c)
        else:
            assert (p.cpu_ids, p.gpu_ids, p.memory_bytes) == ((), (), 0)


def checked_pack(capacity, running, candidates, *, now=0.0, end_time=None, buffer_s=0.0, max_parallel_jobs=None):
    placed = pack(
        capacity, running, candidates, now=now, end_time=end_time, buffer_s=buffer_s,
        max_parallel_jobs=max_parallel_jobs,
    )
    validate(
        capacity, running, placed, candidates=candidates, now=now, end_time=end_time,
        buffer_s=buffer_s, queue_depth=max_parallel_jobs,
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


def check_against_oracle(capacity, running, candidates, placed, now, end_time, buffer_s) -> None:
    """Replay the candidates: a job is placed iff greedy packing under the (single) EASY
    reservation allows it; every job left out although it fits the free resources and the
    time window is explained by that reservation; the reservation is kept at its shadow time."""
    total = (len(capacity.cpu_ids), len(capacity.gpu_ids), capacity.memory_bytes)
    by_id = {p.job_id: p for p in placed}
    busy = list(running)
    holder = None  # (candidate, shadow time)
    for c in candidates:
        p = by_id.get(c.job_id)
        in_time = end_time is None or now + c.runtime_s <= end_time - buffer_s
        if not _within(_amount(c), total) or not in_time:
            assert p is None
            continue
        fits_free = _within(_amount(c), _sub(total, _held_after(busy, -math.inf, now)))
        if not fits_free:
            assert p is None
        if holder is None:
            if fits_free:
                assert p is not None, f"{c} fits and nothing is reserved, yet it was not placed"
            else:
                shadow = _oracle_shadow(total, busy, c, now)
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


@settings(max_examples=600, deadline=None)
@given(scenarios() | blocked_scenarios())
def test_property_invariants_and_oracle(scenario):
    capacity, running, candidates, now, end_time, buffer_s = scenario
    placed = checked_pack(capacity, running, candidates, now=now, end_time=end_time, buffer_s=buffer_s)
    check_against_oracle(capacity, running, candidates, placed, now, end_time, buffer_s)


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
