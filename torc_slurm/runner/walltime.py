"""The runner's end time: fixed, or re-read now and then from a source (Slurm can extend a limit)."""

from __future__ import annotations

import logging
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

    def current(self, now: float) -> float | None:
        if self._source is not None and (self._read_at is None or now - self._read_at >= self._refresh_s):
            self._read_at = now
            try:
                value = self._source()
            except Exception as exc:  # noqa: BLE001 - a flaky squeue must not kill the runner
                log.warning("could not re-read the end time (%s); keeping %s", exc, self._value)
            else:
                if value is not None and value != self._value:
                    if self._value is not None:
                        log.info("end time changed by %+.0f s", value - self._value)
                    self._value = value
        return self._value

    def seconds_left(self, now: float, buffer_s: float = 0.0) -> float | None:
        end = self.current(now)
        return None if end is None else end - buffer_s - now
