"""Multi-node jobs: how one is started on the nodes its gang holds (pure).

A job with ``num_nodes: N`` holds its per-node CPUs, GPUs and memory on N runners of one
allocation (see `store.gangs`); the runner that claimed it starts it, by default through

    srun --overlap --nodes=N --ntasks=N --ntasks-per-node=1 --nodelist=<its nodes>
         --cpus-per-task=<its CPUs> --mem=<its memory> --kill-on-bad-exit=1 -- python -m torc_slurm.runner.node_exec …

``--overlap`` because the runners' own step already covers those nodes, and an explicit ``--mem``
because a step without one asks for all the memory, which the runners' step holds (Slurm 22.05); ``node_exec`` gives each
task the GPU ids its node set aside (in the site's visibility variable) before running the
command. With ``launcher: none`` the command runs once, on the first node, and starts its own
ranks (its own ``srun`` or ``mpiexec``). Either way the job sees ``TORC_NODELIST`` (comma-separated,
launching node first), ``TORC_NUM_NODES``, ``TORC_HOSTFILE`` (one node per line) and
``TORC_NODE_GPUS`` (JSON: node -> comma-separated GPU ids).
"""

from __future__ import annotations

import json
import math
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Launch:
    command: str
    env: dict[str, str]
    hostfile: str  # the text of TORC_HOSTFILE


def node_gpu_map(nodes: Sequence[str], gpu_ids: Sequence[Sequence[str]]) -> dict[str, str]:
    """Node -> its GPU ids for the job (comma-separated), in node order."""
    return {node: ",".join(ids) for node, ids in zip(nodes, gpu_ids)}


def launch(launcher: str | None, command: str, *, nodes: Sequence[str], cpus_per_node: int, memory_bytes: int,
           gpus: dict[str, str], gpu_variable: str, hostfile: Path, python: str = sys.executable) -> Launch:
    env = {"TORC_NODELIST": ",".join(nodes), "TORC_NUM_NODES": str(len(nodes)), "TORC_HOSTFILE": str(hostfile),
           "TORC_NODE_GPUS": json.dumps(gpus, separators=(",", ":"))}
    text = "".join(f"{node}\n" for node in nodes)
    if launcher == "none":
        return Launch(command, env, text)
    count = len(nodes)
    argv = ["srun", "--overlap", f"--nodes={count}", f"--ntasks={count}", "--ntasks-per-node=1",
            f"--nodelist={','.join(nodes)}", f"--cpus-per-task={cpus_per_node}",
            f"--mem={max(1, math.ceil(memory_bytes / 2**20))}M", "--kill-on-bad-exit=1",
            "--", python, "-m", "torc_slurm.runner.node_exec", gpu_variable, "bash", "-c", command]
    return Launch(shlex.join(argv), env, text)
