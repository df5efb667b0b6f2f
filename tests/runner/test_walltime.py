"""The end time: read once at start, then refreshed in the background, so a hung squeue never holds
up the runner's loop; a failing source keeps the last value."""

from __future__ import annotations

import threading

from torc_slurm.runner.walltime import EndTime


def test_a_hung_refresh_never_blocks_and_its_answer_lands_later() -> None:
    release = threading.Event()
    calls: list[str] = []

    def source() -> float:
        calls.append("read")
        if len(calls) > 1:
            assert release.wait(30), "the test never released the source"
            return 2000.0
        return 1000.0

    end = EndTime(source=source, refresh_s=10)
    assert end.current(0.0) == 1000.0            # the first read, synchronous
    assert end.current(5.0) == 1000.0 and calls == ["read"]
    assert end.current(11.0) == 1000.0           # refresh due: started in the background...
    assert end.refreshing and calls == ["read", "read"]  # ...and it is still waiting on the source
    assert end.current(30.0) == 1000.0 and calls == ["read", "read"]  # no second refresh meanwhile
    release.set()
    end.wait_refreshed(30)
    assert end.current(31.0) == 2000.0 and not end.refreshing


def test_a_failing_source_keeps_the_last_value() -> None:
    answers = iter([1000.0])

    def source() -> float:
        return next(answers)  # StopIteration after the first: a failure

    end = EndTime(source=source, refresh_s=1)
    assert end.current(0.0) == 1000.0
    end.current(2.0)
    end.wait_refreshed(30)
    assert end.current(2.5) == 1000.0


def test_fixed_and_no_limit() -> None:
    assert EndTime(1234.0).current(0.0) == 1234.0
    assert EndTime().seconds_left(0.0) is None
    assert EndTime(100.0).seconds_left(40.0, buffer_s=10) == 50.0
