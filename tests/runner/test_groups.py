"""Groups on one runner, with real processes: members start together (claimed and placed as one),
see their group in TORC_GROUP*, and a lead's exit ends the others (TERM, then KILL after the grace
period), recorded ``terminated_by_lead``; ``group_end: all`` waits for every member. Plus what one
node cannot run: a group larger than the node, and jobs needing more than one node."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from torc_slurm.runner.groups import compose, expand, split
from torc_slurm.runner.packing import Candidate, Placement
from torc_slurm.runner.resources import detect_node

from .helpers import create_workflow, jobs, results, run_runner, torc, write_spec


def by_name(db: Path, wf: int) -> dict[str, dict]:
    return {r["name"]: r for r in results(db, wf)}


def run_spec(folder: Path, text: str, cpus: int = 2, **options: object) -> dict[str, dict]:
    """Create the workflow, run it with one runner here (1 s grace), return its results by job."""
    db = folder / "torc.db"
    wf = create_workflow(db, write_spec(folder, text))
    run_runner(db, wf, node=detect_node(environ={}, num_cpus=cpus), output_dir=folder / "out",
               termination_grace_s=1.0, **options)
    return by_name(db, wf)


def test_the_lead_ends_its_group_term_then_kill(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, """
        name: lead_ends
        groups:
          - {name: train, lead: lead}
        jobs:
          - name: lead
            group: train
            command: "until [ -e started_polite ] && [ -e started_stubborn ]; do sleep 0.05; done; echo ok > lead.out"
          - name: polite
            group: train
            command: "trap 'echo term > polite.term; exit 0' TERM; touch started_polite; while :; do sleep 0.1; done"
          - name: stubborn
            group: train
            command: "trap '' TERM; touch started_stubborn; while :; do sleep 0.1; done"
          - {name: after, command: "echo after", depends_on: [polite, stubborn]}
    """)
    db = tmp_path / "torc.db"
    wf = create_workflow(db, spec)
    _, summary = run_runner(db, wf, node=detect_node(environ={}, num_cpus=4), output_dir=tmp_path / "out",
                            termination_grace_s=1.0)
    rows = by_name(db, wf)
    assert (tmp_path / "lead.out").exists() and (tmp_path / "polite.term").exists()
    assert rows["lead"]["status"] == "completed" and rows["lead"]["reason"] is None
    for name in ("polite", "stubborn"):
        assert (rows[name]["status"], rows[name]["reason"]) == ("completed", "terminated_by_lead"), rows[name]
        assert "ended by its group's lead lead" in rows[name]["message"]
    assert rows["stubborn"]["signal"] == 9  # it ignored TERM: killed after the grace period
    assert rows["after"]["status"] == "completed"  # terminated by the lead is no failure
    assert summary.failed == 0


def test_a_failed_lead_fails_the_members_it_ends(tmp_path: Path) -> None:
    rows = run_spec(tmp_path, """
        name: lead_fails
        groups:
          - {name: g, lead: lead}
        jobs:
          - {name: lead, group: g, command: "until [ -e started ]; do sleep 0.05; done; exit 3"}
          - {name: member, group: g, command: "touch started; while :; do sleep 0.1; done"}
    """)
    assert (rows["lead"]["status"], rows["lead"]["return_code"]) == ("failed", 3)
    assert (rows["member"]["status"], rows["member"]["reason"]) == ("failed", "terminated_by_lead")


def test_group_end_all_waits_for_every_member(tmp_path: Path) -> None:
    rows = run_spec(tmp_path, """
        name: all_members
        groups:
          - {name: g, lead: first, group_end: all}
        jobs:
          - {name: first, group: g, command: "touch first.done"}
          - {name: second, group: g, command: "until [ -e first.done ]; do sleep 0.05; done; echo second > second.out"}
    """)
    assert {n: (r["status"], r["reason"]) for n, r in rows.items()} == {
        "first": ("completed", None), "second": ("completed", None)}
    assert (tmp_path / "second.out").read_text() == "second\n"


def test_members_start_together_and_see_their_group(tmp_path: Path) -> None:
    """4 CPUs. `filler` (1 CPU, first by priority) runs 1.5 s; the group's two members need 2 CPUs
    each. Alone, a member would fit beside the filler; as a group they need all 4, so both start
    after the filler ends, and together."""
    (tmp_path / "record.py").write_text(
        "import json, os, sys\n"
        "json.dump({k: v for k, v in os.environ.items() if k.startswith('TORC_GROUP')}, open(sys.argv[1], 'w'))\n")
    record = f"{sys.executable} {tmp_path / 'record.py'}"
    spec = write_spec(tmp_path, f"""
        name: together
        resource_requirements:
          - {{name: two, num_cpus: 2, runtime: PT1M}}
          - {{name: one, num_cpus: 1, runtime: PT1M}}
        jobs:
          - {{name: filler, command: "sleep 1.5", resource_requirements: one, priority: 10}}
          - {{name: m0, group: pair, command: "{record} m0.json", resource_requirements: two}}
          - {{name: m1, group: pair, command: "{record} m1.json", resource_requirements: two}}
    """)
    db = tmp_path / "torc.db"
    wf = create_workflow(db, spec)
    run_runner(db, wf, node=detect_node(environ={}, num_cpus=4), output_dir=tmp_path / "out", node_name="n1")
    rows = by_name(db, wf)
    assert all(r["status"] == "completed" for r in rows.values()), rows
    assert min(rows["m0"]["started_at"], rows["m1"]["started_at"]) >= rows["filler"]["ended_at"]
    for rank in (0, 1):
        env = json.loads((tmp_path / f"m{rank}.json").read_text())
        assert env == {"TORC_GROUP": "pair", "TORC_GROUP_RANK": str(rank), "TORC_GROUP_SIZE": "2",
                       "TORC_GROUP_HOSTS": "n1,n1", "TORC_GROUP_HOST_0": "n1", "TORC_GROUP_HOST_1": "n1"}


def test_what_one_node_cannot_run_is_reported_and_never_claimed(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, """
        name: too_big
        resource_requirements:
          - {name: half, num_cpus: 2, runtime: PT1M}
          - {name: mpi, num_cpus: 1, num_nodes: 2, runtime: PT1M}
        jobs:
          - {name: ok, command: "true"}
          - {name: a, group: big, command: "true", resource_requirements: half}
          - {name: b, group: big, command: "true", resource_requirements: half}
          - {name: ranks, command: "true", resource_requirements: mpi}
    """)
    proc = torc(tmp_path / "torc.db", "run", spec, "--num-cpus", 3, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "has one node" in proc.stderr and "ranks (2 nodes)" in proc.stderr
    assert "a, b (a group that starts together: needs 4 CPUs" in proc.stderr
    assert "Traceback" not in proc.stderr
    states = {name: row["status"] for name, row in jobs(tmp_path / "torc.db", 1).items()}
    assert states == {"ok": "completed", "a": "ready", "b": "ready", "ranks": "ready"}
    assert all(row["attempt"] == 0 for name, row in jobs(tmp_path / "torc.db", 1).items() if name != "ok")


def test_compose_and_split_a_group() -> None:
    cands = [Candidate(1, 1, 0, 10, 60), Candidate(2, 2, 1, 20, 30), Candidate(3, 1, 0, 5, 10),
             Candidate(4, 3, 1, 40, 90)]
    composed, members = compose(cands, {2: 7, 4: 7})
    assert composed == [Candidate(1, 1, 0, 10, 60), Candidate(2, 5, 2, 60, 90), Candidate(3, 1, 0, 5, 10)]
    assert expand([3, 2, 1], members) == [3, 2, 4, 1]
    parts = split(Placement(2, (0, 1, 2, 3, 4), ("a", "b"), 60, 99.0), members[2])
    assert parts == [Placement(2, (0, 1), ("a",), 20, 99.0), Placement(4, (2, 3, 4), ("b",), 40, 99.0)]
