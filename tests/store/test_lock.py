"""The queue lock with real processes: one lock kind per queue, soft locks that cannot hang
forever, a bounded wait with a clear error, waiters that back off, mutual exclusion for both kinds,
and the mount-option check that tells when flock is node-local."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import torc_slurm.store.lock as lock_module
from torc_slurm.errors import LockKindMismatch, QueueError, QueueUnavailable
from torc_slurm.store.db import Database, open_database
from torc_slurm.store.lock import (Mount, QueueLock, describe_holder, flock_caveat, mount_for, parse_mountinfo,
                                   resolve_lock_kind, warn_if_flock_is_node_local)

HOLDER = textwrap.dedent("""
    import os, pathlib, signal, sys, time
    from torc_slurm.store.lock import QueueLock
    path, kind, ready, mode, arg = sys.argv[1:6]
    lock = QueueLock(path, kind, timeout=60)
    with lock.held():
        pathlib.Path(ready).touch()
        if mode == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        elif mode == "hold":
            time.sleep(float(arg))
        else:
            while not os.path.exists(arg):
                time.sleep(0.01)
""")


def start_holder(lock_path: Path, kind: str, mode: str, arg: str = "") -> subprocess.Popen:
    """A child that takes the lock, says so with a file, then dies / holds for a while / waits."""
    ready = lock_path.with_name(lock_path.name + f".ready{time.monotonic_ns()}")
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock_path), kind, str(ready), mode, arg])
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert time.monotonic() < deadline, "the holder did not take the lock"
        if child.poll() is not None and not ready.exists():
            raise AssertionError(f"the holder exited with {child.returncode} before taking the lock")
        time.sleep(0.01)
    return child


def run_python(code: str, *args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})


# -- one lock kind per queue ------------------------------------------------------------------------

def test_a_new_queue_records_its_lock_kind_user_only(tmp_path: Path) -> None:
    Database(tmp_path / "a.db").close()
    Database(tmp_path / "b.db", lock_kind="soft").close()
    record = tmp_path / "a.db.lockkind"
    assert record.read_text() == "flock\n" and (tmp_path / "b.db.lockkind").read_text() == "soft\n"
    assert oct(record.stat().st_mode & 0o777) == "0o600"
    assert not list(tmp_path.glob("*.tmp"))


def test_a_flock_queue_refuses_a_soft_request_from_another_process_at_once(tmp_path: Path) -> None:
    """The failure of old: a queue made under flock leaves torc.db.lock behind, and a soft lock
    waited for that file forever. Now the soft request is refused, naming both kinds."""
    db = tmp_path / "torc.db"
    made = run_python("""
        import sys
        from torc_slurm.store.db import Database
        with Database(sys.argv[1]) as db:
            db.read("SELECT 1")
    """, db)
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "torc.db.lock").exists()
    started = time.monotonic()
    asked = run_python("from torc_slurm.cli import main; import sys; main(sys.argv[1:])",
                       "--db", db, "--lock-kind", "soft", "workflows", "list")
    assert time.monotonic() - started < 60
    assert asked.returncode == 1, asked.stderr
    assert "Traceback" not in asked.stderr
    message = asked.stderr
    assert "uses lock kind 'flock'" in message and "asks for 'soft'" in message and "--lock-kind" in message
    with pytest.raises(LockKindMismatch, match="uses lock kind 'flock'"):
        Database(db, lock_kind="soft")


def test_without_an_explicit_kind_every_process_follows_the_queue(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from torc_slurm.cli import torc

    db = tmp_path / "soft.db"
    Database(db, lock_kind="soft").close()
    monkeypatch.delenv("TORC_LOCK_KIND", raising=False)
    with Database(db) as follower:
        assert follower.lock.kind == "soft"
    with open_database(db) as follower:
        assert follower.lock.kind == "soft"
    runner = CliRunner()
    plain = runner.invoke(torc, ["--db", str(db), "workflows", "list", "-f", "json"], catch_exceptions=False)
    assert plain.exit_code == 0, plain.output
    explicit = runner.invoke(torc, ["--db", str(db), "--lock-kind", "flock", "workflows", "list"],
                             catch_exceptions=False)
    assert explicit.exit_code == 1 and "uses lock kind 'soft'" in explicit.output
    from_env = runner.invoke(torc, ["--db", str(db), "workflows", "list"], env={"TORC_LOCK_KIND": "flock"},
                             catch_exceptions=False)
    assert from_env.exit_code == 1 and "asks for 'flock'" in from_env.output


def test_a_queue_from_before_kinds_were_recorded_is_judged_by_its_lock_file(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    Database(db).close()  # flock: an empty torc.db.lock stays behind
    (tmp_path / "old.db.lockkind").unlink()
    with pytest.raises(LockKindMismatch, match="judging by its lock file"):
        Database(db, lock_kind="soft")
    assert not (tmp_path / "old.db.lockkind").exists()
    Database(db).close()
    assert (tmp_path / "old.db.lockkind").read_text() == "flock\n"  # recorded on first open
    other = tmp_path / "other.db"
    Database(other, lock_kind="soft").close()
    (tmp_path / "other.db.lockkind").unlink()
    Database(other, lock_kind="flock").close()  # no lock file left: nothing contradicts the request
    assert (tmp_path / "other.db.lockkind").read_text() == "flock\n"


def test_a_garbled_record_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "x.db.lockkind").write_text("posix\n")
    with pytest.raises(QueueError, match="names lock kind 'posix'"):
        resolve_lock_kind(tmp_path / "x.db", None, existing=False)


def test_flock_never_falls_back_to_soft(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_flock(fd: int, operation: int) -> None:
        raise OSError(errno.ENOSYS, "Function not implemented")

    lock = QueueLock(str(tmp_path / "q.lock"), "flock", timeout=5)
    monkeypatch.setattr(fcntl, "flock", no_flock)
    with pytest.raises(QueueError, match="--lock-kind soft") as caught:
        with lock.held():
            pass
    assert "flock() does not work" in str(caught.value)
    assert lock.acquisitions == 0


# -- soft locks cannot hang forever -----------------------------------------------------------------

def test_a_soft_lock_left_by_a_dead_process_on_this_host_is_broken_at_once(tmp_path: Path) -> None:
    lock_path = tmp_path / "q.lock"
    child = start_holder(lock_path, "soft", "die")
    assert child.wait(timeout=30) == -9 and lock_path.exists()  # killed while holding it
    lock = QueueLock(str(lock_path), "soft", timeout=30, lifetime=600)
    with lock.held():
        assert describe_holder(str(lock_path)).startswith(f"pid {os.getpid()} on ")
    assert lock.acquisitions == 1 and not lock_path.exists()


def test_a_soft_lock_from_another_host_is_broken_after_its_lifetime(tmp_path: Path) -> None:
    lock_path = tmp_path / "q.lock"
    lock_path.write_text("999999\nnode-gone.example\n")  # a holder on a host that went away
    quick = QueueLock(str(lock_path), "soft", timeout=0.3, lifetime=600)
    with pytest.raises(QueueUnavailable, match="held by pid 999999 on node-gone.example") as caught:
        with quick.held():
            pass
    assert caught.value.reason == "lock-timeout" and str(lock_path) in str(caught.value)
    lock_path.write_text("999999\nnode-gone.example\n")  # fresh again
    started = time.time()
    lock = QueueLock(str(lock_path), "soft", timeout=30, lifetime=1.0)
    with lock.held():
        waited = time.time() - started
    assert waited >= 0.8  # not broken before its lifetime (mtime resolution allows a little)
    assert lock.acquisitions == 1 and not lock_path.exists()


def test_a_live_soft_holder_past_the_wait_limit_gives_a_clear_error(tmp_path: Path) -> None:
    lock_path, release = tmp_path / "q.lock", tmp_path / "release"
    child = start_holder(lock_path, "soft", "until", str(release))
    try:
        lock = QueueLock(str(lock_path), "soft", timeout=1.0, lifetime=600)
        started = time.monotonic()
        with pytest.raises(QueueUnavailable) as caught:
            with lock.held():
                pass
        assert time.monotonic() - started < 10
    finally:
        release.touch()
        child.wait(timeout=30)
    message = str(caught.value)
    assert f"for the queue lock {lock_path}" in message and "gave up waiting 1." in message
    assert f"held by pid {child.pid} on {socket.gethostname()}, still running" in message
    assert caught.value.reason == "lock-timeout" and caught.value.retryable


def test_a_live_flock_holder_past_the_wait_limit_gives_a_clear_error(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    lock_path, release = tmp_path / "q.lock", tmp_path / "release"
    child = start_holder(lock_path, "flock", "until", str(release))
    monkeypatch.setenv("TORC_LOCK_TIMEOUT", "0.5")
    try:
        lock = QueueLock(str(lock_path), "flock")
        assert lock.timeout == 0.5
        with pytest.raises(QueueUnavailable, match=r"gave up waiting 0\.\d s for the queue lock .*TORC_LOCK_TIMEOUT=0.5"):
            with lock.held():
                pass
    finally:
        release.touch()
        child.wait(timeout=30)
    with lock.held():
        pass


def test_the_wait_limit_from_the_environment_is_checked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORC_LOCK_TIMEOUT", "soon")
    with pytest.raises(QueueError, match="TORC_LOCK_TIMEOUT must be a positive number of seconds"):
        QueueLock(str(tmp_path / "q.lock"))
    monkeypatch.setenv("TORC_LOCK_TIMEOUT", "inf")
    assert QueueLock(str(tmp_path / "q.lock")).timeout == float("inf")
    monkeypatch.delenv("TORC_LOCK_TIMEOUT")
    assert QueueLock(str(tmp_path / "q.lock")).timeout == lock_module.DEFAULT_LOCK_TIMEOUT
    monkeypatch.setenv("TORC_SOFT_LOCK_LIFETIME", "inf")  # never break by age: only dead holders here
    forever = QueueLock(str(tmp_path / "s.lock"), "soft")
    assert forever.lifetime == float("inf") and forever._lock.lifetime is None
    monkeypatch.setenv("TORC_SOFT_LOCK_LIFETIME", "45")
    assert QueueLock(str(tmp_path / "s.lock"), "soft").lifetime == 45
    assert QueueLock(str(tmp_path / "q.lock"), "flock").lifetime is None


def test_a_soft_lock_broken_during_a_long_transaction_rolls_it_back(tmp_path: Path) -> None:
    db = Database(tmp_path / "torc.db", lock_kind="soft", soft_lock_lifetime=0.4)
    with db.transaction() as conn:
        conn.execute("CREATE TABLE t (x)")
    lock_path = Path(db.lock.path)
    with pytest.raises(QueueUnavailable, match="no longer ours") as caught:
        with db.transaction() as conn:
            conn.execute("INSERT INTO t VALUES (1)")
            time.sleep(0.3)  # over half the lifetime: a waiter may have broken it ...
            replacement = lock_path.with_name("taken")
            replacement.write_text("999999\nnode-b.example\n")
            os.replace(replacement, lock_path)  # ... and one did
    assert caught.value.reason == "lock-lost"
    assert lock_path.read_text() == "999999\nnode-b.example\n"  # the new holder's file is left alone
    lock_path.unlink()
    assert db.read("SELECT COUNT(*) FROM t")[0][0] == 0
    db.close()


# -- waiting ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("age_after", "most"), [(1000.0, 40), (1.0, 80)])
def test_waiters_back_off(tmp_path: Path, age_after: float, most: int) -> None:
    """Over a 2 s hold a waiter polling every 10 ms would try ~200 times; backing off from 5 ms
    to 250 ms, it tries a few dozen times at most (~20); once it has waited 1 s it polls every
    25-50 ms (~30 more) so that fresh waiters cannot overtake it again and again."""
    lock_path = tmp_path / "q.lock"
    child = start_holder(lock_path, "flock", "hold", "2.0")
    lock = QueueLock(str(lock_path), "flock", timeout=60)
    lock.age_after = age_after
    with lock.held():
        pass
    child.wait(timeout=30)
    assert 4 <= lock.attempts <= most, lock.attempts
    assert lock.acquisitions == 1 and lock.longest_wait > 0.5


def test_the_still_waiting_warning_repeats(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lock_path = tmp_path / "q.lock"
    child = start_holder(lock_path, "soft", "hold", "1.0")
    caplog.set_level("WARNING", logger="torc_slurm.store.lock")
    lock = QueueLock(str(lock_path), "soft", timeout=60, warn_after=0.3, lifetime=600)
    with lock.held():
        pass
    child.wait(timeout=30)
    warnings = [r.getMessage() for r in caplog.records if "still waiting for the queue lock" in r.getMessage()]
    assert len(warnings) >= 2 and f"held by pid {child.pid}" in warnings[0]


HAMMER = textwrap.dedent("""
    import os, sys, time
    from torc_slurm.store.lock import QueueLock
    path, kind, log, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    lock = QueueLock(path, kind, timeout=120)
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    me = os.getpid()
    for _ in range(rounds):
        with lock.held():
            os.write(fd, f"enter {me}\\n".encode())
            time.sleep(0.0002)
            os.write(fd, f"exit {me}\\n".encode())
    print(lock.acquisitions, lock.attempts)
""")


@pytest.mark.parametrize("kind", ["flock", "soft"])
def test_processes_hammering_the_lock_never_overlap(tmp_path: Path, kind: str) -> None:
    lock_path, log = tmp_path / "q.lock", tmp_path / "log"
    rounds, workers = 150, 3
    children = [subprocess.Popen([sys.executable, "-c", HAMMER, str(lock_path), kind, str(log), str(rounds)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(workers)]
    for child in children:
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, err
        assert int(out.split()[0]) == rounds
    lines = log.read_text().splitlines()
    assert len(lines) == 2 * rounds * workers
    for enter, leave in zip(lines[::2], lines[1::2]):
        assert enter.startswith("enter ") and leave == "exit " + enter.split()[1], (enter, leave)


# -- mounts on which flock is node-local ------------------------------------------------------------

MOUNTINFO = "\n".join([
    "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard",
    "100 27 0:50 / /home rw,relatime shared:1 - nfs4 fs1:/home rw,vers=4.2,hard,proto=tcp,local_lock=none,addr=10.0.0.1",
    "101 27 0:51 / /scratch rw,relatime shared:2 master:3 - nfs fs2:/scratch rw,vers=3,local_lock=all,addr=10.0.0.2",
    "102 27 0:52 / /projects rw,noatime - nfs fs3:/p rw,vers=3,nolock,local_lock=flock,addr=10.0.0.3",
    "103 27 0:53 / /lustre/fs1 rw,relatime - lustre 10.0.0.4@o2ib:/fs1 rw,localflock,lazystatfs",
    "104 27 0:54 / /lustre/fs2 rw,relatime - lustre 10.0.0.5@o2ib:/fs2 rw,flock,lazystatfs",
    "105 27 0:55 / /lustre/fs3 rw,relatime - lustre 10.0.0.6@o2ib:/fs3 rw,noflock",
    "106 27 0:56 / /my\\040data rw,relatime - nfs4 fs4:/d rw,local_lock=all",
    "107 100 0:57 / /home rw,relatime - nfs4 fs5:/home2 rw,local_lock=flock",  # stacked on /home
    "108 27 0:58 / /gpfs rw,relatime - gpfs gpfs0 rw",
    "garbage line",
])


@pytest.mark.parametrize(("path", "mount_point", "caveat"), [
    ("/tmp/x", "/", None),
    ("/homework/x", "/", None),  # a prefix of the name is not a parent folder
    ("/home/u", "/home", "local_lock=flock"),  # the mount stacked on top wins
    ("/scratch/u/run", "/scratch", "local_lock=all"),
    ("/scratch", "/scratch", "local_lock=all"),
    ("/projects/a", "/projects", "local_lock=flock"),
    ("/lustre/fs1/u", "/lustre/fs1", "localflock"),
    ("/lustre/fs2/u", "/lustre/fs2", None),
    ("/lustre/fs3/u", "/lustre/fs3", "noflock"),
    ("/my data/q", "/my data", "local_lock=all"),
    ("/gpfs/u", "/gpfs", None),
])
def test_mountinfo_table(path: str, mount_point: str, caveat: str | None) -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert len(mounts) == 10
    mount = mount_for(path, mounts)
    assert mount is not None and mount.mount_point == mount_point
    said = flock_caveat(mount)
    if caveat is None:
        assert said is None
    else:
        assert said is not None and caveat in said and "soft" in said


def test_mountinfo_fields() -> None:
    home = parse_mountinfo(MOUNTINFO)[1]
    assert home == Mount("/home", "nfs4", "fs1:/home", home.options)
    assert {"rw", "relatime", "local_lock=none", "vers=4.2"} <= home.options
    nolock_only = Mount("/n", "nfs", "fs:/n", frozenset({"rw", "nolock"}))
    assert "nolock" in (flock_caveat(nolock_only) or "")


def test_node_local_flock_is_warned_once_per_mount(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(lock_module, "_checked_mounts", set())
    monkeypatch.setattr(lock_module, "_checked_folders", set())
    sample = tmp_path / "mountinfo"
    sample.write_text("1 0 0:1 / / rw - nfs4 fs:/ rw,vers=4.2,local_lock=all\n")
    caplog.set_level(logging.WARNING, logger="torc_slurm.store.lock")
    lock_path = str(tmp_path / "q.lock")
    assert "local_lock=all" in (warn_if_flock_is_node_local(lock_path, str(sample)) or "")
    assert warn_if_flock_is_node_local(lock_path, str(sample)) is None
    assert sum("flock() is local to each node" in r.getMessage() for r in caplog.records) == 1
    assert warn_if_flock_is_node_local(lock_path, str(tmp_path / "absent")) is None


def test_holder_records_are_read_in_both_formats(tmp_path: Path) -> None:
    plain, v2, junk = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    plain.write_text("4242\nnode-7\n123\n")
    v2.write_text("filelock/2\npid=77\nhost=node-8?pidns-4026531836\nmode=exclusive\n")
    junk.write_text("")
    assert describe_holder(str(plain)) == "pid 4242 on node-7"
    assert describe_holder(str(v2)) == "pid 77 on node-8"
    assert describe_holder(str(junk)) is None and describe_holder(str(tmp_path / "none")) is None
