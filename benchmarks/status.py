"""Time the login-node views on a 1,000,000-job workflow, half done, with results rows.

    python benchmarks/status.py                  # build (once, cached in --dir), time, write status.json
    python benchmarks/status.py --jobs 200000    # a smaller queue
    python benchmarks/status.py --no-trigger-costs   # skip the (slow) init / cycle trigger measurements

The queue is made through the normal schema (``Database``), then filled with direct SQL inserts
(seconds, not the minutes compiling a million-job spec takes): 480,000 completed and 15,000 failed
jobs with a results row each, 5,000 canceled by a failed upstream, 64 running and 16 pending on
8 live runners in 8 RUNNING allocations, 200,000 ready and the rest blocked; 1,000 of the jobs ask
for more walltime than any scheduler gives.

Timed, each as a real subprocess (``python -m torc_slurm``: what a user waits for, interpreter start
included) and in-process through click's CliRunner (the command alone), with the queue lock's
hold times counted by ``QueueLock`` (``longest_hold``: the most the command held the lock at once):

- ``torc workflows status 1``;
- ``torc jobs list 1 --status failed --limit 50``;
- ``torc reports summary 1`` (when the command exists);
- one ``--watch`` refresh (``workflow_status`` + rendering the Live frame).

Targets: <= 0.5 s each, lock held <= 50 ms per command. Then what the status_counts trigger of
schema 6 costs the writers: ``initialize_workflow`` on 1M jobs and a runner's claim/outcome cycle,
with the trigger and with it dropped.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sqlite3
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, run_timed, torc_env

from torc_slurm.store.db import Database
from torc_slurm.store.lock import QueueLock

SPEC = {"name": "status_bench", "jobs": [], "slurm_schedulers": [
    {"name": "cpu", "walltime": "04:00:00", "mem": "64g", "nodes": 1},
    {"name": "gpu", "walltime": "12:00:00", "mem": "256g", "gres": "gpu:4", "nodes": 1}]}
SHAPES = [  # (num_cpus, num_gpus, memory_bytes, runtime_s, resource_requirements)
    (1, 0, 2 << 30, 1800, "small"), (4, 0, 16 << 30, 3600, "medium"), (8, 1, 64 << 30, 7200, "gpu")]
TOO_LONG = (2, 0, 4 << 30, 48 * 3600, "too_long")   # no scheduler gives 48 h


def build(path: Path, n: int) -> None:
    """A fresh queue at schema N (Database), then one transaction of plain inserts."""
    for suffix in ("", ".lock", ".lockkind", ".changed", "-journal"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    t0 = time.perf_counter()
    db = Database(path)
    done_ok, done_failed, canceled, running, pending, ready = (
        int(n * 0.48), int(n * 0.015), int(n * 0.005), 64, 16, int(n * 0.2))
    now = time.time()
    start = now - 3600
    with db.transaction() as conn:
        conn.execute("INSERT INTO workflows (id, name, user, spec_json, working_dir, status, run_id, created_at)"
                     " VALUES (1, 'status_bench', 'bench', ?, ?, 'initialized', 1, ?)",
                     (json.dumps(SPEC), str(path.parent), start - 60))
        conn.execute("INSERT INTO events (workflow_id, at, kind, message) VALUES (1, ?, 'initialized', 'bench')",
                     (start - 30,))
        runners = []
        for r in range(1, 9):
            runners.append(r)
            conn.execute("INSERT INTO runners (id, workflow_id, hostname, pid, slurm_job_id, scheduler, resources,"
                         " status, started_at, heartbeat_at) VALUES (?,1,?,?,?,'cpu',?,'active',?,?)",
                         (r, f"node{r:03d}", 1000 + r, str(5000 + r),
                          json.dumps({"cpus": 32, "gpus": [], "memory_bytes": 128 << 30, "end_time": now + 7200,
                                      "output_dir": str(path.parent / "torc_output")}), start, now - 2))
            conn.execute("INSERT INTO allocations (workflow_id, slurm_job_id, scheduler, num_nodes, state,"
                         " submitted_at, updated_at) VALUES (1, ?, 'cpu', 1, 'RUNNING', ?, ?)",
                         (str(5000 + r), start - 10, now))

        def status_of(i: int) -> str:
            for limit, status in ((done_ok, "completed"), (done_ok + done_failed, "failed"),
                                  (done_ok + done_failed + canceled, "canceled"),
                                  (done_ok + done_failed + canceled + running, "running"),
                                  (done_ok + done_failed + canceled + running + pending, "pending"),
                                  (done_ok + done_failed + canceled + running + pending + ready, "ready")):
                if i < limit:
                    return status
            return "blocked"

        def shape(i: int) -> tuple:
            return TOO_LONG if i % 1000 == 999 and status_of(i) in ("ready", "blocked") else SHAPES[i % 3]

        def job_rows():
            for i in range(n):
                status = status_of(i)
                cpus, gpus, mem, runtime, rr = shape(i)
                held = status in ("running", "pending")
                attempt = 0 if status in ("ready", "blocked") else 1
                yield (i + 1, f"job_{i:07d}", f"work {i}", status, i, cpus, gpus, 1, mem, runtime, rr,
                       None if rr != "gpu" else "gpu", attempt, (i % 8) + 1 if held else None,
                       (0 if status == "completed" else 3 if status == "failed" else None),
                       "upstream job job_0480000 failed" if status == "canceled" else
                       "exit code 3" if status == "failed" else None)
        conn.executemany(
            "INSERT INTO jobs (id, workflow_id, name, command, status, rank, priority, num_cpus, num_gpus, num_nodes,"
            " memory_bytes, runtime_s, resource_requirements, scheduler, cancel_on_blocking_job_failure,"
            " supports_termination, attempt, runner_id, return_code, reason)"
            " VALUES (?,1,?,?,?,?,0,?,?,?,?,?,?,?,1,0,?,?,?,?)", job_rows())

        def result_rows():
            for i in range(done_ok + done_failed):
                ok = i < done_ok
                began = start + i * 3600 / (done_ok + done_failed)
                exec_s = 20.0 + (i % 40)
                yield (1, i + 1, 1, (i % 8) + 1, "completed" if ok else "failed", 0 if ok else 3, began,
                       began + exec_s, exec_s, 1 << 28, exec_s * 0.9, None if ok else "exit code 3", 1)
        conn.executemany(
            "INSERT INTO results (workflow_id, job_id, attempt, runner_id, status, return_code, started_at,"
            " ended_at, exec_s, peak_memory_bytes, cpu_time_s, reason, run_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            result_rows())
        conn.execute("UPDATE sequences SET next = ? WHERE name = 'jobs'", (n + 1,))
        conn.execute("UPDATE sequences SET next = 2 WHERE name = 'workflows'")
        conn.execute("UPDATE sequences SET next = 9 WHERE name = 'runners'")
        from torc_slurm.store.workflows import refresh_status_counts

        refresh_status_counts(conn, 1)   # what add_workflow's bulk fill does, here after direct inserts
    db.close()
    print(f"built {n:,} jobs in {time.perf_counter() - t0:.1f} s; {path.stat().st_size / 2**20:.0f} MiB", flush=True)


# -- timing -----------------------------------------------------------------------------------------
_holds: list[float] = []
_original_held = QueueLock.held


def _counting_held(self):
    """QueueLock.held, recording each hold (the lock's own ``longest_hold`` is per Database)."""
    from contextlib import contextmanager

    @contextmanager
    def held():
        with _original_held(self):
            t = time.perf_counter()
            try:
                yield
            finally:
                _holds.append(time.perf_counter() - t)
    return held()


def in_process(db_path: Path, args: list[str], repeat: int) -> dict:
    """Best and median wall time of the command run through CliRunner, and its lock holds."""
    from click.testing import CliRunner

    from torc_slurm.cli import torc

    QueueLock.held = _counting_held  # type: ignore[method-assign]
    times, holds, code = [], [], None
    try:
        for _ in range(repeat):
            _holds.clear()
            t0 = time.perf_counter()
            result = CliRunner().invoke(torc, ["--db", str(db_path), *args], catch_exceptions=False,
                                        env={"COLUMNS": "80"})
            times.append(time.perf_counter() - t0)
            holds.append(list(_holds))
            code = result.exit_code
    finally:
        QueueLock.held = _original_held  # type: ignore[method-assign]
    longest = [max(h, default=0.0) for h in holds]
    return {"best_s": min(times), "median_s": statistics.median(times), "exit_code": code,
            "lock_acquisitions": len(holds[-1]), "lock_longest_hold_ms_best": min(longest) * 1000,
            "lock_longest_hold_ms_median": statistics.median(longest) * 1000,
            "lock_total_hold_ms_median": statistics.median(sum(h) for h in holds) * 1000,
            "output_head": result.output.splitlines()[:3]}


def subprocess_time(db_path: Path, args: list[str], repeat: int) -> dict:
    runs = [run_timed([sys.executable, "-m", "torc_slurm", "--db", str(db_path), *args],
                      env=torc_env(COLUMNS="80")) for _ in range(repeat)]
    return {"best_s": min(r.seconds for r in runs), "median_s": statistics.median(r.seconds for r in runs),
            "exit_code": runs[-1].returncode, "stderr": runs[-1].stderr.strip()[-300:]}


def watch_refresh(db_path: Path, repeat: int) -> dict:
    """One refresh of --watch: the locked read and the Live frame rendered (to a buffer)."""
    from rich.console import Console

    from torc_slurm.cli.status_view import watch_view
    from torc_slurm.reports.status import workflow_status

    console = Console(file=io.StringIO(), width=80, force_terminal=True)
    times, holds = [], []
    with Database(db_path, create=False) as db:
        for _ in range(repeat):
            before = db.lock.longest_hold
            db.lock.longest_hold = 0.0
            t0 = time.perf_counter()
            report = workflow_status(db, 1)
            console.print(watch_view(report, 80, 5.0))
            times.append(time.perf_counter() - t0)
            holds.append(db.lock.longest_hold)
            db.lock.longest_hold = max(before, db.lock.longest_hold)
    return {"best_s": min(times), "median_s": statistics.median(times),
            "lock_longest_hold_ms_best": min(holds) * 1000, "lock_longest_hold_ms_median": statistics.median(holds) * 1000,
            "lock_acquisitions": 1}


def has_summary() -> bool:
    from torc_slurm.cli import torc

    return "summary" in getattr(torc.commands.get("reports"), "commands", {})


# -- what the trigger costs writers ---------------------------------------------------------------
def trigger_costs(db_path: Path, n: int, cycles: int, rounds: int = 2) -> dict:
    """What the status_counts trigger costs writers, on a copy of the queue, in alternating rounds
    with the trigger and with it dropped (the machine is shared: the order must not decide):

    - ``initialize_workflow`` on all n jobs (it rewrites them under ``bulk_status_change``);
    - a rewrite of every job's status (ready <-> blocked) as one raw UPDATE, rolled back: with the
      per-row trigger, and under ``bulk_status_change`` (one recount);
    - runner cycle pairs (claim 32; start and complete them);
    - single-row status changes (ready -> pending -> ready), microseconds each."""
    from torc_slurm.store.queue import Outcome, Queue, Started
    from torc_slurm.store.views import bulk_status_change
    from torc_slurm.store.workflows import initialize_workflow

    work = db_path.with_name("trigger_" + db_path.name)
    shutil.copyfile(db_path, work)
    Path(str(work) + ".lockkind").write_text("flock")
    conn = sqlite3.connect(work)
    trigger_sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'jobs_status_counts'").fetchone()[0]
    conn.close()
    rewrite = ("UPDATE jobs SET status = CASE WHEN status = 'ready' THEN 'blocked' ELSE 'ready' END"
               " WHERE workflow_id = 1")   # every job changes status (after init: ready <-> blocked)
    raw: dict = {}
    for label in ("with_trigger", "without_trigger") * rounds:
        conn = sqlite3.connect(work)
        conn.execute("DROP TRIGGER IF EXISTS jobs_status_counts")
        if label == "with_trigger":
            conn.execute(trigger_sql)
        conn.commit()
        conn.close()
        entry = raw.setdefault(label, {"init_s": [], "rewrite_per_row_s": [], "rewrite_bulk_s": [],
                                       "cycle_pair_ms": [], "status_change_us": []})
        with Database(work, create=False) as db:
            with db.transaction() as conn:   # back to a mid-run state: runners gone, nothing held
                conn.execute("UPDATE jobs SET status = 'ready', runner_id = NULL WHERE status IN ('pending', 'running')")
                conn.execute("UPDATE runners SET status = 'finished'")
            t0 = time.perf_counter()
            initialize_workflow(db, 1, force=True)
            entry["init_s"].append(time.perf_counter() - t0)
            for key, bulk in (("rewrite_per_row_s", False), ("rewrite_bulk_s", True)):
                conn = db._connection()   # a raw transaction, rolled back: the rewrite alone
                with db.lock.held():
                    conn.execute("BEGIN IMMEDIATE")
                    t0 = time.perf_counter()
                    if bulk:
                        with bulk_status_change(conn, 1):
                            conn.execute(rewrite)
                    else:
                        conn.execute(rewrite)
                    entry[key].append(time.perf_counter() - t0)
                    conn.execute("ROLLBACK")
            queue = Queue(db, 1)
            runner = queue.register_runner(hostname="bench", pid=os.getpid())
            for _ in range(cycles):
                t0 = time.perf_counter()
                claimed = queue.cycle(runner, choose=lambda ready: [j.job_id for j in ready[:32]]).claimed
                now = time.time()
                queue.cycle(runner, started=[Started(c.id, c.lease_token, None) for c in claimed],
                            outcomes=[Outcome(c.id, c.attempt, "completed", c.lease_token, return_code=0,
                                              started_at=now - 1, ended_at=now) for c in claimed])
                entry["cycle_pair_ms"].append((time.perf_counter() - t0) * 1000)
            queue.finish_runner(runner)
            for _ in range(3):
                with db.transaction() as conn:
                    ids = [(r[0],) for r in conn.execute(
                        "SELECT id FROM jobs WHERE workflow_id = 1 AND status = 'ready' ORDER BY rank LIMIT 20000")]
                    t0 = time.perf_counter()
                    conn.executemany("UPDATE jobs SET status = 'pending' WHERE id = ?", ids)
                    conn.executemany("UPDATE jobs SET status = 'ready' WHERE id = ?", ids)
                    entry["status_change_us"].append((time.perf_counter() - t0) / (2 * len(ids)) * 1e6)
    conn = sqlite3.connect(work)
    conn.execute("DROP TRIGGER IF EXISTS jobs_status_counts")
    conn.execute(trigger_sql)
    conn.commit()
    conn.close()
    for suffix in ("", ".lock", ".lockkind", ".changed", "-journal"):
        Path(str(work) + suffix).unlink(missing_ok=True)
    return {label: {**{f"{k}_best": min(v) for k, v in e.items()}, **{f"{k}_median": statistics.median(v)
                                                                      for k, v in e.items()},
                    "jobs_per_cycle_pair": 32, "rounds": rounds}
            for label, e in raw.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/torc_status_bench"))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--no-trigger-costs", action="store_true")
    parser.add_argument("--cycles", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("status.json"))
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    db_path = args.dir / f"status_{args.jobs}.db"
    if args.rebuild or not db_path.exists():
        build(db_path, args.jobs)
    commands = {"workflows status": ["workflows", "status", "1"],
                "jobs list --status failed --limit 50": ["jobs", "list", "1", "--status", "failed", "--limit", "50"]}
    if has_summary():
        commands["reports summary"] = ["reports", "summary", "1"]
    figures: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(), "nproc": os.cpu_count(),
                     "uname_r": os.uname().release, "jobs": args.jobs, "repeat": args.repeat,
                     "reports_summary": "timed" if has_summary() else "not present when run", "commands": {}}
    for label, argv in commands.items():
        entry = {"in_process": in_process(db_path, argv, args.repeat),
                 "subprocess": subprocess_time(db_path, argv, args.repeat)}
        figures["commands"][label] = entry
        ip, sp = entry["in_process"], entry["subprocess"]
        print(f"{label:40s} in-process {ip['median_s'] * 1000:7.1f} ms (lock held at most "
              f"{ip['lock_longest_hold_ms_median']:.1f} ms, {ip['lock_acquisitions']} takes); subprocess "
              f"{sp['median_s'] * 1000:7.1f} ms; exit {sp['exit_code']}", flush=True)
    figures["commands"]["one --watch refresh"] = {"in_process": watch_refresh(db_path, args.repeat)}
    w = figures["commands"]["one --watch refresh"]["in_process"]
    print(f"{'one --watch refresh':40s} in-process {w['median_s'] * 1000:7.1f} ms (lock held "
          f"{w['lock_longest_hold_ms_median']:.1f} ms)", flush=True)
    baselines = [run_timed([sys.executable, "-m", "torc_slurm", "--version"], env=torc_env()).seconds
                 for _ in range(args.repeat)]
    figures["subprocess_baseline_torc_version_s"] = {"best_s": min(baselines), "median_s": statistics.median(baselines)}
    print(f"{'torc --version (interpreter + CLI import)':40s} subprocess {statistics.median(baselines) * 1000:7.1f} ms",
          flush=True)
    if not args.no_trigger_costs:
        figures["trigger_costs"] = trigger_costs(db_path, args.jobs, args.cycles, args.rounds)
        print(json.dumps(figures["trigger_costs"], indent=1), flush=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
