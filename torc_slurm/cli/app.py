"""The object every command receives as ``ctx.obj``: consoles, the queue file, output, abort.

Commands stay thin: parse arguments, call the store or a report, hand the result to ``emit``.
Nothing heavy is imported here (no sqlite store, no compiler, no rich tables) so that
``torc --help`` stays fast; those imports happen inside the commands that need them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from torc_slurm.store.db import Database

FORMATS = ("table", "json")


class App:
    """One invocation's state: where the queue file is, how to lock it, how to talk to the user."""

    def __init__(self, db_path: str | Path = "torc.db", lock_kind: str | None = None, verbosity: int = 0) -> None:
        self.db_path = Path(db_path)
        self.lock_kind = lock_kind if _given_explicitly("lock_kind") else None
        self.verbosity = verbosity
        self._db: Database | None = None

    # -- consoles ------------------------------------------------------------------------------
    @cached_property
    def console(self) -> Console:
        """Rich console on stdout: tables and results (never used for ``-f json``'s payload).
        Plain lines are not wrapped (soft wrap), so logs and pipes get whole lines."""
        from rich.console import Console

        return Console(highlight=False, soft_wrap=True)

    @cached_property
    def err_console(self) -> Console:
        """Rich console on stderr: progress notes and warnings."""
        from rich.console import Console

        return Console(stderr=True, highlight=False, soft_wrap=True)

    # -- the queue file ------------------------------------------------------------------------
    @property
    def db(self) -> Database:
        """The queue file, opened on first use. A missing file is an error (read commands)."""
        return self.open_db(create=False)

    def open_db(self, *, create: bool = False) -> Database:
        """Open the queue file once; ``create=True`` makes it if missing (``workflows create``)."""
        if self._db is None:
            from torc_slurm.store.db import Database

            self._db = Database(self.db_path, lock_kind=self.lock_kind, create=create)  # type: ignore[arg-type]
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- output --------------------------------------------------------------------------------
    def abort(self, message: str, code: int = 1) -> NoReturn:
        """Print ``message`` in red on stderr and leave with exit status ``code``."""
        error(message)
        raise click.exceptions.Exit(code)

    def note(self, message: str) -> None:
        """A short line on stderr (keeps stdout clean for data)."""
        click.echo(message, err=True)

    def emit(self, data: Any, fmt: str, table_builder: Callable[[Any], RenderableType]) -> None:
        """Print ``data`` as JSON (stdout, nothing else) or as the rich renderable built from it."""
        if fmt == "json":
            click.echo(json.dumps(data, indent=2, default=str))
        else:
            self.console.print(table_builder(data))


def _given_explicitly(parameter: str) -> bool:
    """False when the current click command line left ``parameter`` at its default: a lock kind
    nobody asked for must not override the kind recorded beside the queue."""
    ctx = click.get_current_context(silent=True)
    if ctx is None or parameter not in ctx.params:
        return True
    source = ctx.get_parameter_source(parameter)
    return source not in (click.core.ParameterSource.DEFAULT, click.core.ParameterSource.DEFAULT_MAP)


def error(message: str) -> None:
    """One red paragraph on stderr (colour only on a terminal)."""
    click.secho(f"Error: {message}", fg="red", err=True)


def can_prompt() -> bool:
    """True when a person can answer a question (stdin is a terminal)."""
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


def format_option(function: Callable[..., Any]) -> Callable[..., Any]:
    """``-f/--format [table|json]``, passed to the command as ``fmt``."""
    return click.option("-f", "--format", "fmt", type=click.Choice(FORMATS), default="table",
                        show_default=True, help="Output: a table for people, or JSON for scripts.")(function)


pass_app = click.make_pass_decorator(App, ensure=True)
