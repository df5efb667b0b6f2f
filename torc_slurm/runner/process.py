"""Launching and reaping job processes, event-driven.

`ProcessPool` starts each job in a new session (so the job's whole process group can be signalled):
exec'd directly when its command has no shell syntax (`direct_argv`, the "Direct exec" rule of the
README), else as ``bash -c <command>``; with stdin from ``/dev/null`` and stdout/stderr in user-only (0600) files.
`ProcessPool.wait` blocks on one selector holding a pidfd per child plus a self-pipe, so the runner
wakes up exactly when a child exits, when its timeout passes, or when `ProcessPool.wake` is called
(from another thread or a signal handler; the pipe's write end can also be given to
`signal.set_wakeup_fd`). Children are reaped with `os.wait4`, which also yields their peak RSS and
CPU time. Without pidfd support a SIGCHLD handler feeds the same self-pipe instead.

Design notes:

* Spawning uses `os.posix_spawn` (vfork-like clone, ``setsid``) when the job's working directory is
  the runner's own (`torc run` and `torc slurm run-jobs` chdir once to the workflow's directory),
  else `subprocess.Popen` (vfork too, but more parent CPU: the env is encoded in Python, and more).
  posix_spawn cannot close descriptors: the pool marks the inheritable ones the runner inherited
  (none of its own are) close-on-exec once, so the jobs inherit what they did under Popen's
  ``close_fds``: stdin, stdout, stderr only. Either way the child gets the same
  argv, env, cwd, stdio, session and signal dispositions (SIGPIPE/SIGXFSZ back to default, as Popen's
  ``restore_signals``). Popen's ``wait``/``poll`` are never called; the pid is reaped here.
* A direct exec that fails at exec time (not found, not executable, a script without ``#!``) is
  started again as ``bash -c <command>``: nothing of the job ran, and bash then gives its own
  message and exit status (127, 126) or runs the script, exactly as before.
* CPU pinning: Linux CPU affinity is per thread and is inherited by a forked child. The spawning thread
  therefore sets its own mask to the job's cpus, spawns, and restores its mask. The child is pinned
  from its first instruction (no window in which bash could fork unpinned grandchildren), with no
  ``preexec_fn`` (which would disable vfork and is unsafe with threads) and no extra ``taskset`` exec.

Threading: `start`, `wait`, `signal` and `close` belong to the runner's thread; `wake` may be called
from any thread or signal handler; `pids` and ``len()`` are safe to read from other threads.
"""

from __future__ import annotations

import errno
import os
import selectors
import shlex
import shutil
import signal as _signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Finished", "LaunchSpec", "ProcessPool", "direct_argv"]

RSS_UNIT = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
# O_NOFOLLOW: a symlink planted where a job's stdio file goes is refused, not written through.
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
_CAN_PIN = hasattr(os, "sched_setaffinity")
_CAN_SPAWN = hasattr(os, "posix_spawn") and sys.platform.startswith("linux")
_SIGDEF = tuple(s for s in (getattr(_signal, "SIGPIPE", None), getattr(_signal, "SIGXFSZ", None)) if s is not None)
# exec failures after which the command is started again under bash (bash then reports it, or runs
# a script that has no #! line): the job's program never ran
_RETRY_UNDER_BASH = {errno.ENOENT, errno.EACCES, errno.ENOEXEC, errno.EISDIR, errno.ENOTDIR, errno.ELOOP,
                     errno.ENAMETOOLONG, errno.EPERM}

# -- the direct-exec rule (README "Direct exec") ----------------------------------------------
# Outside quotes only these characters may appear: letters and digits (any script, non-ASCII
# included, but no Unicode space), space and tab between words, and _ - + . , / : @ % ^ =
# ("=" not in the first word). Inside '...' anything but a newline; inside "..." anything but
# $ ` \ ! and newline. Everything else ($ ` * ? [ ] ~ < > | & ; ( ) { } # ! \ newline, unbalanced
# quotes) means bash.
_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-+.,/:@%^=")
_NOT_IN_DOUBLE = frozenset('$`\\!\n')
# bash keywords and builtins (bash 5.2 `compgen -k`, `compgen -b`): as the first word they mean bash
_BASH_WORDS = frozenset("""
    if then else elif fi case esac for select while until do done in function time { } ! [[ ]] coproc
    . : [ alias bg bind break builtin caller cd command compgen complete compopt continue declare dirs
    disown echo enable eval exec exit export false fc fg getopts hash help history jobs kill let local
    logout mapfile popd printf pushd pwd read readarray readonly return set shift shopt source suspend
    test times trap true type typeset ulimit umask unalias unset wait""".split())
# builtins whose program behaves exactly alike when given no argument: exit status 0 / 1, no output
_SAME_AS_PROGRAM = frozenset({"true", "false"})


def direct_argv(command: str) -> list[str] | None:
    """The argv to exec ``command`` with, without a shell, when doing so is exactly what ``bash -c
    command`` would run; None when the command needs bash (see the rule above)."""
    quote = None
    first_word, seen = True, False  # in the first word / seen any of it
    for ch in command:
        if quote == "'":
            if ch == "'":
                quote = None
            elif ch == "\n":
                return None
        elif quote == '"':
            if ch == '"':
                quote = None
            elif ch in _NOT_IN_DOUBLE:
                return None
        elif ch == " " or ch == "\t":
            first_word = first_word and not seen
        elif ch in "'\"":
            quote, seen = ch, True
        elif ch in _PLAIN or (ch > "\x7f" and not ch.isspace()):
            if ch == "=" and first_word:
                return None
            seen = True
        else:
            return None
    if quote is not None:
        return None
    # without quotes only spaces and tabs separate words (no other whitespace got this far)
    argv = shlex.split(command) if "'" in command or '"' in command else command.split()
    if not argv or not argv[0] or argv[0].startswith("%") or (
            argv[0] in _BASH_WORDS and not (argv[0] in _SAME_AS_PROGRAM and len(argv) == 1)):
        return None  # %job is fg's
    return argv


# Variables that change what bash does before it execs a simple command, or that bash itself
# rewrites or drops on the way (PS1, IFS, PPID, OPTIND, RANDOM, LINENO, …: checked against bash 5.2):
# with any of them in the job's environment, bash runs the command. Names starting with BASH
# (BASH_ENV, BASHOPTS, BASH_FUNC_x%%, BASH_VERSION, …) count as well.
_BASH_ENV_VARS = frozenset({
    "SHELLOPTS", "EXECIGNORE", "POSIXLY_CORRECT", "IFS", "PS1", "PS2", "PS4", "PPID", "OPTIND", "OPTERR",
    "LINENO", "RANDOM", "SRANDOM", "EPOCHSECONDS", "EPOCHREALTIME", "HISTCMD", "COMP_WORDBREAKS",
})


_WHICH_TTL_S = 1.0
_which_cache: dict[tuple[str, str], tuple[float, str | None]] = {}


def _which(name: str, search: str) -> str | None:
    """``shutil.which(name, path=search)``, remembered for a second (a PATH search is ~10 stats
    per job; bash itself hashes what it found)."""
    now = time.monotonic()
    hit = _which_cache.get((name, search))
    if hit is not None and now - hit[0] < _WHICH_TTL_S:
        return hit[1]
    if len(_which_cache) > 256:
        _which_cache.clear()
    path = shutil.which(name, path=search)
    _which_cache[(name, search)] = (now, path)
    return path


def _direct_launch(command: str, env: Mapping[str, str], cwd: Path) -> tuple[str, list[str], dict[str, str]] | None:
    """(program path, argv, env) that exec exactly what ``bash -c command`` would, with the
    variables bash itself sets or drops on the way (PWD, OLDPWD, SHLVL, _); None: use bash."""
    argv = direct_argv(command)
    if argv is None or any(k in _BASH_ENV_VARS or k.startswith("BASH") for k in env):
        return None
    search, shlvl = env.get("PATH"), env.get("SHLVL")
    added = _bash_additions(os.fspath(cwd), search, env.get("PWD"), env.get("OLDPWD"), shlvl)
    if added is None:
        return None
    name = argv[0]
    if "/" in name:
        path = name
    else:
        path = _which(name, search)  # type: ignore[arg-type]  (PATH checked by _bash_additions)
        if path is None:
            return None  # bash says "command not found" in its own words
    child = dict(env)
    child.update(added)
    if "OLDPWD" in added and added["OLDPWD"] is None:
        del child["OLDPWD"]
    child["_"] = path
    return path, argv, child


_ADDED_TTL_S = 1.0
_added_cache: dict[tuple, tuple[float, dict | None]] = {}


def _bash_additions(cwd: str, search: str | None, pwd: str | None, oldpwd: str | None,
                    shlvl: str | None) -> dict | None:
    """What bash -c adds to the environment before it execs (PWD, SHLVL, no OLDPWD that is not a
    directory; OLDPWD: None = drop it), or None when the direct exec must not be used; remembered
    for a second (a few stats)."""
    key = (cwd, search, pwd, oldpwd, shlvl)
    now = time.monotonic()
    hit = _added_cache.get(key)
    if hit is not None and now - hit[0] < _ADDED_TTL_S:
        return hit[1]
    if len(_added_cache) > 256:
        _added_cache.clear()
    added = _compute_additions(cwd, search, pwd, oldpwd, shlvl)
    _added_cache[key] = (now, added)
    return added


def _compute_additions(cwd: str, search: str | None, pwd: str | None, oldpwd: str | None,
                       shlvl: str | None) -> dict | None:
    if not search or any(not os.path.isabs(d) for d in search.split(os.pathsep)):
        return None  # bash's default PATH, or entries relative to the job's directory
    if shlvl is not None and not (shlvl.isascii() and shlvl.isdigit() and int(shlvl) <= 998):
        return None  # bash resets it (and warns)
    added: dict[str, str | None] = {"SHLVL": str(int(shlvl)) if shlvl is not None else "0"}  # +1, -1 at exec
    try:
        here = os.stat(cwd)
        if not (pwd and os.path.isabs(pwd) and os.path.samestat(os.stat(pwd), here)):
            added["PWD"] = os.path.realpath(cwd)
    except OSError:
        return None  # e.g. no such working directory: bash (or Popen) reports it
    if oldpwd is not None:
        if not os.path.isabs(oldpwd):
            return None
        if not os.path.isdir(oldpwd):
            added["OLDPWD"] = None
    return added


def _seal_inherited_fds() -> None:
    """Mark every inheritable descriptor above 2 close-on-exec. Python opens its own descriptors
    non-inheritable (PEP 446) and SQLite opens with O_CLOEXEC, so these are only descriptors the
    runner inherited from its parent: Popen's ``close_fds`` kept them from the jobs, and so does
    this, for os.posix_spawn (which cannot close descriptors)."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return
    for name in names:
        fd = int(name)
        if fd > 2:
            try:
                if os.get_inheritable(fd):
                    os.set_inheritable(fd, False)
            except OSError:  # the listing's own descriptor, closed by now
                pass


@dataclass(frozen=True)
class LaunchSpec:
    """Everything needed to start one attempt of one job."""

    job_id: int
    attempt: int
    command: str  # run as: its argv when it has no shell syntax (direct_argv), else bash -c <command>
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
    pid: int
    popen: subprocess.Popen | None  # None when started by os.posix_spawn
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

    def __init__(self, *, bash: str | None = None, use_pidfd: bool | None = None, direct_exec: bool = True,
                 posix_spawn: bool = True) -> None:
        """``bash``: the shell to use (default: ``bash`` on the runner's PATH, resolved once).
        ``use_pidfd``: None = use pidfds when the platform has them, False = SIGCHLD fallback.
        ``direct_exec``: exec commands without shell syntax directly (False: always bash -c).
        ``posix_spawn``: use os.posix_spawn where it gives the same child (False: always Popen)."""
        self._bash = shutil.which(bash or "bash")
        self.direct_exec = direct_exec
        self.posix_spawn = posix_spawn
        self._sealed = False
        self._children: dict[int, _Child] = {}
        self._use_pidfd = _pidfd_supported() if use_pidfd is None else use_pidfd
        self._selector = selectors.DefaultSelector()
        self._rfd, self._wfd = os.pipe()
        for fd in (self._rfd, self._wfd):
            os.set_blocking(fd, False)
        self._selector.register(self._rfd, selectors.EVENT_READ, None)
        self._devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self.stdio = StdioOpener()  # the runner names the files of its claimed jobs ahead (stdio.want)
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

        if self._bash is None and (not self.direct_exec or direct_argv(spec.command) is None):
            return failed("cannot start job: bash not found on the runner's PATH")
        try:
            out_fd = self.stdio.take(spec.stdout_path)
            if out_fd is None:
                out_fd = open_output(spec.stdout_path)
        except OSError as e:
            return failed(f"cannot open stdout file {spec.stdout_path}: {e.strerror or e}")
        try:
            if spec.stderr_path == spec.stdout_path:
                err_fd = out_fd
            else:
                err_fd = self.stdio.take(spec.stderr_path)
                if err_fd is None:
                    err_fd = open_output(spec.stderr_path)
        except OSError as e:
            os.close(out_fd)
            return failed(f"cannot open stderr file {spec.stderr_path}: {e.strerror or e}")
        try:
            pid, popen = self._launch(spec, out_fd, err_fd)
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
            pidfd = os.pidfd_open(pid)  # works even if it already exited: not reaped yet
            self._selector.register(pidfd, selectors.EVENT_READ, spec.job_id)
        self._children[spec.job_id] = _Child(spec, pid, popen, pidfd, started_at)
        return pid

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
                os.killpg(child.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def pids(self) -> dict[int, int]:
        """job_id -> pid of the children not reaped yet."""
        return {job_id: c.pid for job_id, c in list(self._children.items())}

    def __len__(self) -> int:
        return len(self._children)

    def close(self) -> None:
        """Release file descriptors (running children are left alone, but no longer tracked)."""
        for child in self._children.values():
            if child.pidfd is not None:
                os.close(child.pidfd)
        self._children.clear()
        self.stdio.close()
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

    def _launch(self, spec: LaunchSpec, out_fd: int, err_fd: int) -> tuple[int, subprocess.Popen | None]:
        """Start ``spec``'s command directly when the rule allows it, else (or when that exec fails)
        under bash; pinned as asked. Returns (pid, the Popen or None)."""
        direct = _direct_launch(spec.command, spec.env, spec.cwd) if self.direct_exec else None
        bash = (self._bash, [self._bash, "-c", spec.command], spec.env)
        if spec.cpu_affinity is None or not _CAN_PIN:
            return self._spawn_either(spec, direct, bash, out_fd, err_fd)
        saved = os.sched_getaffinity(0)  # this thread's mask; the child inherits the mask we set
        try:
            try:
                os.sched_setaffinity(0, spec.cpu_affinity)
            except (OSError, ValueError, TypeError) as e:
                raise _PinError(f"cannot pin job to cpus {spec.cpu_affinity}: {e}") from e
            return self._spawn_either(spec, direct, bash, out_fd, err_fd)
        finally:
            os.sched_setaffinity(0, saved)

    def _spawn_either(self, spec: LaunchSpec, direct, bash, out_fd: int, err_fd: int
                      ) -> tuple[int, subprocess.Popen | None]:
        if direct is not None:
            try:
                return self._spawn(spec, *direct, out_fd, err_fd)
            except OSError as e:
                if e.errno not in _RETRY_UNDER_BASH or (
                        e.filename is not None and os.fspath(e.filename) == os.fspath(spec.cwd)):
                    raise
                # the program could not be exec'd (so it never ran): bash reports it or runs it
        if self._bash is None:
            raise OSError(errno.ENOENT, "bash not found on the runner's PATH")
        return self._spawn(spec, *bash, out_fd, err_fd)

    def _spawn(self, spec: LaunchSpec, path: str, argv: list[str], env: Mapping[str, str], out_fd: int,
               err_fd: int) -> tuple[int, subprocess.Popen | None]:
        if self._can_posix_spawn(spec.cwd, out_fd, err_fd):
            pid = os.posix_spawn(path, argv, env, file_actions=[
                (os.POSIX_SPAWN_DUP2, self._devnull, 0), (os.POSIX_SPAWN_DUP2, out_fd, 1),
                (os.POSIX_SPAWN_DUP2, err_fd, 2)], setsid=True, setsigdef=_SIGDEF)
            return pid, None
        popen = subprocess.Popen(
            argv, executable=path, cwd=spec.cwd, env=env, stdin=self._devnull, stdout=out_fd, stderr=err_fd,
            close_fds=True, start_new_session=True)
        return popen.pid, popen

    def _can_posix_spawn(self, cwd: Path, out_fd: int, err_fd: int) -> bool:
        """posix_spawn cannot chdir nor close descriptors: only when the job's directory is the
        runner's own and nothing but stdio would be inherited."""
        if not (_CAN_SPAWN and self.posix_spawn) or min(out_fd, err_fd, self._devnull) <= 2:
            return False
        try:
            if not os.path.samestat(os.stat(cwd), os.stat(".")):
                return False
        except OSError:
            return False  # Popen reports the working directory's error
        if not self._sealed:  # once per pool (the scan costs ~50 us): see _seal_inherited_fds
            _seal_inherited_fds()
            self._sealed = True
        return True

    def _reap(self, job_id: int) -> Finished | None:
        child = self._children.get(job_id)
        if child is None:
            return None
        try:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        except ChildProcessError:  # reaped by someone else: outcome unknown
            pid, status, usage = child.pid, None, None
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
        if child.popen is not None:
            child.popen.returncode = -sig if sig is not None else return_code if return_code is not None else -1
        return Finished(
            job_id=job_id, attempt=child.spec.attempt, pid=child.pid, return_code=return_code,
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


class StdioOpener:
    """Creates the stdio files of jobs about to start on a thread of its own, so the runner's loop
    does not wait for the filesystem's inode allocation (on ext4 after a mass delete ~0.8 ms a file,
    on a network filesystem a round trip each; two files a job).

    Files are opened without truncating: a claimed job may be handed back before it starts, and
    then another runner may own that attempt's files; only ``take`` at the job's start, under the
    runner's lease, truncates. Unused descriptors are closed when their paths are no longer wanted."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._wanted: dict[Path, None] = {}          # in request order
        self._ready: dict[Path, int] = {}
        self._closed = False
        self._thread: threading.Thread | None = None

    def want(self, paths: Iterable[Path]) -> None:
        """Exactly these paths should be open ahead (earlier requests not listed are dropped)."""
        wanted = dict.fromkeys(paths)
        with self._lock:
            if self._closed:
                return
            for path in [p for p in self._ready if p not in wanted]:
                os.close(self._ready.pop(path))
            self._wanted = {p: None for p in wanted if p not in self._ready}
            if self._wanted:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="torc-stdio", daemon=True)
                    self._thread.start()
                self._work.notify()

    def take(self, path: Path) -> int | None:
        """The descriptor opened ahead for ``path``, truncated, or None (open it yourself)."""
        with self._lock:
            self._wanted.pop(path, None)
            fd = self._ready.pop(path, None)
        if fd is not None:
            try:
                os.ftruncate(fd, 0)
            except OSError:
                os.close(fd)
                return None
        return fd

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._wanted.clear()
            for fd in self._ready.values():
                os.close(fd)
            self._ready.clear()
            self._work.notify()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._wanted and not self._closed:
                    self._work.wait()
                if self._closed:
                    return
                path = next(iter(self._wanted))
            try:
                fd = open_output(path, truncate=False)
            except OSError:
                fd = None  # the start opens it again and reports the error
            with self._lock:
                wanted = self._wanted.pop(path, 0) is None and not self._closed
                if fd is not None and wanted:
                    self._ready[path] = fd
                elif fd is not None:
                    os.close(fd)
                self._work.notify_all()

    def settled(self, timeout: float) -> bool:
        """Wait until every wanted file is open (or failed); False after ``timeout`` seconds."""
        with self._lock:
            return self._work.wait_for(lambda: not self._wanted or self._closed, timeout)

    def ready_count(self) -> int:
        with self._lock:
            return len(self._ready)


class _PinError(Exception):
    """The requested cpu affinity could not be applied."""


def open_output(path: Path, *, truncate: bool = True) -> int:
    """Open (truncate) ``path`` for writing as 0600, creating missing parents as 0700."""
    flags = _OPEN_FLAGS if truncate else _OPEN_FLAGS & ~os.O_TRUNC
    try:
        return os.open(path, flags, 0o600)
    except FileNotFoundError:
        pass
    make_private_dirs(Path(path).parent)
    return os.open(path, flags, 0o600)


def make_private_dirs(folder: Path) -> None:
    """Create ``folder`` and every missing parent as 0700 (``mkdir(parents=True, mode=...)`` gives
    the parents the umask's mode, which may let the group write)."""
    missing = []
    parent = Path(folder)
    while not os.path.lexists(parent):
        missing.append(parent)
        parent = parent.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            pass
