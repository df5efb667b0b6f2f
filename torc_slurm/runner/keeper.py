"""`LeaseKeeper`: everything a runner does about leases, in one place the loop drives.

It owns the runner's own lease (`liveness.OwnLease`), the guardian process that fences the jobs if
the runner cannot (`guardian`), the observer that ages the other runners' leases in queue time
(`liveness.LeaseObserver`) and the fencer that turns expiry and evidence into sweeps
(`fencing.Fencer`). The loop asks it whether a job may start, hands it the result of each queue
cycle, and passes its verdicts into the next one.
"""

from __future__ import annotations

import os
import secrets

from torc_slurm.runner.fencing import Fencer, SlurmProbe, Verdicts, host_key, process_started
from torc_slurm.runner.guardian import TOKEN_VARIABLE, Guardian
from torc_slurm.runner.liveness import EXPIRY_FACTOR, LeaseObserver, OwnLease
from torc_slurm.store.leases import PeerLease


class LeaseKeeper:
    def __init__(self, *, timeout_s: float, observe_every_s: float, slurm: SlurmProbe | None = None,
                 guardian: bool = True) -> None:
        self.token = secrets.token_hex(12)
        self.own = OwnLease(timeout_s)
        self.observer = LeaseObserver(timeout_s, stall_s=timeout_s / 2)
        self.fencer = Fencer(my_host_key=host_key(), slurm=slurm, describe_s=EXPIRY_FACTOR * timeout_s)
        self.guardian = Guardian(self.token) if guardian else None
        self.observe_every_s = observe_every_s
        self._verdicts = Verdicts()
        self._last_observed = -float("inf")

    # -- this runner -----------------------------------------------------------------------
    def start(self) -> None:
        if self.guardian is not None:
            self.guardian.start()

    def identity(self) -> dict[str, object]:
        """What `Queue.register_runner` records so that others can check on this runner."""
        return {"host_key": self.fencer.host_key, "pid_started": process_started(os.getpid()),
                "token": self.token, "slurm_step_id": os.environ.get("SLURM_STEP_ID")}

    def job_environment(self) -> dict[str, str]:
        return {TOKEN_VARIABLE: self.token}

    def may_start(self, now: float) -> bool:
        return self.own.may_start(now)

    def expired(self, now: float) -> bool:
        return self.own.expired(now)

    def seconds_to_deadline(self, now: float) -> float | None:
        deadline = self.own.deadline
        return None if deadline is None else deadline - now

    def renewed(self, at: float) -> None:
        """A cycle (or the registration) renewed the lease at monotonic time ``at``."""
        self.own.renew(at)
        if self.guardian is not None and self.own.deadline is not None:
            self.guardian.renew(self.own.deadline)

    # -- the others ------------------------------------------------------------------------
    def observe_due(self, now: float) -> bool:
        return now - self._last_observed >= self.observe_every_s

    def observed(self, at: float, peers: list[PeerLease]) -> None:
        """Age the peers' leases and decide, outside the lock, what the next cycle sweeps."""
        self._last_observed = at
        expired = self.observer.observe(at, peers)
        self._verdicts = self.fencer.assess(peers, expired)

    def take_verdicts(self) -> Verdicts:
        verdicts, self._verdicts = self._verdicts, Verdicts()
        return verdicts

    def restore_verdicts(self, verdicts: Verdicts) -> None:
        """The cycle that carried them failed: they go into the next one."""
        self._verdicts.sweep[:0] = verdicts.sweep
        self._verdicts.fence[:0] = verdicts.fence

    def close(self) -> None:
        if self.guardian is not None:
            self.guardian.close()
