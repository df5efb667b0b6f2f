"""Groups on one runner (pure): a group's members start together, so the packer sees each group
as one candidate, the sum of its members' CPUs, GPUs and memory, as long as its longest member.
Its placement is then split among the members in group rank order.

A composite candidate carries the id of its first member (ids are unique, so it cannot collide).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from torc_slurm.runner.packing import Candidate, Placement


def compose(candidates: Sequence[Candidate], group_of: Mapping[int, int]
            ) -> tuple[list[Candidate], dict[int, list[Candidate]]]:
    """``candidates`` with each group's members (``group_of``: job id -> group id) replaced by one
    candidate at the first member's place; and composite id -> its members, in order."""
    if not group_of:
        return list(candidates), {}
    by_group: dict[int, list[Candidate]] = {}
    for candidate in candidates:
        group = group_of.get(candidate.job_id)
        if group is not None:
            by_group.setdefault(group, []).append(candidate)
    result: list[Candidate] = []
    members: dict[int, list[Candidate]] = {}
    for candidate in candidates:
        group = group_of.get(candidate.job_id)
        if group is None:
            result.append(candidate)
        elif group in by_group:
            parts = by_group.pop(group)
            whole = Candidate(parts[0].job_id, sum(p.num_cpus for p in parts), sum(p.num_gpus for p in parts),
                              sum(p.memory_bytes for p in parts), max(p.runtime_s for p in parts),
                              parts[0].priority)
            members[whole.job_id] = parts
            result.append(whole)
    return result, members


def expand(job_ids: Iterable[int], members: Mapping[int, Sequence[Candidate]]) -> list[int]:
    """Composite ids back to their members' ids."""
    out: list[int] = []
    for job_id in job_ids:
        parts = members.get(job_id)
        out.extend([p.job_id for p in parts] if parts else [job_id])
    return out


def split(placement: Placement, parts: Sequence[Candidate]) -> list[Placement]:
    """A composite's placement shared out among its members, in order: each its own CPUs, GPUs and
    memory, all with the composite's expected end."""
    result = []
    cpu, gpu = 0, 0
    for part in parts:
        result.append(Placement(part.job_id, placement.cpu_ids[cpu:cpu + part.num_cpus],
                                placement.gpu_ids[gpu:gpu + part.num_gpus], part.memory_bytes,
                                placement.expected_end))
        cpu += part.num_cpus
        gpu += part.num_gpus
    return result
