"""Opening the queue file: pragmas for network filesystems, schema versions, one locked transaction.

Rules: a rollback journal (``journal_mode=TRUNCATE``), never WAL (it needs shared memory that
network filesystems do not have); one exclusive external lock
around every transaction, read or write; files created user-only. ``transaction()`` is the only way
in, so no caller can forget the lock.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

from torc_slurm.errors import QueueError
from torc_slurm.store.lock import LockKind, QueueLock

APPLICATION_ID = 0x746F7263  # "torc"
DEFAULT_DB = "torc.db"


def _load_migrations() -> dict[int, str]:
    """version -> SQL that upgrades from version-1: ``schema.sql`` is version 1, then each
    ``migrations/NNN_*.sql`` is version NNN."""
    package = resources.files("torc_slurm.store")
    steps = {1: package.joinpath("schema.sql").read_text()}
    for entry in package.joinpath("migrations").iterdir():
        if entry.name.endswith(".sql"):
            steps[int(entry.name.split("_", 1)[0])] = entry.read_text()
    if sorted(steps) != list(range(1, len(steps) + 1)):
        raise RuntimeError(f"schema migrations are not numbered 1..N: {sorted(steps)}")
    return steps


MIGRATIONS = _load_migrations()
SCHEMA_VERSION = max(MIGRATIONS)


def default_db_path() -> Path:
    return Path(os.environ.get("TORC_DB") or DEFAULT_DB)


class Database:
    """One process's handle on the queue file. Not shared across threads without care: the runner
    uses it from its main thread only."""

    def __init__(self, path: str | Path, *, lock_kind: LockKind = "flock", create: bool = True,
                 lock_warn_after: float = 10.0) -> None:
        self.path = Path(path).absolute()
        self.lock = QueueLock(str(self.path) + ".lock", lock_kind, warn_after=lock_warn_after)
        self.signal_path = Path(str(self.path) + ".changed")
        exists = self.path.exists() and self.path.stat().st_size > 0
        if not exists and not create:
            raise QueueError(f"no torc database at {self.path} (create a workflow first, or pass --db)")
        if not exists:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        self._conn = sqlite3.connect(self.path, isolation_level=None, timeout=60.0,
                                     check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        with self.lock.held():
            self._prepare(fresh=not exists)

    def _prepare(self, fresh: bool) -> None:
        conn = self._conn
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise QueueError(f"{self.path} is not a torc database ({exc})") from None
        if not fresh and app_id != APPLICATION_ID:
            raise QueueError(f"{self.path} is an SQLite file but not a torc database; refusing to touch it")
        if version > SCHEMA_VERSION:
            raise QueueError(f"{self.path} has schema version {version}, newer than this torc_slurm "
                             f"understands ({SCHEMA_VERSION}); upgrade torc_slurm")
        conn.execute("PRAGMA journal_mode=TRUNCATE")
        conn.execute(f"PRAGMA synchronous={_synchronous()}")
        conn.execute("PRAGMA foreign_keys=ON")
        if version < SCHEMA_VERSION:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for step in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in _statements(MIGRATIONS[step]):
                        conn.execute(statement)
                conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Hold the external lock and one SQLite write transaction; commit, or roll back on error."""
        with self.lock.held():
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def read(self, sql: str, params: tuple | dict = ()) -> list[sqlite3.Row]:
        """One locked read (a short transaction of its own)."""
        with self.transaction() as conn:
            return conn.execute(sql, params).fetchall()

    # -- the cheap "something changed" signal ---------------------------------------------------
    def notify(self) -> None:
        """Tell idle runners that jobs may have become ready (they stat this file, lock-free)."""
        tmp = self.signal_path.with_name(self.signal_path.name + f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        try:
            os.write(fd, repr(time.time()).encode())
        finally:
            os.close(fd)
        os.replace(tmp, self.signal_path)

    def change_token(self) -> tuple[int, int] | None:
        try:
            stat = self.signal_path.stat()
        except FileNotFoundError:
            return None
        return (stat.st_mtime_ns, stat.st_ino)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _synchronous() -> str:
    """FULL by default: a commit is on the file server before the lock is released. NORMAL is
    allowed for local disks (TORC_SQLITE_SYNCHRONOUS=NORMAL)."""
    value = os.environ.get("TORC_SQLITE_SYNCHRONOUS", "FULL").upper()
    if value not in {"FULL", "NORMAL", "EXTRA"}:
        raise QueueError(f"TORC_SQLITE_SYNCHRONOUS must be FULL, NORMAL or EXTRA, not {value!r}")
    return value


def _statements(script: str) -> list[str]:
    """Split a DDL script into statements (executescript would commit our transaction)."""
    statements, current = [], []
    for line in script.splitlines():
        stripped = line.split("--", 1)[0].rstrip()
        if not stripped:
            continue
        current.append(stripped)
        if sqlite3.complete_statement("\n".join(current)):
            statements.append("\n".join(current))
            current = []
    return statements


def open_database(path: str | Path | None = None, *, lock_kind: LockKind | None = None,
                  create: bool = True) -> Database:
    kind = lock_kind or os.environ.get("TORC_LOCK_KIND", "flock")
    return Database(path or default_db_path(), lock_kind=kind, create=create)  # type: ignore[arg-type]
