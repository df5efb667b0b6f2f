"""The runner's outcomes and failure handling: judging an ended attempt, runtime enforcement,
memory kills and failure-handler retries.

Pure decisions live in `runner.policy`; this module holds their timers and child processes:

* **Timeouts.** A job with ``enforce_runtime`` gets a deadline at start + runtime x runtime_grace.
  The runner's wait takes the nearest deadline as its timeout (event-driven, no polling). At the
  deadline the job gets SIGTERM if it ``supports_termination`` (then SIGKILL after the runner's
  termination grace), else SIGKILL, and its attempt is recorded failed with reason ``timeout``.
* **Memory.** With ``RunnerConfig.memory_kill_factor`` the monitor reports a job whose sampled tree
  RSS passed memory x factor; the runner kills it (reason ``oom``). Without it, OOM is detected only.
* **Failure handlers.** A failed attempt that a rule of the job's handler matches, with retries
  left, is retried: first the rule's ``recovery_script`` runs in the workflow's folder, as a child
  of the runner like the jobs (same process group rules, same guardian, reaped by the same wait),
  with TORC_JOB_ID, TORC_JOB_NAME, TORC_RETURN_CODE, TORC_ATTEMPT (and TORC_ATTEMPT_ID),
  TORC_WORKFLOW_ID and TORC_OUTPUT_DIR, bounded by ``recovery_timeout_s``. It runs outside the
  queue lock and before the outcome is reported; the job keeps its lease, its placement and its
  token meanwhile, so the retry is reported under the token it ran with (a revoked job's retry is
  late and changes nothing). If the script succeeds (or there is none) the outcome is a *retry*:
  the queue records the failed attempt and puts the job back to ready (attempt + 1 at its next
  claim). If it fails or times out, the job fails and the script's output tail is in the message.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from torc_slurm.runner.monitor import oom_kills
from torc_slurm.runner.policy import (Exit, judge, killed_by_stop_signal, matching_rule, may_retry, return_code_of,
                                      runtime_limit)
from torc_slurm.runner.process import Finished, LaunchSpec
from torc_slurm.spec.models import FailureRule
from torc_slurm.store.queue import ClaimedJob, Outcome

if TYPE_CHECKING:
    from torc_slurm.runner.loop import Runner, _Running

log = logging.getLogger(__name__)
OUTPUT_TAIL = 2000  # characters of a failed recovery script's output kept in the attempt's message


@dataclass
class _Recovery:
    entry: _Running
    outcome: Outcome              # the failed attempt, reported once the script is done
    handler: str
    rule: FailureRule
    log_path: Path
    due: float                    # monotonic: killed at this time
    timed_out: bool = False


class FailureHandling:
    """Timers and recovery scripts of one runner (runner thread only)."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.handlers: dict[str, list[FailureRule]] = {}
        self.recovering: dict[int, _Recovery] = {}

    def load(self, handlers: dict[str, list[FailureRule]]) -> None:
        self.handlers = handlers

    # -- timers ---------------------------------------------------------------------------------
    def started(self, entry: _Running, mono: float) -> None:
        """A job started: set its timeout, if its runtime is enforced."""
        job = entry.job
        entry.started = mono
        limit = runtime_limit(job.runtime_s, job.runtime_grace, job.enforce_runtime)
        entry.due = None if limit is None else mono + limit

    def next_due(self, mono: float) -> float | None:
        """Seconds until the nearest timer (None: no timer)."""
        dues = [r.due for r in self.runner.running.values() if r.due is not None]
        dues += [r.due for r in self.recovering.values() if not r.timed_out]
        return max(0.0, min(dues) - mono) if dues else None

    def check(self, mono: float) -> None:
        """Fire the timers that are due, and kill the jobs the monitor found over their memory."""
        runner = self.runner
        grace = runner.config.termination_grace_s
        for job_id, entry in list(runner.running.items()):
            if entry.due is None or entry.due > mono or job_id in runner._lease_lost:
                continue
            if entry.timed_out or not entry.job.supports_termination or job_id in runner._terminating:
                sig, entry.due = signal.SIGKILL, None
            else:
                sig, entry.due = signal.SIGTERM, mono + grace
            if not entry.timed_out:
                log.warning("job %s (%d) ran past runtime x runtime_grace (%.1f s): timing it out",
                            entry.job.name, job_id, entry.job.runtime_s * entry.job.runtime_grace)
            entry.timed_out = True
            runner._signaled.add(job_id)
            runner.pool.signal([job_id], sig)
        for job_id, recovery in self.recovering.items():
            if recovery.due <= mono and not recovery.timed_out:
                recovery.timed_out = True
                runner.pool.signal([-job_id], signal.SIGKILL)
        for job_id in runner.monitor.take_over_limit():
            entry = runner.running.get(job_id)
            if entry is not None and job_id not in runner._lease_lost:
                log.warning("job %s (%d) went past its memory x %s: killing it", entry.job.name, job_id,
                            runner.config.memory_kill_factor)
                entry.memory_killed = True
                runner._signaled.add(job_id)
                runner.pool.signal([job_id], signal.SIGKILL)

    def memory_limit(self, memory_bytes: int) -> int | None:
        factor = self.runner.config.memory_kill_factor
        return int(memory_bytes * factor) if factor and memory_bytes else None

    # -- outcomes -------------------------------------------------------------------------------
    def outcome(self, job: ClaimedJob, done: Finished, stats,  # noqa: ANN001
                running: _Running | None = None) -> Outcome:
        """The outcome of an ended attempt (``running``: its entry, None for a job that could not
        start), judged by `policy.judge` on what the runner knows."""
        runner = self.runner
        missing: tuple[str, ...] = ()
        if done.launch_error is None and done.return_code == 0 and job.output_files:
            missing = tuple(p for p in job.output_files if not (runner.config.working_dir / p).exists())
        peak_rss = runner._trusted_peak_rss(done.peak_rss_bytes)
        sampled = stats.peak_memory_bytes if stats else None
        oom_before = running.oom_kills if running else None
        oom_after = oom_kills() if oom_before is not None and killed_by_stop_signal(done.signal, done.return_code) \
            else None
        verdict = judge(Exit(
            done.return_code, done.signal, done.ended_at, done.launch_error, missing,
            lease_lost=job.id in runner._lease_lost, stopped_by_runner=job.id in runner._terminating,
            stop_reason=runner.stop_reason, stop_requested_at=runner._stop_requested_at,
            timed_out=bool(running and running.timed_out), runtime_s=job.runtime_s,
            ran_s=self._ran_until(job.id, done.ended_at) - done.started_at, limit_s=job.runtime_s * job.runtime_grace,
            memory_bytes=job.memory_bytes, peak_memory_bytes=max(peak_rss or 0, sampled or 0) or None,
            oom_kills=(oom_after - oom_before) if oom_after is not None and oom_before is not None else 0,
            memory_killed=bool(running and running.memory_killed)))
        return Outcome(
            job.id, job.attempt, verdict.status, job.lease_token, done.return_code, done.signal, done.started_at,
            done.ended_at, peak_rss, done.cpu_time_s,
            stats.avg_cpu_percent if stats else None, stats.peak_cpu_percent if stats else None,
            stats.avg_memory_bytes if stats else None, sampled, verdict.message, verdict.reason,
            avg_gpu_percent=stats.avg_gpu_percent if stats else None,
            peak_gpu_memory_bytes=stats.peak_gpu_memory_bytes if stats else None)

    def _ran_until(self, job_id: int, ended_at: float) -> float:
        """A job the runner stopped overran its runtime only if it had by the stop request (the
        grace period after it is the runner's doing)."""
        runner = self.runner
        if job_id in runner._terminating and runner._stop_requested_at is not None:
            return min(ended_at, runner._stop_requested_at)
        return ended_at

    # -- failure handlers -----------------------------------------------------------------------
    def after_failure(self, entry: _Running, outcome: Outcome) -> Outcome | None:
        """The outcome to report for a failed attempt, or None while its recovery script runs."""
        job = entry.job
        # A group's members start together: retrying one member alone could never start it again.
        if outcome.status != "failed" or not job.failure_handler or self.runner.stop_reason is not None \
                or job.group is not None:
            return outcome
        rules = self.handlers.get(job.failure_handler)
        if rules is None:
            return _noted(outcome, f"failure handler {job.failure_handler!r} is not defined")
        code = return_code_of(outcome.return_code, outcome.signal)
        rule = matching_rule(rules, outcome.reason, code)
        if rule is None:
            return outcome
        if not may_retry(rule, job.retries):
            return _noted(outcome, f"failure handler {job.failure_handler}: no retries left "
                                   f"({job.retries} of {rule.max_retries} used)")
        retry = replace(outcome, status="retry", message=(
            f"{outcome.message}; retried by failure handler {job.failure_handler} "
            f"(retry {job.retries + 1} of {rule.max_retries})"))
        if not rule.recovery_script:
            return retry
        return self._start_recovery(entry, retry, job.failure_handler, rule, code)

    def _start_recovery(self, entry: _Running, outcome: Outcome, handler: str, rule: FailureRule,
                        code: int | None) -> Outcome | None:
        runner, job = self.runner, entry.job
        cfg = runner.config
        log_path = entry.stdout.with_name(entry.stdout.stem + "_recovery.log")
        env = runner._environment(job, entry.placement)
        env.update(TORC_RETURN_CODE="" if code is None else str(code))
        launched = runner.pool.start(LaunchSpec(-job.id, job.attempt, rule.recovery_script or "", cfg.working_dir,
                                                env, log_path, log_path))
        if isinstance(launched, Finished):
            return _failed(outcome, f"recovery script could not start: {launched.launch_error}")
        self.recovering[job.id] = _Recovery(entry, outcome, handler, rule, log_path,
                                            time.monotonic() + cfg.recovery_timeout_s)
        return None

    def recovery_done(self, done: Finished) -> Outcome | None:
        """The outcome of the job whose recovery script just ended (None if unknown)."""
        recovery = self.recovering.pop(-done.job_id, None)
        if recovery is None:
            return None
        runner, job_id, outcome = self.runner, -done.job_id, recovery.outcome
        if job_id in runner._lease_lost:
            return replace(outcome, status="lost", reason="lost", message=(
                f"{outcome.message}; killed during its recovery script: the runner's lease on this job ended"))
        if job_id in runner._terminating:
            return replace(outcome, status="terminated", reason="walltime", message=(
                f"{outcome.message}; its recovery script was stopped with the runner ({runner.stop_reason}); "
                "returned to ready"))
        if done.return_code == 0 and not recovery.timed_out:
            return replace(outcome, message=outcome.message + " after its recovery script succeeded")
        if recovery.timed_out:
            why = f"timed out after {runner.config.recovery_timeout_s:.0f} s"
        elif done.signal is not None:
            why = f"killed by signal {done.signal}"
        else:
            why = f"exit code {done.return_code}"
        return _failed(outcome, f"recovery script failed ({why}); output: {_tail(recovery.log_path)}")

    def lose(self, job_ids: list[int]) -> None:
        """Kill the recovery scripts of jobs this runner no longer holds."""
        live = [-j for j in job_ids if j in self.recovering]
        if live:
            self.runner.pool.signal(live, signal.SIGKILL)

    def stop_all(self, sig: int) -> None:
        self.runner.pool.signal([-j for j in self.recovering], sig)


def memory_kill_factor(environ: Mapping[str, str]) -> float | None:
    """``TORC_MEMORY_KILL_FACTOR`` (a number >= 1), or None when unset or invalid (with a warning)."""
    text = environ.get("TORC_MEMORY_KILL_FACTOR", "").strip()
    if not text:
        return None
    try:
        factor = float(text)
    except ValueError:
        factor = 0.0
    if not factor >= 1.0 or factor == float("inf"):
        log.warning("TORC_MEMORY_KILL_FACTOR=%r is not a number >= 1; jobs past their memory are not killed", text)
        return None
    return factor


def _noted(outcome: Outcome, note: str) -> Outcome:
    return replace(outcome, message=f"{outcome.message}; {note}" if outcome.message else note)


def _failed(retry: Outcome, note: str) -> Outcome:
    """A retry whose recovery failed: the job fails (the retry note is dropped)."""
    message = (retry.message or "").split("; retried by failure handler")[0]
    return replace(retry, status="failed", message=f"{message}; {note}")


def _tail(path: Path) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(unreadable: {exc.strerror or exc})"
    text = text.strip()
    return ("…" + text[-OUTPUT_TAIL:]) if len(text) > OUTPUT_TAIL else (text or "(none)")
