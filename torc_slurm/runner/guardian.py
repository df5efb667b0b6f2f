"""The runner's guardian: a small process that makes a runner's jobs die with it.

Every job a runner starts carries ``TORC_RUNNER_TOKEN=<token>`` in its environment, and so does
everything the job starts (unless it scrubs its environment). The guardian is a separate process,
in its own session, that reads lease deadlines from the runner on a pipe:

* when the pipe closes (the runner exited, or was killed with -9), it kills every process that
  carries the token, and exits;
* when a deadline passes with no renewal (the runner is frozen, or cannot reach the queue), it
  kills the same processes and keeps watching: the runner's lease is over, so its jobs may
  already be running elsewhere (self-fencing on the runner's behalf).

Processes are found by reading ``/proc/<pid>/environ`` (only the user's own processes are
readable, which are the only ones a job can start). The scan repeats until none is left, so a
child forked in the instant the runner died is caught too.

Run as ``python -m torc_slurm.runner.guardian TOKEN RUNNER_PID``.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterable

log = logging.getLogger(__name__)
TOKEN_VARIABLE = "TORC_RUNNER_TOKEN"
# After the runner's deadline the guardian waits this much more: the runner fences itself first.
DEADLINE_SLACK_S = 0.5


def find_processes(token: str, *, exclude: Iterable[int] = ()) -> list[int]:
    """Pids of the processes whose environment carries ``TORC_RUNNER_TOKEN=token``."""
    needle = f"{TOKEN_VARIABLE}={token}".encode()
    skip = {os.getpid(), *exclude}
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit() or int(entry) in skip:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                environ = handle.read()
        except OSError:  # gone, or another user's
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry))
    return found


def kill_processes(token: str, *, exclude: Iterable[int] = (), rounds: int = 20, pause_s: float = 0.02) -> int:
    """SIGKILL every process (and its process group) that carries ``token`` until none is left or
    ``rounds`` scans pass; returns how many processes were signalled."""
    killed: set[int] = set()
    excluded = set(exclude)
    for _ in range(rounds):
        pids = find_processes(token, exclude=excluded)
        alive = [pid for pid in pids if not has_exited(pid)]
        if not alive:
            return len(killed)
        for pid in alive:
            try:
                pgid = os.getpgid(pid)
                if pgid not in excluded and pgid != os.getpgid(0):
                    os.killpg(pgid, signal.SIGKILL)
            except OSError:
                pass
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
            killed.add(pid)
        time.sleep(pause_s)
    return len(killed)


def processes_left(token: str, *, exclude: Iterable[int] = ()) -> list[int]:
    """Processes carrying ``token`` that have not exited (zombies have)."""
    return [pid for pid in find_processes(token, exclude=exclude) if not has_exited(pid)]


def has_exited(pid: int) -> bool:
    """Gone, or a zombie (exited, not reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return True
    return stat[stat.rfind(b")") + 2:][:1] in (b"Z", b"X")


class Guardian:
    """The runner's end of the guardian: start it, send lease deadlines, close it."""

    def __init__(self, token: str) -> None:
        self.token = token
        self._proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != TOKEN_VARIABLE}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "torc_slurm.runner.guardian", self.token, str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True, env=env, close_fds=True)

    def renew(self, deadline_monotonic: float) -> None:
        """The runner's lease now lasts until ``deadline_monotonic`` (CLOCK_MONOTONIC is one clock
        for every process of the host)."""
        self._send(f"deadline {deadline_monotonic:.6f}\n")

    def _send(self, line: str) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None:
            return
        try:
            proc.stdin.write(line.encode())
            proc.stdin.flush()
        except (BrokenPipeError, OSError):
            log.error("the runner's guardian (pid %s) is gone; starting a new one", proc.pid)
            self.start()
            self._send(line)

    def close(self) -> None:
        """The runner is done: the guardian kills what is left of its jobs and exits."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin:
                proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: list[str]) -> int:
    token, runner_pid = argv[0], int(argv[1])
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # a Ctrl-C at the runner's terminal is the runner's
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # Slurm's TERM to the step: outlive the runner by a moment
    stdin = sys.stdin.buffer.raw if hasattr(sys.stdin.buffer, "raw") else sys.stdin.buffer
    deadline: float | None = None
    buffer = b""
    while True:
        # Bounded: after a stop (SIGSTOP, a paused node) select resumes with the time that was left,
        # so the clock is looked at again at least twice a second.
        timeout = None if deadline is None else min(0.5, max(0.0, deadline + DEADLINE_SLACK_S - time.monotonic()))
        readable, _, _ = select.select([stdin], [], [], timeout)
        if not readable and deadline is not None and time.monotonic() < deadline + DEADLINE_SLACK_S:
            continue
        if not readable:  # the lease ran out with no renewal
            killed = kill_processes(token, exclude=(runner_pid,))
            if killed:
                print(f"torc guardian: runner {runner_pid} did not renew its lease; killed {killed} job processes",
                      file=sys.stderr, flush=True)
            deadline = None
            continue
        chunk = os.read(stdin.fileno(), 4096)
        if not chunk:  # the runner is gone (or done)
            kill_processes(token, exclude=(runner_pid,))
            return 0
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            parts = line.split()
            if len(parts) == 2 and parts[0] == b"deadline":
                deadline = float(parts[1])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
