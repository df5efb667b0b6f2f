"""Jobs that name a container image: run inside it with the node's container runtime (a stand-in
`apptainer` script records its arguments, then runs the command as a runtime would), or natively
when there is none, which one event per workflow says."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from torc_slurm.runner.resources import detect_node

from .helpers import create_workflow, query, results, run_runner, write_spec

SPEC = """
    name: images
    jobs:
      - {name: one, command: "echo \\"one $TORC_JOB_NAME\\" > one.txt", image: "ubuntu:24.04"}
      - {name: two, command: "echo two > two.txt", image: /images/tool.sif}
      - {name: plain, command: "echo plain > plain.txt"}
"""


def stand_in_runtime(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`apptainer exec [options] IMAGE bash -c CMD`: logs its argv as JSON, then runs the command."""
    folder.mkdir()
    log = folder / "calls.jsonl"
    script = folder / "apptainer"
    script.write_text(f"""#!/usr/bin/env python3
import json, os, sys
with open({str(log)!r}, "a") as out:
    out.write(json.dumps(sys.argv[1:]) + "\\n")
args = sys.argv[1:]
os.execvp("bash", ["bash", "-c", args[-1]])
""")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return log


def test_jobs_run_inside_their_image_with_the_runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = stand_in_runtime(tmp_path / "bin", monkeypatch)
    db = tmp_path / "torc.db"
    wf = create_workflow(db, write_spec(tmp_path, SPEC))
    run_runner(db, wf, node=detect_node(environ={}, num_cpus=2), output_dir=tmp_path / "out",
               container_runtime="apptainer")
    assert {r["name"]: r["status"] for r in results(db, wf)} == {"one": "completed", "two": "completed",
                                                                 "plain": "completed"}
    assert (tmp_path / "one.txt").read_text() == "one one\n"  # the environment passed through
    calls = sorted((json.loads(line) for line in log.read_text().splitlines()), key=lambda a: a[-1])
    assert len(calls) == 2  # the job without an image ran natively
    images = {call[call.index("bash") - 1] for call in calls}
    assert images == {"docker://ubuntu:24.04", "/images/tool.sif"}
    assert all(call[0] == "exec" and "--bind" in call and call[-2] == "-c" for call in calls)
    assert not query(db, "SELECT * FROM events WHERE kind = 'image_not_used'")


def test_without_a_runtime_images_are_ignored_and_said_once(tmp_path: Path) -> None:
    db = tmp_path / "torc.db"
    wf = create_workflow(db, write_spec(tmp_path, SPEC))
    run_runner(db, wf, node=detect_node(environ={}, num_cpus=1), output_dir=tmp_path / "out", container_runtime=None)
    assert all(r["status"] == "completed" for r in results(db, wf))
    assert (tmp_path / "two.txt").read_text() == "two\n"
    [event] = query(db, "SELECT * FROM events WHERE kind = 'image_not_used'")
    assert "run natively" in event["message"] and "names no container_runtime" in event["message"]
    # a second runner of the same workflow does not say it again
    from torc_slurm.store.db import Database
    from torc_slurm.store.restarts import plan_reset

    with Database(db) as handle:
        plan_reset(handle, wf).apply(handle)
    run_runner(db, wf, node=detect_node(environ={}, num_cpus=1), output_dir=tmp_path / "out",
               container_runtime="no-such-runtime-here")
    assert len(query(db, "SELECT * FROM events WHERE kind = 'image_not_used'")) == 1
