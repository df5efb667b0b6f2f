"""The runner's small decisions, as pure functions with table tests: what an exited job's outcome
is and why (its *reason*), which failure-handler rule retries it, and how many jobs to claim ahead.

Reasons, one per attempt (kept on the attempt's result and on the job):
``exit code N``, ``signal NAME``, ``oom``, ``timeout``, ``walltime`` (stopped at the allocation's end
or by Slurm's SIGTERM, within its runtime), ``stopped`` (the runner was stopped otherwise, e.g.
Ctrl-C), ``lost``, ``missing outputs``, ``launch error``; the queue adds ``upstream job X failed``
for jobs canceled because of a prerequisite, and ``missing output user data`` for a job that exited 0
without writing a user data entry it declares as output. A completed attempt has no reason.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from dataclasses import dataclass

from torc_slurm.spec.models import FailureRule

# A job killed by a signal this close to the runner's stop request died of the same event.
STOP_SIGNAL_WINDOW_S = 1.0
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGKILL, signal.SIGINT)
# SIGKILL with a sampled peak at or above this share of the job's declared memory is an OOM kill.
OOM_SHARE = 0.9


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
    timed_out: bool = False                  # the runner killed it at runtime x runtime_grace
    runtime_s: float | None = None           # declared runtime (a stop after overrunning it: timeout)
    ran_s: float | None = None               # how long it ran (until the stop request, if stopped)
    limit_s: float | None = None             # where enforcement killed it (for the message)
    memory_bytes: int | None = None          # declared memory
    peak_memory_bytes: int | None = None     # largest figure measured (sampled tree, wait4)
    oom_kills: int = 0                       # kernel OOM kills in the job's cgroup during its life
    memory_killed: bool = False              # the runner killed it for exceeding its memory


@dataclass(frozen=True)
class Verdict:
    status: str               # completed | failed | terminated | lost
    message: str | None
    reason: str | None        # None only for completed attempts


def judge(e: Exit) -> Verdict:
    """The outcome of an attempt, with its reason. A job the runner was stopping is terminated
    whatever its exit code (it may have exited 0 on SIGTERM with half its output): it goes back
    to ready; so is a job Slurm signalled a moment before the runner."""
    if e.lease_lost:
        return Verdict("lost", "killed: the runner's lease on this job ended (taken back, canceled or self-fenced)",
                       "lost")
    if e.timed_out:
        return Verdict("failed", f"timed out: still running at runtime x runtime_grace "
                                 f"({_seconds(e.limit_s)}; runtime {_seconds(e.runtime_s)})", "timeout")
    if e.stopped_by_runner or (
            killed_by_stop_signal(e.signal, e.return_code) and e.stop_requested_at is not None
            and e.ended_at >= e.stop_requested_at - STOP_SIGNAL_WINDOW_S and e.launch_error is None
            and e.return_code != 0):
        verb = "stopped by" if e.stopped_by_runner else "stopped with"
        message = f"{verb} the runner ({e.stop_reason or 'runner exit'}); returned to ready"
        if overran(e):
            return Verdict("terminated", message + f"; it had run {_seconds(e.ran_s)}, past its runtime "
                                                   f"{_seconds(e.runtime_s)}", "timeout")
        at_the_end = e.stop_reason in (None, "walltime", "SIGTERM")  # the allocation's end, or Slurm's signal
        return Verdict("terminated", message, "walltime" if at_the_end else "stopped")
    if e.launch_error is not None:
        return Verdict("failed", e.launch_error, "launch error")
    if e.return_code == 0:
        if e.missing_outputs:
            return Verdict("failed", "exited 0 but did not create its output files: " + ", ".join(e.missing_outputs),
                           "missing outputs")
        return Verdict("completed", None, None)
    if out_of_memory(e):
        return Verdict("failed", _oom_message(e), "oom")
    if e.signal is not None:
        return Verdict("failed", f"killed by signal {signal_name(e.signal)}", f"signal {signal_name(e.signal)}")
    return Verdict("failed", f"exit code {e.return_code}", f"exit code {e.return_code}")


def classify(e: Exit) -> tuple[str, str | None]:
    """(status, message) of an attempt (`judge` without the reason)."""
    verdict = judge(e)
    return verdict.status, verdict.message


def overran(e: Exit) -> bool:
    return e.runtime_s is not None and e.ran_s is not None and e.ran_s > e.runtime_s


def out_of_memory(e: Exit) -> bool:
    """Killed by SIGKILL (directly, or a shell's 137) after the kernel's OOM killer fired in its
    cgroup, after the runner killed it for its memory, or while its measured peak was at or near
    (>= OOM_SHARE of) its declared memory."""
    if not (e.signal == signal.SIGKILL or e.return_code == 128 + signal.SIGKILL):
        return False
    if e.oom_kills > 0 or e.memory_killed:
        return True
    return bool(e.memory_bytes and e.peak_memory_bytes and e.peak_memory_bytes >= OOM_SHARE * e.memory_bytes)


def _oom_message(e: Exit) -> str:
    how = ("killed by the kernel's OOM killer" if e.oom_kills else
           "killed by the runner: its memory went past its request" if e.memory_killed else
           "killed (SIGKILL) at its memory limit")
    peak = f"peak {_bytes(e.peak_memory_bytes)}" if e.peak_memory_bytes else "peak unknown"
    return f"out of memory: {how} ({peak}; memory {_bytes(e.memory_bytes)})"


def return_code_of(return_code: int | None, signal_number: int | None) -> int | None:
    """The exit status a shell would report: 128 + N for a job killed by signal N."""
    if signal_number is not None:
        return 128 + signal_number
    return return_code


def matching_rule(rules: Sequence[FailureRule], reason: str | None, return_code: int | None) -> FailureRule | None:
    """The first rule of a failure handler that matches a failed attempt. Handlers see failures of
    the job's own making: a non-zero exit (``exit code N``) or a signal (return code 128 + N).
    Timeouts, OOM kills, lost and terminated attempts are not theirs (`torc recover` grows
    resources; max_attempts caps interruptions)."""
    if reason is None or not reason.startswith(("exit code", "signal")) or return_code in (None, 0):
        return None
    for rule in rules:
        if rule.match_all_exit_codes or return_code in rule.exit_codes:
            return rule
    return None


def may_retry(rule: FailureRule | None, retries: int) -> bool:
    """A matching rule still has retries left (``retries``: those the job used so far)."""
    return rule is not None and retries < rule.max_retries


def runtime_limit(runtime_s: float, grace: float, enforce: bool) -> float | None:
    """Seconds after its start at which an enforced job is timed out (None: not enforced)."""
    return runtime_s * grace if enforce and runtime_s > 0 else None


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


def _seconds(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value:.0f} s" if value >= 10 else f"{value:.1f} s"


def _bytes(value: int | None) -> str:
    if not value:
        return "?"
    return f"{value / 2**20:.0f} MiB"
