"""How a multi-node job is started (pure command building), and the per-node task wrapper that
hands each node its own GPU ids (run for real, as srun would on each node)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from torc_slurm.runner.multinode import launch, node_gpu_map


def test_srun_spans_the_booked_nodes_with_the_jobs_per_node_share(tmp_path: Path) -> None:
    command = "echo \"it's $SLURM_PROCID\" > out; touch 'a b'"
    start = launch(None, command, nodes=["n3", "n1"], cpus_per_node=4, memory_bytes=3 * 2**30 + 1,
                   gpus={"n3": "0,1", "n1": "2"}, gpu_variable="CUDA_VISIBLE_DEVICES", hostfile=tmp_path / "h",
                   python="/py")
    argv = shlex.split(start.command)
    assert argv[:argv.index("--")] == ["srun", "--overlap", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1",
                                       "--nodelist=n3,n1", "--cpus-per-task=4", "--mem=3073M", "--kill-on-bad-exit=1"]
    assert argv[argv.index("--") + 1:] == ["/py", "-m", "torc_slurm.runner.node_exec", "CUDA_VISIBLE_DEVICES",
                                           "bash", "-c", command]
    assert start.env == {"TORC_NODELIST": "n3,n1", "TORC_NUM_NODES": "2", "TORC_HOSTFILE": str(tmp_path / "h"),
                         "TORC_NODE_GPUS": '{"n3":"0,1","n1":"2"}'}
    assert start.hostfile == "n3\nn1\n"


def test_launcher_none_runs_the_command_as_written() -> None:
    start = launch("none", "mpiexec -f $TORC_HOSTFILE ./a.out", nodes=["n1", "n2"], cpus_per_node=1,
                   memory_bytes=0, gpus={}, gpu_variable="CUDA_VISIBLE_DEVICES", hostfile=Path("/h"))
    assert start.command == "mpiexec -f $TORC_HOSTFILE ./a.out" and start.env["TORC_NODELIST"] == "n1,n2"


def test_node_gpu_map_pairs_nodes_and_ids() -> None:
    assert node_gpu_map(["a", "b"], [("0", "1"), ()]) == {"a": "0,1", "b": ""}


def test_each_node_task_sees_only_its_own_gpus() -> None:
    env = {**os.environ, "TORC_NODE_GPUS": json.dumps({"n1": "0,1", "n2": "3"}), "CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    seen = {}
    for node in ("n1", "n2", "n9"):
        out = subprocess.run([sys.executable, "-m", "torc_slurm.runner.node_exec", "CUDA_VISIBLE_DEVICES",
                              "sh", "-c", 'echo "$TORC_NODE:$CUDA_VISIBLE_DEVICES"'],
                             env={**env, "SLURMD_NODENAME": node}, capture_output=True, text=True, check=True)
        seen[node] = out.stdout.strip()
    assert seen == {"n1": "n1:0,1", "n2": "n2:3", "n9": "n9:"}
