"""The pydantic models of `torc reports summary`'s JSON output (see `reports.summary`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReasonCount(_Model):
    status: str  # the attempts' outcome: failed | terminated | lost | canceled
    reason: str  # results.reason ('exit code', 'signal', 'oom', 'timeout', …), or the status when none
    attempts: int


class ExitCount(_Model):
    return_code: int | None
    signal: int | None
    attempts: int


class Failures(_Model):
    attempts: int  # attempts that did not complete (late outcomes excluded)
    by_reason: list[ReasonCount]
    by_exit_code: list[ExitCount]  # failed attempts only, by exit code or signal


class WallTime(_Model):
    started_at: float | None  # first runner start
    ended_at: float | None  # last runner end, or now while one is live
    running: bool
    seconds: float | None


class Usage(_Model):
    """Resource-hours of one kind: what the runners had, what their jobs held, what they used."""

    allocated_hours: float
    held_hours: float
    used_hours: float | None  # None: not measured (GPU without a sampler)
    held_percent: float | None  # of allocated
    used_percent: float | None  # of allocated


class Allocation(_Model):
    runners: int
    live_runners: int
    cpu: Usage
    gpu: Usage
    gpu_sampled: bool  # a runner with GPUs sampled them (nvidia-smi / NVML)
    gpu_samplers: list[str]


class LongJob(_Model):
    job: str
    job_id: int
    attempt: int
    status: str
    exec_s: float
    node: str | None


class Summary(_Model):
    workflow_id: int
    name: str
    jobs_total: int
    jobs_by_status: dict[str, int]
    failures: Failures
    wall: WallTime
    allocation: Allocation
    longest: list[LongJob]
