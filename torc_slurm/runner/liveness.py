"""Leases: when a runner may run its jobs, and when another runner may think it dead. Pure: every
function takes the time (``time.monotonic()`` seconds) as an argument.

The rules (DESIGN §2), with one timeout T, the workflow's ``heartbeat_timeout_seconds``:

* **Own lease.** A runner renews its lease in every queue cycle. It may start a job only while
  its last renewal is younger than T minus a safety margin, and once it is T old the runner kills
  its own jobs (self-fencing); its guardian does the same if the runner itself is frozen. All of
  this is measured on the runner's own monotonic clock from the moment it held the queue lock, so
  no other host's clock matters.
* **Others' leases, in queue time.** An observer never compares its clock with a timestamp written
  on another node. It notes when it first saw a peer's renewal counter at its present value and
  ages that observation on its own clock. The observation starts over when the counter moves,
  and whenever the observer itself went ``stall_s`` without reaching the queue: a stall that froze
  the observer (a held lock, a hung filesystem) froze the peer too, so it ages nobody.
* A peer's lease is **expired** once observed unchanged for ``EXPIRY_FACTOR`` × T. Since the peer
  renewed before the observer first saw the value, the peer's own clock shows at least as long
  since its renewal: it, or its guardian, fenced itself a good while before anyone may take its
  jobs. Expiry is still not proof of death: `runner.fencing` decides what evidence it takes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torc_slurm.store.leases import PeerLease

EXPIRY_FACTOR = 1.5


@dataclass
class OwnLease:
    """This runner's lease, on its own monotonic clock."""

    timeout_s: float
    renewed_at: float | None = None   # monotonic time of the last renewal (inside the lock)

    def renew(self, at: float) -> None:
        self.renewed_at = at

    @property
    def deadline(self) -> float | None:
        return None if self.renewed_at is None else self.renewed_at + self.timeout_s

    def margin_s(self) -> float:
        """A job is not started this close to the deadline: the next renewal comes first."""
        return min(2.0, self.timeout_s / 4)

    def may_start(self, now: float) -> bool:
        deadline = self.deadline
        return deadline is not None and now < deadline - self.margin_s()

    def expired(self, now: float) -> bool:
        deadline = self.deadline
        return deadline is not None and now >= deadline


@dataclass
class _Seen:
    lease_seq: int
    since: float


class LeaseObserver:
    """Ages the leases of other runners in this process's own clock (see the module notes)."""

    def __init__(self, timeout_s: float, stall_s: float) -> None:
        self.expire_after_s = EXPIRY_FACTOR * timeout_s
        self.stall_s = stall_s
        self._seen: dict[int, _Seen] = {}
        self._last: float | None = None

    def observe(self, now: float, peers: Iterable[PeerLease]) -> list[PeerLease]:
        """Record what the queue shows now; return the peers whose lease has expired."""
        if self._last is not None and now - self._last > self.stall_s:
            for seen in self._seen.values():  # this observer was stalled: start every observation over
                seen.since = now
        self._last = now
        expired, current = [], {}
        for peer in peers:
            seen = self._seen.get(peer.runner_id)
            if seen is None or seen.lease_seq != peer.lease_seq:
                seen = _Seen(peer.lease_seq, now)
            current[peer.runner_id] = seen
            if now - seen.since >= self.expire_after_s:
                expired.append(peer)
        self._seen = current
        return expired

    def observed_for(self, runner_id: int, now: float) -> float | None:
        seen = self._seen.get(runner_id)
        return None if seen is None else now - seen.since
