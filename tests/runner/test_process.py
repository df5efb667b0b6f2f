"""ProcessPool tests with real processes (no mocks)."""

from __future__ import annotations

import os
import select
import signal
import stat
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from torc_slurm.runner.process import Finished, LaunchSpec, ProcessPool

DEADLINE_S = 30.0


@pytest.fixture(params=["pidfd", "sigchld", "posix_spawn"] if hasattr(os, "pidfd_open") else ["sigchld"])
def pool(request, tmp_path, monkeypatch):
    if request.param == "posix_spawn":  # the jobs' directory is the runner's own: os.posix_spawn
        monkeypatch.chdir(tmp_path)
    p = ProcessPool(use_pidfd=request.param != "sigchld")
    yield p
    p.signal(list(p.pids()), signal.SIGKILL)
    deadline = time.monotonic() + DEADLINE_S
    while len(p) and time.monotonic() < deadline:
        p.wait(1.0)
    p.close()


@pytest.fixture
def pidfd_pool():
    with ProcessPool() as p:
        yield p
        p.signal(list(p.pids()), signal.SIGKILL)
        while len(p):
            p.wait(1.0)


def make_spec(tmp: Path, command: str, job_id: int = 1, **kw) -> LaunchSpec:
    kw.setdefault("cwd", tmp)
    kw.setdefault("env", dict(os.environ))
    kw.setdefault("stdout_path", tmp / f"job{job_id}.o")
    kw.setdefault("stderr_path", tmp / f"job{job_id}.e")
    return LaunchSpec(job_id=job_id, attempt=1, command=command, **kw)


def run(pool: ProcessPool, spec: LaunchSpec) -> Finished:
    """Start ``spec`` and wait (bounded) until it is reaped."""
    started = pool.start(spec)
    if isinstance(started, Finished):
        return started
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        for f in pool.wait(DEADLINE_S):
            if f.job_id == spec.job_id:
                return f
    raise AssertionError(f"job {spec.job_id} did not finish within {DEADLINE_S}s")


def test_exit_codes(pool, tmp_path):
    ok = run(pool, make_spec(tmp_path, "true", 1))
    assert (ok.return_code, ok.signal, ok.launch_error) == (0, None, None)
    assert ok.pid > 0 and ok.attempt == 1
    assert ok.started_at <= ok.ended_at
    three = run(pool, make_spec(tmp_path, "exit 3", 2))
    assert (three.return_code, three.signal) == (3, None)
    assert len(pool) == 0 and pool.pids() == {}


def test_signal_death_is_recorded_as_signal(pool, tmp_path):
    f = run(pool, make_spec(tmp_path, "kill -KILL $$"))
    assert f.return_code is None
    assert f.signal == signal.SIGKILL


def test_missing_binary_is_return_code_127(pool, tmp_path):
    f = run(pool, make_spec(tmp_path, "no-such-command-torc-xyz"))
    assert f.launch_error is None
    assert f.return_code == 127
    assert "no-such-command-torc-xyz" in (tmp_path / "job1.e").read_text()


def test_missing_cwd_is_launch_error(pool, tmp_path):
    missing = tmp_path / "nope"
    f = pool.start(make_spec(tmp_path, "true", cwd=missing))
    assert isinstance(f, Finished)
    assert f.launch_error and str(missing) in f.launch_error and "working directory" in f.launch_error
    assert f.pid == 0 and f.return_code is None and f.signal is None
    assert len(pool) == 0


def test_missing_bash_is_launch_error(tmp_path):
    with ProcessPool(bash="/nonexistent/bash") as p:
        f = p.start(make_spec(tmp_path, "true; true"))  # shell syntax: needs bash
    assert isinstance(f, Finished) and "bash" in f.launch_error


def test_direct_command_needs_no_bash(tmp_path):
    with ProcessPool(bash="/nonexistent/bash") as p:
        pid = p.start(make_spec(tmp_path, "true"))
        assert isinstance(pid, int)
        (f,) = p.wait(DEADLINE_S) or p.wait(DEADLINE_S)
    assert f.return_code == 0 and f.launch_error is None


def test_unopenable_output_and_bad_command_are_launch_errors(pool, tmp_path):
    (tmp_path / "file").write_text("")
    f = pool.start(make_spec(tmp_path, "true", stdout_path=tmp_path / "file" / "x.o"))
    assert isinstance(f, Finished) and "stdout" in f.launch_error
    f = pool.start(make_spec(tmp_path, "echo a\0b", job_id=2))
    assert isinstance(f, Finished) and f.launch_error
    assert len(pool) == 0


def test_stdio_files_and_permissions(pool, tmp_path):
    out = tmp_path / "deep" / "er" / "job.o"
    err = tmp_path / "deep" / "er" / "job.e"
    f = run(pool, make_spec(tmp_path, "echo to-out; echo to-err >&2; cat; pwd",
                            stdout_path=out, stderr_path=err))
    assert f.return_code == 0
    # stdin is /dev/null, so `cat` ends at once and prints nothing
    assert out.read_text() == f"to-out\n{tmp_path}\n"
    assert err.read_text() == "to-err\n"
    for path in (out, err):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for directory in (tmp_path / "deep", tmp_path / "deep" / "er"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_same_file_for_stdout_and_stderr(pool, tmp_path):
    both = tmp_path / "both.log"
    f = run(pool, make_spec(tmp_path, "echo one; echo two >&2; echo three",
                            stdout_path=both, stderr_path=both))
    assert f.return_code == 0
    assert both.read_text() == "one\ntwo\nthree\n"


def test_env_is_exactly_the_given_environment(pool, tmp_path, monkeypatch):
    monkeypatch.setenv("TORC_TEST_PARENT_ONLY", "leak")
    env = {"PATH": os.environ["PATH"], "TORC_JOB_ID": "42"}
    f = run(pool, make_spec(tmp_path, 'echo "$TORC_JOB_ID:${TORC_TEST_PARENT_ONLY-unset}"', env=env))
    assert f.return_code == 0
    assert (tmp_path / "job1.o").read_text() == "42:unset\n"


def test_wait_returns_promptly_when_child_exits(pool, tmp_path):
    assert isinstance(pool.start(make_spec(tmp_path, "true")), int)
    t0 = time.monotonic()
    finished = []
    while not finished and time.monotonic() - t0 < DEADLINE_S:
        finished = pool.wait(timeout=DEADLINE_S)
    assert [f.job_id for f in finished] == [1]
    assert time.monotonic() - t0 < 10


def test_wait_timeout(pool):
    t0 = time.monotonic()
    assert pool.wait(0.05) == []
    assert time.monotonic() - t0 < 10


def test_wake_from_other_thread_unblocks_wait(pool, tmp_path):
    assert isinstance(pool.start(make_spec(tmp_path, "exec sleep 1000")), int)
    waker = threading.Thread(target=pool.wake)
    t0 = time.monotonic()
    waker.start()
    assert pool.wait(timeout=DEADLINE_S) == []
    assert time.monotonic() - t0 < 10
    waker.join()
    assert len(pool) == 1


def test_signal_with_wakeup_fd_unblocks_wait(pidfd_pool):
    received = []
    old_handler = signal.signal(signal.SIGUSR1, lambda signum, frame: received.append(signum))
    old_fd = signal.set_wakeup_fd(pidfd_pool.wakeup_fd)
    try:
        sender = threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGUSR1))
        t0 = time.monotonic()
        sender.start()
        assert pidfd_pool.wait(timeout=DEADLINE_S) == []
        assert time.monotonic() - t0 < 10
        sender.join()
    finally:
        signal.set_wakeup_fd(old_fd)
        signal.signal(signal.SIGUSR1, old_handler)
    assert received == [signal.SIGUSR1]


def _gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie waiting for init counts as gone); bounded."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.01)
    return False


def test_signal_kills_whole_process_group(pool, tmp_path):
    fifo = tmp_path / "grandchild.pid"
    os.mkfifo(fifo)
    rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        pid = pool.start(make_spec(tmp_path, f"sleep 1000 & echo $! > {fifo}; wait"))
        assert isinstance(pid, int)
        readable, _, _ = select.select([rfd], [], [], DEADLINE_S)
        assert readable, "the job never reported its grandchild"
        grandchild = int(os.read(rfd, 100).decode())
    finally:
        os.close(rfd)
    assert psutil.Process(grandchild).ppid() == pid  # it may not have exec'd `sleep` yet
    pool.signal([1, 999], signal.SIGTERM)  # 999 is unknown: ignored
    finished = []
    while not finished:
        finished = pool.wait(DEADLINE_S)
    assert finished[0].signal == signal.SIGTERM
    assert _gone(grandchild)
    pool.signal([1], signal.SIGTERM)  # already reaped: ignored


def test_peak_rss_from_wait4(pool, tmp_path):
    cmd = f'{sys.executable} -c "b = bytearray(50 * 2**20)"'
    f = run(pool, make_spec(tmp_path, cmd))
    assert f.return_code == 0
    assert f.peak_rss_bytes >= 40 * 2**20
    assert f.cpu_time_s > 0


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs >= 2 cpus in the affinity mask")
def test_cpu_affinity_is_applied_to_child_and_grandchildren(pool, tmp_path):
    before = os.sched_getaffinity(0)
    cpu = max(before)
    cmd = (f'{sys.executable} -c "import os; print(sorted(os.sched_getaffinity(0)))"; '
           "grep Cpus_allowed_list /proc/self/status")
    f = run(pool, make_spec(tmp_path, cmd, cpu_affinity=(cpu,)))
    assert f.return_code == 0
    lines = (tmp_path / "job1.o").read_text().splitlines()
    assert lines[0] == f"[{cpu}]"
    assert lines[1].split() == ["Cpus_allowed_list:", str(cpu)]
    assert os.sched_getaffinity(0) == before  # the spawning thread's mask is restored
    bad = pool.start(make_spec(tmp_path, "true", job_id=2, cpu_affinity=(10**6,)))
    assert isinstance(bad, Finished) and "pin" in bad.launch_error
    assert os.sched_getaffinity(0) == before


def test_many_trivial_jobs(pool, tmp_path):
    n, started, results = 300, 0, []
    deadline = time.monotonic() + 60
    while len(results) < n and time.monotonic() < deadline:
        while started < n and len(pool) < 4:
            pool.start(make_spec(tmp_path, "true", job_id=started,
                                 stdout_path=tmp_path / "o" / f"{started}.o",
                                 stderr_path=tmp_path / "o" / f"{started}.e"))
            started += 1
        results.extend(pool.wait(DEADLINE_S))
    assert sorted(f.job_id for f in results) == list(range(n))
    assert all(f.return_code == 0 for f in results)


def test_a_symlink_where_stdout_goes_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.write_text("precious\n")
    (tmp_path / "out").symlink_to(target)
    with ProcessPool() as pool:
        finished = pool.start(LaunchSpec(1, 1, "echo overwritten", tmp_path, dict(os.environ), tmp_path / "out",
                                         tmp_path / "err"))
    assert isinstance(finished, Finished) and "stdout" in (finished.launch_error or "")
    assert target.read_text() == "precious\n"


def test_an_output_folder_others_can_write_is_refused(tmp_path: Path) -> None:
    from torc_slurm.errors import QueueError
    from torc_slurm.runner.session import check_private

    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o777)
    with pytest.raises(QueueError, match="can be written by others"):
        check_private(folder)
    folder.chmod(0o700)
    check_private(folder)
    link = tmp_path / "link"
    link.symlink_to(folder)
    with pytest.raises(QueueError, match="not a folder"):
        check_private(link)


# -- stdio files opened ahead ----------------------------------------------------------------------
def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_stdio_opened_ahead_never_truncates_until_taken(tmp_path):
    """A claimed job may be handed back before it starts and its attempt's files used by another
    runner: opening ahead creates but never truncates; only take (at the start) does."""
    from torc_slurm.runner.process import StdioOpener

    theirs = tmp_path / "job_stdio" / "wf1_job1_attempt1.out"
    theirs.parent.mkdir()
    theirs.write_text("written by the runner that owns the attempt now\n")
    fresh = tmp_path / "job_stdio" / "wf1_job2_attempt1.out"
    opener = StdioOpener()
    try:
        opener.want([theirs, fresh])
        assert opener.settled(10)
        assert opener.ready_count() == 2
        assert theirs.read_text().startswith("written by")       # not truncated by opening ahead
        assert fresh.exists() and (fresh.stat().st_mode & 0o777) == 0o600
        fd = opener.take(theirs)
        assert fd is not None and theirs.read_text() == ""        # truncated when the job starts
        os.write(fd, b"mine\n")
        os.close(fd)
        assert theirs.read_text() == "mine\n"
        assert opener.take(tmp_path / "never_asked.out") is None
    finally:
        opener.close()


def test_stdio_no_longer_wanted_is_closed(tmp_path):
    from torc_slurm.runner.process import StdioOpener

    paths = [tmp_path / "d" / f"f{i}.out" for i in range(20)]
    before = _open_fds()
    opener = StdioOpener()
    try:
        opener.want(paths)
        assert opener.settled(10) and opener.ready_count() == 20
        assert (tmp_path / "d").stat().st_mode & 0o777 == 0o700   # created like the runner's own
        opener.want(paths[:5])                                     # the rest were handed back
        assert opener.ready_count() == 5
        assert _open_fds() - before <= 5 + 1                       # + the opener's thread needs none
    finally:
        opener.close()
    assert _open_fds() == before
