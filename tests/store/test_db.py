"""The queue file: pragmas for network filesystems, the one external lock, schema versions and
migrations, refusing files that are not ours, permissions."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import filelock
import pytest

import torc_slurm.store.db as db_module
from torc_slurm.compiler import compile_workflow
from torc_slurm.errors import QueueError
from torc_slurm.spec.models import WorkflowSpec
from torc_slurm.store.db import APPLICATION_ID, SCHEMA_VERSION, Database, open_database
from torc_slurm.store.queue import Queue
from torc_slurm.store.workflows import add_workflow, initialize_workflow, status_counts


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(tmp_path / "torc.db")
    yield database
    database.close()


def small_workflow(db: Database, tmp_path: Path) -> int:
    spec = WorkflowSpec.model_validate({"name": "w", "jobs": [
        {"name": "a", "command": "x"}, {"name": "b", "command": "y", "depends_on": ["a"]}]})
    return add_workflow(db, compile_workflow(spec), working_dir=tmp_path)


def mode(path: Path | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# -- pragmas ----------------------------------------------------------------------------------------

# A rollback journal: DELETE or TRUNCATE (DESIGN §2); the store uses TRUNCATE. Never WAL, which
# needs shared memory that network filesystems do not have.
ROLLBACK_JOURNALS = ("delete", "truncate")


def test_rollback_journal_never_wal(db: Database) -> None:
    assert db.read("PRAGMA journal_mode")[0][0] in ROLLBACK_JOURNALS
    assert db.read("PRAGMA foreign_keys")[0][0] == 1
    assert db.read("PRAGMA synchronous")[0][0] == 2  # FULL
    reopened = Database(db.path)
    assert reopened.read("PRAGMA journal_mode")[0][0] in ROLLBACK_JOURNALS
    reopened.close()


def test_a_wal_file_is_switched_back_to_a_rollback_journal(tmp_path: Path) -> None:
    path = tmp_path / "wal.db"
    Database(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    conn.close()
    database = Database(path)
    assert database.read("PRAGMA journal_mode")[0][0] in ROLLBACK_JOURNALS
    database.close()


def test_no_wal_files_appear(db: Database, tmp_path: Path) -> None:
    small_workflow(db, tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert not {n for n in names if n.endswith(("-wal", "-shm"))}


# -- the external lock ------------------------------------------------------------------------------

def test_every_transaction_holds_an_exclusive_lock_file(db: Database) -> None:
    lock_path = Path(str(db.path) + ".lock")
    other = filelock.FileLock(lock_path, timeout=0)
    with db.transaction() as conn:
        assert lock_path.exists()
        with pytest.raises(filelock.Timeout):
            other.acquire(timeout=0)
        conn.execute("SELECT 1")
    other.acquire(timeout=0)  # free again once the transaction ends
    other.release()


def test_reads_take_the_lock_too(db: Database) -> None:
    lock_path = Path(str(db.path) + ".lock")
    holder = filelock.FileLock(lock_path)
    holder.acquire()
    db.lock.warn_after = 0.05
    db.lock.give_up_after = 0.2
    try:
        with pytest.raises(QueueError, match="gave up waiting"):
            db.read("SELECT COUNT(*) FROM workflows")
    finally:
        holder.release()
    assert db.read("SELECT COUNT(*) FROM workflows")[0][0] == 0


def test_one_lock_acquisition_per_transaction(db: Database, tmp_path: Path) -> None:
    lock = db.lock
    before = lock.acquisitions
    db.read("SELECT 1")
    assert lock.acquisitions == before + 1
    with db.transaction() as conn:
        conn.execute("SELECT 1")
        conn.execute("SELECT 2")
    assert lock.acquisitions == before + 2
    before = lock.acquisitions
    workflow_id = small_workflow(db, tmp_path)
    assert lock.acquisitions == before + 1  # the whole workflow in one transaction
    initialize_workflow(db, workflow_id)
    queue = Queue(db, workflow_id)
    runner = queue.register_runner(hostname="h", pid=1)
    before = lock.acquisitions
    result = queue.cycle(runner, choose=lambda ready: [j.job_id for j in ready], want_counts=True,
                         sweep_timeout=60)
    assert len(result.claimed) == 1 and result.counts == {"pending": 1, "blocked": 1}
    assert lock.acquisitions == before + 1  # a claim cycle is one lock acquisition
    assert lock.longest_hold > 0 and lock.total_hold >= lock.longest_hold


def test_a_failed_transaction_rolls_back_and_releases_the_lock(db: Database) -> None:
    with pytest.raises(RuntimeError):
        with db.transaction() as conn:
            conn.execute("INSERT INTO workflows (name, spec_json, working_dir, created_at) VALUES ('x','{}','.',0)")
            raise RuntimeError("boom")
    assert db.read("SELECT COUNT(*) FROM workflows")[0][0] == 0
    probe = filelock.FileLock(str(db.path) + ".lock", timeout=0)
    probe.acquire()
    probe.release()


def test_soft_lock_is_selectable(tmp_path: Path) -> None:
    soft = Database(tmp_path / "soft.db", lock_kind="soft")
    lock_path = Path(str(soft.path) + ".lock")
    assert soft.lock.kind == "soft" and isinstance(soft.lock._lock, filelock.SoftFileLock)
    assert not lock_path.exists()
    with soft.transaction():
        assert lock_path.exists()
        with pytest.raises(filelock.Timeout):
            filelock.SoftFileLock(lock_path).acquire(timeout=0)
        assert mode(lock_path) == 0o600
    assert not lock_path.exists()  # a soft lock is the file itself
    assert soft.read("PRAGMA journal_mode")[0][0] in ROLLBACK_JOURNALS
    soft.close()


def test_lock_kind_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORC_LOCK_KIND", "soft")
    monkeypatch.setenv("TORC_DB", str(tmp_path / "env.db"))
    database = open_database()
    assert database.lock.kind == "soft" and database.path == tmp_path / "env.db"
    database.close()
    assert open_database(tmp_path / "x.db", lock_kind="flock").lock.kind == "flock"


def test_unknown_lock_kind(tmp_path: Path) -> None:
    with pytest.raises(QueueError, match="unknown lock kind"):
        Database(tmp_path / "x.db", lock_kind="nfs")  # type: ignore[arg-type]


# -- schema versions --------------------------------------------------------------------------------

def test_a_new_file_gets_the_schema_and_our_ids(db: Database) -> None:
    assert db.read("PRAGMA user_version")[0][0] == SCHEMA_VERSION
    assert db.read("PRAGMA application_id")[0][0] == APPLICATION_ID
    tables = {r[0] for r in db.read("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"workflows", "jobs", "dependency_sets", "dependency_members", "results", "runners"} <= tables


def test_reopening_keeps_the_data(db: Database, tmp_path: Path) -> None:
    workflow_id = small_workflow(db, tmp_path)
    db.close()
    again = Database(db.path, create=False)
    assert again.read("SELECT name FROM workflows WHERE id = ?", (workflow_id,))[0][0] == "w"
    again.close()


def test_a_newer_schema_is_refused(db: Database) -> None:
    with db.transaction() as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(QueueError, match=f"schema version {SCHEMA_VERSION + 1}, newer"):
        Database(db.path)


def test_a_file_that_is_not_sqlite_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database\n" * 20)
    with pytest.raises(QueueError, match="not a torc database"):
        Database(path)
    assert path.read_text().startswith("these are my notes")


def test_a_foreign_sqlite_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE mine (x)")
    conn.execute("INSERT INTO mine VALUES (42)")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(QueueError, match="SQLite file but not a torc database"):
        Database(path)
    assert path.read_bytes() == before


def test_missing_file_with_create_false(tmp_path: Path) -> None:
    with pytest.raises(QueueError, match="no torc database"):
        Database(tmp_path / "nope.db", create=False)
    assert not (tmp_path / "nope.db").exists()


def test_an_empty_file_becomes_a_database(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.touch()
    database = Database(path)
    assert database.read("PRAGMA user_version")[0][0] == SCHEMA_VERSION
    database.close()


def test_migrations_run_in_order_on_open(db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    workflow_id = small_workflow(db, tmp_path)
    db.close()
    monkeypatch.setattr(db_module, "SCHEMA_VERSION", SCHEMA_VERSION + 2)
    monkeypatch.setitem(db_module.MIGRATIONS, SCHEMA_VERSION + 1,
                        "ALTER TABLE jobs ADD COLUMN note TEXT; -- first step\n"
                        "UPDATE jobs SET note = 'v' || 2;")
    monkeypatch.setitem(db_module.MIGRATIONS, SCHEMA_VERSION + 2,
                        "CREATE TABLE extra (id INTEGER PRIMARY KEY);\nUPDATE jobs SET note = note || '+3';")
    upgraded = Database(db.path)
    assert upgraded.read("PRAGMA user_version")[0][0] == SCHEMA_VERSION + 2
    notes = {r[0] for r in upgraded.read("SELECT note FROM jobs WHERE workflow_id = ?", (workflow_id,))}
    assert notes == {"v2+3"}
    upgraded.close()


def test_a_failed_migration_leaves_the_old_version(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    db.close()
    monkeypatch.setattr(db_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    monkeypatch.setitem(db_module.MIGRATIONS, SCHEMA_VERSION + 1,
                        "ALTER TABLE jobs ADD COLUMN note TEXT;\nTHIS IS NOT SQL;")
    with pytest.raises(sqlite3.OperationalError):
        Database(db.path)
    conn = sqlite3.connect(db.path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert "note" not in {r[1] for r in conn.execute("PRAGMA table_info(jobs)")}
    conn.close()


# -- permissions and the change signal ---------------------------------------------------------------

def test_files_are_user_only(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        database = Database(tmp_path / "sub" / "torc.db")
        workflow_id = small_workflow(database, tmp_path)
        with database.transaction() as conn:
            conn.execute("UPDATE jobs SET priority = 1 WHERE workflow_id = ?", (workflow_id,))
            journal = Path(str(database.path) + "-journal")
            assert journal.exists() and mode(journal) == 0o600
        initialize_workflow(database, workflow_id)
    finally:
        os.umask(old)
    assert mode(database.path) == 0o600
    assert mode(str(database.path) + ".lock") == 0o600
    assert mode(database.signal_path) == 0o600
    database.close()


def test_change_signal(db: Database, tmp_path: Path) -> None:
    assert db.change_token() is None
    workflow_id = small_workflow(db, tmp_path)
    initialize_workflow(db, workflow_id)
    first = db.change_token()
    assert first is not None
    db.notify()
    assert db.change_token() != first
    assert not list(tmp_path.glob("*.tmp"))


def test_context_manager_closes(tmp_path: Path) -> None:
    with Database(tmp_path / "c.db") as database:
        assert database.read("SELECT 1")[0][0] == 1
    with pytest.raises(sqlite3.ProgrammingError):
        database._conn.execute("SELECT 1")


def test_two_handles_see_each_others_commits(db: Database, tmp_path: Path) -> None:
    other = Database(db.path)
    workflow_id = small_workflow(db, tmp_path)
    initialize_workflow(db, workflow_id)
    assert status_counts(other, workflow_id)["ready"] == 1
    other.close()


def test_a_long_held_lock_makes_us_wait_with_a_clear_log_line(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """Another process holds the queue lock for a while: we log that we are waiting, then proceed."""
    import logging
    import subprocess
    import sys
    import time

    from torc_slurm.store.lock import QueueLock

    lock_path, ready, release = tmp_path / "q.lock", tmp_path / "held", tmp_path / "release"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import filelock, pathlib, time\n"
        f"with filelock.FileLock({str(lock_path)!r}):\n"
        f"    pathlib.Path({str(ready)!r}).touch()\n"
        f"    while not pathlib.Path({str(release)!r}).exists(): time.sleep(0.01)\n")])
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert holder.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        lock = QueueLock(str(lock_path), warn_after=0.2)
        caplog.set_level("WARNING", logger="torc_slurm.store.lock")

        def release_after_a_warning(record: object) -> bool:  # the warning itself frees the holder
            release.touch()
            return True

        logger = logging.getLogger("torc_slurm.store.lock")
        logger.addFilter(release_after_a_warning)
        try:
            with lock.held():
                pass
        finally:
            logger.removeFilter(release_after_a_warning)
    finally:
        release.touch()
        holder.wait(timeout=30)
    assert lock.acquisitions == 1
    assert any("still waiting for the queue lock" in r.getMessage() for r in caplog.records)
