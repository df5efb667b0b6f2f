"""Lock contention: P runner processes on ONE queue file claim and complete N no-op jobs.

Each process builds a real `Runner` (torc_slurm.runner.session.make_runner) with
``dry_execute=True`` (a claimed job is marked completed at once, nothing is spawned),
queue-depth mode ``max_parallel_jobs=K`` and ``prefetch=K``, so every queue cycle (one lock
acquisition) reports the previous K outcomes and claims the next K jobs. This is what
`torc run ID --dry-execute --max-parallel-jobs K` does, with the batch size pinned.

The workflow (N independent jobs) is compiled and stored before the clock starts; the processes
import, open the DB and build their runner, then wait at a gate; the wall time runs from the gate
opening to the last process exiting. Each process returns its lock statistics
(``db.lock.acquisitions``, ``longest_hold``, ``total_hold``).

After the run the results table is checked: every job completed, exactly one 'completed' result per
job, no outcome refused ("not applied"), no job run twice.

    python benchmarks/contention.py                       # 32 processes, 100,000 jobs, K = 64
    python benchmarks/contention.py --batch 16 --batch 64 --batch 256
    python benchmarks/contention.py --jobs 20000 --procs 8
    TORC_SQLITE_SYNCHRONOUS=NORMAL python benchmarks/contention.py

Target (from the issue): >= 2,000 jobs/s aggregate.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine  # noqa: E402


def worker(db_path: str, workflow_id: int, batch: int, out_dir: str, ready, gate, results) -> None:  # noqa: ANN001
    from torc_slurm.runner.resources import detect_node
    from torc_slurm.runner.session import make_runner
    from torc_slurm.store.db import Database

    logging.getLogger("torc_slurm.store.lock").setLevel(logging.ERROR)  # "still waiting" notes: counted below
    db = Database(db_path, create=False)
    node = detect_node(num_cpus=1, num_gpus=0, memory_gb=1)
    runner = make_runner(db, workflow_id, node, output_dir=Path(out_dir), dry_execute=True, prefetch=batch,
                         max_parallel_jobs=batch, wait_for_new_jobs_s=0.0, monitor_interval_s=0.0)
    # Opening the DB and make_runner took the lock before the gate: not part of the run.
    db.lock.acquisitions, db.lock.longest_hold, db.lock.total_hold = 0, 0.0, 0.0
    holds = _record_holds(db.lock)
    ready.put(os.getpid())
    gate.wait()
    t0 = time.perf_counter()
    summary = runner.run()
    elapsed = time.perf_counter() - t0
    results.put({"pid": os.getpid(), "completed": summary.completed, "failed": summary.failed,
                 "exit": summary.exit_reason, "acquisitions": db.lock.acquisitions,
                 "longest_hold": db.lock.longest_hold, "total_hold": db.lock.total_hold, "elapsed": elapsed,
                 "holds": holds})
    db.close()


def _record_holds(lock) -> list[tuple[float, float]]:  # noqa: ANN001
    """Wrap this process's QueueLock.held to log (start, end) wall-clock times of every hold, so the
    parent can check that no two processes ever held the lock at once."""
    from contextlib import contextmanager

    holds: list[tuple[float, float, float]] = []  # (asked, got, released)
    inner = lock.held

    @contextmanager
    def held():  # noqa: ANN202
        asked = time.time()
        with inner():
            start = time.time()
            try:
                yield
            finally:
                holds.append((asked, start, time.time()))

    lock.held = held
    return holds


def overlaps(stats: list[dict]) -> int:
    """Pairs of consecutive lock holds (by start time) from different processes that overlap."""
    spans = sorted((a, b, i) for i, s in enumerate(stats) for _, a, b in s["holds"])
    return sum(1 for (_, end, i), (start, _, j) in zip(spans, spans[1:]) if start < end and i != j)


def build(tmp: Path, jobs: int) -> tuple[Path, int]:
    from torc_slurm.compiler import compile_workflow
    from torc_slurm.spec.models import WorkflowSpec
    from torc_slurm.store.db import Database
    from torc_slurm.store.workflows import add_workflow, initialize_workflow

    spec = WorkflowSpec.model_validate({
        "name": "contention",
        "resource_requirements": [{"name": "tiny", "num_cpus": 1, "memory": "1m", "runtime": "PT1M"}],
        "jobs": [{"name": "noop_{i}", "command": "true", "resource_requirements": "tiny",
                  "parameters": {"i": f"1:{jobs}"}}]})
    db_path = tmp / "torc.db"
    with Database(db_path) as db:
        workflow_id = add_workflow(db, compile_workflow(spec, "contention"), working_dir=tmp)
        initialize_workflow(db, workflow_id)
    return db_path, workflow_id


def verify(db_path: Path, workflow_id: int, jobs: int) -> dict:
    import sqlite3

    conn = sqlite3.connect(db_path)
    one = lambda sql: conn.execute(sql, (workflow_id,)).fetchone()[0]  # noqa: E731
    checks = {
        "jobs completed": one("SELECT COUNT(*) FROM jobs WHERE workflow_id = ? AND status = 'completed'"),
        "completed results": one("SELECT COUNT(*) FROM results WHERE workflow_id = ? AND status = 'completed'"),
        "distinct jobs with a completed result": one(
            "SELECT COUNT(DISTINCT job_id) FROM results WHERE workflow_id = ? AND status = 'completed'"),
        "jobs with more than one result": one(
            "SELECT COUNT(*) FROM (SELECT job_id FROM results WHERE workflow_id = ? GROUP BY job_id"
            " HAVING COUNT(*) > 1)"),
        "results not applied": one(
            "SELECT COUNT(*) FROM results WHERE workflow_id = ? AND message LIKE '%not applied%'"),
        "jobs with attempt != 1": one("SELECT COUNT(*) FROM jobs WHERE workflow_id = ? AND attempt != 1"),
        "runners lost": one("SELECT COUNT(*) FROM runners WHERE workflow_id = ? AND status = 'lost'"),
    }
    conn.close()
    want = {"jobs completed": jobs, "completed results": jobs, "distinct jobs with a completed result": jobs}
    checks["ok"] = all(checks[k] == v for k, v in want.items()) and all(
        checks[k] == 0 for k in checks if k not in want)
    return checks


def run_once(jobs: int, procs: int, batch: int, tmpdir: str | None) -> None:
    ctx = mp.get_context("fork")
    with tempfile.TemporaryDirectory(prefix="torc-contention-", dir=tmpdir) as tmp_name:
        tmp = Path(tmp_name)
        t0 = time.perf_counter()
        db_path, workflow_id = build(tmp, jobs)
        setup = time.perf_counter() - t0
        ready, results, gate = ctx.Queue(), ctx.Queue(), ctx.Event()
        workers = [ctx.Process(target=worker, args=(str(db_path), workflow_id, batch, str(tmp / "out"),
                                                    ready, gate, results)) for _ in range(procs)]
        for w in workers:
            w.start()
        for _ in workers:
            ready.get()
        start = time.perf_counter()
        gate.set()
        stats = [results.get() for _ in workers]
        for w in workers:
            w.join()
        wall = time.perf_counter() - start
        check = verify(db_path, workflow_id, jobs)

    acquisitions = sum(s["acquisitions"] for s in stats)
    done = sum(s["completed"] for s in stats)
    longest = max(s["longest_hold"] for s in stats)
    held = sum(s["total_hold"] for s in stats)
    waits = sorted(got - asked for s in stats for asked, got, _ in s["holds"])
    busiest = max(s["completed"] for s in stats)
    idlest = min(s["completed"] for s in stats)
    print(f"  K={batch:<4d} {procs} procs, {jobs:,} jobs: wall {wall:6.2f} s = {jobs / wall:7.0f} jobs/s"
          f" (target >= 2,000)  [setup {setup:.1f} s, not timed]")
    print(f"         lock acquisitions {acquisitions:,} = {acquisitions / jobs:.4f} per job;"
          f" longest hold {longest * 1e3:.1f} ms; mean hold {held / max(acquisitions, 1) * 1e3:.2f} ms;"
          f" lock held {held / wall:.0%} of the wall time")
    print(f"         lock wait per acquisition: median {waits[len(waits) // 2] * 1e3:.0f} ms,"
          f" p95 {waits[int(len(waits) * 0.95)] * 1e3:.0f} ms, longest {waits[-1]:.1f} s")
    print(f"         per process: {idlest:,}..{busiest:,} jobs; exits: "
          f"{', '.join(sorted({s['exit'] for s in stats}))}; runner-reported completions {done:,}")
    check["overlapping lock holds"] = overlaps(stats)
    verdict = "OK" if check.pop("ok") and not check["overlapping lock holds"] else "FAILED"
    print(f"         check {verdict}: " + "; ".join(f"{k} {v:,}" for k, v in check.items()), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--procs", type=int, default=32)
    parser.add_argument("--batch", type=int, action="append", help="K: jobs per cycle (repeatable; default 64)")
    parser.add_argument("--tmpdir", help="where the temp dir goes (default: $TMPDIR or /tmp)")
    args = parser.parse_args()
    print(f"contention: {args.procs} runner processes, one DB, dry-execute; {machine()}", flush=True)
    for batch in args.batch or [64]:
        run_once(args.jobs, args.procs, batch, args.tmpdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
