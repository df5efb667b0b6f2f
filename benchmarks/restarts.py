"""Time `reset-status --failed-only` and `reinit` on a 100,000-job workflow with 1,000 failed jobs.

Targets (issue 8): each takes <= 2 s, with the queue lock held <= 200 ms at a time, so running
runners are not stalled.

The workflow: 50,000 `prep_{i}` jobs (all reading one input file, config.json), 49,999
`work_{i}` jobs each after its `prep_{i}`, and one `summary` after every `work_` job (one
dependency set of 49,999 members): 100,000 jobs. Every job has run: 1,000 `work_` jobs failed,
`summary` was canceled, the rest completed. The outcomes are written with SQL (the state a runner
would leave, counters included) so the benchmark measures the restart, not 100,000 job runs.

    python benchmarks/restarts.py            # both, on fresh copies of the same queue file
    python benchmarks/restarts.py --chunk 500
    python benchmarks/restarts.py --worst-case   # also: the input changes and all 100,000 jobs rerun

Reports the wall time of planning + applying (`plan_reset(...).apply()` / `reinit()`, what the
commands call), the longest lock hold (`db.lock.longest_hold`) and the lock acquisitions.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine

from torc_slurm.compiler import compile_workflow
from torc_slurm.spec.models import WorkflowSpec
from torc_slurm.store import restarts
from torc_slurm.store.db import Database
from torc_slurm.store.workflows import add_workflow, initialize_workflow

PAIRS = 50_000
FAILED = 1_000


def build(folder: Path) -> Path:
    (folder / "config.json").write_text(json.dumps({"setting": 1}))
    spec = WorkflowSpec.model_validate({
        "name": "restart_bench",
        "jobs": [
            {"name": "prep_{i}", "command": "prep {i}", "input_files": ["config"], "parameters": {"i": f"0:{PAIRS - 1}"}},
            {"name": "work_{i}", "command": "work {i}", "depends_on": ["prep_{i}"],
             "parameters": {"i": f"0:{PAIRS - 2}"}},
            {"name": "summary", "command": "sum", "depends_on_regexes": ["^work_"]},
        ],
        "files": [{"name": "config", "path": "config.json"}],
    })
    path = folder / "torc.db"
    with Database(path) as db:
        workflow_id = add_workflow(db, compile_workflow(spec), working_dir=folder)
        initialize_workflow(db, workflow_id)
        failed = [f"work_{i}" for i in range(0, PAIRS - 1, (PAIRS - 1) // FAILED)][:FAILED]
        with db.transaction() as conn:  # the state a runner leaves: outcomes and counters
            conn.execute("UPDATE jobs SET status = 'completed', attempt = 1, return_code = 0, ran_hash = spec_hash"
                         " WHERE workflow_id = ?", (workflow_id,))
            conn.execute("UPDATE jobs SET status = 'failed', return_code = 1, reason = 'exit code 1'"
                         " WHERE workflow_id = ? AND name IN (SELECT value FROM json_each(?))",
                         (workflow_id, json.dumps(failed)))
            conn.execute("UPDATE jobs SET status = 'canceled', attempt = 0, reason = 'upstream failed'"
                         " WHERE workflow_id = ? AND name = 'summary'", (workflow_id,))
            conn.execute("UPDATE dependency_sets SET remaining = 0, failed = 0 WHERE workflow_id = ?", (workflow_id,))
            conn.execute("UPDATE dependency_sets SET failed = ? WHERE id = (SELECT depset_id FROM jobs"
                         " WHERE workflow_id = ? AND name = 'summary')", (len(failed), workflow_id))
        assert len(failed) == FAILED
    return path


def measure(label: str, source: Path, action) -> dict:
    copy = source.parent / f"{label}.db"
    shutil.copy(source, copy)
    with Database(copy) as db:
        db.lock.longest_hold = 0.0
        before = db.lock.acquisitions
        t0 = time.perf_counter()
        changes, run_id = action(db)
        wall = time.perf_counter() - t0
        figures = {"case": label, "wall_s": wall, "longest_hold_ms": db.lock.longest_hold * 1000,
                   "acquisitions": db.lock.acquisitions - before, "jobs_reset": changes, "run_id": run_id}
        statuses = dict(db.read("SELECT status, COUNT(*) FROM jobs GROUP BY status"))
    figures["after"] = statuses
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunk", type=int, default=restarts.CHUNK, help="jobs per apply transaction")
    parser.add_argument("--worst-case", action="store_true",
                        help="also: config.json changes, so all 100,000 jobs rerun (no target; shows scaling)")
    args = parser.parse_args()
    restarts.CHUNK = args.chunk
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        source = build(Path(tmp))
        print(f"built 100,000 jobs ({FAILED:,} failed, summary canceled) in {time.perf_counter() - t0:.1f} s;"
              f" chunk {restarts.CHUNK} jobs")

        def reset(db: Database) -> tuple[int, int]:
            plan = restarts.plan_reset(db, 1, failed_only=True)
            return len(plan.changes), plan.apply(db)

        def reinit(db: Database) -> tuple[int, int]:
            plan, run_id = restarts.reinit(db, 1)
            return len(plan.changes), run_id

        def reinit_all(db: Database) -> tuple[int, int]:
            (source.parent / "config.json").write_text(json.dumps({"setting": 2}))
            return reinit(db)

        cases = [("reset-status --failed-only", reset), ("reinit", reinit)]
        if args.worst_case:
            cases.append(("reinit, config.json changed", reinit_all))
        for label, action in cases:
            f = measure(label.split()[0] + str(len(label)), source, action)
            target = "no target (every job reruns)" if "changed" in label else "target <= 2 s and <= 200 ms " + (
                "met" if f["wall_s"] <= 2 and f["longest_hold_ms"] <= 200 else "MISSED")
            print(f"{label:28s} wall {f['wall_s']:.3f} s, longest lock hold {f['longest_hold_ms']:.1f} ms, "
                  f"{f['acquisitions']} acquisitions, {f['jobs_reset']:,} jobs reset, run {f['run_id']}: "
                  f"{target}; after: {f['after']}")


if __name__ == "__main__":
    main()
