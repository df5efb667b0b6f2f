"""How many allocations of which scheduler a workflow needs: the runner's packer, simulated.

Pure. Input: the unfinished jobs as resource shapes with counts and dependency stages
(``fit.JobShape``; stage 1 = ready now or blocked only by finished jobs, stage n = longest chain of
unfinished prerequisites + 1), and what one allocation of each scheduler offers (``fit.Offer``).

Model, stage by stage (a stage starts when the one before it has finished, as a barrier would):

* A job bound to a scheduler goes to it; an unbound job to the first scheduler it fits (as
  ``torc submit`` sizes them). Jobs that fit none are counted as ``unplaceable``.
* One *node run* is a fresh node of the scheduler's partition with the allocation's walltime: the
  packer (``runner.packing.pack``, the same function the runner calls) starts jobs at t = 0 and
  at every job end, until nothing more fits the time left (walltime less the end buffer).
  Node runs are taken one after another from the stage's remaining jobs until none is left; a run
  identical to the one before it (same candidates all along) is repeated arithmetically instead of
  simulated again, so the cost grows with the number of distinct runs, not with the job count.
* A gang job of k nodes counts as k per-node jobs of its shape (an approximation: the plan assumes
  its members line up).
* Allocations for the stage = ceil(node runs / the scheduler's nodes). Stage time = the mean length
  of its node runs (the work spread over the nodes running in parallel), at least its longest job.
  Node-hours = the node time the runs keep busy. Makespan = sum over stages of the longest stage
  time among the schedulers (queue waits not included).
* Consecutive stages whose times add up to at most the usable walltime share allocations (a
  *wave*): the scheduler's total is, per wave, the allocations of its widest stage. That total is
  what ``torc submit`` submits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from torc_slurm.runner.packing import Candidate, NodeCapacity, Placement, pack
from torc_slurm.slurm.fit import JobShape, Offer, shortfalls

MAX_CANDIDATES_PER_SHAPE = 512
_UNKNOWN = 1 << 29


@dataclass
class StagePlan:
    stage: int
    jobs: int
    node_runs: int
    allocations: int
    node_hours: float
    duration_s: float


@dataclass
class SchedulerPlan:
    scheduler: str
    nodes: int
    walltime_s: int
    usable_s: int = 0                  # walltime less the end buffer
    stages: list[StagePlan] = field(default_factory=list)

    def waves(self) -> list[list[StagePlan]]:
        """Consecutive stages that one set of allocations runs one after the other: a stage joins
        the current wave while the wave's stage times, its own included, fit the usable walltime."""
        waves: list[list[StagePlan]] = []
        elapsed = 0.0
        for stage in self.stages:
            if waves and elapsed + stage.duration_s <= self.usable_s:
                waves[-1].append(stage)
                elapsed += stage.duration_s
            else:
                waves.append([stage])
                elapsed = stage.duration_s
        return waves

    @property
    def allocations(self) -> int:
        """Per wave, as many allocations as its widest stage needs."""
        return sum(max(s.allocations for s in wave) for wave in self.waves())

    @property
    def jobs(self) -> int:
        return sum(s.jobs for s in self.stages)


@dataclass
class Plan:
    schedulers: list[SchedulerPlan]
    makespan_s: float
    unplaceable: int
    stages: int

    def to_dict(self) -> dict:
        return {"makespan_s": round(self.makespan_s, 1), "unplaceable_jobs": self.unplaceable, "stages": self.stages,
                "schedulers": [{"scheduler": s.scheduler, "nodes": s.nodes, "walltime_s": s.walltime_s,
                                "allocations": s.allocations, "jobs": s.jobs,
                                "waves": [[st.stage for st in wave] for wave in s.waves()],
                                "stages": [{"stage": st.stage, "jobs": st.jobs, "node_runs": st.node_runs,
                                            "allocations": st.allocations, "node_hours": round(st.node_hours, 3),
                                            "duration_s": round(st.duration_s, 1)} for st in s.stages]}
                               for s in self.schedulers]}


def assign(shapes: Sequence[JobShape], offers: Sequence[Offer]) -> tuple[dict[str, list[JobShape]], int]:
    """scheduler -> its shapes (bound ones, and unbound ones that fit it first), and the count of
    jobs no scheduler can run (too big, or longer than its walltime)."""
    by_name = {o.scheduler: o for o in offers}
    out: dict[str, list[JobShape]] = {o.scheduler: [] for o in offers}
    lost = 0
    for shape in shapes:
        if shape.scheduler is not None:
            target = by_name.get(shape.scheduler)
            target = target if target is not None and not shortfalls(shape, target) else None
        else:
            target = next((o for o in offers if not shortfalls(shape, o)), None)
        if target is None:
            lost += shape.count
        else:
            out[target.scheduler].append(shape)
    return out, lost


def make_plan(shapes: Sequence[JobShape], offers: Sequence[Offer]) -> Plan:
    assigned, lost = assign(shapes, offers)
    stages = sorted({s.stage for s in shapes})
    plans = []
    stage_time: dict[int, float] = {}
    for o in offers:
        plan = SchedulerPlan(o.scheduler, o.nodes, o.walltime_s, o.usable_s)
        mine = assigned[o.scheduler]
        for stage in stages:
            pool = [s for s in mine if s.stage == stage]
            if not pool:
                continue
            result = plan_stage(pool, o)
            plan.stages.append(result)
            stage_time[stage] = max(stage_time.get(stage, 0.0), result.duration_s)
        plans.append(plan)
    return Plan(plans, sum(stage_time.values()), lost, len(stages))


def _node(o: Offer, shapes: Sequence[JobShape]) -> NodeCapacity:
    """The node a run packs: the offer's, or (partition unknown) one as big as the biggest job."""
    cpus = o.cpus if o.cpus < _UNKNOWN else max(s.num_cpus for s in shapes)
    memory = o.memory_bytes if o.memory_bytes < 1 << 61 else max(s.memory_bytes for s in shapes)
    return NodeCapacity(tuple(range(cpus)), tuple(str(i) for i in range(o.gpus)), memory)


def _per_node_fit(shape: JobShape, node: NodeCapacity) -> int:
    """How many jobs of ``shape`` an empty node holds at once (>= 1 for a shape that fits)."""
    limits = [len(node.cpu_ids) // max(shape.num_cpus, 1)]
    if shape.num_gpus:
        limits.append(len(node.gpu_ids) // shape.num_gpus)
    if shape.memory_bytes:
        limits.append(node.memory_bytes // shape.memory_bytes)
    return max(1, min(min(limits), MAX_CANDIDATES_PER_SHAPE))


def plan_stage(shapes: Sequence[JobShape], o: Offer) -> StagePlan:
    """The node runs one stage's jobs (all fitting ``o``) need, as the packer would fill them."""
    node = _node(o, shapes)
    # Best first, as the runner's claim order does by default (gpus, runtime, memory, descending).
    order = sorted(range(len(shapes)), key=lambda i: (-shapes[i].num_gpus, -shapes[i].runtime_s,
                                                      -shapes[i].memory_bytes))
    shapes = [shapes[i] for i in order]
    remaining = [s.count * s.num_nodes for s in shapes]
    fits = [_per_node_fit(s, node) for s in shapes]
    jobs = sum(s.count for s in shapes)
    runs = 0
    busy_s = 0.0
    longest = max(s.runtime_s for s in shapes)
    while any(remaining):
        consumed, end = _node_run(shapes, remaining, fits, node, o)
        if not any(consumed):  # cannot happen for shapes that fit; guard against looping
            break
        repeats = 1
        used = [i for i, c in enumerate(consumed) if c]
        if all(remaining[i] >= consumed[i] + fits[i] for i in used):
            repeats += min((remaining[i] - consumed[i] - fits[i]) // consumed[i] for i in used)
        for i in used:
            remaining[i] -= consumed[i] * repeats
        runs += repeats
        busy_s += end * repeats
    allocations = math.ceil(runs / max(o.nodes, 1))
    duration = max(float(longest), busy_s / runs) if runs else 0.0
    return StagePlan(shapes[0].stage, jobs, runs, allocations, busy_s / 3600.0, duration)


def _node_run(shapes: Sequence[JobShape], remaining: list[int], fits: list[int], node: NodeCapacity,
              o: Offer) -> tuple[list[int], float]:
    """Simulate one node from t = 0 to the walltime: returns the jobs of each shape it ran and
    when its last job ended. ``remaining`` is not changed."""
    left = list(remaining)
    consumed = [0] * len(shapes)
    running: list[Placement] = []
    shape_of: dict[int, int] = {}
    next_id = 0
    now = 0.0
    last_end = 0.0
    while True:
        candidates = []
        for i, shape in enumerate(shapes):
            for _ in range(min(left[i], fits[i])):
                candidates.append(Candidate(next_id, shape.num_cpus, shape.num_gpus, shape.memory_bytes,
                                            shape.runtime_s))
                shape_of[next_id] = i
                next_id += 1
        placed = pack(node, running, candidates, now=now, end_time=float(o.walltime_s), buffer_s=float(o.buffer_s)) \
            if candidates else []
        for placement in placed:
            i = shape_of[placement.job_id]
            left[i] -= 1
            consumed[i] += 1
            running.append(placement)
            last_end = max(last_end, placement.expected_end)
        if not running:
            return consumed, last_end
        now = min(p.expected_end for p in running)
        running = [p for p in running if p.expected_end > now]
