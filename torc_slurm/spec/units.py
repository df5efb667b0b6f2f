"""Pure parsers for the unit strings a spec uses: memory sizes, ISO-8601 durations, Slurm walltimes."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

from pydantic import TypeAdapter, ValidationError

from torc_slurm.spec.limits import short_repr

_MEMORY = re.compile(r"^\s*(\d{1,20}(?:\.\d{1,20})?)\s*([kmgt])?i?b?\s*$", re.IGNORECASE)
_POWERS = {None: 0, "b": 0, "k": 1, "m": 2, "g": 3, "t": 4}
_TIMEDELTA = TypeAdapter(timedelta)
_WALLTIME = re.compile(r"^(?:(\d{1,6})-)?(\d{1,2}):(\d{2}):(\d{2})$")


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
        delta = _TIMEDELTA.validate_python(text.strip().upper())  # 'pt30m' too, as the check above allows
    except ValidationError:
        raise ValueError(f"invalid duration {short_repr(text)}: use ISO-8601, e.g. 'PT30M' or 'P0DT1H'") from None
    seconds = delta.total_seconds()
    if seconds <= 0:
        raise ValueError(f"duration {short_repr(text)} must be positive")
    return int(-(-seconds // 1))


def parse_walltime(text: str) -> int:
    """Slurm 'HH:MM:SS' or 'D-HH:MM:SS' -> seconds."""
    match = _WALLTIME.fullmatch(text) if isinstance(text, str) else None  # no stray whitespace/newlines
    if not match:
        raise ValueError(f"invalid walltime {short_repr(text)}: use 'HH:MM:SS' or 'D-HH:MM:SS'")
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    if minutes > 59 or seconds > 59:
        raise ValueError(f"invalid walltime {short_repr(text)}: minutes and seconds must be below 60")
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if total <= 0:
        raise ValueError(f"walltime {short_repr(text)} must be positive")
    return total


def format_walltime(seconds: int) -> str:
    """seconds -> Slurm 'D-HH:MM:SS' (or 'HH:MM:SS' under a day)."""
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    hms = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}-{hms}" if days else hms
