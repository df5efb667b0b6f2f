"""Packing quality: a seeded heterogeneous workload on a declared 16-CPU, 4-GPU, 64 GB node.

    torc --db D/torc.db run D/spec.yaml --num-cpus 16 --num-gpus 4 --memory-gb 64 --output D/out

Jobs are `sleep N` with a declared runtime of exactly N seconds (PT<N>S), so the packer's
shadow-time reasoning (EASY backfill) works on true figures. The mix (``--seed``, default 7):

  * 1-CPU jobs, no GPU, 1-2 GB, 2-20 s
  * 4-CPU jobs, 0-2 GPUs, 4-8 GB, 2-12 s
  * 16-CPU jobs (the whole node's CPUs), 0-2 GPUs, 16-32 GB, 2-6 s
  * with ``--wide-first``: the 16-CPU jobs get ``priority: 1``, so they are claimed first
  * with ``--chains N``: N 3-job chains (prep -> main -> post) on top, so the critical path is a
    real path and the claim order (priority, then jobs_sort_method, which knows nothing of the
    DAG) shows its effect

Lower bound = max(CPU-seconds / 16, GPU-seconds / 4, critical path), from the declared runtimes.
Memory is sized so that it never binds. Makespan = first job start to last job end (results table);
the process wall time (compile, store, runner start and exit included) is printed as well.

    python benchmarks/packing.py                 # ~80 s of work
    python benchmarks/packing.py --seed 3 --scale 0.5

Target (from the issue): makespan / lower bound <= 1.05.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, run_timed, tail, torc_env, write_spec  # noqa: E402

CPUS, GPUS, MEMORY_GB = 16, 4, 64


def workload(seed: int, scale: float, chains: int = 0) -> list[dict]:
    """Job dicts: name, cpus, gpus, mem_gb, runtime (s), deps (names)."""
    rng = random.Random(seed)

    def secs(lo: int, hi: int) -> int:
        return max(1, round(rng.randint(lo, hi) * scale))

    jobs: list[dict] = []
    for i in range(40):
        jobs.append({"name": f"small_{i:02d}", "cpus": 1, "gpus": 0, "mem_gb": rng.choice([1, 2]),
                     "runtime": secs(2, 20), "deps": []})
    for i in range(16):
        jobs.append({"name": f"medium_{i:02d}", "cpus": 4, "gpus": rng.choice([0, 1, 1, 2]),
                     "mem_gb": rng.choice([4, 6, 8]), "runtime": secs(2, 12), "deps": []})
    for i in range(4):
        jobs.append({"name": f"large_{i}", "cpus": 16, "gpus": rng.choice([0, 1, 2]),
                     "mem_gb": rng.choice([16, 24, 32]), "runtime": secs(2, 6), "deps": []})
    for c in range(chains):
        prep = {"name": f"chain{c}_prep", "cpus": 1, "gpus": 0, "mem_gb": 1, "runtime": secs(2, 8), "deps": []}
        main = {"name": f"chain{c}_main", "cpus": 4, "gpus": rng.choice([0, 1]), "mem_gb": 4,
                "runtime": secs(4, 16), "deps": [prep["name"]]}
        post = {"name": f"chain{c}_post", "cpus": 1, "gpus": 0, "mem_gb": 1, "runtime": secs(2, 8),
                "deps": [main["name"]]}
        jobs += [prep, main, post]
    rng.shuffle(jobs)  # submission order carries no hint; the queue's sort order decides
    return jobs


def spec_for(jobs: list[dict], wide_first: bool = False) -> dict:
    kinds = sorted({(j["cpus"], j["gpus"], j["mem_gb"], j["runtime"]) for j in jobs})
    names = {k: f"c{k[0]}_g{k[1]}_m{k[2]}_t{k[3]}" for k in kinds}
    return {
        "name": "packing",
        "resource_requirements": [{"name": names[k], "num_cpus": k[0], "num_gpus": k[1], "memory": f"{k[2]}g",
                                   "runtime": f"PT{k[3]}S"} for k in kinds],
        "jobs": [{"name": j["name"], "command": f"sleep {j['runtime']}", "depends_on": j["deps"],
                  "resource_requirements": names[(j["cpus"], j["gpus"], j["mem_gb"], j["runtime"])],
                  "priority": 1 if wide_first and j["cpus"] == CPUS else 0}
                 for j in jobs],
    }


def bounds(jobs: list[dict]) -> dict:
    by_name = {j["name"]: j for j in jobs}
    finish: dict[str, float] = {}

    def earliest_end(name: str) -> float:  # longest path ending with this job
        if name not in finish:
            job = by_name[name]
            finish[name] = job["runtime"] + max((earliest_end(d) for d in job["deps"]), default=0.0)
        return finish[name]

    cpu_s = sum(j["cpus"] * j["runtime"] for j in jobs)
    gpu_s = sum(j["gpus"] * j["runtime"] for j in jobs)
    critical = max(earliest_end(j["name"]) for j in jobs)
    return {"cpu_s": cpu_s, "gpu_s": gpu_s, "critical": critical,
            "lower": max(cpu_s / CPUS, gpu_s / GPUS, critical)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--chains", type=int, default=0, help="add N prep -> main -> post chains")
    parser.add_argument("--wide-first", action="store_true",
                        help="give the 16-CPU jobs priority 1 (the user's lever on the claim order)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every runtime (whole seconds, >= 1)")
    parser.add_argument("--tmpdir", help="where the temp dir goes (default: $TMPDIR or /tmp)")
    parser.add_argument("--timeline", action="store_true", help="print CPUs/GPUs in use, second by second")
    args = parser.parse_args()

    jobs = workload(args.seed, args.scale, args.chains)
    b = bounds(jobs)
    counts = {c: sum(1 for j in jobs if j["cpus"] == c) for c in (1, 4, 16)}
    print(f"packing: {len(jobs)} jobs (seed {args.seed}: {counts[1]} x 1-CPU, {counts[4]} x 4-CPU,"
          f" {counts[16]} x 16-CPU; {sum(1 for j in jobs if j['gpus'])} use GPUs; {args.chains} chains"
          f"{'; wide jobs first' if args.wide_first else ''}) on a declared"
          f" {CPUS}-CPU {GPUS}-GPU {MEMORY_GB} GB node; {machine()}")
    print(f"  lower bound {b['lower']:.1f} s = max(CPU-s {b['cpu_s']}/{CPUS} = {b['cpu_s'] / CPUS:.1f},"
          f" GPU-s {b['gpu_s']}/{GPUS} = {b['gpu_s'] / GPUS:.1f}, critical path {b['critical']:.0f})", flush=True)

    with tempfile.TemporaryDirectory(prefix="torc-packing-", dir=args.tmpdir) as tmp_name:
        tmp = Path(tmp_name)
        spec_path = write_spec(tmp / "spec.yaml", spec_for(jobs, args.wide_first))
        db = tmp / "torc.db"
        argv = ["torc", "--db", str(db), "run", str(spec_path), "--num-cpus", str(CPUS), "--num-gpus", str(GPUS),
                "--memory-gb", str(MEMORY_GB), "--output", str(tmp / "out")]
        timed = run_timed(argv, cwd=tmp, env=torc_env())
        if timed.returncode != 0:
            print(f"  torc run FAILED (exit {timed.returncode}):\n{tail(timed.stderr + timed.stdout, 10)}")
            return 1
        conn = sqlite3.connect(db)
        rows = conn.execute("SELECT j.name, j.num_cpus, j.num_gpus, r.started_at, r.ended_at, r.exec_s"
                            " FROM results r JOIN jobs j ON j.id = r.job_id WHERE r.status = 'completed'").fetchall()
        conn.close()

    first = min(r[3] for r in rows)
    last = max(r[4] for r in rows)
    makespan = last - first
    overrun = sum(r[5] for r in rows) - sum(j["runtime"] for j in jobs)
    busy_cpu_s = sum(r[1] * r[5] for r in rows)
    print(f"  {len(rows)} of {len(jobs)} jobs completed")
    print(f"  makespan (first start -> last end) {makespan:.2f} s; makespan / lower bound ="
          f" {makespan / b['lower']:.3f} (target <= 1.05)")
    print(f"  process wall (torc run start -> exit) {timed.seconds:.2f} s; / lower bound ="
          f" {timed.seconds / b['lower']:.3f}")
    last_start = max(r[3] for r in rows)
    tail_busy = sum(r[1] * (r[4] - max(r[3], last_start)) for r in rows if r[4] > last_start)
    idle = CPUS * makespan - busy_cpu_s
    tail_idle = CPUS * (last - last_start) - tail_busy
    print(f"  CPU slots busy {busy_cpu_s / (CPUS * makespan):.1%} of the makespan; idle {idle:.0f} CPU-s, of which"
          f" {tail_idle:.0f} in the tail after the last start ({last - last_start:.1f} s) and {idle - tail_idle:.0f}"
          f" before it (drains ahead of wide jobs)")
    print(f"  jobs ran {overrun:+.2f} s in total beyond their declared runtimes (spawn + bash + sleep overhead)")
    if args.timeline:
        print_timeline(rows, first, last)
    return 0


def print_timeline(rows: list[tuple], first: float, last: float) -> None:
    """One line per second: CPUs and GPUs in use (sampled mid-second), and what started."""
    for second in range(int(last - first) + 1):
        t = first + second + 0.5
        live = [r for r in rows if r[3] <= t < r[4]]
        cpus, gpus = sum(r[1] for r in live), sum(r[2] for r in live)
        started = [f"{r[0]}({r[1]}c{r[2]}g,{r[5]:.0f}s)" for r in rows if first + second <= r[3] < first + second + 1]
        print(f"  {second:4d}s  cpu {cpus:2d}/{CPUS} {'#' * cpus:16s}  gpu {gpus}/{GPUS}  {' '.join(started)}")


if __name__ == "__main__":
    sys.exit(main())
