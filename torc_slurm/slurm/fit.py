"""Can an allocation run the jobs it would serve? Pure: job shapes, a scheduler and what the
cluster's partitions offer in; problems and verdicts (with counts) out. No I/O: the CLI reads the
shapes (``allocations.job_shapes``, one grouped query) and the partitions (``allocations.cluster_info``).

Three levels, each a list of human sentences:

* ``scheduler_problems``: the scheduler itself against its partition (unknown partition, walltime
  over MaxTime, more nodes than MaxNodes or than the partition has, GRES its nodes lack).
* ``misfits``: job shapes bigger than every node of every partition their scheduler allows.
* ``serve_verdict``: of the jobs one allocation of a scheduler would serve (bound to it, or bound
  to none), how many can run in it, and why the others cannot ("202 jobs need 1 h; scheduler
  `short` gives 10 min").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from torc_slurm.slurm.partitions import ClusterInfo, NodeShape, PartitionInfo

_GRES_ITEM = re.compile(r"^([A-Za-z0-9_\-]+)(?::([A-Za-z0-9_.\-]+))?(?::(\d+))?$")


@dataclass(frozen=True)
class JobShape:
    """Jobs that need the same resources (per node for a gang) and are bound to the same scheduler."""

    scheduler: str | None
    num_nodes: int
    num_gpus: int
    memory_bytes: int
    runtime_s: int
    num_cpus: int
    count: int = 1
    stage: int = 1


@dataclass(frozen=True)
class Offer:
    """What one allocation of a scheduler gives one job: its nodes and the biggest of its nodes,
    for the walltime less the end-of-allocation buffer."""

    scheduler: str
    nodes: int
    cpus: int
    gpus: int
    memory_bytes: int
    walltime_s: int
    buffer_s: int

    @property
    def usable_s(self) -> int:
        return max(0, self.walltime_s - self.buffer_s)


@dataclass
class Verdict:
    scheduler: str
    served: int = 0                  # jobs this scheduler's allocation would serve
    runnable: int = 0                # of them, those that fit it
    reasons: dict[str, int] = field(default_factory=dict)   # sentence -> jobs

    @property
    def ok(self) -> bool:
        return self.served == 0 or self.runnable > 0

    def message(self) -> str:
        why = "; ".join(f"{text.format(n=n, jobs=_jobs(n), jobs_need=_jobs_need(n))}" for text, n in
                        sorted(self.reasons.items(), key=lambda item: -item[1]))
        return (f"none of the {self.served} unfinished job(s) scheduler `{self.scheduler}` would serve can run "
                f"in its allocation: {why}")


def _jobs(n: int) -> str:
    return f"{n} job" + ("" if n == 1 else "s")


def _jobs_need(n: int) -> str:
    return f"{n} job needs" if n == 1 else f"{n} jobs need"


def human_seconds(seconds: float) -> str:
    seconds = int(seconds)
    if seconds % 3600 == 0 and seconds >= 3600:
        return f"{seconds // 3600} h"
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    if seconds % 60 == 0 and seconds >= 60:
        return f"{seconds // 60} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds} s"


def gib(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.3g} GiB"


def parse_gres_request(text: str | None) -> dict[str, int]:
    """A scheduler's ``gres`` (``gpu:2``, ``gpu:a100:2``, ``gpu:1,nvme:1``) -> {name: count}."""
    wanted: dict[str, int] = {}
    for item in (text or "").split(","):
        match = _GRES_ITEM.match(item.strip())
        if not item.strip() or not match:
            continue
        name, kind, count = match.groups()
        if count is None and kind is not None and kind.isdigit():
            count = kind
        wanted[name] = wanted.get(name, 0) + int(count or 1)
    return wanted


def parse_slurm_size(text: str | None) -> int | None:
    """A scheduler's ``mem`` (``64G``, ``500M``, ``1T``, bare number = MiB) -> bytes."""
    if not text:
        return None
    match = re.fullmatch(r"(\d+)([KMGT]?)B?", text.strip().upper())
    if not match:
        return None
    value, unit = int(match.group(1)), match.group(2) or "M"
    return value * 2 ** {"K": 10, "M": 20, "G": 30, "T": 40}[unit]


def scheduler_problems(scheduler, partition_name: str | None, cluster: ClusterInfo) -> list[str]:
    """What is wrong with ``scheduler`` on ``cluster`` (empty: nothing known to be wrong).
    ``partition_name`` is the partition it would use (its own, the spec's default, or None: the
    cluster's default)."""
    where = f"scheduler `{scheduler.name}`"
    partition = cluster.partition(partition_name)
    if partition is None:
        if partition_name is None:
            return []
        known = ", ".join(p.name for p in cluster.partitions)
        return [f"{where}: partition {partition_name!r} does not exist ({cluster.source} lists: {known})"]
    problems = []
    if not partition.up:
        problems.append(f"{where}: partition {partition.name} is {partition.state}, not UP: its allocations "
                        "would wait until the site brings it back")
    limit = partition.max_time_for(scheduler.nodes)
    if limit is not None and scheduler.walltime_seconds > limit:
        binned = f" for {scheduler.nodes} nodes" if limit != partition.max_time_s else ""
        problems.append(f"{where}: walltime {scheduler.walltime} is over partition {partition.name}'s MaxTime "
                        f"{human_seconds(limit)}{binned} (field `walltime`)")
    if partition.max_nodes is not None and scheduler.nodes > partition.max_nodes:
        problems.append(f"{where}: {scheduler.nodes} nodes is more than partition {partition.name}'s "
                        f"MaxNodes {partition.max_nodes} (field `nodes`)")
    elif cluster.source == "slurm" and partition.nodes and scheduler.nodes > partition.total_nodes:
        # (a site table lists one node of each shape, not how many there are)
        problems.append(f"{where}: {scheduler.nodes} nodes is more than partition {partition.name} has "
                        f"({partition.total_nodes}) (field `nodes`)")
    for name, count in parse_gres_request(scheduler.gres).items():
        best = max((node.gres.get(name, 0) for node in partition.nodes), default=0)
        if partition.nodes and best < count:
            problems.append(f"{where}: gres {name}:{count} is more than any node of partition {partition.name} "
                            f"has ({name}:{best}) (field `gres`)")
    return problems


def offer(scheduler, partition: PartitionInfo | None, buffer_s: int) -> Offer:
    """What one allocation of ``scheduler`` gives one job. Without partition data, CPUs and memory
    are not limited (and GPUs only by the scheduler's gres)."""
    biggest = _biggest(partition.nodes) if partition and partition.nodes else None
    wanted = parse_gres_request(scheduler.gres).get("gpu", 0)
    memory = parse_slurm_size(scheduler.mem)
    node_memory = biggest.memory_bytes if biggest else None
    if memory is None or (node_memory is not None and node_memory < memory):
        memory = node_memory
    return Offer(scheduler.name, scheduler.nodes, biggest.cpus if biggest else 1 << 30, wanted,
                 memory if memory is not None else 1 << 62, scheduler.walltime_seconds, buffer_s)


def _biggest(nodes: Sequence[NodeShape]) -> NodeShape:
    return max(nodes, key=lambda n: (n.cpus, n.memory_bytes, n.gpus))


def shortfalls(shape: JobShape, o: Offer) -> list[str]:
    """Why one job of ``shape`` cannot run in an allocation offering ``o`` (empty: it fits). Each
    reason is a sentence with ``{jobs_need}`` for the count ("3 jobs need")."""
    out = []
    if shape.runtime_s > o.usable_s:
        out.append(f"{{jobs_need}} {human_seconds(shape.runtime_s)}; scheduler `{o.scheduler}` gives "
                   f"{human_seconds(o.walltime_s)}" + (f" less a {human_seconds(o.buffer_s)} end buffer"
                                                       if o.buffer_s else ""))
    if shape.num_nodes > o.nodes:
        out.append(f"{{jobs_need}} {shape.num_nodes} nodes; scheduler `{o.scheduler}` gives {o.nodes}")
    if shape.num_cpus > o.cpus:
        out.append(f"{{jobs_need}} {shape.num_cpus} CPUs; scheduler `{o.scheduler}`'s nodes have {o.cpus}")
    if shape.num_gpus > o.gpus:
        out.append(f"{{jobs_need}} {shape.num_gpus} GPUs; scheduler `{o.scheduler}` gives {o.gpus} per node"
                   + ("" if o.gpus else " (no gpu gres)"))
    if shape.memory_bytes > o.memory_bytes:
        out.append(f"{{jobs_need}} {gib(shape.memory_bytes)}; scheduler `{o.scheduler}` gives "
                   f"{gib(o.memory_bytes)} per node")
    return out


def serves(shape: JobShape, scheduler_name: str) -> bool:
    return shape.scheduler is None or shape.scheduler == scheduler_name


def serve_verdict(shapes: Iterable[JobShape], o: Offer) -> Verdict:
    """Of the jobs an allocation of ``o.scheduler`` would serve, how many fit it, and why not."""
    verdict = Verdict(o.scheduler)
    for shape in shapes:
        if not serves(shape, o.scheduler):
            continue
        verdict.served += shape.count
        why = shortfalls(shape, o)
        if not why:
            verdict.runnable += shape.count
        for reason in why:
            verdict.reasons[reason] = verdict.reasons.get(reason, 0) + shape.count
    return verdict


def misfits(shapes: Iterable[JobShape], offers: dict[str, Offer]) -> list[str]:
    """Sentences for jobs bigger than every allocation their scheduler allows (a job bound to a
    scheduler: that one; an unbound job: any), leaving runtime aside (``serve_verdict`` says it)."""
    counts: dict[str, int] = {}
    for shape in shapes:
        allowed = [offers[shape.scheduler]] if shape.scheduler in offers else list(offers.values())
        if not allowed:
            continue
        size_only = JobShape(shape.scheduler, shape.num_nodes, shape.num_gpus, shape.memory_bytes, 0,
                             shape.num_cpus)
        if all(shortfalls(size_only, o) for o in allowed):
            text = "; ".join(shortfalls(size_only, allowed[0]))
            if len(allowed) > 1:
                text += f" (and no other scheduler fits them: {', '.join(o.scheduler for o in allowed[1:])})"
            counts[text] = counts.get(text, 0) + shape.count
    return [text.format(jobs=_jobs(n), jobs_need=_jobs_need(n)) + " (bigger than every node their scheduler allows)"
            for text, n in counts.items()]
