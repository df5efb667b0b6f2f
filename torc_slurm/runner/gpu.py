"""GPU sampling for the resource monitor: per-device utilisation and memory, from NVML or nvidia-smi.

`detect_gpu_sampler` picks what the node has: NVML through the ``pynvml`` module (the
``nvidia-ml-py`` package, extra ``torc-slurm[gpu]``) when it imports and initialises, else the
``nvidia-smi`` command when it is on PATH and answers, else None (the runner then records no GPU
figures, and the reports say GPU use was not sampled instead of showing zeros).

A sampler returns ``{device index: GpuReading}``. The index is the one `nvidia-smi` prints and
NVML's ``nvmlDeviceGetHandleByIndex`` takes: the ids the runner hands out in
``CUDA_VISIBLE_DEVICES`` when they come from ``SLURM_JOB_GPUS`` (PCI bus order; a site that sets
``CUDA_DEVICE_ORDER=FASTEST_FIRST`` renumbers CUDA's view, not this one).

A sampler that fails once (a timeout, a crash, an NVML error) disables itself with one log line and
returns ``{}`` from then on: a broken driver must not cost every sampling pass a timeout.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

__all__ = ["GpuReading", "GpuSampler", "NvidiaSmiSampler", "NvmlSampler", "detect_gpu_sampler", "parse_smi_csv"]

log = logging.getLogger(__name__)

SMI_QUERY = ("--query-gpu=index,utilization.gpu,memory.used", "--format=csv,noheader,nounits")
SMI_TIMEOUT_S = 5.0
MIB = 2**20


@dataclass(frozen=True)
class GpuReading:
    """One device at one moment: utilisation (0-100) and memory in use."""

    util_percent: float
    memory_bytes: int


def parse_smi_csv(text: str) -> dict[str, GpuReading]:
    """``nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader,nounits``
    output -> readings by index (memory is in MiB there). A device whose figures are not numbers
    (``[N/A]``, ``[Not Supported]``: MIG slices, some older boards) is left out. Pure."""
    readings: dict[str, GpuReading] = {}
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 3 or not fields[0].isdigit():
            continue
        try:
            util, used_mib = float(fields[1]), float(fields[2])
        except ValueError:
            continue
        readings[fields[0]] = GpuReading(util, int(used_mib * MIB))
    return readings


class GpuSampler:
    """What the monitor calls once per pass. Subclasses set ``name`` and implement `_read`."""

    name: str = ""

    def __init__(self) -> None:
        self.disabled = False

    def sample(self) -> dict[str, GpuReading]:
        """The readings now; ``{}`` once the sampler has failed (logged once)."""
        if self.disabled:
            return {}
        try:
            return self._read()
        except Exception as exc:  # noqa: BLE001 - any failure of the tool or library disables it
            self.disabled = True
            log.warning("GPU sampling with %s failed, disabled for this runner: %s", self.name, exc)
            return {}

    def _read(self) -> dict[str, GpuReading]:
        raise NotImplementedError


class NvidiaSmiSampler(GpuSampler):
    """One ``nvidia-smi`` call per pass (all devices in one query), bounded by ``timeout_s``."""

    name = "nvidia-smi"

    def __init__(self, path: str, timeout_s: float = SMI_TIMEOUT_S) -> None:
        super().__init__()
        self.path = path
        self.timeout_s = timeout_s

    def _read(self) -> dict[str, GpuReading]:
        done = subprocess.run([self.path, *SMI_QUERY], capture_output=True, text=True, timeout=self.timeout_s,
                              stdin=subprocess.DEVNULL, check=False)
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip().splitlines()
            raise RuntimeError(f"exit status {done.returncode}" + (f": {detail[0]}" if detail else ""))
        return parse_smi_csv(done.stdout)


class NvmlSampler(GpuSampler):
    """NVML through ``pynvml``: device handles found once, two cheap library calls per device per pass."""

    name = "nvml"

    def __init__(self, nvml: Any) -> None:
        super().__init__()
        self._nvml = nvml
        nvml.nvmlInit()
        self._handles = {str(i): nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())}

    def _read(self) -> dict[str, GpuReading]:
        nvml = self._nvml
        return {index: GpuReading(float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu),
                                  int(nvml.nvmlDeviceGetMemoryInfo(handle).used))
                for index, handle in self._handles.items()}


def detect_gpu_sampler(*, smi_timeout_s: float = SMI_TIMEOUT_S) -> GpuSampler | None:
    """NVML if ``pynvml`` imports and sees devices, else ``nvidia-smi`` if it is on PATH and answers
    with at least one device, else None. Probes once (one library init or one command)."""
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        pynvml = None
    if pynvml is not None:
        try:
            sampler: GpuSampler = NvmlSampler(pynvml)
            if sampler.sample():
                return sampler
        except Exception as exc:  # noqa: BLE001 - no driver, no devices: try nvidia-smi
            log.debug("NVML unavailable: %s", exc)
    path = shutil.which("nvidia-smi")
    if path is None:
        return None
    sampler = NvidiaSmiSampler(path, smi_timeout_s)
    if not sampler.sample():
        if not sampler.disabled:  # a failure was logged already
            log.info("nvidia-smi is on PATH but reports no GPU: GPU use will not be sampled")
        return None
    return sampler
