"""Parsing what Slurm says about its partitions and nodes (pure), from output captured on the local
cluster (``scontrol show partition -o`` / ``scontrol show node -o``, Slurm 22.05) and hand-made
lines for what that cluster does not show (MaxNodes, a DOWN partition, typed GRES)."""

from __future__ import annotations

from pathlib import Path

import pytest

from torc_slurm.errors import SlurmError
from torc_slurm.slurm.cli_backend import parse_test_only
from torc_slurm.slurm.partitions import (
    ClusterInfo,
    NodeShape,
    from_site,
    parse_cluster,
    parse_gres,
    parse_max_nodes,
    parse_max_time,
    parse_one_liner,
)
from torc_slurm.slurm.sites import load_site

DATA = Path(__file__).parent / "data"
MIB = 2**20


def test_the_local_clusters_captured_output() -> None:
    info = parse_cluster((DATA / "scontrol_show_partition.txt").read_text(),
                         (DATA / "scontrol_show_node.txt").read_text())
    assert info.source == "slurm"
    cpu, gpu = info.partition("cpu"), info.partition("gpu")
    assert info.partition(None) is cpu and cpu.default and not gpu.default
    assert (cpu.up, cpu.max_time_s, cpu.max_nodes, cpu.total_nodes) == (True, 3600, None, 2)
    assert cpu.nodes == (NodeShape(8, 8000 * MIB, {}, 2),)
    assert (gpu.max_time_s, gpu.nodes) == (7200, (NodeShape(16, 16000 * MIB, {"gpu": 4}, 1),))
    assert info.partition("nope") is None
    assert ClusterInfo.from_json(info.to_json()) == info


def test_values_with_spaces_stay_with_their_key() -> None:
    line = "NodeName=n1 OS=Linux 6.1 #1 SMP PREEMPT @0  RealMemory=100 Partitions=a,b"
    assert parse_one_liner(line) == {"NodeName": "n1", "OS": "Linux 6.1 #1 SMP PREEMPT @0", "RealMemory": "100",
                                     "Partitions": "a,b"}


@pytest.mark.parametrize(("text", "seconds"), [("1-00:00:00", 86400), ("01:00:00", 3600), ("30", 1800),
                                                ("05:00", 300), ("UNLIMITED", None), ("INFINITE", None)])
def test_max_time(text: str, seconds: int | None) -> None:
    assert parse_max_time(text) == seconds


@pytest.mark.parametrize(("text", "nodes"), [("UNLIMITED", None), ("16", 16), ("1", 1)])
def test_max_nodes(text: str, nodes: int | None) -> None:
    assert parse_max_nodes(text) == nodes


@pytest.mark.parametrize(("text", "gres"), [
    ("(null)", {}), ("", {}), ("gpu:4", {"gpu": 4}), ("gpu:a100:4(S:0-1)", {"gpu": 4}),
    ("gpu:a100:2(S:0),gpu:v100:2(S:1)", {"gpu": 4}), ("gpu:2,nvme:1", {"gpu": 2, "nvme": 1}), ("gpu", {"gpu": 1})])
def test_gres(text: str, gres: dict[str, int]) -> None:
    assert parse_gres(text) == gres


@pytest.mark.parametrize("bad", ["1-", "soon"])
def test_unparsable_max_time_is_a_slurm_error(bad: str) -> None:
    with pytest.raises(SlurmError, match="MaxTime"):
        parse_max_time(bad)


def test_max_nodes_a_down_partition_and_mixed_nodes() -> None:
    partitions = ("PartitionName=big MaxNodes=4 MaxTime=2-00:00:00 State=DOWN Default=NO\n"
                  "PartitionName=empty MaxNodes=UNLIMITED MaxTime=UNLIMITED State=UP Default=YES\n")
    nodes = ("NodeName=a1 CPUTot=64 RealMemory=256000 Gres=gpu:h100:4(S:0-1) State=IDLE Partitions=big\n"
             "NodeName=a2 CPUTot=64 RealMemory=256000 Gres=gpu:h100:4(S:0-1) State=IDLE Partitions=big\n"
             "NodeName=b1 CPUTot=32 RealMemory=128000 Gres=(null) State=DOWN Partitions=big\n")
    info = parse_cluster(partitions, nodes)
    big = info.partition("big")
    assert (big.up, big.state, big.max_nodes, big.max_time_s, big.total_nodes) == (False, "DOWN", 4, 2 * 86400, 3)
    assert big.nodes == (NodeShape(32, 128000 * MIB, {}, 1), NodeShape(64, 256000 * MIB, {"gpu": 4}, 2))
    empty = info.partition("empty")
    assert (empty.max_time_s, empty.max_nodes, empty.nodes) == (None, None, ())


def test_no_partitions_is_an_error() -> None:
    with pytest.raises(SlurmError, match="no partitions"):
        parse_cluster("", "")


def test_the_site_table_as_fallback() -> None:
    info = from_site(load_site("localhost"))
    assert info is not None and info.source == "site config localhost"
    cpu = info.partition("cpu")
    assert (cpu.max_time_s, cpu.nodes[0].cpus, cpu.nodes[0].gpus) == (3600, 8, 0)
    assert info.partition(None) is cpu and info.partition("gpu").nodes[0].gpus == 4
    assert from_site(load_site("localhost").model_copy(update={"partitions": [], "default_partition": None})) is None


@pytest.mark.parametrize(("text", "answer"), [
    ("sbatch: Job 318 to start at 2026-11-28T12:32:40 using 1 processors on nodes cpu1 in partition cpu\n",
     "Job 318 to start at 2026-11-28T12:32:40 using 1 processors on nodes cpu1 in partition cpu"),
    ("", "(sbatch --test-only printed nothing)")])
def test_sbatch_test_only_answer(text: str, answer: str) -> None:
    assert parse_test_only(text) == answer
