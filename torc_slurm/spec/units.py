"""Pure parsers, one per external format: memory sizes, ISO-8601 durations, Slurm times (walltimes
and squeue's time left), GPU id lists (Slurm's and the visibility variables')."""

from __future__ import annotations

import functools
import re
from datetime import timedelta
from decimal import Decimal

from torc_slurm.spec.limits import short_repr

_MEMORY = re.compile(r"^\s*(\d{1,20}(?:\.\d{1,20})?)\s*([kmgt])?i?b?\s*$", re.IGNORECASE)
_POWERS = {None: 0, "b": 0, "k": 1, "m": 2, "g": 3, "t": 4}


@functools.cache
def _timedelta_adapter():  # noqa: ANN202
    """pydantic's ISO-8601 duration parser, built on first use: importing pydantic costs ~0.3 s,
    which read-only commands (status, summary) need not pay."""
    from pydantic import TypeAdapter

    return TypeAdapter(timedelta)
# [D-]HH:MM:SS, or MM:SS (squeue's short form); fullmatch, so no stray whitespace or newline passes.
_SLURM_TIME = re.compile(r"(?:(?:(\d{1,6})-)?(\d{1,2}):)?(\d{1,2}):(\d{2})")
_NO_GPU = frozenset({"", "nodevfiles", "none", "-1"})
_GPU_ID = re.compile(r"[A-Za-z0-9\-:./]+")  # an index, or a GPU UUID / MIG id
_GPU_RANGE = re.compile(r"(\d+)-(\d+)")


def parse_memory(text: str | int) -> int:
    """'100m', '4g', '1t', '512k', '2GiB' -> bytes (binary units). A bare number is refused:
    Slurm reads it as MB and a job runner as bytes, so we ask the user to say which."""
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise ValueError(f"memory must be a string like '4g', not {short_repr(text)}")
    match = _MEMORY.match(str(text))
    if not match or match.group(2) is None and not str(text).strip().lower().endswith("b"):
        raise ValueError(f"invalid memory {short_repr(text)}: use a number with a unit, e.g. '512m', '4g', '1t'")
    unit = match.group(2).lower() if match.group(2) else "b"
    return int(Decimal(match.group(1)) * 1024 ** _POWERS[unit])  # exact, and no overflow to inf


def parse_duration(text: str) -> int:
    """An ISO-8601 duration ('PT30M', 'P0DT1M', 'P1DT2H') -> whole seconds (rounded up), > 0."""
    if not isinstance(text, str) or not text.strip().upper().startswith("P"):
        raise ValueError(f"invalid duration {short_repr(text)}: use ISO-8601, e.g. 'PT30M' or 'P0DT1H'")
    try:
        delta = _timedelta_adapter().validate_python(text.strip().upper())  # 'pt30m' too, as the check above allows
    except ValueError:  # pydantic's ValidationError is a ValueError
        raise ValueError(f"invalid duration {short_repr(text)}: use ISO-8601, e.g. 'PT30M' or 'P0DT1H'") from None
    seconds = delta.total_seconds()
    if seconds <= 0:
        raise ValueError(f"duration {short_repr(text)} must be positive")
    return int(-(-seconds // 1))


def parse_slurm_time(text: str, *, what: str = "Slurm time", short_form: bool = True) -> int:
    """Slurm's 'D-HH:MM:SS' / 'HH:MM:SS', and (``short_form``) 'MM:SS' -> seconds (>= 0)."""
    match = _SLURM_TIME.fullmatch(text) if isinstance(text, str) else None
    if not match or (not short_form and match.group(2) is None):
        forms = "'HH:MM:SS' or 'D-HH:MM:SS'" + (" or 'MM:SS'" if short_form else "")
        raise ValueError(f"invalid {what} {short_repr(text)}: use {forms}")
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    if minutes > 59 or seconds > 59:
        raise ValueError(f"invalid {what} {short_repr(text)}: minutes and seconds must be below 60")
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def parse_walltime(text: str) -> int:
    """A spec's walltime, Slurm 'HH:MM:SS' or 'D-HH:MM:SS' (hours required: '60:00' is ambiguous
    to people) -> seconds, > 0."""
    total = parse_slurm_time(text, what="walltime", short_form=False)
    if total <= 0:
        raise ValueError(f"walltime {short_repr(text)} must be positive")
    return total


def parse_gpu_ids(text: str) -> tuple[str, ...]:
    """A GPU id list as Slurm and the visibility variables write it: '0,1', '0-3', 'gpu:0,gpu:1',
    'GPU-8f3c…' (UUIDs, MIG ids) -> ids in order; '', 'NoDevFiles', 'none', '-1' -> ().
    Raises ValueError for anything else, and for an id listed twice."""
    ids: list[str] = []
    for entry in text.split(","):
        entry = entry.strip()
        if entry.lower().startswith("gpu:"):
            entry = entry[4:].strip()
        if entry.lower() in _NO_GPU:
            continue
        span = _GPU_RANGE.fullmatch(entry)
        if span and int(span.group(1)) <= int(span.group(2)):
            ids.extend(str(i) for i in range(int(span.group(1)), int(span.group(2)) + 1))
        elif _GPU_ID.fullmatch(entry):
            ids.append(entry)
        else:
            raise ValueError(f"{short_repr(text)} is not a list of GPU ids")
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate GPU ids in {short_repr(text)}")
    return tuple(ids)


def format_walltime(seconds: int) -> str:
    """seconds -> Slurm 'D-HH:MM:SS' (or 'HH:MM:SS' under a day)."""
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    hms = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}-{hms}" if days else hms
