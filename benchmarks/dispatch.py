"""Dispatch throughput: N trivial jobs (`true`), stdout/stderr to files, on this machine's 2 cores.

Three dispatchers, in the same run, each in a fresh temp dir:

  torc    `torc --db D/torc.db run D/spec.yaml --num-cpus C --output D/out` as a subprocess
          (resource-aware mode, every job 1 CPU; the spec is compiled, stored and initialized by
          that same command). Each job is `true`, which torc execs directly (no shell syntax).
  hq      HyperQueue's Python API: a LocalCluster (server + one worker with C cores, in a child
          process), one job of N tasks `true` (executed directly, no shell), stdout/stderr to files.
  xargs   `seq N | xargs -P C -n 1 true >D/out/xargs.out 2>D/out/xargs.err`: the exec floor (`true`
          exec'd directly, no shell, stdout/stderr in files, no bookkeeping at all).
  xargs-bash (only with --only) the older reference: `bash -c 'true >"$1.out" 2>"$1.err"'` per job.

Each round runs the tools back to back (the order rotates by round); the summary gives each tool's
median, best, worst and spread (max/min over rounds), the ratios, and torc's runner CPU per job
(user+sys of the runner process during Runner.run, divided by the jobs: see TORC_WRAPPER). The raw
per-round figures go to benchmarks/dispatch_<date>.json.

For each: wall time from just before the process is created to its exit ("total"), and the job
phase: the span of the output files' modification times (first file written to last), measured the
same way for all three; for torc also first job start to last job end from its results table.

    python benchmarks/dispatch.py --jobs 5000 --repeat 5   # issue 13's figures
    python benchmarks/dispatch.py --jobs 2000      # smaller
    python benchmarks/dispatch.py --only torc --profile   # cProfile the torc runner (top 30)

Targets (issue 13): median torc jobs/s >= 3 x HyperQueue's, torc's spread <= 1.3, >= 50 % of the xargs
floor, and runner CPU per job halved.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, run_timed, tail, torc_env, write_spec  # noqa: E402


PROFILE = Path(tempfile.gettempdir()) / "torc-dispatch.prof"

# `torc` run in-process under a small wrapper that records the CPU time of the runner process itself
# (getrusage(RUSAGE_SELF): every thread of the process, the monitor and lease threads included; never
# the jobs, which are its children and count under RUSAGE_CHILDREN) at Runner.run's start and end and
# at exit. "runner" = Runner.run only (claim -> spawn -> reap -> report); "process" adds start-up,
# compile, store and init of the spec. A child's work between fork and exec (vfork/posix_spawn) is
# the child's; the wall-clock rates include it. The guardian process (a separate process that only
# sleeps on a pipe) is not counted.
TORC_WRAPPER = r"""
import atexit, json, os, resource, sys, time
from torc_slurm.runner import loop
_run, rec = loop.Runner.run, {}
def run(self):
    a, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    try:
        return _run(self)
    finally:
        b = resource.getrusage(resource.RUSAGE_SELF)
        rec.update(runner_user=b.ru_utime - a.ru_utime, runner_sys=b.ru_stime - a.ru_stime,
                   runner_wall=time.perf_counter() - t, ctx_vol=b.ru_nvcsw - a.ru_nvcsw,
                   ctx_invol=b.ru_nivcsw - a.ru_nivcsw)
loop.Runner.run = run
def dump():
    s = resource.getrusage(resource.RUSAGE_SELF)
    rec.update(process_user=s.ru_utime, process_sys=s.ru_stime)
    with open(os.environ["TORC_BENCH_CPU"], "w") as f:
        json.dump(rec, f)
atexit.register(dump)
from torc_slurm.cli import main
sys.argv[0] = "torc"
main()
"""


def file_span(directory: Path) -> tuple[int, float]:
    """(number of files, last mtime - first mtime) over the files in ``directory``."""
    times = [entry.stat().st_mtime for entry in os.scandir(directory) if entry.is_file()]
    return len(times), (max(times) - min(times)) if times else 0.0


# -- torc -----------------------------------------------------------------------------------
def run_torc(n: int, cores: int, tmp: Path, profile: bool, tree: str | None = None) -> dict:
    """``tree``: import torc_slurm from that checkout instead (PYTHONPATH), e.g. an older commit
    in a `git worktree`, for before/after rounds interleaved in the same window."""
    spec = {"name": "dispatch",
            "resource_requirements": [{"name": "one", "num_cpus": 1, "memory": "10m", "runtime": "PT1M"}],
            "jobs": [{"name": "j_{i}", "command": "true", "resource_requirements": "one",
                      "parameters": {"i": f"1:{n}"}}]}
    spec_path = write_spec(tmp / "spec.yaml", spec)
    db, out = tmp / "torc.db", tmp / "out"
    cpu_file = tmp / "cpu.json"
    args = ["--db", str(db), "run", str(spec_path), "--num-cpus", str(cores), "--output", str(out)]
    argv = [sys.executable, "-c", TORC_WRAPPER, *args]
    if profile:
        argv = [sys.executable, "-m", "cProfile", "-o", str(PROFILE), "-m", "torc_slurm", *args]
    extra = {"PYTHONPATH": tree} if tree else {}
    timed = run_timed(argv, cwd=tmp, env=torc_env(TORC_BENCH_CPU=str(cpu_file), **extra))
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
    if cpu_file.exists():
        cpu = json.loads(cpu_file.read_text())
        result.update(cpu)
        result["runner_cpu_us_per_job"] = 1e6 * (cpu["runner_user"] + cpu["runner_sys"]) / n
        result["process_cpu_us_per_job"] = 1e6 * (cpu["process_user"] + cpu["process_sys"]) / n
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
    """The floor: ``xargs -P C -n 1 true`` (``true`` exec'd directly, no shell), stdout and stderr
    of xargs and so of every ``true`` sent to two files."""
    out = tmp / "out"
    out.mkdir()
    stdin = "".join(f"{i}\n" for i in range(1, n + 1))
    with open(out / "xargs.out", "w") as o, open(out / "xargs.err", "w") as e:
        t0 = time.perf_counter()
        proc = subprocess.run(["xargs", "-P", str(cores), "-n", "1", "true"], input=stdin, text=True,
                              stdout=o, stderr=e)
        total = time.perf_counter() - t0
    return {"total": total, "rc": proc.returncode, "files": 2, "file_span": total}


def run_xargs_bash(n: int, cores: int, tmp: Path) -> dict:
    """The older reference: bash per job, and two files per job created by it."""
    out = tmp / "out"
    out.mkdir()
    timed = run_timed(["xargs", "-P", str(cores), "-I{}", "bash", "-c", 'true >"$1.out" 2>"$1.err"', "_",
                       f"{out}/{{}}"], stdin="".join(f"{i}\n" for i in range(1, n + 1)))
    files, span = file_span(out)
    return {"total": timed.seconds, "rc": timed.returncode, "files": files, "file_span": span}


def describe(name: str, n: int, r: dict) -> str:
    if "error" in r:
        return f"  {name:10s} FAILED / unavailable: {r['error']}"
    line = f"  {name:10s} total {r['total']:7.2f} s  {n / r['total']:7.1f} jobs/s"
    if name != "xargs":
        line += f"  | file span {r['file_span']:7.2f} s  {n / max(r['file_span'], 1e-9):7.1f} jobs/s"
        line += f"  ({r['files']:,} files)"
    if name.startswith("torc"):
        line += (f"\n             job phase (results) {r['job_phase']:.2f} s = {n / r['job_phase']:.1f} jobs/s;"
                 f" {r['completed']:,} completed for {r['distinct']:,} distinct jobs")
        if "runner_cpu_us_per_job" in r:
            line += (f"\n             runner CPU {r['runner_cpu_us_per_job']:.0f} us/job"
                     f" (user {r['runner_user']:.2f} s + sys {r['runner_sys']:.2f} s over {r['runner_wall']:.2f} s;"
                     f" ctx switches {r['ctx_vol']:,} vol / {r['ctx_invol']:,} invol);"
                     f" whole process {r['process_cpu_us_per_job']:.0f} us/job")
    if name == "hq":
        line += f"\n             submit -> wait returned {r['job_phase']:.2f} s = {n / r['job_phase']:.1f} jobs/s"
    return line


def summarize(n: int, which: list[str], rounds: list[dict]) -> dict:
    """Median, best, worst and spread (max/min) of jobs/s per tool; the ratios of medians, and the
    median of the per-round ratios (each round's tools ran back to back, in the same load)."""
    out: dict = {}
    for name in which:
        rates = [n / r[name]["total"] for r in rounds if "error" not in r[name]]
        if rates:
            out[name] = {"median": statistics.median(rates), "best": max(rates), "worst": min(rates),
                         "spread": max(rates) / min(rates), "rounds": rates}
        if name.startswith("torc") and name in out:
            cpu = [r[name]["runner_cpu_us_per_job"] for r in rounds if "runner_cpu_us_per_job" in r[name]]
            if cpu:
                out[name]["runner_cpu_us_per_job_median"] = statistics.median(cpu)
    for other in ("hq", "xargs", "torc-before"):
        if "torc" in out and other in out:
            per_round = [(n / r["torc"]["total"]) / (n / r[other]["total"]) for r in rounds
                         if "error" not in r["torc"] and "error" not in r[other]]
            out[f"torc/{other}"] = {"of_medians": out["torc"]["median"] / out[other]["median"],
                                    "per_round_median": statistics.median(per_round), "per_round": per_round}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--only", choices=["torc", "hq", "xargs", "xargs-bash"], action="append")
    parser.add_argument("--repeat", type=int, default=1, help="rounds (the tools interleaved in each)")
    parser.add_argument("--profile", action="store_true", help="cProfile the torc process (top 30 by own time)")
    parser.add_argument("--tmpdir", help="where the temp dirs go (default: $TMPDIR or /tmp)")
    parser.add_argument("--json", type=Path, help="write the raw per-round figures here "
                        "(default: benchmarks/dispatch_<UTC date and time>.json)")
    parser.add_argument("--label", default="", help="a note stored in the JSON (e.g. the commit)")
    parser.add_argument("--before-tree", help="also run torc from this checkout each round (tool 'torc-before')")
    parser.add_argument("--hq-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hq_child is not None:
        hq_child(args.hq_child, args.cores, args.dir)
        return 0

    n, cores = args.jobs, args.cores
    which = args.only or ["torc", "hq", "xargs"]
    if args.before_tree:
        which = [*which, "torc-before"]
    print(f"dispatch: {n:,} jobs of `true`, stdout/stderr to files, {cores} cores, temp dirs in"
          f" {args.tmpdir or tempfile.gettempdir()}; {machine()}", flush=True)
    started = time.strftime("%Y-%m-%d_%H%M", time.gmtime())
    rounds: list[dict] = []
    keep: list[str] = []
    try:
        _rounds(args, n, cores, which, rounds, keep)
    finally:
        for tmp in keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return _report(args, n, cores, which, rounds, started)


def _rounds(args, n: int, cores: int, which: list[str], rounds: list[dict], keep: list[str]) -> None:
    for round_ in range(args.repeat):
        load = os.getloadavg()
        print(f" round {round_ + 1}/{args.repeat}  (load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f},"
              f" {time.strftime('%H:%M:%S', time.gmtime())} UTC)", flush=True)
        record: dict = {"load_before": list(load), "utc": time.strftime("%H:%M:%S", time.gmtime())}
        # rotate the order each round, so no tool always runs first (or after the same one)
        order = which[round_ % len(which):] + which[:round_ % len(which)]
        for name in order:
            # Temp dirs are removed only after the last round: deleting 10,000 files just before a
            # tool runs makes its file creates scan ext4's recently deleted inodes (perf: up to
            # ~45 % of the runner's CPU), so whichever tool came next paid for the previous one.
            tmp = tempfile.mkdtemp(prefix=f"torc-dispatch-{name}-", dir=args.tmpdir)
            keep.append(tmp)
            r = {"torc": lambda: run_torc(n, cores, Path(tmp), args.profile),
                 "torc-before": lambda: run_torc(n, cores, Path(tmp), False, args.before_tree),
                 "hq": lambda: run_hq(n, cores, Path(tmp)),
                 "xargs": lambda: run_xargs(n, cores, Path(tmp)),
                 "xargs-bash": lambda: run_xargs_bash(n, cores, Path(tmp))}[name]()
            record[name] = r
            print(describe(name, n, r), flush=True)
        rounds.append(record)


def _report(args, n: int, cores: int, which: list[str], rounds: list[dict], started: str) -> int:
    summary = summarize(n, which, rounds)
    print(f" summary over {args.repeat} round(s), process start to exit, jobs/s:")
    for name in which:
        if name in summary:
            s = summary[name]
            print(f"  {name:10s} median {s['median']:7.1f}  best {s['best']:7.1f}  worst {s['worst']:7.1f}"
                  f"  spread (max/min) {s['spread']:.2f}  rounds: " + " ".join(f"{v:.0f}" for v in s["rounds"]))
    for name in ("torc", "torc-before"):
        if name in summary and "runner_cpu_us_per_job_median" in summary[name]:
            print(f"  {name} runner CPU, median: {summary[name]['runner_cpu_us_per_job_median']:.0f} us/job")
    for other, target in (("hq", 3.0), ("xargs", 0.5), ("torc-before", 1.0)):
        key = f"torc/{other}"
        if key in summary:
            print(f"  {key}: ratio of medians {summary[key]['of_medians']:.2f}, median of per-round ratios"
                  f" {summary[key]['per_round_median']:.2f} (target >= {target})")
    if "torc" in summary:
        print(f"  torc spread {summary['torc']['spread']:.2f} (target <= 1.3)")
    path = args.json or Path(__file__).resolve().parent / f"dispatch_{started}.json"
    path.write_text(json.dumps({"jobs": n, "cores": cores, "machine": machine(), "label": args.label,
                                "started_utc": started, "rounds": rounds, "summary": summary}, indent=1))
    print(f" raw figures: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
