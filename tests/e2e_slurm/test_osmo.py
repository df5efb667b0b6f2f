"""Both OSMO seed workflows on the real local cluster through `torc submit` (no scheduler in the
file: one comes from the site), with the seed's long sleep cut to a few seconds: groups start
whole, after every group they depend on, data flows through {{output}} and {{input:N}}, and the
lead ends its group."""

from __future__ import annotations

import pytest

from . import EXAMPLES, E2E, wait_idle_nodes

pytestmark = pytest.mark.slurm


def submit(e2e: E2E, example: str) -> list[dict]:
    text = (EXAMPLES / "osmo" / example).read_text().replace("sleep 120", "sleep 3")
    path = e2e.path / example
    path.write_text(text)
    wait_idle_nodes("cpu", 1)
    proc = e2e.torc("submit", path.name, "--site", "localhost")
    assert "Created workflow 1" in proc.stdout and "names no slurm_schedulers" in proc.stderr, proc.stderr
    allocations = e2e.allocations(1)
    e2e.submitted.update(a["slurm_job_id"] for a in allocations)
    e2e.wait_workflow_done(1, timeout=300)
    e2e.wait_allocations_ended([a["slurm_job_id"] for a in allocations], timeout=120)
    return e2e.results(1)


def test_the_complex_seed_workflow_runs_on_slurm(e2e: E2E) -> None:
    rows = {r["job_name"]: r for r in submit(e2e, "combination_workflow_complex.yaml")}
    assert {n: r["status"] for n, r in rows.items()} == {n: "completed" for n in
                                                         ("download", "transform-a", "transform-b", "combine")}
    assert rows["transform-b"]["reason"] == "terminated_by_lead" or rows["transform-b"]["reason"] is None
    # group order: process after fetch, aggregate after both transforms
    assert min(rows[n]["started_at"] for n in ("transform-a", "transform-b")) >= rows["download"]["ended_at"]
    assert rows["combine"]["started_at"] >= max(rows[n]["ended_at"] for n in ("transform-a", "transform-b"))
    combined = next(e2e.path.glob("torc_output/tasks/combine/final/combined.txt")).read_text()
    assert "=== UPPERCASE VERSION ===\nAPPLE\nBANANA\nCHERRY" in combined
    assert "=== NUMBERED VERSION ===" in combined and "cherry" in combined


def test_the_simple_seed_workflow_runs_on_slurm(e2e: E2E) -> None:
    rows = {r["job_name"]: r for r in submit(e2e, "combination_workflow_simple.yaml")}
    assert rows["generate-dataset"]["status"] == "completed"
    # validate-data (3 s) outlives its lead: the lead's exit ends it, which is no failure
    assert (rows["validate-data"]["status"], rows["validate-data"]["reason"]) == ("completed", "terminated_by_lead")
    assert min(rows[n]["started_at"] for n in ("train-model-a", "train-model-b")) >= max(
        rows[n]["ended_at"] for n in ("generate-dataset", "validate-data"))
    assert all(rows[n]["status"] == "completed" for n in ("train-model-a", "train-model-b"))
