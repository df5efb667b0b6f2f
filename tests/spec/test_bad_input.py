"""Bad input gets one SpecError naming the file (and the job, the field and the line where they
apply), never a traceback, a hang or a memory blow-up. One table per kind of bad input; each row
says what the message must contain and where it must point (see ``torc_slurm.spec.limits``)."""

from __future__ import annotations

import json
import os
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import torc_slurm.compiler as compiler_module
from torc_slurm.compiler import compile_workflow
from torc_slurm.errors import SpecError
from torc_slurm.spec.limits import MAX_JOBS, MAX_SPEC_BYTES
from torc_slurm.spec import load as load_module
from torc_slurm.spec import safe_yaml
from torc_slurm.spec.load import load_spec, parse_spec
from torc_slurm.spec.parameters import count_combinations, parse_values

JOB = "name: w\njobs:\n  - name: a\n    command: x\n"


def spec_error(path: Path) -> SpecError:
    """Load and compile ``path``; the SpecError, checked to start with the file name."""
    with pytest.raises(SpecError) as info:
        compile_workflow(load_spec(path), str(path))
    error = info.value
    assert error.file == str(path) and str(error).startswith(str(path)), str(error)
    assert error.__cause__ is None
    return error


def check(tmp_path: Path, text: str, message: str, job: str | None = None, field: str | None = None,
          line: int | None = None, name: str = "spec.yaml") -> SpecError:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    error = spec_error(path)
    assert message in error.message, str(error)
    assert (error.job, error.field) == (job, field), str(error)
    if line is not None:
        assert error.line == line, str(error)
        assert str(error).startswith(f"{path}:{line}")
    return error


def resources(**fields: Any) -> str:
    items = "".join(f"    {key}: {value}\n" for key, value in fields.items())
    return f"{JOB}    resource_requirements: r\nresource_requirements:\n  - name: r\n{items}"


# -- 1. numbers too big for SQLite, or for any machine --------------------------------------------

RR = "resource_requirements[r]"
TOO_BIG = {
    "num_cpus past int64": (resources(num_cpus=99999999999999999999), "between 1 and 1,000,000", f"{RR}.num_cpus"),
    "num_cpus past the cap": (resources(num_cpus=1_000_001), "between 1 and 1,000,000", f"{RR}.num_cpus"),
    "num_gpus": (resources(num_gpus=99999999999999999999), "between 0 and 1,000,000", f"{RR}.num_gpus"),
    "num_nodes": (resources(num_nodes=2**63), "between 1 and 1,000,000", f"{RR}.num_nodes"),
    "memory": (resources(memory="99999999999999999999t"), "more than 1 PiB", f"{RR}.memory"),
    "memory digits": (resources(memory="9" * 30 + "t"), "invalid memory", f"{RR}.memory"),
    "memory past 1 PiB": (resources(memory="2000t"), "more than 1 PiB", f"{RR}.memory"),
    "runtime": (resources(runtime="P99999999D"), "more than 3650 days", f"{RR}.runtime"),
    "runtime in seconds": (resources(runtime="PT99999999999999999999S"), "invalid duration", f"{RR}.runtime"),
}


@pytest.mark.parametrize("case", list(TOO_BIG))
def test_numbers_too_big_are_refused_at_load_time(tmp_path: Path, case: str) -> None:
    text, message, field = TOO_BIG[case]
    check(tmp_path, text, message, field=field, line=len(text.splitlines()))


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 99999999999999999999])
def test_priority_must_fit_sqlite(tmp_path: Path, value: int) -> None:
    check(tmp_path, f"{JOB}    priority: {value}\n", "signed 64-bit", job="a", field="priority", line=5)


@pytest.mark.parametrize("value", [2**63 - 1, -(2**63), 0, -5])
def test_priority_within_int64_is_kept(tmp_path: Path, value: int) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(f"{JOB}    priority: {value}\n")
    assert compile_workflow(load_spec(path)).jobs[0].priority == value


@pytest.mark.parametrize(
    ("snippet", "field", "message"),
    [
        ("slurm_schedulers:\n  - {name: s, nodes: 10000000}\n", "slurm_schedulers[s].nodes", "1,000,000"),
        ("slurm_schedulers:\n  - {name: s, ntasks_per_node: 0}\n", "slurm_schedulers[s].ntasks_per_node", "between 1"),
        ("slurm_schedulers:\n  - {name: s, walltime: '999999-00:00:00'}\n", "slurm_schedulers[s].walltime",
         "more than 3650 days"),
        ("compute_node_expiration_buffer_seconds: 99999999999999999999\n", "compute_node_expiration_buffer_seconds",
         "between 0 and 315,360,000"),
        ("compute_node_wait_for_new_jobs_seconds: -1\n", "compute_node_wait_for_new_jobs_seconds", "between 0"),
    ],
)
def test_other_numbers_have_bounds(tmp_path: Path, snippet: str, field: str, message: str) -> None:
    check(tmp_path, JOB + snippet, message, field=field, line=len((JOB + snippet).splitlines()))


# -- 2. parameter products too large to expand ------------------------------------------------------

def test_a_huge_product_is_refused_with_its_count_before_expanding(tmp_path: Path) -> None:
    started = time.perf_counter()
    error = check(tmp_path, """\
        name: w
        jobs:
          - name: a_{i}_{j}
            command: x
            parameters: {i: '0:99999', j: '0:99999'}
        """, "expand to 10,000,000,000 jobs", job="a_{i}_{j}", field="parameters", line=3)
    assert "i: 100,000 x j: 100,000" in error.message and f"at most {MAX_JOBS:,} jobs" in error.message
    assert time.perf_counter() - started < 2


@pytest.mark.parametrize(
    ("text", "message", "job", "field", "line"),
    [
        # the count adds up over entries
        (JOB.replace("name: a", "name: a_{i}") + "    parameters: {i: '1:6000000'}\n"
         "  - name: b_{i}\n    command: x\n    parameters: {i: '1:6000000'}\n",
         "on top of the 6,000,000 before it", "b_{i}", "parameters", 6),
        # a job whose name uses no parameter still expands its lists over every combination
        ("name: w\njobs:\n  - name: a\n    command: x\n    depends_on: ['b{i}{j}']\n"
         "    parameters: {i: '0:99999', j: '0:99999'}\n", "10,000,000,000", "a", "parameters", 3),
        # workflow-level parameters count when a job uses them
        ("name: w\nparameters: {i: '1:100000', j: '1:100000'}\njobs:\n  - name: a_{i}_{j}\n    command: x\n",
         "10,000,000,000 jobs", "a_{i}_{j}", "parameters", 4),
        # one parameter alone
        ("name: w\njobs:\n  - name: a_{i}\n    command: x\n    parameters: {i: '0:10000000'}\n",
         "more than 10,000,000 values", "a_{i}", "parameters.i", 5),
        ("name: w\njobs:\n  - name: a_{i}\n    command: x\n    parameters: {i: '0:1e300:1e-300'}\n",
         "more than 10,000,000 values", "a_{i}", "parameters.i", 5),
        # zip: the common length, and unequal lengths are an error
        ("name: w\njobs:\n  - name: a_{i}_{j}\n    command: x\n    parameter_mode: zip\n"
         "    parameters: {i: '1:3', j: '1:4'}\n", "equal length (i: 3, j: 4)", "a_{i}_{j}", "parameters", 3),
    ],
)
def test_expansion_limits(tmp_path: Path, text: str, message: str, job: str, field: str, line: int) -> None:
    check(tmp_path, text, message, job=job, field=field, line=line)


def test_files_and_user_data_are_counted_too(tmp_path: Path) -> None:
    check(tmp_path, JOB + "files:\n  - name: f_{i}_{j}\n    path: p\n    parameters: {i: '1:99999', j: '1:99999'}\n",
          "files; a workflow may have at most", field="file[f_{i}_{j}].parameters")
    check(tmp_path, JOB + "user_data:\n  - name: u_{i}_{j}\n    parameters: {i: '1:99999', j: '1:99999'}\n",
          "user_data entries", field="user_data[u_{i}_{j}].parameters")


def test_the_cap_is_exact_and_million_job_sweeps_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compiler_module, "MAX_JOBS", 100)
    text = "name: w\njobs:\n  - name: a_{i}_{j}\n    command: x\n    parameters: {i: '1:10', j: '1:%d'}\n"
    assert len(compile_workflow(parse_spec(text % 10)).jobs) == 100
    with pytest.raises(SpecError, match="expand to 110 jobs"):
        compile_workflow(parse_spec(text % 11))
    million = {"i": parse_values("1:1000"), "j": parse_values("1:1000")}
    assert count_combinations(million, "product") == 1_000_000 <= MAX_JOBS


def test_ranges_are_counted_without_being_built() -> None:
    values = parse_values("0:9999999")
    assert len(values) == 10_000_000 and values[-1] == 9_999_999 and not isinstance(values, list)
    floats = parse_values("0:999999.9:0.1")
    assert len(floats) == 10_000_000 and floats[3] == 0.3 and not isinstance(floats, list)


# -- 3. regexes: linear time, RE2 syntax -------------------------------------------------------------

def many_as(count: int = 60) -> str:
    return "".join(f"  - name: {'a' * 31}_{i}\n    command: x\n" for i in range(count))


def test_a_catastrophic_regex_does_not_hang(tmp_path: Path) -> None:
    """'^(a+)+$' against 'aaa…a_N' takes 2^31 steps per name on a backtracking engine."""
    path = tmp_path / "regex.yaml"
    path.write_text("name: w\njobs:\n" + many_as() + "  - name: z\n    command: x\n"
                    "    depends_on_regexes: ['^(a+)+$', '(a+)+_']\n")
    started = time.perf_counter()
    error = spec_error(path)
    assert time.perf_counter() - started < 5
    assert (error.job, error.field, error.line) == ("z", "depends_on_regexes", 123)
    assert "'^(a+)+$' matches no other job" in error.message
    path.write_text("name: w\njobs:\n" + many_as() + "  - name: z\n    command: x\n"
                    "    depends_on_regexes: ['(a+)+_']\n")
    compiled = compile_workflow(load_spec(path))  # the same shape that matches: every a-job
    assert len(compiled.dependency_sets[compiled.jobs[-1].depset]) == 60  # type: ignore[index]


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        (r"(a)\\1", "invalid escape sequence"),      # backreference
        ("a(?=b)", "invalid perl operator"),          # lookahead
        ("(?<!a)b", "invalid perl operator"),         # lookbehind
        ("(unclosed", "missing )"),
        ("a{1000}{1000}", "bad repetition operator"),
    ],
)
def test_regex_syntax_re2_lacks_is_refused_naming_job_and_field(tmp_path: Path, pattern: str, reason: str) -> None:
    error = check(tmp_path, JOB + f"  - name: b\n    command: y\n    depends_on_regexes: [\"{pattern}\"]\n",
                  reason, job="b", field="depends_on_regexes", line=5)
    assert "no backreferences and no lookaround" in error.message


# -- 4. files that are not spec files ---------------------------------------------------------------

def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)
    started = time.perf_counter()
    with pytest.raises(SpecError, match="FIFO") as info:
        load_spec(fifo)
    assert time.perf_counter() - started < 2 and info.value.file == str(fifo)
    link = tmp_path / "link.yaml"
    link.symlink_to(fifo)
    with pytest.raises(SpecError, match="FIFO"):
        load_spec(link)


@pytest.mark.parametrize(
    ("path", "message"),
    [("/dev/zero", "this is a character device, not a spec file"),
     ("/dev/null", "this is a character device"),
     (".", "this is a directory, not a spec file"),
     ("nope.yaml", "spec file not found"),
     ("nope/deeper.yaml", "spec file not found")],
)
def test_special_and_missing_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str, message: str) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError, match=message) as info:
        load_spec(path)
    assert str(info.value).startswith(f"{path}: ")


@pytest.mark.parametrize(
    ("data", "message", "line"),
    [
        (b"\x7fELF\x02\x01\x01\x00\x00", "contains NUL bytes, so it is binary", 1),
        ("name: w\n".encode("utf-16"), "contains NUL bytes", 1),
        (b"name: w\njobs: \xff\xfe\n", "not UTF-8 text (byte 0xff at offset 14)", 2),
        (b"name: w\njobs:\n  - {name: a, command: \xe9}\n", "not UTF-8 text", 3),
        (b"", "the spec is empty", None),
        (b"   \n# only a comment\n", "the spec is empty", None),
    ],
)
def test_bytes_that_are_not_a_spec(tmp_path: Path, data: bytes, message: str, line: int | None) -> None:
    path = tmp_path / "spec.yaml"
    path.write_bytes(data)
    error = spec_error(path)
    assert message in error.message and error.line == line


def test_a_file_over_the_size_cap_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with open(path, "wb") as handle:  # sparse: no disk space used
        handle.truncate(MAX_SPEC_BYTES + 1)
    error = spec_error(path)
    assert "a spec may be at most 64 MiB" in error.message


# -- 5. duplicate keys -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("text", "message", "job", "field", "line"),
    [
        ("name: w\njobs:\n  - name: a\n    command: x\n    name: b\n",
         "duplicate key 'name' (first at line 3, again at line 5)", "a", "name", 5),
        ("name: w\njobs:\n  - {name: a, command: x}\njobs:\n  - {name: b, command: y}\n",
         "duplicate key 'jobs' (first at line 2, again at line 4)", None, "jobs", 4),
        ("name: w\njobs:\n  - {name: a, command: x, command: y}\n",
         "duplicate key 'command' (first at line 3, again at line 3)", "a", "command", 3),
        ("name: w\njobs:\n  - name: a\n    command: x\n    env:\n      A: 1\n      A: 2\n",
         "duplicate key 'A' (first at line 6, again at line 7)", "a", "env.A", 7),
        (JOB + "resource_requirements:\n  - name: r\n    memory: 1g\n    memory: 2g\n",
         "(first at line 7, again at line 8)", None, "resource_requirements[r].memory", 8),
        ("name: w\nmetadata: {a: {b: {c: 1, c: 2}}}\njobs:\n  - {name: a, command: x}\n",
         "duplicate key 'c'", None, "metadata.a.b.c", 2),
        ("name: w\nmetadata: {1: a, 0x1: b}\njobs:\n  - {name: a, command: x}\n",
         "duplicate key '0x1'", None, "metadata.0x1", 2),
    ],
)
def test_duplicate_yaml_keys_name_both_lines(tmp_path: Path, text: str, message: str, job: str | None,
                                             field: str | None, line: int) -> None:
    check(tmp_path, text, message, job=job, field=field, line=line)


def test_merge_keys_may_be_overridden(tmp_path: Path) -> None:
    path = tmp_path / "merge.yaml"
    path.write_text("name: w\njobs:\n  - &base {name: a, command: x, priority: 1}\n"
                    "  - <<: *base\n    name: b\n    priority: 2\n")
    jobs = compile_workflow(load_spec(path)).jobs
    assert [(j.name, j.command, j.priority) for j in jobs] == [("a", "x", 1), ("b", "x", 2)]


@pytest.mark.parametrize(
    ("text", "message", "line"),
    [
        ('{"name": "w", "name": "v", "jobs": [{"name": "a", "command": "x"}]}',
         "duplicate key 'name' (first at line 1, again at line 1)", 1),
        ('{\n  "name": "w",\n  "jobs": [\n    {"name": "a",\n     "command": "x",\n     "command": "y"}\n  ]\n}',
         "duplicate key 'command' (first at line 5, again at line 6)", 6),
    ],
)
def test_duplicate_json_keys(tmp_path: Path, text: str, message: str, line: int) -> None:
    path = tmp_path / "spec.json"
    path.write_text(text)
    error = spec_error(path)
    assert message in error.message and error.line == line


def test_json_is_read_as_json(tmp_path: Path) -> None:
    """json.dumps output YAML 1.1 misreads: '1e-05' is a number, '\\ud83d\\ude00' one character."""
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"name": "w", "jobs": [{"name": "lr_{lr}", "command": "echo \U0001F600 {lr:.0e}",
                                                       "parameters": {"lr": [1e-05, 0.001]}}]}))
    assert [j.command for j in compile_workflow(load_spec(path)).jobs] == ["echo \U0001F600 1e-05",
                                                                          "echo \U0001F600 1e-03"]
    path.write_text('{"name": "w",\n "jobs": [{"name": "a", "command": "x", "priority": true}]}')
    error = spec_error(path)
    assert (error.job, error.field, error.line) == ("a", "priority", 2)
    path.write_text('{"name": "w", "jobs": [}')
    assert "not valid JSON" in spec_error(path).message
    path.write_text('\ufeff{"name": "w", "jobs": [{"name": "a", "command": "x"}]}')  # a BOM, as some editors write
    assert load_spec(path).name == "w"


# -- 6. booleans (and other non-numbers) where numbers are expected ---------------------------------

@pytest.mark.parametrize(
    ("text", "message", "job", "field"),
    [
        (JOB + "    parameters: {i: true}\n", "not a boolean (true", "a", "parameters.i"),
        (JOB + "    parameters: {i: yes}\n", "not a boolean (true; YAML also reads yes/no", "a", "parameters.i"),
        (JOB + "    parameters: {i: [1, false]}\n", "list may hold numbers and strings, not a boolean", "a",
         "parameters.i"),
        (JOB + "    parameters: {i: [[1]]}\n", "not a list", "a", "parameters.i"),
        (JOB + "    parameters: {i: {a: 1}}\n", "not a mapping", "a", "parameters.i"),
        (JOB + "    parameters: {i: }\n", "not an empty value", "a", "parameters.i"),
        (JOB + "    parameters: {i: .inf}\n", "finite number", "a", "parameters.i"),
        (JOB + "    priority: yes\n", "expected an integer, not a boolean", "a", "priority"),
        (JOB + "    priority: 1.5\n", "not the decimal number 1.5", "a", "priority"),
        (JOB + "    priority: '3'\n", "not the text '3'", "a", "priority"),
        (resources(num_cpus="true"), "not a boolean", None, f"{RR}.num_cpus"),
        (resources(num_gpus="off"), "not a boolean (false", None, f"{RR}.num_gpus"),
        (resources(num_nodes="4.0"), "not the decimal number 4.0", None, f"{RR}.num_nodes"),
        (resources(memory="true"), "valid string", None, f"{RR}.memory"),
        (JOB + "slurm_defaults: {exclusive: true}\n", "not a boolean", None, "slurm_defaults.exclusive"),
        (JOB + "compute_node_wait_for_new_jobs_seconds: no\n", "not a boolean", None,
         "compute_node_wait_for_new_jobs_seconds"),
    ],
)
def test_booleans_are_not_numbers(tmp_path: Path, text: str, message: str, job: str | None, field: str) -> None:
    check(tmp_path, text, message, job=job, field=field, line=len(text.splitlines()))


def test_what_torc_users_write_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(textwrap.dedent("""\
        name: w
        parameters: {seed: [1, 2]}
        jobs:
          - name: a_{i}_{lr}_{opt}_{seed}_{r}
            command: run {i} {lr} {opt} {seed} {r}
            priority: -3
            resource_requirements: r
            parameters: {i: 1:3, lr: "[0.1, 0.01]", opt: [adam, sgd], r: "0.5:1.0:0.25"}
        resource_requirements:
          - {name: r, num_cpus: 4, num_gpus: 0, num_nodes: 1, memory: 1.5g, runtime: PT30M}
        slurm_defaults: {account: proj, nodes: 2}
        """))
    compiled = compile_workflow(load_spec(path))
    assert len(compiled.jobs) == 3 * 2 * 2 * 2 * 3  # 'i: 1:3' unquoted is the range, not base-60 63
    assert compiled.jobs[0].name == "a_1_0.1_adam_1_0.5" and compiled.jobs[0].num_cpus == 4


# -- 7. what a fuzzer finds: nesting, aliases, odd types, odd characters -----------------------------

LAUGHS = "  a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"  {chr(98 + k)}: &{chr(98 + k)} [{', '.join(['*' + chr(97 + k)] * 9)}]\n" for k in range(9))
FUZZ_IDS = ["flow nesting", "block nesting", "billion laughs", "recursive alias", "long integer", "binary",
            "set", "python object", "custom tag", "two documents", "NUL escape", "NUL in a key", "bad !!bool",
            "bad !!int"]


@pytest.mark.parametrize(
    ("text", "message", "field", "line"),
    [
        ("name: w\nmetadata: " + "[" * 100_000 + "]" * 100_000 + "\n", "nested more than 100 levels",
         "metadata.0.0.0.0.0.…", 2),
        ("name: w\nmetadata:\n" + "- " * 50_000 + "x\n", "nested more than 100 levels", "metadata.0.0.0.0.0.…", 3),
        ("name: w\nmetadata:\n" + LAUGHS, "aliases expand the spec to more than 10,000,000 values", "metadata.h.0", 10),
        ("name: w\nmetadata: &m {self: *m}\n", "recursive structure", "metadata.self", 2),
        ("name: w\nmetadata: {n: " + "9" * 5000 + "}\n", "an integer of 5,000 digits is too long", "metadata.n", 2),
        ("name: w\nmetadata: !!binary aGk=\n", "tag '!!binary' is not allowed", "metadata", 2),
        ("name: w\nmetadata: !!set {a, b}\n", "tag '!!set' is not allowed", "metadata", 2),
        ("name: w\nmetadata: !!python/object/apply:os.system [id]\n", "is not allowed", "metadata", 2),
        ("name: w\nmetadata: !custom x\n", "tag '!custom' is not allowed", "metadata", 2),
        ("name: w\njobs: [{name: a, command: x}]\n---\nname: v\n", "expected a single document", None, None),
        ("name: w\njobs:\n  - name: a\n    command: \"echo \\0\"\n", "a NUL character", "command", 4),
        ("name: w\njobs:\n  - name: a\n    command: \"x\"\n    env: {\"A\\0\": x}\n", "a NUL character", "env", 5),
        ("name: w\nmetadata: {ok: !!bool maybe}\n", "'maybe' is not a valid !!bool", "metadata.ok", 2),
        ("name: w\nmetadata:\n  n: !!int 0x\n", "'0x' is not a valid !!int", "metadata.n", 3),
    ],
    ids=FUZZ_IDS,
)
def test_structures_no_spec_needs(tmp_path: Path, text: str, message: str, field: str | None,
                                  line: int | None) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    started = time.perf_counter()
    error = spec_error(path)
    assert time.perf_counter() - started < 5
    assert message in error.message and error.field == field, str(error)
    if line is not None:
        assert error.line == line, str(error)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- a\n- b\n", "not a list"),
        ("just text\n", "not a string"),
        ("42\n", "not a number"),
        ("null\n", "the spec is empty"),
        ("name: w\njobs: 5\n", "valid list"),
        ("name: w\njobs: [5]\n", "valid dictionary"),
        ("name: w\njobs: [[{name: a, command: x}]]\n", "valid dictionary"),
        ("name: [w]\njobs: [{name: a, command: x}]\n", "valid string"),
        ("name: w\njobs: [{name: a, command: x, env: [A]}]\n", "valid dictionary"),
        ("name: w\njobs: [{name: a, command: x, depends_on: b}]\n", "valid list"),
        ("name: w\njobs: [{name: a, command: x, parameters: [i]}]\n", "valid dictionary"),
        ("name: w\njobs: [{name: {x: 1}, command: x}]\n", "valid string"),
        ("name: w\njobs: [{name: a, command: x}]\nresource_requirements: {name: r}\n", "valid list"),
        ("name: w\njobs: [{name: a, command: x}]\nmetadata: [1]\n", "valid dictionary"),
        ("name: w\njobs: [{[a]: 1, command: x}]\n", "unhashable"),
        ("name: w\njobs: [{name: a, command: x}]\n" + "x" * 100, "not valid YAML"),
        ('name: w\njobs: [{name: a, command: "\\ud800"}]\n', "not valid YAML"),
    ],
)
def test_wrong_types_at_every_level(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    assert message in str(spec_error(path))


def test_a_huge_string_is_quoted_short(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(f"name: w\njobs:\n  - name: a\n    command: x\n    depends_on: ['{'z' * 3_000_000}']\n")
    error = spec_error(path)
    assert len(str(error)) < 500 and "3,000,002 characters" in str(error)
    path.write_text(f"name: w\njobs:\n  - name: a\n    command: '{'z' * 200_000}'\n")
    error = spec_error(path)
    assert "Linux passes at most 131,072 bytes" in error.message and (error.job, error.field) == ("a", "command")
    path.write_text(f"name: w\njobs:\n  - name: '{'a' * 100_000}/'\n    command: x\n")
    assert len(str(spec_error(path))) < 1000


def test_json_lone_surrogates_and_deep_nesting(tmp_path: Path) -> None:
    path = tmp_path / "spec.json"
    path.write_text('{"name": "w",\n "jobs": [{"name": "a", "command": "x\\ud800"}]}')
    error = spec_error(path)  # (no line: the YAML reader that finds lines for JSON refuses this text too)
    assert "unpaired surrogate" in error.message and (error.job, error.field) == ("a", "command")
    path.write_text('{"name": "w", "metadata": ' + "[" * 200_000 + "]" * 200_000 + "}")
    assert "nested more than 100 levels" in spec_error(path).message
    path.write_text('{"name": "w", "metadata": ' + "[" * 150 + "]" * 150 + "}")
    assert "nested more than 100 levels" in spec_error(path).message
    path.write_text('{"name": "w", "metadata": {"n": ' + "9" * 5000 + "}}")
    assert "5,000 digits" in spec_error(path).message


def test_a_spec_holds_at_most_max_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A flat 64 MiB list would be 32 million nodes (minutes, gigabytes): the count is capped (here
    lowered to 1000 so the test is quick), in YAML and JSON alike."""
    monkeypatch.setattr(safe_yaml, "MAX_VALUES", 1000)
    monkeypatch.setattr(load_module, "MAX_VALUES", 1000)
    for name, text in (("spec.yaml", "name: w\nmetadata: [" + "a, " * 1500 + "a]\n"),
                       ("spec.json", json.dumps({"name": "w", "metadata": ["a"] * 1500}))):
        path = tmp_path / name
        path.write_text(text)
        assert "the spec holds more than 1,000 values" in spec_error(path).message
    path.write_text(json.dumps({"name": "w", "jobs": [{"name": "a", "command": "x"}], "metadata": {"k": ["a"] * 900}}))
    assert len(load_spec(path).metadata["k"]) == 900
