"""Read-only views over the queue file (plain data: dicts and lists, ready for tables or JSON),
and the small formatters that turn their numbers into text for people."""

from __future__ import annotations


def human_bytes(value: int | float | None) -> str:
    """1073741824 -> '1 GiB', 52428800 -> '50 MiB', None -> '-'."""
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            text = f"{size:.1f}".removesuffix(".0") if unit != "B" else f"{int(size)}"
            return f"{text} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def human_seconds(value: int | float | None) -> str:
    """5400 -> '1h30m', 60 -> '1m', 1.25 -> '1.2s', None -> '-'."""
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.1f}".removesuffix(".0") + "s"
    total = int(round(value))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (seconds, "s")]
    return "".join(f"{n}{unit}" for n, unit in parts if n) or "0s"
