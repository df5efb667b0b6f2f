"""At 80 columns no table cuts a word: `workflows status`, `workflows list`, `jobs list` and `jobs
explain` on a workflow with long job names, a long scheduler name ("highmem_cluster": the reported
"highmem_clust/er") and a job in every state ("comple…": the reported "completed"). Rendered
through the commands (CliRunner, COLUMNS=80) and through a rich Console of width 80."""

from __future__ import annotations

import io
import re
import sqlite3
from pathlib import Path

import pytest
from rich.console import Console

from torc_slurm.states import ALL

from . import finish_job, invoke, write_spec

LONG = "preprocess_the_very_long_named_input_dataset_for_the_highmem_analysis_step"


@pytest.fixture()
def every_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TORC_DB", raising=False)
    jobs = "\n".join(f'  - {{name: {LONG}_{i}, command: "true", scheduler: highmem_cluster, '
                     f'resource_requirements: big}}' for i in range(len(ALL) + 1))
    spec = write_spec(tmp_path, f"""
name: a_workflow_with_a_rather_long_name_to_fold_in_the_list_of_workflows
resource_requirements:
  - {{name: big, num_cpus: 64, num_gpus: 8, memory: 1500g, runtime: P2DT3H}}
slurm_schedulers:
  - {{name: highmem_cluster, walltime: "48:00:00", mem: 2000g, gres: "gpu:8"}}
jobs:
{jobs}
""")
    db = tmp_path / "torc.db"
    assert invoke(db, "workflows", "create", spec).exit_code == 0
    assert invoke(db, "workflows", "init", 1).exit_code == 0
    finish_job(db, 1, f"{LONG}_0", status="failed", return_code=137, message="killed: out of memory")
    conn = sqlite3.connect(db)   # one job in every state (the counts trigger follows)
    for i, status in enumerate(ALL, start=1):
        conn.execute("UPDATE jobs SET status = ? WHERE name = ?", (status, f"{LONG}_{i}"))
    conn.commit()
    conn.close()
    return db


def check_80(text: str, words: list[str]) -> None:
    lines = text.splitlines()
    assert lines and max(len(line) for line in lines) <= 80, "\n".join(line for line in lines if len(line) > 80)
    for word in words:
        assert re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text), f"{word!r} is not whole in:\n{text}"


def test_jobs_list_at_80_columns(every_state: Path) -> None:
    result = invoke(every_state, "jobs", "list", 1, env={"COLUMNS": "80"})
    assert result.exit_code == 0
    check_80(result.stdout, [*ALL, "highmem_cluster", "1.5 TiB", "2d3h"])


def test_workflows_status_at_80_columns(every_state: Path) -> None:
    result = invoke(every_state, "workflows", "status", 1, env={"COLUMNS": "80"})
    assert result.exit_code == 1   # a job failed
    check_80(result.stdout, [s for s in ALL if s != "failed"] + ["failed", "Last failures", "out of memory"])


def test_workflows_list_and_explain_at_80_columns(every_state: Path) -> None:
    listed = invoke(every_state, "workflows", "list", env={"COLUMNS": "80"})
    check_80(listed.stdout, ["initialized", "Failed"])
    explained = invoke(every_state, "jobs", "explain", 1, f"{LONG}_0", env={"COLUMNS": "80"})
    check_80(explained.stdout, ["failed", "killed: out of memory", "highmem_cluster"])


def test_status_view_on_a_console_of_width_80(every_state: Path) -> None:
    from torc_slurm.cli.status_view import status_view, watch_view
    from torc_slurm.reports.status import workflow_status
    from torc_slurm.store.db import Database

    with Database(every_state, create=False) as db:
        report = workflow_status(db, 1)
    for view in (status_view(report, 80), watch_view(report, 80, 5)):
        out = io.StringIO()
        Console(file=out, width=80, force_terminal=False, color_system=None).print(view)
        check_80(out.getvalue(), [s for s in ALL if report["counts"][s]])
