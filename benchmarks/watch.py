"""`torc slurm watch` while it waits: lock acquisitions per round and CPU, against the local
Slurm cluster; and the round's one locked read on a 100,000-job, 3-stage workflow.

Part 1: a one-job workflow whose scheduler already has one allocation queued (held by the benchmark
with ``--begin=now+1hour``) and ``--max-queued 1``: every round renews the lease, reads, calls
``squeue`` once and decides nothing. The watcher runs in this process (``Watcher.round`` plus the
loop's sleep), so ``getrusage`` (self + children: squeue included) gives its CPU.

Part 2: ``Watcher.read`` (lease renewal + demand + counts + allocations in one transaction) on the
workflow ``benchmarks/plan.py`` builds (50,000 / 49,000 / 1,000 jobs; stage 1 ready).

    python benchmarks/watch.py [--rounds 20] [--interval 2] [--jobs 100000]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def idle(rounds: int, interval: float) -> dict:
    from torc_slurm.compiler import compile_workflow
    from torc_slurm.slurm.backend import get_backend
    from torc_slurm.slurm.sites import load_site
    from torc_slurm.slurm.watch import Limits, Watcher, WatchOptions
    from torc_slurm.spec.models import WorkflowSpec
    from torc_slurm.store.allocations import record_allocations
    from torc_slurm.store.db import Database
    from torc_slurm.store.workflows import add_workflow, initialize_workflow

    folder = Path(tempfile.mkdtemp(prefix="torc_bench_watch_", dir="/var/tmp"))
    spec = {"name": "watch_idle", "jobs": [{"name": "a", "command": "true"}],
            "slurm_schedulers": [{"name": "cpu", "partition": "cpu", "walltime": "00:10:00"}]}
    held = subprocess.run(["sbatch", "--parsable", "--begin=now+1hour", "--job-name=torc_bench_watch_held",
                           "--partition=cpu", "--time=00:05:00", f"--chdir={folder}", "--wrap=true"],
                          capture_output=True, text=True, check=True, timeout=60).stdout.strip().split(";")[0]
    try:
        db = Database(folder / "torc.db")
        wf = add_workflow(db, compile_workflow(WorkflowSpec.model_validate(spec), "watch_idle"), working_dir=folder)
        initialize_workflow(db, wf)
        record_allocations(db, wf, "cpu", 1, [(held, None)])
        watcher = Watcher(db, wf, get_backend(), site=load_site("localhost"),
                          options=WatchOptions(interval=interval, limits=Limits(max_queued=1)),
                          say=lambda text: print(text, file=sys.stderr))
        watcher.round()  # the first round records the held job's state (a write): not an idle one
        acquisitions, cpu, wall = db.lock.acquisitions, cpu_seconds(), time.monotonic()
        round_times = []
        for _ in range(rounds):
            start = time.monotonic()
            watcher.round()
            round_times.append(time.monotonic() - start)
            time.sleep(max(0.0, interval - (time.monotonic() - start)))
        wall, cpu = time.monotonic() - wall, cpu_seconds() - cpu
        assert not watcher.submitted, "the idle watcher submitted something"
        per_round_cpu = cpu / rounds
        return {"rounds": rounds, "interval_s": interval, "wall_s": round(wall, 2),
                "lock_acquisitions_per_round": (db.lock.acquisitions - acquisitions) / rounds,
                "cpu_s": round(cpu, 3), "cpu_percent": round(100 * cpu / wall, 3),
                "cpu_per_round_ms": round(1000 * per_round_cpu, 1),
                "cpu_percent_at_30s": round(100 * per_round_cpu / 30.0, 3),
                "round_ms_median": round(1000 * statistics.median(round_times), 1),
                "round_ms_max": round(1000 * max(round_times), 1),
                "lock_hold_ms_max": round(1000 * db.lock.longest_hold, 2)}
    finally:
        subprocess.run(["scancel", held], capture_output=True, timeout=60, check=False)


def big_read(jobs: int) -> dict:
    import plan

    from torc_slurm.slurm.watch import Watcher, WatchOptions
    from torc_slurm.store.db import Database

    db_path = plan.build(Path(tempfile.gettempdir()) / "torc_bench_plan", jobs)
    db = Database(db_path, create=False)

    class NoSlurm:
        def status(self, ids):
            return {}

    watcher = Watcher(db, 1, NoSlurm(), options=WatchOptions())
    times = []
    for _ in range(5):
        start = time.perf_counter()
        view = watcher.read()
        times.append(time.perf_counter() - start)
    return {"jobs": jobs, "read_s_median": round(statistics.median(times), 3), "read_s_max": round(max(times), 3),
            "demand": {k: v.__dict__ for k, v in view.demand.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--jobs", type=int, default=100_000)
    args = parser.parse_args()
    print(machine())
    print(json.dumps({"idle": idle(args.rounds, args.interval), "read": big_read(args.jobs)}, indent=2))


if __name__ == "__main__":
    main()
