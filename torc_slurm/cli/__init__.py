"""The ``torc`` command line. This module only wires commands; each group lives in its own module."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

import torc_slurm.cli.watch  # noqa: F401  (registers torc slurm watch)
import torc_slurm.cli.actions  # noqa: F401  (registers torc workflows actions)
from torc_slurm import __version__
from torc_slurm.cli.app import App, error
from torc_slurm.cli.events import events
from torc_slurm.cli.jobs import jobs
from torc_slurm.cli.recover import recover
from torc_slurm.cli.reports import reports
from torc_slurm.cli.run import run
from torc_slurm.cli.slurm import slurm, submit
from torc_slurm.cli.user_data import user_data
from torc_slurm.cli.workflows import workflows
from torc_slurm.errors import TorcError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class TorcGroup(click.Group):
    """Turns domain errors into a red paragraph and an exit code, for every subcommand.

    Done in ``invoke`` (not only in ``main``) so ``CliRunner`` sees exactly what users see.
    Unexpected exceptions are bugs: they keep their traceback.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TorcError as exc:
            error(str(exc))
            raise click.exceptions.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            error("interrupted")
            raise click.exceptions.Exit(130) from None


@click.group(cls=TorcGroup, context_settings=CONTEXT_SETTINGS)
@click.option("--db", "db_path", type=click.Path(dir_okay=False, path_type=Path), envvar="TORC_DB",
              default="torc.db", show_default=True, show_envvar=True,
              help="The queue file (SQLite) holding the workflows.")
@click.option("--lock-kind", type=click.Choice(["flock", "soft"]), envvar="TORC_LOCK_KIND", default=None,
              show_envvar=True,
              help="Lock taken around every access: 'soft' for filesystems without working flock. "
                   "Default: the kind recorded beside the queue; flock for a new one.")
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug) on stderr.")
@click.version_option(__version__, "--version", prog_name="torc")
@click.pass_context
def torc(ctx: click.Context, db_path: Path, lock_kind: str, verbose: int) -> None:
    """Run workflows of many jobs on Slurm allocations (or on this machine) from one shared queue file.

    \b
    Start with:
      torc workflows create spec.yaml     compile a spec into the queue (prints its id)
      torc run ID                         run it here, or
      torc slurm schedule-nodes ID …      run it on Slurm allocations
      torc workflows status ID            see how far it got
    """
    _configure_logging(verbose)
    app = App(db_path=db_path, lock_kind=lock_kind, verbosity=verbose)
    ctx.obj = app
    ctx.call_on_close(app.close)


torc.add_command(workflows)
torc.add_command(jobs)
torc.add_command(reports)
torc.add_command(run)
torc.add_command(slurm)
torc.add_command(submit)
torc.add_command(recover)
torc.add_command(events)
torc.add_command(user_data)


def main(argv: Sequence[str] | None = None) -> None:
    """Console script ``torc``."""
    try:
        torc.main(args=list(argv) if argv is not None else None, prog_name="torc")
    except TorcError as exc:  # raised outside a command (should not happen, but never a traceback)
        error(str(exc))
        sys.exit(exc.exit_code)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now (test runners swap it)."""

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def _configure_logging(verbose: int) -> None:
    root = logging.getLogger()
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(level)
