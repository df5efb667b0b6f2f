"""Time ``torc slurm plan`` on a 100,000-job, 3-stage workflow (target: <= 2 s).

    python benchmarks/plan.py                 # build (once, cached in --dir), time, write plan.json
    python benchmarks/plan.py --jobs 20000    # a smaller workflow

The workflow is made through the real path (spec -> compiler -> queue): stage 1, half the jobs
(1 CPU, 1 min); stage 2, 49 % (2 CPUs, 5 min), each waiting on every stage-1 job through one regex
(one interned dependency set); stage 3, the rest (4 CPUs, 10 min), each waiting on every stage-2
job. One scheduler: partition cpu of the local cluster (8 CPUs, 8000 MB), 2 nodes, 1 hour.

Timed: ``torc slurm plan 1 -f json`` as a subprocess (what a user waits for, interpreter start
included; partitions from the queue's cache after the first call), and ``plan_workflow`` in-process,
split into reading the shapes (``job_shapes``: the two grouped queries) and the simulation.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, run_timed, torc_env


def spec(n: int) -> dict:
    a, b = n // 2, n * 49 // 100
    c = n - a - b
    return {"name": "plan_bench", "jobs": [
        {"name": "a_{i}", "command": "true", "resource_requirements": "one", "parameters": {"i": f"1:{a}"}},
        {"name": "b_{i}", "command": "true", "resource_requirements": "two", "parameters": {"i": f"1:{b}"},
         "depends_on_regexes": ["^a_"]},
        {"name": "c_{i}", "command": "true", "resource_requirements": "four", "parameters": {"i": f"1:{c}"},
         "depends_on_regexes": ["^b_"]}],
        "resource_requirements": [{"name": "one", "num_cpus": 1, "memory": "100m", "runtime": "PT1M"},
                                  {"name": "two", "num_cpus": 2, "memory": "100m", "runtime": "PT5M"},
                                  {"name": "four", "num_cpus": 4, "memory": "100m", "runtime": "PT10M"}],
        "slurm_schedulers": [{"name": "cpu", "partition": "cpu", "nodes": 2, "walltime": "01:00:00"}]}


def build(folder: Path, n: int) -> Path:
    import yaml

    from torc_slurm.compiler import compile_workflow
    from torc_slurm.spec.load import load_spec
    from torc_slurm.store.db import Database
    from torc_slurm.store.workflows import add_workflow, initialize_workflow

    db_path = folder / f"plan_{n}.db"
    if db_path.exists():
        return db_path
    folder.mkdir(parents=True, exist_ok=True)
    spec_path = folder / f"plan_{n}.yaml"
    spec_path.write_text(yaml.safe_dump(spec(n), sort_keys=False))
    t0 = time.perf_counter()
    with Database(db_path) as db:
        compiled = compile_workflow(load_spec(str(spec_path)), str(spec_path))
        workflow_id = add_workflow(db, compiled, working_dir=folder, source=str(spec_path))
        initialize_workflow(db, workflow_id)
    print(f"built {n} jobs in {time.perf_counter() - t0:.1f} s: {db_path}", file=sys.stderr)
    return db_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp/torc_plan_bench"))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("plan.json"))
    args = parser.parse_args()
    db_path = build(args.dir, args.jobs)

    from torc_slurm.slurm.allocations import cluster_info, job_shapes, offers_for, plan_workflow
    from torc_slurm.slurm.backend import get_backend
    from torc_slurm.slurm.plan import make_plan
    from torc_slurm.slurm.sites import load_site
    from torc_slurm.store.db import Database
    from torc_slurm.store.workflows import workflow_settings

    argv = [sys.executable, "-m", "torc_slurm", "--db", str(db_path), "slurm", "plan", "1", "--site", "localhost",
            "-f", "json"]
    subprocess_s, answer = [], None
    for _ in range(args.repeat):
        timed = run_timed(argv, env=torc_env())
        if timed.returncode != 0:
            raise SystemExit(f"torc slurm plan failed: {timed.stderr}")
        subprocess_s.append(timed.seconds)
        answer = json.loads(timed.stdout)
    site = load_site("localhost")
    read_s, simulate_s, total_s = [], [], []
    with Database(db_path, create=False) as db:
        spec_ = workflow_settings(db, 1).spec
        cluster = cluster_info(db, 1, get_backend(), site)
        offers = offers_for(spec_, list(spec_.slurm_schedulers), cluster, site)
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            shapes = job_shapes(db, 1)
            t1 = time.perf_counter()
            make_plan(shapes, list(offers.values()))
            t2 = time.perf_counter()
            plan_workflow(db, 1, None, site)
            t3 = time.perf_counter()
            read_s.append(t1 - t0)
            simulate_s.append(t2 - t1)
            total_s.append(t3 - t2)
    result = {
        "machine": machine(), "jobs": args.jobs, "repeat": args.repeat,
        "subprocess_s": {"median": statistics.median(subprocess_s), "max": max(subprocess_s), "all": subprocess_s},
        "in_process_s": {"median": statistics.median(total_s), "max": max(total_s)},
        "job_shapes_s": {"median": statistics.median(read_s), "max": max(read_s)},
        "simulate_s": {"median": statistics.median(simulate_s), "max": max(simulate_s)},
        "plan": answer,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "plan"}, indent=2))
    print(json.dumps({"makespan_s": answer["makespan_s"], "stages": [
        (s["stage"], s["jobs"], s["allocations"]) for s in answer["schedulers"][0]["stages"]]}))


if __name__ == "__main__":
    main()
