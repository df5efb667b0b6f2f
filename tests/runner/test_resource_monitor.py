"""The spec's resource_monitor drives the runner's sampler (issue 12).

- the series builder (pure): a row per pass, then thinning at the bound with an even spacing;
- the monitor with ``series``: rows per attempt from real passes (called directly: no thread, no
  sleeps), the open row flushed at untrack, nothing at all without ``series``;
- `make_runner`: the spec's interval, time_series, enabled: false (which a CLI interval cannot
  turn back on), and the CLI interval over the spec's when given;
- real `torc run`s: time_series with a 1 s interval on a job whose memory grows (rows stored,
  rising RSS, count bounded), enabled: false (no samples, no memory figures, "not sampled"),
  summary (figures per attempt, no per-job rows). Rows are counted; nothing is timed.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest

from runner.helpers import clean_env, create_workflow, query, torc, write_spec
from torc_slurm.runner.monitor import ResourceMonitor, _Series
from torc_slurm.store.samples import MAX_ROWS, JobSample, Thin

# A job whose RSS grows by 20 MiB every 0.4 s for about 4 s (the workload, not a synchronisation).
GROW = ("import time\nkeep = []\nfor _ in range(10):\n    keep.append(bytearray(20 * 2**20))\n"
        "    time.sleep(0.4)\n")


def _passes(series: _Series, n: int, start: int = 0) -> list:
    items = []
    for i in range(start, start + n):
        items += series.add(float(i), 10.0, 1000 + i, 2, None)
    return items


# -- the series builder (pure) -------------------------------------------------------------------------
def test_each_pass_is_a_row_until_the_bound() -> None:
    series = _Series(job_id=7, attempt=2, start=0.0, max_rows=10)
    items = _passes(series, 9)
    assert [type(i) for i in items] == [JobSample] * 9
    assert [i.t for i in items] == [float(i) for i in range(9)]
    assert {(i.job_id, i.attempt, i.num_processes) for i in items} == {(7, 2, 2)}


def test_at_the_bound_every_second_row_goes_and_rows_cover_twice_the_passes() -> None:
    series = _Series(job_id=1, attempt=1, start=0.0, max_rows=10)
    items = _passes(series, 10)
    assert isinstance(items[-1], Thin) and sum(isinstance(i, JobSample) for i in items) == 10
    assert (series.kept, series.stride) == (5, 2)
    more = _passes(series, 4, start=10)  # two rows of two passes: peak memory, mean CPU
    rows = [i for i in more if isinstance(i, JobSample)]
    assert [(r.t, r.memory_bytes, r.cpu_percent) for r in rows] == [(10.0, 1011, 10.0), (12.0, 1013, 10.0)]


def test_a_simulated_table_stays_within_the_bound_at_an_even_spacing() -> None:
    """Apply the items as the store does (insert; Thin deletes the 2nd, 4th, … row) over a day of passes."""
    series = _Series(job_id=1, attempt=1, start=0.0, max_rows=100)
    table: list[float] = []
    most = 0
    for i in range(86_400):
        for item in series.add(float(i), 1.0, 1, 1, None):
            if isinstance(item, Thin):
                table = table[0::2]
            else:
                table.append(item.t)
            most = max(most, len(table))
    assert most <= 100 and len(table) >= 50
    gaps = {b - a for a, b in itertools.pairwise(table)}
    assert gaps == {float(series.stride)}  # evenly spaced, at the current stride


def test_closing_flushes_the_open_row() -> None:
    series = _Series(job_id=1, attempt=1, start=0.0, max_rows=4, stride=4)
    assert _passes(series, 3) == []
    [row] = series.close()
    assert (row.t, row.memory_bytes) == (0.0, 1002)
    assert series.close() == []


# -- the monitor ---------------------------------------------------------------------------------------
@pytest.fixture()
def child():
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    yield proc
    proc.stdin.close()
    proc.wait()


def test_series_rows_name_the_attempt_and_untrack_flushes(child) -> None:
    clock = iter(range(100, 200)).__next__
    monitor = ResourceMonitor(1.0, series=True, clock=lambda: float(clock()))
    monitor.track(3, child.pid, attempt=2)
    for _ in range(3):
        monitor._sample_all()
    rows = monitor.drain_job_samples()
    assert len(rows) == 3 and all(isinstance(r, JobSample) and (r.job_id, r.attempt) == (3, 2) for r in rows)
    assert rows[0].cpu_percent is None and rows[1].cpu_percent is not None  # the first pass primes CPU
    assert all(r.memory_bytes > 0 and r.num_processes == 1 for r in rows)
    assert [r.t for r in rows] == sorted(r.t for r in rows) and rows[0].t > 0
    stats = monitor.untrack(3)
    assert stats.samples == 3 and monitor.drain_job_samples() == []  # nothing open at untrack


def test_without_series_nothing_is_kept(child) -> None:
    monitor = ResourceMonitor(1.0)
    monitor.track(1, child.pid, attempt=1)
    monitor._sample_all()
    monitor._sample_all()
    assert monitor.drain_job_samples() == [] and monitor._job_rows == []
    assert monitor.untrack(1).samples == 2


def test_pending_rows_are_bounded_but_thin_marks_kept(child) -> None:
    monitor = ResourceMonitor(1.0, series=True, max_rows=2, max_pending_rows=1)
    monitor.track(1, child.pid)
    for _ in range(4):  # rows at passes 1, 2 (then Thin: stride 2) and 4 (then Thin)
        monitor._sample_all()
    items = monitor.drain_job_samples()
    assert [type(i) for i in items] == [JobSample, Thin, Thin] and monitor.dropped_rows == 2
    monitor.untrack(1)


def test_a_disabled_monitor_keeps_no_series(child) -> None:
    monitor = ResourceMonitor(0, series=True)
    assert not monitor.series
    monitor.track(1, child.pid)
    assert monitor.drain_job_samples() == [] and monitor.untrack(1).samples == 0


# -- make_runner: the spec's settings --------------------------------------------------------------------
def _runner_config(tmp_path: Path, monitor: str, **options):
    from torc_slurm.runner.resources import detect_node
    from torc_slurm.runner.session import make_runner
    from torc_slurm.store.db import Database

    spec = write_spec(tmp_path, f"""
        name: cfg
        resource_monitor: {monitor}
        jobs:
          - {{name: a, command: "true"}}
    """)
    db_path = tmp_path / "torc.db"
    wf = create_workflow(db_path, spec)
    with Database(db_path) as db:
        return make_runner(db, wf, detect_node(environ={}), output_dir=tmp_path / "out", **options).config


@pytest.mark.parametrize(("monitor", "options", "interval", "series"), [
    ("{}", {}, 5.0, False),
    ("{granularity: time_series, sample_interval_seconds: 2}", {}, 2.0, True),
    ("{granularity: time_series, sample_interval_seconds: 2}", {"monitor_interval_s": None}, 2.0, True),
    ("{sample_interval_seconds: 2}", {"monitor_interval_s": 0.5}, 0.5, False),  # the CLI's, when given
    ("{enabled: false, granularity: time_series}", {}, 0.0, False),
    ("{enabled: false}", {"monitor_interval_s": 0.5}, 0.0, False),  # off stays off
])
def test_make_runner_follows_the_spec(tmp_path: Path, monitor: str, options: dict, interval: float,
                                      series: bool) -> None:
    config = _runner_config(tmp_path, monitor, **options)
    assert (config.monitor_interval_s, config.job_samples) == (interval, series)


# -- real runs -------------------------------------------------------------------------------------------
def _run(tmp_path: Path, monitor: str, body: str = GROW) -> tuple[Path, subprocess.CompletedProcess]:
    (tmp_path / "grow.py").write_text(body)
    spec = write_spec(tmp_path, f"""
        name: monitored
        resource_monitor: {monitor}
        jobs:
          - {{name: grow, command: "{sys.executable} {tmp_path / 'grow.py'}"}}
          - {{name: quick, command: "true"}}
    """)
    db = tmp_path / "torc.db"
    done = torc(db, "run", spec, cwd=tmp_path, env=clean_env())
    assert done.returncode == 0, done.stderr
    return db, done


def test_time_series_run_stores_rising_memory_within_the_bound(tmp_path: Path) -> None:
    db, _ = _run(tmp_path, "{granularity: time_series, sample_interval_seconds: 1}")
    [grow] = query(db, "SELECT id FROM jobs WHERE name = 'grow'")
    rows = query(db, "SELECT * FROM job_samples WHERE job_id = ? ORDER BY t", (grow["id"],))
    assert len(rows) >= 2, rows
    assert {(r["attempt"], r["workflow_id"]) for r in rows} == {(1, 1)}
    assert rows[-1]["memory_bytes"] > rows[0]["memory_bytes"] + 20 * 2**20  # it grew by 20 MiB steps
    [result] = query(db, "SELECT * FROM results WHERE job_id = ?", (grow["id"],))
    # bounded: one row per pass at most, so no more rows than 1 s passes in the attempt's life (+ the open one)
    assert len(rows) <= min(MAX_ROWS, int(result["exec_s"]) + 2)
    assert result["peak_memory_bytes"] >= max(r["memory_bytes"] for r in rows)  # the summary stays
    listed = torc(db, "reports", "samples", 1, cwd=tmp_path)
    assert listed.returncode == 0 and "grow" in listed.stdout
    assert max(len(line) for line in listed.stdout.splitlines()) <= 80


def test_disabled_run_samples_nothing_and_says_so(tmp_path: Path) -> None:
    db, _ = _run(tmp_path, "{enabled: false, granularity: time_series, sample_interval_seconds: 1}")
    assert query(db, "SELECT COUNT(*) AS n FROM job_samples")[0]["n"] == 0
    assert query(db, "SELECT COUNT(*) AS n FROM runner_samples")[0]["n"] == 0
    for r in query(db, "SELECT * FROM results"):
        assert (r["peak_memory_bytes"], r["peak_rss_bytes"], r["avg_memory_bytes"], r["avg_cpu_percent"],
                r["peak_cpu_percent"]) == (None,) * 5
    results = torc(db, "reports", "results", 1, cwd=tmp_path)
    assert "peak mem -: not sampled" in results.stdout and " 0 B" not in results.stdout
    samples = torc(db, "reports", "samples", 1, "grow", cwd=tmp_path)
    assert "enabled: false" in samples.stdout


def test_summary_run_keeps_figures_but_no_rows(tmp_path: Path) -> None:
    db, _ = _run(tmp_path, "{sample_interval_seconds: 1}")
    assert query(db, "SELECT COUNT(*) AS n FROM job_samples")[0]["n"] == 0
    [grow] = query(db, "SELECT x.* FROM results x JOIN jobs j ON j.id = x.job_id WHERE j.name = 'grow'")
    assert grow["peak_memory_bytes"] > 100 * 2**20
    samples = torc(db, "reports", "samples", 1, cwd=tmp_path)
    assert "granularity is summary" in samples.stdout
