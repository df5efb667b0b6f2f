"""Rich renderables for `torc workflows status` and its `--watch` view, from the plain dict of
``torc_slurm.reports.status`` (the same data `-f json` prints).

Everything fits 80 columns: short words (statuses, numbers, times) never wrap (``no_wrap`` and a
``min_width``), long values (job names, host names, reasons) fold, and low-value columns are left
out when the console is narrow. Job names and other user text are ``Text`` (never read as markup).
"""

from __future__ import annotations

import datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from torc_slurm.reports import human_bytes, human_seconds

STYLES = {"completed": "green", "failed": "red", "canceled": "red", "terminated": "red", "running": "cyan",
          "pending": "blue", "ready": "yellow", "blocked": "", "uninitialized": "dim", "disabled": "dim"}
STATUS_WIDTH = max(len(s) for s in STYLES)   # "uninitialized": a status column never cuts one
NARROW = 100   # below this width, low-value columns are dropped


def duration(seconds: float | None) -> str:
    """Whole seconds for people: 3725.4 -> '1h2m5s', None -> '-'."""
    if seconds is None:
        return "-"
    return human_seconds(round(seconds) if seconds >= 1 else seconds)


def clock(ts: float | None) -> str:
    return "-" if ts is None else datetime.datetime.fromtimestamp(ts).strftime("%H:%M:%S")


def grid(*columns: tuple[str, str], title: str | None = None) -> Table:
    """A borderless table; each column (header, kind): 'word' never wraps, 'num' is right-aligned
    and never wraps, 'text' folds."""
    table = Table(box=None, pad_edge=False, title=title, title_justify="left", title_style="bold",
                  show_edge=False, collapse_padding=True)
    for header, kind in columns:
        if kind == "text":
            table.add_column(header, overflow="fold", ratio=1, min_width=8)
        elif kind == "status":
            table.add_column(header, no_wrap=True, min_width=STATUS_WIDTH)
        else:
            table.add_column(header, no_wrap=True, justify="right" if kind == "num" else "left",
                             min_width=len(header))
    return table


def status_word(status: str) -> Text:
    return Text(status, style=STYLES.get(status, ""))


def counts_table(report: dict[str, Any]) -> Table:
    table = grid(("Status", "status"), ("Jobs", "num"))
    for status, count in report["counts"].items():
        if count:
            table.add_row(status_word(status), f"{count:,}")
    table.add_row(Text("total", style="bold"), Text(f"{report['total']:,}", style="bold"))
    return table


def timing_line(report: dict[str, Any]) -> Text:
    total, done = report["total"], report["done"]
    share = f" ({100 * done / total:.0f}%)" if total else ""
    text = Text(f"{done:,}/{total:,} done{share}, elapsed {duration(report['elapsed_s'])}")
    if report["finished"]:
        return text
    if report["eta_s"] is not None:
        text.append(f", ETA {duration(report['eta_s'])}")
        text.append(f" (mean exec {duration(report['mean_exec_s'])}, {report['parallelism']} held)", style="dim")
    else:
        text.append(", ETA unknown", style="dim")
        why = "no attempt completed yet" if report["mean_exec_s"] is None else "nothing is running"
        text.append(f" ({why})", style="dim")
    return text


def allocations_table(report: dict[str, Any]) -> Table | None:
    if not report["allocations"]:
        return None
    table = grid(("Slurm job", "word"), ("Scheduler", "text"), ("Nodes", "num"), ("State", "word"),
                 ("Runners", "num"), ("Time left", "num"), title="Allocations")
    for a in report["allocations"]:
        table.add_row(a["slurm_job_id"], Text(a["scheduler"]), str(a["num_nodes"]), a["state"], str(a["runners"]),
                      duration(a["time_left_s"]))
    return table


def runners_table(report: dict[str, Any], width: int) -> Table | None:
    if not report["runners"]:
        return None
    wide = width >= NARROW
    columns = [("ID", "num"), ("Host", "text"), ("Slurm job", "word"), ("CPUs", "num"), ("GPUs", "num")]
    columns += [("Memory", "num")] if wide else []
    columns += [("Jobs", "num"), ("Time left", "num")]
    columns += [("Heartbeat", "num")] if wide else []
    table = grid(*columns, title="Runners")
    for r in report["runners"]:
        cells: list[Any] = [str(r["id"]), Text(r["hostname"] + (" (fencing)" if r["status"] == "fencing" else "")),
                            r["slurm_job_id"] or "-", _num(r["cpus"]), _num(r["gpus"])]
        cells += [human_bytes(r["memory_bytes"])] if wide else []
        cells += [str(r["running"]), duration(r["time_left_s"])]
        cells += [f"{duration(r['heartbeat_age_s'])} ago"] if wide else []
        table.add_row(*cells)
    return table


def failures_table(report: dict[str, Any], width: int) -> Table | None:
    if not report["last_failures"]:
        return None
    wide = width >= NARROW
    columns = [("Job", "text"), ("Try", "num"), ("Status", "status"), ("RC", "num"), ("Reason", "text")]
    columns += [("Ended", "word")] if wide else []
    table = grid(*columns, title="Last failures")
    for f in report["last_failures"]:
        rc = "-" if f["return_code"] is None else str(f["return_code"])
        if f["signal"]:
            rc += f"/sig{f['signal']}"
        cells: list[Any] = [Text(f["job"]), str(f["attempt"]), status_word(f["status"]), rc, Text(f["reason"] or "-")]
        cells += [clock(f["ended_at"])] if wide else []
        table.add_row(*cells)
    return table


def cannot_run_table(report: dict[str, Any]) -> Table | None:
    if not report["cannot_run"]:
        return None
    table = grid(("Reason", "word"), ("Jobs", "num"), ("For example", "text"), title="Jobs that cannot run")
    for reason, entry in report["cannot_run"].items():
        count = f"{entry['count']:,}" + ("+" if entry["at_least"] else "")
        table.add_row(reason, count, Text(", ".join(entry["examples"]) + (" …" if entry["count"] > len(entry["examples"]) else "")))
    return table


def reasons_line(report: dict[str, Any]) -> Text | None:
    if not report["failure_reasons"]:
        return None
    return Text("Failed or canceled: " + ", ".join(f"{why}: {n:,}" for why, n in report["failure_reasons"].items()),
                style="red")


def header(report: dict[str, Any]) -> Text:
    text = Text(f"Workflow {report['workflow_id']} ({report['name']}): {report['status']}, run {report['run_id']}")
    if report["finished"]:
        text.append(" - finished", style="red" if report["failed"] else "green")
    return text


def status_view(report: dict[str, Any], width: int = 80) -> RenderableType:
    """What `torc workflows status` prints."""
    parts: list[RenderableType | None] = [header(report), counts_table(report), timing_line(report),
                                          reasons_line(report), cannot_run_table(report),
                                          allocations_table(report), runners_table(report, width),
                                          failures_table(report, width)]
    return Group(*(p for p in parts if p is not None))


def watch_view(report: dict[str, Any], width: int = 80, interval: float | None = None) -> RenderableType:
    """One frame of `--watch`: a progress bar over the same sections."""
    from rich.progress_bar import ProgressBar

    total = report["total"] or 1
    c = report["counts"]
    bar = ProgressBar(total=total, completed=report["done"], width=max(10, min(width, 80) - 2))
    line = Text()
    for status in ("completed", "failed", "canceled", "running", "pending", "ready", "blocked"):
        if c[status] or status in ("running", "pending", "completed"):
            line.append(f"{status} ", style=STYLES.get(status, ""))
            line.append(f"{c[status]:,}  ")
    foot = Text(f"refreshed {clock(report['now'])}" + (f", every {interval:g} s; Ctrl-C to stop" if interval else ""),
                style="dim")
    parts: list[RenderableType | None] = [header(report), bar, line, timing_line(report), reasons_line(report),
                                          cannot_run_table(report), allocations_table(report),
                                          runners_table(report, width), failures_table(report, width), foot]
    return Group(*(p for p in parts if p is not None))


def _num(value: int | None) -> str:
    return "-" if value is None else str(value)
