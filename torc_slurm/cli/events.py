"""``torc events …``: post events with structured data, list them, follow them as they come."""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Callable
from typing import Any

import click

from torc_slurm.cli.app import App, format_option, pass_app

FOLLOW_FIRST_INTERVAL = 1.0   # s between polls while events keep coming
FOLLOW_MAX_INTERVAL = 5.0     # s between polls after a quiet while
FOLLOW_BATCH = 1000


@click.group("events")
def events() -> None:
    """Post and read a workflow's events (runners, allocations and jobs post them too).

    Inside a job, ID may be left out: TORC_WORKFLOW_ID gives it.
    """


@events.command("add")
@click.argument("workflow_id", metavar="[ID]", type=int, required=False)
@click.option("-c", "--category", required=True, help="What happened, e.g. 'checkpoint_saved' (letters, digits, _.:-).")
@click.option("-d", "--data", "data", metavar="JSON", help="Structured details: any JSON value.")
@click.option("-m", "--message", help="A one-line description.")
@format_option
@pass_app
def add(app: App, workflow_id: int | None, category: str, data: str | None, message: str | None, fmt: str) -> None:
    """Post an event to workflow ID's log.

    \b
    Example, from a job's command:
      torc events add --category checkpoint_saved --data '{"step": 1000}'
    """
    from torc_slurm.api import job_context, resolve_workflow_id, source_label
    from torc_slurm.store.events import post_event

    wf = resolve_workflow_id(workflow_id)
    event = post_event(app.db, wf, category, data_json=data, message=message, source=source_label(job_context(wf)))
    if fmt == "json":
        click.echo(json.dumps(event.to_dict(), indent=2, default=str))
    else:
        app.note(f"Event {event.id} ({event.category}) added to workflow {wf}")


@events.command("list")
@click.argument("workflow_id", metavar="[ID]", type=int, required=False)
@click.option("-c", "--category", help="Only events of this category.")
@click.option("--since", "since_text", metavar="T",
              help="Only events from T on: a duration back from now ('10m', '2h', '1d') or an ISO-8601 time "
                   "('2026-11-28T10:00').")
@click.option("-n", "--limit", type=click.IntRange(1, 100_000), default=50, show_default=True,
              help="Show at most this many (the newest).")
@click.option("--follow", is_flag=True, help="Then keep printing new events as they come, until Ctrl-C.")
@format_option
@pass_app
def list_(app: App, workflow_id: int | None, category: str | None, since_text: str | None, limit: int,
          follow: bool, fmt: str) -> None:
    """List workflow ID's events, oldest first (the newest --limit of them).

    With -f json: a JSON list; with --follow, one JSON object per line (JSON Lines).
    """
    from torc_slurm.api import resolve_workflow_id
    from torc_slurm.store.events import list_events, parse_since

    wf = resolve_workflow_id(workflow_id)
    since = parse_since(since_text) if since_text is not None else None
    page = list_events(app.db, wf, category=category, since=since, limit=limit)
    if not follow:
        app.emit([e.to_dict() for e in page.events], fmt, lambda data: _events_table(data, wf, page.more, limit))
        return
    for event in page.events:
        _print_line(event.to_dict(), fmt)
    after = max([page.last_id, *(e.id for e in page.events)])
    try:
        follow_events(app, wf, after, category, lambda record: _print_line(record, fmt))
    except KeyboardInterrupt:
        return


def follow_events(app: App, workflow_id: int, after_id: int, category: str | None,
                  emit: Callable[[dict[str, Any]], None], *, sleep: Callable[[float], None] = time.sleep,
                  polls: int | None = None) -> int:
    """Poll for events after ``after_id`` and hand each to ``emit``: every second while they come,
    backing off to every 5 s when nothing changes. Each poll is one short locked read. Runs until
    interrupted (or ``polls`` polls, for tests); returns the last id seen."""
    from torc_slurm.store.events import events_after

    interval = FOLLOW_FIRST_INTERVAL
    done = 0
    while polls is None or done < polls:
        batch = events_after(app.db, workflow_id, after_id, category=category, limit=FOLLOW_BATCH)
        done += 1
        for event in batch:
            emit(event.to_dict())
        if batch:
            after_id = batch[-1].id
            interval = FOLLOW_FIRST_INTERVAL
            if len(batch) == FOLLOW_BATCH:
                continue  # more waiting: read on at once
        else:
            interval = min(interval * 1.5, FOLLOW_MAX_INTERVAL)
        sleep(interval)
    return after_id


# -- rendering -----------------------------------------------------------------------------------
def _when(at: float) -> str:
    return datetime.datetime.fromtimestamp(at).strftime("%m-%d %H:%M:%S")


def _data_text(data: Any) -> str:
    return "" if data is None else json.dumps(data, separators=(", ", ": "), ensure_ascii=False, default=str)


def _print_line(record: dict[str, Any], fmt: str) -> None:
    """One event on one line (``--follow``); click.echo flushes, so pipes see it at once."""
    if fmt == "json":
        click.echo(json.dumps(record, default=str))
        return
    parts = [_when(record["at"]), f"#{record['id']}", record["category"], record["source"] or "-"]
    if record["message"]:
        parts.append(record["message"])
    if record["data"] is not None:
        parts.append(_data_text(record["data"]))
    click.echo("  ".join(parts))


def _events_table(rows: list[dict[str, Any]], workflow_id: int, more: bool, limit: int):  # noqa: ANN202
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, pad_edge=False, title=None if rows else f"Workflow {workflow_id} has no such events",
                  title_justify="left")
    table.add_column("ID", justify="right", no_wrap=True)
    table.add_column("Time", no_wrap=True)
    table.add_column("Category / source", overflow="fold")
    table.add_column("Message / data", overflow="fold", ratio=1, min_width=24)
    for r in rows:
        detail = Text(r["message"] or "")
        if r["data"] is not None:
            if r["message"]:
                detail.append("\n")
            detail.append(_data_text(r["data"]), style="dim")
        what = Text(r["category"], style="bold")
        what.append("\n" + (r["source"] or "-"), style="dim")
        table.add_row(str(r["id"]), _when(r["at"]), what, detail)
    if rows:
        table.caption = (f"the newest {limit:,} events; older ones match too (raise --limit or use --since)"
                         if more else f"{len(rows):,} event{'' if len(rows) == 1 else 's'}")
        table.caption_justify = "left"
    return table
