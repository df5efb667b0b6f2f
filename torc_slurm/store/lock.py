"""The one external lock taken around every transaction on the queue file.

SQLite's own POSIX locks are not trustworthy on NFS/Lustre/GPFS, so every read or write holds an
exclusive ``filelock`` beside the database (``torc.db.lock``). Two kinds exist:

- ``flock``: ``flock(2)`` on the lock file. It never falls back to the soft kind by itself: a
  filesystem without ``flock`` is an error that names ``--lock-kind soft``.
- ``soft``: the lock file's existence, holding the holder's pid and host. A holder that died on
  this host is broken at once; one that vanished with another host is broken once the file is
  older than the lifetime (``TORC_SOFT_LOCK_LIFETIME``, default 300 s).

The two kinds do not see each other, so a queue has ONE kind, written beside it when it is made
(``torc.db.lockkind``); a process asking for the other kind is refused (``resolve_lock_kind``).

Waiters back off exponentially with jitter (5 ms up to 250 ms; after 1 s of waiting, up to 50 ms
only, so that fresh waiters do not overtake an old one over and over), warn every ``warn_after``
seconds, and give up with ``QueueUnavailable`` after ``TORC_LOCK_TIMEOUT`` (default 600 s, long
enough to ride out a metadata-server stall). The lock counts acquisitions, attempts, the longest
wait and hold, for the benchmarks and tests.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import secrets
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import filelock

from torc_slurm.errors import LockKindMismatch, QueueError, QueueReadOnly, QueueUnavailable

log = logging.getLogger(__name__)
LockKind = Literal["flock", "soft"]
LOCK_KINDS: tuple[LockKind, ...] = ("flock", "soft")

DEFAULT_LOCK_TIMEOUT = 600.0  # s: a runner rides out a multi-minute metadata-server stall
DEFAULT_SOFT_LOCK_LIFETIME = 300.0  # s: below the wait limit, far above any real locked section
FIRST_DELAY = 0.005  # s, first back-off step of a waiter
MAX_DELAY = 0.25  # s, back-off cap
AGE_AFTER = 1.0  # s: a waiter this old polls every 25-50 ms again, so fresh waiters (5 ms, 10 ms, ...)
AGED_DELAY = 0.05  # s  cannot keep overtaking it; still a fraction of the old 10 ms polling's load


def env_seconds(name: str, default: float) -> float:
    """A positive number of seconds from the environment (``inf`` allowed), or ``default``."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise QueueError(f"{name} must be a positive number of seconds, not {text!r}")
    return value


# -- one lock kind per queue ---------------------------------------------------------------------

def kind_record_path(db_path: str | Path) -> Path:
    return Path(str(db_path) + ".lockkind")


def resolve_lock_kind(db_path: str | Path, requested: LockKind | None, *, existing: bool) -> LockKind:
    """The lock kind every process must use on this queue; records it if nothing is recorded yet.

    ``requested`` is an explicit ``--lock-kind``/``TORC_LOCK_KIND`` (``None``: follow the queue,
    ``flock`` for a new one). A queue made before kinds were recorded is judged by its lock file:
    an empty one is what ``flock`` leaves behind; a soft lock file carries its holder's pid."""
    if requested is not None and requested not in LOCK_KINDS:
        raise QueueError(f"unknown lock kind {requested!r} (use 'flock' or 'soft')")
    record = kind_record_path(db_path)
    recorded = _read_record(record)
    if recorded is None:
        inferred = _legacy_kind(Path(str(db_path) + ".lock")) if existing else None
        if inferred is not None and requested is not None and inferred != requested:
            raise LockKindMismatch(
                f"the queue {db_path} has been used with lock kind '{inferred}' (judging by its lock file "
                f"{db_path}.lock), but this process asks for '{requested}'; the two kinds do not exclude "
                f"each other. Drop --lock-kind / TORC_LOCK_KIND to follow the queue, or, when no process uses "
                f"it, delete {db_path}.lock and run again with --lock-kind {requested}")
        recorded = _write_record(record, requested or inferred or "flock")
        if recorded is None:  # a read-only folder: nothing can change the queue's kind either
            return requested or inferred or "flock"
    if requested is not None and requested != recorded:
        raise LockKindMismatch(
            f"the queue {db_path} uses lock kind '{recorded}' (recorded in {record}), but this process asks "
            f"for '{requested}'; the two kinds do not exclude each other, so every process must use the "
            f"queue's kind. Drop --lock-kind / TORC_LOCK_KIND (or set it to '{recorded}'; in Slurm "
            f"allocations it comes from the site config's lock_kind); to change the kind, stop every process "
            f"using the queue and delete {record}")
    return recorded


def _read_record(record: Path) -> LockKind | None:
    try:
        text = record.read_text(encoding="utf-8", errors="replace").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise lock_file_error(exc, record) from exc
    if text not in LOCK_KINDS:
        raise QueueError(f"{record} names lock kind {text!r}, not 'flock' or 'soft'; "
                         "delete it when no process uses the queue")
    return text  # type: ignore[return-value]


def _legacy_kind(lock_path: Path) -> LockKind | None:
    try:
        return "flock" if os.lstat(lock_path).st_size == 0 else "soft"
    except OSError:
        return None


def _write_record(record: Path, kind: LockKind) -> LockKind | None:
    """Record ``kind`` unless another process recorded one first (temp file, then a hard link,
    which never replaces); the recorded kind, or None if the folder cannot be written."""
    tmp = record.with_name(f"{record.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        try:
            os.write(fd, f"{kind}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, record)
        except FileExistsError:
            pass
        except OSError:  # no hard links here (some FUSE/SMB mounts): a rename is the next best thing
            if not record.exists():
                os.replace(tmp, record)
    except OSError as exc:
        log.info("could not record the lock kind in %s (%s); using '%s'", record, exc.strerror or exc, kind)
        return None
    finally:
        with suppress(OSError):
            os.unlink(tmp)
    return _read_record(record)


# -- mounts that make flock node-local -----------------------------------------------------------

@dataclass(frozen=True)
class Mount:
    mount_point: str
    fstype: str
    source: str
    options: frozenset[str]  # per-mount and superblock options together


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (``\\040``)."""
    out, i = [], 0
    while i < len(field):
        code = field[i + 1:i + 4]
        if field[i] == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts in ``/proc/self/mountinfo`` text, in file order (later entries stack on top)."""
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")
        if "-" not in fields[6:] or len(fields) < 10:
            continue
        sep = fields.index("-", 6)
        if len(fields) < sep + 3:
            continue
        options = set(fields[5].split(","))
        if len(fields) > sep + 3:
            options |= set(fields[sep + 3].split(","))
        mounts.append(Mount(_unescape(fields[4]), fields[sep + 1], _unescape(fields[sep + 2]),
                            frozenset(o for o in options if o)))
    return mounts


def mount_for(path: str, mounts: list[Mount]) -> Mount | None:
    """The mount holding ``path`` (absolute, symlinks resolved): the longest mount point above it,
    the last mounted one when several share that point."""
    best: Mount | None = None
    for mount in mounts:
        point = mount.mount_point.rstrip("/") or "/"
        if path == point or path.startswith(point if point == "/" else point + "/"):
            if best is None or len(point) >= len(best.mount_point.rstrip("/") or "/"):
                best = mount
    return best


def flock_caveat(mount: Mount) -> str | None:
    """Why ``flock`` on this mount does not exclude processes on other nodes, or None."""
    options = mount.options
    where = f"{mount.mount_point} ({mount.fstype} from {mount.source})"
    if mount.fstype in ("nfs", "nfs4"):
        local = next((o.split("=", 1)[1] for o in options if o.startswith("local_lock=")), None)
        if local in ("all", "flock") or (local is None and "nolock" in options):
            setting = f"local_lock={local}" if local else "nolock"
            return (f"{where} is mounted with {setting}: flock() is local to each node there, so the "
                    "flock queue lock does not exclude runners on other nodes; remount with local_lock=none "
                    "or use a queue created with --lock-kind soft")
    if mount.fstype == "lustre":
        if "localflock" in options:
            return (f"{where} is mounted with localflock: flock() is local to each node there (the 'flock' "
                    "mount option makes it cluster-wide); the flock queue lock does not exclude runners on "
                    "other nodes; use a queue created with --lock-kind soft")
        if "noflock" in options:
            return (f"{where} is mounted with noflock: flock() fails there; use a queue created with "
                    "--lock-kind soft")
    return None


_checked_mounts: set[str] = set()
_checked_folders: set[tuple[str, str]] = set()


def warn_if_flock_is_node_local(lock_path: str, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """Log a warning (once per mount and process) when flock on the lock's mount is node-local."""
    folder = os.path.realpath(os.path.dirname(lock_path) or ".")
    if (folder, mountinfo) in _checked_folders:
        return None
    _checked_folders.add((folder, mountinfo))
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as handle:
            mount = mount_for(folder, parse_mountinfo(handle.read()))
    except OSError:
        return None
    if mount is None or mount.mount_point in _checked_mounts:
        return None
    _checked_mounts.add(mount.mount_point)
    caveat = flock_caveat(mount)
    if caveat:
        log.warning("%s", caveat)
    return caveat


# -- errors from the lock file -------------------------------------------------------------------

_NO_FLOCK = {errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def lock_file_error(exc: OSError, path: str | Path) -> QueueError:
    """One sentence for an OSError met on a file beside the queue (lock file, kind record)."""
    folder = os.path.dirname(str(path)) or "."
    why = exc.strerror or str(exc)
    if exc.errno == errno.EROFS:
        return QueueReadOnly(f"cannot use {path}: the filesystem holding {folder} is read-only, and torc "
                             "opens its lock file for writing even to read the queue; copy the queue file "
                             "to a writable folder to inspect it")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return QueueReadOnly(f"cannot open {path}: permission denied (the folder {folder} or the file is not "
                             "writable by you, and torc locks the queue even to read it)")
    if exc.errno in _FULL:
        return QueueUnavailable(f"cannot write {path}: {why} (the disk, a quota or a file-size limit is full)",
                                reason="disk-full")
    if exc.errno in _NO_FLOCK:
        return QueueError(f"flock() does not work on the filesystem holding {path} ({why}); create the queue "
                          "with --lock-kind soft (TORC_LOCK_KIND=soft) and use that kind everywhere")
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return QueueError(f"cannot open {path}: the folder {folder} does not exist (any more)")
    return QueueUnavailable(f"I/O error on {path}: {why}", reason="io")


# -- the lock ------------------------------------------------------------------------------------

class QueueLock:
    """An exclusive lock on ``path`` of one ``kind``; ``held()`` is the way in.

    ``timeout`` (None: ``TORC_LOCK_TIMEOUT``, else 600 s) bounds a wait; ``lifetime`` (soft only;
    None: ``TORC_SOFT_LOCK_LIFETIME``, else 300 s) is the age at which a soft lock file whose holder
    cannot be probed (another host) is broken."""

    def __init__(self, path: str, kind: LockKind = "flock", *, timeout: float | None = None,
                 warn_after: float = 10.0, lifetime: float | None = None,
                 first_delay: float = FIRST_DELAY, max_delay: float = MAX_DELAY) -> None:
        if kind not in LOCK_KINDS:
            raise QueueError(f"unknown lock kind {kind!r} (use 'flock' or 'soft')")
        self.kind: LockKind = kind
        self.path = path
        self.timeout = timeout if timeout is not None else env_seconds("TORC_LOCK_TIMEOUT", DEFAULT_LOCK_TIMEOUT)
        self.lifetime = (lifetime if lifetime is not None else
                         env_seconds("TORC_SOFT_LOCK_LIFETIME", DEFAULT_SOFT_LOCK_LIFETIME)) if kind == "soft" else None
        self.warn_after = warn_after
        self.first_delay, self.max_delay = first_delay, max_delay
        self.age_after, self.aged_delay = AGE_AFTER, AGED_DELAY
        self._lock = self._make_lock()
        self._held_since: float | None = None
        self._release_failed = False
        self.acquisitions = 0  # successful acquisitions
        self.attempts = 0  # tries, successful or not (a waiter's polls)
        self.longest_wait = 0.0
        self.longest_hold = 0.0
        self.total_hold = 0.0
        if kind == "flock":
            warn_if_flock_is_node_local(path)

    def _make_lock(self) -> filelock.BaseFileLock:
        if self.kind == "flock":
            return filelock.FileLock(self.path, mode=0o600, thread_local=False, fallback_to_soft=False)
        with warnings.catch_warnings():  # "lifetime can overlap a live holder": bounded, see confirm_held()
            warnings.simplefilter("ignore", getattr(filelock, "SoftFileLockLifetimeWarning", FutureWarning))
            lifetime = self.lifetime if self.lifetime is not None and self.lifetime < float("inf") else None
            return filelock.SoftFileLock(self.path, mode=0o600, thread_local=False, lifetime=lifetime)

    @contextmanager
    def held(self) -> Iterator[None]:
        self._acquire()
        start = self._held_since = time.monotonic()
        self.acquisitions += 1
        try:
            yield
        finally:
            held = time.monotonic() - start
            self._held_since = None
            self._release()
            self.total_hold += held
            self.longest_hold = max(self.longest_hold, held)

    def _try_once(self) -> bool:
        self.attempts += 1
        try:
            self._lock.acquire(blocking=False)
        except filelock.Timeout:
            return False
        except OSError as exc:
            raise lock_file_error(exc, self.path) from exc
        return True

    def _acquire(self) -> None:
        if self._release_failed:
            self._clear_own_leftover()
        start = time.monotonic()
        deadline, next_warning, step = start + self.timeout, start + self.warn_after, self.first_delay
        while not self._try_once():
            now = time.monotonic()
            if now >= deadline:
                raise QueueUnavailable(
                    f"gave up waiting {_secs(now - start)} for the queue lock {self.path}{self._holder_note()} "
                    f"(TORC_LOCK_TIMEOUT={self.timeout:g}){self._hint()}", reason="lock-timeout")
            if now >= next_warning:
                log.warning("still waiting for the queue lock %s after %s%s%s", self.path, _secs(now - start),
                            self._holder_note(), self._hint())
                next_warning += self.warn_after
            time.sleep(max(0.0, min(random.uniform(step / 2, step), deadline - now, next_warning - now)))
            cap = self.max_delay if time.monotonic() - start < self.age_after else self.aged_delay
            step = min(step * 2, cap)
        self.longest_wait = max(self.longest_wait, time.monotonic() - start)

    def _release(self) -> None:
        try:
            self._lock.release()
        except Exception as exc:  # the transaction's fate is sealed; a failed unlock must not hide it
            log.error("could not release the queue lock %s: %s", self.path, exc)
            with suppress(Exception):
                self._lock.release(force=True)
            self._lock = self._make_lock()
            self._release_failed = self.kind == "soft"

    def _clear_own_leftover(self) -> None:
        """A soft lock file this process failed to remove would block everyone until its lifetime."""
        self._release_failed = False
        with suppress(Exception):
            if getattr(self._lock, "is_lock_held_by_us", False):
                self._lock.break_lock()  # type: ignore[attr-defined]

    def confirm_held(self) -> None:
        """Before a commit: a soft lock held for over half its lifetime may have been broken by a
        waiter; check that the lock file is still ours (no I/O on the usual millisecond hold)."""
        if self.kind != "soft" or self._held_since is None or self.lifetime is None:
            return
        held = time.monotonic() - self._held_since
        if held < self.lifetime / 2:
            return
        ours = getattr(self._lock, "is_lock_held_by_us", True)
        if not ours:
            raise QueueUnavailable(
                f"held the soft queue lock {self.path} for {_secs(held)}, and it is no longer ours (a waiter "
                f"broke it after its lifetime of {self.lifetime:g} s); the transaction was rolled back",
                reason="lock-lost")

    def _holder_note(self) -> str:
        holder = describe_holder(self.path) if self.kind == "soft" else None
        return f" (held by {holder})" if holder else ""

    def _hint(self) -> str:
        if self.kind == "soft":
            return (f"; a soft lock whose holder died on this host is broken at once, and one older than "
                    f"{self.lifetime:g} s is broken whoever holds it")
        return "; another process holds it"


def _secs(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"


def describe_holder(lock_path: str) -> str | None:
    """``pid N on HOST`` from a soft lock file (filelock's plain or ``filelock/2`` record), or None."""
    try:
        with open(lock_path, "rb") as handle:
            text = handle.read(1024).decode("utf-8", "replace")
    except OSError:
        return None
    lines = text.splitlines()
    if lines[:1] == ["filelock/2"]:
        fields = dict(line.partition("=")[::2] for line in lines[1:])
        pid_text, host = fields.get("pid", ""), fields.get("host", "")
    elif len(lines) >= 2:
        pid_text, host = lines[0], lines[1]
    else:
        return None
    if not pid_text.isdigit():
        return None
    host = host.split("?pidns-", 1)[0]  # filelock marks a PID namespace after the host name
    note = ""
    if host == _this_host():
        try:
            os.kill(int(pid_text), 0)
            note = ", still running"
        except ProcessLookupError:
            note = ", no longer running"
        except OSError:
            pass
    return f"pid {pid_text} on {host or '?'}{note}"


def _this_host() -> str:
    import socket

    return socket.gethostname()
