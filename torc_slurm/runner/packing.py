"""Packing: which ready jobs start now on this node, and with which CPU slots and GPUs.

Pure: no I/O and no clock reads (``now`` is passed in), so the same inputs give the same answer.

Resource-aware mode (``max_parallel_jobs is None``). Candidates arrive best first (priority, then
``jobs_sort_method``, then spec order). The packer first puts them in its *plan order*
(:func:`plan_order`), then takes them in that order:

* Plan order: wide jobs first within a priority. Among consecutive candidates of the same known
  ``priority``, the *wide* ones (a gang spanning several nodes, or more than half of the node's
  CPUs, GPUs or memory: two of them can never share the node) move ahead of the others; each
  group keeps its given order. Nothing crosses a priority boundary, and a candidate whose
  priority is None (unknown) is a run of its own, so without priorities the order is exactly
  the given one. In effect "wide first" is one more sort key, between the priority and
  ``jobs_sort_method``, and the plan order depends on the candidates only (not on the node's
  state), so everything EASY backfill guarantees below holds in that order from call to call:
  the reserved job starts by its shadow time, and a job is only ever overtaken by one of higher
  priority, or of the same priority that is wide while it is not.
  Why: a wide job can only start on a (nearly) empty node. Taken in the given order it sits
  mid-queue, and EASY backfill must drain the node for it, which leaves CPUs idle until the last
  job in its way ends. Planned first, the wide jobs run when the node is empty anyway (at the
  start, and each right after the one before it) and the narrow jobs fill the node after them.
  On ``benchmarks/packing.py`` this takes makespan / lower bound on seeds 1-7 from 1.019-1.094
  to 1.006-1.038 (RESULTS.md, "Packing"). Measured and not kept: moving a wide job first only
  when that leaves nothing idle (it fits now, or the node is full until it can start) gives the
  same figures there and is a little better when wide jobs become ready mid-run, but the order
  then depends on the node's state, so a job promised a reservation in one call could be
  overtaken by a wide job of its priority in the next.
* A candidate that can never fit the node (more CPUs, GPUs or memory than it has) is skipped;
  the caller reports it. So is one whose declared runtime does not fit the time left:
  ``now + runtime_s > end_time - buffer_s`` (``end_time`` None means no limit).
* A candidate that fits the free resources starts with the lowest-numbered free CPU slot ids
  (the lowest contiguous block of ids when one exists, else simply the lowest free ids) and
  the first free GPU ids in the capacity's order.
* Anti-starvation, EASY-backfill style: the first candidate (in plan order) that fits the node
  and the time window but not the free resources gets a reservation at its *shadow time*, the
  earliest time at which, as running and already-placed jobs end at their ``expected_end``,
  enough CPUs, GPUs and memory are free for it (a job past its ``expected_end`` counts as
  ending ``now``). Every later candidate may then start only if it fits the free resources now
  and either ends by the shadow time or fits in the *extra* resources: those still free at the
  shadow time once the reserved job has its share (each job started this way uses extra up).
  Only one reservation is made per call. A blocked candidate that could not finish in time
  even when starting at its shadow time gets none (it cannot run in this allocation) and
  the next blocked candidate may take the reservation instead.
* ``not_before`` (job id -> time): a candidate that may not start before that time (a gang
  member whose other nodes are busy until then) counts as blocked until it, even when it fits
  now; its shadow time is the later of its own and ``not_before``.

Placements come back in the given candidate order (not plan order), so a caller that keeps the
first N keeps the best-ranked ones.

Queue-depth mode (``max_parallel_jobs = N``): resources are ignored; the first candidates that
fit the time window start until N jobs run. Their placements hold no CPU/GPU ids and no memory.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple


@dataclass(frozen=True)
class NodeCapacity:
    """What this runner may hand out."""

    cpu_ids: tuple[int, ...]  # logical CPU slot ids
    gpu_ids: tuple[str, ...]  # device ids as the scheduler named them, e.g. ("2", "3")
    memory_bytes: int


@dataclass(frozen=True)
class Candidate:
    """A ready job. Candidates arrive best-first (priority / sort order)."""

    job_id: int
    num_cpus: int
    num_gpus: int
    memory_bytes: int
    runtime_s: int  # declared runtime
    # The job's priority. None: unknown, and the packer keeps this candidate where it was given.
    priority: int | None = None
    num_nodes: int = 1  # > 1: a gang; the requirements above are per node


@dataclass(frozen=True)
class Placement:
    """A job started now, or already running, and what it holds."""

    job_id: int
    cpu_ids: tuple[int, ...]
    gpu_ids: tuple[str, ...]
    memory_bytes: int
    expected_end: float  # start time + declared runtime


class _Amount(NamedTuple):
    cpus: int
    gpus: int
    memory: int

    def within(self, other: _Amount) -> bool:
        return self.cpus <= other.cpus and self.gpus <= other.gpus and self.memory <= other.memory

    def plus(self, other: _Amount) -> _Amount:
        return _Amount(self.cpus + other.cpus, self.gpus + other.gpus, self.memory + other.memory)

    def minus(self, other: _Amount) -> _Amount:
        return _Amount(self.cpus - other.cpus, self.gpus - other.gpus, self.memory - other.memory)


def _needs(candidate: Candidate) -> _Amount:
    return _Amount(candidate.num_cpus, candidate.num_gpus, candidate.memory_bytes)


def _holds(placement: Placement) -> _Amount:
    return _Amount(len(placement.cpu_ids), len(placement.gpu_ids), placement.memory_bytes)


def fits_node(capacity: NodeCapacity, candidate: Candidate) -> bool:
    """Could the candidate ever run on this node (with everything else finished)?"""
    total = _Amount(len(capacity.cpu_ids), len(capacity.gpu_ids), capacity.memory_bytes)
    return _needs(candidate).within(total)


def fits_time(candidate: Candidate, *, now: float, end_time: float | None, buffer_s: float) -> bool:
    """Does the declared runtime, started at ``now``, end by ``end_time - buffer_s``?"""
    return end_time is None or now + candidate.runtime_s <= end_time - buffer_s


def is_wide(capacity: NodeCapacity, candidate: Candidate) -> bool:
    """Can the candidate never share the node with another like it: a gang over several nodes,
    or more than half of the node's CPUs, GPUs or memory?"""
    return (candidate.num_nodes > 1 or 2 * candidate.num_cpus > len(capacity.cpu_ids)
            or 2 * candidate.num_gpus > len(capacity.gpu_ids) or 2 * candidate.memory_bytes > capacity.memory_bytes)


def plan_order(capacity: NodeCapacity, candidates: Sequence[Candidate]) -> list[Candidate]:
    """The order the packer takes candidates in: within each run of consecutive candidates of the
    same known priority, the wide ones (:func:`is_wide`) first, then the others, each group in
    the given order. A candidate with priority None is a run of its own. O(len(candidates))."""
    if all(c.priority is None for c in candidates):
        return list(candidates)
    order: list[Candidate] = []
    wide: list[Candidate] = []
    narrow: list[Candidate] = []
    priority: int | None = None
    for cand in candidates:
        if cand.priority is None or cand.priority != priority:
            order += wide
            order += narrow
            wide, narrow = [], []
            priority = cand.priority
        (wide if is_wide(capacity, cand) else narrow).append(cand)
    order += wide
    order += narrow
    return order


def shadow_time(capacity: NodeCapacity, busy: Sequence[Placement], candidate: Candidate, *, now: float) -> float:
    """Earliest time at or after ``now`` when ``candidate`` fits as the ``busy`` jobs end at their
    ``expected_end`` (``now`` if it fits already; ``math.inf`` if it never fits the node)."""
    if not fits_node(capacity, candidate):
        return math.inf
    free = _Amount(len(capacity.cpu_ids), len(capacity.gpu_ids), capacity.memory_bytes)
    for p in busy:
        free = free.minus(_holds(p))
    needs = _needs(candidate)
    return now if needs.within(free) else _shadow(busy, free, needs, now)[0]


def pack(
    capacity: NodeCapacity,
    running: Sequence[Placement],
    candidates: Sequence[Candidate],
    *,
    now: float,
    end_time: float | None,
    buffer_s: float = 0.0,
    max_parallel_jobs: int | None = None,
    not_before: Mapping[int, float] | None = None,
) -> list[Placement]:
    """The jobs to start now, in candidate order, each with its exact CPU slots and GPU ids.

    Raises ValueError on inconsistent input (a programming error): a running placement that
    names an id outside ``capacity`` or one another placement holds, running memory above
    capacity, duplicate job ids, negative requirements."""
    _check(capacity, running, candidates, resource_mode=max_parallel_jobs is None)
    waits = {job_id: when for job_id, when in (not_before or {}).items() if when > now}
    if max_parallel_jobs is not None:
        return _pack_queue_depth(running, [c for c in candidates if c.job_id not in waits], max_parallel_jobs,
                                 now, end_time, buffer_s)

    used_cpus = {cpu for p in running for cpu in p.cpu_ids}
    used_gpus = {gpu for p in running for gpu in p.gpu_ids}
    free_cpus = sorted(cpu for cpu in capacity.cpu_ids if cpu not in used_cpus)
    free_gpus = [gpu for gpu in capacity.gpu_ids if gpu not in used_gpus]
    free_memory = capacity.memory_bytes - sum(p.memory_bytes for p in running)
    total_cpus, total_gpus, total_memory = len(capacity.cpu_ids), len(capacity.gpu_ids), capacity.memory_bytes
    limit = None if end_time is None else end_time - buffer_s  # as fits_time computes it
    busy = list(running)  # everything holding resources: running, then placed by this call
    placed: dict[int, Placement] = {}
    shadow: float | None = None  # the reservation's shadow time, once there is one
    extra = _Amount(0, 0, 0)

    # Plain int comparisons in this loop: it sees every candidate of a window of hundreds, every cycle.
    for cand in plan_order(capacity, candidates):
        cpus, gpus, memory = cand.num_cpus, cand.num_gpus, cand.memory_bytes
        if cpus > total_cpus or gpus > total_gpus or memory > total_memory:
            continue  # never runs here (not fits_node): the caller reports it
        if limit is not None and now + cand.runtime_s > limit:
            continue  # not fits_time
        wait = waits.get(cand.job_id) if waits else None
        fits_free = cpus <= len(free_cpus) and gpus <= len(free_gpus) and memory <= free_memory
        if shadow is None:
            if not fits_free or wait is not None:
                needs = _Amount(cpus, gpus, memory)
                free = _Amount(len(free_cpus), len(free_gpus), free_memory)
                when = now if fits_free else _shadow(busy, free, needs, now)[0]
                if wait is not None:
                    when = max(when, wait)
                if fits_time(cand, now=when, end_time=end_time, buffer_s=buffer_s):
                    shadow, extra = when, _free_at(busy, free, when, now).minus(needs)
                continue
        else:
            if not fits_free or wait is not None:
                continue
            if now + cand.runtime_s > shadow:  # still running at the shadow time
                if cpus > extra.cpus or gpus > extra.gpus or memory > extra.memory:
                    continue
                extra = _Amount(extra.cpus - cpus, extra.gpus - gpus, extra.memory - memory)

        cpu_ids = _lowest_cpus(free_cpus, cpus)
        gpu_ids = tuple(free_gpus[:gpus])
        taken = set(cpu_ids)
        free_cpus = [cpu for cpu in free_cpus if cpu not in taken]
        free_gpus = free_gpus[gpus:]
        free_memory -= memory
        placement = Placement(cand.job_id, cpu_ids, gpu_ids, memory, now + cand.runtime_s)
        placed[cand.job_id] = placement
        busy.append(placement)
    return [placed[c.job_id] for c in candidates if c.job_id in placed] if placed else []


def _free_at(busy: Sequence[Placement], free: _Amount, when: float, now: float) -> _Amount:
    """What is free at ``when``: ``free`` now plus what every busy job ending by then holds."""
    available = free
    for p in busy:
        if max(p.expected_end, now) <= when:
            available = available.plus(_holds(p))
    return available


def _shadow(busy: Sequence[Placement], free: _Amount, needs: _Amount, now: float) -> tuple[float, _Amount]:
    """Earliest time ``needs`` is free as ``busy`` jobs end, and what is left over then."""
    ends = sorted((max(p.expected_end, now), _holds(p)) for p in busy)
    available = free
    for i, (when, holds) in enumerate(ends):
        available = available.plus(holds)
        if i + 1 < len(ends) and ends[i + 1][0] == when:
            continue  # release everything ending at the same moment first
        if needs.within(available):
            return when, available.minus(needs)
    return math.inf, _Amount(0, 0, 0)  # unreachable when the candidate fits the node


def _lowest_cpus(free_sorted: Sequence[int], count: int) -> tuple[int, ...]:
    """The lowest run of ``count`` consecutive free ids, else the ``count`` lowest free ids."""
    if count == 0:
        return ()
    for start in range(len(free_sorted) - count + 1):
        if free_sorted[start + count - 1] - free_sorted[start] == count - 1:
            return tuple(free_sorted[start : start + count])
    return tuple(free_sorted[:count])


def _pack_queue_depth(
    running: Sequence[Placement],
    candidates: Sequence[Candidate],
    max_parallel_jobs: int,
    now: float,
    end_time: float | None,
    buffer_s: float,
) -> list[Placement]:
    if max_parallel_jobs < 0:
        raise ValueError(f"max_parallel_jobs must be >= 0, not {max_parallel_jobs}")
    slots = max_parallel_jobs - len(running)
    placed: list[Placement] = []
    for cand in candidates:
        if len(placed) >= slots:
            break
        if fits_time(cand, now=now, end_time=end_time, buffer_s=buffer_s):
            placed.append(Placement(cand.job_id, (), (), 0, now + cand.runtime_s))
    return placed


def _check(
    capacity: NodeCapacity,
    running: Sequence[Placement],
    candidates: Sequence[Candidate],
    *,
    resource_mode: bool,
) -> None:
    """Raise ValueError on input only a caller bug can produce."""
    if len(set(capacity.cpu_ids)) != len(capacity.cpu_ids):
        raise ValueError(f"duplicate CPU ids in capacity: {capacity.cpu_ids}")
    if len(set(capacity.gpu_ids)) != len(capacity.gpu_ids):
        raise ValueError(f"duplicate GPU ids in capacity: {capacity.gpu_ids}")
    known_cpus, known_gpus = set(capacity.cpu_ids), set(capacity.gpu_ids)
    seen_cpus: set[int] = set()
    seen_gpus: set[str] = set()
    job_ids: set[int] = set()
    for p in running:
        for cpu in p.cpu_ids:
            if cpu not in known_cpus:
                raise ValueError(f"running job {p.job_id} holds CPU {cpu}, not in capacity")
            if cpu in seen_cpus:
                raise ValueError(f"CPU {cpu} is held twice (job {p.job_id})")
            seen_cpus.add(cpu)
        for gpu in p.gpu_ids:
            if gpu not in known_gpus:
                raise ValueError(f"running job {p.job_id} holds GPU {gpu!r}, not in capacity")
            if gpu in seen_gpus:
                raise ValueError(f"GPU {gpu!r} is held twice (job {p.job_id})")
            seen_gpus.add(gpu)
        if p.job_id in job_ids:
            raise ValueError(f"job {p.job_id} is running twice")
        job_ids.add(p.job_id)
    if resource_mode and sum(p.memory_bytes for p in running) > capacity.memory_bytes:
        raise ValueError("running jobs hold more memory than the capacity")
    for cand in candidates:
        if min(cand.num_cpus, cand.num_gpus, cand.memory_bytes, cand.runtime_s) < 0:
            raise ValueError(f"candidate {cand.job_id} has a negative requirement")
        if cand.job_id in job_ids:
            raise ValueError(f"candidate {cand.job_id} is already running or listed twice")
        job_ids.add(cand.job_id)
