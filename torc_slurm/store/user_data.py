"""User data: named JSON values that jobs hand to later jobs (torc's "user data").

An entry comes from the spec (``user_data:``, with or without a value) or is created by a put.
``producer_job_id`` is the job that declares it in ``output_user_data`` (consumers that declare it
in ``input_user_data`` depend on that job, as with files). Schema 5 records who wrote the value
last: ``updated_at``, and ``written_by_job_id`` / ``written_attempt`` for a job (NULL for a person
or the spec).

The rules of a put (``put_user_data``), all checked in its one write transaction:

* The value must be valid JSON (the error gives the line and column), at most 16 MiB.
* **A job runs once.** A put made from inside a job (its id and attempt known) is refused, and
  changes nothing, unless that attempt is still the job's current one: same ``attempt`` on the job's
  row and status pending or running. An attempt that was swept, handed back, timed out or rerun
  cannot write any more (``StaleAttempt``).
* A job may write an entry it declares in ``output_user_data`` (it is the producer), or an entry
  that nobody produces (spec-given or created at run time: shared, the last write wins). An entry
  another job produces is refused (``UserDataOwned``): its consumers wait for that job, not this one.
* A person (no job) may write entries nobody produces; an entry a job produces needs ``force``
  (so that a hand-fixed value is deliberate); it is then recorded as written by nobody, so it does
  not count as the producing job's output.
* A name that does not exist is created, as torc lets jobs create user data, with no producer.
  Nothing depends on an entry created this way (dependencies come from the spec).

``get_user_data`` of an unknown name lists the nearest names; an entry declared but never written
raises ``UserDataNotWritten`` (with who should write it) rather than returning null.
"""

from __future__ import annotations

import difflib
import json
import sqlite3
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from torc_slurm.errors import QueueError
from torc_slurm.states import HELD
from torc_slurm.store.events import dump_json, parse_json_text, require_workflow

if TYPE_CHECKING:
    from torc_slurm.store.db import Database

MAX_USER_DATA_BYTES = 16 << 20
DEFAULT_LIST_LIMIT = 200


class StaleAttempt(QueueError):
    """A job's attempt that is no longer current tried to write: refused, nothing changed."""


class UserDataOwned(QueueError):
    """The entry is another job's declared output."""


class UnknownUserData(QueueError):
    """No entry of that name in the workflow; ``suggestions`` holds the nearest names."""

    def __init__(self, message: str, suggestions: list[str]) -> None:
        super().__init__(message)
        self.suggestions = suggestions


class UserDataNotWritten(QueueError):
    """The entry exists but has no value yet (its producer has not written it)."""


@dataclass(frozen=True)
class JobContext:
    """The job (and attempt) a put comes from, as the runner told it: TORC_JOB_ID, TORC_ATTEMPT."""

    job_id: int
    attempt: int


@dataclass(frozen=True)
class UserDataEntry:
    name: str
    data: Any
    written: bool                   # False: declared (or created empty) and never given a value
    updated_at: float | None        # None: the value came with the spec
    written_by_job_id: int | None
    written_by_job: str | None
    written_attempt: int | None
    producer_job_id: int | None
    producer_job: str | None
    is_ephemeral: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_SELECT = ("SELECT u.name, u.data, u.updated_at, u.written_by_job_id, u.written_attempt, u.producer_job_id,"
           " u.is_ephemeral, w.name AS writer, p.name AS producer FROM user_data u"
           " LEFT JOIN jobs w ON w.id = u.written_by_job_id LEFT JOIN jobs p ON p.id = u.producer_job_id")


def _entry(row: sqlite3.Row) -> UserDataEntry:
    raw = row["data"]
    written = row["updated_at"] is not None or raw not in (None, "null")
    try:
        data = None if raw is None else json.loads(raw)
    except ValueError:
        data = raw
    return UserDataEntry(row["name"], data, written, row["updated_at"], row["written_by_job_id"], row["writer"],
                         row["written_attempt"], row["producer_job_id"], row["producer"], bool(row["is_ephemeral"]))


def _job_label(name: str | None, job_id: int | None) -> str:
    return f"job '{name}' (id {job_id})" if name else f"job {job_id}"


def _unknown(conn: sqlite3.Connection, workflow_id: int, name: str) -> UnknownUserData:
    names = [r[0] for r in conn.execute("SELECT name FROM user_data WHERE workflow_id = ?", (workflow_id,))]
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    if close:
        hint = f"; nearest names: {', '.join(close)}"
    elif names:
        hint = f"; it has {len(names):,} entries (see `torc user-data list {workflow_id}`)"
    else:
        hint = "; it has no user data entries"
    return UnknownUserData(f"no user data named {name!r} in workflow {workflow_id}{hint}", close)


def _check_job(conn: sqlite3.Connection, workflow_id: int, job: JobContext) -> str:
    """The job's name, if ``job`` is the current attempt of a job of the workflow; else refuse."""
    row = conn.execute("SELECT workflow_id, name, status, attempt FROM jobs WHERE id = ?", (job.job_id,)).fetchone()
    if row is None or row["workflow_id"] != workflow_id:
        raise QueueError(f"job {job.job_id} is not a job of workflow {workflow_id} (TORC_JOB_ID and "
                         "TORC_WORKFLOW_ID disagree); nothing was written")
    if row["attempt"] != job.attempt or row["status"] not in HELD:
        now = f"attempt {row['attempt']}, {row['status']}"
        raise StaleAttempt(
            f"{_job_label(row['name'], job.job_id)} attempt {job.attempt} is no longer current (the job is now at "
            f"{now}): it was taken back, ended or rerun, and an old attempt may not write. Nothing was written.")
    return str(row["name"])


def put_user_data(db: Database, workflow_id: int, name: str, data_json: str, *, job: JobContext | None = None,
                  force: bool = False) -> UserDataEntry:
    """Validate ``data_json`` and write it as entry ``name`` in one transaction (see the module's
    rules). Returns the entry as written."""
    from torc_slurm.spec.models import validate_name

    try:
        validate_name("user data", name)
    except ValueError as exc:
        raise QueueError(str(exc)) from None
    text = dump_json(parse_json_text(data_json, what=f"the value of {name!r}"), what=f"the value of {name!r}",
                     max_bytes=MAX_USER_DATA_BYTES)
    now = time.time()
    with db.transaction() as conn:
        require_workflow(conn, workflow_id, db.path)
        job_name = _check_job(conn, workflow_id, job) if job is not None else None
        row = conn.execute("SELECT u.id, u.producer_job_id, p.name AS producer FROM user_data u"
                           " LEFT JOIN jobs p ON p.id = u.producer_job_id WHERE u.workflow_id = ? AND u.name = ?",
                           (workflow_id, name)).fetchone()
        writer = (job.job_id, job.attempt) if job is not None else (None, None)
        if row is None:
            from torc_slurm.store.leases import next_ids

            entry_id = next_ids(conn, "user_data")
            conn.execute("INSERT INTO user_data (id, workflow_id, name, data, is_ephemeral, producer_job_id,"
                         " updated_at, written_by_job_id, written_attempt) VALUES (?,?,?,?,0,NULL,?,?,?)",
                         (entry_id, workflow_id, name, text, now, *writer))
        else:
            producer = row["producer_job_id"]
            if producer is not None and job is not None and producer != job.job_id:
                raise UserDataOwned(
                    f"user data {name!r} is the declared output of {_job_label(row['producer'], producer)}; "
                    f"{_job_label(job_name, job.job_id)} may not write it (declare its own entry in "
                    "output_user_data). Nothing was written.")
            if producer is not None and job is None and not force:
                raise UserDataOwned(
                    f"user data {name!r} is the declared output of {_job_label(row['producer'], producer)}; "
                    "pass --force to overwrite it by hand (it then no longer counts as that job's output)")
            conn.execute("UPDATE user_data SET data = ?, updated_at = ?, written_by_job_id = ?, written_attempt = ?"
                         " WHERE id = ?", (text, now, *writer, row["id"]))
        written = conn.execute(_SELECT + " WHERE u.workflow_id = ? AND u.name = ?", (workflow_id, name)).fetchone()
    return _entry(written)


def get_user_data(db: Database, workflow_id: int, name: str, *, require_written: bool = True) -> UserDataEntry:
    """The entry ``name`` (one locked read). Unknown name: ``UnknownUserData`` with the nearest
    names; never written (and ``require_written``): ``UserDataNotWritten``."""
    with db.transaction(write=False) as conn:
        require_workflow(conn, workflow_id, db.path)
        row = conn.execute(_SELECT + " WHERE u.workflow_id = ? AND u.name = ?", (workflow_id, name)).fetchone()
        if row is None:
            raise _unknown(conn, workflow_id, name)
    entry = _entry(row)
    if require_written and not entry.written:
        who = (f"its producer {_job_label(entry.producer_job, entry.producer_job_id)} has not written it yet"
               if entry.producer_job_id is not None else "no job or person has written it yet")
        raise UserDataNotWritten(f"user data {name!r} of workflow {workflow_id} has no value: {who}")
    return entry


def list_user_data(db: Database, workflow_id: int, *, limit: int = DEFAULT_LIST_LIMIT
                   ) -> tuple[list[UserDataEntry], bool]:
    """Entries by name (the (workflow_id, name) index), at most ``limit``; True when there are more."""
    if not 1 <= limit <= 1_000_000:
        raise QueueError(f"limit must be between 1 and 1,000,000, not {limit}")
    with db.transaction(write=False) as conn:
        require_workflow(conn, workflow_id, db.path)
        rows = conn.execute(_SELECT + " WHERE u.workflow_id = ? ORDER BY u.name LIMIT ?",
                            (workflow_id, limit + 1)).fetchall()
    return [_entry(r) for r in rows[:limit]], len(rows) > limit


__all__ = ["JobContext", "StaleAttempt", "UnknownUserData", "UserDataEntry", "UserDataNotWritten", "UserDataOwned",
           "get_user_data", "list_user_data", "put_user_data"]
