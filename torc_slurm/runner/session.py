"""Build a runner for one workflow from a DB and a few options (shared by `torc run` and
`torc slurm run-jobs`)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from torc_slurm.errors import QueueError
from torc_slurm.runner.loop import Runner, RunnerConfig
from torc_slurm.runner.process import make_private_dirs
from torc_slurm.runner.resources import DetectedNode
from torc_slurm.store.db import Database
from torc_slurm.store.workflows import workflow_settings


def check_private(folder: Path) -> None:
    """Job stdio goes under ``folder``: it must be a real folder the user owns that no one else
    may write to (else another user could plant files or links where jobs write)."""
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode):
        raise QueueError(f"output folder {folder} is not a folder (a symlink?)")
    if info.st_uid != os.getuid():
        raise QueueError(f"output folder {folder} belongs to another user (uid {info.st_uid})")
    if info.st_mode & 0o022:
        raise QueueError(f"output folder {folder} can be written by others (mode {stat.S_IMODE(info.st_mode):o}); "
                         f"run `chmod go-w {folder}`")


def private_folder(folder: Path) -> Path:
    """Create ``folder`` and every missing parent as 0700 (see ``make_private_dirs``), then
    ``check_private`` it."""
    folder = folder.absolute()
    make_private_dirs(folder)
    check_private(folder)
    return folder


def make_runner(db: Database, workflow_id: int, node: DetectedNode, *, output_dir: Path | None,
                **options: object) -> Runner:
    """A runner with the workflow's own settings (working dir, end-time buffer, idle wait, the
    resource_monitor's sampling) filled in; ``options`` override RunnerConfig fields, except that a
    ``monitor_interval_s`` of None keeps the spec's interval and ``enabled: false`` keeps it off."""
    settings = workflow_settings(db, workflow_id)
    output = (output_dir or settings.working_dir / "torc_output").absolute()
    private_folder(output)
    config = RunnerConfig(
        workflow_id=workflow_id, working_dir=settings.working_dir, output_dir=output,
        buffer_s=settings.spec.compute_node_expiration_buffer_seconds,
        heartbeat_timeout_s=float(settings.spec.heartbeat_timeout_seconds),
        wait_for_new_jobs_s=settings.spec.compute_node_wait_for_new_jobs_seconds,
        # The whole wind-down must fit in the buffer Slurm leaves after its warning signal.
        termination_grace_s=min(30.0, max(1.0, settings.spec.compute_node_expiration_buffer_seconds / 2)))
    monitor = settings.spec.resource_monitor  # the sampler: its interval, and whether every sample is kept
    config.monitor_interval_s = float(monitor.sample_interval_seconds) if monitor.enabled else 0.0
    config.job_samples = monitor.enabled and monitor.granularity == "time_series"
    for key, value in options.items():
        if not hasattr(config, key):
            raise TypeError(f"unknown runner option {key}")
        if key == "monitor_interval_s" and (value is None or not monitor.enabled):
            continue  # not given (the spec's interval holds), or the spec turned monitoring off
        setattr(config, key, value)
    return Runner(db, node, config)
