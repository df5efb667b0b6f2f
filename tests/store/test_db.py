"""The queue file: pragmas for network filesystems, the one external lock, schema versions and
migrations, refusing files that are not ours, permissions."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import filelock
import pytest

import torc_slurm.store.db as db_module
from torc_slurm.compiler import compile_workflow
from torc_slurm.errors import QueueCorrupt, QueueError, QueueReadOnly, QueueUnavailable
from torc_slurm.spec.models import WorkflowSpec
from torc_slurm.store.db import (APPLICATION_ID, SCHEMA_VERSION, Database, open_database, retrying,
                                 sqlite_error_kind)
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
    db.lock.timeout = 0.2
    try:
        with pytest.raises(QueueUnavailable, match="gave up waiting"):
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
    result = queue.cycle(runner, choose=lambda ready: [j.job_id for j in ready], want_counts=True)
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


# -- every failure: no transaction left behind, the lock released, one clear error -------------------

def add_row(conn: sqlite3.Connection, name: str) -> None:
    conn.execute("INSERT INTO workflows (name, spec_json, working_dir, created_at) VALUES (?, '{}', '.', 0)",
                 (name,))


def names(db: Database) -> list[str]:
    return [r[0] for r in db.read("SELECT name FROM workflows ORDER BY id")]


def lock_is_free(db: Database) -> bool:
    probe = filelock.FileLock(db.lock.path)
    try:
        probe.acquire(timeout=0)
    except filelock.Timeout:
        return False
    probe.release()
    return True


OUTSIDER = textwrap.dedent("""
    import pathlib, sqlite3, sys, time
    path, how, ready, release = sys.argv[1:5]
    conn = sqlite3.connect(path, isolation_level=None, timeout=0)
    conn.execute("BEGIN IMMEDIATE" if how == "write" else "BEGIN")
    conn.execute("SELECT COUNT(*) FROM workflows").fetchall()
    pathlib.Path(ready).touch()
    while not pathlib.Path(release).exists():
        time.sleep(0.01)
    conn.execute("ROLLBACK")
""")


@contextlib.contextmanager
def outsider(db: Database, how: str) -> Iterator[None]:
    """Another process holding ``BEGIN; SELECT`` (or ``BEGIN IMMEDIATE``) through plain sqlite3,
    without torc's lock, until the block ends."""
    ready, release = Path(f"{db.path}.ready"), Path(f"{db.path}.release")
    child = subprocess.Popen([sys.executable, "-c", OUTSIDER, str(db.path), how, str(ready), str(release)])
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert child.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        yield
    finally:
        release.touch()
        assert child.wait(timeout=30) == 0
        ready.unlink(missing_ok=True)
        release.unlink()


def test_a_commit_an_outside_reader_blocks_fails_cleanly(tmp_path: Path) -> None:
    db = Database(tmp_path / "torc.db", busy_timeout=0.5)
    with db.transaction() as conn:
        add_row(conn, "before")
    with outsider(db, "read"):
        for _ in range(2):  # the second write used to fail with "cannot start a transaction within a transaction"
            with pytest.raises(QueueUnavailable, match="locked by a process that does not take torc's lock") as caught:
                with db.transaction() as conn:
                    add_row(conn, "lost")
            assert caught.value.reason == "busy" and "rolled back" in str(caught.value)
            assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
            assert not db._conn.in_transaction and lock_is_free(db)
        assert names(db) == ["before"]  # reading still works, and nothing was half-written
    with db.transaction() as conn:
        add_row(conn, "after")
    assert names(db) == ["before", "after"]
    db.close()


def test_a_begin_an_outside_writer_blocks_fails_cleanly(tmp_path: Path) -> None:
    db = Database(tmp_path / "torc.db", busy_timeout=0.3)
    with outsider(db, "write"):
        with pytest.raises(QueueUnavailable, match=r"stayed locked for 0.3 s \(SQLITE_BUSY\)"):
            with db.transaction() as conn:
                add_row(conn, "lost")
        assert not db._conn.in_transaction and lock_is_free(db)
    assert names(db) == []
    db.read("SELECT 1")
    db.close()


class RollbackFails:
    """A connection whose ROLLBACK fails (as on a dead file server); everything else is real."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        if sql == "ROLLBACK":
            raise sqlite3.OperationalError("disk I/O error (injected in ROLLBACK)")
        return self._conn.execute(sql, *args)

    def __getattr__(self, name: str) -> object:
        return getattr(self._conn, name)


def test_a_failing_rollback_never_hides_the_first_error(db: Database, caplog: pytest.LogCaptureFixture) -> None:
    db._conn = RollbackFails(db._conn)  # type: ignore[assignment]
    caplog.set_level(logging.WARNING, logger="torc_slurm.store.db")
    with pytest.raises(RuntimeError, match="boom") as caught:
        with db.transaction() as conn:
            add_row(conn, "lost")
            raise RuntimeError("boom")
    assert any("ROLLBACK failed" in note for note in getattr(caught.value, "__notes__", ["ROLLBACK failed"]))
    assert any("reopening the connection" in r.getMessage() for r in caplog.records)
    assert isinstance(db._conn, sqlite3.Connection) and not db._conn.in_transaction  # a fresh connection
    assert lock_is_free(db) and names(db) == []
    with db.transaction() as conn:
        add_row(conn, "after")
    assert names(db) == ["after"]
    assert db.read("PRAGMA journal_mode")[0][0] in ROLLBACK_JOURNALS and db.read("PRAGMA foreign_keys")[0][0] == 1


def test_errors_that_are_not_the_environments_pass_unchanged(db: Database) -> None:
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        with db.transaction() as conn:
            add_row(conn, "lost")
            conn.execute("SELECT * FROM no_such_table")
    with db.transaction() as conn:
        add_row(conn, "kept")
    with pytest.raises(sqlite3.IntegrityError):
        with db.transaction() as conn:
            conn.execute("INSERT INTO workflows (id, name, spec_json, working_dir, created_at)"
                         " SELECT id, name, spec_json, working_dir, created_at FROM workflows")
    assert names(db) == ["kept"] and not db._conn.in_transaction and lock_is_free(db)


DISK_FULL = textwrap.dedent("""
    import json, os, resource, signal, sys
    from torc_slurm.errors import TorcError
    from torc_slurm.store.db import Database
    db = Database(sys.argv[1])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death
    limit = os.path.getsize(sys.argv[1]) + 16384
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    outcome = {"error": None}
    try:
        with db.transaction() as conn:
            for i in range(100):
                conn.execute("INSERT INTO workflows (name, spec_json, working_dir, created_at)"
                             " VALUES (?, ?, '.', 0)", (f"big{i}", "x" * 4000))
    except TorcError as exc:
        outcome = {"error": type(exc).__name__, "reason": getattr(exc, "reason", None), "message": str(exc)}
    outcome["in_transaction"] = db._conn.in_transaction
    outcome["names"] = [r[0] for r in db.read("SELECT name FROM workflows ORDER BY id")]
    print(json.dumps(outcome))
""")


def test_a_file_size_limit_reads_as_disk_full_and_leaves_the_queue_intact(db: Database) -> None:
    """Disk full without root: the writer runs under RLIMIT_FSIZE, so its writes get EFBIG."""
    with db.transaction() as conn:
        add_row(conn, "before")
    child = subprocess.run([sys.executable, "-c", DISK_FULL, str(db.path)], capture_output=True, text=True,
                           timeout=120)
    assert child.returncode == 0, child.stderr
    outcome = json.loads(child.stdout)
    assert outcome["error"] == "QueueUnavailable" and outcome["reason"] == "disk-full", outcome
    assert "file too large" in outcome["message"] and "file-size limit" in outcome["message"]
    assert str(db.path) in outcome["message"] and "rolled back" in outcome["message"]
    assert outcome["in_transaction"] is False and outcome["names"] == ["before"]
    assert db.read("PRAGMA integrity_check")[0][0] == "ok" and names(db) == ["before"]
    with db.transaction() as conn:
        add_row(conn, "after")
    assert names(db) == ["before", "after"]


@contextlib.contextmanager
def mounted(*commands: list[str], target: Path) -> Iterator[None]:
    """Run mount commands (root only) and unmount ``target`` afterwards; skip when impossible."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a filesystem")
    done = False
    try:
        for command in commands:
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                pytest.skip(f"{' '.join(command)} failed: {result.stderr.strip()}")
            done = True
        yield
    finally:
        if done:
            subprocess.run(["umount", str(target)], check=True)


def test_a_full_disk_says_so(tmp_path: Path) -> None:
    """A real ENOSPC (a tiny tmpfs filled up) is SQLITE_FULL: 'disk is full', and space freed later
    makes the queue work again."""
    disk = tmp_path / "disk"
    disk.mkdir()
    with mounted(["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", str(disk)], target=disk):
        db = Database(disk / "torc.db")
        with db.transaction() as conn:
            add_row(conn, "before")
        filler = os.open(disk / "filler", os.O_CREAT | os.O_WRONLY, 0o600)
        with contextlib.suppress(OSError):
            while True:
                os.write(filler, b"\0" * 65536)
        with contextlib.suppress(OSError):
            while True:
                os.write(filler, b"\0" * 512)
        os.close(filler)
        with pytest.raises(QueueUnavailable, match="the disk holding .* is full") as caught:
            with db.transaction() as conn:
                for i in range(100):
                    conn.execute("INSERT INTO workflows (name, spec_json, working_dir, created_at)"
                                 " VALUES (?, ?, '.', 0)", (f"big{i}", "x" * 4000))
        assert caught.value.reason == "disk-full" and not db._conn.in_transaction and lock_is_free(db)
        assert names(db) == ["before"]
        os.unlink(disk / "filler")
        with db.transaction() as conn:
            add_row(conn, "after")
        assert names(db) == ["before", "after"] and db.read("PRAGMA integrity_check")[0][0] == "ok"
        db.close()


@pytest.fixture
def read_only_view(tmp_path: Path) -> Iterator[Callable[[Path], Path]]:
    """Make a folder read-only and hand back the path to use. As root, chmod does not stop writes,
    so root gets a read-only bind mount of the folder instead (skipped when mounting fails)."""
    undo: list[Callable[[], object]] = []
    stack = contextlib.ExitStack()

    def make(folder: Path) -> Path:
        if os.geteuid() != 0:
            folder.chmod(0o500)
            undo.append(lambda: folder.chmod(0o700))
            return folder
        view = folder.with_name(folder.name + "-ro")
        view.mkdir()
        stack.enter_context(mounted(["mount", "--bind", str(folder), str(view)],
                                    ["mount", "-o", "remount,bind,ro", str(view)], target=view))
        return view

    with stack:
        yield make
        for step in reversed(undo):
            step()


SPEC = "name: w\njobs:\n  - name: a\n    command: 'true'\n"


def one_sentence(result: object) -> str:
    output = result.output  # type: ignore[attr-defined]
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert result.exit_code != 0 and len(errors) == 1, output  # type: ignore[attr-defined]
    return errors[0]


def test_a_read_only_folder_gives_one_sentence_for_every_command(tmp_path: Path,
                                                                  read_only_view: Callable[[Path], Path]) -> None:
    from click.testing import CliRunner

    from torc_slurm.cli import torc

    folder = tmp_path / "queue"
    database = Database(folder / "torc.db")
    small_workflow(database, tmp_path)
    database.close()
    for leftover in ("torc.db.lock", "torc.db-journal", "torc.db.changed"):  # as a fresh copy would be
        (folder / leftover).unlink(missing_ok=True)
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    view = read_only_view(folder)
    path = view / "torc.db"
    with pytest.raises(QueueReadOnly, match="read-only|permission denied") as caught:
        Database(path, create=False)
    assert "Traceback" not in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(QueueReadOnly, match="read-only|permission denied"):
        Database(view / "new.db")
    runner = CliRunner()
    for args in (["workflows", "list"], ["workflows", "status", "1"], ["workflows", "create", str(spec)],
                 ["workflows", "cancel", "1"]):
        result = runner.invoke(torc, ["--db", str(path), *args], catch_exceptions=False)
        sentence = one_sentence(result)
        assert str(view) in sentence and ("read-only" in sentence or "permission denied" in sentence), sentence


def test_sqlite_result_codes_are_sorted_into_kinds() -> None:
    def error(code: int | None) -> sqlite3.Error:
        exc = sqlite3.OperationalError("x")
        if code is not None:
            exc.sqlite_errorcode = code  # type: ignore[attr-defined]
        return exc

    table = {5: "busy", 517: "busy", 6: "busy", 13: "full", 10: "io", 778: "io", 3850: "io", 8: "readonly",
             1544: "readonly", 14: "cantopen", 26: "notadb", 11: "corrupt", 1: None, 19: None, 2067: None,
             None: None}
    for code, kind in table.items():
        assert sqlite_error_kind(error(code)) == kind, code
    assert sqlite_error_kind(RuntimeError("database is locked")) is None


def test_a_damaged_file_is_reported_as_damaged(tmp_path: Path) -> None:
    path = tmp_path / "torc.db"
    database = Database(path)
    small_workflow(database, tmp_path)
    database.close()
    data = bytearray(path.read_bytes())
    page = 4096
    data[page:] = b"\xa5" * (len(data) - page)  # every page but the header's
    path.write_bytes(bytes(data))
    with pytest.raises(QueueCorrupt, match="damaged|not a torc database"):
        with Database(path, create=False) as damaged:
            damaged.read("SELECT * FROM jobs")


def test_paths_that_cannot_work_give_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(QueueError, match=r"no torc database at .*: the folder .*missing does not exist"):
        Database(tmp_path / "missing" / "torc.db", create=False)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(QueueError, match="is a file, not a folder|does not exist or is a file"):
        Database(tmp_path / "afile" / "torc.db")
    (tmp_path / "adir.db").mkdir()
    with pytest.raises(QueueError, match="is a folder, not a queue file"):
        Database(tmp_path / "adir.db")


def test_retrying_backs_off_on_what_may_pass() -> None:
    calls: list[int] = []
    delays: list[float] = []
    seen: list[tuple[str, int]] = []

    def flaky() -> int:
        calls.append(1)
        if len(calls) < 3:
            raise QueueUnavailable("busy", reason="busy")
        return 7

    assert retrying(flaky, attempts=5, first_delay=1.0, max_delay=3.0, sleep=delays.append,
                    on_retry=lambda exc, attempt, delay: seen.append((exc.reason, attempt))) == 7
    assert len(calls) == 3 and seen == [("busy", 1), ("busy", 2)]
    assert 0.5 <= delays[0] <= 1.0 and 1.0 <= delays[1] <= 2.0

    def always() -> None:
        calls.append(1)
        raise QueueUnavailable("disk full", reason="disk-full")

    calls.clear()
    delays.clear()
    with pytest.raises(QueueUnavailable, match="disk full"):
        retrying(always, attempts=6, first_delay=1.0, max_delay=2.0, sleep=delays.append)
    assert len(calls) == 6 and len(delays) == 5 and max(delays) <= 2.0

    def permanent() -> None:
        calls.append(1)
        raise QueueReadOnly("read-only")

    calls.clear()
    with pytest.raises(QueueReadOnly):
        retrying(permanent, sleep=delays.append)
    assert len(calls) == 1


def test_the_change_signal_is_best_effort(db: Database, caplog: pytest.LogCaptureFixture) -> None:
    db.signal_path.mkdir()
    (db.signal_path / "x").touch()  # a folder in the way: the rename must fail
    caplog.set_level(logging.WARNING, logger="torc_slurm.store.db")
    db.notify()
    db.notify()
    assert sum("could not update the change signal" in r.getMessage() for r in caplog.records) == 1
    assert not list(db.path.parent.glob("*.tmp"))


def test_a_transaction_without_foreign_key_checks_restores_them(db: Database) -> None:
    """add_workflow's bulk insert skips SQLite's per-row foreign-key check; every other transaction
    keeps it, also after the unchecked one failed."""
    with db.transaction(foreign_keys=False) as conn:
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 0
        conn.execute("INSERT INTO dependency_sets (id, workflow_id, size, remaining) VALUES (9, 12345, 1, 1)")
    with pytest.raises(sqlite3.IntegrityError):
        with db.transaction() as conn:
            assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
            conn.execute("INSERT INTO dependency_sets (id, workflow_id, size, remaining) VALUES (10, 12345, 1, 1)")
    with pytest.raises(RuntimeError):
        with db.transaction(foreign_keys=False):
            raise RuntimeError("the body failed")
    with db.transaction() as conn:
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
