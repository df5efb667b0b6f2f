"""Opening the queue file: pragmas for network filesystems, schema versions, one locked transaction.

Rules: a rollback journal (``journal_mode=TRUNCATE``), never WAL (it needs shared memory that
network filesystems do not have); one exclusive external lock
around every transaction, read or write; files created user-only. ``transaction()`` is the only way
in, so no caller can forget the lock.

Every way a transaction can fail (its body, BEGIN, COMMIT, ROLLBACK) leaves the connection outside
any transaction and the lock released, and raises ONE error: the body's own, or, for what the
environment did, a domain error naming the file: ``QueueUnavailable`` (busy, I/O error, disk full,
lock wait; retry with ``retrying``), ``QueueReadOnly``, ``QueueCorrupt``.
"""

from __future__ import annotations

import logging
import os
import random
import sqlite3
import stat
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from importlib import resources
from pathlib import Path
from typing import NoReturn, TypeVar

from torc_slurm.errors import QueueCorrupt, QueueError, QueueReadOnly, QueueUnavailable
from torc_slurm.store.lock import LOCK_KINDS, LockKind, QueueLock, env_seconds, resolve_lock_kind

log = logging.getLogger(__name__)
T = TypeVar("T")

APPLICATION_ID = 0x746F7263  # "torc"
DEFAULT_DB = "torc.db"
DEFAULT_BUSY_TIMEOUT = 30.0  # s SQLite waits for its own lock, held only by processes that skip ours


def _load_migrations() -> dict[int, str]:
    """version -> SQL that upgrades from version-1: ``schema.sql`` is version 1, then each
    ``migrations/NNN_*.sql`` is version NNN, numbered without gaps."""
    package = resources.files("torc_slurm.store")
    steps = {1: package.joinpath("schema.sql").read_text()}
    for entry in package.joinpath("migrations").iterdir():
        if entry.name.endswith(".sql"):
            number = int(entry.name.split("_", 1)[0])
            if number in steps:
                raise RuntimeError(f"two schema migrations are numbered {number}")
            steps[number] = entry.read_text()
    if sorted(steps) != list(range(1, len(steps) + 1)):
        raise RuntimeError(f"schema migrations are not numbered 1..N: {sorted(steps)}")
    return steps


MIGRATIONS = _load_migrations()
SCHEMA_VERSION = max(MIGRATIONS)


def default_db_path() -> Path:
    return Path(os.environ.get("TORC_DB") or DEFAULT_DB)



class Database:
    """One process's handle on the queue file. Not shared across threads without care: the runner
    uses it from its main thread only.

    ``lock_kind``: None follows the kind recorded beside the queue (flock for a new one); an explicit
    kind that differs from the recorded one is refused (``LockKindMismatch``). ``lock_timeout``
    (``TORC_LOCK_TIMEOUT``, 600 s) bounds a wait for the lock; ``busy_timeout``
    (``TORC_SQLITE_BUSY_TIMEOUT``, 30 s) bounds SQLite's wait for a process that holds the file
    without our lock; ``soft_lock_lifetime`` (``TORC_SOFT_LOCK_LIFETIME``, 300 s) is the age at which
    a soft lock whose holder cannot be probed is broken."""

    def __init__(self, path: str | Path, *, lock_kind: LockKind | None = None, create: bool = True,
                 lock_warn_after: float = 10.0, lock_timeout: float | None = None,
                 busy_timeout: float | None = None, soft_lock_lifetime: float | None = None) -> None:
        if lock_kind is not None and lock_kind not in LOCK_KINDS:
            raise QueueError(f"unknown lock kind {lock_kind!r} (use 'flock' or 'soft')")
        self.path = Path(path).absolute()
        self.signal_path = Path(str(self.path) + ".changed")
        self.busy_timeout = (busy_timeout if busy_timeout is not None
                             else env_seconds("TORC_SQLITE_BUSY_TIMEOUT", DEFAULT_BUSY_TIMEOUT))
        self._conn: sqlite3.Connection | None = None
        self._reopen_needed = False
        self._notify_failed = False
        exists = self._check_path(create)
        kind = resolve_lock_kind(self.path, lock_kind, existing=exists)
        self.lock = QueueLock(str(self.path) + ".lock", kind, timeout=lock_timeout, warn_after=lock_warn_after,
                              lifetime=soft_lock_lifetime)
        try:
            if not exists:
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            self._conn = self._connect()
            with self.lock.held():
                self._prepare(fresh=not exists)
        except OSError as exc:
            self.close()
            raise _file_error(exc, self.path, "create" if not exists else "open") from exc
        except BaseException:
            self.close()
            raise

    # -- opening -------------------------------------------------------------------------------
    def _check_path(self, create: bool) -> bool:
        """Whether a non-empty queue file is there; clear errors for what cannot work."""
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            info = None
        except OSError as exc:
            raise _file_error(exc, self.path, "open") from exc
        if info is not None and stat.S_ISDIR(info.st_mode):
            raise QueueError(f"{self.path} is a folder, not a queue file (pass the file's path with --db)")
        exists = info is not None and info.st_size > 0
        if not exists and not create:
            where = "" if self.path.parent.is_dir() else f": the folder {self.path.parent} does not exist"
            raise QueueError(f"no torc database at {self.path}{where} (create a workflow first, or pass --db)")
        if not exists:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise _file_error(exc, self.path.parent, "create the folder") from exc
        return exists

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=self.busy_timeout,
                                   check_same_thread=False)
        except sqlite3.Error as exc:
            raise self._classify(exc, during="open") or QueueError(f"cannot open {self.path}: {exc}") from exc
        conn.row_factory = sqlite3.Row
        return conn

    def _set_pragmas(self) -> None:
        conn = self._connection()
        conn.execute("PRAGMA journal_mode=TRUNCATE")
        conn.execute(f"PRAGMA synchronous={_synchronous()}")
        conn.execute("PRAGMA foreign_keys=ON")

    def _prepare(self, fresh: bool) -> None:
        conn = self._connection()
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.Error as exc:
            error = self._classify(exc, during="open")
            if error is None and isinstance(exc, sqlite3.DatabaseError):
                error = QueueCorrupt(f"{self.path} is not a torc database ({exc})")
            if error is None:
                raise
            raise error from exc
        if not fresh and app_id != APPLICATION_ID:
            raise QueueError(f"{self.path} is an SQLite file but not a torc database; refusing to touch it")
        if version > SCHEMA_VERSION:
            raise QueueError(f"{self.path} has schema version {version}, newer than this torc_slurm "
                             f"understands ({SCHEMA_VERSION}); upgrade torc_slurm")
        try:
            self._set_pragmas()
        except sqlite3.Error as exc:
            self._fail(exc, during="open")
        if version < SCHEMA_VERSION:
            self._begin()
            try:
                for step in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in _statements(MIGRATIONS[step]):
                        conn.execute(statement)
                conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            except BaseException as exc:
                self._fail(exc)
            self._commit()

    # -- transactions --------------------------------------------------------------------------
    @contextmanager
    def transaction(self, *, write: bool = True, foreign_keys: bool = True) -> Iterator[sqlite3.Connection]:
        """Hold the external lock and one SQLite transaction; commit, or roll back on error.
        ``write=False`` begins it deferred (no SQLite write lock until something is written), which
        lets reads pass a process that holds the file for reading without our lock.

        On any failure the connection is left outside any transaction, the lock is released, and one
        error is raised: the body's own exception, or a domain error for what the environment did
        (a sqlite3 error from the body, BEGIN or COMMIT that ``QueueUnavailable``/``QueueReadOnly``/
        ``QueueCorrupt`` describe; the sqlite3 error is its ``__cause__``).

        ``foreign_keys=False``: for bulk inserts whose references the caller builds itself (a new
        workflow's ids), where SQLite's per-row check is a third of the insert's cost."""
        with self.lock.held():
            self._begin(write=write, foreign_keys=foreign_keys)
            try:
                try:
                    yield self._connection()
                    self.lock.confirm_held()
                except BaseException as exc:
                    self._fail(exc)
                self._commit()
            finally:
                if not foreign_keys and self._conn is not None:
                    self._conn.execute("PRAGMA foreign_keys=ON")  # outside the transaction, as it must be

    def _connection(self) -> sqlite3.Connection:
        assert self._conn is not None, "the database is not open"
        return self._conn

    def _begin(self, *, write: bool = True, foreign_keys: bool = True) -> None:
        if self._reopen_needed:
            self._reopen()
        conn = self._connection()
        if conn.in_transaction:  # someone began one outside transaction(): never build on it
            log.warning("a transaction was left open on %s; rolling it back", self.path)
            self._abandon(None)
        try:
            if not foreign_keys:
                conn.execute("PRAGMA foreign_keys=OFF")
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        except sqlite3.Error as exc:
            self._fail(exc)

    def _commit(self) -> None:
        try:
            self._connection().execute("COMMIT")
        except sqlite3.Error as exc:
            self._fail(exc)

    def _fail(self, exc: BaseException, *, during: str = "transaction") -> NoReturn:
        """Leave no transaction behind, then raise ``exc``, or the domain error that describes it."""
        self._abandon(exc)
        error = self._classify(exc, during=during) if isinstance(exc, sqlite3.Error) else None
        if error is None:
            raise exc
        raise error from exc

    def _abandon(self, cause: BaseException | None) -> None:
        """Roll back if a transaction is open (SQLite may have rolled back already, e.g. after an
        I/O error). A ROLLBACK that fails is logged, never raised over ``cause``; the connection is
        then replaced, since closing it is the one sure way out of its transaction."""
        conn = self._connection()
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if not conn.in_transaction:
                return
            problem = "the transaction is still open after ROLLBACK"
        except sqlite3.Error as exc:
            problem = f"ROLLBACK failed: {exc}"
        log.warning("%s on %s; reopening the connection", problem, self.path)
        if cause is not None and hasattr(cause, "add_note"):
            cause.add_note(f"then {problem}; the connection was reopened")
        self._reopen()

    def _reopen(self) -> None:
        """A fresh connection (closing the old one discards its transaction). Runs under the lock."""
        self._reopen_needed = True
        if self._conn is not None:
            with suppress(sqlite3.Error):
                self._conn.close()
        try:
            self._conn = self._connect()
            self._set_pragmas()
        except (sqlite3.Error, QueueError) as exc:
            log.warning("could not reopen %s (%s); will try again at the next transaction", self.path, exc)
            return
        self._reopen_needed = False

    def _classify(self, exc: sqlite3.Error, *, during: str = "transaction") -> QueueError | None:
        """The domain error for a sqlite3 error the environment caused, or None (a bug, a constraint)."""
        kind = sqlite_error_kind(exc)
        if kind is None:
            return None
        name = getattr(exc, "sqlite_errorname", None)
        tag = f" ({name})" if name else f" ({exc})"
        rolled_back = "; the transaction was rolled back" if during == "transaction" else ""
        path = self.path
        if kind == "busy":
            return QueueUnavailable(
                f"the queue file {path} is locked by a process that does not take torc's lock (an open sqlite3 "
                f"shell, a backup?) and stayed locked for {self.busy_timeout:g} s{tag}{rolled_back}", reason="busy")
        if kind in ("full", "io"):
            limit = _diagnose_space(path)
            if kind == "full" or limit:
                return QueueUnavailable(f"cannot write the queue file {path}: {limit or 'the disk is full'}"
                                        f"{tag}{rolled_back}", reason="disk-full")
            return QueueUnavailable(f"disk I/O error on the queue file {path}{tag}{rolled_back} "
                                    "(if it persists, check the filesystem)", reason="io")
        if kind in ("readonly", "cantopen"):
            why = _diagnose_not_writable(path)
            if why or kind == "readonly":
                verb = "open" if during == "open" and kind == "cantopen" else "write"
                return QueueReadOnly(f"cannot {verb} the queue file {path}: {why or 'it is read-only'}{tag}")
            return QueueUnavailable(f"cannot open the queue file {path} or its journal{tag}{rolled_back}",
                                    reason="io")
        if kind == "notadb":
            return QueueCorrupt(f"{path} is not a torc database ({exc})")
        return QueueCorrupt(f"the queue file {path} is damaged ({exc}){tag}; restore it from a backup")

    def read(self, sql: str, params: tuple | dict = ()) -> list[sqlite3.Row]:
        """One locked read (a short transaction of its own)."""
        with self.transaction(write=False) as conn:
            return conn.execute(sql, params).fetchall()

    # -- the cheap "something changed" signal ---------------------------------------------------
    def notify(self) -> None:
        """Tell idle runners that jobs may have become ready (they stat this file, lock-free).
        Best effort: the commit it announces has happened, so a failure here is only logged
        (waiting runners look again on their own after a bounded wait)."""
        tmp = self.signal_path.with_name(self.signal_path.name + f".{os.getpid()}.tmp")
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
            try:
                os.write(fd, repr(time.time()).encode())
            finally:
                os.close(fd)
            os.replace(tmp, self.signal_path)
        except OSError as exc:
            with suppress(OSError):
                os.unlink(tmp)
            if not self._notify_failed:
                log.warning("could not update the change signal %s (%s); idle runners notice new work later",
                            self.signal_path, exc.strerror or exc)
            self._notify_failed = True

    def change_token(self) -> tuple[int, int] | None:
        try:
            info = self.signal_path.stat()
        except OSError:
            return None
        return (info.st_mtime_ns, info.st_ino)

    def close(self) -> None:
        if self._conn is not None:
            with suppress(sqlite3.Error):
                self._conn.close()

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- what went wrong, in words ------------------------------------------------------------------

_PRIMARY_KINDS = {3: "readonly", 5: "busy", 6: "busy", 8: "readonly", 10: "io", 11: "corrupt", 13: "full",
                  14: "cantopen", 15: "busy", 23: "readonly", 26: "notadb"}
_MESSAGE_KINDS = (("database is locked", "busy"), ("database table is locked", "busy"),
                  ("database or disk is full", "full"), ("disk I/O error", "io"),
                  ("readonly database", "readonly"), ("unable to open database file", "cantopen"),
                  ("file is not a database", "notadb"), ("disk image is malformed", "corrupt"))


def sqlite_error_kind(exc: BaseException) -> str | None:
    """busy | full | io | readonly | cantopen | notadb | corrupt for a sqlite3 error that the
    environment caused, from its (extended) result code; None for the rest (bad SQL, a constraint,
    an error raised by Python code rather than SQLite)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return _PRIMARY_KINDS.get(code & 0xFF)
    if sys.version_info < (3, 11) and isinstance(exc, sqlite3.Error):  # no result codes before 3.11
        text = str(exc)
        return next((kind for fragment, kind in _MESSAGE_KINDS if fragment in text), None)
    return None


def _diagnose_space(path: Path) -> str | None:
    """'The disk is full' or 'past the file-size limit' when that is what the numbers say."""
    import resource

    sizes = []
    for name in (path, Path(str(path) + "-journal")):
        with suppress(OSError):
            sizes.append(os.stat(name).st_size)
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and max(sizes, default=0) + (1 << 20) >= limit:
        return (f"it would grow past this process's file-size limit (ulimit -f: {limit} bytes), "
                "which is as good as a full disk (file too large)")
    try:
        vfs = os.statvfs(path.parent)
    except OSError:
        return None
    free = (vfs.f_bfree if os.geteuid() == 0 else vfs.f_bavail) * vfs.f_frsize
    if free < (1 << 20):
        return f"the disk holding {path.parent} is full ({free} bytes free)"
    return None


def _diagnose_not_writable(path: Path) -> str | None:
    folder = path.parent
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return f"the filesystem holding {folder} is mounted read-only"
    except OSError:
        return None
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"the folder {folder} is not writable by you (SQLite creates its journal there)"
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        return "the file is not readable and writable by you"
    return None


def _file_error(exc: OSError, path: Path, action: str) -> QueueError:
    import errno

    why = exc.strerror or str(exc)
    if exc.errno in (errno.EACCES, errno.EPERM):
        return QueueReadOnly(f"cannot {action} {path}: permission denied (you cannot write its folder "
                             f"{path.parent}, or the file)")
    if exc.errno == errno.EROFS:
        return QueueReadOnly(f"cannot {action} {path}: the filesystem holding it is read-only")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return QueueUnavailable(f"cannot {action} {path}: {why}", reason="disk-full")
    if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EEXIST):
        return QueueError(f"cannot {action} {path}: a folder on the way does not exist or is a file")
    return QueueUnavailable(f"cannot {action} {path}: {why}", reason="io")


# -- retrying what the environment made fail -----------------------------------------------------

def retrying(fn: Callable[[], T], *, attempts: int = 8, first_delay: float = 1.0, max_delay: float = 60.0,
             on_retry: Callable[[QueueUnavailable, int, float], None] | None = None,
             sleep: Callable[[float], None] = time.sleep) -> T:
    """Call ``fn()``; while it raises ``QueueUnavailable`` (busy, I/O error, disk full, lock wait),
    wait and call it again, at most ``attempts`` calls in all, then let the last error through.
    Waits grow exponentially from ``first_delay`` to ``max_delay`` with jitter (half to all of
    the step), so runners that failed together do not retry together. Other errors pass at once.

    Safe because a failed transaction leaves the queue exactly as it was; ``fn`` must keep its
    effects outside the queue (spawning jobs, say) until after it returns. ``on_retry(error,
    attempt, delay)`` is called before each wait (default: a warning in the log). Example::

        result = retrying(lambda: queue.cycle(runner_id, ...), attempts=10, max_delay=120)
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    step = first_delay
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except QueueUnavailable as exc:
            if attempt == attempts:
                raise
            delay = random.uniform(step / 2, step)
            if on_retry is not None:
                on_retry(exc, attempt, delay)
            else:
                log.warning("%s; trying again in %.1f s (attempt %d of %d)", exc, delay, attempt + 1, attempts)
            sleep(delay)
            step = min(step * 2, max_delay)
    raise AssertionError("unreachable")


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
                  create: bool = True, **options: float | None) -> Database:
    """The queue at ``path`` (else ``TORC_DB``, else ./torc.db). ``lock_kind`` (else
    ``TORC_LOCK_KIND``) is an explicit request; without one the queue's recorded kind is used.
    ``options``: ``lock_timeout``, ``busy_timeout``, ``soft_lock_lifetime``, ``lock_warn_after``."""
    kind = lock_kind or os.environ.get("TORC_LOCK_KIND") or None
    return Database(path or default_db_path(), lock_kind=kind, create=create, **options)  # type: ignore[arg-type]
