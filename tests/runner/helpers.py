"""Shared builders for the runner and `torc run` tests, all on real queue files and real processes.

* ``write_spec`` / ``create_workflow``: a spec in a tmp folder, compiled into a tmp DB, initialized.
* ``run_runner``: a ``Runner`` in this process (pytest's main thread, so it may install its signal
  handlers), with the workflow's settings and any ``RunnerConfig`` override.
* ``torc`` / ``start_torc``: the ``torc`` command line as a subprocess, with an environment scrubbed
  of Slurm/GPU variables so the node detection sees only what the test declares.
* ``wait_until``: bounded polling of a real condition (the DB, a file), never a bare sleep.
* ``RECORDER``: a job body (``python recorder.py OUT_DIR SECONDS``) that writes what the job saw:
  its TORC_* variables, GPU ids, CPU slots, OMP_NUM_THREADS, CPU affinity, pid and start/end times.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
PYTHON = sys.executable
TORC = [PYTHON, "-m", "torc_slurm"]

RECORDER = '''\
import json, os, sys, time
start = time.time()
out_dir, seconds = sys.argv[1], float(sys.argv[2])
time.sleep(seconds)
names = ("TORC_WORKFLOW_ID", "TORC_JOB_ID", "TORC_JOB_NAME", "TORC_ATTEMPT", "TORC_OUTPUT_DIR",
         "TORC_CPU_IDS", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")
record = dict((n, os.environ.get(n)) for n in names)
record.update(pid=os.getpid(), start=start, end=time.time(), affinity=sorted(os.sched_getaffinity(0)))
path = os.path.join(out_dir, os.environ["TORC_JOB_NAME"] + ".json")
with open(path + ".tmp", "w") as f:
    json.dump(record, f)
os.replace(path + ".tmp", path)
'''


def write_spec(folder: Path, text: str, name: str = "spec.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def write_spec_data(folder: Path, data: dict[str, Any], name: str = "spec.json") -> Path:
    """A spec from a dict, as JSON (which the YAML loader reads), so commands need no YAML quoting."""
    path = folder / name
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return path


def write_recorder(folder: Path) -> Path:
    path = folder / "recorder.py"
    path.write_text(RECORDER, encoding="utf-8")
    return path


def create_workflow(db_path: Path, spec: Path, *, working_dir: Path | None = None, init: bool = True) -> int:
    """Compile ``spec`` into the DB (working dir: ``working_dir`` or the spec's folder); initialize it."""
    from torc_slurm.compiler import compile_workflow
    from torc_slurm.spec.load import load_spec
    from torc_slurm.store.db import Database
    from torc_slurm.store.workflows import add_workflow, initialize_workflow

    compiled = compile_workflow(load_spec(spec), str(spec))
    with Database(db_path) as db:
        workflow_id = add_workflow(db, compiled, working_dir=working_dir or spec.parent, source=str(spec))
        if init:
            initialize_workflow(db, workflow_id)
    return workflow_id


def run_runner(db_path: Path, workflow_id: int, *, node=None, output_dir: Path | None = None,  # noqa: ANN001
               **options: Any):  # noqa: ANN201
    """Build a runner like `torc run` does (workflow settings, then ``options``) and run it here.
    Returns (runner, summary); ``runner.db.lock.acquisitions`` counts its lock takes."""
    from torc_slurm.runner.resources import detect_node
    from torc_slurm.runner.session import make_runner
    from torc_slurm.store.db import Database

    options.setdefault("wait_for_new_jobs_s", None)
    options.setdefault("monitor_interval_s", 0.2)
    db = Database(db_path, create=False)
    try:
        runner = make_runner(db, workflow_id, node or detect_node(environ={}), output_dir=output_dir, **options)
        summary = runner.run()
    finally:
        db.close()
    return runner, summary


# -- the command line as a subprocess ------------------------------------------------------------
def clean_env(**extra: str) -> dict[str, str]:
    """This environment without Slurm, GPU or TORC_* variables (the test declares the node)."""
    drop = ("SLURM_", "TORC_", "CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


def torc(db: Path, *args: object, cwd: Path, timeout: float = 120, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess:
    """`torc --db DB ARGS…` to completion, output captured."""
    return subprocess.run([*TORC, "--db", str(db), *map(str, args)], cwd=cwd, env=env or clean_env(),
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def start_torc(db: Path, *args: object, cwd: Path, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`torc --db DB ARGS…` in the background; stdout and stderr go to ``log`` (a pipe could fill)."""
    with open(log, "wb") as out:
        return subprocess.Popen([*TORC, "--db", str(db), *map(str, args)], cwd=cwd, env=env or clean_env(),
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def finish(proc: subprocess.Popen, log: Path, timeout: float = 60) -> int:
    """Wait for ``proc``; on timeout kill it and fail with its log."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"{proc.args} did not exit in {timeout} s; log:\n{log.read_text()}") from None


# -- waiting on and reading the DB ----------------------------------------------------------------
def wait_until(condition: Callable[[], Any], *, timeout: float = 30.0, what: str = "condition",
               interval: float = 0.05) -> Any:
    """Poll ``condition`` until it returns something truthy (returned) or ``timeout`` passes (fail)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def query(db_path: Path, sql: str, params: tuple = ()) -> list[dict[str, Any]]:
    """One locked read of the queue file, rows as dicts."""
    from torc_slurm.store.db import Database

    with Database(db_path, create=False) as db:
        return [dict(row) for row in db.read(sql, params)]


def jobs(db_path: Path, workflow_id: int) -> dict[str, dict[str, Any]]:
    """name -> the job's row."""
    return {r["name"]: r for r in query(db_path, "SELECT * FROM jobs WHERE workflow_id = ? ORDER BY id",
                                        (workflow_id,))}


def results(db_path: Path, workflow_id: int) -> list[dict[str, Any]]:
    """Every attempt record, with the job's name, in insertion order."""
    return query(db_path, "SELECT r.*, j.name FROM results r JOIN jobs j ON j.id = r.job_id"
                          " WHERE r.workflow_id = ? ORDER BY r.id", (workflow_id,))


def statuses(db_path: Path, workflow_id: int) -> dict[str, str]:
    return {name: row["status"] for name, row in jobs(db_path, workflow_id).items()}


def count_status(db_path: Path, workflow_id: int, status: str) -> int:
    return query(db_path, "SELECT COUNT(*) AS n FROM jobs WHERE workflow_id = ? AND status = ?",
                 (workflow_id, status))[0]["n"]


def read_records(folder: Path) -> dict[str, dict[str, Any]]:
    """The RECORDER files: job name -> what the job saw."""
    return {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")}


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie (a zombie has exited; only its parent must reap it)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def overlaps(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]
