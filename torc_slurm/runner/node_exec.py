"""``python -m torc_slurm.runner.node_exec VARIABLE COMMAND…``: one task of a multi-node job.

Sets VARIABLE (the site's GPU visibility variable) to the GPU ids this node set aside for the job,
read from ``TORC_NODE_GPUS`` (JSON: node -> ids) by this node's name, then replaces itself with
COMMAND. A node with no GPUs for the job gets an empty value, so it sees none."""

from __future__ import annotations

import json
import os
import socket
import sys


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        sys.exit("usage: python -m torc_slurm.runner.node_exec VARIABLE COMMAND…")
    variable, command = argv[0], argv[1:]
    gpus = json.loads(os.environ.get("TORC_NODE_GPUS") or "{}")
    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    os.environ[variable] = gpus.get(node, "")
    os.environ["TORC_NODE"] = node
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
