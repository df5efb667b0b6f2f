"""Node use over time, thinned for the queue file (pure).

The resource monitor samples every few seconds; hundreds of runners writing every sample would
grow the shared file by millions of rows a day. The queue keeps one row per runner per bucket of
``every_s`` seconds: the mean CPU and GPU utilisation of the samples in it, and the peak memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Protocol

from torc_slurm.store.queue import NodeUse

DEFAULT_EVERY_S = 30.0


class Sample(Protocol):
    at: float
    cpu_percent: float          # 100 = one core busy
    memory_bytes: int
    gpu_percent: float | None
    gpu_memory_bytes: int | None


class UsageBuckets:
    """Collects samples into time buckets; ``take`` returns the buckets that are over (or, at the
    runner's end, all of them)."""

    def __init__(self, cpus: int, every_s: float = DEFAULT_EVERY_S) -> None:
        self.cpus = max(1, cpus)
        self.every_s = every_s
        self._open: dict[int, list[Sample]] = {}

    def add(self, samples: Iterable[Sample]) -> None:
        for sample in samples:
            self._open.setdefault(math.floor(sample.at / self.every_s), []).append(sample)

    def take(self, now: float, *, flush: bool = False) -> list[NodeUse]:
        current = math.floor(now / self.every_s)
        done = sorted(k for k in self._open if flush or k < current)
        return [self._summarise(k, self._open.pop(k)) for k in done]

    def _summarise(self, bucket: int, samples: list[Sample]) -> NodeUse:
        gpu = [s.gpu_percent for s in samples if s.gpu_percent is not None]
        gpu_memory = [s.gpu_memory_bytes for s in samples if s.gpu_memory_bytes is not None]
        cpu = sum(s.cpu_percent for s in samples) / len(samples) / self.cpus
        return NodeUse(at=max(s.at for s in samples) if samples else bucket * self.every_s,
                       cpu_percent=round(min(100.0, cpu), 1),
                       memory_bytes=max(s.memory_bytes for s in samples),
                       gpu_percent=round(sum(gpu) / len(gpu), 1) if gpu else None,
                       gpu_memory_bytes=max(gpu_memory) if gpu_memory else None)
