"""Helpers shared by the CLI tests: run `torc` in-process on a real queue file, drive jobs to an end."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path

from click.testing import CliRunner, Result

from torc_slurm.cli import torc

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


def invoke(db: Path, *args: object, input: str | None = None, env: dict[str, str] | None = None) -> Result:
    """`torc --db DB ARGS…`. No exception may escape: domain errors must become exit codes."""
    runner = CliRunner()
    return runner.invoke(torc, ["--db", str(db), *map(str, args)], input=input, env=env, catch_exceptions=False)


def write_spec(folder: Path, text: str, name: str = "spec.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def create(db: Path, spec: Path) -> int:
    result = invoke(db, "workflows", "create", spec, "-f", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["workflow_id"]


def finish_job(db_path: Path, workflow_id: int, name: str, status: str = "completed", return_code: int = 0,
               message: str | None = None, peak_memory_bytes: int | None = None) -> int:
    """Claim the ready job ``name`` as a fake runner and report ``status``; returns its id."""
    from torc_slurm.store.db import Database
    from torc_slurm.store.queue import Outcome, Queue, Started

    with Database(db_path, create=False) as db:
        job_id = db.read("SELECT id FROM jobs WHERE workflow_id = ? AND name = ?", (workflow_id, name))[0][0]
        queue = Queue(db, workflow_id)
        runner = queue.register_runner(hostname="node-7", pid=4242, slurm_job_id="991")
        claimed = queue.cycle(runner, choose=lambda ready: [j.job_id for j in ready if j.job_id == job_id]).claimed
        assert [c.id for c in claimed] == [job_id], f"{name} was not ready"
        attempt, token = claimed[0].attempt, claimed[0].lease_token
        now = time.time()
        queue.cycle(runner, started=[Started(job_id, token)],
                    outcomes=[Outcome(job_id, attempt, status, token, return_code=return_code,  # type: ignore[arg-type]
                                      started_at=now - 2.5, ended_at=now, peak_memory_bytes=peak_memory_bytes,
                                      message=message)])
        queue.finish_runner(runner)
    return job_id
