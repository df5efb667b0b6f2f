"""What this runner may hand out on its node: CPU slots, GPU ids and memory.

Sources, first match wins (an explicit flag always wins):

* CPUs: ``num_cpus`` flag, else the smaller of ``SLURM_CPUS_ON_NODE`` and the size of the
  process affinity mask (``os.sched_getaffinity``; ``psutil.cpu_count()`` where that does not
  exist), with a warning when they differ: Slurm may count hyperthreads or claim more than the
  cgroup lets the runner use, and slots beyond the mask only oversubscribe the cores.
  The runner hands out slot ids ``0..N-1``; ``pin_plan`` maps them to OS CPU ids.
* Memory: ``memory_gb`` flag (GiB), else ``SLURM_MEM_PER_NODE`` (MiB; 0 means the whole
  node), else ``SLURM_MEM_PER_CPU`` x ``SLURM_CPUS_ON_NODE`` (set instead when the job used
  ``--mem-per-cpu``), else psutil's total memory.
* GPUs: the first non-empty of ``gpu_variable_names`` (default ``SLURM_JOB_GPUS``,
  ``CUDA_VISIBLE_DEVICES``, ``ROCR_VISIBLE_DEVICES``), a comma list such as ``0,1``; a
  ``gpu:`` prefix on an entry (``gpu:0``) is dropped, and the placeholders Slurm or users put
  there when there is no device (``NoDevFiles``, ``-1``) count as empty. With no variable
  there are no GPUs. The ``num_gpus`` flag keeps the first N detected ids (an error when
  fewer are detected) or, when none are, names them ``"0".."N-1"``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import psutil

from torc_slurm.runner.packing import NodeCapacity
from torc_slurm.spec.units import parse_gpu_ids

log = logging.getLogger(__name__)
_MIB = 1024**2
_GIB = 1024**3
# The visibility variables first: where Slurm constrains devices (cgroups), CUDA_VISIBLE_DEVICES is
# renumbered from 0 inside the job while SLURM_JOB_GPUS keeps the node's global ids.
DEFAULT_GPU_VARIABLES = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "SLURM_JOB_GPUS")


@dataclass(frozen=True)
class DetectedNode:
    """The capacity to pack into, the OS CPUs behind its slots, and where each figure came from."""

    capacity: NodeCapacity
    host_cpus: tuple[int, ...]
    sources: dict[str, str] = field(default_factory=dict)  # "cpus"/"memory"/"gpus" -> source


def detect_node(
    environ: Mapping[str, str] | None = None,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    memory_gb: float | None = None,
    gpu_variable_names: Sequence[str] = DEFAULT_GPU_VARIABLES,
    trust_slurm_cpus: bool = False,
) -> DetectedNode:
    """Detect the node's capacity (see the module docstring for the order of sources).

    ``trust_slurm_cpus``: take ``SLURM_CPUS_ON_NODE`` even above the affinity mask (an emulated
    cluster that declares more CPUs than the host has).

    Raises ValueError for a malformed Slurm variable, a non-positive flag, or ``num_gpus``
    above the number of GPUs the environment names."""
    env = os.environ if environ is None else environ
    host_cpus = _host_cpus()
    sources: dict[str, str] = {}

    slurm_cpus = _int_var(env, "SLURM_CPUS_ON_NODE")
    if num_cpus is not None:
        cpus, sources["cpus"] = int(_positive(num_cpus, "num_cpus")), "flag"
    elif slurm_cpus and (slurm_cpus <= len(host_cpus) or trust_slurm_cpus):
        cpus, sources["cpus"] = slurm_cpus, "SLURM_CPUS_ON_NODE"
    elif slurm_cpus:
        log.warning("SLURM_CPUS_ON_NODE=%d but this process may run on %d CPUs (its affinity mask): "
                    "using %d; pass --num-cpus to override", slurm_cpus, len(host_cpus), len(host_cpus))
        cpus, sources["cpus"] = len(host_cpus), "affinity (below SLURM_CPUS_ON_NODE)"
    else:
        cpus, sources["cpus"] = len(host_cpus), "affinity"

    mem_per_node = _int_var(env, "SLURM_MEM_PER_NODE")
    mem_per_cpu = _int_var(env, "SLURM_MEM_PER_CPU")
    if memory_gb is not None:
        memory, sources["memory"] = int(_positive(memory_gb, "memory_gb") * _GIB), "flag"
    elif mem_per_node:
        memory, sources["memory"] = mem_per_node * _MIB, "SLURM_MEM_PER_NODE"
    elif mem_per_cpu and slurm_cpus:
        memory, sources["memory"] = mem_per_cpu * slurm_cpus * _MIB, "SLURM_MEM_PER_CPU"
    else:
        memory, sources["memory"] = psutil.virtual_memory().total, "psutil"

    gpus, sources["gpus"] = (), "none"
    for name in gpu_variable_names:
        ids = parse_gpu_ids(env.get(name, ""))
        if ids:
            gpus, sources["gpus"] = ids, name
            break
    if num_gpus is not None:
        if num_gpus < 0:
            raise ValueError(f"num_gpus must be >= 0, not {num_gpus}")
        if not gpus:
            gpus = tuple(str(i) for i in range(num_gpus))
        elif num_gpus > len(gpus):
            raise ValueError(
                f"num_gpus={num_gpus} but {sources['gpus']} names only {len(gpus)}: {','.join(gpus)}"
            )
        else:
            gpus = gpus[:num_gpus]
        sources["gpus"] = "flag" if sources["gpus"] == "none" else f"flag+{sources['gpus']}"

    return DetectedNode(NodeCapacity(tuple(range(cpus)), gpus, memory), host_cpus, sources)


def pin_plan(
    host_cpus: Sequence[int], cpu_ids: Sequence[int], *, num_slots: int | None = None
) -> tuple[int, ...] | None:
    """The OS CPUs to pin a job holding slots ``cpu_ids`` to: ``host_cpus[i]`` for each slot i.

    None when exact pinning is impossible: the runner has more slots than host CPUs (pass
    ``num_slots`` so that every job gets the same answer), a slot has no host CPU, or the job
    holds no slot at all (queue-depth mode)."""
    if not cpu_ids or (num_slots is not None and num_slots > len(host_cpus)):
        return None
    if any(not 0 <= slot < len(host_cpus) for slot in cpu_ids):
        return None
    return tuple(host_cpus[slot] for slot in cpu_ids)


def _host_cpus() -> tuple[int, ...]:
    """The OS CPU ids this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return tuple(sorted(os.sched_getaffinity(0)))
    return tuple(range(psutil.cpu_count() or 1))


def _int_var(env: Mapping[str, str], name: str) -> int | None:
    """An integer Slurm variable; None when unset or empty."""
    text = env.get(name, "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not an integer") from None
    if value < 0:
        raise ValueError(f"{name}={text!r} is negative")
    return value


def _positive(value: float, name: str) -> float:
    if value <= 0:
        raise ValueError(f"{name} must be positive, not {value}")
    return value
