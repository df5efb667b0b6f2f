"""Optional backend over pyslurm (``pip install 'torc-slurm[pyslurm]'``).

Queries and cancellations go through pyslurm's RPCs (``pyslurm.Job.load``, ``Job.cancel``), which
saves a fork of ``squeue`` on every poll of every runner. Submission still goes through ``sbatch``:
pyslurm's ``JobSubmitDescription.load_sbatch_options`` re-implements the ``#SBATCH`` parser, does not
undo shell quoting, ignores options it does not know and, in the releases we read, never applies
``--signal``, on which the runner's clean shutdown depends.

pyslurm is only used when it was built for the cluster's Slurm major.minor; a mismatched pyslurm
talks a different RPC protocol.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

from torc_slurm.errors import SlurmError
from torc_slurm.slurm.backend import JobInfo, SlurmBackend, SlurmState
from torc_slurm.slurm.cli_backend import CliBackend, check_job_ids

ESLURM_INVALID_JOB_ID = 2017
_PYSLURM_VERSION = re.compile(r"^(\d+)\.(\d+)")


def pyslurm_slurm_version(module: Any) -> tuple[int, int] | None:
    """The Slurm (major, minor) pyslurm was built for, or None if it cannot be told.

    ``pyslurm.slurm_api_version()`` when present, else pyslurm's own version, which follows Slurm's
    (pyslurm 22.5.x is for Slurm 22.05).
    """
    api_version = getattr(module, "slurm_api_version", None)
    if callable(api_version):
        try:
            major, minor, *_ = api_version()
            return int(major), int(minor)
        except Exception:  # noqa: BLE001 - a broken build just means "cannot tell"
            pass
    match = _PYSLURM_VERSION.match(str(getattr(module, "__version__", "")))
    return (int(match.group(1)), int(match.group(2))) if match else None


def load_matching_pyslurm(cli: CliBackend) -> tuple[ModuleType | None, str]:
    """(pyslurm, "") when it imports and matches the cluster's Slurm; else (None, the reason)."""
    try:
        module = importlib.import_module("pyslurm")
    except ImportError:
        return None, "pyslurm is not installed"
    except Exception as exc:  # noqa: BLE001 - pyslurm initialises libslurm on import
        return None, f"importing pyslurm failed: {exc}"
    built_for = pyslurm_slurm_version(module)
    if built_for is None:
        return None, "cannot tell which Slurm version pyslurm was built for"
    try:
        cluster = cli.slurm_version()[:2]
    except SlurmError as exc:
        return None, f"cannot read the cluster's Slurm version: {exc}"
    if built_for != cluster:
        return None, (
            f"pyslurm is built for Slurm {built_for[0]}.{built_for[1]:02d}"
            f" but the cluster runs {cluster[0]}.{cluster[1]:02d}"
        )
    return module, ""


class PyslurmBackend(SlurmBackend):
    """Slurm through pyslurm's RPCs, with ``sbatch`` for submission."""

    name = "pyslurm"

    def __init__(self, module: ModuleType, cli: CliBackend | None = None) -> None:
        self._pyslurm = module
        self._cli = cli or CliBackend()

    def submit(self, script: Path) -> str:
        return self._cli.submit(script)

    def status(self, job_ids: Sequence[str]) -> dict[str, JobInfo]:
        ids = check_job_ids(job_ids)
        plain = [job_id for job_id in ids if job_id.isdigit()]
        # Array and heterogeneous job ids ("12_3", "12+1") are not plain integers for pyslurm.
        jobs = self._cli.status([job_id for job_id in ids if not job_id.isdigit()])
        for job_id in plain:
            try:
                job = self._pyslurm.Job.load(int(job_id))
            except Exception as exc:
                if self._is_gone(exc):
                    continue
                raise SlurmError(f"pyslurm could not load job {job_id}: {exc}") from exc
            jobs[job_id] = JobInfo(
                job_id=job_id,
                state=SlurmState.parse(str(job.state)),
                time_left_seconds=_time_left(job),
                end_time=_timestamp(job.end_time),
            )
        return jobs

    def cancel(self, job_ids: Sequence[str]) -> None:
        ids = check_job_ids(job_ids)
        self._cli.cancel([job_id for job_id in ids if not job_id.isdigit()])
        for job_id in (job_id for job_id in ids if job_id.isdigit()):
            try:
                self._pyslurm.Job(int(job_id)).cancel()
            except Exception as exc:
                if not self._is_gone(exc):
                    raise SlurmError(f"pyslurm could not cancel job {job_id}: {exc}") from exc

    def cluster_name(self) -> str | None:
        return self._cli.cluster_name()

    def cluster_info(self):  # noqa: ANN201 - partitions through scontrol, as the CLI backend reads them
        return self._cli.cluster_info()

    def test_only(self, script: Path) -> str:
        return self._cli.test_only(script)

    def _is_gone(self, exc: Exception) -> bool:
        """True for pyslurm's 'Invalid job id' error; other exceptions are real failures."""
        rpc_error = getattr(self._pyslurm, "RPCError", None)
        if rpc_error is None or not isinstance(exc, rpc_error):
            return False
        return getattr(exc, "errno", None) == ESLURM_INVALID_JOB_ID or "invalid job id" in str(exc).lower()


def _time_left(job: Any) -> int | None:
    remaining = getattr(job, "run_time_remaining", None)
    return None if remaining is None else max(0, int(remaining))


def _timestamp(value: Any) -> datetime | None:
    """pyslurm's epoch seconds (None or 0 when unset) -> aware local datetime."""
    if not value:
        return None
    return datetime.fromtimestamp(int(value), tz=timezone.utc).astimezone()
