"""The default backend: Slurm's own commands (sbatch, squeue, scancel, scontrol).

The parsing functions at the top are pure; ``CliBackend`` runs the commands with argument lists and
timeouts, and retries a bounded number of times, with backoff, when Slurm reports a transient failure
(controller busy or unreachable).
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from torc_slurm.errors import SlurmError
from torc_slurm.slurm.backend import JobInfo, SlurmBackend, SlurmState
from torc_slurm.spec.units import parse_slurm_time

if TYPE_CHECKING:
    from torc_slurm.slurm.partitions import ClusterInfo

log = logging.getLogger(__name__)

# squeue fields: job id, long state, time left, expected end time. None of them can hold a '|'.
SQUEUE_FORMAT = "%i|%T|%L|%e"

_JOB_ID = re.compile(r"^\d+(?:[_+]\d+)?$")
_PARSABLE = re.compile(r"^(\d+)(?:;\S+)?$")
_NO_TIME = frozenset({"UNLIMITED", "NOT_SET", "INVALID"})
_NO_DATE = frozenset({"N/A", "NONE", "UNKNOWN", ""})
_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")
_TRANSIENT = (
    "socket timed out",
    "unable to contact slurm controller",
    "transient",
    "temporarily unable",
    "temporarily unavailable",
    "zero bytes were transmitted or received",
    "communication connection failure",
    "standby mode",
)
_GONE = ("invalid job id specified", "already completing or completed")


# --- pure parsers -----------------------------------------------------------------------------


def parse_sbatch_parsable(stdout: str) -> str:
    """The job id from ``sbatch --parsable`` output (``"123"`` or ``"123;cluster"``)."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    match = _PARSABLE.match(lines[-1]) if lines else None
    if not match:
        raise SlurmError(f"could not read a job id from sbatch --parsable output: {stdout!r}")
    return match.group(1)


def parse_time_left(text: str) -> int | None:
    """squeue ``%L`` -> seconds: ``1-02:03:04``, ``2:03:04``, ``5:00``; None for UNLIMITED,
    NOT_SET and INVALID. Anything else is a SlurmError."""
    value = text.strip()
    if value.upper() in _NO_TIME:
        return None
    try:
        return parse_slurm_time(value, what="time left")
    except ValueError:
        raise SlurmError(f"could not parse Slurm time left {text!r}") from None


def parse_end_time(text: str) -> datetime | None:
    """squeue ``%e`` (local time, ``2026-11-21T18:16:04``) -> aware datetime; None for N/A/Unknown."""
    value = text.strip()
    if value.upper() in _NO_DATE:
        return None
    try:
        return datetime.fromisoformat(value).astimezone()
    except ValueError:
        raise SlurmError(f"could not parse Slurm end time {text!r}") from None


def parse_squeue(stdout: str) -> dict[str, JobInfo]:
    """Lines of ``squeue -h -o '%i|%T|%L|%e'`` -> job id -> JobInfo."""
    jobs: dict[str, JobInfo] = {}
    for line in stdout.splitlines():
        if not line.strip():
            continue
        fields = line.strip().split("|")
        if len(fields) != 4:
            raise SlurmError(f"unexpected squeue line {line!r} (expected {SQUEUE_FORMAT!r})")
        job_id, state, time_left, end_time = fields
        jobs[job_id] = JobInfo(
            job_id=job_id,
            state=SlurmState.parse(state),
            time_left_seconds=parse_time_left(time_left),
            end_time=parse_end_time(end_time),
        )
    return jobs


def parse_test_only(text: str) -> str:
    """``sbatch --test-only`` output -> Slurm's answer, without the ``sbatch:`` prefixes."""
    lines = [line.strip().removeprefix("sbatch:").strip() for line in text.splitlines() if line.strip()]
    return "; ".join(lines) or "(sbatch --test-only printed nothing)"


def parse_scontrol_config(text: str) -> dict[str, str]:
    """``scontrol show config`` -> {key: value} for its ``Key = Value`` lines."""
    config: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(" = ")
        if sep and key.strip() and " " not in key.strip():
            config[key.strip()] = value.strip()
    return config


def parse_slurm_version(text: str) -> tuple[int, int, int]:
    """``slurm 22.05.8`` / ``slurm-wlm 23.02.7`` -> (22, 5, 8)."""
    match = _VERSION.search(text)
    if not match:
        raise SlurmError(f"could not read a Slurm version from {text!r}")
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


def is_transient(stderr: str) -> bool:
    """True when Slurm's message says the failure may pass if we try again."""
    lowered = stderr.lower()
    return any(pattern in lowered for pattern in _TRANSIENT)


def check_job_ids(job_ids: Sequence[str]) -> list[str]:
    """The ids as strings, refusing anything that is not a Slurm job id (``123``, ``123_4``)."""
    ids = [str(job_id) for job_id in job_ids]
    for job_id in ids:
        if not _JOB_ID.match(job_id):
            raise SlurmError(f"{job_id!r} is not a Slurm job id")
    return ids


# --- running commands -------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """At most ``attempts`` tries, sleeping first_delay, 2*first_delay, … (capped) in between."""

    attempts: int = 5
    first_delay: float = 1.0
    max_delay: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.first_delay < 0 or self.max_delay < 0:
            raise ValueError(f"invalid retry policy {self}")

    def delays(self) -> Iterator[float]:
        delay = self.first_delay
        for _ in range(self.attempts - 1):
            yield min(delay, self.max_delay)
            delay *= 2


class CliBackend(SlurmBackend):
    """Slurm through its command-line tools."""

    name = "cli"

    def __init__(self, *, retry: RetryPolicy | None = None, timeout: float = 60.0) -> None:
        self.retry = retry or RetryPolicy()
        self.timeout = timeout

    def submit(self, script: Path) -> str:
        """``sbatch --parsable``. A submission retried after a timeout may, rarely, have been
        accepted the first time; the extra allocation then finds no work and exits."""
        script = Path(script)
        if not script.is_file():
            raise SlurmError(f"batch script {script} does not exist")
        result = self._run(["sbatch", "--parsable", str(script)])
        return parse_sbatch_parsable(result.stdout)

    def status(self, job_ids: Sequence[str]) -> dict[str, JobInfo]:
        ids = check_job_ids(job_ids)
        if not ids:
            return {}
        argv = ["squeue", "--noheader", "--states=all", f"--jobs={','.join(ids)}", "--format", SQUEUE_FORMAT]
        # With a single id squeue fails with 'Invalid job id specified' once Slurm has purged the job.
        result = self._run(argv, gone_ok=True)
        jobs = parse_squeue(result.stdout)
        return {job_id: info for job_id, info in jobs.items() if job_id in ids}

    def cancel(self, job_ids: Sequence[str]) -> None:
        ids = check_job_ids(job_ids)
        if ids:
            self._run(["scancel", *ids], gone_ok=True)

    def cluster_name(self) -> str | None:
        config = parse_scontrol_config(self._run(["scontrol", "show", "config"]).stdout)
        name = config.get("ClusterName")
        return None if name in (None, "", "(null)") else name

    def cluster_info(self) -> "ClusterInfo":
        """``scontrol show partition -o`` and ``scontrol show node -o``, parsed."""
        from torc_slurm.slurm.partitions import parse_cluster

        partitions = self._run(["scontrol", "show", "partition", "--oneliner"]).stdout
        nodes = self._run(["scontrol", "show", "node", "--oneliner"]).stdout
        return parse_cluster(partitions, nodes)

    def test_only(self, script: Path) -> str:
        """``sbatch --test-only SCRIPT``: Slurm prints its estimate on stderr ("Job 12 to start at …")."""
        script = Path(script)
        if not script.is_file():
            raise SlurmError(f"batch script {script} does not exist")
        result = self._run(["sbatch", "--test-only", str(script)])
        return parse_test_only(result.stderr + result.stdout)

    def slurm_version(self) -> tuple[int, int, int]:
        """The Slurm version of the installed commands (``scontrol --version``)."""
        return parse_slurm_version(self._run(["scontrol", "--version"]).stdout)

    def _run(self, argv: list[str], *, gone_ok: bool = False) -> subprocess.CompletedProcess[str]:
        """Run a Slurm command; retry transient failures; raise SlurmError on the others."""
        executable = shutil.which(argv[0])
        if executable is None:
            raise SlurmError(
                f"Slurm commands not found: is this a Slurm cluster? '{argv[0]}' is not on PATH"
                " (load the Slurm module or run this on a login node)"
            )
        command = [executable, *argv[1:]]
        delays = self.retry.delays()
        attempt = 0
        while True:
            attempt += 1
            result, problem = self._run_once(command, argv, gone_ok)
            if result is not None:
                return result
            delay = next(delays, None)
            if delay is None:
                raise SlurmError(f"{problem} (gave up after {attempt} attempts)")
            log.warning("%s; retry %d of %d in %.1f s", problem, attempt, self.retry.attempts - 1, delay)
            time.sleep(delay)

    def _run_once(
        self, command: list[str], argv: list[str], gone_ok: bool
    ) -> tuple[subprocess.CompletedProcess[str] | None, str]:
        """(result, "") on success; (None, why) on a transient failure; raises on the rest."""
        shown = " ".join(argv)
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=self.timeout, check=False
            )
        except FileNotFoundError as exc:
            raise SlurmError(f"Slurm commands not found: is this a Slurm cluster? ({exc})") from exc
        except subprocess.TimeoutExpired:
            return None, f"'{shown}' did not answer within {self.timeout:g} s"
        stderr = result.stderr.strip()
        if result.returncode == 0:
            return result, ""
        if gone_ok and any(pattern in stderr.lower() for pattern in _GONE):
            return subprocess.CompletedProcess(result.args, 0, "", stderr), ""
        if is_transient(stderr):
            return None, f"'{shown}' failed transiently: {stderr}"
        raise SlurmError(f"'{shown}' failed with exit code {result.returncode}: {stderr or '(no message)'}")

