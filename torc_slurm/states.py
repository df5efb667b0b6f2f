"""The job states, with torc's names: one enum for every layer (store, runner, reports, CLI).

``JobStatus`` members are ``str``s, so they go into SQL parameters and JSON as they are.
"""

from __future__ import annotations

from enum import Enum


class JobStatus(str, Enum):
    UNINITIALIZED = "uninitialized"
    BLOCKED = "blocked"
    READY = "ready"
    PENDING = "pending"          # claimed by a runner, not started yet
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"
    TERMINATED = "terminated"
    DISABLED = "disabled"

    def __str__(self) -> str:
        return self.value


ALL = tuple(s.value for s in JobStatus)
# Held by a runner: the job has a live attempt (and a lease token).
HELD = (JobStatus.PENDING.value, JobStatus.RUNNING.value)
UNFINISHED = (JobStatus.UNINITIALIZED.value, JobStatus.BLOCKED.value, JobStatus.READY.value, *HELD)
# What a status report counts as failed (and exits 1 for).
FAILED = (JobStatus.FAILED.value, JobStatus.CANCELED.value, JobStatus.TERMINATED.value)
FINISHED = (JobStatus.COMPLETED.value, *FAILED)
# No longer waiting for anything: everything but UNFINISHED.
DONE = (*FINISHED, JobStatus.DISABLED.value)


def sql_list(statuses: tuple[str, ...]) -> str:
    """``('a','b')`` for an SQL ``IN`` clause (the values are this module's constants, never input)."""
    return "(" + ",".join(f"'{s}'" for s in statuses) + ")"
