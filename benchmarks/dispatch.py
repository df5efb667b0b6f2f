"""Dispatch throughput: N trivial jobs (`true`), stdout/stderr to files, on this machine's 2 cores.

Three dispatchers, in the same run, each in a fresh temp dir:

  torc    `torc --db D/torc.db run D/spec.yaml --num-cpus C --output D/out` as a subprocess
          (resource-aware mode, every job 1 CPU; the spec is compiled, stored and initialized by
          that same command). Each job is `bash -c true` (torc runs every command through bash).
  hq      HyperQueue's Python API: a LocalCluster (server + one worker with C cores, in a child
          process), one job of N tasks `true` (executed directly, no shell), stdout/stderr to files.
  xargs   `seq N | xargs -P C -I{} bash -c 'true >"$1.out" 2>"$1.err"' _ D/out/{}`: the spawn floor
          (the same bash + two created files per job as torc, with no bookkeeping at all).

For each: wall time from just before the process is created to its exit ("total"), and the job
phase: the span of the output files' modification times (first file written to last), measured the
same way for all three; for torc also first job start to last job end from its results table.

    python benchmarks/dispatch.py                  # 10,000 jobs, all three
    python benchmarks/dispatch.py --jobs 2000      # smaller
    python benchmarks/dispatch.py --only torc --profile   # cProfile the torc runner (top 30)

Targets (from the issue): torc jobs/s >= 1.5 x HyperQueue's, and >= 30 % of the xargs floor.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, run_timed, tail, torc_env, write_spec  # noqa: E402


PROFILE = Path(tempfile.gettempdir()) / "torc-dispatch.prof"


def file_span(directory: Path) -> tuple[int, float]:
    """(number of files, last mtime - first mtime) over the files in ``directory``."""
    times = [entry.stat().st_mtime for entry in os.scandir(directory) if entry.is_file()]
    return len(times), (max(times) - min(times)) if times else 0.0


# -- torc -----------------------------------------------------------------------------------
def run_torc(n: int, cores: int, tmp: Path, profile: bool) -> dict:
    spec = {"name": "dispatch",
            "resource_requirements": [{"name": "one", "num_cpus": 1, "memory": "10m", "runtime": "PT1M"}],
            "jobs": [{"name": "j_{i}", "command": "true", "resource_requirements": "one",
                      "parameters": {"i": f"1:{n}"}}]}
    spec_path = write_spec(tmp / "spec.yaml", spec)
    db, out = tmp / "torc.db", tmp / "out"
    argv = ["torc", "--db", str(db), "run", str(spec_path), "--num-cpus", str(cores), "--output", str(out)]
    if profile:
        argv = [sys.executable, "-m", "cProfile", "-o", str(PROFILE), "-m", "torc_slurm", *argv[1:]]
    timed = run_timed(argv, cwd=tmp, env=torc_env())
    result = {"total": timed.seconds, "rc": timed.returncode}
    if timed.returncode != 0:
        result["error"] = tail(timed.stderr + timed.stdout)
        return result
    conn = sqlite3.connect(db)
    first, last, done, distinct = conn.execute(
        "SELECT MIN(started_at), MAX(ended_at), COUNT(*), COUNT(DISTINCT job_id) FROM results"
        " WHERE status = 'completed'").fetchone()
    r_start, r_end = conn.execute("SELECT MIN(started_at), MAX(ended_at) FROM runners").fetchone()
    conn.close()
    files, span = file_span(out / "job_stdio")
    result.update(completed=done, distinct=distinct, job_phase=last - first, runner_life=r_end - r_start,
                  files=files, file_span=span)
    if profile:
        import pstats

        stats = pstats.Stats(str(PROFILE))
        stats.sort_stats("tottime").print_stats(30)
        print(f"(profile kept in {PROFILE})")
    return result


# -- HyperQueue -----------------------------------------------------------------------------
def hq_child(n: int, cores: int, tmp: Path) -> None:
    """Runs in its own process: a local HQ server + one worker, N tasks, wait; print JSON."""
    from hyperqueue import Job
    from hyperqueue.cluster import LocalCluster, WorkerConfig

    out = tmp / "out"
    out.mkdir()
    with LocalCluster(server_dir=str(tmp / "hq-server"), worker_config=WorkerConfig(cores=cores)) as cluster:
        client = cluster.client()
        job = Job(default_workdir=str(tmp))
        for i in range(1, n + 1):
            job.program(["true"], stdout=str(out / f"{i}.out"), stderr=str(out / f"{i}.err"))
        t0 = time.perf_counter()
        submitted = client.submit(job)
        ok = client.wait_for_jobs([submitted])
        t1 = time.perf_counter()
    print(json.dumps({"ok": ok, "submit_to_done": t1 - t0}))


def run_hq(n: int, cores: int, tmp: Path) -> dict:
    try:
        import hyperqueue  # noqa: F401
    except ImportError as exc:
        return {"error": f"HyperQueue is not installed ({exc}); `pip install hyperqueue`"}
    timed = run_timed([sys.executable, __file__, "--hq-child", str(n), "--cores", str(cores), "--dir", str(tmp)])
    if timed.returncode != 0:
        return {"total": timed.seconds, "error": tail(timed.stderr + timed.stdout, 8)}
    child = json.loads(timed.stdout.strip().splitlines()[-1])
    files, span = file_span(tmp / "out")
    return {"total": timed.seconds, "ok": child["ok"], "job_phase": child["submit_to_done"],
            "files": files, "file_span": span}


# -- xargs ----------------------------------------------------------------------------------
def run_xargs(n: int, cores: int, tmp: Path) -> dict:
    out = tmp / "out"
    out.mkdir()
    timed = run_timed(["xargs", "-P", str(cores), "-I{}", "bash", "-c", 'true >"$1.out" 2>"$1.err"', "_",
                       f"{out}/{{}}"], stdin="".join(f"{i}\n" for i in range(1, n + 1)))
    files, span = file_span(out)
    return {"total": timed.seconds, "rc": timed.returncode, "files": files, "file_span": span}


def describe(name: str, n: int, r: dict) -> str:
    if "error" in r:
        return f"  {name:6s} FAILED / unavailable: {r['error']}"
    line = f"  {name:6s} total {r['total']:7.2f} s  {n / r['total']:7.1f} jobs/s"
    line += f"  | file span {r['file_span']:7.2f} s  {n / max(r['file_span'], 1e-9):7.1f} jobs/s"
    line += f"  ({r['files']:,} files)"
    if name == "torc":
        line += (f"\n         job phase (first start -> last end, results) {r['job_phase']:.2f} s"
                 f" = {n / r['job_phase']:.1f} jobs/s; runner alive {r['runner_life']:.2f} s;"
                 f" {r['completed']:,} completed results for {r['distinct']:,} distinct jobs")
    if name == "hq":
        line += f"\n         submit -> wait returned {r['job_phase']:.2f} s = {n / r['job_phase']:.1f} jobs/s"
    return line


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--only", choices=["torc", "hq", "xargs"], action="append")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds (torc, hq, xargs interleaved); the summary uses each one's best and median")
    parser.add_argument("--profile", action="store_true", help="cProfile the torc process (top 30 by own time)")
    parser.add_argument("--tmpdir", help="where the temp dirs go (default: $TMPDIR or /tmp)")
    parser.add_argument("--hq-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hq_child is not None:
        hq_child(args.hq_child, args.cores, args.dir)
        return 0

    n, cores = args.jobs, args.cores
    which = args.only or ["torc", "hq", "xargs"]
    print(f"dispatch: {n:,} jobs of `true`, stdout/stderr to files, {cores} cores, temp dirs in"
          f" {args.tmpdir or tempfile.gettempdir()}; {machine()}", flush=True)
    runs: dict[str, list[dict]] = {name: [] for name in which}
    for round_ in range(args.repeat):
        if args.repeat > 1:
            print(f" round {round_ + 1}/{args.repeat}  (load average {os.getloadavg()[0]:.1f})", flush=True)
        for name in which:
            with tempfile.TemporaryDirectory(prefix=f"torc-dispatch-{name}-", dir=args.tmpdir) as tmp:
                r = {"torc": lambda: run_torc(n, cores, Path(tmp), args.profile),
                     "hq": lambda: run_hq(n, cores, Path(tmp)),
                     "xargs": lambda: run_xargs(n, cores, Path(tmp))}[name]()
            runs[name].append(r)
            print(describe(name, n, r), flush=True)

    def rates(name: str, key: str) -> list[float]:
        return sorted(n / r[key] for r in runs.get(name, []) if "error" not in r)

    print(f" summary over {args.repeat} round(s): jobs/s as best / median")
    for name in which:
        for key, label in (("total", "process start to exit"), ("file_span", "job phase (file span)")):
            got = rates(name, key)
            if got:
                print(f"  {name:6s} {label:22s} {got[-1]:7.1f} / {statistics.median(got):7.1f}")
    for key, label in (("total", "process start to exit"), ("file_span", "job phase (file span)")):
        for pick, how in ((lambda v: v[-1], "best"), (statistics.median, "median")):
            got = {name: rates(name, key) for name in ("torc", "hq", "xargs")}
            torc, hq, xargs = (pick(got[k]) if got[k] else None for k in ("torc", "hq", "xargs"))
            parts = []
            if torc and hq:
                parts.append(f"torc/HQ = {torc / hq:.2f} (target >= 1.5)")
            elif torc and "hq" in which:
                parts.append("torc/HQ = n/a (HQ did not run)")
            if torc and xargs:
                parts.append(f"torc/xargs = {torc / xargs:.2f} (target >= 0.30)")
            if parts:
                print(f"  {label}, {how}: " + ", ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
