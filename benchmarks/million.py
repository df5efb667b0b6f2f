"""A million-job parameter sweep, the way a user meets it: three `torc` processes.

    python benchmarks/million.py                  # 1,000,000 jobs (1,000 x 1,000), 3 rounds
    python benchmarks/million.py --side 300 --repeat 1

Each round, in a fresh folder:
  1. `torc workflows create sweep.yaml`  wall time and peak RSS (the child's own rusage);
  2. `torc workflows init ID`            wall time and peak RSS;
  3. `torc run ID`                       seconds from starting the process to the first job's start,
     seen as the first marker file its command writes; the run is then interrupted (SIGINT).

Prints each round and the medians, and writes the raw figures as JSON (``--out``). Targets (issue
13): create + init <= 15 s, create's peak RSS <= 1 GiB, first job within 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, torc_env, write_spec  # noqa: E402


def sweep(side: int, marks: Path) -> dict:
    return {
        "name": f"sweep_{side}x1000",
        "resource_requirements": [{"name": "tiny", "num_cpus": 1, "memory": "100m", "runtime": "PT10M"}],
        "jobs": [{"name": "run_{a}_{b}", "command": f"touch {marks}/m_{{a}}_{{b}}",
                  "parameters": {"a": f"0:{side - 1}", "b": "0:999"}, "resource_requirements": "tiny"}],
    }


def run_with_rusage(argv: list[str], cwd: Path) -> tuple[float, int, str]:
    """Like ``subprocess.run``, but reaps with ``os.wait4`` to read the child's own peak RSS."""
    read_end, write_end = os.pipe()
    t0 = time.perf_counter()
    pid = os.posix_spawnp(argv[0], argv, torc_env(), file_actions=[
        (os.POSIX_SPAWN_DUP2, write_end, 1), (os.POSIX_SPAWN_CLOSE, read_end)])
    os.close(write_end)
    with os.fdopen(read_end) as stdout:
        out = stdout.read()
    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{' '.join(argv)} exited {code}")
    return seconds, usage.ru_maxrss * 1024, out


def first_job(db: Path, workflow_id: int, marks: Path, cwd: Path, timeout: float = 120.0) -> float:
    """Seconds from starting `torc run ID` to the first marker file; then SIGINT and wait."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(["torc", "--db", str(db), "run", str(workflow_id)], cwd=cwd, env=torc_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while time.perf_counter() - t0 < timeout:
            with os.scandir(marks) as entries:
                if next(entries, None) is not None:
                    return time.perf_counter() - t0
            if proc.poll() is not None:
                raise SystemExit(f"torc run exited {proc.returncode} before any job started")
            time.sleep(0.005)
        raise SystemExit(f"no job started within {timeout:.0f} s")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def one_round(side: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="torc-million-") as tmp:
        folder = Path(tmp)
        marks = folder / "marks"
        marks.mkdir()
        spec = write_spec(folder / "sweep.yaml", sweep(side, marks))
        db = folder / "torc.db"
        create_s, create_rss, out = run_with_rusage(["torc", "--db", str(db), "workflows", "create", str(spec)],
                                                    folder)
        workflow_id = int(out.split("Created workflow", 1)[1].split()[0])
        init_s, init_rss, _ = run_with_rusage(["torc", "--db", str(db), "workflows", "init", str(workflow_id)],
                                              folder)
        first_s = first_job(db, workflow_id, marks, folder)
        return {"jobs": side * 1000, "create_s": create_s, "create_rss_mib": create_rss / 2**20,
                "init_s": init_s, "init_rss_mib": init_rss / 2**20, "create_plus_init_s": create_s + init_s,
                "first_job_s": first_s, "db_mib": db.stat().st_size / 2**20}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=1000, help="values of the first parameter (x 1,000 jobs)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the raw figures")
    args = parser.parse_args()
    print(machine(), flush=True)
    rounds = []
    for number in range(1, args.repeat + 1):
        load = os.getloadavg()[0]
        result = one_round(args.side)
        result["load_before"] = load
        rounds.append(result)
        print(f"round {number}: {result['jobs']:,} jobs  create {result['create_s']:.2f} s"
              f" (peak RSS {result['create_rss_mib']:.0f} MiB)  init {result['init_s']:.2f} s"
              f" (peak RSS {result['init_rss_mib']:.0f} MiB)  create+init {result['create_plus_init_s']:.2f} s"
              f"  first job {result['first_job_s']:.2f} s  DB {result['db_mib']:.0f} MiB  load {load:.2f}",
              flush=True)
    keys = ("create_s", "create_rss_mib", "init_s", "create_plus_init_s", "first_job_s")
    medians = {key: statistics.median(r[key] for r in rounds) for key in keys}
    print("median: " + "  ".join(f"{key} {value:.2f}" for key, value in medians.items()))
    out = args.out or Path(__file__).with_name(f"million_{datetime.now(timezone.utc):%Y-%m-%d}.json")
    out.write_text(json.dumps({"machine": machine(), "rounds": rounds, "medians": medians}, indent=1) + "\n")
    print(f"raw figures: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
