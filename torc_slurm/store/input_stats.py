"""Input files as last initialized: mtime, size and (up to ``HASH_LIMIT``) a SHA-256 of each
file no job produces, and how to tell whether one changed since (`torc workflows reinit`).

Files are read outside the lock; only ``record_input_stats`` runs inside a transaction.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from torc_slurm.store.db import Database

HASH_LIMIT = 64 * 2**20  # input files up to this size get a content hash; larger ones: mtime and size


@dataclass(frozen=True)
class FileStat:
    mtime: float
    size: int
    sha256: str | None  # None above HASH_LIMIT


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def stat_file(path: Path, *, with_hash: bool = True) -> FileStat | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    digest = sha256_of(path) if with_hash and info.st_size <= HASH_LIMIT else None
    return FileStat(info.st_mtime, info.st_size, digest)


def compare(recorded: tuple[float | None, int | None, str | None], path: Path) -> tuple[str | None, FileStat | None]:
    """(why the file changed since ``recorded`` or None, its stats now). A file whose mtime and size
    are as recorded is taken as unchanged without reading it; otherwise, when a content hash was
    recorded, only a different content counts (a ``touch`` is not a change)."""
    mtime, size, digest = recorded
    if mtime is None:  # nothing recorded (created before stats were kept, or missing then)
        return None, stat_file(path)
    now = stat_file(path, with_hash=False)
    if now is None:
        return None, None
    if now.mtime == mtime and now.size == size:
        return None, FileStat(now.mtime, now.size, digest)
    current = stat_file(path)
    if current is None:
        return None, None
    if now.size != size:
        return "size", current
    if digest is not None and current.sha256 is not None:
        return ("content" if current.sha256 != digest else None), current
    return "modified time", current


def stat_inputs(db: Database, workflow_id: int) -> list[tuple[int, FileStat]]:
    """Stats of the workflow's input files that no job produces and that exist (read outside the lock)."""
    rows = db.read("SELECT w.working_dir, f.id, f.path FROM files f JOIN workflows w ON w.id = f.workflow_id"
                   " WHERE f.workflow_id = ? AND f.producer_job_id IS NULL", (workflow_id,))
    found = []
    for row in rows:
        stat = stat_file(Path(row["working_dir"]) / row["path"])
        if stat is not None:
            found.append((row["id"], stat))
    return found


def record_input_stats(conn: sqlite3.Connection, stats: Iterable[tuple[int, FileStat]]) -> None:
    conn.executemany("UPDATE files SET st_mtime = ?, st_size = ?, sha256 = ? WHERE id = ?",
                     [(s.mtime, s.size, s.sha256, file_id) for file_id, s in stats])
