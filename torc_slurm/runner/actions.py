"""Performing workflow actions: ``run_commands`` here, ``schedule_nodes`` through an injected
scheduler (the Slurm side lives in ``slurm/actions.py``; the runner layer never imports Slurm).

* ``perform(claim)``: run_commands runs each command with bash, one after the other, in the
  workflow's folder with the ``TORC_*`` variables; stdout/stderr go to
  ``<output>/actions/a<N>_t<token>_<k>.{out,err}`` (user-only). The first command that fails fails
  the action (never the workflow).
* ``ActionPerformer``: a runner's claims are performed in threads, so the loop keeps dispatching
  jobs. A stopping runner first records its jobs (``Runner._last_cycle_before_actions``), then
  drains the claims (renewing its lease) until a deadline (the termination grace after a signal,
  a quarter of the buffer before the end time) or a second signal: then the commands' process
  groups are killed and those claims are not recorded, so they are taken over once the runner has
  signed off (it is then dead; its commands are too). An outcome a thread could not record is
  kept and written by the runner's next cycle or sign-off.
* ``perform_claims``: a login-node observer (``workflows init``, ``submit``, ``slurm watch``)
  performs its claims in its own process, renewing the claims' lease while it does; SIGTERM/SIGHUP
  /Ctrl-C kill the running command's group with it, and each command's group id is recorded in
  the claim (a same-host takeover waits for that group to be gone).
* Fault injection for tests: ``TORC_FAULT_ACTION_CLAIMED=<trigger>|any`` makes a runner SIGKILL
  itself right after the commit that claimed such an action (before performing it).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torc_slurm.errors import QueueError
from torc_slurm.runner.process import open_output
from torc_slurm.store import actions as store_actions
from torc_slurm.store.actions import Claim, Observer
from torc_slurm.store.db import Database

log = logging.getLogger(__name__)
FAULT_VARIABLE = "TORC_FAULT_ACTION_CLAIMED"
# A scheduler for schedule_nodes claims: claim -> (ok, message, result with "slurm_job_ids").
Schedule = Callable[[Claim], tuple[bool, str, dict[str, Any]]]


@dataclass(frozen=True)
class Context:
    db_path: Path
    workflow_id: int
    working_dir: Path
    output_dir: Path
    source: str                      # 'runner 3', 'init', 'watch' (events)
    schedule: Schedule | None = None
    env: dict[str, str] | None = None
    groups: ProcessGroups | None = None   # the command process groups in flight (killed at a deadline)
    # A login observer's: called with each command's process group id as it starts (recorded in the
    # claim row, so a same-host observer does not take the claim over while that group lives).
    on_command_start: Callable[[int], None] | None = None


class ProcessGroups:
    """The process groups of the action commands running now (each command runs in its own
    session), so a stopping runner can kill them at its deadline or on a second signal
    (``kill``: signal-safe, it only sends signals)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: set[int] = set()
        self.cut = False   # set by kill(): commands started afterwards do not run (a plain flag: signal-safe)

    def add(self, pgid: int) -> None:
        with self._lock:
            self._live.add(pgid)

    def discard(self, pgid: int) -> None:
        with self._lock:
            self._live.discard(pgid)

    def __len__(self) -> int:
        return len(self._live)

    def kill(self, sig: int = signal.SIGTERM) -> None:
        self.cut = True
        for pgid in list(self._live):  # no lock: may run in a signal handler
            _killpg(pgid, sig)


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def perform(claim: Claim, ctx: Context) -> tuple[bool, str, dict[str, Any]]:
    """Do the claimed action; (ok, one-line message, result for the queue)."""
    try:
        if claim.type == "run_commands":
            return run_commands(claim.config.get("commands") or [], ctx, f"a{claim.index + 1}_t{claim.token}",
                                {"TORC_ACTION_INDEX": str(claim.index + 1), "TORC_ACTION_TRIGGER": claim.trigger})
        if ctx.schedule is None:
            return False, "no Slurm here to submit with", {}
        return ctx.schedule(claim)
    except Exception as exc:  # an action's failure is the action's, never the observer's
        log.exception("%s failed", claim.label)
        return False, f"{type(exc).__name__}: {exc}", {}


def run_commands(commands: Sequence[str], ctx: Context, stem: str, extra_env: dict[str, str], *,
                 deadline: float | None = None) -> tuple[bool, str, dict[str, Any]]:
    """Each command with bash, in order; the first that fails fails the action. ``deadline``
    (monotonic): a command still running then is killed (its group: TERM, then KILL) and the
    action fails."""
    from torc_slurm.runner.session import private_folder

    # As a runner makes it (0700 at every level it creates, then checked): an observer on a login
    # node (init, submit, watch) may be the first to create <working dir>/torc_output.
    private_folder(ctx.output_dir)
    folder = private_folder(ctx.output_dir / "actions")
    env = dict(os.environ)
    env.update(ctx.env or {})
    env.update({"TORC_DB": str(ctx.db_path), "TORC_WORKFLOW_ID": str(ctx.workflow_id),
                "TORC_OUTPUT_DIR": str(ctx.output_dir), **extra_env})
    codes: list[int] = []
    files: list[str] = []
    for number, command in enumerate(commands, 1):
        out, err = folder / f"{stem}_{number}.out", folder / f"{stem}_{number}.err"
        groups = ctx.groups
        if groups is not None and groups.cut:
            return False, f"command {number} of {len(commands)} not run: the observer is stopping", \
                {"return_codes": codes, "files": files}
        if deadline is not None and time.monotonic() >= deadline:
            return False, f"command {number} of {len(commands)} not run: no time left", \
                {"return_codes": codes, "files": files}
        with _private(out) as stdout, _private(err) as stderr:
            code, timed_out = _run_one(command, ctx, env, stdout, stderr, deadline)
        codes.append(code)
        files += [str(out), str(err)]
        if timed_out:
            return False, f"command {number} of {len(commands)} killed at the observer's deadline", \
                {"return_codes": codes, "files": files}
        if code != 0:
            return False, f"command {number} of {len(commands)} exited {code}", {"return_codes": codes,
                                                                               "files": files}
    return True, f"{len(commands)} command(s) ran", {"return_codes": codes, "files": files}


KILL_AFTER_S = 2.0  # TERM, then KILL this long after


def _run_one(command: str, ctx: Context, env: dict[str, str], stdout: Any, stderr: Any,
             deadline: float | None) -> tuple[int, bool]:
    """One command in its own session (as a job: the guardian kills the group of whatever carries
    the runner's token, which must never be the runner's own group). Returns (code, timed out)."""
    proc = subprocess.Popen(["bash", "-c", command], cwd=ctx.working_dir, env=env, stdout=stdout, stderr=stderr,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    groups = ctx.groups
    if groups is not None:
        groups.add(proc.pid)
    try:
        if ctx.on_command_start is not None:
            try:
                ctx.on_command_start(proc.pid)
            except Exception as exc:  # the claim row lacks the group: a takeover may not wait for it
                log.warning("could not record the command's process group %d in its claim: %s", proc.pid, exc)
        try:
            return proc.wait(None if deadline is None else max(0.0, deadline - time.monotonic())), False
        except subprocess.TimeoutExpired:
            _stop_group(proc)
            return proc.returncode, True
        except BaseException:  # Ctrl-C, a signal turned into an exit, anything: the command dies with us
            _stop_group(proc)
            raise
    finally:
        if groups is not None:
            groups.discard(proc.pid)


def _stop_group(proc: subprocess.Popen) -> None:
    """TERM the command's process group, KILL it ``KILL_AFTER_S`` later if bash is still there."""
    _killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(KILL_AFTER_S)
    except subprocess.TimeoutExpired:
        pass
    _killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _private(path: Path) -> Any:
    """As a job's stdio file: user-only, and a symlink planted where it goes is refused."""
    return os.fdopen(open_output(path), "wb")


def perform_claims(claims: Sequence[Claim], ctx: Context, db: Database) -> list[tuple[Claim, bool, str]]:
    """A login-node observer performs its claims now, one after the other, renewing their lease
    every timeout / 4 from a thread while it works. Returns (claim, recorded ok, message)."""
    done: list[tuple[Claim, bool, str]] = []
    if not claims:
        return done
    stop = threading.Event()
    pending = list(claims)

    def keep_renewing() -> None:
        # Never ends on an error: one failed renewal must not let the claims be taken over while
        # they are being performed (the next one, timeout / 4 later, renews them).
        while not stop.wait(store_actions.lease_timeout() / 4):
            try:
                with Database(db.path, create=False) as own:
                    store_actions.renew(own, list(pending))
            except Exception as exc:
                log.warning("renewing the actions' claims failed (%s); retrying", exc)

    renewer = threading.Thread(target=keep_renewing, name="torc-action-lease", daemon=True)
    renewer.start()
    previous = _exit_on_signals()
    try:
        for claim in claims:
            ok, message, result = perform(claim, dataclasses.replace(
                ctx, on_command_start=lambda pgid, claim=claim: _record_group(db, claim, pgid)))
            recorded = _finish_while_renewed(db, claim, ok, message, result, ctx.source)
            pending.remove(claim)
            done.append((claim, recorded, message))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stop.set()
        renewer.join()
    return done


def _record_group(db: Database, claim: Claim, pgid: int) -> None:
    with Database(db.path, create=False) as own:
        store_actions.record_command_group(own, claim, pgid)


def _exit_on_signals() -> dict[int, Any]:
    """While a login observer performs its claims: SIGTERM/SIGHUP (a closed terminal, a killed
    session) end it by an exception, as Ctrl-C does, so the command running now is killed with it
    (``_run_one``: its group gets TERM, then KILL) instead of running on unowned while the claim
    is taken over. Only the main thread can install handlers; elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def leave(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    return {sig: signal.signal(sig, leave) for sig in (signal.SIGTERM, signal.SIGHUP)}


def _finish_while_renewed(db: Database, claim: Claim, ok: bool, message: str, result: dict[str, Any],
                          source: str) -> bool:
    """Record the outcome, retried (backoff to 5 s) while the claim's lease is being renewed, for
    up to the lease timeout: past that the claim may be taken over anyway (its outcome would be
    late). Returns whether it was recorded as current."""
    give_up = time.monotonic() + store_actions.lease_timeout()
    delay = 0.1
    while True:
        try:
            return store_actions.finish(db, claim, ok, message, result, source=source)
        except Exception as exc:
            if time.monotonic() + delay > give_up:
                log.error("%s: could not record the outcome (%s); it will be taken over and performed again",
                          claim.label, exc)
                return False
            log.warning("%s: could not record the outcome (%s); retrying in %.1f s", claim.label, exc, delay)
            time.sleep(delay)
            delay = min(2 * delay, 5.0)


class ActionPerformer:
    """A runner's side of the actions (set as ``RunnerConfig.actions``). ``attach`` makes the
    runner's queue claim actions in its cycles (``Queue.action_observer``); claims are performed
    in threads; ``drain`` waits for them; ``worker_start``/``worker_complete`` run this runner's
    own on_worker_* actions."""

    def __init__(self, *, schedule: Schedule | None = None, can_schedule: bool = True,
                 no_slurm_reason: str | None = None) -> None:
        self.schedule = schedule
        self.can_schedule = can_schedule and schedule is not None
        self.no_slurm_reason = no_slurm_reason
        self.accepting = True
        self.observer: Observer | None = None
        self.ctx: Context | None = None
        self._threads: list[threading.Thread] = []
        self.groups = ProcessGroups()
        self._lock = threading.Lock()
        # Outcomes a thread could not record: written by the runner's next cycle or its sign-off
        # (never dropped: a claim left 'claimed' under a live runner would be performed twice).
        self._unrecorded: list[tuple[Claim, bool, str, dict[str, Any], str]] = []
        self.abandoned = False  # the drain gave up: claims left to be taken over (a plain flag: signal-safe)

    def attach(self, *, db: Database, queue: Any, runner_id: int, working_dir: Path, output_dir: Path,
               identity: dict[str, Any], env: dict[str, str] | None = None) -> None:
        from torc_slurm.runner.fencing import runner_alive

        self.observer = Observer(name=f"runner {runner_id}", host_key=identity.get("host_key"), pid=os.getpid(),
                                 pid_started=identity.get("pid_started"), runner_id=runner_id,
                                 can_schedule=self.can_schedule, no_slurm_reason=self.no_slurm_reason,
                                 alive=runner_alive)
        self.ctx = Context(db.path, queue.workflow_id, working_dir, output_dir, f"runner {runner_id}",
                           self.schedule, {**(env or {}), "TORC_RUNNER_ID": str(runner_id)}, self.groups)
        queue.action_observer = self

    # -- called by Queue.cycle: claims made inside its transaction, delivered after its commit -------
    def deliver(self, claims: Sequence[Claim]) -> None:
        fault = os.environ.get(FAULT_VARIABLE)
        if fault and any(fault in ("any", c.trigger) for c in claims):
            log.error("fault injection (%s=%s): killing this runner right after its claim", FAULT_VARIABLE, fault)
            os.kill(os.getpid(), signal.SIGKILL)
        for claim in claims:
            thread = threading.Thread(target=self._run, args=(claim,), name=f"torc-action-{claim.index + 1}",
                                      daemon=True)
            self._threads.append(thread)
            thread.start()

    def _run(self, claim: Claim) -> None:
        assert self.ctx is not None
        try:
            ok, message, result = perform(claim, self.ctx)
        except BaseException as exc:  # perform catches Exception; anything else still ends the claim
            ok, message, result = False, f"{type(exc).__name__}: {exc}", {}
        if self.abandoned:  # killed at the drain's deadline: the claim is left to be taken over
            log.warning("%s: cut short as the runner stops (%s); left to be taken over", claim.label, message)
            return
        log.info("%s: %s", claim.label, message)
        try:
            with Database(self.ctx.db_path, create=False) as db:
                store_actions.finish(db, claim, ok, message, result, source=self.ctx.source)
            return
        except Exception as exc:  # the queue unreachable for a moment: the runner's next cycle writes it
            log.warning("%s: could not record the outcome (%s); the runner's next cycle will", claim.label, exc)
        with self._lock:
            self._unrecorded.append((claim, ok, message, result, self.ctx.source))

    # -- called by Queue.cycle / finish_runner: outcomes the threads could not record ---------------
    def unrecorded_outcomes(self) -> list[tuple[Claim, bool, str, dict[str, Any], str]]:
        with self._lock:
            return list(self._unrecorded)

    def outcomes_recorded(self, recorded: Sequence[tuple[Claim, bool, str, dict[str, Any], str]]) -> None:
        with self._lock:
            done = {id(item) for item in recorded}
            self._unrecorded = [item for item in self._unrecorded if id(item) not in done]

    @property
    def busy(self) -> bool:
        self._threads = [t for t in self._threads if t.is_alive()]
        return bool(self._threads)

    def drain(self, renew: Callable[[], None], every_s: float, deadline: float | None = None) -> bool:
        """Stop claiming and wait for the claims in flight, calling ``renew`` (a queue cycle that
        renews the runner's lease) every ``every_s`` meanwhile, until ``deadline`` (monotonic; None:
        no limit) or ``abort()``. Then the commands still running are killed (their groups: TERM,
        then KILL) and their claims are not recorded: the runner signs off, so they are taken over.
        Returns whether every claim finished."""
        self.accepting = False
        renewed = time.monotonic()
        while self.busy:
            now = time.monotonic()
            if self.groups.cut or (deadline is not None and now >= deadline):
                self.give_up()
                return False
            wait = every_s if deadline is None else max(0.0, min(every_s, deadline - now))
            self._threads[0].join(wait)
            if self.busy and time.monotonic() - renewed >= every_s:
                renewed = time.monotonic()
                try:
                    renew()
                except (QueueError, sqlite3.Error) as exc:
                    log.warning("renewing the lease while actions finish failed: %s", exc)
        return True

    def abort(self) -> None:
        """Signal-safe (a second SIGTERM/SIGINT): the claims in flight are left to be taken over,
        their commands TERMed now; ``drain`` gives up (and KILLs what is left)."""
        self.abandoned = True
        self.groups.kill(signal.SIGTERM)

    def give_up(self) -> None:
        """The claims in flight are left to be taken over: their commands are killed (TERM, KILL
        ``KILL_AFTER_S`` later) and their outcomes not recorded. A schedule_nodes claim blocked in
        sbatch is not waited for (its thread dies with the runner; the takeover asks Slurm)."""
        self.abandoned = True
        self.groups.kill(signal.SIGTERM)
        end = time.monotonic() + KILL_AFTER_S
        for thread in list(self._threads):
            thread.join(max(0.0, end - time.monotonic()))
        self.groups.kill(signal.SIGKILL)
        log.warning("actions still in flight at the runner's deadline were killed; their claims will be taken over")

    # -- on_worker_start / on_worker_complete: once per runner, performed by the runner itself ----
    def worker_actions(self, db: Database, trigger: str, deadline: float | None = None) -> None:
        """This runner's on_worker_* actions; ``deadline`` (monotonic): a command still running
        then is killed and the action recorded as failed (so is a second signal)."""
        if self.ctx is None:
            return
        for index, config in store_actions.per_runner_actions(db, self.ctx.workflow_id, trigger):
            stem = f"a{index + 1}_{self.ctx.source.replace(' ', '')}"
            try:
                ok, message, result = run_commands(config.get("commands") or [], self.ctx, stem,
                                                   {"TORC_ACTION_INDEX": str(index + 1),
                                                    "TORC_ACTION_TRIGGER": trigger}, deadline=deadline)
            except (OSError, QueueError) as exc:
                ok, message, result = False, f"{type(exc).__name__}: {exc}", {}
            try:
                store_actions.record_per_runner(db, self.ctx.workflow_id, index, trigger, ok, message, result,
                                                source=self.ctx.source)
            except (QueueError, sqlite3.Error) as exc:
                log.warning("could not record %s action #%d: %s", trigger, index + 1, exc)
