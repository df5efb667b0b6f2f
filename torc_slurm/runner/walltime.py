"""The runner's end time: fixed, or re-read now and then from a source (Slurm can extend a limit).

The first read happens when the runner starts, before its main loop; later refreshes run in a
background thread, so a slow or hung ``squeue`` never holds up the loop: it keeps the value it
has until the new one arrives."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class EndTime:
    """``current(now)`` gives the allocation's end (epoch seconds) or None for no limit.

    ``source`` is asked at most every ``refresh_s`` seconds; a failing source keeps the last value.
    """

    def __init__(self, fixed: float | None = None, source: Callable[[], float | None] | None = None,
                 refresh_s: float = 300.0) -> None:
        self._value = fixed
        self._source = source
        self._refresh_s = refresh_s
        self._read_at: float | None = None
        self._reading: threading.Thread | None = None

    def current(self, now: float) -> float | None:
        if self._source is None:
            return self._value
        if self._read_at is None:  # the first read, at start: the runner needs it before claiming
            self._read_at = now
            self._read()
        elif now - self._read_at >= self._refresh_s and not self.refreshing:
            self._read_at = now
            self._reading = threading.Thread(target=self._read, name="torc-end-time", daemon=True)
            self._reading.start()
        return self._value

    @property
    def refreshing(self) -> bool:
        """A background refresh is under way."""
        return self._reading is not None and self._reading.is_alive()

    def wait_refreshed(self, timeout: float | None = None) -> None:
        """Wait for a background refresh to end (for tests and an orderly exit)."""
        if self._reading is not None:
            self._reading.join(timeout)

    def seconds_left(self, now: float, buffer_s: float = 0.0) -> float | None:
        end = self.current(now)
        return None if end is None else end - buffer_s - now

    def _read(self) -> None:
        try:
            value = self._source() if self._source is not None else None
        except Exception as exc:  # noqa: BLE001 - a flaky squeue must not kill the runner
            log.warning("could not re-read the end time (%s); keeping %s", exc, self._value)
            return
        if value is not None and value != self._value:
            if self._value is not None:
                log.info("end time changed by %+.0f s", value - self._value)
            self._value = value  # one reference assignment: the loop sees the old value or the new
