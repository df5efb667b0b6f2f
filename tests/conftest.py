"""The ``slurm`` marker: tests that need the local Slurm cluster (scripts/start-local-slurm.sh).

A marked test gets the session fixture ``slurm_cluster`` automatically. When Slurm does not answer,
the test is skipped, unless ``CI=true`` or ``TORC_REQUIRE_SLURM=1`` is set, in which case it fails:
CI must not pass by skipping the tests that matter most.

Lives at the top of the test tree so every directory's Slurm tests share it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

import pytest

_BAD_NODE_STATES = ("down", "drain", "drng", "fail", "unk", "inval", "pow")


@dataclass(frozen=True)
class SlurmCluster:
    """What ``sinfo`` reports: node name -> state, and partition names (default first)."""

    nodes: dict[str, str]
    partitions: list[str]


def _slurm_required() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1") or os.environ.get("TORC_REQUIRE_SLURM") == "1"


def _probe() -> SlurmCluster | str:
    """The cluster, or why it cannot be used."""
    sinfo = shutil.which("sinfo")
    if sinfo is None:
        return "sinfo is not on PATH"
    try:
        nodes = subprocess.run(
            [sinfo, "--noheader", "--Node", "--format=%N|%t"], capture_output=True, text=True, timeout=30
        )
        partitions = subprocess.run(
            [sinfo, "--noheader", "--format=%P"], capture_output=True, text=True, timeout=30
        )
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 30 s"
    if nodes.returncode != 0 or partitions.returncode != 0:
        return f"sinfo failed: {(nodes.stderr or partitions.stderr).strip()}"
    states = dict(line.split("|", 1) for line in nodes.stdout.split() if "|" in line)
    usable = {name: state for name, state in states.items() if not state.lower().startswith(_BAD_NODE_STATES)}
    if not usable:
        return f"no usable Slurm nodes (sinfo reports {states or 'none'})"
    names = [p.strip() for p in partitions.stdout.split() if p.strip()]
    ordered = sorted(dict.fromkeys(names), key=lambda p: not p.endswith("*"))
    return SlurmCluster(nodes=states, partitions=[p.rstrip("*") for p in ordered])


@pytest.fixture(scope="session")
def slurm_cluster() -> SlurmCluster:
    """The local Slurm cluster; skips (or fails under CI / TORC_REQUIRE_SLURM=1) when it is absent."""
    found = _probe()
    if isinstance(found, SlurmCluster):
        return found
    message = f"Slurm is not available: {found}. Start it with: sudo scripts/start-local-slurm.sh start"
    if _slurm_required():
        pytest.fail(f"{message} (required because CI=true or TORC_REQUIRE_SLURM=1)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(autouse=True)
def _slurm_marker(request: pytest.FixtureRequest) -> None:
    """Give every test marked ``@pytest.mark.slurm`` the ``slurm_cluster`` fixture."""
    if request.node.get_closest_marker("slurm") is not None:
        request.getfixturevalue("slurm_cluster")
