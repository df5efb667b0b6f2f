"""The runner's small decisions, as pure functions with table tests: what an exited job's outcome
is, and how many jobs to claim ahead."""

from __future__ import annotations

import signal
from dataclasses import dataclass

# A job killed by a signal this close to the runner's stop request died of the same event.
STOP_SIGNAL_WINDOW_S = 1.0
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGKILL, signal.SIGINT)


@dataclass(frozen=True)
class Exit:
    """How one attempt ended, and what the runner knows about why."""

    return_code: int | None
    signal: int | None
    ended_at: float
    launch_error: str | None = None
    missing_outputs: tuple[str, ...] = ()
    lease_lost: bool = False                 # the runner killed it: its lease on the job ended
    stopped_by_runner: bool = False          # the runner was stopping it (walltime, shutdown)
    stop_reason: str | None = None
    stop_requested_at: float | None = None   # when the runner was told to stop (Slurm signals everyone)


def classify(e: Exit) -> tuple[str, str | None]:
    """(status, message) of an attempt. A job the runner was stopping is terminated whatever its
    exit code (it may have exited 0 on SIGTERM with half its output): it goes back to ready."""
    if e.lease_lost:
        return "lost", "killed: the runner's lease on this job ended (taken back, canceled or self-fenced)"
    if e.stopped_by_runner:
        return "terminated", f"stopped by the runner ({e.stop_reason or 'runner exit'}); returned to ready"
    if e.launch_error is not None:
        return "failed", e.launch_error
    if e.return_code == 0:
        if e.missing_outputs:
            return "failed", "exited 0 but did not create its output files: " + ", ".join(e.missing_outputs)
        return "completed", None
    if killed_by_stop_signal(e.signal, e.return_code) and e.stop_requested_at is not None \
            and e.ended_at >= e.stop_requested_at - STOP_SIGNAL_WINDOW_S:
        return "terminated", f"stopped with the runner ({e.stop_reason or 'runner exit'}); returned to ready"
    if e.signal is not None:
        return "failed", f"killed by signal {signal_name(e.signal)}"
    return "failed", f"exit code {e.return_code}"


def killed_by_stop_signal(signal_number: int | None, return_code: int | None) -> bool:
    """Ended by SIGTERM, SIGKILL or SIGINT, directly or as a shell's 128+N exit status."""
    return signal_number in _STOP_SIGNALS or return_code in {128 + s for s in _STOP_SIGNALS}


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def prefetch_size(*, slots: int, completions_last_second: int, report_delay_s: float, ceiling: int) -> int:
    """How many claimed-but-unstarted jobs to hold (also how many outcomes to batch into a cycle):
    one per slot, raised to about ``report_delay_s`` worth of jobs at the recent completion rate
    (so very short jobs cost one lock per batch, not one per job), at most ``ceiling``."""
    return max(slots, min(ceiling, int(completions_last_second * report_delay_s)))
