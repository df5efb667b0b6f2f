"""OSMO workflow files through the command line: both seed examples run to completion with `torc run`
(the complex one with its `sleep 120` cut to 2 s), data flows through {{output}} and {{input:N}},
a group starts only after every group it depends on has ended, a lead's exit ends its group, and
bad files get one clean error
(no traceback) naming the file, line, task and field."""

from __future__ import annotations

import json
import os
import socket
import textwrap
from pathlib import Path
from typing import Any

import pytest
from runner.helpers import jobs, results

from . import EXAMPLES, invoke

OSMO = EXAMPLES / "osmo"


@pytest.fixture()
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in ("TORC_DB", "TORC_LOCK_KIND", "SLURM_CPUS_ON_NODE", "SLURM_MEM_PER_NODE", "SLURM_MEM_PER_CPU",
                 "SLURM_JOB_GPUS", "SLURM_JOB_ID", "CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def stdout_of(work: Path, row: dict[str, Any]) -> str:
    return (work / "torc_output" / "job_stdio" / f"wf{row['workflow_id']}_job{row['id']}_attempt1.out").read_text()


def spans(db: Path, wf: int) -> dict[str, tuple[float, float]]:
    found = {}
    for row in results(db, wf):
        assert row["name"] not in found, f"{row['name']} ran twice"
        found[row["name"]] = (row["started_at"], row["ended_at"])
    return found


def run_example(work: Path, name: str, *, replace: tuple[str, str] | None = None) -> tuple[Path, int]:
    text = (OSMO / name).read_text(encoding="utf-8")
    if replace:
        assert replace[0] in text
        text = text.replace(*replace)
    spec = work / name
    spec.write_text(text, encoding="utf-8")
    db = work / "torc.db"
    result = invoke(db, "run", spec, "--num-cpus", 4, "--monitor-interval", 0)
    assert result.exit_code == 0, result.output
    return db, 1


def test_simple_example_runs_and_train_models_waits_for_all_of_prepare_data(work: Path) -> None:
    db, wf = run_example(work, "combination_workflow_simple.yaml")
    rows = jobs(db, wf)
    assert set(rows) == {"generate-dataset", "validate-data", "train-model-a", "train-model-b"}
    assert {name: row["status"] for name, row in rows.items()} == dict.fromkeys(rows, "completed")
    # OSMO's group semantics: a lead's exit ends its group. validate-data (sleep 3) is still running
    # when generate-dataset, its lead, exits at once: it is ended, with the lead's outcome.
    attempts = {row["name"]: row for row in results(db, wf)}
    assert (attempts["validate-data"]["reason"], attempts["validate-data"]["return_code"]) == ("terminated_by_lead", None)
    assert "generate-dataset" in attempts["validate-data"]["message"]
    assert attempts["generate-dataset"]["return_code"] == attempts["train-model-a"]["return_code"] == 0
    assert attempts["train-model-b"]["return_code"] == 0 or attempts["train-model-b"]["reason"] == "terminated_by_lead"
    when = spans(db, wf)
    # The training tasks name only generate-dataset, yet the group waits for validate-data too.
    prepared = max(when["generate-dataset"][1], when["validate-data"][1])
    assert min(when["train-model-a"][0], when["train-model-b"][0]) >= prepared
    assert when["validate-data"][1] >= when["generate-dataset"][1]
    # Data flow: the dataset written to generate-dataset's {{output}} is read through {{input:0}}.
    dataset = work / "torc_output" / "tasks" / "generate-dataset" / "data" / "dataset.csv"
    lines = [f"sample_{i},value_{i}" for i in range(1, 11)]
    assert dataset.read_text().splitlines() == lines
    assert stdout_of(work, rows["train-model-a"]).splitlines() == ["Training Model A...", *lines, "✓ Model A complete!"]
    # train-model-b may be ended by its lead (train-model-a) before it prints, as in OSMO; when it
    # exited by itself, it read the same dataset.
    if attempts["train-model-b"]["return_code"] == 0:
        assert stdout_of(work, rows["train-model-b"]).splitlines()[1] == f"10 {dataset}"
    assert (work / "torc_output" / "tasks").stat().st_mode & 0o777 == 0o700


def test_complex_example_combines_both_transforms_in_group_order(work: Path) -> None:
    db, wf = run_example(work, "combination_workflow_complex.yaml", replace=("sleep 120", "sleep 2"))
    rows = jobs(db, wf)
    # transform-a (the lead) outlives transform-b, so every task exits by itself.
    assert {name: row["status"] for name, row in rows.items()} == {
        "download": "completed", "transform-a": "completed", "transform-b": "completed", "combine": "completed"}
    assert {row["name"]: row["return_code"] for row in results(db, wf)} == dict.fromkeys(rows, 0)
    combined = work / "torc_output" / "tasks" / "combine" / "final" / "combined.txt"
    expected = ("=== UPPERCASE VERSION ===\nAPPLE\nBANANA\nCHERRY\n\n"
                "=== NUMBERED VERSION ===\n     1\tapple\n     2\tbanana\n     3\tcherry\n")
    assert combined.read_text() == expected
    assert not [p for p in work.rglob("*") if "{{" in p.name]  # no folder named after a raw {{output}}
    assert stdout_of(work, rows["combine"]).endswith("✓ Results combined!\n" + expected)
    when = spans(db, wf)
    # fetch -> process: both transforms start after download ended; they run side by side.
    assert min(when["transform-a"][0], when["transform-b"][0]) >= when["download"][1]
    assert when["transform-b"][0] < when["transform-a"][1] and when["transform-a"][0] < when["transform-b"][1]
    # process -> aggregate: combine starts only once both transforms (the whole group) ended.
    assert when["combine"][0] >= max(when["transform-a"][1], when["transform-b"][1])
    assert when["transform-a"][1] > when["transform-b"][1]  # the lead was the last to end


HOSTS = """
workflow:
  name: hosts
  groups:
  - name: pair
    tasks:
    - name: server
      lead: true
      command: ["bash", "-c"]
      args:
      - |
        echo {{host:client}} > {{output}}/peer
        # the lead ends the group: wait (bounded) until the client has written its line
        for i in $(seq 600); do [ -s "$TORC_OUTPUT_DIR/tasks/client/peer" ] && exit 0; sleep 0.1; done
        exit 1
    - name: client
      command: ["bash", "-c", "echo {{host:server}} > {{output}}/peer"]
"""


def test_host_of_a_sibling_is_the_node_it_runs_on(work: Path) -> None:
    """{{host:TASK}} reads TORC_GROUP_HOST_<rank>, which the runner sets for group members."""
    (work / "hosts.yaml").write_text(HOSTS, encoding="utf-8")
    db = work / "torc.db"
    result = invoke(db, "run", "hosts.yaml", "--num-cpus", 2, "--monitor-interval", 0)
    assert result.exit_code == 0, result.output
    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    tasks = work / "torc_output" / "tasks"
    assert (tasks / "server" / "peer").read_text() == (tasks / "client" / "peer").read_text() == f"{node}\n"


def test_workflows_create_accepts_an_osmo_file(work: Path) -> None:
    db = work / "torc.db"
    result = invoke(db, "workflows", "create", OSMO / "combination_workflow_complex.yaml", "-f", "json")
    assert result.exit_code == 0, result.output
    wf = json.loads(result.stdout)["workflow_id"]
    rows = jobs(db, wf)
    assert list(rows) == ["download", "transform-a", "transform-b", "combine"]
    assert jobs(db, wf)["combine"]["command"].startswith('mkdir -p -m 700 -- "${TORC_OUTPUT_DIR:?}/tasks" ')


BAD = {
    "out_of_range": ("""
        workflow:
          name: w
          tasks:
          - name: a
            command: ["true"]
          - name: b
            command: ["bash", "-c"]
            args:
            - |
              echo start
              cat {{input:3}}/x
            inputs:
            - task: a
        """, "bad.yaml:11, task 'b', field 'args[0]': {{input:3}} names no input: the task has 1 input (a)"),
    "unknown_input": ("""
        workflow:
          name: w
          tasks:
          - name: a
            command: ["true"]
            inputs:
            - task: ghost
        """, "bad.yaml:7, task 'a', field 'inputs[0].task': unknown task 'ghost'; tasks: a"),
    "two_leads": ("""
        workflow:
          name: w
          groups:
          - name: g
            tasks:
            - {name: a, lead: true, command: ["true"]}
            - {name: b, lead: true, command: ["true"]}
        """, "bad.yaml:7, task 'b', field 'lead': group 'g' has two leads, 'a' and 'b'"),
    "no_lead": ("""
        workflow:
          name: w
          groups:
          - name: g
            tasks:
            - {name: a, command: ["true"]}
            - {name: b, command: ["true"]}
        """, "bad.yaml:4, field 'workflow.groups[g]': group 'g' has no lead"),
    "unsupported": ("""
        workflow:
          name: w
          tasks:
          - name: a
            command: ["true"]
            volumeMounts:
            - /data:/data
        """, "bad.yaml:6, task 'a', field 'volumeMounts': not supported: volumeMounts (container volume mounts)"),
    "unsupported_resource": ("""
        workflow:
          name: w
          resources:
            default:
              cpu: 2
              storage: 10Gi
          tasks:
          - {name: a, command: ["true"]}
        """, "bad.yaml:6, field 'workflow.resources.default.storage': not supported: storage"),
    "host_in_other_group": ("""
        workflow:
          name: w
          groups:
          - name: g1
            tasks:
            - {name: a, command: ["true"]}
          - name: g2
            tasks:
            - {name: b, command: [echo, "{{host:a}}"]}
        """, "bad.yaml:9, task 'b', field 'command[1]': {{host:a}}: 'a' is not in this task's group 'g2'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
@pytest.mark.parametrize("command", [("workflows", "create"), ("run",)])
def test_bad_files_get_one_clean_error(work: Path, case: str, command: tuple[str, ...]) -> None:
    text, message = BAD[case]
    (work / "bad.yaml").write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    result = invoke(work / "torc.db", *command, "bad.yaml")
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output
