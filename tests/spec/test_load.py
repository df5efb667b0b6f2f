"""Loading specs: the pydantic models (unknown keys refused, every field), and one clear SpecError
naming the file, the job, the field and the line for each kind of bad input found while loading."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from torc_slurm.compiler import compile_workflow
from torc_slurm.errors import SpecError
from torc_slurm.spec.load import load_spec, parse_spec
from torc_slurm.spec.models import SlurmScheduler, WorkflowSpec

MINIMAL = "name: w\njobs:\n  - name: a\n    command: echo a\n"


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str) -> tuple[SpecError, Path]:
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    return info.value, path


# -- models --------------------------------------------------------------------------------------

FULL = """\
name: full
description: every field
user: alice
project: p1
metadata: {owner: alice, tags: [a, b]}
parameters:
  i: "1:2"
jobs:
  - name: prep
    command: echo prep
    invocation_script: wrapper.sh
    output_files: [raw]
    output_user_data: [meta]
    resource_requirements: small
    scheduler: short
    priority: 5
    cancel_on_blocking_job_failure: true
    supports_termination: true
    env: {OMP_PROC_BIND: "true", MY_VAR: x}
  - name: work_{i}
    command: echo {i}
    depends_on: [prep]
    depends_on_regexes: ["^prep$"]
    input_files: [raw]
    input_user_data: [meta]
    parameter_mode: zip
files:
  - name: raw
    path: data/raw.txt
user_data:
  - name: meta
    data: {k: 1}
    is_ephemeral: true
resource_requirements:
  - name: small
    num_cpus: 2
    num_gpus: 1
    num_nodes: 1
    memory: 100m
    runtime: PT30M
slurm_schedulers:
  - name: short
    account: proj_1
    partition: debug
    nodes: 2
    walltime: "1-02:00:00"
    mem: 64G
    gres: "gpu:2"
    qos: high
    ntasks_per_node: 1
    tmp: 10G
    extra: ["--constraint=cpu", "--exclusive"]
slurm_defaults: {account: proj_1}
jobs_sort_method: gpus_memory_runtime
compute_node_expiration_buffer_seconds: 120
compute_node_wait_for_new_jobs_seconds: 30
"""


def test_every_field_loads(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, FULL))
    assert (spec.name, spec.description, spec.user, spec.project) == ("full", "every field", "alice", "p1")
    assert spec.metadata == {"owner": "alice", "tags": ["a", "b"]}
    assert spec.parameters == {"i": "1:2"}
    prep, work = spec.jobs
    assert prep.invocation_script == "wrapper.sh" and prep.priority == 5
    assert prep.cancel_on_blocking_job_failure and prep.supports_termination
    assert prep.env == {"OMP_PROC_BIND": "true", "MY_VAR": "x"}
    assert prep.output_files == ["raw"] and prep.output_user_data == ["meta"]
    assert (prep.resource_requirements, prep.scheduler) == ("small", "short")
    assert work.depends_on == ["prep"] and work.depends_on_regexes == ["^prep$"]
    assert work.input_files == ["raw"] and work.input_user_data == ["meta"] and work.parameter_mode == "zip"
    assert spec.files[0].path == "data/raw.txt"
    assert spec.user_data[0].data == {"k": 1} and spec.user_data[0].is_ephemeral
    rr = spec.resource_requirements[0]
    assert (rr.num_cpus, rr.num_gpus, rr.memory_bytes, rr.runtime_seconds) == (2, 1, 100 * 2**20, 1800)
    sched = spec.slurm_schedulers[0]
    assert sched.walltime_seconds == 26 * 3600 and sched.extra == ["--constraint=cpu", "--exclusive"]
    assert spec.slurm_defaults == {"account": "proj_1"}
    assert spec.jobs_sort_method == "gpus_memory_runtime"
    assert spec.compute_node_expiration_buffer_seconds == 120
    assert spec.compute_node_wait_for_new_jobs_seconds == 30
    compiled = compile_workflow(spec)
    assert [j.name for j in compiled.jobs] == ["prep", "work_1", "work_2"]


def test_defaults_of_a_minimal_spec() -> None:
    spec = parse_spec(MINIMAL)
    job = spec.jobs[0]
    assert job.depends_on == [] and job.priority == 0 and job.resource_requirements is None
    assert job.cancel_on_blocking_job_failure and not job.supports_termination  # dependents of failures: canceled
    assert spec.jobs_sort_method == "gpus_runtime_memory" and spec.files == []
    assert spec.compute_node_expiration_buffer_seconds == 60


def test_json_specs_load(tmp_path: Path) -> None:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"name": "j", "jobs": [{"name": "a", "command": "x", "depends_on": []}]}))
    assert load_spec(path).jobs[0].name == "a"


def test_the_model_round_trips_through_json() -> None:
    spec = parse_spec(FULL)
    assert WorkflowSpec.model_validate_json(spec.model_dump_json()) == spec


@pytest.mark.parametrize(
    ("where", "snippet"),
    [
        ("top level", "bogus: 1\n"),
        ("job", "jobs:\n  - name: a\n    command: x\n    bogus: 1\n"),
        ("resources", "resource_requirements:\n  - name: r\n    bogus: 1\n"),
        ("scheduler", "slurm_schedulers:\n  - name: s\n    bogus: 1\n"),
        ("file", "files:\n  - name: f\n    path: p\n    bogus: 1\n"),
        ("user_data", "user_data:\n  - name: u\n    bogus: 1\n"),
    ],
)
def test_unknown_keys_are_errors_everywhere(where: str, snippet: str) -> None:
    text = "name: w\n" + snippet
    if not snippet.startswith("jobs"):
        text += "jobs:\n  - name: a\n    command: x\n"
    with pytest.raises(SpecError, match="unknown key") as info:
        parse_spec(text, "w.yaml")
    assert "bogus" in (info.value.field or "")
    assert info.value.line is not None and "bogus" in text.splitlines()[info.value.line - 1]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: w\njobs: []\n", "at least 1"),
        ("name: w\n", "required field is missing"),
        ("jobs:\n  - {name: a, command: x}\n", "required field is missing"),
        ("name: w\njobs:\n  - {name: a, command: '  '}\n", "command must not be empty"),
        ("name: w\njobs:\n  - {name: a, command: x, env: {'1BAD': x}}\n", "environment variable name"),
        ("name: w\njobs:\n  - {name: a, command: x, parameter_mode: cross}\n", "'product' or 'zip'"),
        ("name: w\njobs_sort_method: random\njobs:\n  - {name: a, command: x}\n", "gpus_runtime_memory"),
        ("name: w\njobs:\n  - {name: a, command: x}\nresource_requirements:\n  - {name: r, num_cpus: 0}\n",
         "must be between 1 and 1,000,000"),
        ("name: w\njobs:\n  - {name: a, command: x}\nresource_requirements:\n  - {name: r}\n  - {name: r}\n",
         "defined twice"),
        ("name: w\njobs:\n  - {name: a, command: x}\nslurm_defaults: {'Bad Key': 1}\n", "sbatch option name"),
        ("name: w\njobs:\n  - {name: a, command: x}\nslurm_defaults: {account: 'a b'}\n", "not a valid Slurm value"),
        ("- a\n- b\n", "must be a mapping"),
    ],
)
def test_model_rules(text: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_spec(text)


# -- slurm_schedulers ------------------------------------------------------------------------------

@pytest.mark.parametrize("walltime", ["00:30:00", "04:00:00", "1-00:00:00", "7-12:00:00"])
def test_scheduler_walltimes(walltime: str) -> None:
    assert SlurmScheduler(name="s", walltime=walltime).walltime_seconds > 0


@pytest.mark.parametrize("walltime", ["30", "1h", "PT1H", "25:61:00", "1-2", "01:00:00\n#SBATCH --wrap=x"])
def test_bad_scheduler_walltimes(walltime: str) -> None:
    with pytest.raises(ValueError, match="walltime"):
        SlurmScheduler(name="s", walltime=walltime)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("partition", "debug\n#SBATCH --wrap=x"),
        ("partition", "debug --wrap=x"),
        ("account", "a;rm -rf ~"),
        ("account", "$(id)"),
        ("qos", "normal\n"),
        ("gres", "gpu:1 #"),
        ("mem", "64G\n#SBATCH --wrap=x"),
        ("mem", "lots"),
        ("tmp", "10 G"),
        ("name", "s/../x"),
        ("name", "a b"),
        ("extra", ["--constraint=cpu\n#SBATCH --wrap=x"]),
        ("extra", ["constraint=cpu"]),
        ("extra", ["--x=1\r"]),
    ],
)
def test_sbatch_injection_is_refused(field: str, value: Any) -> None:
    data = {"name": "s", field: value}
    with pytest.raises(ValueError):
        SlurmScheduler.model_validate(data)
    text = "name: w\njobs:\n  - {name: a, command: x}\nslurm_schedulers:\n  - " + json.dumps(data) + "\n"
    with pytest.raises(SpecError) as info:
        parse_spec(text, "w.yaml")
    assert info.value.line == 5 and "slurm_schedulers" in (info.value.field or "")


def test_valid_scheduler_values_are_kept() -> None:
    sched = SlurmScheduler(name="gpu-a100", account="proj_1", partition="gpu,debug", mem="500M",
                           gres="gpu:a100:2", qos="high", extra=["--constraint=a100&ib", "-J=x"])
    assert sched.partition == "gpu,debug" and sched.gres == "gpu:a100:2"


# -- errors found while loading: one SpecError naming the file, the job and the line --------------

def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    error, path = load_error(tmp_path, """\
        name: w
        jobs:
          - name: a
            command: "echo unterminated
          - name: b
            command: x
        """)
    assert str(error).startswith(f"{path}:")
    assert error.file == str(path) and error.line is not None and 4 <= error.line <= 7
    assert "not valid YAML" in str(error)


def test_yaml_indentation_error_line(tmp_path: Path) -> None:
    error, path = load_error(tmp_path, "name: w\njobs:\n  - name: a\n    command: x\n   bad: [\n")
    assert error.line in (5, 6) and f"{path}:{error.line}" in str(error)


def test_unknown_key_names_file_job_field_and_line(tmp_path: Path) -> None:
    error, path = load_error(tmp_path, """\
        name: w
        jobs:
          - name: first
            command: x
          - name: second
            command: y
            depends_onn: [first]
        """)
    assert str(error) == f"{path}:7, job 'second', field 'depends_onn': unknown key"


def test_wrong_type_names_file_job_field_and_line(tmp_path: Path) -> None:
    error, path = load_error(tmp_path, """\
        name: w
        jobs:
          - name: a
            command: x
            priority: high
        """)
    text = str(error)
    assert text.startswith(f"{path}:5, job 'a', field 'priority': ")
    assert "integer" in text


def test_wrong_type_of_a_list_item(tmp_path: Path) -> None:
    error, path = load_error(tmp_path, """\
        name: w
        jobs:
          - name: a
            command: x
          - name: b
            command: y
            depends_on:
              - a
              - {x: 1}
        """)
    assert str(error).startswith(f"{path}:9, job 'b', field 'depends_on.1': ")


def test_a_job_without_a_name_is_named_by_position(tmp_path: Path) -> None:
    error, path = load_error(tmp_path, "name: w\njobs:\n  - name: a\n    command: x\n  - command: y\n")
    assert f"{path}:5" in str(error) and "job '#2'" in str(error) and "'name'" in str(error)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("memory", "100", "invalid memory '100'"), ("memory", "4 gigs", "invalid memory"),
     ("runtime", "30m", "invalid duration '30m'"), ("runtime", "PT0S", "must be positive")],
)
def test_bad_memory_or_duration_names_file_entry_and_line(tmp_path: Path, field: str, value: str,
                                                          message: str) -> None:
    error, path = load_error(tmp_path, f"""\
        name: w
        jobs:
          - name: a
            command: x
            resource_requirements: small
        resource_requirements:
          - name: small
            num_cpus: 1
            {field}: "{value}"
        """)
    assert str(error).startswith(f"{path}:9, field 'resource_requirements[small].{field}': ")
    assert message in str(error)


def test_only_one_error_even_when_there_are_several(tmp_path: Path) -> None:
    error, _ = load_error(tmp_path, """\
        name: w
        jobs:
          - name: a
            command: x
            bogus: 1
            other: 2
            priority: high
        """)
    assert "and 2 more problems" in str(error)
    assert isinstance(error, SpecError) and error.__cause__ is None


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="not found") as info:
        load_spec(tmp_path / "nope.yaml")
    assert info.value.file == str(tmp_path / "nope.yaml")


def test_undecodable_file(tmp_path: Path) -> None:
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"name: w\n\xff\xfegarbage")
    with pytest.raises(SpecError, match="not UTF-8 text") as info:
        load_spec(path)
    assert (info.value.file, info.value.line) == (str(path), 2)


def test_load_uses_one_parse(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The YAML is parsed once (the node tree gives both the data and the line numbers)."""
    calls = []
    real = yaml.safe_load
    monkeypatch.setattr(yaml, "safe_load", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(yaml, "compose", lambda *a, **k: calls.append(1) or pytest.fail("composed twice"))
    assert load_spec(write(tmp_path, MINIMAL)).name == "w"
    assert calls == []


def test_compile_errors_carry_the_line_of_the_job_entry(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        name: w
        jobs:
          - name: a
            command: x
          - name: b
            command: y
            depends_on: [nobody]
        """)
    with pytest.raises(SpecError) as info:
        compile_workflow(load_spec(path), str(path))
    assert str(info.value) == f"{path}:5, job 'b', field 'depends_on': depends on unknown job 'nobody'"
