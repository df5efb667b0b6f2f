"""The runner loop with real job processes: placement (GPU ids, CPU slots, pinning, TORC_* variables),
walltime fitting and wind-down, outcomes (failures, launch errors, missing outputs, resource figures),
scheduler binding, queue-depth mode, and an idle loop that neither busy-waits nor burns CPU.

Runners run in this process (``run_runner``) unless the test is about a separate runner.
"""

from __future__ import annotations

import os
import signal
import time
from itertools import combinations
from pathlib import Path

import psutil
import pytest

from torc_slurm.runner.resources import detect_node
from torc_slurm.runner.walltime import EndTime

from .helpers import (PYTHON, alive, create_workflow, finish, jobs, overlaps, query, read_records,
                      results, run_runner, start_torc, wait_until, write_recorder, write_spec)

HOST_CPUS = sorted(os.sched_getaffinity(0))


@pytest.fixture()
def work(tmp_path: Path) -> Path:
    (tmp_path / "records").mkdir()
    write_recorder(tmp_path)
    return tmp_path


def recorder(work: Path, seconds: float) -> str:
    return f"{PYTHON} {work / 'recorder.py'} {work / 'records'} {seconds}"


# -- placement ----------------------------------------------------------------------------------
def test_gpu_ids_and_cpu_slots_never_overlap(work: Path) -> None:
    """8 one-GPU jobs, 2 two-GPU jobs and CPU jobs of 1/2/4 CPUs on a declared 8-CPU/4-GPU node: every
    job gets exactly its share, and jobs running at the same time never share a GPU or a CPU slot."""
    cmd = recorder(work, 0.4)
    spec = write_spec(work, f"""
        name: placement
        jobs:
          - {{name: "gpu1_{{i}}", command: "{cmd}", resource_requirements: gpu1, parameters: {{i: "1:8"}}}}
          - {{name: "gpu2_{{i}}", command: "{cmd}", resource_requirements: gpu2, parameters: {{i: "1:2"}}}}
          - {{name: "cpu1_{{i}}", command: "{cmd}", resource_requirements: cpu1, parameters: {{i: "1:3"}}}}
          - {{name: "cpu2_{{i}}", command: "{cmd}", resource_requirements: cpu2, parameters: {{i: "1:3"}}}}
          - {{name: "cpu4_{{i}}", command: "{cmd}", resource_requirements: cpu4, parameters: {{i: "1:2"}}}}
        resource_requirements:
          - {{name: gpu1, num_cpus: 1, num_gpus: 1, memory: 100m, runtime: PT1M}}
          - {{name: gpu2, num_cpus: 2, num_gpus: 2, memory: 100m, runtime: PT1M}}
          - {{name: cpu1, num_cpus: 1, memory: 100m, runtime: PT1M}}
          - {{name: cpu2, num_cpus: 2, memory: 100m, runtime: PT1M}}
          - {{name: cpu4, num_cpus: 4, memory: 100m, runtime: PT1M}}
    """)
    db = work / "torc.db"
    wf = create_workflow(db, spec)
    out = work / "out"
    node = detect_node(environ={}, num_cpus=8, num_gpus=4, memory_gb=16)
    runner, summary = run_runner(db, wf, node=node, output_dir=out)

    assert summary.completed == 18 and summary.failed == 0, summary
    rows = jobs(db, wf)
    assert {r["status"] for r in rows.values()} == {"completed"}
    records = read_records(work / "records")
    assert set(records) == set(rows)
    spans = {r["name"]: (r["started_at"], r["ended_at"]) for r in results(db, wf)}
    for name, rec in records.items():
        row = rows[name]
        gpus = rec["CUDA_VISIBLE_DEVICES"].split(",") if rec["CUDA_VISIBLE_DEVICES"] else []
        cpus = [int(c) for c in rec["TORC_CPU_IDS"].split(",")]
        assert len(gpus) == len(set(gpus)) == row["num_gpus"], (name, rec)
        assert set(gpus) <= {"0", "1", "2", "3"}
        assert len(cpus) == len(set(cpus)) == row["num_cpus"] and set(cpus) <= set(range(8)), (name, rec)
        assert rec["OMP_NUM_THREADS"] == str(row["num_cpus"])
        assert (rec["TORC_WORKFLOW_ID"], rec["TORC_JOB_ID"], rec["TORC_JOB_NAME"], rec["TORC_ATTEMPT"],
                rec["TORC_OUTPUT_DIR"]) == (str(wf), str(row["id"]), name, "1", str(out.absolute()))
        rec["gpus"], rec["cpus"] = set(gpus), set(cpus)
        # More slots (8) than host CPUs: no job is pinned (else some would share a core, some not).
        if len(HOST_CPUS) >= 8:
            assert rec["affinity"] == sorted(HOST_CPUS[c] for c in cpus), (name, rec)
        else:
            assert rec["affinity"] == HOST_CPUS, (name, rec)
    concurrent_gpu = 0
    for a, b in combinations(records, 2):
        if overlaps(spans[a], spans[b]):
            assert not records[a]["gpus"] & records[b]["gpus"], (a, b, records[a], records[b])
            assert not records[a]["cpus"] & records[b]["cpus"], (a, b, records[a], records[b])
            concurrent_gpu += bool(records[a]["gpus"] and records[b]["gpus"])
    assert concurrent_gpu >= 3, "the GPU jobs never ran side by side: the test proves nothing"
    # At some moment the node was full: 4 GPUs or 8 CPU slots held at once.
    peak_gpus = max(sum(len(records[n]["gpus"]) for n in records if spans[n][0] <= spans[m][0] < spans[n][1])
                    for m in records)
    assert peak_gpus == 4


def test_jobs_are_pinned_when_slots_fit_the_host(work: Path) -> None:
    """As many slots as host CPUs: each job's affinity is exactly the host CPUs behind its slots."""
    cmd = recorder(work, 0.2)
    spec = write_spec(work, f"""
        name: pinning
        jobs:
          - {{name: "one_{{i}}", command: "{cmd}", resource_requirements: one, parameters: {{i: "1:4"}}}}
          - {{name: all, command: "{cmd}", resource_requirements: all}}
        resource_requirements:
          - {{name: one, num_cpus: 1, memory: 10m, runtime: PT1M}}
          - {{name: all, num_cpus: {len(HOST_CPUS)}, memory: 10m, runtime: PT1M}}
    """)
    db = work / "torc.db"
    wf = create_workflow(db, spec)
    _, summary = run_runner(db, wf, node=detect_node(environ={}, num_cpus=len(HOST_CPUS)), output_dir=work / "out")
    assert summary.completed == 5
    for name, rec in read_records(work / "records").items():
        slots = [int(c) for c in rec["TORC_CPU_IDS"].split(",")]
        assert rec["affinity"] == sorted(HOST_CPUS[s] for s in slots), (name, rec)
    assert read_records(work / "records")["all"]["affinity"] == HOST_CPUS


# -- walltime -------------------------------------------------------------------------------------
def test_walltime_only_jobs_that_fit_start(work: Path) -> None:
    """15 s left (end in 20 s, 5 s buffer): jobs declaring 1 s and 8 s run; 25 s and 1 h never start."""
    spec = write_spec(work, """
        name: walltime
        jobs:
          - {name: short, command: "true", resource_requirements: short}
          - {name: medium, command: "true", resource_requirements: medium}
          - {name: long, command: "true", resource_requirements: long}
          - {name: huge, command: "true", resource_requirements: huge}
          - {name: after_short, command: "true", resource_requirements: short, depends_on: [short]}
        resource_requirements:
          - {name: short, runtime: PT1S, memory: 10m}
          - {name: medium, runtime: PT8S, memory: 10m}
          - {name: long, runtime: PT25S, memory: 10m}
          - {name: huge, runtime: PT1H, memory: 10m}
    """)
    db = work / "torc.db"
    wf = create_workflow(db, spec)
    runner, summary = run_runner(db, wf, node=detect_node(environ={}, num_cpus=2), output_dir=work / "out",
                                 end_time=EndTime(fixed=time.time() + 20), buffer_s=5)
    rows = jobs(db, wf)
    assert {n: r["status"] for n, r in rows.items()} == {
        "short": "completed", "medium": "completed", "after_short": "completed", "long": "ready", "huge": "ready"}
    assert rows["long"]["attempt"] == rows["huge"]["attempt"] == 0
    assert {r["name"] for r in results(db, wf)} == {"short", "medium", "after_short"}
    assert summary.exit_reason == "no job can run here and none is running elsewhere"
    assert summary.unrunnable == []  # they fit the node, only not the time


def test_walltime_wind_down_returns_jobs_to_ready(work: Path) -> None:
    """Jobs that outlive their declared runtime are stopped when the end time nears: a job that
    supports termination gets SIGTERM, the other SIGKILL after the grace period; both go back to
    ready with a 'terminated' attempt record, and the runner's end is not a failure."""
    spec = write_spec(work, f"""
        name: winddown
        jobs:
          - name: polite
            command: "trap 'echo term > {work}/polite.term; exit 143' TERM; echo $$ > {work}/polite.pid; sleep 1000 & wait"
            supports_termination: true
          - name: rude
            command: "trap 'echo term > {work}/rude.term' TERM; echo $$ > {work}/rude.pid; sleep 1000 & wait; sleep 1000"
        resource_requirements:
          - {{name: default, runtime: PT1S, memory: 10m}}
    """)
    db = work / "torc.db"
    wf = create_workflow(db, spec)
    started = time.monotonic()
    runner, summary = run_runner(db, wf, node=detect_node(environ={}, num_cpus=2), output_dir=work / "out",
                                 end_time=EndTime(fixed=time.time() + 4), buffer_s=1, termination_grace_s=1)
    took = time.monotonic() - started
    assert runner.stop_reason == "walltime" and summary.terminated == 2
    assert 3 <= took < 15  # stopped at the end time less the buffer; rude killed after 1 s, not 30
    rows = jobs(db, wf)
    assert [(r["status"], r["attempt"], r["runner_id"]) for r in rows.values()] == [("ready", 1, None)] * 2
    by_name = {r["name"]: r for r in results(db, wf)}
    assert by_name["polite"]["status"] == by_name["rude"]["status"] == "terminated"
    assert by_name["polite"]["return_code"] == 143 and (work / "polite.term").exists()
    assert by_name["rude"]["signal"] == signal.SIGKILL and not (work / "rude.term").exists()
    for name in ("polite", "rude"):
        assert not alive(int((work / f"{name}.pid").read_text()))
    runners = query(db, "SELECT status FROM runners WHERE workflow_id = ?", (wf,))
    assert [r["status"] for r in runners] == ["finished"]


# -- outcomes ---------------------------------------------------------------------------------------
HEAVY = """\
import sys, time
block = bytearray(int(sys.argv[1]))
block[::4096] = b"x" * len(block[::4096])  # touch every page: it counts in the peak RSS
start = time.process_time()
while time.process_time() - start < 0.3:
    pass
"""


def test_outcomes_missing_output_missing_binary_and_resource_figures(work: Path) -> None:
    (work / "heavy.py").write_text(HEAVY)
    # More than this (runner) process holds, so its wait4 figure is the job's own.
    heavy_bytes = psutil.Process().memory_info().rss + 60 * 2**20
    spec = write_spec(work, f"""
        name: outcomes
        jobs:
          - {{name: no_output, command: "echo hi", output_files: [out]}}
          - {{name: with_output, command: "echo hi > made.txt", output_files: [made]}}
          - {{name: no_binary, command: "/no/such/binary --flag"}}
          - {{name: exits_3, command: "exit 3"}}
          - {{name: heavy, command: "{PYTHON} {work / 'heavy.py'} {heavy_bytes}"}}
        files:
          - {{name: out, path: never.txt}}
          - {{name: made, path: made.txt}}
    """)
    db = work / "torc.db"
    wf = create_workflow(db, spec)
    _, summary = run_runner(db, wf, node=detect_node(environ={}, num_cpus=2), output_dir=work / "out")
    assert (summary.completed, summary.failed) == (2, 3)
    by_name = {r["name"]: r for r in results(db, wf)}
    assert {n: r["status"] for n, r in by_name.items()} == {
        "no_output": "failed", "with_output": "completed", "no_binary": "failed", "exits_3": "failed",
        "heavy": "completed"}
    assert by_name["no_output"]["return_code"] == 0
    assert "did not create its output files: never.txt" in by_name["no_output"]["message"]
    assert by_name["no_binary"]["return_code"] == 127
    assert by_name["exits_3"]["return_code"] == 3 and jobs(db, wf)["exits_3"]["return_code"] == 3
    heavy = by_name["heavy"]
    assert heavy["peak_rss_bytes"] >= heavy_bytes, heavy
    # A tiny job's wait4 peak is only the runner's own pages mapped before exec: not reported.
    assert by_name["with_output"]["peak_rss_bytes"] is None
    assert heavy["cpu_time_s"] >= 0.25, heavy
    assert heavy["exec_s"] == pytest.approx(heavy["ended_at"] - heavy["started_at"]) and heavy["exec_s"] >= 0.3
    stderr = (work / "out" / "job_stdio" / f"wf{wf}_job{by_name['no_binary']['job_id']}_attempt1.err").read_text()
    assert "/no/such/binary" in stderr


def test_missing_working_dir_is_a_launch_error(work: Path) -> None:
    spec = write_spec(work, """
        name: nowhere
        jobs:
          - {name: a, command: "true"}
    """)
    db = work / "torc.db"
    wf = create_workflow(db, spec)
    _, summary = run_runner(db, wf, node=detect_node(environ={}, num_cpus=1), output_dir=work / "out",
                            working_dir=work / "gone")
    assert summary.failed == 1
    [row] = results(db, wf)
    assert row["status"] == "failed" and row["return_code"] is None
    assert "cannot use working directory" in row["message"] and str(work / "gone") in row["message"]


def test_queue_depth_mode_ignores_resources(work: Path) -> None:
    """--max-parallel-jobs 2: jobs asking for 64 CPUs and 8 GPUs run on a 1-CPU node, at most 2 at once."""
    cmd = recorder(work, 0.3)
    spec = write_spec(work, f"""
        name: depth
        jobs:
          - {{name: "big_{{i}}", command: "{cmd}", resource_requirements: big, parameters: {{i: "1:6"}}}}
        resource_requirements:
          - {{name: big, num_cpus: 64, num_gpus: 8, memory: 4000g, runtime: PT1M}}
    """)
    db = work / "torc.db"
    wf = create_workflow(db, spec)
    _, summary = run_runner(db, wf, node=detect_node(environ={}, num_cpus=1), output_dir=work / "out",
                            max_parallel_jobs=2)
    assert summary.completed == 6
    spans = [(r["started_at"], r["ended_at"]) for r in results(db, wf)]
    peak = max(sum(1 for s in spans if s[0] <= t[0] < s[1]) for t in spans)
    assert peak == 2
    for rec in read_records(work / "records").values():
        assert rec["OMP_NUM_THREADS"] == "64" and rec["TORC_CPU_IDS"] is None


def test_scheduler_binding(work: Path) -> None:
    spec = write_spec(work, """
        name: bound
        jobs:
          - {name: on_a, command: "true", scheduler: a}
          - {name: on_b, command: "true", scheduler: b}
          - {name: anywhere, command: "true"}
        slurm_schedulers:
          - {name: a}
          - {name: b}
    """)
    db = work / "torc.db"
    node = detect_node(environ={}, num_cpus=2)
    strict = create_workflow(db, spec)
    run_runner(db, strict, node=node, output_dir=work / "out", scheduler="a", strict_scheduler=True)
    assert {n: r["status"] for n, r in jobs(db, strict).items()} == {
        "on_a": "completed", "on_b": "ready", "anywhere": "ready"}
    loose = create_workflow(db, spec)
    run_runner(db, loose, node=node, output_dir=work / "out", scheduler="a")
    assert {n: r["status"] for n, r in jobs(db, loose).items()} == {
        "on_a": "completed", "on_b": "ready", "anywhere": "completed"}
    run_runner(db, loose, node=node, output_dir=work / "out", scheduler="b", strict_scheduler=True)
    assert jobs(db, loose)["on_b"]["status"] == "completed"


# -- idle cost ------------------------------------------------------------------------------------------
def test_a_runner_busy_with_one_long_job_barely_takes_the_lock(work: Path) -> None:
    spec = write_spec(work, """
        name: longjob
        jobs:
          - {name: long, command: "sleep 2.5"}
    """)
    db = work / "torc.db"
    wf = create_workflow(db, spec)
    started = time.monotonic()
    runner, summary = run_runner(db, wf, node=detect_node(environ={}, num_cpus=2), output_dir=work / "out")
    took = time.monotonic() - started
    assert summary.completed == 1 and took >= 2.5
    # open + register + claim + a few cycles + final report + sign-off; a polling loop would take hundreds.
    assert runner.db.lock.acquisitions <= 10, runner.db.lock.acquisitions


def test_an_idle_runner_waits_on_the_change_signal(work: Path) -> None:
    """Runner B has nothing to do while runner A (a subprocess) runs the only job for ~3 s: B must
    wait on the change signal, not poll the lock, and exit as soon as A's job completes."""
    spec = write_spec(work, f"""
        name: idle
        jobs:
          - {{name: long, command: "sleep 3 && touch {work}/long.done"}}
    """)
    db = work / "torc.db"
    wf = create_workflow(db, spec)
    log = work / "a.log"
    runner_a = start_torc(db, "run", wf, "--num-cpus", 1, cwd=work, log=log)
    try:
        wait_until(lambda: jobs(db, wf)["long"]["status"] == "running", what="A to start the job")
        started = time.monotonic()
        runner_b, summary = run_runner(db, wf, node=detect_node(environ={}, num_cpus=1), output_dir=work / "out")
        idle_s = time.monotonic() - started
    finally:
        assert finish(runner_a, log) == 0, log.read_text()
    assert (work / "long.done").exists()
    assert summary.exit_reason == "workflow complete" and summary.completed == 0
    assert 1.5 <= idle_s < 12, idle_s
    # Open + settings + register + sign-off, and idle cycles at doubling intervals (0.05, 0.1, … s):
    # about 10 for 3 s idle. Polling the lock even at 10 Hz would take 30.
    assert runner_b.db.lock.acquisitions <= 13, (runner_b.db.lock.acquisitions, idle_s)


def test_runner_cpu_use_while_jobs_run_long(work: Path) -> None:
    """A runner whose 2 jobs sleep uses well under 1 % of a core (own CPU time, children excluded)."""
    spec = write_spec(work, """
        name: sleepy
        jobs:
          - {name: "nap_{i}", command: "sleep 30", supports_termination: true, parameters: {i: "1:2"}}
    """)
    db = work / "torc.db"
    wf = create_workflow(db, spec)
    log = work / "run.log"
    proc = start_torc(db, "run", wf, "--num-cpus", 2, "--monitor-interval", 5, cwd=work, log=log)
    try:
        wait_until(lambda: sum(r["status"] == "running" for r in jobs(db, wf).values()) == 2,
                   what="both jobs running")
        runner = psutil.Process(proc.pid)
        time.sleep(0.5)  # let start-up work (imports, first monitor sample) fall outside the window
        before, t0 = runner.cpu_times(), time.monotonic()
        time.sleep(5.0)  # the measurement window itself
        after, elapsed = runner.cpu_times(), time.monotonic() - t0
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = finish(proc, log)
    used = (after.user - before.user) + (after.system - before.system)
    # 1 % of a core is 0.05 s over 5 s. CPU times tick in 10 ms, so allow one extra tick of noise.
    assert used / elapsed <= 0.012, f"runner used {used:.3f} s CPU in {elapsed:.1f} s"
    assert rc == 143, log.read_text()
    assert {r["status"] for r in jobs(db, wf).values()} == {"ready"}



def test_a_job_signalled_just_before_the_runner_counts_as_terminated(work: Path) -> None:
    """scancel signals every process of the allocation, and a job may die of SIGTERM a moment before
    its runner hears its own SIGTERM: that job was stopped, not failed, and goes back to ready."""
    import threading

    spec = write_spec(work, f"""
        name: race
        jobs:
          - name: victim
            command: "touch {work}/dying; kill -TERM $$"
        resource_requirements:
          - {{name: default, runtime: PT1M, memory: 10m}}
    """)
    db = work / "torc.db"
    wf = create_workflow(db, spec)

    def signal_runner_after_the_job() -> None:
        wait_until(lambda: (work / "dying").exists(), timeout=30, what="the job to start dying")
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=signal_runner_after_the_job)
    thread.start()
    runner, summary = run_runner(db, wf, node=detect_node(environ={}, num_cpus=1), output_dir=work / "out")
    thread.join()
    assert runner.stop_reason == "SIGTERM"
    assert summary.failed == 0 and summary.terminated == 1
    assert [r["status"] for r in results(db, wf)] == ["terminated"]
    assert [r["status"] for r in jobs(db, wf).values()] == ["ready"]
