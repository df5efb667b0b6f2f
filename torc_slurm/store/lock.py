"""The one external lock taken around every transaction on the queue file.

SQLite's own POSIX locks are not trustworthy on NFS/Lustre/GPFS, so every read or write holds an
exclusive ``filelock`` beside the database. ``flock`` is the default; sites without a working
``flock`` choose ``soft`` (an O_EXCL lock file). The lock counts acquisitions and the longest hold
so the benchmarks and tests can report them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import filelock

from torc_slurm.errors import QueueError

log = logging.getLogger(__name__)
LockKind = Literal["flock", "soft"]


class QueueLock:
    def __init__(self, path: str, kind: LockKind = "flock", *, poll_interval: float = 0.01,
                 warn_after: float = 10.0, give_up_after: float | None = None) -> None:
        if kind == "flock":
            self._lock: filelock.BaseFileLock = filelock.FileLock(
                path, mode=0o600, poll_interval=poll_interval, thread_local=False)
        elif kind == "soft":
            self._lock = filelock.SoftFileLock(path, mode=0o600, poll_interval=poll_interval,
                                               thread_local=False)
        else:
            raise QueueError(f"unknown lock kind {kind!r} (use 'flock' or 'soft')")
        self.kind = kind
        self.path = path
        self.warn_after = warn_after
        self.give_up_after = give_up_after
        self.acquisitions = 0
        self.longest_hold = 0.0
        self.total_hold = 0.0

    @contextmanager
    def held(self) -> Iterator[None]:
        waited_since = time.monotonic()
        while True:
            try:
                self._lock.acquire(timeout=self.warn_after)
                break
            except filelock.Timeout:
                waited = time.monotonic() - waited_since
                if self.give_up_after is not None and waited >= self.give_up_after:
                    raise QueueError(f"gave up waiting {waited:.0f} s for the queue lock {self.path}") from None
                log.warning("still waiting for the queue lock %s after %.0f s (another process holds it; "
                            "if none is alive and the lock kind is 'soft', remove the file)", self.path, waited)
        start = time.monotonic()
        self.acquisitions += 1
        try:
            yield
        finally:
            held = time.monotonic() - start
            self._lock.release()
            self.total_hold += held
            self.longest_hold = max(self.longest_hold, held)
