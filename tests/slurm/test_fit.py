"""The checks before submitting (pure): a scheduler against its partition, jobs against the
allocations their scheduler allows, and the verdict with counts."""

from __future__ import annotations

import pytest

from torc_slurm.slurm.fit import (
    JobShape,
    human_seconds,
    misfits,
    offer,
    parse_gres_request,
    parse_slurm_size,
    scheduler_problems,
    serve_verdict,
)
from torc_slurm.slurm.partitions import ClusterInfo, NodeShape, PartitionInfo
from torc_slurm.spec.models import SlurmScheduler

GIB = 2**30
CLUSTER = ClusterInfo("slurm", (
    PartitionInfo("cpu", True, 3600, None, (NodeShape(8, 8 * GIB, {}, 2),), default=True),
    PartitionInfo("gpu", True, 7200, 1, (NodeShape(16, 16 * GIB, {"gpu": 4}, 1),)),
))


def sched(**fields: object) -> SlurmScheduler:
    return SlurmScheduler.model_validate({"name": "s", "walltime": "00:10:00", **fields})


def shape(count: int = 1, runtime: int = 60, cpus: int = 1, gpus: int = 0, memory: int = GIB, nodes: int = 1,
          scheduler: str | None = None) -> JobShape:
    return JobShape(scheduler, nodes, gpus, memory, runtime, cpus, count)


@pytest.mark.parametrize(("fields", "partition", "expected"), [
    ({}, "cpu", []),
    ({}, None, []),                       # the cluster's default partition
    ({"walltime": "01:00:00"}, "cpu", []),
    ({"walltime": "08:00:00"}, "cpu", ["walltime 08:00:00 is over partition cpu's MaxTime 1 h (field `walltime`)"]),
    ({}, "nope", ["partition 'nope' does not exist (slurm lists: cpu, gpu)"]),
    ({"nodes": 3}, "cpu", ["3 nodes is more than partition cpu has (2) (field `nodes`)"]),
    ({"nodes": 2}, "gpu", ["2 nodes is more than partition gpu's MaxNodes 1 (field `nodes`)"]),
    ({"gres": "gpu:2"}, "cpu", ["gres gpu:2 is more than any node of partition cpu has (gpu:0) (field `gres`)"]),
    ({"gres": "gpu:4"}, "gpu", []),
    ({"gres": "gpu:8"}, "gpu", ["gres gpu:8 is more than any node of partition gpu has (gpu:4) (field `gres`)"]),
])
def test_scheduler_problems(fields: dict, partition: str | None, expected: list[str]) -> None:
    got = scheduler_problems(sched(**fields), partition, CLUSTER)
    assert got == [f"scheduler `s`: {text}" for text in expected]


def test_a_partition_that_is_not_up_is_a_problem() -> None:
    down = ClusterInfo("slurm", (PartitionInfo("cpu", False, None, None, (NodeShape(8, GIB, {}, 1),), state="DRAIN"),))
    assert scheduler_problems(sched(), "cpu", down) == [
        "scheduler `s`: partition cpu is DRAIN, not UP: its allocations would wait until the site brings it back"]


def test_the_seed_barrier_verdict_with_an_hour_runtime_on_ten_minutes() -> None:
    o = offer(sched(), CLUSTER.partition("cpu"), 60)
    verdict = serve_verdict([shape(200, runtime=3600), shape(2, runtime=3600)], o)
    assert not verdict.ok and (verdict.served, verdict.runnable) == (202, 0)
    assert "202 jobs need 1 h; scheduler `s` gives 10 min less a 1 min end buffer" in verdict.message()


def test_one_job_that_fits_is_enough_and_other_schedulers_jobs_do_not_count() -> None:
    o = offer(sched(), CLUSTER.partition("cpu"), 60)
    assert serve_verdict([shape(5, runtime=3600), shape(1, runtime=60)], o).ok
    verdict = serve_verdict([shape(5, runtime=3600, scheduler="other")], o)
    assert verdict.served == 0 and verdict.ok


@pytest.mark.parametrize(("job", "needle"), [
    (shape(cpus=9), "needs 9 CPUs; scheduler `s`'s nodes have 8"),
    (shape(gpus=1), "needs 1 GPUs; scheduler `s` gives 0 per node (no gpu gres)"),
    (shape(memory=9 * GIB), "needs 9 GiB; scheduler `s` gives 8 GiB per node"),
    (shape(nodes=2), "needs 2 nodes; scheduler `s` gives 1"),
    (shape(runtime=541), "needs 9 min 1 s; scheduler `s` gives 10 min"),
])
def test_each_shortfall(job: JobShape, needle: str) -> None:
    verdict = serve_verdict([job], offer(sched(), CLUSTER.partition("cpu"), 60))
    assert not verdict.ok and needle in verdict.message()


def test_the_schedulers_mem_and_gres_bound_the_offer() -> None:
    o = offer(sched(mem="2G", gres="gpu:2"), CLUSTER.partition("gpu"), 0)
    assert (o.cpus, o.gpus, o.memory_bytes) == (16, 2, 2 * GIB)
    unknown = offer(sched(), None, 0)         # no partition data: only the scheduler's own limits
    assert unknown.gpus == 0 and unknown.cpus > 10**6


def test_misfits_are_jobs_bigger_than_every_node_their_scheduler_allows() -> None:
    offers = {"c": offer(sched(name="c", partition="cpu"), CLUSTER.partition("cpu"), 60),
              "g": offer(sched(name="g", gres="gpu:4"), CLUSTER.partition("gpu"), 60)}
    fine = [shape(3, cpus=8), shape(2, cpus=16, gpus=4), shape(1, cpus=16, scheduler="g")]
    assert misfits(fine, offers) == []
    bad = misfits([shape(4, cpus=32), shape(1, cpus=12, scheduler="c")], offers)
    assert len(bad) == 2
    assert bad[0].startswith("4 jobs need 32 CPUs; scheduler `c`'s nodes have 8") and "no other scheduler fits" in bad[0]
    assert bad[1].startswith("1 job needs 12 CPUs") and "bigger than every node" in bad[1]
    # runtime is left to the verdict: a long job is not a misfit
    assert misfits([shape(1, runtime=10**6)], offers) == []


@pytest.mark.parametrize(("text", "wanted"), [(None, {}), ("gpu:2", {"gpu": 2}), ("gpu:a100:2", {"gpu": 2}),
                                              ("gpu:1,nvme:1", {"gpu": 1, "nvme": 1}), ("gpu", {"gpu": 1})])
def test_gres_requests(text: str | None, wanted: dict[str, int]) -> None:
    assert parse_gres_request(text) == wanted


@pytest.mark.parametrize(("text", "size"), [("64G", 64 * GIB), ("500M", 500 * 2**20), ("1000", 1000 * 2**20),
                                            (None, None), ("lots", None)])
def test_slurm_sizes(text: str | None, size: int | None) -> None:
    assert parse_slurm_size(text) == size


@pytest.mark.parametrize(("seconds", "text"), [(30, "30 s"), (60, "1 min"), (90, "1 min 30 s"), (3600, "1 h"),
                                               (5400, "1 h 30 min"), (7200, "2 h")])
def test_human_seconds(seconds: int, text: str) -> None:
    assert human_seconds(seconds) == text


def test_a_sites_walltime_bins_by_node_count() -> None:
    from torc_slurm.slurm.partitions import from_site
    from torc_slurm.slurm.sites import load_site

    site = from_site(load_site("frontier"))
    assert site is not None
    name = next(p.name for p in site.partitions if p.max_time_by_nodes)
    assert scheduler_problems(sched(partition=name, nodes=4, walltime="06:00:00"), name, site) == [
        f"scheduler `s`: walltime 06:00:00 is over partition {name}'s MaxTime 2 h for 4 nodes (field `walltime`)"]
    assert scheduler_problems(sched(partition=name, nodes=200, walltime="12:00:00"), name, site) == []
    assert scheduler_problems(sched(partition=name, nodes=100, walltime="06:00:00"), name, site) == []
    assert ClusterInfo.from_json(site.to_json()) == site
