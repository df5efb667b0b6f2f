"""`torc reports summary|resources|plot` on workflows the runner ran: figures checked against the
queue's own rows, JSON validated against the models, 80-column tables, empty workflows, `--apply`
(only jobs that have not run change, and the next run uses the new values), and the plot extra.
"""

from __future__ import annotations

import itertools
import json
import re
import struct
from pathlib import Path
from typing import Any

import pytest
from runner.helpers import jobs, query, torc

from . import create, invoke, write_spec

SIZING = """
name: sizing
resource_requirements:
  - {name: tight, num_cpus: 1, memory: 64m, runtime: PT2S}   # 64 MiB: the smallest suggestion
  - {name: roomy, num_cpus: 1, memory: 4g, runtime: PT1H}
  - {name: wide, num_cpus: 4, memory: 100m, runtime: PT1H}
jobs:
  - {name: slow_one, command: "sleep 2.3", resource_requirements: tight}
  - {name: flaky, command: "exit 3", resource_requirements: tight}
  - {name: measure, command: "python3 -c 'b = bytearray(30 * 2**20); import time; time.sleep(0.8)'",
     resource_requirements: roomy}
  - {name: gate, command: "true", resource_requirements: wide}
  - {name: follow_one, command: "true", depends_on: [gate], resource_requirements: roomy}
  - {name: follow_two, command: "true", depends_on: [gate], resource_requirements: roomy}
"""

MIXED = """
name: mixed
jobs:
  - {name: quick_one, command: "sleep 0.2"}
  - {name: quick_two, command: "sleep 0.4"}
  - {name: longer_one, command: "sleep 0.7"}
  - {name: exits_three, command: "exit 3"}
  - {name: killed_nine, command: "kill -9 $$"}
  - {name: after_bad, command: "true", depends_on: [exits_three], cancel_on_blocking_job_failure: true}
"""


@pytest.fixture()
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "80")
    for name in ("TORC_DB", "TORC_LOCK_KIND", "SLURM_CPUS_ON_NODE", "SLURM_MEM_PER_NODE", "SLURM_MEM_PER_CPU",
                 "SLURM_JOB_GPUS", "SLURM_JOB_ID", "CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def run(db: Path, *args: object) -> int:
    result = invoke(db, "run", *args)
    return result.exit_code


def as_json(db: Path, *args: object) -> Any:
    result = invoke(db, *args, "-f", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def fits_80(text: str) -> None:
    assert text.strip(), "nothing printed"
    wide = [line for line in text.splitlines() if len(line) > 80]
    assert not wide, "lines over 80 columns:\n" + "\n".join(wide)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """The MIXED workflow, run to its end once by a real `torc run` (2 CPUs, monitor sampling)."""
    folder = tmp_path_factory.mktemp("mixed")
    db = folder / "torc.db"
    spec = write_spec(folder, MIXED)
    done = torc(db, "run", spec, "--num-cpus", 2, "--monitor-interval", 0.1, cwd=folder)
    assert done.returncode == 1, done.stdout + done.stderr  # jobs failed
    return db, 1


# -- summary ---------------------------------------------------------------------------------------
def test_summary_of_a_run_matches_the_queue(mixed: tuple[Path, int]) -> None:
    from torc_slurm.reports.summary import Summary

    db, wf = mixed
    data = as_json(db, "reports", "summary", wf)
    Summary.model_validate(data)
    assert data["name"] == "mixed" and data["jobs_total"] == 6
    assert data["jobs_by_status"] == {"completed": 3, "failed": 2, "canceled": 1}
    failures = data["failures"]
    assert failures["attempts"] == 2
    assert failures["by_reason"] == [{"status": "failed", "reason": "exit code", "attempts": 1},
                                     {"status": "failed", "reason": "signal", "attempts": 1}]
    codes = {(c["return_code"], c["signal"]): c["attempts"] for c in failures["by_exit_code"]}
    assert codes.get((3, None)) == 1, codes
    assert sum(n for (rc, sig), n in codes.items() if sig == 9) == 1, codes
    # The longest attempts, longest first, as the results say.
    rows = query(db, "SELECT j.name, x.exec_s FROM results x JOIN jobs j ON j.id = x.job_id"
                     " WHERE x.workflow_id = ? ORDER BY x.exec_s DESC", (wf,))
    assert [j["job"] for j in data["longest"]] == [r["name"] for r in rows[:5]]
    assert data["longest"][0]["job"] == "longer_one" and data["longest"][0]["exec_s"] >= 0.7
    # Wall time and allocation use from the runner's own row.
    (runner,) = query(db, "SELECT * FROM runners WHERE workflow_id = ?", (wf,))
    wall = data["wall"]
    assert not wall["running"] and wall["started_at"] == runner["started_at"]
    assert wall["seconds"] == pytest.approx(runner["ended_at"] - runner["started_at"])
    assert wall["seconds"] >= 0.7  # the longest job ran inside it
    cpu = data["allocation"]["cpu"]
    assert cpu["allocated_hours"] == pytest.approx(2 * wall["seconds"] / 3600)
    assert cpu["held_hours"] == pytest.approx(runner["held_cpu_s"] / 3600)
    assert cpu["used_hours"] == pytest.approx(runner["job_cpu_s"] / 3600)
    assert 0 < cpu["held_hours"] <= cpu["allocated_hours"]
    assert cpu["held_percent"] == pytest.approx(round(100 * cpu["held_hours"] / cpu["allocated_hours"], 1))
    gpu = data["allocation"]["gpu"]
    assert gpu["allocated_hours"] == 0 and not data["allocation"]["gpu_sampled"]


def test_summary_table_fits_80_columns(mixed: tuple[Path, int]) -> None:
    db, wf = mixed
    result = invoke(db, "reports", "summary", wf)
    assert result.exit_code == 0, result.output
    fits_80(result.stdout)
    for word in ("3 completed", "2 failed", "1 canceled", "rc 3: 1", "signal 9: 1", "longer_one", "killed_nine"):
        assert word in result.stdout, result.stdout
    assert re.search(r"wall time \d", result.stdout)


def test_summary_and_resources_as_a_real_process(mixed: tuple[Path, int]) -> None:
    from torc_slurm.reports.resources import ResourceReport
    from torc_slurm.reports.summary import Summary

    db, wf = mixed
    done = torc(db, "reports", "summary", wf, "-f", "json", cwd=db.parent)
    assert done.returncode == 0, done.stderr
    assert Summary.model_validate_json(done.stdout).jobs_by_status["failed"] == 2
    done = torc(db, "reports", "resources", wf, "-f", "json", cwd=db.parent)
    assert done.returncode == 0, done.stderr
    (only,) = ResourceReport.model_validate_json(done.stdout).requirements
    assert only.name == "default" and only.jobs == 6 and only.attempts == 5
    table = torc(db, "reports", "summary", wf, cwd=db.parent, env=None)
    fits_80(table.stdout)


def test_results_table_fits_80_columns(mixed: tuple[Path, int]) -> None:
    db, wf = mixed
    result = invoke(db, "reports", "results", wf)
    assert result.exit_code == 1  # failed attempts shown
    fits_80(result.stdout)
    for words in ("completed", "failed", "exit code 3", "sig 9", "exits_three", "killed_nine", "longer_one"):
        assert words in result.stdout, result.stdout


GPU_SPEC = """
name: gpus
resource_requirements:
  - {name: one_gpu, num_cpus: 1, num_gpus: 1, memory: 64m, runtime: PT1M}
jobs:
  - {name: gpu_job, command: "sleep 1.2", resource_requirements: one_gpu}
"""


def test_gpu_use_from_a_fake_nvidia_smi_and_without_one(work: Path) -> None:
    """A real `torc run` with 2 declared GPUs: with an `nvidia-smi` on PATH (a script printing fixed
    figures: device 0 at 40 %, device 1 at 80 %), the job's GPU and the node's GPUs are sampled and
    the reports show them; without it they say "not sampled" instead of 0 %."""
    from runner.helpers import clean_env

    from torc_slurm.reports.resources import GPU_NOT_SAMPLED, ResourceReport
    from torc_slurm.reports.summary import Summary

    spec = write_spec(work, GPU_SPEC)
    bin_dir = work / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\nprintf '0, 40, 1024\\n1, 80, 2048\\n'\n")
    smi.chmod(0o755)
    for sampled, db, env in ((True, work / "smi.db", clean_env(PATH=f"{bin_dir}:/usr/bin:/bin")),
                             (False, work / "none.db", clean_env(PATH="/usr/bin:/bin"))):
        done = torc(db, "run", spec, "--num-cpus", 1, "--num-gpus", 2, "--monitor-interval", 0.1, cwd=work, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        (runner,) = query(db, "SELECT gpu_sampler, held_gpu_s FROM runners")
        (result,) = query(db, "SELECT avg_gpu_percent, peak_gpu_memory_bytes, exec_s FROM results")
        summary = Summary.model_validate(json.loads(torc(db, "reports", "summary", 1, "-f", "json", cwd=work).stdout))
        report = ResourceReport.model_validate(json.loads(torc(db, "reports", "resources", 1, "-f", "json",
                                                                cwd=work).stdout))
        (row,) = report.requirements
        gpu = summary.allocation.gpu
        assert gpu.allocated_hours > 0 and gpu.held_hours == pytest.approx(runner["held_gpu_s"] / 3600)
        assert runner["held_gpu_s"] == pytest.approx(result["exec_s"], rel=0.1)  # one GPU for the job's life
        if sampled:
            assert runner["gpu_sampler"] == "nvidia-smi"
            assert result["avg_gpu_percent"] in (40.0, 80.0)  # the one device it was given
            assert result["peak_gpu_memory_bytes"] in (2**30, 2 * 2**30)
            assert summary.allocation.gpu_sampled and summary.allocation.gpu_samplers == ["nvidia-smi"]
            assert gpu.used_hours == pytest.approx(0.6 * 2 * summary.wall.seconds / 3600, rel=0.05)  # node mean 60 %
            assert row.gpu_sampled and row.avg_gpu_percent == result["avg_gpu_percent"] and row.gpu_note is None
        else:
            assert runner["gpu_sampler"] is None and result["avg_gpu_percent"] is None
            assert not summary.allocation.gpu_sampled and gpu.used_hours is None
            assert not row.gpu_sampled and row.gpu_note == GPU_NOT_SAMPLED
            for command in ("summary", "resources"):
                shown = torc(db, "reports", command, 1, cwd=work)
                fits_80(shown.stdout)
                assert "not sampled" in shown.stdout, shown.stdout


def test_empty_workflow_gives_empty_reports(work: Path) -> None:
    from torc_slurm.reports.resources import ResourceReport
    from torc_slurm.reports.summary import Summary

    db = work / "torc.db"
    wf = create(db, write_spec(work, MIXED))
    data = Summary.model_validate(as_json(db, "reports", "summary", wf))
    assert data.jobs_total == 6 and data.failures.attempts == 0 and data.longest == []
    assert data.wall.seconds is None and data.allocation.runners == 0 and data.allocation.cpu.allocated_hours == 0
    report = ResourceReport.model_validate(as_json(db, "reports", "resources", wf))
    assert [(r.name, r.attempts, r.flags, r.suggested.model_dump(exclude_none=True)) for r in report.requirements] \
        == [("default", 0, [], {})]
    for command in ("summary", "resources"):
        result = invoke(db, "reports", command, wf)
        assert result.exit_code == 0, result.output
        fits_80(result.stdout)
    assert "not started" in invoke(db, "reports", "summary", wf).stdout
    applied = as_json(db, "reports", "resources", wf, "--apply")["applied"]
    assert applied["jobs"] == 0 and applied["changes"] == []


def test_unknown_workflow_is_a_message_not_a_traceback(work: Path) -> None:
    db = work / "torc.db"
    create(db, write_spec(work, MIXED))
    for command in ("summary", "resources"):
        result = invoke(db, "reports", command, 99)
        assert result.exit_code != 0 and "workflow 99" in result.stderr, result.output


# -- resources -------------------------------------------------------------------------------------
def sizing_run(work: Path) -> tuple[Path, int]:
    """SIZING on a 2-CPU runner: `gate` (4 CPUs) cannot run, so follow_one/two stay blocked."""
    db = work / "torc.db"
    wf = create(db, write_spec(work, SIZING))
    assert run(db, wf, "--num-cpus", 2, "--memory-gb", 6, "--monitor-interval", 0.1) != 0
    states = {n: r["status"] for n, r in jobs(db, wf).items()}
    assert states == {"slow_one": "completed", "flaky": "failed", "measure": "completed", "gate": "ready",
                      "follow_one": "blocked", "follow_two": "blocked"}, states
    return db, wf


def test_resources_flags_and_suggestions_on_a_run(work: Path) -> None:
    from torc_slurm.reports.resources import ResourceReport

    db, wf = sizing_run(work)
    report = ResourceReport.model_validate(as_json(db, "reports", "resources", wf))
    by_name = {r.name: r for r in report.requirements}
    assert set(by_name) == {"tight", "roomy", "wide"}
    tight, roomy, wide = by_name["tight"], by_name["roomy"], by_name["wide"]
    # Runtime asked 2s, longest 2.3s: overuse, and a suggestion of longest x 1.5 in whole minutes.
    assert tight.attempts == 2 and tight.completed == 1 and tight.longest_s >= 2.3
    assert [(f.kind, f.resource) for f in tight.flags] == [("overuse", "runtime")]
    assert "runtime asked 2s / longest 2." in tight.flags[0].message
    assert tight.suggested.runtime_s == 60 and tight.suggested.memory_bytes is None
    # 4 GiB asked, some 40 MB used: memory waste; an hour asked for under a second: runtime waste.
    assert roomy.peak_memory_bytes is not None and 30 * 2**20 < roomy.peak_memory_bytes < 200 * 2**20
    assert {(f.kind, f.resource) for f in roomy.flags} == {("waste", "memory"), ("waste", "runtime")}
    assert roomy.suggested.memory_bytes == 64 * 2**20 and roomy.suggested.runtime_s == 60
    assert roomy.jobs == 3 and roomy.not_run == 2
    # Nothing ran: nothing to say.
    assert wide.attempts == 0 and wide.flags == [] and wide.gpu_note is None
    result = invoke(db, "reports", "resources", wf)
    fits_80(result.stdout)
    for words in ("overuse runtime", "waste memory", "64 MiB", "runtime asked 2s / longest 2."):
        assert words in result.stdout, result.stdout


def test_apply_changes_only_jobs_not_run_and_the_next_run_uses_them(work: Path) -> None:
    from torc_slurm.reports.resources import Applied

    db, wf = sizing_run(work)
    before = jobs(db, wf)
    dry = as_json(db, "reports", "resources", wf, "--apply", "--dry-run")
    assert Applied.model_validate(dry["applied"]).dry_run and dry["applied"]["jobs"] == 2
    assert jobs(db, wf) == before  # nothing written
    applied = Applied.model_validate(as_json(db, "reports", "resources", wf, "--apply")["applied"])
    assert applied.jobs == 2
    assert {c["name"]: c["jobs"] for c in applied.changes} == {"tight": 0, "roomy": 2}
    after = jobs(db, wf)
    for name in ("follow_one", "follow_two"):  # blocked: resized
        assert (after[name]["memory_bytes"], after[name]["runtime_s"]) == (64 * 2**20, 60)
        assert after[name]["spec_hash"] == before[name]["spec_hash"]
    for name in ("slow_one", "flaky", "measure", "gate"):  # finished, or no suggestion: untouched
        assert after[name] == before[name], name
    (event,) = query(db, "SELECT * FROM events WHERE workflow_id = ? AND kind = 'resources_applied'", (wf,))
    assert event["source"] == "user" and "roomy (2)" in event["message"]
    assert {c["name"]: c["jobs"] for c in json.loads(event["data"])["changes"]} == {"tight": 0, "roomy": 2}
    # At 4 GiB the followers could not run on a 1 GiB runner; resized, they do.
    assert run(db, wf, "--num-cpus", 4, "--memory-gb", 1, "--monitor-interval", 0) == 1  # flaky stays failed
    states = {n: r["status"] for n, r in jobs(db, wf).items()}
    assert states["gate"] == states["follow_one"] == states["follow_two"] == "completed", states


def test_apply_with_include_failed_resizes_failed_jobs_and_never_held_ones(work: Path) -> None:
    from torc_slurm.store.db import Database
    from torc_slurm.store.queue import Queue

    db, wf = sizing_run(work)
    result = invoke(db, "reports", "resources", wf, "--apply", "--include-failed", "-r", "tight", "-f", "json")
    assert result.exit_code == 0, result.output
    applied = json.loads(result.stdout)["applied"]
    assert applied["statuses"] == ["uninitialized", "blocked", "ready", "failed", "canceled", "terminated"]
    assert applied["changes"] == [{"name": "tight", "jobs": 1, "memory_bytes": None, "runtime_s": 60,
                                   "num_cpus": None}]
    after = jobs(db, wf)
    assert after["flaky"]["runtime_s"] == 60 and after["slow_one"]["runtime_s"] == 2  # failed: yes; completed: no
    # flaky runs again and a runner claims it (pending); the group's requests are now mixed (2s, 1m),
    # so the suggestion stands, but a held job is never resized.
    reset = invoke(db, "workflows", "reset-status", wf, "--failed-only")
    assert reset.exit_code == 0, reset.output
    with Database(db, create=False) as handle:
        queue = Queue(handle, wf)
        runner = queue.register_runner(hostname="node-9", pid=4242, slurm_job_id="77")
        flaky = after["flaky"]["id"]
        claimed = queue.cycle(runner, choose=lambda ready: [j.job_id for j in ready if j.job_id == flaky]).claimed
    assert [c.id for c in claimed] == [flaky] and jobs(db, wf)["flaky"]["status"] == "pending"
    with Database(db, create=False) as handle, handle.transaction() as conn:  # a request of its own, to see it kept
        conn.execute("UPDATE jobs SET runtime_s = 5 WHERE id = ?", (flaky,))
    again = as_json(db, "reports", "resources", wf, "--apply", "--include-failed", "-r", "tight")
    tight = next(r for r in again["report"]["requirements"] if r["name"] == "tight")
    assert tight["mixed"] == ["runtime_s"] and tight["suggested"] == {"runtime_s": 60}
    assert again["applied"]["changes"][0]["jobs"] == 0
    assert jobs(db, wf)["flaky"]["runtime_s"] == 5


def test_apply_refuses_unknown_names_and_stray_flags(work: Path) -> None:
    db, wf = sizing_run(work)
    result = invoke(db, "reports", "resources", wf, "--apply", "-r", "tigth")
    assert result.exit_code == 1 and "tigth" in result.stderr and "tight" in result.stderr, result.output
    result = invoke(db, "reports", "resources", wf, "--dry-run")
    assert result.exit_code == 2 and "--apply" in result.stderr


# -- the pure rules --------------------------------------------------------------------------------
@pytest.mark.parametrize(("peak", "expected"), [
    (1, 64 * 2**20), (50 * 2**20, 64 * 2**20), (54 * 2**20, 128 * 2**20), (800 * 2**20, 960 * 2**20),
    (2**30, 1280 * 2**20), (10 * 2**30, 12 * 2**30), (20 * 2**30, 24 * 2**30),
])
def test_round_memory(peak: int, expected: int) -> None:
    from torc_slurm.reports.resources import round_memory

    assert round_memory(peak) == expected


@pytest.mark.parametrize(("longest", "expected"), [(0.01, 60), (30, 60), (41, 120), (3600, 5400), (3601, 5460)])
def test_round_runtime(longest: float, expected: int) -> None:
    from torc_slurm.reports.resources import round_runtime

    assert round_runtime(longest) == expected


ASKED = {"name": "r", "jobs": 4, "not_run": 2, "num_cpus": 4, "num_gpus": 0, "memory_bytes": 2**30, "runtime_s": 2}


@pytest.mark.parametrize(("used", "flags", "suggested"), [
    # The case: runtime asked 2s, longest 30s.
    ({"attempts": 1, "completed": 1, "longest_s": 30, "runtime_ratio": 15, "runtime_ratio_completed": 15},
     [("overuse", "runtime", "runtime asked 2s / longest 30s")], {"runtime_s": 60}),
    # Peak memory over the request (ended for oom): at least the request x 1.2.
    ({"attempts": 1, "peak_memory_bytes": 2**30 + 5, "memory_ratio": 1.01, "oom": 1},
     [("overuse", "memory", "peak 1 GiB over the 1 GiB asked, 1 ended for oom")], {"memory_bytes": 1280 * 2**20}),
    # Killed for memory with a sampled peak far below (the kill came between samples): the request x 1.2.
    ({"attempts": 3, "peak_memory_bytes": 10 * 2**20, "memory_ratio": 0.01, "oom": 2},
     [("overuse", "memory", "2 ended for oom")], {"memory_bytes": 1280 * 2**20}),
    # Under a quarter of the memory: waste.
    ({"attempts": 2, "completed": 2, "peak_memory_bytes": 100 * 2**20, "memory_ratio": 0.1,
      "memory_ratio_completed": 0.1}, [("waste", "memory", "peak 100 MiB of 1 GiB asked (10%)")],
     {"memory_bytes": 128 * 2**20}),
    # A third used: fine.
    ({"attempts": 1, "completed": 1, "peak_memory_bytes": 2**30 // 3, "memory_ratio": 0.33,
      "memory_ratio_completed": 0.33}, [], {}),
    # CPUs: 4 asked, one used; and 4 asked, 6 used.
    ({"attempts": 1, "completed": 1, "peak_cpu_percent": 98.0, "cpu_ratio": 0.245},
     [("waste", "cpus", "peak CPU 98% of 4 CPU(s) asked (24%)")], {"num_cpus": 1}),
    ({"attempts": 1, "completed": 1, "peak_cpu_percent": 590.0, "cpu_ratio": 1.475},
     [("overuse", "cpus", "peak CPU 590% on 4 CPU(s) asked")], {"num_cpus": 6}),
])
def test_assess(used: dict, flags: list, suggested: dict) -> None:
    from torc_slurm.reports.resources import _assess

    row = _assess(ASKED, used)
    assert [(f["kind"], f["resource"], f["message"]) for f in row["flags"]] == flags
    assert row["suggested"] == suggested


def test_gpu_use_is_said_not_sampled_rather_than_zero() -> None:
    from torc_slurm.reports.resources import GPU_NOT_SAMPLED, _assess

    asked = {**ASKED, "num_gpus": 2}
    row = _assess(asked, {"attempts": 3, "completed": 3, "gpu_samples": 0})
    assert row["gpu_note"] == GPU_NOT_SAMPLED and row["avg_gpu_percent"] is None and not row["gpu_sampled"]
    row = _assess(asked, {"attempts": 3, "completed": 3, "gpu_samples": 2, "gpu_percent_sum": 30.0,
                          "peak_gpu_memory_bytes": 5})
    assert row["gpu_note"] is None and row["avg_gpu_percent"] == 15.0
    assert ("waste", "gpus") in [(f["kind"], f["resource"]) for f in row["flags"]]


def test_resources_view_folds_at_80_columns_without_cutting_words() -> None:
    from rich.console import Console

    from torc_slurm.cli.reports import resources_view
    from torc_slurm.reports.resources import RULES, _assess

    long_name = "highmem_cluster_requirements_for_the_big_jobs"
    rows = [_assess({**ASKED, "name": long_name, "num_gpus": 1},
                    {"attempts": 1, "completed": 1, "longest_s": 30, "runtime_ratio": 15, "runtime_ratio_completed": 15})]
    console = Console(width=80, record=True, soft_wrap=True)
    console.print(resources_view({"workflow_id": 1, "rules": RULES, "requirements": rows}))
    text = console.export_text()
    fits_80(text)
    for word in ("overuse", "runtime", "asked", "longest", "suggest", "requirements"):
        assert re.search(rf"\b{word}\b", text), (word, text)
    assert "GPU use not sampled (no nvidia-smi/NVML on the nodes)" in " ".join(text.split())


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


# -- plot ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def diamond(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, list[str]]:
    """examples/diamond, run by a real `torc run` from a copy of its folder."""
    import shutil

    from . import EXAMPLES

    folder = tmp_path_factory.mktemp("diamond") / "diamond"
    shutil.copytree(EXAMPLES / "diamond", folder)
    db = folder / "torc.db"
    done = torc(db, "run", "diamond.yaml", cwd=folder)
    assert done.returncode == 0, done.stdout + done.stderr
    names = [r["name"] for r in query(db, "SELECT name FROM jobs WHERE workflow_id = 1 ORDER BY id")]
    return db, 1, names


def test_plot_html_and_png_of_a_run(diamond: tuple[Path, int, list[str]], tmp_path: Path) -> None:
    db, wf, names = diamond
    html, png = tmp_path / "run.html", tmp_path / "out" / "run.png"
    for output in (html, png):
        result = invoke(db, "reports", "plot", wf, "--output", output)
        assert result.exit_code == 0, result.output
        assert f"Wrote {output} (4 attempt(s) on 1 runner(s);" in result.stderr
    text = html.read_text()
    assert len(names) == 4 and all(f'"{name}"' in text for name in names), names
    assert "plotly" in text and "<script src=\"http" not in text  # plotly.js inlined: works offline
    assert "completed" in text
    width, height = png_size(png)
    assert (width, height) >= (800, 400) and 10_000 < png.stat().st_size < 500_000


def test_plot_marks_failures_and_says_where_node_use_comes_from(mixed: tuple[Path, int], tmp_path: Path) -> None:
    from torc_slurm.reports.plot import plot_data
    from torc_slurm.store.db import Database

    db, wf = mixed
    with Database(db, create=False) as handle:
        data = plot_data(handle, wf)
    kinds = {a.job: a.kind for a in data.attempts}
    assert kinds == {"quick_one": "completed", "quick_two": "completed", "longer_one": "completed",
                     "exits_three": "failed", "killed_nine": "failed"}
    (runner,) = data.runners
    assert runner.lanes == 2  # two CPUs: never more than two attempts at once
    lanes = {(a.lane, a.job) for a in data.attempts}
    for lane in (0, 1):  # attempts in one lane never overlap
        spans = sorted((a.start, a.end) for a in data.attempts if a.lane == lane)
        assert all(end <= start for (_, end), (start, _) in itertools.pairwise(spans)), lanes
    # A two-second run makes at most one node sample (30 s buckets): usage derived, and said so.
    assert not data.measured and any("held (requested)" in n for n in data.notes), data.notes
    assert max(max(s.y) for s in data.cpu) == 100.0  # both CPUs held at some point
    html = tmp_path / "mixed.html"
    assert invoke(db, "reports", "plot", wf, "-o", html).exit_code == 0
    assert "failed" in html.read_text() and "exits_three" in html.read_text()


def test_plot_from_node_samples(work: Path) -> None:
    """A run long enough for several node samples: the panels show them, not the derived curve."""
    from runner.helpers import create_workflow, run_runner

    from torc_slurm.reports.plot import plot_data
    from torc_slurm.store.db import Database

    spec = write_spec(work, """
        name: sampled
        jobs:
          - {name: burner, command: "python3 -c 'import time; t = time.time() + 1.5\\nwhile time.time() < t: pass'"}
          - {name: sleeper, command: "sleep 1.5"}
        """)
    db = work / "torc.db"
    wf = create_workflow(db, spec)
    run_runner(db, wf, monitor_interval_s=0.05, node_sample_s=0.25)
    with Database(db, create=False) as handle:
        data = plot_data(handle, wf)
    assert data.measured, data.notes
    (cpu,) = data.cpu
    assert len(cpu.x) >= 3 and max(cpu.y) > 10  # the burner kept a core busy
    assert data.gpu == [] and data.notes == ["no GPUs"]
    png = work / "sampled.png"
    assert invoke(db, "reports", "plot", wf, "-o", png).exit_code == 0
    png_size(png)


def test_plot_of_an_empty_workflow(work: Path) -> None:
    db = work / "torc.db"
    wf = create(db, write_spec(work, MIXED))
    for name in ("empty.html", "empty.png"):
        result = invoke(db, "reports", "plot", wf, "-o", work / name)
        assert result.exit_code == 0, result.output
        assert "0 attempt(s) on 0 runner(s)" in result.stderr
    assert "no attempts recorded yet" in (work / "empty.html").read_text()
    png_size(work / "empty.png")


def test_plot_without_the_extra_says_how_to_install_it(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    db = work / "torc.db"
    wf = create(db, write_spec(work, MIXED))
    monkeypatch.setitem(sys.modules, "plotly", None)  # import plotly fails, as without the extra
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    for name in ("x.html", "x.png"):
        result = invoke(db, "reports", "plot", wf, "-o", work / name)
        assert result.exit_code == 1 and "pip install 'torc-slurm[plot]'" in result.stderr, result.output
        assert "Traceback" not in result.output and not (work / name).exists()
    result = invoke(db, "reports", "plot", wf, "-o", work / "x.svg")
    assert result.exit_code == 2 and ".html or .png" in result.stderr



def test_a_new_plot_file_is_the_users_only(diamond: tuple[Path, int, list[str]], tmp_path: Path) -> None:
    import stat

    db, wf, _ = diamond
    result = invoke(db, "reports", "plot", wf, "--output", tmp_path / "plot.html")
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE((tmp_path / "plot.html").stat().st_mode) == 0o600
