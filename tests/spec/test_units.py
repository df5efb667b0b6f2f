"""Unit strings: memory sizes (binary), ISO-8601 durations, Slurm walltimes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from torc_slurm.spec.units import (format_walltime, parse_duration, parse_gpu_ids, parse_memory, parse_slurm_time,
                                    parse_walltime)

KIB, MIB, GIB, TIB = 2**10, 2**20, 2**30, 2**40


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100m", 100 * MIB),
        ("4g", 4 * GIB),
        ("1t", TIB),
        ("512k", 512 * KIB),
        ("100M", 100 * MIB),
        ("4G", 4 * GIB),
        ("2GiB", 2 * GIB),
        ("2gb", 2 * GIB),
        ("1.5g", 3 * GIB // 2),
        ("0.5t", TIB // 2),
        ("10b", 10),
        (" 8g ", 8 * GIB),
    ],
)
def test_memory_is_binary(text: str, expected: int) -> None:
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["100", "", "g", "4x", "4 gigabytes", "-1g", "1e3m", "4g4", "four g", "4pb"])
def test_memory_without_a_valid_unit_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="memory"):
        parse_memory(text)


@pytest.mark.parametrize("value", [True, None, 4.5, ["4g"]])
def test_memory_of_the_wrong_type_is_refused(value: object) -> None:
    with pytest.raises(ValueError):
        parse_memory(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("PT30M", 1800),
        ("P0DT1M", 60),
        ("PT1H", 3600),
        ("P1DT2H", 26 * 3600),
        ("P1D", 86400),
        ("PT90S", 90),
        ("PT1H30M15S", 5415),
        ("PT0.5S", 1),  # rounded up: a job never gets less time than it asked for
        ("pt2m", 120),
    ],
)
def test_iso8601_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["30m", "1:00:00", "PT", "P", "PT0S", "P0D", "PTXM", "", "-PT1H", "3600"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_duration_must_be_a_string() -> None:
    with pytest.raises(ValueError):
        parse_duration(3600)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("01:00:00", 3600),
        ("00:30:00", 1800),
        ("1:00:00", 3600),
        ("48:00:00", 48 * 3600),
        ("1-00:00:00", 86400),
        ("2-12:30:15", 2 * 86400 + 12 * 3600 + 30 * 60 + 15),
        ("00:00:01", 1),
    ],
)
def test_walltimes(text: str, seconds: int) -> None:
    assert parse_walltime(text) == seconds


@pytest.mark.parametrize(
    "text",
    ["00:00:00", "1:60:00", "01:00:60", "60:00", "1-", "1-1", "abc", "", "01:00:00\n", " 01:00:00",
     "01:00:00\n#SBATCH --wrap=x", "-1:00:00", "PT1H", "1d-01:00:00"],
)
def test_bad_walltimes_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="walltime"):
        parse_walltime(text)


@pytest.mark.parametrize(("seconds", "text"), [(59, "00:00:59"), (3600, "01:00:00"), (86399, "23:59:59"),
                                                (86400, "1-00:00:00"), (90061, "1-01:01:01")])
def test_format_walltime(seconds: int, text: str) -> None:
    assert format_walltime(seconds) == text


@given(st.integers(min_value=1, max_value=400 * 86400))
def test_walltime_round_trip(seconds: int) -> None:
    assert parse_walltime(format_walltime(seconds)) == seconds


@given(st.integers(min_value=1, max_value=2**20), st.sampled_from([("k", KIB), ("m", MIB), ("g", GIB), ("t", TIB)]))
def test_memory_property(number: int, unit: tuple[str, int]) -> None:
    suffix, factor = unit
    assert parse_memory(f"{number}{suffix}") == number * factor
    assert parse_memory(f"{number}{suffix.upper()}iB") == number * factor


@pytest.mark.parametrize(("text", "ids"), [
    ("0,1", ("0", "1")), ("0-3", ("0", "1", "2", "3")), ("gpu:0,gpu:2", ("0", "2")), ("1,4-5", ("1", "4", "5")),
    ("GPU-8f3c2a1b-0000-1111", ("GPU-8f3c2a1b-0000-1111",)), ("MIG-1/2/3", ("MIG-1/2/3",)),
    ("", ()), ("NoDevFiles", ()), ("-1", ()), ("none", ()), (" 0 , 1 ", ("0", "1")),
])
def test_gpu_id_lists(text: str, ids: tuple[str, ...]) -> None:
    assert parse_gpu_ids(text) == ids


@pytest.mark.parametrize("text", ["0,0", "0-2,1", "0;1", "gpu 0", "$(reboot)"])
def test_bad_gpu_id_lists(text: str) -> None:
    with pytest.raises(ValueError, match="GPU ids"):
        parse_gpu_ids(text)


@pytest.mark.parametrize(("text", "seconds"), [("59:56", 3596), ("0:07", 7), ("2:03:04", 7384),
                                               ("1-02:03:04", 93784)])
def test_slurm_times_in_squeues_short_form(text: str, seconds: int) -> None:
    assert parse_slurm_time(text) == seconds
