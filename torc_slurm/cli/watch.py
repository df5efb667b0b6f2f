"""`torc slurm watch ID`: keep the workflow's allocations queued until it is done (see
``torc_slurm.slurm.watch`` for the rules)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from torc_slurm.cli.app import format_option
from torc_slurm.cli.slurm import slurm


@slurm.command("watch")
@click.argument("workflow_id", metavar="ID", type=int)
@click.option("--interval", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="Seconds between rounds (one lock acquisition and one squeue call each).")
@click.option("--max-queued", type=click.IntRange(min=0), default=2, show_default=True,
              help="Per scheduler: at most this many allocations waiting in Slurm's queue.")
@click.option("--max-running", type=click.IntRange(min=1), default=10, show_default=True,
              help="Per scheduler: at most this many allocations live (queued + running).")
@click.option("--recover", is_flag=True,
              help="Rerun jobs that fail by OOM or timeout with more memory or runtime (`torc recover`'s rules).")
@click.option("--site", help="A site config name or file (default: detected from Slurm's ClusterName).")
@click.option("-o", "--output", "output_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where scripts, Slurm logs and job stdio go (default: <working dir>/torc_output).")
@click.option("--once", is_flag=True, help="One round (read, decide, submit/cancel), then exit.")
@click.option("--lease-timeout", type=click.FloatRange(min=1), hidden=True,
              help="Seconds without renewal before another watcher may take over (default: 4 x interval, >= 10).")
@format_option
@click.pass_obj
def watch(app, workflow_id: int, interval: float, max_queued: int, max_running: int, recover: bool, site,
          output_dir, once: bool, lease_timeout, fmt: str) -> None:
    """Keep workflow ID supplied with Slurm allocations until it is complete, like HyperQueue's
    autoalloc. Run it on the login node (under nohup or tmux).

    \b
    Each round, per scheduler: queue enough allocations for the jobs ready now or soon (blocked
    jobs whose dependencies are >= 90 % done), within --max-queued and --max-running; scancel
    allocations still pending when no work is left for them; back off after a failed submission
    and pause the scheduler after 5 in a row. Only one watcher per workflow submits (a lease in
    the queue); a second one exits. Exits 0 when every job completed, 1 when some failed."""
    from torc_slurm.slurm.backend import get_backend
    from torc_slurm.slurm.sites import detect_current_site, load_site
    from torc_slurm.slurm.watch import Limits, Watcher, WatchOptions
    from torc_slurm.store.workflows import ensure_initialized, get_workflow

    db = app.db
    get_workflow(db, workflow_id)
    backend = get_backend()
    site_config = load_site(site) if site else detect_current_site(backend)
    ensure_initialized(db, workflow_id)
    def say(text: str) -> None:
        click.echo(f"{time.strftime('%H:%M:%S')} {text}", err=True)

    options = WatchOptions(interval=interval, limits=Limits(max_queued=max_queued, max_running=max_running),
                           recover=recover, output_dir=output_dir, once=once, lease_timeout=lease_timeout)
    watcher = Watcher(db, workflow_id, backend, site=site_config, options=options, say=say)
    summary = watcher.run()
    if fmt == "json":
        app.emit(summary.__dict__, fmt, lambda d: "")
    else:
        for line in summary.lines():
            click.echo(line)
    if summary.exit_code:
        raise click.exceptions.Exit(summary.exit_code)
