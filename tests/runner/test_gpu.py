"""GPU sampling: the nvidia-smi parser, detection (NVML, then nvidia-smi, else nothing), failures that
disable a sampler, and the monitor's per-job GPU figures and node samples.

This machine has no GPU, so only what cannot exist here is faked: `nvidia-smi` is a small script put
first on PATH that prints canned CSV (or fails), and `pynvml` is a module object in `sys.modules`.
The processes the monitor tracks are real.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from torc_slurm.runner.gpu import (
    GpuReading,
    GpuSampler,
    NvidiaSmiSampler,
    NvmlSampler,
    detect_gpu_sampler,
    parse_smi_csv,
)
from torc_slurm.runner.monitor import NodeSample, ResourceMonitor, TreeStats

MIB = 2**20
DEADLINE_S = 30.0

CANNED = "0, 10, 100\n1, 30, 200\n2, 50, 400\n"


@pytest.fixture(autouse=True)
def no_pynvml(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever this machine has installed, `import pynvml` fails unless a test puts one in."""
    monkeypatch.setitem(sys.modules, "pynvml", None)


def fake_smi(folder: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> Path:
    """An executable `nvidia-smi` in ``folder``, first on PATH; it logs its arguments beside itself."""
    folder.mkdir(exist_ok=True)
    script = folder / "nvidia-smi"
    script.write_text(f'#!/bin/sh\necho "$@" >> "{folder}/calls"\n{body}\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return script


def printing(text: str) -> str:
    return f"cat <<'EOF'\n{text}EOF"


# -- the parser ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "expected"), [
    (CANNED, {"0": GpuReading(10.0, 100 * MIB), "1": GpuReading(30.0, 200 * MIB), "2": GpuReading(50.0, 400 * MIB)}),
    ("", {}),
    ("0, [N/A], 100\n1, 7, 3\n", {"1": GpuReading(7.0, 3 * MIB)}),   # a MIG slice without figures is left out
    ("0, 5, [Not Supported]\n", {}),
    ("index, utilization.gpu, memory.used\n3, 99, 81920\n", {"3": GpuReading(99.0, 81920 * MIB)}),  # a header line
    ("No devices were found\n", {}),
    ("  4 ,  0 , 0  \n", {"4": GpuReading(0.0, 0)}),
])
def test_parse_smi_csv(text: str, expected: dict[str, GpuReading]) -> None:
    assert parse_smi_csv(text) == expected


# -- detection -------------------------------------------------------------------------------------
def test_no_gpu_tools_means_no_sampler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing there
    assert detect_gpu_sampler() is None


def test_nvidia_smi_on_path_is_used_with_one_query(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_smi(tmp_path / "bin", monkeypatch, printing(CANNED))
    sampler = detect_gpu_sampler()
    assert isinstance(sampler, NvidiaSmiSampler) and sampler.name == "nvidia-smi"
    assert sampler.sample() == parse_smi_csv(CANNED)
    calls = (tmp_path / "bin" / "calls").read_text().splitlines()
    assert calls == ["--query-gpu=index,utilization.gpu,memory.used --format=csv,noheader,nounits"] * 2


def test_failing_nvidia_smi_gives_no_sampler_and_one_log_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    fake_smi(tmp_path / "bin", monkeypatch, "echo 'NVIDIA-SMI has failed because it could not communicate' >&2; exit 9")
    with caplog.at_level(logging.INFO, logger="torc_slurm.runner.gpu"):
        assert detect_gpu_sampler() is None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "exit status 9" in lines[0] and "could not communicate" in lines[0], lines


def test_nvidia_smi_without_devices_gives_no_sampler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_smi(tmp_path / "bin", monkeypatch, "echo 'No devices were found'")
    assert detect_gpu_sampler() is None


def test_a_sampler_that_fails_later_disables_itself_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "bin"
    # Answers twice (the probe and one pass), then the driver "goes away".
    fake_smi(folder, monkeypatch, f'[ $(wc -l < "{folder}/calls") -le 2 ] || exit 12\n' + printing(CANNED))
    sampler = detect_gpu_sampler()
    assert sampler is not None and sampler.sample() == parse_smi_csv(CANNED)
    with caplog.at_level(logging.WARNING, logger="torc_slurm.runner.gpu"):
        assert sampler.sample() == {} and sampler.disabled
        assert sampler.sample() == {}
    assert len(caplog.records) == 1 and "disabled" in caplog.records[0].getMessage()
    assert len((folder / "calls").read_text().splitlines()) == 3  # not called again once disabled


def test_a_hanging_nvidia_smi_times_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_smi(tmp_path / "bin", monkeypatch, "exec sleep 30")
    started = time.monotonic()
    assert detect_gpu_sampler(smi_timeout_s=0.3) is None
    assert time.monotonic() - started < 10


class FakeNvml(types.ModuleType):
    """The few pynvml calls the sampler makes, over a fixed table of devices."""

    def __init__(self, devices: list[tuple[int, int]], fail_init: bool = False) -> None:
        super().__init__("pynvml")
        self.devices = devices
        self.fail_init = fail_init
        self.inits = 0

    def nvmlInit(self) -> None:
        self.inits += 1
        if self.fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> types.SimpleNamespace:
        return types.SimpleNamespace(gpu=self.devices[handle][0], memory=0)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> types.SimpleNamespace:
        return types.SimpleNamespace(used=self.devices[handle][1], total=80 * 2**30, free=0)


def test_nvml_is_preferred_when_pynvml_imports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_smi(tmp_path / "bin", monkeypatch, printing(CANNED))
    nvml = FakeNvml([(75, 3 * 2**30), (0, 0)])
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    sampler = detect_gpu_sampler()
    assert isinstance(sampler, NvmlSampler) and sampler.name == "nvml" and nvml.inits == 1
    assert sampler.sample() == {"0": GpuReading(75.0, 3 * 2**30), "1": GpuReading(0.0, 0)}
    assert not (tmp_path / "bin" / "calls").exists()  # nvidia-smi was not needed


def test_nvml_that_cannot_start_falls_back_to_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_smi(tmp_path / "bin", monkeypatch, printing(CANNED))
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml([(1, 1)], fail_init=True))
    sampler = detect_gpu_sampler()
    assert isinstance(sampler, NvidiaSmiSampler)


# -- the monitor -----------------------------------------------------------------------------------
def sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)


def wait_for(monitor: ResourceMonitor, job_id: int, count: int) -> TreeStats:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        stats = monitor.stats(job_id)
        assert stats is not None
        if stats.samples >= count:
            return stats
        time.sleep(0.01)
    raise AssertionError(f"fewer than {count} samples in {DEADLINE_S}s")


def test_tracked_job_gets_the_gpu_figures_of_its_devices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_smi(tmp_path / "bin", monkeypatch, printing(CANNED))
    sampler = detect_gpu_sampler()
    monitor = ResourceMonitor(0.02, gpu_sampler=sampler, node_gpu_ids=["0", "1"])
    assert monitor.gpu_sampler_name == "nvidia-smi"
    gpu_job, cpu_job = sleeper(), sleeper()
    monitor.start()
    try:
        monitor.track(1, gpu_job.pid, gpu_ids=("1", "2"))
        monitor.track(2, cpu_job.pid)
        wait_for(monitor, 1, 3)
        wait_for(monitor, 2, 3)
        with_gpus, without = monitor.untrack(1), monitor.untrack(2)
    finally:
        monitor.stop()
        for p in (gpu_job, cpu_job):
            p.stdin.close()
            p.wait(timeout=DEADLINE_S)
    assert with_gpus.avg_gpu_percent == pytest.approx(40.0)  # mean of devices 1 and 2
    assert with_gpus.peak_gpu_memory_bytes == 600 * MIB
    assert without.avg_gpu_percent is None and without.peak_gpu_memory_bytes is None  # not zero
    samples = monitor.drain_node_samples()
    assert samples and all(isinstance(s, NodeSample) for s in samples)
    assert all(s.gpu_percent == pytest.approx(20.0) and s.gpu_memory_bytes == 300 * MIB for s in samples)
    assert any(s.memory_bytes > 0 for s in samples)
    assert [s.at for s in samples] == sorted(s.at for s in samples)
    assert monitor.drain_node_samples() == []  # drained, and the thread is stopped


class Scripted(GpuSampler):
    """Our own sampler interface, playing back a list of passes (the last one repeats)."""

    name = "nvml"

    def __init__(self, passes: list[dict[str, GpuReading]]) -> None:
        super().__init__()
        self.passes = passes
        self.calls = 0

    def _read(self) -> dict[str, GpuReading]:
        self.calls += 1
        return self.passes[min(self.calls, len(self.passes)) - 1]


def test_gpu_figures_average_over_passes_and_keep_the_peak() -> None:
    passes = [{"0": GpuReading(20, 1 * MIB), "1": GpuReading(40, 2 * MIB)},
              {"0": GpuReading(80, 5 * MIB), "1": GpuReading(100, 6 * MIB)},
              {"0": GpuReading(0, 1 * MIB), "1": GpuReading(0, 1 * MIB)}]
    sampler = Scripted(passes)
    monitor = ResourceMonitor(0.01, gpu_sampler=sampler)
    job = sleeper()
    try:
        monitor.track(5, job.pid, gpu_ids=["0", "1"])
        for _ in passes:  # drive the passes from here: exactly three, no thread
            monitor._sample_all()
        stats = monitor.untrack(5)
    finally:
        job.stdin.close()
        job.wait(timeout=DEADLINE_S)
    assert stats.samples == 3
    assert stats.avg_gpu_percent == pytest.approx((30 + 90 + 0) / 3)
    assert stats.peak_gpu_memory_bytes == 11 * MIB
    node = monitor.drain_node_samples()
    assert [s.gpu_percent for s in node] == [30, 90, 0]  # every device, no node_gpu_ids given
    assert [s.gpu_memory_bytes for s in node] == [3 * MIB, 11 * MIB, 2 * MIB]


def test_idle_node_still_records_samples_without_scanning_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    scans = []
    monkeypatch.setattr("torc_slurm.runner.monitor._children_map", lambda: scans.append(1) or {})
    ticks = iter(range(1000, 2000))
    monitor = ResourceMonitor(0.01, clock=lambda: float(next(ticks)), max_node_samples=3)
    monitor.start()
    try:
        deadline = time.monotonic() + DEADLINE_S
        while len(monitor._node_samples) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        first = monitor.drain_node_samples()
        while not monitor._node_samples and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        monitor.stop()
    assert len(first) == 3 and not scans
    assert all(s.cpu_percent == 0 and s.memory_bytes == 0 and s.gpu_percent is None for s in first)
    rest = monitor.drain_node_samples()
    assert rest and rest[0].at > first[-1].at  # drained ones are not handed out again


def test_node_samples_are_bounded() -> None:
    ticks = iter(range(100))
    monitor = ResourceMonitor(1.0, clock=lambda: float(next(ticks)), max_node_samples=4)
    for _ in range(10):
        monitor._sample_all()
    assert [s.at for s in monitor.drain_node_samples()] == [6.0, 7.0, 8.0, 9.0]  # the newest kept


def test_sampler_name_follows_the_sampler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert ResourceMonitor(1.0).gpu_sampler_name is None
    scripted = Scripted([{"0": GpuReading(1, 1)}])
    assert ResourceMonitor(0, gpu_sampler=scripted).gpu_sampler_name is None  # sampling disabled
    assert ResourceMonitor(1.0, gpu_sampler=scripted).gpu_sampler_name == "nvml"
    broken = NvidiaSmiSampler(str(fake_smi(tmp_path / "bin", monkeypatch, "exit 3")))
    monitor = ResourceMonitor(1.0, gpu_sampler=broken)
    monitor._sample_all()
    assert monitor.gpu_sampler_name is None
    assert monitor.drain_node_samples()[0].gpu_percent is None


def test_tree_stats_stay_positionally_compatible() -> None:
    stats = TreeStats(2, 50.0, 90.0, 10, 20)
    assert (stats.avg_gpu_percent, stats.peak_gpu_memory_bytes) == (None, None)
    assert TreeStats(2, 50.0, 90.0, 10, 20, 33.0, 7).peak_gpu_memory_bytes == 7
