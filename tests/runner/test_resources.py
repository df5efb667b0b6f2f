"""Tests for torc_slurm.runner.resources: a table of environments, flags, and pin_plan."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from torc_slurm.runner import resources
from torc_slurm.runner.resources import DetectedNode, detect_node, parse_gpu_ids, pin_plan

MIB, GIB = 1024**2, 1024**3
HOST_CPUS = (4, 5, 6, 7, 12, 13)  # a fake affinity mask
HOST_MEMORY = 64 * GIB


@pytest.fixture(autouse=True)
def fake_host(monkeypatch):
    monkeypatch.setattr(resources, "_host_cpus", lambda: HOST_CPUS)
    monkeypatch.setattr(resources.psutil, "virtual_memory", lambda: SimpleNamespace(total=HOST_MEMORY))


# (environment, flags) -> (number of CPU slots, memory bytes, GPU ids, sources)
CASES = [
    pytest.param({}, {}, (6, HOST_MEMORY, ()), {"cpus": "affinity", "memory": "psutil", "gpus": "none"},
                 id="no-slurm"),
    pytest.param({"SLURM_CPUS_ON_NODE": "4", "SLURM_MEM_PER_NODE": "4096", "SLURM_JOB_GPUS": "2,3"}, {},
                 (4, 4096 * MIB, ("2", "3")),
                 {"cpus": "SLURM_CPUS_ON_NODE", "memory": "SLURM_MEM_PER_NODE", "gpus": "SLURM_JOB_GPUS"},
                 id="slurm-everything"),
    pytest.param({"SLURM_CPUS_ON_NODE": "8"}, {}, (6, HOST_MEMORY, ()),
                 {"cpus": "affinity (below SLURM_CPUS_ON_NODE)"}, id="slurm-counts-more-cpus-than-the-mask"),
    pytest.param({"SLURM_JOB_GPUS": "2,3", "CUDA_VISIBLE_DEVICES": "0,1"}, {}, (6, HOST_MEMORY, ("0", "1")),
                 {"gpus": "CUDA_VISIBLE_DEVICES"}, id="visibility-variable-first"),
    pytest.param({"SLURM_JOB_GPUS": "", "CUDA_VISIBLE_DEVICES": "0,1"}, {}, (6, HOST_MEMORY, ("0", "1")),
                 {"gpus": "CUDA_VISIBLE_DEVICES"}, id="empty-variable-is-skipped"),
    pytest.param({"ROCR_VISIBLE_DEVICES": "1"}, {}, (6, HOST_MEMORY, ("1",)),
                 {"gpus": "ROCR_VISIBLE_DEVICES"}, id="amd"),
    pytest.param({"SLURM_JOB_GPUS": "gpu:0, gpu:1"}, {}, (6, HOST_MEMORY, ("0", "1")), {}, id="gpu-prefix"),
    pytest.param({"CUDA_VISIBLE_DEVICES": "GPU-8f3c,GPU-77aa"}, {}, (6, HOST_MEMORY, ("GPU-8f3c", "GPU-77aa")),
                 {}, id="uuids"),
    pytest.param({"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, {}, (6, HOST_MEMORY, ()), {"gpus": "none"},
                 id="no-dev-files"),
    pytest.param({"CUDA_VISIBLE_DEVICES": "-1"}, {}, (6, HOST_MEMORY, ()), {"gpus": "none"}, id="cuda-hidden"),
    pytest.param({"SLURM_MEM_PER_NODE": "0"}, {}, (6, HOST_MEMORY, ()), {"memory": "psutil"},
                 id="mem-zero-means-whole-node"),
    pytest.param({"SLURM_MEM_PER_CPU": "1000", "SLURM_CPUS_ON_NODE": "4"}, {}, (4, 4000 * MIB, ()),
                 {"memory": "SLURM_MEM_PER_CPU"}, id="mem-per-cpu"),
    pytest.param({"SLURM_CPUS_ON_NODE": "8", "SLURM_MEM_PER_NODE": "4096"}, {"num_cpus": 2, "memory_gb": 1.5},
                 (2, int(1.5 * GIB), ()), {"cpus": "flag", "memory": "flag"}, id="flags-override"),
    pytest.param({"SLURM_JOB_GPUS": "2,3"}, {"num_gpus": 1}, (6, HOST_MEMORY, ("2",)),
                 {"gpus": "flag+SLURM_JOB_GPUS"}, id="num-gpus-takes-first-detected"),
    pytest.param({"SLURM_JOB_GPUS": "2,3"}, {"num_gpus": 0}, (6, HOST_MEMORY, ()), {}, id="num-gpus-zero"),
    pytest.param({}, {"num_gpus": 2}, (6, HOST_MEMORY, ("0", "1")), {"gpus": "flag"}, id="num-gpus-without-ids"),
    pytest.param({"MY_GPUS": "5", "CUDA_VISIBLE_DEVICES": "0"}, {"gpu_variable_names": ("MY_GPUS",)},
                 (6, HOST_MEMORY, ("5",)), {"gpus": "MY_GPUS"}, id="site-variable"),
]


@pytest.mark.parametrize("environ, flags, expected, sources", CASES)
def test_detect_node(environ, flags, expected, sources):
    node = detect_node(environ, **flags)
    cpus, memory, gpus = expected
    assert node.capacity.cpu_ids == tuple(range(cpus))
    assert node.capacity.memory_bytes == memory
    assert node.capacity.gpu_ids == gpus
    assert node.host_cpus == HOST_CPUS
    assert sources.items() <= node.sources.items()
    assert set(node.sources) == {"cpus", "memory", "gpus"}


@pytest.mark.parametrize(
    "environ, flags",
    [
        pytest.param({"SLURM_JOB_GPUS": "2,3"}, {"num_gpus": 3}, id="more-gpus-than-detected"),
        pytest.param({}, {"num_gpus": -1}, id="negative-gpus"),
        pytest.param({}, {"num_cpus": 0}, id="zero-cpus"),
        pytest.param({}, {"memory_gb": 0}, id="zero-memory"),
        pytest.param({"SLURM_CPUS_ON_NODE": "lots"}, {}, id="bad-slurm-cpus"),
        pytest.param({"SLURM_MEM_PER_NODE": "4G"}, {}, id="bad-slurm-mem"),
        pytest.param({"CUDA_VISIBLE_DEVICES": "0,0"}, {}, id="duplicate-gpu"),
    ],
)
def test_detect_node_errors(environ, flags):
    with pytest.raises(ValueError):
        detect_node(environ, **flags)


def test_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("SLURM_CPUS_ON_NODE", "1")
    monkeypatch.delenv("SLURM_JOB_GPUS", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    node = detect_node()
    assert node.capacity.cpu_ids == (0,) and node.capacity.gpu_ids == ("7",)


def test_detected_node_is_frozen():
    node = detect_node({})
    assert isinstance(node, DetectedNode)
    with pytest.raises(AttributeError):
        node.capacity = None  # type: ignore[misc]


def test_host_cpus_is_the_affinity_mask(monkeypatch):
    monkeypatch.undo()  # the real helpers, not the fakes
    if hasattr(os, "sched_getaffinity"):
        assert resources._host_cpus() == tuple(sorted(os.sched_getaffinity(0)))
    else:
        assert len(resources._host_cpus()) >= 1


@pytest.mark.parametrize(
    "text, expected",
    [("", ()), ("0", ("0",)), (" 0 , 1 ", ("0", "1")), ("gpu:2,GPU:3", ("2", "3")), ("0,,1", ("0", "1")),
     ("MIG-1a2b/1/0", ("MIG-1a2b/1/0",)), ("NoDevFiles", ()), ("none", ())],
)
def test_parse_gpu_ids(text, expected):
    assert parse_gpu_ids(text) == expected


@pytest.mark.parametrize(
    "host, slots, kwargs, expected",
    [
        pytest.param(HOST_CPUS, (0, 1), {}, (4, 5), id="first-slots"),
        pytest.param(HOST_CPUS, (4, 5), {}, (12, 13), id="gap-in-mask"),
        pytest.param(HOST_CPUS, (6,), {}, None, id="slot-beyond-host"),
        pytest.param(HOST_CPUS, (), {}, None, id="no-slots-queue-depth-mode"),
        pytest.param(HOST_CPUS, (0,), {"num_slots": 8}, None, id="more-slots-than-host-cpus"),
        pytest.param(HOST_CPUS, (0,), {"num_slots": 6}, (4,), id="as-many-slots-as-host-cpus"),
    ],
)
def test_pin_plan(host, slots, kwargs, expected):
    assert pin_plan(host, slots, **kwargs) == expected


def test_an_emulated_cluster_may_declare_more_cpus_than_the_mask(monkeypatch) -> None:
    monkeypatch.setattr(resources, "_host_cpus", lambda: HOST_CPUS)
    node = detect_node({"SLURM_CPUS_ON_NODE": "16"}, trust_slurm_cpus=True)
    assert len(node.capacity.cpu_ids) == 16 and node.sources["cpus"] == "SLURM_CPUS_ON_NODE"
