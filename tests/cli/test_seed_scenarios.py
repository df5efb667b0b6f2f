"""torc's "intelligent restarts" promises on the seed's diamond, with real `torc` processes:

    preprocess -> work1, work2 -> postprocess       (files inputs.json, f1 ... f5)

* work2 used more memory than expected and failed: postprocess does not run (canceled, "upstream
  job work2 failed"); after `torc recover`, only work2 and postprocess rerun, and preprocess's and
  work1's results are kept (same attempt, same end time).
* postprocess took more time than expected and timed out: after `torc recover`, only it reruns,
  with its runtime x 1.5.
* every `torc recover --dry-run` prints exactly what the real command then does.

This machine gives jobs no memory cgroup of their own, so the runner stands in for the kernel's
limit: ``TORC_MEMORY_KILL_FACTOR=1.2`` makes it kill a job whose sampled memory passes 1.2 x its
request (the same SIGKILL-near-the-limit the kernel would deliver), recorded as ``oom``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.runner.helpers import PYTHON, clean_env, jobs, query, results, torc, write_spec_data

IO = '''\
import json, os
def read(path):
    with open(path) as f:
        return json.load(f)
def write(path, data):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(data, f)
    os.replace(path + ".tmp", path)
'''
PREPROCESS = '''\
import sys
from diamond_io import read, write
data = read(sys.argv[1])
values = [v * data["scale"] for v in data["values"]]
write(sys.argv[2], {"part": 1, "values": values[:len(values) // 2]})
write(sys.argv[3], {"part": 2, "values": values[len(values) // 2:]})
'''
WORK = '''\
import sys, time
from diamond_io import read, write
source, target, allocate_mb, hold = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
ballast = bytearray(allocate_mb * 2**20)
for i in range(0, len(ballast), 4096):
    ballast[i] = 1
time.sleep(hold)
data = read(source)
write(target, {"part": data["part"], "sum_of_squares": sum(v * v for v in data["values"])})
'''
POSTPROCESS = '''\
import sys, time
from diamond_io import read, write
time.sleep(float(sys.argv[4]))
parts = [read(p) for p in sys.argv[1:3]]
write(sys.argv[3], {"total": sum(p["sum_of_squares"] for p in parts)})
'''
ENV = clean_env(TORC_MEMORY_KILL_FACTOR="1.2")


def diamond(work: Path, *, work2_mb: int = 0, post_sleep: float = 0.0, post_enforced: bool = False) -> Path:
    for name, text in (("diamond_io.py", IO), ("preprocess.py", PREPROCESS), ("work.py", WORK),
                       ("postprocess.py", POSTPROCESS)):
        (work / name).write_text(text)
    (work / "inputs.json").write_text(json.dumps({"values": [1, 2, 3, 4, 5, 6], "scale": 2}))
    post: dict[str, Any] = {"name": "postprocess", "resource_requirements": "medium",
                            "command": f"{PYTHON} postprocess.py out/f3.json out/f4.json out/f5.json {post_sleep}",
                            "input_files": ["f3", "f4"], "output_files": ["f5"]}
    if post_enforced:
        post["enforce_runtime"] = True
    spec = {
        "name": "diamond",
        "jobs": [
            {"name": "preprocess", "command": f"{PYTHON} preprocess.py inputs.json out/f1.json out/f2.json",
             "input_files": ["inputs"], "output_files": ["f1", "f2"], "resource_requirements": "small"},
            {"name": "work1", "command": f"{PYTHON} work.py out/f1.json out/f3.json 0 0",
             "input_files": ["f1"], "output_files": ["f3"], "resource_requirements": "large"},
            {"name": "work2", "command": f"{PYTHON} work.py out/f2.json out/f4.json {work2_mb} 0.6",
             "input_files": ["f2"], "output_files": ["f4"], "resource_requirements": "large"},
            post,
        ],
        "files": [{"name": "inputs", "path": "inputs.json"}] +
                 [{"name": f"f{i}", "path": f"out/f{i}.json"} for i in range(1, 6)],
        "resource_requirements": [
            {"name": "small", "memory": "100m", "runtime": "PT1M"},
            {"name": "large", "memory": "150m", "runtime": "PT1M"},
            {"name": "medium", "memory": "100m", "runtime": "PT2S"},
        ],
    }
    return write_spec_data(work, spec)


def create(db: Path, spec: Path) -> int:
    done = torc(db, "workflows", "create", spec, "-f", "json", cwd=spec.parent, env=ENV)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["workflow_id"]


def run(db: Path, wf: int, work: Path, expect: int, *extra: object) -> None:
    done = torc(db, "run", wf, "--num-cpus", 2, "--monitor-interval", 0.1, *extra, cwd=work, env=ENV)
    assert done.returncode == expect, done.stdout + done.stderr


def attempts_of(db: Path, wf: int) -> dict[str, list[tuple[int, str, float]]]:
    found: dict[str, list[tuple[int, str, float]]] = {}
    for r in results(db, wf):
        found.setdefault(r["name"], []).append((r["attempt"], r["status"], r["ended_at"]))
    return found


def recover(db: Path, wf: int, work: Path, *extra: object) -> tuple[str, str]:
    """`torc recover --dry-run`, then `torc recover`: both outputs, which must be equal."""
    before = jobs(db, wf)
    dry = torc(db, "recover", wf, "--dry-run", *extra, cwd=work, env=ENV)
    assert dry.returncode == 0, dry.stderr
    assert "Dry run: nothing was changed." in dry.stderr
    assert jobs(db, wf) == before  # the dry run changed nothing
    real = torc(db, "recover", wf, *extra, cwd=work, env=ENV)
    assert real.returncode == 0, real.stderr
    assert real.stdout == dry.stdout
    return real.stdout, real.stderr


def rerun_lines(text: str) -> dict[str, str]:
    """job -> 'old -> new  why' from the report's "Jobs to rerun" block."""
    lines = text.split("Jobs to rerun", 1)[1].splitlines()[1:]
    block = [line.strip() for line in lines if line.startswith("  ")]
    return {line.split()[0]: line.split(None, 1)[1] for line in block}


def test_work2_out_of_memory_then_recover_reruns_only_work2_and_postprocess(tmp_path: Path) -> None:
    spec = diamond(tmp_path, work2_mb=200)
    db = tmp_path / "torc.db"
    wf = create(db, spec)
    run(db, wf, tmp_path, expect=1)

    rows = jobs(db, wf)
    assert {n: (r["status"], r["reason"]) for n, r in rows.items()} == {
        "preprocess": ("completed", None), "work1": ("completed", None), "work2": ("failed", "oom"),
        "postprocess": ("canceled", "upstream job work2 failed")}
    assert not (tmp_path / "out" / "f5.json").exists()  # postprocess did not run on missing data
    kept = {name: attempts_of(db, wf)[name] for name in ("preprocess", "work1")}

    explain = json.loads(torc(db, "jobs", "explain", wf, "postprocess", "-f", "json", cwd=tmp_path, env=ENV).stdout)
    assert explain["reason"].startswith("canceled because upstream job work2 failed")
    explain = json.loads(torc(db, "jobs", "explain", wf, "work2", "-f", "json", cwd=tmp_path, env=ENV).stdout)
    assert explain["ended_because"] == "oom" and explain["results"][0]["reason"] == "oom"
    assert explain["reason"].startswith("failed (oom): out of memory") and "torc recover" in explain["reason"]
    status = torc(db, "workflows", "status", wf, "-f", "json", cwd=tmp_path, env=ENV)
    assert status.returncode == 1
    from torc_slurm.reports.jobs import failure_reasons  # what `workflows status` can show per reason
    from torc_slurm.store.db import Database

    with Database(db, create=False) as database:
        assert failure_reasons(database, wf) == {"oom": 1, "upstream failed": 1}

    report, notes = recover(db, wf, tmp_path)
    plan = rerun_lines(report)
    assert set(plan) == {"work2", "postprocess"}
    assert plan["work2"].startswith("failed -> ready") and "oom: memory 150 MiB -> 225 MiB" in plan["work2"]
    assert plan["postprocess"].startswith("canceled -> blocked") and "downstream of work2" in plan["postprocess"]
    assert "Rerun with: torc run" in report and "2 jobs reset" in notes

    rows = jobs(db, wf)
    assert rows["work2"]["memory_bytes"] == 225 * 2**20 and rows["work2"]["resource_requirements"] == "large"
    assert rows["work1"]["memory_bytes"] == 150 * 2**20  # the shared entry is not changed
    events = query(db, "SELECT kind, message FROM events WHERE workflow_id = ? AND kind = 'recover'", (wf,))
    assert [e["message"] for e in events] == ["job work2: oom: memory 150 MiB -> 225 MiB",
                                              "run 2: 2 jobs set to run again (work2, postprocess)"]

    run(db, wf, tmp_path, expect=0)
    after = attempts_of(db, wf)
    assert {name: after[name] for name in kept} == kept  # same attempts, same end times
    assert [(a, s) for a, s, _ in after["work2"]] == [(1, "failed"), (2, "completed")]
    assert [(a, s) for a, s, _ in after["postprocess"]] == [(1, "completed")]
    assert json.loads((tmp_path / "out" / "f5.json").read_text()) == {"total": 4 + 16 + 36 + 64 + 100 + 144}


def test_postprocess_timed_out_then_recover_reruns_only_postprocess_with_more_runtime(tmp_path: Path) -> None:
    spec = diamond(tmp_path, post_sleep=3.3, post_enforced=True)  # runtime 2 s, killed at 2 x 1.5 = 3 s
    db = tmp_path / "torc.db"
    wf = create(db, spec)
    run(db, wf, tmp_path, expect=1)

    rows = jobs(db, wf)
    assert (rows["postprocess"]["status"], rows["postprocess"]["reason"]) == ("failed", "timeout")
    assert all(rows[n]["status"] == "completed" for n in ("preprocess", "work1", "work2"))
    kept = {name: attempts_of(db, wf)[name] for name in ("preprocess", "work1", "work2")}
    shown = torc(db, "reports", "results", wf, "-f", "json", cwd=tmp_path, env=ENV)
    assert [r["reason"] for r in json.loads(shown.stdout) if r["job"] == "postprocess"] == ["timeout"]

    report, _ = recover(db, wf, tmp_path)
    plan = rerun_lines(report)
    assert set(plan) == {"postprocess"} and "timeout: runtime 2 s -> 3 s" in plan["postprocess"]
    assert jobs(db, wf)["postprocess"]["runtime_s"] == 3

    run(db, wf, tmp_path, expect=0)
    after = attempts_of(db, wf)
    assert {name: after[name] for name in kept} == kept
    assert [(a, s) for a, s, _ in after["postprocess"]] == [(1, "failed"), (2, "completed")]


def test_a_job_that_cannot_grow_further_is_reported_not_rerun(tmp_path: Path) -> None:
    """Without schedulers the cap is the largest node a runner of the workflow had: 0.15 GiB here.
    work2 grows to it once, is killed again, and is then reported as unable to grow (exit 1)."""
    spec = diamond(tmp_path, work2_mb=200)
    db = tmp_path / "torc.db"
    wf = create(db, spec)
    fresh = torc(db, "recover", wf, cwd=tmp_path, env=ENV)
    assert fresh.returncode == 0 and "nothing to recover" in fresh.stdout
    run(db, wf, tmp_path, 1, "--memory-gb", 0.15)

    report, _ = recover(db, wf, tmp_path)
    assert "oom: memory 150 MiB -> 154 MiB (capped: the largest node)" in rerun_lines(report)["work2"]
    run(db, wf, tmp_path, 1, "--memory-gb", 0.15)
    assert jobs(db, wf)["work2"]["reason"] == "oom"

    dry = torc(db, "recover", wf, "--dry-run", cwd=tmp_path, env=ENV)
    real = torc(db, "recover", wf, cwd=tmp_path, env=ENV)
    assert dry.returncode == real.returncode == 1 and dry.stdout == real.stdout
    assert "Cannot grow" in real.stdout and "work2  oom: cannot grow, memory 154 MiB" in real.stdout
    assert jobs(db, wf)["work2"]["status"] == "failed"
