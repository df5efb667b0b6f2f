"""Rich renderables for `torc workflows status` and its `--watch` view, from the plain dict of
``torc_slurm.reports.status`` (the same data `-f json` prints).

Everything fits 80 columns: short words (statuses, numbers, times) never wrap (``no_wrap`` and a
``min_width``), long values (job names, host names, reasons) fold, and low-value columns are left
out when the console is narrow. Job names and other user text are ``Text`` (never read as markup).
"""

from __future__ import annotations

import datetime
from typing import Any

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from torc_slurm.reports import human_bytes, human_seconds

STYLES = {"completed": "green", "failed": "red", "canceled": "red", "terminated": "red", "running": "cyan",
          "pending": "blue", "ready": "yellow", "blocked": "", "uninitialized": "dim", "disabled": "dim"}
STATUS_WIDTH = max(len(s) for s in STYLES)   # "uninitialized": a status column never cuts one
NARROW = 100   # below this width, `workflows list` leaves out its low-value columns


def duration(seconds: float | None) -> str:
    """Whole seconds for people: 3725.4 -> '1h2m5s', None -> '-'."""
    if seconds is None:
        return "-"
    return human_seconds(round(seconds) if seconds >= 1 else seconds)


def clock(ts: float | None) -> str:
    return "-" if ts is None else datetime.datetime.fromtimestamp(ts).strftime("%H:%M:%S")


def grid(*columns: tuple[str, str], title: str | None = None) -> Table:
    """A borderless table; each column (header, kind): 'text' folds (long values: names, reasons),
    'status' fits every status word, 'num' is right-aligned, 'word' is left-aligned; none of those
    three ever wraps."""
    table = Table(box=None, pad_edge=False, title=title, title_justify="left", title_style="bold",
                  show_edge=False, collapse_padding=True)
    for header, kind in columns:
        if kind == "text":
            table.add_column(header, overflow="fold", ratio=1, min_width=min(8, len(header)))
        elif kind == "status":
            table.add_column(header, no_wrap=True, min_width=STATUS_WIDTH)
        else:
            table.add_column(header, no_wrap=True, justify="right" if kind == "num" else "left",
                             min_width=len(header))
    return table


def fit(columns: list[tuple[str, str]], rows: list[list[Any]], width: int, drop: tuple[str, ...] = (),
        title: str | None = None, caption: str | None = None) -> Table:
    """A ``grid`` that fits ``width`` without cutting a word: every 'word', 'num' and 'status' column
    is as wide as its longest cell, 'text' columns (at least 8 wide) share the rest and fold; while
    that does not fit, the columns named in ``drop`` are left out, in that order."""
    def cell_len(cell: Any) -> int:
        return max((len(line) for line in str(cell.plain if isinstance(cell, Text) else cell).splitlines()),
                   default=0)

    keep = list(range(len(columns)))
    widths = []
    for i, (header, kind) in enumerate(columns):
        longest = max([len(header), *(cell_len(r[i]) for r in rows)])
        widths.append(min(8, longest) if kind == "text" else max(longest, STATUS_WIDTH if kind == "status" else 0))
    for name in drop:
        if sum(widths[i] for i in keep) + len(keep) - 1 <= width:
            break
        keep = [i for i in keep if columns[i][0] != name]
    table = grid(*(columns[i] for i in keep), title=title)
    for column, i in zip(table.columns, keep):
        if columns[i][1] != "text":
            column.min_width = widths[i]
    for r in rows:
        table.add_row(*(r[i] for i in keep))
    if caption:
        table.caption, table.caption_justify = caption, "left"
    return table


def status_word(status: str) -> Text:
    return Text(status, style=STYLES.get(status, ""))


def counts_table(report: dict[str, Any], width: int = 80) -> Table:
    rows = [[status_word(status), f"{count:,}"] for status, count in report["counts"].items() if count]
    rows.append([Text("total", style="bold"), Text(f"{report['total']:,}", style="bold")])
    return fit([("Status", "status"), ("Jobs", "num")], rows, width)


def timing_line(report: dict[str, Any]) -> Text:
    total, done = report["total"], report["done"]
    share = f" ({100 * done / total:.0f}%)" if total else ""
    text = Text(f"{done:,} of {total:,} jobs finished{share}, elapsed {duration(report['elapsed_s'])}")
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


def allocations_table(report: dict[str, Any], width: int = 80) -> Table | None:
    if not report["allocations"]:
        return None
    rows = [[a["slurm_job_id"], Text(a["scheduler"]), str(a["num_nodes"]), a["state"], str(a["runners"]),
             duration(a["time_left_s"])] for a in report["allocations"]]
    return fit([("Slurm job", "word"), ("Scheduler", "text"), ("Nodes", "num"), ("State", "word"),
                ("Runners", "num"), ("Time left", "num")], rows, width, drop=("Runners", "Nodes"),
               title="Allocations")


def runners_table(report: dict[str, Any], width: int = 80) -> Table | None:
    if not report["runners"]:
        return None
    rows = [[str(r["id"]), Text(r["hostname"] + (" (fencing)" if r["status"] == "fencing" else "")),
             r["slurm_job_id"] or "-", _num(r["cpus"]), _num(r["gpus"]), human_bytes(r["memory_bytes"]),
             str(r["running"]), duration(r["time_left_s"]), f"{duration(r['heartbeat_age_s'])} ago"]
            for r in report["runners"]]
    return fit([("ID", "num"), ("Host", "text"), ("Slurm job", "word"), ("CPUs", "num"), ("GPUs", "num"),
                ("Memory", "num"), ("Jobs", "num"), ("Time left", "num"), ("Heartbeat", "num")], rows, width,
               drop=("Heartbeat", "Memory", "GPUs", "Slurm job"), title="Runners")


def failures_table(report: dict[str, Any], width: int = 80) -> Table | None:
    if not report["last_failures"]:
        return None
    rows = []
    for f in report["last_failures"]:
        rc = "-" if f["return_code"] is None else str(f["return_code"])
        if f["signal"]:
            rc += f"/sig{f['signal']}"
        rows.append([Text(f["job"]), str(f["attempt"]), status_word(f["status"]), rc,
                     Text(f["reason"] or f["message"] or "-"),
                     clock(f["ended_at"])])
    return fit([("Job", "text"), ("Try", "num"), ("Status", "status"), ("RC", "num"), ("Reason", "text"),
                ("Ended", "word")], rows, width, drop=("Ended", "Try"), title="Last failures")


def cannot_run_table(report: dict[str, Any], width: int = 80) -> Table | None:
    if not report["cannot_run"]:
        return None
    rows = [[reason, f"{e['count']:,}" + ("+" if e["at_least"] else ""),
             Text(", ".join(e["examples"]) + (" …" if e["count"] > len(e["examples"]) else ""))]
            for reason, e in report["cannot_run"].items()]
    return fit([("Reason", "word"), ("Jobs", "num"), ("For example", "text")], rows, width,
               title="Jobs that cannot run")


def reasons_line(report: dict[str, Any]) -> Text | None:
    if not report["failure_reasons"]:
        return None
    sampled = " (reasons of a sample; `torc reports summary` has them all)" if report["failure_reasons_sampled"] else ""
    return Text("Failed or canceled: " + ", ".join(f"{why}: {n:,}" for why, n in report["failure_reasons"].items())
                + sampled, style="red")


def header(report: dict[str, Any]) -> Text:
    text = Text(f"Workflow {report['workflow_id']} ({report['name']}): {report['status']}, run {report['run_id']}")
    if report["finished"]:
        text.append(" - finished", style="red" if report["failed"] else "green")
    return text


def status_view(report: dict[str, Any], width: int = 80) -> RenderableType:
    """What `torc workflows status` prints."""
    parts: list[RenderableType | None] = [header(report), counts_table(report, width), timing_line(report),
                                          reasons_line(report), cannot_run_table(report, width),
                                          allocations_table(report, width), runners_table(report, width),
                                          failures_table(report, width)]
    return stack(parts)


def watch_view(report: dict[str, Any], width: int = 80, interval: float | None = None) -> RenderableType:
    """One frame of `--watch`: a progress bar over the same sections."""
    from rich.progress_bar import ProgressBar

    total = report["total"] or 1
    c = report["counts"]
    bar = ProgressBar(total=total, completed=report["done"], width=max(10, min(width, 80) - 1))
    line = Text()
    for status in ("completed", "failed", "canceled", "terminated", "running", "pending", "ready", "blocked",
                   "uninitialized", "disabled"):
        if c[status] or status in ("running", "pending", "completed"):
            line.append(f"{status} ", style=STYLES.get(status, ""))
            line.append(f"{c[status]:,}  ")
    foot = Text(f"refreshed {clock(report['now'])}" + (f", every {interval:g} s; Ctrl-C to stop" if interval else ""),
                style="dim")
    parts: list[RenderableType | None] = [header(report), bar, line, timing_line(report), reasons_line(report),
                                          cannot_run_table(report, width), allocations_table(report, width),
                                          runners_table(report, width), failures_table(report, width), foot]
    return stack(parts)


def stack(parts: list[RenderableType | None]) -> Table:
    """The parts one under the other, in a one-column grid: lines of text wrap at the console's
    width (the app's console prints with soft wrap, which would leave long lines whole), and a
    ProgressBar, which ends without a newline, gets a row of its own."""
    outer = Table.grid()
    outer.add_column(overflow="fold")
    for part in parts:
        if part is not None:
            outer.add_row(part)
    return outer


def _num(value: int | None) -> str:
    return "-" if value is None else str(value)
