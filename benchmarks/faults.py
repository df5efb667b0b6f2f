"""A random fault campaign: several `torc run ID` runners on ONE queue file, a few thousand short
jobs, and faults injected at random times. Does every job run exactly once at a time, and is none
lost? How long does the work take to recover from each fault?

The workload (``--jobs`` N, durations uniform in [--min-seconds, --max-seconds]):

  a_1..a_A     40 % of N, independent
  barrier      depends on every a_ (``depends_on_regexes: ["^a_"]``)
  d_1..d_D     30 %: a random DAG; each depends on 0-3 of the 40 d's before it; 30 % of the roots
               also wait for the barrier
  b_1..b_B     the rest, each depends on the barrier
  final        depends on every b_ and d_ (``depends_on_regexes``)

Every job runs ``bash job.sh NAME SECONDS`` (``job.sh`` is written into the work dir): it takes an
exclusive ``flock`` on ``locks/NAME`` for its whole life (the kernel drops it only when the process
and its children are gone, kill -9 included), and logs ``DOUBLE`` and exits 3 if it cannot, so an
attempt that starts while an earlier one of the same job still runs is caught; each attempt appends
``NAME ATTEMPT start|end|DOUBLE TIME PID RUNNER_TOKEN`` to ``events.log`` with O_APPEND.

Runners: ``--runners`` processes ``python -m torc_slurm --db DB -v run ID --num-cpus C
--monitor-interval 0``; the first one (``--skewed-at-start``) runs with ``time.time`` shifted by -90 s.
The last ``--foreign`` slots (default 2) run in their own pid namespace (``unshare --pid --fork
--mount-proc``, root only, under a small init that outlives the runner as a node would): the other
runners cannot check or kill anything there, exactly as for a runner on another host, so they may
take its jobs only once its lease has expired in their own clock (1.5 x the lease) and must rely on
its self-fencing and its guardian. Runners on this host are swept at once when their pid is gone,
and their jobs are killed by the sweeper itself when they are stopped.

Faults (``--faults``, one every U(--gap) seconds, kinds drawn uniformly from the list, so a kind
named twice is drawn twice as often; default ``kill,kill,stop,stop,stall,clock``):

  kill    kill -9 of a random runner; a replacement runner starts at once.
  stall   an outside process holds ``filelock.FileLock("<db>.lock")`` for U(0.5, 1.5) x lease
          (a metadata-server stall); one at a time.
  stop    SIGSTOP of a random runner for U(0.3, 2.5) x lease, then SIGCONT (at most half the
          runners at once). Whether it was stopped while holding the queue lock is recorded.
  clock   SIGTERM of a random runner (a graceful stop, as at a walltime) and a replacement whose
          ``time.time`` is off by +-30..300 s.
  freeze  (not in the default list) SIGSTOP of a runner AND its guardian and jobs for U(0.3, 2.5) x
          lease, then SIGCONT of all: a whole node paused (a VM pause, a hung kernel). On a foreign
          runner this is the case leases cannot cover: its jobs are frozen, not dead, when the
          others take them, so the new attempt finds the old one's flock and logs DOUBLE. The
          figures say how long the frozen attempts lived on after the thaw.

The lease is the spec's ``heartbeat_timeout_seconds`` (``--lease``, default 6 s, so stalls of
3-9 s and stops of 1.8-15 s straddle it). ``max_attempts`` is raised (``--max-attempts``) so that
repeated interruptions do not fail a job: the campaign looks for double runs and losses.

Checks, at the end:

* jobs run twice at once: ``DOUBLE`` lines, and overlapping attempts of one job from events.log.
  An attempt without an ``end`` line (killed) ends, for this check, when a /proc sampler (every
  0.1 s) last saw its process; so an overlap found is certain, never a guess.
* jobs lost: jobs not ``completed`` in the queue at the end, or with no ``end`` line.
* reruns of finished jobs: a job with an ``end`` line whose later attempt started after it. Split
  into "its completion had been applied" (a non-late ``completed`` result for that attempt: a bug)
  and "the outcome never reached the queue / came late" (the runner died, froze or was fenced
  before it reported).
* dependency order: every start of a job comes after an ``end`` of each of its dependencies.
* the queue's own view: job statuses, results by status, late results, runners lost.
* runner logs: tracebacks, self-fencing, guardian kills, exits we did not cause, hangs at the end.

Time to recover, per fault: the fault's *affected jobs* are the attempts in flight at the fault
time (a ``start`` before it and no ``end`` before it) on the faulted runner (kill, stop, clock) or
on any runner (stall; its time is when the outside process got the lock). An affected job has
recovered at the first of: a later attempt of it starts, or the in-flight attempt ends AND its
completion was applied by the queue. The fault's recovery time is the max over its affected jobs
(also the median); a fault with no job in flight on that runner has none. Faults that overlap
(another fault began before this one recovered) are counted; "isolated" figures leave them out.

    python benchmarks/faults.py                        # seed 1, 2,000 jobs, 6 runners
    python benchmarks/faults.py --seed 2 --jobs 3000 --runners 8 --lease 6
    python benchmarks/faults.py --faults kill,stop --gap 2 5 --keep /tmp/faults-run
    python benchmarks/faults.py --faults freeze --runners 4 --foreign 4 --jobs 1000   # node pauses
    python benchmarks/faults.py --reanalyse /tmp/faults-run                            # figures again

Raw figures go to ``benchmarks/faults_seed<SEED>.json`` (``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine  # noqa: E402

from torc_slurm.runner.guardian import has_exited  # noqa: E402

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
KINDS = ("kill", "stall", "stop", "clock", "freeze")

JOB_SH = r'''# job.sh NAME SECONDS: run once at a time, or log DOUBLE
exec 9>>"locks/$1"
if ! flock -n 9; then
  printf '%s %s DOUBLE %s %s %s\n' "$1" "${TORC_ATTEMPT:-?}" "$EPOCHREALTIME" "$$" "${TORC_RUNNER_TOKEN:-?}" >> events.log
  exit 3
fi
printf '%s %s start %s %s %s\n' "$1" "${TORC_ATTEMPT:-?}" "$EPOCHREALTIME" "$$" "${TORC_RUNNER_TOKEN:-?}" >> events.log
sleep "$2"
printf '%s %s end %s %s %s\n' "$1" "${TORC_ATTEMPT:-?}" "$EPOCHREALTIME" "$$" "${TORC_RUNNER_TOKEN:-?}" >> events.log
'''

SKEWED = ("import time; _r = time.time; time.time = lambda: _r() + {offset}\n"
          "import sys; from torc_slurm.cli import main; main(sys.argv[1:])")

# pid 1 of a foreign runner's namespace: runs the runner, reaps orphans, and lives on until the
# runner's guardian and jobs are gone (a node outlives its runner), then exits with the runner's code.
INIT = ("import os, subprocess, sys\n"
        "child = subprocess.Popen(sys.argv[1:])\n"
        "rc = 0\n"
        "while True:\n"
        "    try:\n"
        "        pid, status = os.waitpid(-1, 0)\n"
        "    except ChildProcessError:\n"
        "        break\n"
        "    if pid == child.pid:\n"
        "        rc = os.waitstatus_to_exitcode(status)\n"
        "sys.exit(rc if rc >= 0 else 128 - rc)\n")


def _host_key() -> tuple[str, str]:
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return boot, f"{boot}:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return "", ""


BOOT_ID, HOST_KEY = _host_key()

HOLDER = ("import filelock, sys, time\n"
          "lock = filelock.FileLock(sys.argv[1], thread_local=False)\n"
          "lock.acquire()\n"
          "print('acquired', time.time(), flush=True)\n"
          "time.sleep(float(sys.argv[2]))\n"
          "lock.release()\n"
          "print('released', time.time(), flush=True)\n")


# -- the workload -----------------------------------------------------------------------------

def build_spec(rng: random.Random, n: int, lease: int, max_attempts: int, lo: float, hi: float
               ) -> tuple[dict, dict[str, list[str]]]:
    """The spec, and each job's dependencies (expanded, for the order check)."""
    n_a = max(1, int(0.40 * n))
    n_d = max(1, int(0.30 * n))
    n_b = max(1, n - n_a - n_d - 2)
    jobs: list[dict] = []
    deps: dict[str, list[str]] = {}

    def job(name: str, after: list[str] | None = None, regexes: list[str] | None = None) -> None:
        # A failed dependency (a DOUBLE exits 3) must not cancel the rest: the campaign counts
        # double runs and losses, not cascades.
        entry = {"name": name, "command": f"bash job.sh {name} {rng.uniform(lo, hi):.3f}",
                 "resource_requirements": "one", "cancel_on_blocking_job_failure": False}
        if after:
            entry["depends_on"] = after
        if regexes:
            entry["depends_on_regexes"] = regexes
        jobs.append(entry)

    a_names = [f"a_{i}" for i in range(1, n_a + 1)]
    for name in a_names:
        job(name)
        deps[name] = []
    job("barrier", regexes=["^a_"])
    deps["barrier"] = list(a_names)
    for i in range(1, n_d + 1):
        parents = sorted(rng.sample(range(max(1, i - 40), i), min(i - 1, rng.choice([0, 1, 1, 2, 2, 3]))))
        after = [f"d_{p}" for p in parents]
        if not after and rng.random() < 0.3:
            after = ["barrier"]
        job(f"d_{i}", after)
        deps[f"d_{i}"] = after
    for i in range(1, n_b + 1):
        job(f"b_{i}", ["barrier"])
        deps[f"b_{i}"] = ["barrier"]
    job("final", regexes=["^b_", "^d_"])
    deps["final"] = [f"b_{i}" for i in range(1, n_b + 1)] + [f"d_{i}" for i in range(1, n_d + 1)]
    spec = {"name": "fault-campaign", "heartbeat_timeout_seconds": lease, "max_attempts": max_attempts,
            "resource_requirements": [{"name": "one", "num_cpus": 1, "memory": "10m", "runtime": "PT1M"}],
            "jobs": jobs}
    return spec, deps


# -- processes ----------------------------------------------------------------------------------

@dataclass
class RunnerProc:
    slot: int
    index: int                 # order of start
    skew_s: float
    reason: str                # initial | replaces #k after kill | ...
    started: float
    proc: subprocess.Popen = field(repr=False)
    log: Path = field(repr=False)
    ended: float | None = None
    rc: int | None = None
    ended_by: str | None = None  # kill | term | None (on its own)
    stopped_until: float | None = None
    foreign: bool = False        # in its own pid namespace: "another host" to every other runner
    runner_pid: int | None = None  # the runner's pid here (for a foreign one: unshare -> init -> runner)
    host_key: str | None = None  # what the queue's runners.host_key will say
    inner_pid: int | None = None  # what the queue's runners.pid will say
    created: float | None = None  # its process start time (the queue's runners.pid_started)
    frozen_pids: list[int] = field(default_factory=list)  # a freeze: the runner, its guardian and jobs

    @property
    def pid(self) -> int:
        if self.runner_pid is None:
            self.resolve(wait_s=3.0)
        return self.runner_pid or self.proc.pid

    def resolve(self, wait_s: float = 0.0) -> bool:
        """Find the runner process (for a foreign one, the grandchild of the unshare process)."""
        if self.runner_pid is not None:
            return True
        deadline = time.time() + wait_s
        while True:
            if not self.foreign:
                self.runner_pid = self.inner_pid = self.proc.pid
                self.host_key = HOST_KEY
                self.created = _created(self.runner_pid)
                return True
            try:
                init = psutil.Process(self.proc.pid).children()
                kids = [k for i in init for k in i.children()]
                if kids:
                    pid = kids[0].pid
                    status = Path(f"/proc/{pid}/status").read_text()
                    nspid = next(line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:"))
                    self.runner_pid, self.inner_pid = pid, int(nspid[-1])
                    self.host_key = f"{BOOT_ID}:{os.stat(f'/proc/{pid}/ns/pid').st_ino}"
                    self.created = _created(pid)
                    return True
            except (OSError, StopIteration, ValueError, psutil.Error):
                pass
            if time.time() >= deadline:
                return False
            time.sleep(0.01)

    def alive(self) -> bool:
        return self.rc is None


class Campaign:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.rng = random.Random(args.seed)
        self.db = work / "torc.db"
        self.runners: list[RunnerProc] = []
        self.faults: list[dict] = []
        self.anomalies: list[str] = []
        self.counts: dict[str, int] = {}
        self.counts_at = 0.0
        self.stall: dict | None = None
        self.own_exits: list[RunnerProc] = []
        self.last_seen: dict[tuple[str, str, str], float] = {}  # (job, attempt, runner token): last seen alive
        self._stop = threading.Event()
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("SLURM_", "TORC_", "CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES"))}
        self.env["PYTHONUNBUFFERED"] = "1"

    # -- set-up ------------------------------------------------------------------------------
    def create(self) -> None:
        a = self.args
        spec, self.deps = build_spec(self.rng, a.jobs, a.lease, a.max_attempts, a.min_seconds, a.max_seconds)
        self.n_jobs = len(spec["jobs"])
        (self.work / "locks").mkdir()
        (self.work / "job.sh").write_text(JOB_SH)
        (self.work / "spec.json").write_text(json.dumps(spec))
        out = subprocess.run([PYTHON, "-m", "torc_slurm", "--db", str(self.db), "workflows", "create", "spec.json"],
                             cwd=self.work, env=self.env, capture_output=True, text=True)
        found = re.search(r"Created workflow (\d+)", out.stdout + out.stderr)
        if out.returncode != 0 or not found:
            raise SystemExit(f"could not create the workflow: {out.stdout}\n{out.stderr}")
        self.wf = int(found.group(1))
        self.lock_inode = os.stat(str(self.db) + ".lock").st_ino if Path(str(self.db) + ".lock").exists() else None

    def start_runner(self, slot: int, reason: str, skew_s: float = 0.0) -> RunnerProc:
        index = len(self.runners)
        log = self.work / f"runner{index:02d}.log"
        tail = ["--db", str(self.db), "-v", "run", str(self.wf), "--num-cpus", str(self.args.cpus),
                "--monitor-interval", "0"]
        argv = ([PYTHON, "-c", SKEWED.format(offset=skew_s), *tail] if skew_s
                else [PYTHON, "-m", "torc_slurm", *tail])
        foreign = slot >= self.args.runners - self.args.foreign
        if foreign:
            argv = ["unshare", "--pid", "--fork", "--mount-proc", PYTHON, "-c", INIT, *argv]
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, cwd=self.work, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        runner = RunnerProc(slot, index, skew_s, reason, time.time(), proc, log, foreign=foreign)
        runner.resolve()
        self.runners.append(runner)
        return runner

    # -- background: a /proc sampler and a status poller -------------------------------------
    def sample_jobs(self) -> None:
        """Last time each job process (name, pid) was seen alive: the end of killed attempts."""
        needle = b"job.sh\0"
        while not self._stop.is_set():
            now = time.time()
            try:
                entries = os.listdir("/proc")
            except OSError:
                entries = []
            for entry in entries:
                if not entry.isdigit():
                    continue
                try:
                    with open(f"/proc/{entry}/cmdline", "rb") as handle:
                        cmdline = handle.read()
                except OSError:
                    continue
                if needle in cmdline:
                    parts = cmdline.split(b"\0")
                    try:
                        name = parts[parts.index(b"job.sh") + 1].decode()
                        with open(f"/proc/{entry}/environ", "rb") as handle:
                            environ = dict(item.split(b"=", 1) for item in handle.read().split(b"\0") if b"=" in item)
                    except (ValueError, IndexError, OSError):
                        continue
                    if has_exited(int(entry)):
                        continue
                    key = (name, environ.get(b"TORC_ATTEMPT", b"?").decode(),
                           environ.get(b"TORC_RUNNER_TOKEN", b"?").decode())
                    self.last_seen[key] = now
            self._stop.wait(0.1)

    def poll_status(self) -> None:
        from torc_slurm.store.db import Database
        from torc_slurm.store.workflows import status_counts

        db = None
        while not self._stop.is_set():
            try:
                db = db or Database(self.db, create=False)
                self.counts = status_counts(db, self.wf)
                self.counts_at = time.time()
            except Exception as exc:  # noqa: BLE001 - a status read failing is a figure, not a crash
                self.anomalies.append(f"{time.time() - self.t0:.1f}s status read failed: {exc}")
                db = None
            self._stop.wait(2.0)
        if db is not None:
            db.close()

    def unfinished(self) -> int | None:
        from torc_slurm.states import UNFINISHED

        if not self.counts:
            return None
        return sum(self.counts.get(s, 0) for s in UNFINISHED)

    # -- faults --------------------------------------------------------------------------------
    def live(self, *, movable: bool = True) -> list[RunnerProc]:
        return [r for r in self.runners if r.alive() and r.ended_by is None
                and (not movable or r.stopped_until is None)]

    def holds_lock(self, pid: int) -> bool:
        if self.lock_inode is None:
            return False
        try:
            text = Path("/proc/locks").read_text()
        except OSError:
            return False
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 6 and parts[1] == "FLOCK" and parts[4] == str(pid) \
                    and parts[5].endswith(f":{self.lock_inode}"):
                return True
        return False

    def inject(self, kind: str) -> dict | None:
        now = time.time()
        lease = self.args.lease
        record: dict = {"kind": kind, "at": now, "t": round(now - self.t0, 3)}
        if kind == "kill":
            pool = self.live()
            if not pool:
                return None
            victim = self.rng.choice(pool)
            held = self.holds_lock(victim.pid)
            os.kill(victim.pid, signal.SIGKILL)
            victim.ended_by = "kill"
            victim.proc.wait()
            self._ended(victim)
            new = self.start_runner(victim.slot, f"replaces #{victim.index} (kill -9)")
            record.update(runner=victim.index, pid=victim.pid, skew_s=victim.skew_s, foreign=victim.foreign,
                          held_lock=held, replacement=new.index)
        elif kind == "stall":
            if self.stall is not None:
                return None
            seconds = round(self.rng.uniform(0.5, 1.5) * lease, 2)
            holder = subprocess.Popen([PYTHON, "-c", HOLDER, f"{self.db}.lock", str(seconds)], stdout=subprocess.PIPE,
                                      text=True, env=self.env)
            self.stall = record
            record.update(seconds=seconds, holder=holder)
        elif kind == "stop":
            pool = self.live()
            stopped = [r for r in self.runners if r.alive() and r.stopped_until is not None]
            if not pool or len(stopped) >= max(1, self.args.runners // 2):
                return None
            victim = self.rng.choice(pool)
            seconds = round(self.rng.uniform(0.3, 2.5) * lease, 2)
            os.kill(victim.pid, signal.SIGSTOP)
            victim.stopped_until = now + seconds
            record.update(runner=victim.index, pid=victim.pid, seconds=seconds, skew_s=victim.skew_s,
                          foreign=victim.foreign, held_lock=self.holds_lock(victim.pid))
        elif kind == "freeze":
            pool = self.live()
            stopped = [r for r in self.runners if r.alive() and r.stopped_until is not None]
            if not pool or len(stopped) >= max(1, self.args.runners // 2):
                return None
            victim = self.rng.choice(pool)
            seconds = round(self.rng.uniform(0.3, 2.5) * lease, 2)
            frozen = []
            try:
                os.kill(victim.pid, signal.SIGSTOP)  # the runner first: it starts nothing more
                frozen.append(victim.pid)
                for child in psutil.Process(victim.pid).children(recursive=True):
                    try:
                        child.send_signal(signal.SIGSTOP)
                        frozen.append(child.pid)
                    except psutil.Error:
                        pass
            except (OSError, psutil.Error):
                pass
            victim.stopped_until = now + seconds
            victim.frozen_pids = frozen
            record.update(runner=victim.index, pid=victim.pid, seconds=seconds, skew_s=victim.skew_s,
                          foreign=victim.foreign, frozen_processes=len(frozen), held_lock=self.holds_lock(victim.pid))
        elif kind == "clock":
            pool = self.live()
            if not pool:
                return None
            victim = self.rng.choice(pool)
            offset = self.rng.choice([-1, 1]) * round(self.rng.uniform(30, 300))
            os.kill(victim.pid, signal.SIGTERM)
            victim.ended_by = "term"
            new = self.start_runner(victim.slot, f"replaces #{victim.index} (SIGTERM), clock {offset:+d} s", offset)
            record.update(runner=victim.index, pid=victim.pid, foreign=victim.foreign, replacement=new.index,
                          offset_s=offset)
        self.faults.append(record)
        return record

    def tick(self) -> None:
        """Reap runners, resume stopped ones, follow the stall holder."""
        now = time.time()
        for r in self.runners:
            if r.runner_pid is None and r.alive():
                r.resolve()
            if r.stopped_until is not None and now >= r.stopped_until and r.alive():
                self._resume(r)
                for f in self.faults:
                    if f["kind"] in ("stop", "freeze") and f.get("pid") == r.pid and "resumed" not in f:
                        f["resumed"] = now
            if r.alive() and r.proc.poll() is not None:
                self._ended(r)
                if r.ended_by is None:
                    self.own_exits.append(r)
        for r in list(self.own_exits):  # judged on the first status read after the exit
            if self.counts_at <= r.ended:
                continue
            self.own_exits.remove(r)
            unfinished = self.unfinished()
            if unfinished:
                text = r.log.read_text(errors="replace").strip().splitlines()
                self.anomalies.append(
                    f"{r.ended - self.t0:.1f}s runner #{r.index} (pid {r.pid}) exited rc={r.rc} on its own"
                    f" while the queue showed {unfinished} unfinished jobs: {text[-1] if text else ''}")
                if len(self.live(movable=False)) < self.args.runners:
                    self.start_runner(r.slot, f"replaces #{r.index} (exited rc={r.rc})")
        if self.stall is not None:
            holder = self.stall["holder"]
            if holder.poll() is not None:
                lines = dict(line.split() for line in holder.stdout.read().splitlines() if line.strip())
                self.stall["acquired"] = float(lines.get("acquired", "nan"))
                self.stall["released"] = float(lines.get("released", "nan"))
                del self.stall["holder"]
                self.stall = None

    @staticmethod
    def _resume(r: RunnerProc) -> None:
        for pid in r.frozen_pids or [r.pid]:  # a frozen node thaws all at once
            try:
                os.kill(pid, signal.SIGCONT)
            except OSError:
                pass
        r.stopped_until, r.frozen_pids = None, []

    def _ended(self, r: RunnerProc) -> None:
        r.rc = r.proc.returncode
        r.ended = time.time()

    # -- the run ---------------------------------------------------------------------------------
    def run(self) -> None:
        a = self.args
        self.t0 = time.time()
        for slot in range(a.runners):
            self.start_runner(slot, "initial", -90.0 if slot < a.skewed_at_start else 0.0)
        threads = [threading.Thread(target=self.sample_jobs, daemon=True),
                   threading.Thread(target=self.poll_status, daemon=True)]
        for t in threads:
            t.start()
        kinds = [k for k in a.faults.split(",") if k]
        next_fault = self.t0 + self.rng.uniform(*a.gap)
        last_print = 0.0
        self.finished_at = None
        try:
            while True:
                now = time.time()
                self.tick()
                unfinished = self.unfinished()
                if unfinished == 0 and self.finished_at is None:
                    self.finished_at = now
                if self.finished_at is None and now - self.t0 > a.time_limit:
                    self.anomalies.append(f"time limit {a.time_limit:.0f} s reached with {unfinished} jobs unfinished")
                    break
                if self.finished_at is None and kinds and now >= next_fault:
                    kind = self.rng.choice(kinds)
                    got = self.inject(kind)
                    if got is not None:
                        extra = {k: v for k, v in got.items() if k not in ("kind", "at", "t", "holder")}
                        print(f"  {got['t']:7.1f}s  {kind:5s} {extra}", flush=True)
                    next_fault = now + self.rng.uniform(*a.gap)
                if self.finished_at is not None:
                    if self.stall is None and not any(r.stopped_until for r in self.runners if r.alive()):
                        if not any(r.alive() for r in self.runners):
                            break
                    if now - self.finished_at > a.exit_wait:
                        hung = [r for r in self.runners if r.alive()]
                        self.anomalies.append(f"{len(hung)} runner(s) still alive {a.exit_wait:.0f} s after the "
                                              f"workflow completed: {[r.index for r in hung]}")
                        break
                if now - last_print >= 10:
                    last_print = now
                    c = self.counts
                    print(f"  {now - self.t0:7.1f}s  queue: {c.get('completed', 0)} completed, "
                          f"{c.get('running', 0) + c.get('pending', 0)} running, {c.get('ready', 0)} ready, "
                          f"{c.get('blocked', 0)} blocked; {len(self.live(movable=False))} runners; "
                          f"load {os.getloadavg()[0]:.1f}", flush=True)
                time.sleep(0.05)
        finally:
            self.cleanup()
            self._stop.set()
            for t in threads:
                t.join(timeout=10)
        self.t_end = time.time()

    def cleanup(self) -> None:
        for r in self.runners:
            if r.alive():
                if r.stopped_until is not None:
                    self._resume(r)
        deadline = time.time() + 10
        while self.stall is not None and time.time() < deadline:
            self.tick()
            time.sleep(0.1)
        for r in self.runners:
            if r.alive():
                try:
                    r.proc.wait(timeout=max(0.1, deadline - time.time()))
                except subprocess.TimeoutExpired:
                    os.kill(r.pid, signal.SIGKILL)
                    r.ended_by = r.ended_by or "killed at cleanup"
                    r.proc.wait()
                self._ended(r)


def _created(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


# -- analysis -----------------------------------------------------------------------------------

@dataclass
class Attempt:
    name: str
    attempt: int | None
    pid: int
    token: str
    start: float
    end: float | None = None
    seen: float | None = None  # last time the sampler saw it alive

    @property
    def end_bound(self) -> float:
        """The latest time this attempt is known to have been alive."""
        return self.end if self.end is not None else max(self.start, self.seen or self.start)


def analyse(c: Campaign) -> dict:
    import sqlite3

    lines = (c.work / "events.log").read_text().splitlines() if (c.work / "events.log").exists() else []
    attempts: dict[tuple[str, str, str, int], Attempt] = {}
    doubles: list[list[str]] = []
    malformed = 0
    for line in lines:
        parts = line.split()
        if len(parts) != 6:
            malformed += 1
            continue
        name, attempt, event, at, pid, token = parts
        key = (name, attempt, token, int(pid))
        number = int(attempt) if attempt.isdigit() else None
        if event == "start":
            attempts[key] = Attempt(name, number, int(pid), token, float(at))
        elif event == "end" and key in attempts:
            attempts[key].end = float(at)
        elif event == "DOUBLE":
            doubles.append(parts)
    for att in attempts.values():
        att.seen = c.last_seen.get((att.name, str(att.attempt) if att.attempt is not None else "?", att.token))
    by_job: dict[str, list[Attempt]] = defaultdict(list)
    for att in attempts.values():
        by_job[att.name].append(att)
    for runs in by_job.values():
        runs.sort(key=lambda x: x.start)

    conn = sqlite3.connect(f"file:{c.db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    job_rows = {r["name"]: dict(r) for r in conn.execute(
        "SELECT id, name, status, attempt FROM jobs WHERE workflow_id = ?", (c.wf,))}
    name_of = {r["id"]: r["name"] for r in job_rows.values()}
    results = [dict(r) for r in conn.execute(
        "SELECT job_id, attempt, runner_id, status, late, return_code, message FROM results WHERE workflow_id = ?",
        (c.wf,))]
    runner_rows = [dict(r) for r in conn.execute(
        "SELECT id, pid, pid_started, host_key, status, token, started_at, ended_at FROM runners WHERE workflow_id = ?",
        (c.wf,))]
    conn.close()
    applied = {(name_of[r["job_id"]], r["attempt"]) for r in results if r["status"] == "completed" and not r["late"]}
    # Queue runner rows -> our runner processes, by host key (namespace inodes are reused), pid as the
    # runner saw it (pids are reused too) and process start time.
    def ours(row: dict) -> int | None:
        found = [r for r in c.runners if r.host_key == row["host_key"] and r.inner_pid == row["pid"]]
        if len(found) > 1:
            found = [r for r in found if r.created is not None and row["pid_started"] is not None
                     and abs(r.created - row["pid_started"]) < 1.0]
        return found[0].index if len(found) == 1 else None
    token_index = {row["token"]: ours(row) for row in runner_rows}
    index_token = {i: tok for tok, i in token_index.items() if i is not None}

    # -- exactly once ----------------------------------------------------------------------------
    overlapping: dict[str, list] = {}
    for name, runs in by_job.items():
        for i, first in enumerate(runs):
            for later in runs[i + 1:]:
                if later.start < first.end_bound:
                    overlapping.setdefault(name, []).append(
                        {"first": asdict(first), "later": asdict(later)})
    double_jobs = sorted({d[0] for d in doubles})
    same_attempt = sorted(name for name, runs in by_job.items()
                          if len({r.attempt for r in runs}) < len(runs))
    all_names = set(c.deps)
    ended = {name for name, runs in by_job.items() if any(r.end is not None for r in runs)}
    not_completed = sorted(n for n in all_names if job_rows.get(n, {}).get("status") != "completed")
    never_ended = sorted(all_names - ended)

    # -- reruns of finished jobs -----------------------------------------------------------------
    reruns_applied, reruns_unreported = [], []
    for name, runs in by_job.items():
        for i, first in enumerate(runs):
            if first.end is None:
                continue
            later = [r for r in runs[i + 1:] if r.start > first.end]
            if not later:
                continue
            item = {"job": name, "attempt": first.attempt, "ended": first.end, "rerun_started": later[0].start,
                    "gap_s": round(later[0].start - first.end, 3),
                    "runner": token_index.get(first.token)}
            (reruns_applied if (name, first.attempt) in applied else reruns_unreported).append(item)
            break
    # A finished-but-unreported attempt on a runner killed -9 well after the end: its outcome was
    # older than the report delay and should have reached the queue.
    kill_time = {f["runner"]: f["at"] for f in c.faults if f["kind"] == "kill"}

    def blocked(index: int | None, a: float, b: float) -> bool:
        """Was that runner stopped, or the queue stalled (an outside holder, or a runner stopped while
        it held the lock), at some time in [a, b]?"""
        for f in c.faults:
            if f["kind"] in ("stop", "freeze") and (f.get("runner") == index or f.get("held_lock")):
                lo, hi = f["at"], f.get("resumed", float("inf"))
            elif f["kind"] == "stall":
                lo, hi = f.get("acquired") or f["at"], f.get("released") or float("inf")
            else:
                continue
            if lo <= b and hi >= a:
                return True
        return False

    for item in reruns_unreported:
        index = item["runner"]
        item["runner_killed_after_s"] = (round(kill_time[index] - item["ended"], 3) if index in kill_time else None)
        item["runner_blocked_meanwhile"] = (blocked(index, item["ended"], kill_time[index])
                                            if index in kill_time else None)

    # What the queue recorded for the finished attempt that was run again.
    result_of = {(name_of[r["job_id"]], r["attempt"]): r for r in results}
    for item in reruns_unreported:
        r = result_of.get((item["job"], item["attempt"]))
        item["recorded"] = ("no result (the runner died before reporting)" if r is None else
                            f"{'late ' if r['late'] else ''}{r['status']}, exit code {r['return_code']}")
    rerun_kinds = Counter(item["recorded"] for item in reruns_unreported)
    discarded = [r for r in results if r["status"] == "lost" and r["return_code"] == 0 and not r["late"]]

    # -- dependency order ------------------------------------------------------------------------
    first_end = {name: min(r.end for r in runs if r.end is not None)
                 for name, runs in by_job.items() if any(r.end is not None for r in runs)}
    order_violations = []
    for name, runs in by_job.items():
        for run in runs:
            # torc runs a job once its dependencies are done, whatever their outcome
            # (cancel_on_blocking_job_failure is off): only completed dependencies are checked.
            late = [d for d in c.deps.get(name, []) if first_end.get(d, float("inf")) > run.start
                    and job_rows.get(d, {}).get("status") == "completed"]
            if late:
                order_violations.append({"job": name, "attempt": run.attempt, "started": run.start,
                                         "dependencies_not_ended": late[:5]})

    # -- time to recover -------------------------------------------------------------------------
    recoveries = []
    for f in c.faults:
        at = f.get("acquired") if f["kind"] == "stall" else f["at"]
        if at is None or at != at:  # a stall that never got the lock
            recoveries.append(f)
            continue
        token = index_token.get(f.get("runner")) if f["kind"] != "stall" else None
        if f["kind"] != "stall" and token is None:  # killed or stopped before it registered: it held no job
            f.update(affected_jobs=0, affected_killed=0, never_recovered=0, recover_max_s=None,
                     recover_median_s=None, registered=False)
            recoveries.append(f)
            continue
        affected = []
        for name, runs in by_job.items():
            for i, run in enumerate(runs):
                # In flight at the fault: started before it, and ended after it, or (no end line: it was
                # killed) last seen alive within 0.5 s of it, and no newer attempt started meanwhile.
                alive = run.end > at if run.end is not None else run.end_bound >= at - 0.5
                newer = any(r.start <= at for r in runs[i + 1:])
                if run.start <= at and alive and not newer and (token is None or run.token == token):
                    affected.append((name, run))
        per_job = []
        for name, run in affected:
            marks = [r.start for r in by_job[name] if r.start > at and r is not run]
            if run.end is not None and (name, run.attempt) in applied:
                marks.append(run.end)
            per_job.append(min(marks) - at if marks else None)
        got = [x for x in per_job if x is not None]
        f["jobs"] = [[name, run.attempt, run.end is None, None if x is None else round(x, 3)]
                     for (name, run), x in zip(affected, per_job)][:30]
        f["affected_jobs"] = len(affected)
        f["affected_killed"] = sum(1 for _, run in affected if run.end is None)
        f["never_recovered"] = sum(1 for x in per_job if x is None)
        f["recover_max_s"] = round(max(got), 3) if got else None
        f["recover_median_s"] = round(statistics.median(got), 3) if got else None
        if f["kind"] == "freeze" and f.get("resumed"):
            # How long the frozen attempts lived on after the thaw (until fenced), and whether another
            # attempt of the same job had started meanwhile.
            after = [round(run.end_bound - f["resumed"], 3) for _, run in affected if run.end_bound > f["resumed"]]
            f["frozen_attempts_alive_after_thaw_s"] = after
            f["rerun_while_frozen"] = sum(1 for name, run in affected
                                          if any(r.start > at and r.start < run.end_bound for r in by_job[name]))
            names = {name for name, _ in affected}
            f["double_while_frozen"] = sum(1 for d in doubles if d[0] in names and at <= float(d[3]) <= f["resumed"] + 1)
        if f["kind"] in ("stall", "stop", "freeze"):
            release = f.get("released") if f["kind"] == "stall" else f.get("resumed")
            if release:
                nxt = [r.start for runs in by_job.values() for r in runs if r.start > release]
                f["first_start_after_release_s"] = round(min(nxt) - release, 3) if nxt else None
        recoveries.append(f)
    # Faults that overlap: another fault began between this one's start and its recovery (or its
    # own end, if later). Their recovery times mix causes; the summary also shows isolated ones.
    def span(f: dict) -> tuple[float, float]:
        start = f.get("acquired") if f["kind"] == "stall" else f["at"]
        end = f.get("released") if f["kind"] == "stall" else f.get("resumed", f["at"])
        start = f["at"] if start is None or start != start else start
        end = start if end is None or end != end else end
        return start, max(end, start + (f.get("recover_max_s") or 0.0))
    for f in recoveries:
        a, b = span(f)
        f["overlapping_faults"] = sum(1 for g in c.faults if g is not f and span(g)[0] <= b and span(g)[1] >= a)

    # -- runner logs -------------------------------------------------------------------------------
    patterns = {"tracebacks": "Traceback", "self-fencing": "self-fencing", "guardian kills": "torc guardian:",
                "lease lapsed in a cycle": "lease lapsed while waiting", "jobs taken back": "the queue took them back",
                "queue cycle failed": "queue cycle failed", "gave up": "giving up"}
    log_counts = Counter()
    tracebacks = []
    for r in c.runners:
        text = r.log.read_text(errors="replace")
        for label, needle in patterns.items():
            log_counts[label] += text.count(needle)
        if "Traceback" in text:
            start = text.index("Traceback")
            tracebacks.append({"runner": r.index, "excerpt": text[start:start + 1500]})

    status = Counter(r["status"] for r in job_rows.values())
    res_status = Counter(r["status"] for r in results)
    late = Counter(r["status"] for r in results if r["late"])
    starts_per_job = Counter(len(runs) for runs in by_job.values())
    return {
        "jobs": len(all_names), "attempts_started": len(attempts), "events_lines": len(lines),
        "malformed_lines": malformed,
        "double_lines": len(doubles), "double_jobs": double_jobs,
        "overlapping_jobs": sorted(overlapping), "overlaps": {k: v[:3] for k, v in list(overlapping.items())[:20]},
        "attempt_number_reused": same_attempt[:50],
        "lost_not_completed_in_queue": not_completed, "lost_no_end_line": never_ended,
        "reruns_after_applied_completion": reruns_applied,
        "reruns_unreported_outcome": len(reruns_unreported),
        "reruns_unreported_by_record": dict(rerun_kinds),
        "reruns_unreported_detail": reruns_unreported,
        "queue_lost_results_with_exit_0_not_late": len(discarded),
        "dependency_order_violations": order_violations[:50], "dependency_order_violation_count": len(order_violations),
        "starts_per_job": dict(sorted(starts_per_job.items())),
        "queue_job_status": dict(status), "queue_results_by_status": dict(res_status),
        "queue_late_results_by_status": dict(late),
        "queue_failed_results": dict(Counter(f"{'late ' if r['late'] else ''}{r['message']}" for r in results
                                             if r["status"] == "failed")),
        "queue_runners_by_status": dict(Counter(r["status"] for r in runner_rows)),
        "runner_logs": dict(log_counts), "tracebacks": tracebacks,
        "faults": recoveries,
    }


def write_raw(out: Path, c: Campaign | SimpleNamespace, figures: dict, argv: list[str]) -> None:
    """The raw figures as JSON: options, machine, runners, every fault with its recovery, the checks."""
    raw = {"argv": argv, "options": {k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
                                     for k, v in vars(c.args).items()},
           "machine": machine(), "code_commit": _commit(), "date": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(c.t0)),
           "workflow_done_s": round((c.finished_at or c.t_end) - c.t0, 2),
           "finished": c.finished_at is not None,
           "runners": [{"index": r.index, "slot": r.slot, "pid": r.pid, "foreign": r.foreign, "skew_s": r.skew_s,
                        "reason": r.reason, "start_t": round(r.started - c.t0, 2),
                        "end_t": round(r.ended - c.t0, 2) if r.ended else None, "rc": r.rc,
                        "ended_by": r.ended_by} for r in c.runners],
           "anomalies": c.anomalies, **figures}
    raw["faults"] = [dict(f) for f in raw["faults"]]
    for f in raw["faults"]:
        f.pop("holder", None)
        for key in ("at", "acquired", "released", "resumed"):
            if isinstance(f.get(key), float):
                f[key + "_t"] = round(f.pop(key) - c.t0, 3)
    out.write_text(json.dumps(raw, indent=1, default=str) + "\n")


def _commit() -> str | None:
    """The commit of the torc_slurm under test, when it is a git checkout."""
    import torc_slurm

    out = subprocess.run(["git", "-C", str(Path(torc_slurm.__file__).parent), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(Path(torc_slurm.__file__).parent), "status", "--porcelain",
                            "--", "."], capture_output=True, text=True).stdout.strip()
    return (out.stdout.strip() + (" + uncommitted changes" if dirty else "")) if out.returncode == 0 else None


def save_state(c: Campaign) -> None:
    """What `analyse` needs, in the work dir, so that a kept run can be analysed again (--reanalyse)."""
    state = {"wf": c.wf, "t0": c.t0, "t_end": c.t_end, "finished_at": c.finished_at, "deps": c.deps,
             "anomalies": c.anomalies,
             "args": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(c.args).items()},
                      "argv": sys.argv[1:]},
             "faults": [{k: v for k, v in f.items() if k != "holder"} for f in c.faults],
             "runners": [{"index": r.index, "slot": r.slot, "pid": r.pid, "skew_s": r.skew_s, "reason": r.reason,
                          "started": r.started, "ended": r.ended, "rc": r.rc, "ended_by": r.ended_by,
                          "log": str(r.log), "foreign": r.foreign, "host_key": r.host_key,
                          "inner_pid": r.inner_pid, "created": r.created} for r in c.runners],
             "last_seen": [[*key, at] for key, at in c.last_seen.items()]}
    (c.work / "state.json").write_text(json.dumps(state))


def load_state(work: Path) -> SimpleNamespace:
    state = json.loads((work / "state.json").read_text())
    runners = [SimpleNamespace(**{"created": None, **r, "log": Path(r["log"])}) for r in state["runners"]]
    return SimpleNamespace(work=work, db=work / "torc.db", wf=state["wf"], t0=state["t0"], t_end=state["t_end"],
                           finished_at=state["finished_at"], deps=state["deps"], anomalies=state["anomalies"],
                           args=SimpleNamespace(**state["args"]), faults=state["faults"], runners=runners,
                           last_seen={(n, a, tok): t for n, a, tok, t in state["last_seen"]})


# -- report ------------------------------------------------------------------------------------

def summarize(c: Campaign, figures: dict) -> None:
    faults = figures["faults"]
    by_kind = Counter(f["kind"] for f in faults)
    wall = (c.finished_at or c.t_end) - c.t0
    print(f"\nfault campaign, seed {c.args.seed}: {figures['jobs']:,} jobs, {c.args.runners} runners x "
          f"{c.args.cpus} CPUs, lease {c.args.lease} s; workflow done in {wall:.1f} s"
          f" ({len(c.runners)} runner processes in all)")
    print(f"  faults injected: {len(faults)} ({', '.join(f'{k} {by_kind[k]}' for k in KINDS if by_kind[k])})")
    print(f"  attempts started: {figures['attempts_started']:,}; starts per job: {figures['starts_per_job']}")
    print(f"  jobs run twice at once: DOUBLE lines {figures['double_lines']} ({len(figures['double_jobs'])} jobs);"
          f" overlapping attempts {len(figures['overlapping_jobs'])} jobs   (target 0)")
    not_done = Counter(figures["queue_job_status"])
    not_done.pop("completed", None)
    print(f"  jobs lost: not completed in the queue {len(figures['lost_not_completed_in_queue'])} {dict(not_done)},"
          f" no end line {len(figures['lost_no_end_line'])}   (target 0)")
    frozen = [f for f in faults if f["kind"] == "freeze"]
    if frozen:
        print(f"  freezes: {sum(f.get('double_while_frozen', 0) for f in frozen)} DOUBLE lines of frozen jobs whose new"
              f" attempt started before the thaw; frozen attempts alive after the thaw for at most"
              f" {max([x for f in frozen for x in f.get('frozen_attempts_alive_after_thaw_s', [])] or [0]):.3f} s")
    print(f"  reruns of finished jobs: {len(figures['reruns_after_applied_completion'])} after the queue had"
          f" applied the completion (target 0); {figures['reruns_unreported_outcome']} whose outcome had not"
          " reached the queue (the runner died, froze or was fenced first)")
    for label, n in sorted(figures["reruns_unreported_by_record"].items(), key=lambda kv: -kv[1]):
        print(f"      {n:4d}  the finished attempt was recorded as: {label}")
    ages = [r["runner_killed_after_s"] for r in figures["reruns_unreported_detail"]
            if r.get("runner_killed_after_s") is not None and r["runner_killed_after_s"] >= 0
            and not r.get("runner_blocked_meanwhile")]
    if ages:
        print(f"      of these, {len(ages)} ended before their runner was killed -9 (with no stop or stall in"
              f" between), by at most {max(ages):.2f} s (median {statistics.median(ages):.2f} s): outcomes"
              " not yet in the queue at the kill")
    print(f"  queue results 'lost' although the attempt exited 0 and was not late (a completion discarded):"
          f" {figures['queue_lost_results_with_exit_0_not_late']}")
    print(f"  dependency order violations: {figures['dependency_order_violation_count']}   (target 0)")
    print(f"  queue: jobs {figures['queue_job_status']}; results {figures['queue_results_by_status']};"
          f" late results {figures['queue_late_results_by_status']}; runners {figures['queue_runners_by_status']}")
    if figures["queue_failed_results"]:
        print(f"  failed results (every job here exits 0 unless it logs DOUBLE): {figures['queue_failed_results']}")
    print(f"  runner logs: {figures['runner_logs']}")
    print("  time to recover (s; fault -> every job in flight on the faulted runner(s) running again or done):")
    for kind in KINDS:
        rows = [f for f in faults if f["kind"] == kind]
        vals = [f["recover_max_s"] for f in rows if f.get("recover_max_s") is not None]
        alone = [f["recover_max_s"] for f in rows if f.get("recover_max_s") is not None
                 and not f.get("overlapping_faults")]
        never = sum(f.get("never_recovered", 0) for f in rows)
        if not rows:
            continue
        parts = [f"isolated faults only {_stats(alone)}"]
        if kind in ("stall", "stop", "freeze"):
            longer = [f["recover_max_s"] for f in rows if f.get("recover_max_s") is not None
                      and f["seconds"] > c.args.lease]
            shorter = [f["recover_max_s"] for f in rows if f.get("recover_max_s") is not None
                       and f["seconds"] <= c.args.lease]
            parts += [f"shorter than the lease {_stats(shorter)}", f"longer {_stats(longer)}"]
        if kind != "stall":
            here = [f["recover_max_s"] for f in rows if f.get("recover_max_s") is not None and not f.get("foreign")]
            away = [f["recover_max_s"] for f in rows if f.get("recover_max_s") is not None and f.get("foreign")]
            parts += [f"runner on this host {_stats(here)}", f"foreign runner {_stats(away)}"]
        print(f"    {kind:6s} {len(rows):3d} faults, {sum(f.get('affected_jobs', 0) for f in rows):4d} jobs in flight"
              f" ({sum(f.get('affected_killed', 0) for f in rows)} killed), never recovered {never}: {_stats(vals)}")
        print("           " + "; ".join(parts))
    if c.anomalies:
        print("  anomalies:")
        for a in c.anomalies:
            print(f"    {a}")
    for tb in figures["tracebacks"][:3]:
        print(f"  traceback in runner #{tb['runner']}:\n{tb['excerpt']}")


def _stats(vals: list[float]) -> str:
    if not vals:
        return "n/a"
    vals = sorted(vals)
    return f"median {statistics.median(vals):.2f}, max {vals[-1]:.2f} (n={len(vals)})"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--jobs", type=int, default=2000)
    p.add_argument("--min-seconds", type=float, default=0.05)
    p.add_argument("--max-seconds", type=float, default=0.5)
    p.add_argument("--runners", type=int, default=6)
    p.add_argument("--cpus", type=int, default=2, help="--num-cpus of each runner")
    p.add_argument("--lease", type=int, default=6, help="heartbeat_timeout_seconds (>= 2)")
    p.add_argument("--max-attempts", type=int, default=100)
    p.add_argument("--faults", default="kill,kill,stop,stop,stall,clock",
                   help="comma-separated kinds drawn uniformly (repeat one to weight it): kill, stall, stop, clock")
    p.add_argument("--gap", type=float, nargs=2, default=(2.0, 7.0), metavar=("MIN", "MAX"),
                   help="seconds between faults, uniform")
    p.add_argument("--foreign", type=int, default=2,
                   help="runner slots (the last ones) in their own pid namespace (unshare, needs root): to the "
                        "others they are on another host, so only lease expiry and self-fencing apply")
    p.add_argument("--skewed-at-start", type=int, default=1, help="initial runners with time.time 90 s behind")
    p.add_argument("--time-limit", type=float, default=540.0, help="give up on the workflow after this long")
    p.add_argument("--exit-wait", type=float, default=60.0, help="runners must exit this soon after completion")
    p.add_argument("--json", type=Path, help="raw figures (default: benchmarks/faults_seed<SEED>.json)")
    p.add_argument("--keep", type=Path, help="work in this (new) folder and keep it")
    p.add_argument("--tmpdir", help="parent of the temp work folder")
    p.add_argument("--reanalyse", type=Path, metavar="DIR", help="analyse a kept run again (its state.json)")
    args = p.parse_args()
    if args.reanalyse:
        c = load_state(args.reanalyse.resolve())
        figures = analyse(c)
        summarize(c, figures)
        if args.json:
            write_raw(args.json, c, figures, c.args.argv if hasattr(c.args, "argv") else [])
            print(f"  raw figures: {args.json}")
        return 0
    if args.lease < 2:
        p.error("--lease must be at least 2")
    if args.keep:
        if args.keep.exists():
            p.error(f"--keep {args.keep}: it exists; give a new folder")
        args.keep.mkdir(parents=True)
        work_ctx = None
        work = args.keep.resolve()
    else:
        work_ctx = tempfile.TemporaryDirectory(prefix="torc-faults-", dir=args.tmpdir)
        work = Path(work_ctx.name)
    print(f"faults: {machine()}", flush=True)
    print(f"  work dir {work}; argv {' '.join(sys.argv[1:]) or '(defaults)'}", flush=True)
    try:
        c = Campaign(args, work)
        c.create()
        c.run()
        save_state(c)
        figures = analyse(c)
        summarize(c, figures)
        out = args.json or HERE / f"faults_seed{args.seed}.json"
        write_raw(out, c, figures, sys.argv[1:])
        print(f"  raw figures: {out}")
        bad = (figures["double_lines"] or figures["overlapping_jobs"] or figures["lost_not_completed_in_queue"]
               or figures["reruns_after_applied_completion"] or figures["dependency_order_violation_count"])
        return 1 if bad else 0
    finally:
        if work_ctx is not None:
            work_ctx.cleanup()


if __name__ == "__main__":
    sys.exit(main())
