"""JSON5 specs (torc reads them natively): comments, unquoted keys, trailing commas, single quotes,
hex numbers. Errors name the file, the line, the job and the field, as for YAML; never a traceback."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torc_slurm.compiler import compile_workflow
from torc_slurm.errors import SpecError
from torc_slurm.spec.load import load_spec, parse_spec

SPEC = """\
// a JSON5 spec: comments, unquoted keys, trailing commas, single quotes
{
  name: 'five',
  /* a block comment
     over two lines */
  jobs: [
    {name: 'make_{i}', command: "echo {i} > out_{i}", parameters: {i: '1:3'},},
    {
      name: 'sum',
      command: 'cat out_*',
      depends_on_regexes: ['^make_\\\\d+$',],  // trailing comma
      priority: 0x10,
    },
  ],
}
"""


def write(tmp_path: Path, text: str, name: str = "spec.json5") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def error_of(path: Path) -> SpecError:
    with pytest.raises(SpecError) as info:
        compile_workflow(load_spec(path), str(path))
    return info.value


def test_json5_spec_loads_and_compiles(tmp_path: Path) -> None:
    compiled = compile_workflow(load_spec(write(tmp_path, SPEC)))
    assert [job.name for job in compiled.jobs] == ["make_1", "make_2", "make_3", "sum"]
    summary = compiled.jobs[3]
    assert sorted(compiled.jobs[m].name for m in compiled.dependency_sets[summary.depset]) == \
        ["make_1", "make_2", "make_3"]
    assert summary.priority == 16


def test_json5_in_a_json_file_is_read_as_json5(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, SPEC, "spec.json"))
    assert spec.name == "five"


def test_strict_json_in_a_json5_file_gives_the_same_spec(tmp_path: Path) -> None:
    data = {"name": "w", "jobs": [{"name": "a", "command": "echo"}]}
    assert load_spec(write(tmp_path, json.dumps(data))) == load_spec(write(tmp_path, json.dumps(data), "s.json"))


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "{\n  name: 'w',\n  // fine so far\n  jobs: [{name: 'a' command: 'x'}],\n}\n")
    error = error_of(path)
    assert (error.file, error.line) == (str(path), 4)
    assert error.message.startswith("not valid JSON5:")
    assert str(error).startswith(f"{path}:4: not valid JSON5")


def test_invalid_json_that_is_not_json5_either_reports_the_json_error(tmp_path: Path) -> None:
    path = write(tmp_path, '{"name": "w",\n "jobs": [}\n', "spec.json")
    error = error_of(path)
    assert error.message.startswith("not valid JSON:") and error.line == 2


def test_validation_error_names_line_job_and_field_after_comments(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        // line 1
        /* line 2
           line 3 */
        {
          name: 'w',
          jobs: [
            {name: 'a', command: 'x'},
            {
              name: 'b',  // the bad one
              command: 'y',
              priority: 'high',
            },
          ],
        }
        """)
    error = error_of(path)
    assert (error.job, error.field, error.line) == ("b", "priority", 11)
    assert str(error).startswith(f"{path}:11, job 'b', field 'priority'")


def test_compile_error_names_the_job_entry_line(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        {
          name: 'w', // comment with a { brace and a 'quote
          jobs: [
            {name: 'a', command: 'x'},
            {name: 'b', command: 'y', depends_on: ['nobody'],},
          ],
        }
        """)
    error = error_of(path)
    assert (error.job, error.field, error.line) == ("b", "depends_on", 5)


def test_duplicate_key_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "{\n  name: 'w',\n  name: 'v',\n  jobs: [{name: 'a', command: 'x'}],\n}\n")
    error = error_of(path)
    assert error.message == "duplicate key 'name' (first at line 2, again at line 3)"
    assert (error.field, error.line) == ("name", 3)


def test_deep_nesting_is_refused_before_parsing(tmp_path: Path) -> None:
    data = "[" * 5000 + "]" * 5000
    path = write(tmp_path, f"{{name: 'w', jobs: [{{name: 'a', command: 'x'}}], metadata: {{x: {data}}},}}")
    error = error_of(path)
    assert "nested more than 100 levels" in error.message


def test_moderate_nesting_in_user_data_is_fine(tmp_path: Path) -> None:
    data = "[" * 80 + "1" + "]" * 80
    path = write(tmp_path, f"{{name: 'w', jobs: [{{name: 'a', command: 'x'}}], "
                           f"user_data: [{{name: 'd', data: {data},}}],}}")
    assert load_spec(path).user_data[0].data is not None


def test_huge_integer_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "{name: 'w', jobs: [{name: 'a', command: 'x', priority: " + "9" * 2000 + "}]}")
    error = error_of(path)
    assert "digits" in error.message


@pytest.mark.parametrize("literal", ["0x" + "f" * 5000, "-0X" + "A" * 900, "0x1" + "0" * 831])
def test_huge_hex_integer_is_refused_not_a_traceback(tmp_path: Path, literal: str) -> None:
    path = write(tmp_path, "{name: 'w', jobs: [{name: 'a', command: 'x'}], user_data: [{name: 'd', data: "
                 + literal + "}]}")
    assert "digits" in error_of(path).message


def test_hex_integer_within_the_limit_is_kept(tmp_path: Path) -> None:
    path = write(tmp_path, "{name: 'w', jobs: [{name: 'a', command: 'x'}], user_data: [{name: 'd', data: 0x"
                 + "f" * 830 + "}]}")
    assert load_spec(path).user_data[0].data == 16 ** 830 - 1


def test_escaped_surrogate_pair_is_one_character(tmp_path: Path) -> None:
    path = write(tmp_path, "{name: 'w', jobs: [{name: 'a', command: 'echo \\ud83d\\ude00',}],}")
    assert load_spec(path).jobs[0].command == "echo \U0001F600"
    path = write(tmp_path, "{name: 'w',\n jobs: [{name: 'a', command: 'echo \\ud83d',}],}")
    error = error_of(path)
    assert error.message == "not valid JSON5: Expected '\\\\', found \"'\"" and error.line == 2


def test_duplicate_key_the_yaml_reader_cannot_place_still_gives_both_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "{name: 'it\\'s',\n jobs: [{name: 'a',\n  command: 'x',\n  'command': 'y'}]}\n")
    error = error_of(path)
    assert error.message == "duplicate key 'command' (first at line 3, again at line 4)" and error.line == 4


def test_kdl_is_refused_with_a_reason(tmp_path: Path) -> None:
    path = write(tmp_path, 'name "w"\njob "a" {\n  command "x"\n}\n', "spec.kdl")
    error = error_of(path)
    assert "KDL specs are not supported" in error.message and "JSON5" in error.message


def to_json5(value: object, trailing: bool, quote_keys: bool, indent: str = "") -> str:
    """A JSON5 text of ``value``: keys bare or quoted, trailing commas or not, a comment per object."""
    inner = indent + "  "
    tail = "," if trailing else ""
    if isinstance(value, dict):
        items = [f"{inner}{json.dumps(k) if quote_keys else k}: {to_json5(v, trailing, quote_keys, inner)}"
                 for k, v in value.items()]
        return "{ // an object\n" + ",\n".join(items) + tail + "\n" + indent + "}"
    if isinstance(value, list):
        if not value:
            return "[]"
        return "[" + ", ".join(to_json5(v, trailing, quote_keys, inner) for v in value) + tail + "]"
    if isinstance(value, str) and '"' in value:
        return "'" + json.dumps(value)[1:-1].replace("\\\"", '"').replace("'", "\\'") + "'"
    return json.dumps(value)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True), min_size=1, max_size=6, unique=True),
       command=st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=30)
       .filter(str.strip),
       trailing=st.booleans(), quote_keys=st.booleans())
def test_json5_and_json_give_equal_specs(names: list[str], command: str, trailing: bool, quote_keys: bool) -> None:
    data = {"name": "w", "jobs": [{"name": n, "command": command, "depends_on": names[:i]}
                                  for i, n in enumerate(names)]}
    text = "// generated\n" + to_json5(data, trailing, quote_keys)
    assert parse_spec(text, source="s.json5") == parse_spec(json.dumps(data), source="s.json")
