"""The small interface every Slurm backend implements, and the choice of backend.

A backend submits a rendered batch script, reports the state of job ids, cancels jobs and tells when
an allocation will end. ``cli_backend`` is the default; ``pyslurm_backend`` is used only when the
``pyslurm`` extra is installed and built for the cluster's Slurm version.
"""

from __future__ import annotations

import enum
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from torc_slurm.errors import SlurmError

if TYPE_CHECKING:
    from torc_slurm.slurm.partitions import ClusterInfo

log = logging.getLogger(__name__)
_UNKNOWN_SEEN: set[str] = set()  # unknown state names already logged

BACKEND_ENV = "TORC_SLURM_BACKEND"


class SlurmState(str, enum.Enum):
    """Job states as ``squeue -o %T`` prints them (Slurm's JOB STATE CODES)."""

    BOOT_FAIL = "BOOT_FAIL"
    CANCELLED = "CANCELLED"
    COMPLETED = "COMPLETED"
    COMPLETING = "COMPLETING"
    CONFIGURING = "CONFIGURING"
    DEADLINE = "DEADLINE"
    FAILED = "FAILED"
    NODE_FAIL = "NODE_FAIL"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    PENDING = "PENDING"
    PREEMPTED = "PREEMPTED"
    REQUEUED = "REQUEUED"
    REQUEUE_FED = "REQUEUE_FED"
    REQUEUE_HOLD = "REQUEUE_HOLD"
    RESIZING = "RESIZING"
    RESV_DEL_HOLD = "RESV_DEL_HOLD"
    REVOKED = "REVOKED"
    RUNNING = "RUNNING"
    SIGNALING = "SIGNALING"
    SPECIAL_EXIT = "SPECIAL_EXIT"
    STAGE_OUT = "STAGE_OUT"
    STOPPED = "STOPPED"
    SUSPENDED = "SUSPENDED"
    TIMEOUT = "TIMEOUT"
    # A state this torc_slurm does not know (a newer Slurm): shown as such, never taken as finished
    # (so nothing is swept or resubmitted on it), and no command breaks on it.
    UNKNOWN = "UNKNOWN"

    @classmethod
    def parse(cls, text: str) -> "SlurmState":
        """The state named by ``text``; a name this version does not know is UNKNOWN (logged once
        per name), never a guess."""
        name = text.strip().upper()
        try:
            return cls(name)
        except ValueError:
            if name not in _UNKNOWN_SEEN:
                _UNKNOWN_SEEN.add(name)
                log.warning("unknown Slurm job state %r: shown as UNKNOWN (this Slurm reports a state "
                            "torc_slurm does not know; please report it)", text)
            return cls.UNKNOWN

    @property
    def is_finished(self) -> bool:
        """True when the job will not run (again) without a new submission."""
        return self in _FINISHED


_FINISHED = frozenset(
    {
        SlurmState.BOOT_FAIL,
        SlurmState.CANCELLED,
        SlurmState.COMPLETED,
        SlurmState.DEADLINE,
        SlurmState.FAILED,
        SlurmState.NODE_FAIL,
        SlurmState.OUT_OF_MEMORY,
        SlurmState.PREEMPTED,
        SlurmState.REVOKED,
        SlurmState.TIMEOUT,
    }
)


@dataclass(frozen=True)
class JobInfo:
    """What Slurm reports about one job.

    ``time_left_seconds`` and ``end_time`` are None when Slurm has no limit or no estimate
    (``UNLIMITED``, ``NOT_SET``, ``INVALID``, ``N/A``). ``end_time`` is timezone-aware.
    """

    job_id: str
    state: SlurmState
    time_left_seconds: int | None
    end_time: datetime | None


class SlurmBackend(ABC):
    """Submit, query and cancel Slurm jobs. Implementations raise SlurmError on failure."""

    name: str = "abstract"

    @abstractmethod
    def submit(self, script: Path) -> str:
        """Submit a batch script; return the new job id."""

    @abstractmethod
    def status(self, job_ids: Sequence[str]) -> dict[str, JobInfo]:
        """State of the given jobs. Jobs Slurm no longer knows are absent from the result."""

    @abstractmethod
    def cancel(self, job_ids: Sequence[str]) -> None:
        """Cancel the given jobs. Jobs that already ended or are unknown are not an error."""

    @abstractmethod
    def cluster_name(self) -> str | None:
        """Slurm's ``ClusterName``, or None when it is not set."""

    def cluster_info(self) -> "ClusterInfo":
        """The partitions and their nodes (MaxTime, MaxNodes, state, CPUs, memory, GRES)."""
        raise SlurmError(f"the {self.name} backend cannot read partitions")

    def test_only(self, script: Path) -> str:
        """``sbatch --test-only``: Slurm's answer (start estimate) for the script; submits nothing.
        A refusal is a SlurmError carrying Slurm's message."""
        raise SlurmError(f"the {self.name} backend cannot run sbatch --test-only")

    def end_time(self, job_id: str) -> datetime | None:
        """When the allocation ``job_id`` will end (None: unknown, unlimited, or job gone)."""
        info = self.status([job_id]).get(job_id)
        return info.end_time if info else None


def get_backend(environ: Mapping[str, str] | None = None) -> SlurmBackend:
    """The backend to use: pyslurm when it is installed and built for this cluster's Slurm, else CLI.

    ``TORC_SLURM_BACKEND=cli`` or ``=pyslurm`` forces a choice (a forced pyslurm that cannot be used
    is an error).
    """
    from torc_slurm.slurm.cli_backend import CliBackend

    env = os.environ if environ is None else environ
    forced = env.get(BACKEND_ENV, "").strip().lower()
    if forced not in ("", "auto", "cli", "pyslurm"):
        raise SlurmError(f"{BACKEND_ENV}={forced!r} is not one of: cli, pyslurm, auto")
    cli = CliBackend()
    if forced == "cli":
        return cli

    from torc_slurm.slurm.pyslurm_backend import PyslurmBackend, load_matching_pyslurm

    module, reason = load_matching_pyslurm(cli)
    if module is not None:
        return PyslurmBackend(module, cli)
    if forced == "pyslurm":
        raise SlurmError(f"{BACKEND_ENV}=pyslurm but pyslurm cannot be used: {reason}")
    log.debug("using the Slurm CLI backend: %s", reason)
    return cli
