"""Pure readers of the environment Slurm gives a batch script or job step.

Each function takes a mapping (default ``os.environ``) and returns None when the variable is absent,
so callers can fall back to other sources (affinity mask, psutil). A variable that is present but
malformed is a SlurmError naming it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from torc_slurm.errors import SlurmError
from torc_slurm.spec.units import parse_gpu_ids

_MB = 1024 * 1024


def _env(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def _first(environ: Mapping[str, str] | None, *names: str) -> tuple[str, str] | None:
    env = _env(environ)
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return name, value
    return None


def _int(environ: Mapping[str, str] | None, *names: str) -> int | None:
    found = _first(environ, *names)
    if found is None:
        return None
    name, value = found
    if not value.isdigit():
        raise SlurmError(f"environment variable {name}={value!r} is not a whole number")
    return int(value)


def job_id(environ: Mapping[str, str] | None = None) -> str | None:
    """The allocation's job id (``SLURM_JOB_ID``)."""
    found = _first(environ, "SLURM_JOB_ID", "SLURM_JOBID")
    return found[1] if found else None


def node_name(environ: Mapping[str, str] | None = None) -> str | None:
    """This node's Slurm name (``SLURMD_NODENAME``), which may differ from its hostname."""
    found = _first(environ, "SLURMD_NODENAME")
    return found[1] if found else None


def num_nodes(environ: Mapping[str, str] | None = None) -> int | None:
    """Nodes in the allocation (``SLURM_JOB_NUM_NODES``, or ``SLURM_NNODES``)."""
    return _int(environ, "SLURM_JOB_NUM_NODES", "SLURM_NNODES")


def node_list(environ: Mapping[str, str] | None = None) -> str | None:
    """The allocation's nodes in Slurm's compressed form, e.g. ``cpu[1-2]`` (``SLURM_JOB_NODELIST``)."""
    found = _first(environ, "SLURM_JOB_NODELIST", "SLURM_NODELIST")
    return found[1] if found else None


def cpus_on_node(environ: Mapping[str, str] | None = None) -> int | None:
    """CPUs allocated on this node (``SLURM_CPUS_ON_NODE``)."""
    return _int(environ, "SLURM_CPUS_ON_NODE")


def mem_per_node_bytes(environ: Mapping[str, str] | None = None) -> int | None:
    """Memory allocated on this node in bytes: ``SLURM_MEM_PER_NODE`` (MB), else
    ``SLURM_MEM_PER_CPU`` (MB) times ``SLURM_CPUS_ON_NODE``. None when unknown or 0 (no limit)."""
    per_node = _int(environ, "SLURM_MEM_PER_NODE")
    if per_node:
        return per_node * _MB
    per_cpu, cpus = _int(environ, "SLURM_MEM_PER_CPU"), cpus_on_node(environ)
    if per_cpu and cpus:
        return per_cpu * cpus * _MB
    return None


def gpu_ids(
    environ: Mapping[str, str] | None = None, visibility_variable: str = "CUDA_VISIBLE_DEVICES"
) -> tuple[str, ...] | None:
    """GPU ids usable by this process, as the site's visibility variable names them.

    The visibility variable (``CUDA_VISIBLE_DEVICES``, ``ROCR_VISIBLE_DEVICES`` …) comes first,
    because those are the ids a child process must be given; ``SLURM_JOB_GPUS`` (or
    ``SLURM_STEP_GPUS``) is the fallback. ``()`` means none allocated, None means not in Slurm.
    """
    found = _first(environ, visibility_variable, "SLURM_STEP_GPUS", "SLURM_JOB_GPUS")
    if found is None:
        return None if job_id(environ) is None else ()
    name, value = found
    try:
        return parse_gpu_ids(value)
    except ValueError as exc:
        raise SlurmError(f"environment variable {name}={value!r}: {exc}") from None


@dataclass(frozen=True)
class Allocation:
    """What the Slurm environment says about the allocation this process runs in."""

    job_id: str
    node_name: str | None
    num_nodes: int | None
    node_list: str | None
    cpus_on_node: int | None
    mem_per_node_bytes: int | None
    gpu_ids: tuple[str, ...]


def read_allocation(
    environ: Mapping[str, str] | None = None, visibility_variable: str = "CUDA_VISIBLE_DEVICES"
) -> Allocation | None:
    """All of the above at once, or None when this process is not inside a Slurm allocation."""
    current = job_id(environ)
    if current is None:
        return None
    return Allocation(
        job_id=current,
        node_name=node_name(environ),
        num_nodes=num_nodes(environ),
        node_list=node_list(environ),
        cpus_on_node=cpus_on_node(environ),
        mem_per_node_bytes=mem_per_node_bytes(environ),
        gpu_ids=gpu_ids(environ, visibility_variable) or (),
    )
