"""``torc user-data …``: put, get and list the named JSON values jobs hand to later jobs."""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path
from typing import Any

import click

from torc_slurm.cli.app import App, format_option, pass_app


@click.group("user-data")
def user_data() -> None:
    """Store and read user data: named JSON values that jobs hand to later jobs.

    \b
    Inside a job, ID may be left out (TORC_WORKFLOW_ID gives it), and a put is recorded as
    written by that job's attempt:
      torc user-data put result --data '{"loss": 0.1}'
      torc user-data get result
    """


def _id_and_name(args: tuple[str, ...]) -> tuple[int | None, str]:
    """[ID] NAME -> (ID or None, NAME)."""
    if len(args) == 1:
        return None, args[0]
    if len(args) == 2:
        try:
            return int(args[0]), args[1]
        except ValueError:
            raise click.UsageError(f"ID must be a workflow id (an integer), not {args[0]!r}") from None
    raise click.UsageError("give [ID] NAME: the workflow id (optional inside a job) and the entry's name")


@user_data.command("put")
@click.argument("args", nargs=-1, metavar="[ID] NAME")
@click.option("-d", "--data", "data", metavar="JSON", help="The value, as JSON text.")
@click.option("--file", "file", metavar="FILE", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
              help="Read the JSON value from FILE ('-': standard input).")
@click.option("--force", is_flag=True, help="Overwrite an entry a job produces (by hand, outside that job).")
@format_option
@pass_app
def put(app: App, args: tuple[str, ...], data: str | None, file: Path | None, force: bool, fmt: str) -> None:
    """Store a JSON value as user data entry NAME of workflow ID (created if new)."""
    from torc_slurm.api import job_context, resolve_workflow_id
    from torc_slurm.store.user_data import put_user_data

    workflow_id, name = _id_and_name(args)
    if (data is None) == (file is None):
        raise click.UsageError("give the value with exactly one of --data JSON or --file FILE")
    if file is not None:
        data = _read_file(app, file)
    wf = resolve_workflow_id(workflow_id)
    job = job_context(wf)
    if force and job is not None:
        raise click.UsageError("--force is for people fixing a value by hand, not for jobs")
    entry = put_user_data(app.db, wf, name, data or "", job=job, force=force)  # type: ignore[arg-type]
    if fmt == "json":
        click.echo(json.dumps(entry.to_dict(), indent=2, default=str))
    else:
        by = f" by job {entry.written_by_job} attempt {entry.written_attempt}" if entry.written_by_job_id else ""
        app.note(f"Stored user data '{name}' in workflow {wf}{by}")


def _read_file(app: App, file: Path) -> str:
    if str(file) == "-":
        return sys.stdin.read()
    try:
        return file.read_text(encoding="utf-8")
    except FileNotFoundError:
        app.abort(f"no such file: {file}")
    except UnicodeDecodeError as exc:
        app.abort(f"{file} is not UTF-8 text ({exc.reason} at byte {exc.start}); user data is JSON text")
    except OSError as exc:
        app.abort(f"cannot read {file}: {exc.strerror or exc}")


@user_data.command("get")
@click.argument("args", nargs=-1, metavar="[ID] NAME")
@format_option
@pass_app
def get(app: App, args: tuple[str, ...], fmt: str) -> None:
    """Print the value of user data entry NAME of workflow ID, as JSON.

    With -f json, print the whole entry (value, who wrote it and when) instead.
    """
    from torc_slurm.api import resolve_workflow_id
    from torc_slurm.store.user_data import get_user_data

    workflow_id, name = _id_and_name(args)
    entry = get_user_data(app.db, resolve_workflow_id(workflow_id), name)
    if fmt == "json":
        click.echo(json.dumps(entry.to_dict(), indent=2, default=str))
    else:
        click.echo(json.dumps(entry.data, indent=2, ensure_ascii=False))


@user_data.command("list")
@click.argument("workflow_id", metavar="[ID]", type=int, required=False)
@click.option("-n", "--limit", type=click.IntRange(1, 1_000_000), default=200, show_default=True,
              help="Show at most this many entries (by name).")
@format_option
@pass_app
def list_(app: App, workflow_id: int | None, limit: int, fmt: str) -> None:
    """List the user data entries of workflow ID: value, producer and who wrote it last."""
    from torc_slurm.api import resolve_workflow_id
    from torc_slurm.store.user_data import list_user_data

    wf = resolve_workflow_id(workflow_id)
    entries, more = list_user_data(app.db, wf, limit=limit)
    app.emit([e.to_dict() for e in entries], fmt, lambda rows: _table(rows, wf, more, limit))


# -- rendering -----------------------------------------------------------------------------------
_PREVIEW = 200


def _table(rows: list[dict[str, Any]], workflow_id: int, more: bool, limit: int):  # noqa: ANN202
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, pad_edge=False, title=None if rows else f"Workflow {workflow_id} has no user data",
                  title_justify="left")
    table.add_column("Name", overflow="fold")
    table.add_column("Producer", overflow="fold", max_width=16)
    table.add_column("Written", overflow="fold")
    table.add_column("Value", overflow="fold", ratio=1, min_width=20)
    for r in rows:
        if not r["written"]:
            written, value = Text("never", style="yellow"), Text("-", style="dim")
        else:
            when = (datetime.datetime.fromtimestamp(r["updated_at"]).strftime("%m-%d %H:%M:%S")
                    if r["updated_at"] else "spec")
            who = (f"\n{r['written_by_job'] or r['written_by_job_id']} #{r['written_attempt']}"
                   if r["written_by_job_id"] else ("" if not r["updated_at"] else "\nby hand"))
            written = Text(when + who)
            text = json.dumps(r["data"], ensure_ascii=False, separators=(", ", ": "))
            value = Text(text if len(text) <= _PREVIEW else text[:_PREVIEW] + " …")
        table.add_row(Text(r["name"], style="bold"), Text(r["producer_job"] or "-"), written, value)
    if rows:
        table.caption = (f"the first {limit:,} entries by name; there are more (raise --limit)" if more
                         else f"{len(rows):,} entr{'y' if len(rows) == 1 else 'ies'}")
        table.caption_justify = "left"
    return table
