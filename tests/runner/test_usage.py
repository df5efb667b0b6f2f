"""What a runner records about resource use: per-attempt GPU figures, node use over time (thinned
into buckets), the GPU sampler it had, and its totals. GPUs are faked by an `nvidia-smi` script on
PATH (this machine has none); the runner, its jobs and the queue are real."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from torc_slurm.runner.resources import detect_node
from torc_slurm.runner.usage import UsageBuckets

from .helpers import create_workflow, query, results, run_runner, write_spec

MIB = 2**20


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "pynvml", None)  # whatever is installed here, use nvidia-smi
    return tmp_path


def fake_smi(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder.mkdir()
    script = folder / "nvidia-smi"
    script.write_text("#!/bin/sh\nprintf '0, 40, 1000\\n1, 80, 3000\\n'\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")


def test_a_gpu_runner_records_gpu_use_node_samples_and_totals(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_smi(work / "bin", monkeypatch)
    spec = write_spec(work, """
        name: gpu_use
        resource_requirements:
          - {name: one_gpu, num_cpus: 1, num_gpus: 1, memory: 1g, runtime: PT1M}
        jobs:
          - {name: train, command: "sleep 1.5", resource_requirements: one_gpu}
    """)
    db = work / "torc.db"
    wf = create_workflow(db, spec)
    node = detect_node(environ={}, num_cpus=2, num_gpus=2, memory_gb=4)
    run_runner(db, wf, node=node, output_dir=work / "out", monitor_interval_s=0.2, node_sample_s=0.5)

    [attempt] = results(db, wf)
    assert attempt["status"] == "completed"
    # The job held one of the two GPUs: its figures are that device's (40 % / 1000 MiB, or 80 % / 3000 MiB).
    assert attempt["avg_gpu_percent"] in (40.0, 80.0)
    assert attempt["peak_gpu_memory_bytes"] in (1000 * MIB, 3000 * MIB)
    [runner] = query(db, "SELECT * FROM runners WHERE workflow_id = ?", (wf,))
    assert runner["gpu_sampler"] == "nvidia-smi"
    assert runner["held_gpu_s"] == pytest.approx(attempt["exec_s"]) and runner["held_cpu_s"] == pytest.approx(
        attempt["exec_s"])
    samples = query(db, "SELECT * FROM runner_samples WHERE runner_id = ? ORDER BY at", (runner["id"],))
    assert len(samples) >= 2, samples  # 1.5 s of work in 0.5 s buckets, and the last partial one
    assert all(s["gpu_percent"] == 60.0 and s["gpu_memory_bytes"] == 4000 * MIB for s in samples)
    assert all(runner["started_at"] - 1 <= s["at"] <= runner["ended_at"] + 1 for s in samples)


def test_a_cpu_runner_records_no_gpu_figures(work: Path) -> None:
    (work / "spin.py").write_text("import time\nt = time.time()\nwhile time.time() - t < 1.2:\n    pass\n")
    spec = write_spec(work, f"""
        name: cpu_use
        jobs:
          - {{name: spin, command: "{sys.executable} {work / 'spin.py'}"}}
    """)
    db = work / "torc.db"
    wf = create_workflow(db, spec)
    run_runner(db, wf, node=detect_node(environ={}, num_cpus=2), output_dir=work / "out",
               monitor_interval_s=0.2, node_sample_s=0.4)
    [attempt] = results(db, wf)
    assert attempt["status"] == "completed" and attempt["avg_gpu_percent"] is None
    [runner] = query(db, "SELECT * FROM runners WHERE workflow_id = ?", (wf,))
    assert runner["gpu_sampler"] is None and runner["job_cpu_s"] > 0.5
    samples = query(db, "SELECT * FROM runner_samples WHERE runner_id = ?", (runner["id"],))
    assert samples and all(s["gpu_percent"] is None for s in samples)
    assert max(s["cpu_percent"] for s in samples) > 20  # one of two CPUs busy spinning: ~50 %


def sample(at: float, cpu: float, memory: int, gpu: float | None = None) -> SimpleNamespace:
    return SimpleNamespace(at=at, cpu_percent=cpu, memory_bytes=memory, gpu_percent=gpu,
                           gpu_memory_bytes=None if gpu is None else 10)


def test_buckets_average_cpu_over_the_runners_cpus_and_keep_peak_memory() -> None:
    buckets = UsageBuckets(cpus=4, every_s=10)
    buckets.add([sample(100, 400, 5), sample(105, 200, 9, gpu=50), sample(111, 100, 1)])
    [first] = buckets.take(now=112)  # the bucket of 110-119 is still open
    assert (first.cpu_percent, first.memory_bytes, first.gpu_percent, first.at) == (75.0, 9, 50.0, 105)
    assert buckets.take(now=115) == []
    [last] = buckets.take(now=115, flush=True)
    assert (last.cpu_percent, last.memory_bytes, last.gpu_percent) == (25.0, 1, None)
