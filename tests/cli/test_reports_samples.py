"""`torc reports samples` and the per-job panels of `torc reports plot` (resource_monitor
time_series), and `generate_plots`: tables within 80 columns, JSON, the notes that say why nothing
was kept, the pure shaping of the per-job lines, and the files when the plot extra is installed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from torc_slurm.reports.plot import Attempt, job_series

from . import create, invoke, write_spec


@pytest.fixture()
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "80")
    for name in ("TORC_DB", "TORC_LOCK_KIND", "SLURM_CPUS_ON_NODE", "SLURM_MEM_PER_NODE", "SLURM_JOB_GPUS",
                 "SLURM_JOB_ID", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


LONG = "a_job_with_a_rather_long_name_that_has_to_fold_in_an_eighty_column_table"


@pytest.fixture()
def sampled(work: Path) -> tuple[Path, int]:
    """A time_series workflow run by a real runner, the interval shrunk for the test."""
    from runner.helpers import create_workflow, run_runner

    (work / "grow.py").write_text("import time\nkeep = []\nfor _ in range(6):\n"
                                  "    keep.append(bytearray(10 * 2**20))\n    time.sleep(0.25)\n")
    spec = write_spec(work, f"""
        name: series
        resource_monitor: {{granularity: time_series, generate_plots: true}}
        jobs:
          - {{name: {LONG}, command: "{sys.executable} {work / 'grow.py'}"}}
          - {{name: second, command: "{sys.executable} {work / 'grow.py'}", depends_on: [{LONG}]}}
    """)
    db = work / "torc.db"
    wf = create_workflow(db, spec)
    run_runner(db, wf, output_dir=work / "out", monitor_interval_s=0.05)
    return db, wf


def test_samples_lists_attempts_and_rows_within_80_columns(sampled: tuple[Path, int]) -> None:
    db, wf = sampled
    listed = invoke(db, "reports", "samples", wf)
    assert listed.exit_code == 0, listed.output
    assert max(map(len, listed.stdout.splitlines())) <= 80
    assert "second" in listed.stdout and "rows" in listed.stdout
    one = invoke(db, "reports", "samples", wf, "second")
    assert one.exit_code == 0 and max(map(len, one.stdout.splitlines())) <= 80
    assert "second attempt 1:" in one.stdout and "MiB" in one.stdout
    data = json.loads(invoke(db, "reports", "samples", wf, "second", "-f", "json").stdout)
    [attempt] = data["attempts"]
    assert data["resource_monitor"]["granularity"] == "time_series" and data["note"] is None
    assert attempt["samples"] == len(attempt["rows"]) >= 1
    assert [r["t"] for r in attempt["rows"]] == sorted(r["t"] for r in attempt["rows"])
    none = json.loads(invoke(db, "reports", "samples", wf, "second", "--attempt", "2", "-f", "json").stdout)
    assert none["attempts"] == [] and "no samples" in none["note"]
    unknown = invoke(db, "reports", "samples", wf, "nope")
    assert unknown.exit_code != 0 and "no job named" in unknown.stderr


@pytest.mark.parametrize(("monitor", "says"), [
    ("{enabled: false}", "enabled: false"),
    ("{granularity: summary}", "granularity is summary"),
    ("{granularity: time_series}", "no samples"),
])
def test_samples_says_why_there_are_none(work: Path, monitor: str, says: str) -> None:
    db = work / "torc.db"
    wf = create(db, write_spec(work, f"""
        name: quiet
        resource_monitor: {monitor}
        jobs:
          - {{name: a, command: "true"}}
    """))
    result = invoke(db, "reports", "samples", wf)
    assert result.exit_code == 0 and says in result.stdout, result.stdout
    assert json.loads(invoke(db, "reports", "samples", wf, "-f", "json").stdout)["attempts"] == []


# -- the per-job lines (pure) ----------------------------------------------------------------------
def attempt(job: str, job_id: int, number: int, start: float) -> Attempt:
    return Attempt(job, number, "completed", None, 1, start, start + 10, 1, 2**30, job_id=job_id)


def test_job_series_places_rows_at_their_attempts_start() -> None:
    attempts = [attempt("b", 2, 1, 105.0), attempt("a", 1, 1, 100.0), attempt("a", 1, 2, 120.0)]
    rows = {
        (1, 1): [{"t": 1.0, "cpu_percent": None, "memory_bytes": 2**30},
                 {"t": 2.0, "cpu_percent": 50.0, "memory_bytes": 2**31}],
        (2, 1): [{"t": 0.5, "cpu_percent": 100.0, "memory_bytes": 2**29}],
        (1, 2): [],                      # no rows: no line
        (9, 1): [{"t": 0.0, "cpu_percent": 1.0, "memory_bytes": 1}],  # no result (still running): no line
    }
    cpu, memory = job_series(attempts, rows, t0=100.0)
    assert [s.name for s in memory] == ["a", "b"]  # in start order
    assert (memory[0].x, memory[0].y) == ([1.0, 2.0], [1.0, 2.0])
    assert (cpu[0].x, cpu[0].y) == ([2.0], [50.0])  # the first pass has no CPU figure
    assert (memory[1].x, memory[1].y) == ([5.5], [0.5])
    retry = job_series([attempt("a", 1, 2, 120.0)], {(1, 2): rows[(1, 1)]}, t0=100.0)[1]
    assert retry[0].name == "a #2" and retry[0].x == [21.0, 22.0]


# -- files (the plot extra) ------------------------------------------------------------------------
def test_plot_draws_per_job_panels(sampled: tuple[Path, int], work: Path) -> None:
    pytest.importorskip("plotly")
    pytest.importorskip("matplotlib")
    from torc_slurm.reports.plot import plot_data
    from torc_slurm.store.db import Database

    db, wf = sampled
    with Database(db, create=False) as handle:
        data = plot_data(handle, wf)
    assert {s.name for s in data.job_memory} == {LONG, "second"}
    html, png = work / "p.html", work / "p.png"
    assert invoke(db, "reports", "plot", wf, "-o", html).exit_code == 0
    assert "job memory GiB" in html.read_text() and "second" in html.read_text()
    assert invoke(db, "reports", "plot", wf, "-o", png).exit_code == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_generate_plots_writes_once_per_round(sampled: tuple[Path, int], work: Path) -> None:
    """The in-process runner does not draw (the commands do): this is what they call at the end."""
    pytest.importorskip("plotly")
    from torc_slurm.reports.plot import plots_at_end
    from torc_slurm.store.db import Database

    db, wf = sampled
    with Database(db, create=False) as handle:
        assert plots_at_end(handle, wf, work / "out", "idle for 90 s") is None  # not finished: nothing
        message = plots_at_end(handle, wf, work / "out", "workflow complete")
        again = plots_at_end(handle, wf, work / "out", "workflow complete")
        events = handle.read("SELECT message, data FROM events WHERE workflow_id = ? AND kind = 'resource_plot'",
                             (wf,))
    target = work / "out" / "resource_plots" / f"workflow_{wf}.html"
    assert message == f"resource plot written to {target}" and target.stat().st_size > 0
    assert again == "resource plot: another runner draws it" and len(events) == 1
    assert json.loads(events[0]["data"])["path"] == str(target)
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]  # no temp file left


def test_generate_plots_without_the_extra_records_why(sampled: tuple[Path, int], work: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from torc_slurm.reports.plot import plots_at_end
    from torc_slurm.store.db import Database

    monkeypatch.setitem(sys.modules, "plotly", None)
    db, wf = sampled
    with Database(db, create=False) as handle:
        message = plots_at_end(handle, wf, work / "out", "workflow complete")
        [event] = handle.read("SELECT message FROM events WHERE workflow_id = ? AND kind = 'resource_plot'", (wf,))
    assert "pip install 'torc-slurm[plot]'" in message and event["message"] == message
    assert not (work / "out" / "resource_plots").exists()


def test_torc_run_writes_the_plot_when_asked(work: Path) -> None:
    pytest.importorskip("plotly")
    spec = write_spec(work, """
        name: pictured
        resource_monitor: {generate_plots: true}
        jobs:
          - {name: a, command: "true"}
    """)
    db = work / "torc.db"
    result = invoke(db, "run", spec, "--output", work / "out")
    assert result.exit_code == 0, result.output
    assert "resource plot written to" in result.stderr
    assert (work / "out" / "resource_plots" / "workflow_1.html").exists()
