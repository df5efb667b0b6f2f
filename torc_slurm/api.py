"""Python API for job scripts: hand data to later jobs and post events, without a subprocess.

Inside a job, no arguments beyond the data are needed: the runner sets ``TORC_WORKFLOW_ID``,
``TORC_JOB_ID``, ``TORC_ATTEMPT`` and ``TORC_DB`` (the queue file) for every job::

    from torc_slurm.api import add_event, get_user_data, put_user_data

    params = get_user_data("params")            # an input entry (spec value or a producer's output)
    put_user_data("result", {"loss": 0.1})      # this job's declared output_user_data entry
    add_event("checkpoint_saved", {"step": 1000})

Outside a job pass ``workflow_id`` (and ``db``, a path or an open ``Database``; default
``TORC_DB``, else ./torc.db). Errors are ``torc_slurm.errors.TorcError`` subclasses; a put from an
attempt that is no longer current raises ``StaleAttempt`` and writes nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torc_slurm.errors import QueueError
from torc_slurm.store.db import Database
from torc_slurm.store.user_data import (JobContext, StaleAttempt, UnknownUserData, UserDataNotWritten,
                                        UserDataOwned)

__all__ = ["StaleAttempt", "UnknownUserData", "UserDataNotWritten", "UserDataOwned", "add_event",
           "get_user_data", "job_context", "put_user_data", "resolve_workflow_id"]


def _env_int(name: str, environ: Mapping[str, str]) -> int | None:
    text = environ.get(name, "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise QueueError(f"{name}={text!r} is not an integer (the runner sets it for each job)") from None


def resolve_workflow_id(workflow_id: int | None, environ: Mapping[str, str] | None = None) -> int:
    """``workflow_id``, else ``TORC_WORKFLOW_ID`` (set inside a job), else a clear error."""
    if workflow_id is not None:
        return int(workflow_id)
    found = _env_int("TORC_WORKFLOW_ID", os.environ if environ is None else environ)
    if found is None:
        raise QueueError("no workflow id: give one (e.g. `torc user-data get 3 NAME`), or run this from a torc "
                         "job, where TORC_WORKFLOW_ID is set")
    return found


def job_context(workflow_id: int, environ: Mapping[str, str] | None = None) -> JobContext | None:
    """The job and attempt this process runs as (``TORC_JOB_ID``, ``TORC_ATTEMPT``), when it is a
    job of ``workflow_id``; None for a person or a job of another workflow."""
    env = os.environ if environ is None else environ
    if _env_int("TORC_WORKFLOW_ID", env) != workflow_id:
        return None
    job_id = _env_int("TORC_JOB_ID", env)
    if job_id is None:
        return None
    attempt = _env_int("TORC_ATTEMPT", env)
    if attempt is None:
        raise QueueError("TORC_JOB_ID is set but TORC_ATTEMPT is not: cannot tell which attempt writes")
    return JobContext(job_id, attempt)


def source_label(job: JobContext | None) -> str:
    """Who posts an event: 'job 12 attempt 2', or 'user'."""
    return f"job {job.job_id} attempt {job.attempt}" if job is not None else "user"


@contextmanager
def _database(db: Database | str | Path | None) -> Iterator[Database]:
    if isinstance(db, Database):
        yield db
        return
    from torc_slurm.store.db import open_database

    opened = open_database(db, create=False)
    try:
        yield opened
    finally:
        opened.close()


def put_user_data(name: str, data: Any, *, workflow_id: int | None = None,
                  db: Database | str | Path | None = None) -> None:
    """Store ``data`` (any JSON value) as user data entry ``name``. From a job, the write is
    recorded as that attempt's and refused if the attempt is no longer current."""
    from torc_slurm.store import user_data
    from torc_slurm.store.events import dump_json

    wf = resolve_workflow_id(workflow_id)
    text = dump_json(data, what=f"the value of {name!r}", max_bytes=user_data.MAX_USER_DATA_BYTES)
    with _database(db) as database:
        user_data.put_user_data(database, wf, name, text, job=job_context(wf))


def get_user_data(name: str, *, workflow_id: int | None = None, db: Database | str | Path | None = None) -> Any:
    """The value of user data entry ``name``. Raises ``UnknownUserData`` (with the nearest names)
    or ``UserDataNotWritten`` (declared, no value yet)."""
    from torc_slurm.store import user_data

    wf = resolve_workflow_id(workflow_id)
    with _database(db) as database:
        return user_data.get_user_data(database, wf, name).data


def add_event(category: str, data: Any = None, *, message: str | None = None, workflow_id: int | None = None,
              db: Database | str | Path | None = None) -> int:
    """Post an event (``category``, optional JSON ``data`` and one-line ``message``) to the
    workflow's log; returns its id. From a job its source is 'job ID attempt N'."""
    from torc_slurm.store.events import MAX_EVENT_DATA_BYTES, dump_json, post_event

    wf = resolve_workflow_id(workflow_id)
    text = None if data is None else dump_json(data, what="the event data", max_bytes=MAX_EVENT_DATA_BYTES)
    with _database(db) as database:
        return post_event(database, wf, category, data_json=text, message=message,
                          source=source_label(job_context(wf))).id
