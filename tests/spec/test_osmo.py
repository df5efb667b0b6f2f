"""OSMO workflow files: the translation into the native spec (commands quoted and substituted, whole
upstream groups as dependencies, leads, resources), format detection in the loader, and one clean
error naming the file, the task, the field and the line for every kind of bad input."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

from torc_slurm.compiler import compile_workflow
from torc_slurm.errors import SpecError
from torc_slurm.spec.load import load_spec, parse_spec
from torc_slurm.spec.osmo import OsmoError, is_osmo, translate

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "osmo"
# A program that prints its arguments as JSON: what the job's command handed it, exactly.
ARGV = ["python3", "-c", "import json, sys; print(json.dumps(sys.argv[1:]))"]


def task(name: str, *args: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": "ubuntu:24.04", "command": ARGV, "args": list(args), **extra}


def groups(*entries: tuple[str, list[dict[str, Any]]], **workflow: Any) -> dict[str, Any]:
    return {"workflow": {"name": "w", **workflow,
                         "groups": [{"name": name, "tasks": tasks} for name, tasks in entries]}}


def serial(*tasks: dict[str, Any], **workflow: Any) -> dict[str, Any]:
    return {"workflow": {"name": "w", **workflow, "tasks": list(tasks)}}


def by_name(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {job["name"]: job for job in spec["jobs"]}


def run_command(command: str, tmp_path: Path, **env: str) -> list[str]:
    """Run a job command as the runner does (bash -c, TORC_OUTPUT_DIR set); the argv it printed."""
    out = tmp_path / "out"
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={**os.environ, "TORC_OUTPUT_DIR": str(out), **env})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def translate_error(data: dict[str, Any]) -> OsmoError:
    with pytest.raises(OsmoError) as info:
        translate(data)
    return info.value


# -- the seed examples ---------------------------------------------------------------------------------

def test_simple_example_groups_leads_and_whole_group_dependencies() -> None:
    spec = load_spec(EXAMPLES / "combination_workflow_simple.yaml")
    assert spec.name == "data-pipeline"
    assert [(g.name, g.lead, g.group_end) for g in spec.groups] == [
        ("prepare-data", "generate-dataset", "lead"), ("train-models", "train-model-a", "lead")]
    jobs = {j.name: j for j in spec.jobs}
    assert [j.name for j in spec.jobs] == ["generate-dataset", "validate-data", "train-model-a", "train-model-b"]
    assert {n: j.group for n, j in jobs.items()} == {"generate-dataset": "prepare-data", "validate-data": "prepare-data",
                                                    "train-model-a": "train-models", "train-model-b": "train-models"}
    # Both tasks name only generate-dataset, but the group waits for the whole of prepare-data.
    assert jobs["train-model-a"].depends_on == jobs["train-model-b"].depends_on == ["generate-dataset", "validate-data"]
    assert jobs["generate-dataset"].depends_on == jobs["validate-data"].depends_on == []
    assert {j.image for j in spec.jobs} == {"ubuntu:24.04"}
    # Errors found later (by the compiler) can still name each task's line.
    assert spec._lines.jobs == (11, 23, 37, 48)


def test_complex_example_compiles_with_three_groups() -> None:
    spec = load_spec(EXAMPLES / "combination_workflow_complex.yaml")
    jobs = {j.name: j for j in spec.jobs}
    assert jobs["combine"].depends_on == ["transform-a", "transform-b"]
    assert jobs["transform-a"].depends_on == jobs["transform-b"].depends_on == ["download"]
    compiled = compile_workflow(spec, "complex.yaml")
    assert len(compiled.jobs) == 4
    if getattr(compiled, "groups", None) is not None:  # groups are compiled since the lead's change
        assert [g.name for g in compiled.groups] == ["fetch", "process", "aggregate"]


def test_examples_keep_the_seed_text() -> None:
    complex_text = (EXAMPLES / "combination_workflow_complex.yaml").read_text()
    assert "sleep 120" in complex_text and "tr '[:lower:]' '[:upper:]' < {{input:0}}/data/fruits.txt" in complex_text
    assert "for i in {1..10}; do" in (EXAMPLES / "combination_workflow_simple.yaml").read_text()


# -- commands and substitutions ---------------------------------------------------------------------------

def test_command_pieces_reach_the_program_unchanged(tmp_path: Path) -> None:
    tricky = ["it's \"quoted\"", "$HOME `id` *", "two\nlines", "", "back\\slash", "{1..3}", "-n"]
    spec = translate(serial(task("t", *tricky)))
    assert run_command(spec["jobs"][0]["command"], tmp_path) == tricky


def test_bash_c_with_a_multi_line_script_runs_unchanged(tmp_path: Path) -> None:
    script = textwrap.dedent("""\
        for i in {1..3}; do
          echo "n=$i 'x'"
        done
        echo done > {{output}}/marker
        """)
    spec = translate(serial({"name": "t", "image": "u", "command": ["bash", "-c"], "args": [script]}))
    out = tmp_path / "out"
    done = subprocess.run(["bash", "-c", spec["jobs"][0]["command"]], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "TORC_OUTPUT_DIR": str(out)})
    assert done.returncode == 0, done.stderr
    assert done.stdout == "n=1 'x'\nn=2 'x'\nn=3 'x'\n"
    assert (out / "tasks" / "t" / "marker").read_text() == "done\n"


def test_output_and_inputs_become_absolute_folders(tmp_path: Path) -> None:
    spec = translate(serial(
        task("a", "a:{{output}}"), task("b", "b"),
        task("c", "{{output}}/x", "{{input:0}}", "{{ input:1 }}/y z", "{{input:a}}", "pre{{input:b}}post",
             inputs=[{"task": "a"}, {"task": "b"}])))
    out = tmp_path / "out"
    jobs = by_name(spec)
    assert jobs["c"]["depends_on"] == ["a", "b"] and "depends_on" not in jobs["a"] and "groups" not in spec
    assert run_command(jobs["c"]["command"], tmp_path) == [
        f"{out}/tasks/c/x", f"{out}/tasks/a", f"{out}/tasks/b/y z", f"{out}/tasks/a", f"pre{out}/tasks/bpost"]
    assert run_command(jobs["a"]["command"], tmp_path) == [f"a:{out}/tasks/a"]


def test_output_folder_is_created_user_only_before_the_command(tmp_path: Path) -> None:
    spec = translate(serial({"name": "t", "image": "u", "command": ["ls", "-ld"], "args": ["{{output}}"]}))
    command = spec["jobs"][0]["command"]
    assert command.startswith('mkdir -p -m 700 -- "${TORC_OUTPUT_DIR:?}/tasks" "${TORC_OUTPUT_DIR}/tasks/t" && ')
    run = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "TORC_OUTPUT_DIR": str(tmp_path / "out")})
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "out" / "tasks" / "t").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "out" / "tasks").stat().st_mode & 0o777 == 0o700
    # Without TORC_OUTPUT_DIR the job fails at once instead of writing under /tasks.
    env = {k: v for k, v in os.environ.items() if k != "TORC_OUTPUT_DIR"}
    bare = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60, env=env)
    assert bare.returncode != 0 and "TORC_OUTPUT_DIR" in bare.stderr


def test_host_of_a_sibling_is_its_rank_variable(tmp_path: Path) -> None:
    spec = translate(groups(("g", [task("server", "{{host:server}}", lead=True),
                                   task("client", "--server={{host:server}}:8000", "{{host:client}}")])))
    client = by_name(spec)["client"]["command"]
    assert '"${TORC_GROUP_HOST_0}"' in client and '"${TORC_GROUP_HOST_1}"' in client
    assert run_command(client, tmp_path, TORC_GROUP_HOST_0="node-a", TORC_GROUP_HOST_1="node-b") == [
        "--server=node-a:8000", "node-b"]


def test_numbers_in_command_and_args_are_text(tmp_path: Path) -> None:
    spec = translate(serial({"name": "t", "image": "u", "command": ARGV, "args": [42, 1.5]}))
    assert run_command(spec["jobs"][0]["command"], tmp_path) == ["42", "1.5"]


# -- groups, leads and dependencies ---------------------------------------------------------------------------

def test_every_member_depends_on_every_task_of_each_upstream_group() -> None:
    spec = translate(groups(
        ("one", [task("a1", lead=True), task("a2"), task("a3")]),
        ("two", [task("b1", lead=True), task("b2")]),
        ("three", [task("c1", lead=True, inputs=[{"task": "a2"}]), task("c2", inputs=[{"task": "b2"}]),
                   task("c3")])))
    jobs = by_name(spec)
    for name in ("c1", "c2", "c3"):
        assert jobs[name]["depends_on"] == ["a1", "a2", "a3", "b1", "b2"], name
    assert all("depends_on" not in jobs[n] for n in ("a1", "a2", "a3", "b1", "b2"))
    assert spec["groups"] == [{"name": "one", "lead": "a1", "group_end": "lead"},
                              {"name": "two", "lead": "b1", "group_end": "lead"},
                              {"name": "three", "lead": "c1", "group_end": "lead"}]


def test_a_group_of_one_task_has_it_as_lead() -> None:
    spec = translate(groups(("solo", [task("only")])))
    assert spec["groups"] == [{"name": "solo", "lead": "only", "group_end": "lead"}]


def test_serial_workflow_has_plain_jobs() -> None:
    spec = translate(serial(task("a"), task("b", inputs=[{"task": "a"}]), task("c", inputs=[{"task": "a"}, {"task": "a"}])))
    jobs = by_name(spec)
    assert "groups" not in spec and all("group" not in j for j in jobs.values())
    assert jobs["b"]["depends_on"] == ["a"] and jobs["c"]["depends_on"] == ["a"]


def test_environment_and_image() -> None:
    spec = translate(serial(task("t", environment={"A": "x y", "N": 3, "FLAG": True})))
    job = spec["jobs"][0]
    assert job["env"] == {"A": "x y", "N": "3", "FLAG": "true"} and job["image"] == "ubuntu:24.04"
    assert "image" not in translate(serial({"name": "t", "command": ["true"]}))["jobs"][0]


# -- resources ---------------------------------------------------------------------------------------------

def test_resource_profiles() -> None:
    spec = translate(serial(
        task("plain"), task("big", resource="gpu"), task("own", resources={"cpu": 3, "memory": "1.5Gi"}),
        resources={"default": {"cpu": 2, "memory": "4Gi"}, "gpu": {"cpu": "8", "gpu": 2, "memory": "512Mi"}}))
    jobs = by_name(spec)
    assert "resource_requirements" not in jobs["plain"]  # the spec's 'default' entry applies
    assert jobs["big"]["resource_requirements"] == "gpu" and jobs["own"]["resource_requirements"] == "own:resources"
    assert spec["resource_requirements"] == [
        {"name": "default", "num_cpus": 2, "memory": "4g"},
        {"name": "gpu", "num_cpus": 8, "num_gpus": 2, "memory": "512m"},
        {"name": "own:resources", "num_cpus": 3, "memory": "1536m"}]
    loaded = parse_spec(json.dumps(serial(task("plain"), resources={"default": {"cpu": 2, "memory": "4Gi"}})),
                        source="w.json")
    figures = loaded.resources_by_name()["default"]
    assert (figures.num_cpus, figures.num_gpus, figures.memory_bytes, figures.runtime) == (2, 0, 4 * 2**30, "PT1M")


@pytest.mark.parametrize(("memory", "native", "size"), [
    ("16Gi", "16g", 16 * 2**30), ("512Mi", "512m", 512 * 2**20), ("1Ti", "1t", 2**40), ("2GiB", "2g", 2 * 2**30),
    ("64Ki", "64k", 64 * 2**10), (1000, "1000b", 1000), ("2048", "2k", 2048), ("0.5Gi", "512m", 2**29),
    ("1.001Ki", "1026b", 1026),
])
def test_memory_units_convert_exactly(memory: Any, native: str, size: int) -> None:
    spec = translate(serial(task("t"), resources={"default": {"memory": memory}}))
    assert spec["resource_requirements"][0]["memory"] == native
    loaded = parse_spec(json.dumps(serial(task("t"), resources={"default": {"memory": memory}})), source="w.json")
    assert loaded.resources_by_name()["default"].memory_bytes == size


@pytest.mark.parametrize(("profile", "message"), [
    ({"memory": "4G"}, "'G' is ambiguous"),
    ({"memory": "4GB"}, "decimal units"),
    ({"memory": "100m"}, "Kubernetes' milli"),
    ({"memory": "lots"}, "quantity such as '4Gi'"),
    ({"memory": "0Gi"}, "more than 0"),
    ({"memory": "2048Ti"}, "more than 1 PiB"),
    ({"cpu": 0.5}, "whole number"),
    ({"cpu": 0}, "between 1"),
    ({"cpu": True}, "whole number"),
    ({"gpu": -1}, "between 0"),
    ({"storage": "10Gi"}, "not supported: storage"),
    ({"platform": "dgx-a100"}, "not supported: platform"),
    ({"nodesExcluded": ["n1"]}, "not supported: nodesExcluded"),
    ({"topology": []}, "not supported: topology"),
    ({"cpus": 2}, "unknown OSMO field 'cpus'"),
])
def test_bad_resource_profiles(profile: dict[str, Any], message: str) -> None:
    error = translate_error(serial(task("t"), resources={"default": profile}))
    assert message in error.message
    assert error.task is None and error.field == f"workflow.resources.default.{next(iter(profile))}"


def test_unknown_profile_and_both_resource_fields() -> None:
    error = translate_error(serial(task("t", resource="huge"), resources={"default": {"cpu": 1}}))
    assert (error.task, error.field) == ("t", "resource") and "unknown resource profile 'huge'" in error.message
    error = translate_error(serial(task("t", resource="default", resources={"cpu": 1})))
    assert (error.task, error.field) == ("t", "resources") and "either" in error.message


# -- bad input: one clean error each, with file, task, field and line ------------------------------------------

def load_error(tmp_path: Path, text: str) -> SpecError:
    path = tmp_path / "osmo.yaml"
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.file == str(path)
    return info.value


TWO_GROUPS = """
workflow:
  name: w
  groups:
  - name: first
    tasks:
    - name: a
      lead: true
      command: ["bash", "-c"]
      args:
      - |
        echo one
        echo {{{{input:{n}}}}}
      inputs:
      - task: {upstream}
    - name: b
      command: [true]
  - name: second
    tasks:
    - name: c
      lead: true
      command: [true]
"""


def test_input_index_out_of_range_names_line_task_and_field(tmp_path: Path) -> None:
    error = load_error(tmp_path, TWO_GROUPS.format(n=3, upstream="c"))
    assert (error.job, error.field, error.line) == ("a", "args[0]", 12)  # the line of the substitution
    assert "{{input:3}} names no input: the task has 1 input (c)" in error.message
    assert str(error).startswith(f"{tmp_path / 'osmo.yaml'}:12, task 'a', field 'args[0]': ")


def test_unknown_input_task(tmp_path: Path) -> None:
    error = load_error(tmp_path, TWO_GROUPS.format(n=0, upstream="nope"))
    assert (error.job, error.field, error.line) == ("a", "inputs[0].task", 14)
    assert "unknown task 'nope'; tasks: a, b, c" in error.message


def test_input_from_the_same_group(tmp_path: Path) -> None:
    error = load_error(tmp_path, TWO_GROUPS.format(n=0, upstream="b"))
    assert (error.job, error.field, error.line) == ("a", "inputs[0].task", 14)
    assert "same group, 'first'" in error.message


def test_two_leads(tmp_path: Path) -> None:
    error = load_error(tmp_path, TWO_GROUPS.format(n=0, upstream="c").replace("    - name: b\n",
                                                                             "    - name: b\n      lead: true\n"))
    assert (error.job, error.field, error.line) == ("b", "lead", 16)
    assert "group 'first' has two leads, 'a' and 'b'" in error.message


def test_no_lead(tmp_path: Path) -> None:
    error = load_error(tmp_path, TWO_GROUPS.format(n=0, upstream="c").replace("      lead: true\n      command: [\"bash\"",
                                                                             "      command: [\"bash\""))
    assert (error.job, error.field, error.line) == (None, "workflow.groups[first]", 4)
    assert "group 'first' has no lead: mark exactly one of its tasks lead: true" in error.message


@pytest.mark.parametrize(("args", "inputs", "message"), [
    (["{{input:1}}"], [{"task": "a"}], "{{input:1}} names no input: the task has 1 input (a)"),
    (["{{input:0}}"], [], "{{input:0}} names no input: the task has no inputs"),
    (["{{input:zz}}"], [{"task": "a"}], "{{input:zz}}: unknown task 'zz'"),
    (["{{input:b}}"], [{"task": "a"}], "'b' is not an input of this task; add '- task: b' to its inputs"),
    (["x", "{{host:a}}"], [], "works only between tasks of one group"),
    (["{{workflow_id}}"], [], "not supported: the substitution {{workflow_id}}"),
    (["{{ image }}"], [], "not supported: the substitution {{ image }}"),
])
def test_bad_substitutions(args: list[str], inputs: list[dict[str, str]], message: str) -> None:
    error = translate_error(serial(task("a"), task("b"), task("c", *args, inputs=inputs)))
    assert message in error.message
    assert (error.task, error.field) == ("c", f"args[{len(args) - 1}]")


def test_host_outside_the_group_and_unknown_host() -> None:
    data = groups(("g1", [task("a", lead=True)]), ("g2", [task("b", "{{host:a}}", lead=True)]))
    error = translate_error(data)
    assert (error.task, error.field) == ("b", "args[0]") and "'a' is not in this task's group 'g2'" in error.message
    error = translate_error(groups(("g1", [task("a", "{{host:q}}", lead=True)])))
    assert "{{host:q}}: unknown task 'q'" in error.message


@pytest.mark.parametrize(("field", "value"), [
    ("outputs", [{"url": "s3://b/o"}]), ("files", [{"path": "/x", "contents": "y"}]), ("kpis", []),
    ("privileged", True), ("hostNetwork", True), ("volumeMounts", ["/a:/b"]), ("credentials", {"c": "/p"}),
    ("downloadType", "download"), ("cacheSize", "1Gi"), ("exitActions", {"RETRY": "1"}), ("checkpoint", []),
    ("backend", "b"),
])
def test_unsupported_task_fields(tmp_path: Path, field: str, value: Any) -> None:
    data = serial(task("a"), task("b", **{field: value}))
    error = translate_error(data)
    assert error.message.startswith(f"not supported: {field} (")
    assert (error.task, error.field) == ("b", field)
    path = tmp_path / "w.json"
    path.write_text(json.dumps(data, indent=1))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.line is not None and f'"{field}"' in path.read_text().splitlines()[info.value.line - 1]


@pytest.mark.parametrize(("data", "field", "message"), [
    ({"workflow": {"name": "w", "tasks": [task("a")], "pool": "p"}}, "workflow.pool", "not supported: pool"),
    ({"workflow": {"name": "w", "tasks": [task("a")], "timeout": {}}}, "workflow.timeout", "not supported: timeout"),
    ({"workflow": {"name": "w", "tasks": [task("a")], "labels": {}}}, "workflow.labels", "not supported: labels"),
    ({"workflow": {"name": "w", "tasks": [task("a")], "backend": "x"}}, "workflow.backend", "not supported: backend"),
    ({"workflow": {"name": "w", "tasks": [task("a")], "nmae": "x"}}, "workflow.nmae", "unknown OSMO field 'nmae'"),
    ({"workflow": {"name": "w", "tasks": [task("a")]}, "default-values": {}}, "default-values",
     "not supported: default-values"),
    ({"workflow": {"name": "w", "tasks": [task("a")]}, "version": 3}, "version", "only version 2"),
    ({"workflow": {"name": "w", "groups": [{"name": "g", "barrier": True, "tasks": [task("a")]}]}},
     "workflow.groups[g].barrier", "not supported: barrier"),
    ({"workflow": {"name": "w", "groups": [{"name": "g", "ignoreNonleadStatus": False, "tasks": [task("a")]}]}},
     "workflow.groups[g].ignoreNonleadStatus", "ignoreNonleadStatus other than true"),
    ({"workflow": {"name": "w", "groups": [{"name": "g", "tasks": []}]}}, "workflow.groups[g].tasks",
     "non-empty list"),
    ({"workflow": {"name": "w", "groups": [task("a")], "tasks": [task("b")]}}, "workflow.tasks", "not both"),
    ({"workflow": {"name": "w"}}, "workflow", "needs 'groups'"),
    ({"workflow": {"tasks": [task("a")]}}, "workflow", "the workflow's name"),
    ({"workflow": {"name": "{{workflow_name}}", "tasks": [task("a")]}}, "workflow.name", "Jinja"),
])
def test_unsupported_and_unknown_workflow_fields(data: dict[str, Any], field: str, message: str) -> None:
    error = translate_error(data)
    assert message in error.message and (error.task, error.field) == (None, field)


@pytest.mark.parametrize(("tasks", "task_name", "field", "message"), [
    ([task("a", inputs=[{"url": "s3://x"}])], "a", "inputs[0].url", "not supported: url"),
    ([task("a"), task("b", inputs=[{"task": "a", "regex": ".*"}])], "b", "inputs[0].regex", "not supported: regex"),
    ([task("a", inputs=[{"task": "a"}])], "a", "inputs[0].task", "its own input"),
    ([task("a", inputs=[{"task": "wf-1:a"}])], "a", "inputs[0].task", "other workflows"),
    ([task("a"), task("A")], "A", "name", "used twice (names differ only in case"),
    ([task("a_b"), task("a-b")], "a-b", "name", "used twice"),
    ([task("a/b")], "a/b", "name", "is not allowed here"),
    ([task("a..b")], "a..b", "name", "no '..'"),
    ([task("-a")], "-a", "name", "starting with a letter or digit"),
    ([{"name": "a", "args": ["x"]}], "a", None, "required field is missing: command"),
    ([{"name": "a", "command": "echo hi"}], "a", "command", "must be a non-empty list of strings"),
    ([{"name": "a", "command": ["echo", None]}], "a", "command[1]", "expected text"),
    ([task("a", lead="yes")], "a", "lead", "true or false"),
    ([task("a", environment={"1X": "v"})], "a", "environment.1X", "not valid"),
    ([task("a", environment={"X": "{{output}}"})], "a", "environment.X", "only in command and args"),
    ([task("a", image="ubuntu {{tag}}")], "a", "image", "without spaces"),
])
def test_bad_tasks(tasks: list[dict[str, Any]], task_name: str, field: str | None, message: str) -> None:
    error = translate_error(serial(*tasks))
    assert message in error.message and (error.task, error.field) == (task_name, field)


def test_group_and_task_names_must_differ() -> None:
    error = translate_error(groups(("a", [task("a")])))
    assert "used twice" in error.message and (error.task, error.field) == ("a", "name")


def test_a_cycle_between_groups_is_a_compile_error(tmp_path: Path) -> None:
    path = tmp_path / "cycle.json"
    path.write_text(json.dumps(groups(("g1", [task("a", lead=True, inputs=[{"task": "b"}])]),
                                      ("g2", [task("b", lead=True, inputs=[{"task": "a"}])]))))
    with pytest.raises(SpecError) as info:
        compile_workflow(load_spec(path), str(path))
    assert "cycle" in info.value.message.lower()


# -- format detection ---------------------------------------------------------------------------------------

def test_detection() -> None:
    assert is_osmo({"workflow": {"name": "w", "groups": []}})
    assert is_osmo({"workflow": {"name": "w", "tasks": []}})
    assert is_osmo({"workflow": {"name": "w"}})  # read as OSMO so the error says what OSMO needs
    assert not is_osmo({"name": "w", "jobs": [{"name": "a", "command": "true"}]})
    assert not is_osmo({"name": "w", "jobs": [], "workflow": {"tasks": []}})
    assert not is_osmo({"workflow": "text"})
    torc = parse_spec("name: w\njobs:\n  - {name: a, command: 'echo {{output}}'}\n", source="w.yaml")
    assert torc.jobs[0].command == "echo {{output}}"  # a torc spec is not translated


def test_an_error_found_by_the_native_models_names_the_osmo_task(tmp_path: Path) -> None:
    error = load_error(tmp_path, """
        workflow:
          name: w
          tasks:
          - name: a
            command: [echo, "%s"]
        """ % ("x" * 200_000))
    assert (error.job, error.field, error.line) == ("a", "command", 4)
    assert "Linux passes at most" in error.message
