"""Deciding that another runner is dead, with evidence, and making sure of it before its jobs are
taken (the cluster's "fence the node" rule, DESIGN §2).

`Fencer.assess` looks at the workflow's other live runners and returns two lists for the next
queue cycle: runners to sweep (their jobs go back to ready) and runners being fenced (an action is
under way; they are swept once it is confirmed). The evidence, strongest first:

* **Same host** (same boot id and pid namespace): the runner's pid is gone, or is another process
  now. Its jobs, found by their ``TORC_RUNNER_TOKEN``, are killed and confirmed gone; then it is
  swept at once, without waiting for any timeout. A runner here whose lease expired but whose
  process lives (frozen, stopped) gets the same treatment: its jobs are killed first.
* **Slurm, recorded**: a runner whose allocation the queue last saw ended (``torc slurm status``
  or ``watch`` asked Slurm) is swept at once.
* **Slurm**: a runner in an allocation whose lease expired is asked about in one ``squeue`` call.
  An allocation Slurm no longer runs means a dead runner. One that Slurm still runs is not swept on
  a stale lease alone: it is scancel'ed (its step, when the runner recorded one), and swept when
  Slurm confirms it gone. Without a way to ask Slurm, such a runner is left alone.
* **Another host, no Slurm**: nothing can be checked or killed from here; the runner is swept once
  its lease expired, relying on its own and its guardian's self-fencing (see `runner.liveness`).

Slurm is reached through the small `SlurmProbe` interface that the command line wires in, so the
runner does not depend on the Slurm layer.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import psutil

from torc_slurm.runner.guardian import kill_processes, processes_left
from torc_slurm.store.allocations import FINAL_STATES
from torc_slurm.store.leases import PeerLease, SweepRequest

# Allocation states (as the queue recorded them from Slurm) in which no runner of it can be alive.
ENDED_ALLOCATION_STATES = frozenset(FINAL_STATES) - {"canceled"}

log = logging.getLogger(__name__)


class SlurmProbe(Protocol):
    def alive(self, job_ids: Sequence[str]) -> set[str]:
        """The allocations (of ``job_ids``) Slurm still runs or queues; absent ones have ended."""

    def cancel(self, job_id: str) -> None:
        """scancel an allocation."""


@dataclass
class Verdicts:
    sweep: list[SweepRequest] = field(default_factory=list)
    fence: list[tuple[int, str]] = field(default_factory=list)


def host_key() -> str:
    """What makes two processes' pids comparable: the boot (kernel boot id) and the pid namespace."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            boot = handle.read().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return f"nohost:{os.uname().nodename}"
    return f"{boot}:{namespace}"


def process_started(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def runner_alive(pid: int, started: float | None) -> bool:
    """The runner's process still exists (same pid, same start time, not a zombie)."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(process.create_time() - started) < 0.05
    except psutil.Error:
        return False


class Fencer:
    def __init__(self, *, my_host_key: str, slurm: SlurmProbe | None = None, describe_s: float = 0.0) -> None:
        self.host_key = my_host_key
        self.slurm = slurm
        self.describe_s = describe_s  # the lease age to quote in messages

    def assess(self, peers: Iterable[PeerLease], expired: Iterable[PeerLease], *,
               evidence_only: bool = False) -> Verdicts:
        """Verdicts on ``peers``; ``expired`` are those whose lease `LeaseObserver` found expired.
        ``evidence_only``: act on proof of death only (a one-shot command cannot age leases)."""
        verdicts = Verdicts()
        expired_ids = {p.runner_id for p in expired}
        in_slurm: list[PeerLease] = []
        for peer in peers:
            late = peer.runner_id in expired_ids
            if peer.allocation_state in ENDED_ALLOCATION_STATES:
                verdicts.sweep.append(SweepRequest(peer.runner_id, peer.lease_seq,
                                                   f"Slurm reported allocation {peer.slurm_job_id} "
                                                   f"{peer.allocation_state}"))
            elif peer.host_key is not None and peer.host_key == self.host_key:
                self._same_host(peer, late, verdicts)
            elif peer.slurm_job_id and (late or evidence_only):
                in_slurm.append(peer)
            elif late and not evidence_only:
                verdicts.sweep.append(SweepRequest(
                    peer.runner_id, peer.lease_seq,
                    f"no lease renewal seen for {self.describe_s:.0f} s; host {peer.hostname} cannot be checked"
                    " from here, and its runner and guardian stop its jobs when their lease ends"))
        if in_slurm:
            self._in_slurm(in_slurm, verdicts, evidence_only)
        return verdicts

    def _same_host(self, peer: PeerLease, late: bool, verdicts: Verdicts) -> None:
        dead = not runner_alive(peer.pid, peer.pid_started)
        if not dead and not late:
            return
        if peer.token:
            kill_processes(peer.token, exclude=() if dead else (peer.pid,))
            left = processes_left(peer.token, exclude=() if dead else (peer.pid,))
            if left:
                verdicts.fence.append((peer.runner_id, f"its jobs' processes {left[:5]} would not die"))
                return
        reason = (f"its process {peer.pid} on this host is gone" if dead else
                  f"no lease renewal seen for {self.describe_s:.0f} s and its process {peer.pid} is not running"
                  " (stopped or frozen); its jobs were killed on this host")
        verdicts.sweep.append(SweepRequest(peer.runner_id, peer.lease_seq, reason))

    def _in_slurm(self, peers: list[PeerLease], verdicts: Verdicts, evidence_only: bool) -> None:
        if self.slurm is None:
            for peer in peers:
                if not evidence_only and peer.status != "fencing":
                    verdicts.fence.append((peer.runner_id, f"lease expired; cannot ask Slurm about allocation "
                                                           f"{peer.slurm_job_id} from here: left alone"))
            return
        try:
            alive = self.slurm.alive(sorted({p.slurm_job_id for p in peers if p.slurm_job_id}))
        except Exception as exc:  # noqa: BLE001 - Slurm trouble must not kill the runner
            log.warning("could not ask Slurm about runners with expired leases: %s", exc)
            return
        for peer in peers:
            job = peer.slurm_job_id or ""
            if job not in alive:
                verdicts.sweep.append(SweepRequest(peer.runner_id, peer.lease_seq,
                                                   f"Slurm reports allocation {job} ended"))
            elif not evidence_only and peer.status != "fencing":
                try:  # the whole allocation: a step can end while its allocation lives on
                    self.slurm.cancel(job)
                except Exception as exc:  # noqa: BLE001
                    log.warning("could not scancel %s: %s", job, exc)
                    continue
                verdicts.fence.append((peer.runner_id, f"lease expired while Slurm runs {job}: scancel {job} "
                                                       "sent; swept once Slurm confirms it ended"))
