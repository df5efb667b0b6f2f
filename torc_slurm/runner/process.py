"""Launching and reaping job processes, event-driven.

`ProcessPool` starts each job as ``bash -c <command>`` in a new session (so the job's whole process
group can be signalled), with stdin from ``/dev/null`` and stdout/stderr in user-only (0600) files.
`ProcessPool.wait` blocks on one selector holding a pidfd per child plus a self-pipe, so the runner
wakes up exactly when a child exits, when its timeout passes, or when `ProcessPool.wake` is called
(from another thread or a signal handler; the pipe's write end can also be given to
`signal.set_wakeup_fd`). Children are reaped with `os.wait4`, which also yields their peak RSS and
CPU time. Without pidfd support a SIGCHLD handler feeds the same self-pipe instead.

Design notes:

* Spawning uses `subprocess.Popen` (vfork on Linux): ~0.4 ms of parent CPU per ``bash -c true`` with
  stdio in files, vs ~0.15 ms for `os.posix_spawn`, which cannot set the child's working directory.
  Popen's ``wait``/``poll`` are never called; ``popen.returncode`` is set after reaping instead.
* CPU pinning: Linux CPU affinity is per thread and is inherited by a forked child. The spawning thread
  therefore sets its own mask to the job's cpus, spawns, and restores its mask. The child is pinned
  from its first instruction (no window in which bash could fork unpinned grandchildren), with no
  ``preexec_fn`` (which would disable vfork and is unsafe with threads) and no extra ``taskset`` exec.

Threading: `start`, `wait`, `signal` and `close` belong to the runner's thread; `wake` may be called
from any thread or signal handler; `pids` and ``len()`` are safe to read from other threads.
"""

from __future__ import annotations

import os
import selectors
import shutil
import signal as _signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Finished", "LaunchSpec", "ProcessPool"]

RSS_UNIT = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
# O_NOFOLLOW: a symlink planted where a job's stdio file goes is refused, not written through.
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
_CAN_PIN = hasattr(os, "sched_setaffinity")


@dataclass(frozen=True)
class LaunchSpec:
    """Everything needed to start one attempt of one job."""

    job_id: int
    attempt: int
    command: str  # run as: bash -c <command>
    cwd: Path
    env: Mapping[str, str]  # the FULL environment of the child
    stdout_path: Path
    stderr_path: Path
    cpu_affinity: tuple[int, ...] | None = None  # OS cpu ids to pin to; None = don't pin


@dataclass(frozen=True)
class Finished:
    """The outcome of one attempt. ``pid`` is 0 when the command could not be started."""

    job_id: int
    attempt: int
    pid: int
    return_code: int | None  # exit status when it exited normally
    signal: int | None  # signal number when it died of a signal
    started_at: float  # time.time()
    ended_at: float
    peak_rss_bytes: int  # max RSS over the reaped child and its reaped descendants
    cpu_time_s: float  # user + system time of the child and its reaped descendants
    launch_error: str | None = None  # set when the command could not be started at all


@dataclass
class _Child:
    spec: LaunchSpec
    popen: subprocess.Popen
    pidfd: int | None
    started_at: float


def _pidfd_supported() -> bool:
    """Whether os.pidfd_open exists and the kernel supports it."""
    if not hasattr(os, "pidfd_open"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:  # kernel older than 5.3
        return False
    return True


class ProcessPool:
    """Runs job processes and reports them as they exit (see the module docstring)."""

    def __init__(self, *, bash: str | None = None, use_pidfd: bool | None = None) -> None:
        """``bash``: the shell to use (default: ``bash`` on the runner's PATH, resolved once).
        ``use_pidfd``: None = use pidfds when the platform has them, False = SIGCHLD fallback."""
        self._bash = shutil.which(bash or "bash")
        self._children: dict[int, _Child] = {}
        self._use_pidfd = _pidfd_supported() if use_pidfd is None else use_pidfd
        self._selector = selectors.DefaultSelector()
        self._rfd, self._wfd = os.pipe()
        for fd in (self._rfd, self._wfd):
            os.set_blocking(fd, False)
        self._selector.register(self._rfd, selectors.EVENT_READ, None)
        self._devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self._poll_cap: float | None = None
        self._prev_sigchld = None
        if not self._use_pidfd:
            if threading.current_thread() is threading.main_thread():
                self._prev_sigchld = _signal.signal(_signal.SIGCHLD, self._on_sigchld)
            else:  # handlers can only be installed from the main thread: poll as a last resort
                self._poll_cap = 0.05

    # -- public API ---------------------------------------------------------------------------

    @property
    def wakeup_fd(self) -> int:
        """The non-blocking write end of the self-pipe (usable with `signal.set_wakeup_fd`)."""
        return self._wfd

    def start(self, spec: LaunchSpec) -> int | Finished:
        """Start ``spec``; return the pid, or a `Finished` with ``launch_error`` if it cannot start."""
        if spec.job_id in self._children:
            raise ValueError(f"job {spec.job_id} is already running")
        started_at = time.time()

        def failed(message: str) -> Finished:
            return Finished(spec.job_id, spec.attempt, 0, None, None, started_at, time.time(),
                            0, 0.0, launch_error=message)

        if self._bash is None:
            return failed("cannot start job: bash not found on the runner's PATH")
        try:
            out_fd = _open_output(spec.stdout_path)
        except OSError as e:
            return failed(f"cannot open stdout file {spec.stdout_path}: {e.strerror or e}")
        try:
            if spec.stderr_path == spec.stdout_path:
                err_fd = out_fd
            else:
                err_fd = _open_output(spec.stderr_path)
        except OSError as e:
            os.close(out_fd)
            return failed(f"cannot open stderr file {spec.stderr_path}: {e.strerror or e}")
        try:
            popen = self._spawn(spec, out_fd, err_fd)
        except _PinError as e:
            return failed(str(e))
        except OSError as e:
            if e.filename is not None and os.fspath(e.filename) == os.fspath(spec.cwd):
                return failed(f"cannot use working directory {spec.cwd}: {e.strerror}")
            return failed(f"cannot start {self._bash}: {e.strerror or e}")
        except (ValueError, TypeError) as e:  # e.g. a NUL byte in the command or the environment
            return failed(f"invalid command or environment: {e}")
        finally:
            os.close(out_fd)
            if err_fd != out_fd:
                os.close(err_fd)
        pidfd = None
        if self._use_pidfd:
            pidfd = os.pidfd_open(popen.pid)  # works even if it already exited: not reaped yet
            self._selector.register(pidfd, selectors.EVENT_READ, spec.job_id)
        self._children[spec.job_id] = _Child(spec, popen, pidfd, started_at)
        return popen.pid

    def wait(self, timeout: float | None) -> list[Finished]:
        """Block until a child exits, ``timeout`` seconds pass, or `wake` is called; then return
        every child that has exited (possibly none)."""
        if self._poll_cap is not None:
            timeout = self._poll_cap if timeout is None else min(timeout, self._poll_cap)
        ready: list[int] = []
        for key, _ in self._selector.select(timeout):
            if key.fd == self._rfd:
                self._drain()
            else:
                ready.append(key.data)
        if not self._use_pidfd:
            ready = list(self._children)
        done = (self._reap(job_id) for job_id in ready)
        return [f for f in done if f is not None]

    def wake(self) -> None:
        """Make a blocked (or the next) `wait` return. Thread- and async-signal-safe."""
        try:
            os.write(self._wfd, b"\0")
        except (BlockingIOError, OSError):  # pipe full: a wake-up is pending anyway
            pass

    def signal(self, job_ids: Iterable[int], sig: int) -> None:
        """Send ``sig`` to the process group of each running job; unknown/exited jobs are ignored.
        (An exited but unreaped leader keeps its group id reserved, so this never hits a stranger.)"""
        for job_id in job_ids:
            child = self._children.get(job_id)
            if child is None:
                continue
            try:
                os.killpg(child.popen.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def pids(self) -> dict[int, int]:
        """job_id -> pid of the children not reaped yet."""
        return {job_id: c.popen.pid for job_id, c in list(self._children.items())}

    def __len__(self) -> int:
        return len(self._children)

    def close(self) -> None:
        """Release file descriptors (running children are left alone, but no longer tracked)."""
        for child in self._children.values():
            if child.pidfd is not None:
                os.close(child.pidfd)
        self._children.clear()
        self._selector.close()
        for fd in (self._rfd, self._wfd, self._devnull):
            os.close(fd)
        if self._prev_sigchld is not None:
            _signal.signal(_signal.SIGCHLD, self._prev_sigchld)
            self._prev_sigchld = None

    def __enter__(self) -> ProcessPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------

    def _spawn(self, spec: LaunchSpec, out_fd: int, err_fd: int) -> subprocess.Popen:
        def popen() -> subprocess.Popen:
            return subprocess.Popen(
                [self._bash, "-c", spec.command], cwd=spec.cwd, env=spec.env, stdin=self._devnull, stdout=out_fd, stderr=err_fd,
                close_fds=True, start_new_session=True)

        if spec.cpu_affinity is None or not _CAN_PIN:
            return popen()
        saved = os.sched_getaffinity(0)  # this thread's mask; the child inherits the mask we set
        try:
            try:
                os.sched_setaffinity(0, spec.cpu_affinity)
            except (OSError, ValueError, TypeError) as e:
                raise _PinError(f"cannot pin job to cpus {spec.cpu_affinity}: {e}") from e
            return popen()
        finally:
            os.sched_setaffinity(0, saved)

    def _reap(self, job_id: int) -> Finished | None:
        child = self._children.get(job_id)
        if child is None:
            return None
        popen = child.popen
        try:
            pid, status, usage = os.wait4(popen.pid, os.WNOHANG)
        except ChildProcessError:  # reaped by someone else: outcome unknown
            pid, status, usage = popen.pid, None, None
        if pid == 0:
            return None  # still running
        ended_at = time.time()
        del self._children[job_id]
        if child.pidfd is not None:
            self._selector.unregister(child.pidfd)
            os.close(child.pidfd)
        return_code = sig = None
        if status is not None:
            if os.WIFSIGNALED(status):
                sig = os.WTERMSIG(status)
            else:
                return_code = os.WEXITSTATUS(status)
        popen.returncode = -sig if sig is not None else return_code if return_code is not None else -1
        return Finished(
            job_id=job_id, attempt=child.spec.attempt, pid=popen.pid, return_code=return_code,
            signal=sig, started_at=child.started_at, ended_at=ended_at,
            peak_rss_bytes=usage.ru_maxrss * RSS_UNIT if usage else 0,
            cpu_time_s=usage.ru_utime + usage.ru_stime if usage else 0.0)

    def _drain(self) -> None:
        try:
            while os.read(self._rfd, 4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _on_sigchld(self, signum: int, frame: object) -> None:
        self.wake()


class _PinError(Exception):
    """The requested cpu affinity could not be applied."""


def _open_output(path: Path) -> int:
    """Open (truncate) ``path`` for writing as 0600, creating missing parents as 0700."""
    try:
        return os.open(path, _OPEN_FLAGS, 0o600)
    except FileNotFoundError:
        pass
    missing = []
    parent = Path(path).parent
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            pass
    return os.open(path, _OPEN_FLAGS, 0o600)
