"""Parameter values, their combinations, templates, and expansion through the compiler."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torc_slurm.compiler import compile_workflow
from torc_slurm.errors import SpecError
from torc_slurm.spec.models import WorkflowSpec
from torc_slurm.spec.parameters import combinations, compile_template, parse_values, referenced_names


def spec(jobs: list[dict[str, Any]], **top: Any) -> WorkflowSpec:
    return WorkflowSpec.model_validate({"name": "w", "jobs": jobs, **top})


def job_names(s: WorkflowSpec) -> list[str]:
    return [j.name for j in compile_workflow(s).jobs]


# -- parse_values ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("0:4", [0, 1, 2, 3, 4]),
        ("0:100:10", [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]),
        ("0:9:4", [0, 4, 8]),
        ("-2:2", [-2, -1, 0, 1, 2]),
        ("7:7", [7]),
        (" 1 : 3 ", [1, 2, 3]),
        ("0.0:1.0:0.25", [0.0, 0.25, 0.5, 0.75, 1.0]),
        ("0.1:0.3:0.1", [0.1, 0.2, 0.3]),
        ("0.5:2", [0.5, 1.5]),
        ("1e-3:3e-3:1e-3", [0.001, 0.002, 0.003]),
        ("[1,5,10]", [1, 5, 10]),
        ("[1, 2.5, 'x']", [1, 2.5, "x"]),
        ("['adam','sgd']", ["adam", "sgd"]),
        ('["adam", "sgd"]', ["adam", "sgd"]),
        ("[adam, sgd]", ["adam", "sgd"]),
        ([1, 5, 10], [1, 5, 10]),
        (["a", "b"], ["a", "b"]),
        (5, [5]),
        (0.5, [0.5]),
        ("7", [7]),
        ("2.5", [2.5]),
        ("adam", ["adam"]),
    ],
)
def test_parse_values(raw: Any, expected: list[Any]) -> None:
    values = list(parse_values(raw))
    assert values == expected
    assert [type(v) for v in values] == [type(v) for v in expected]


def test_integer_range_is_inclusive() -> None:
    values = parse_values("0:999")
    assert len(values) == 1000 and values[0] == 0 and values[-1] == 999


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("5:1", "empty"),
        ("0:10:0", "step"),
        ("0:10:-1", "step"),
        ("1.0:0.5", "empty"),
        ("0.0:1.0:0", "step"),
        ("a:b", "invalid range"),
        ("1:2:3:4", "invalid range"),
        ("[1,2", "unterminated"),
        ("[]", "non-empty"),
        ([], "empty"),
        (True, "boolean"),
        ([True], "numbers or strings"),
        ([[1]], "numbers or strings"),
        ({"a": 1}, "unsupported"),
        ("0:100000000", "more than"),
    ],
)
def test_bad_values(raw: Any, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_values(raw)


# -- combinations ------------------------------------------------------------------------------

def test_product_last_varies_fastest() -> None:
    rows = list(combinations({"a": [1, 2], "b": ["x", "y", "z"]}, "product"))
    assert rows == [{"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 1, "b": "z"},
                    {"a": 2, "b": "x"}, {"a": 2, "b": "y"}, {"a": 2, "b": "z"}]


def test_zip_pairs_values() -> None:
    assert list(combinations({"a": [1, 2, 3], "b": ["x", "y", "z"]}, "zip")) == [
        {"a": 1, "b": "x"}, {"a": 2, "b": "y"}, {"a": 3, "b": "z"}]


def test_zip_lengths_must_match() -> None:
    with pytest.raises(ValueError, match=r"equal length \(a: 2, b: 3\)"):
        list(combinations({"a": [1, 2], "b": [1, 2, 3]}, "zip"))


def test_no_parameters_is_one_empty_combination() -> None:
    assert list(combinations({}, "product")) == [{}]


# -- templates ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("text", "values", "expected"),
    [
        ("job_{i}", {"i": 7}, "job_7"),
        ("job_{i:03d}", {"i": 7}, "job_007"),
        ("lr_{lr:.4f}", {"lr": 0.01}, "lr_0.0100"),
        ("{opt}-{i:>3}", {"opt": "adam", "i": 5}, "adam-  5"),
        ("{name!r}", {"name": "a"}, "'a'"),
        ("echo ${HOME} {i}", {"i": 1}, "echo ${HOME} 1"),
        ("awk '{print $1}' f_{i}.txt", {"i": 2}, "awk '{print $1}' f_2.txt"),
        ("{unknown} {i}", {"i": 3}, "{unknown} 3"),
        ("x {i} }{ {", {"i": 3}, "x 3 }{ {"),
        ("no placeholders", {"i": 3}, "no placeholders"),
        ("{i}{i}", {"i": 4}, "44"),
    ],
)
def test_template_render(text: str, values: dict[str, Any], expected: str) -> None:
    template = compile_template(text, set(values))
    assert template.render(values) == expected


def test_template_names_only_known_parameters() -> None:
    template = compile_template("{a} {b} ${c} {d:02d}", {"a", "d"})
    assert template.names == {"a", "d"}
    assert referenced_names(["{a} ${HOME}", "{zz}", "{d:03d}"], {"a", "d", "q"}) == {"a", "d"}


@pytest.mark.parametrize(("text", "value"), [("{i:q}", 3), ("{i:d}", "x"), ("{i:.2f}", "x"), ("{i:03d}", 1.5)])
def test_bad_format_spec_is_a_value_error_naming_the_placeholder(text: str, value: Any) -> None:
    with pytest.raises(ValueError, match=r"cannot format .* with '\{i:"):
        compile_template(text, {"i"}).render({"i": value})


# -- expansion through the compiler --------------------------------------------------------------

def test_format_specs_apply_to_every_string_field() -> None:
    s = spec(
        [
            {"name": "prep_{i:02d}", "command": "prep {i}", "output_files": ["in_{i:02d}"],
             "output_user_data": ["meta_{i}"], "parameters": {"i": "1:2"}},
            {"name": "train_{i:02d}_{lr:.3f}", "command": "train --lr {lr:.4f} --i {i} | awk '{print $1}'",
             "invocation_script": "wrap_{i}.sh", "env": {"LR": "{lr}", "HOME_DIR": "${HOME}"},
             "depends_on": ["prep_{i:02d}"], "depends_on_regexes": ["^prep_{i:02d}$"],
             "input_files": ["in_{i:02d}"], "input_user_data": ["meta_{i}"],
             "output_files": ["out_{i}_{lr}"], "resource_requirements": "rr_{i}", "scheduler": "s{i}",
             "parameters": {"i": "1:2", "lr": "[0.1, 0.25]"}},
        ],
        files=[{"name": "in_{i:02d}", "path": "data/in_{i:02d}.txt", "parameters": {"i": "1:2"}},
               {"name": "out_{i}_{lr}", "path": "out/{i}/{lr:.2f}.txt",
                "parameters": {"i": "1:2", "lr": "[0.1, 0.25]"}}],
        user_data=[{"name": "meta_{i}", "parameters": {"i": "1:2"}}],
        resource_requirements=[{"name": "rr_1", "num_cpus": 1}, {"name": "rr_2", "num_cpus": 2}],
        slurm_schedulers=[{"name": "s1"}, {"name": "s2"}],
    )
    compiled = compile_workflow(s)
    by_name = {j.name: j for j in compiled.jobs}
    assert sorted(by_name) == ["prep_01", "prep_02", "train_01_0.100", "train_01_0.250",
                               "train_02_0.100", "train_02_0.250"]
    job = by_name["train_02_0.250"]
    assert job.command == "train --lr 0.2500 --i 2 | awk '{print $1}'"
    assert job.invocation_script == "wrap_2.sh"
    assert job.env == {"LR": "0.25", "HOME_DIR": "${HOME}"}
    assert job.num_cpus == 2 and job.resource_requirements == "rr_2" and job.scheduler == "s2"
    names = [j.name for j in compiled.jobs]
    assert {names[m] for m in compiled.dependency_sets[job.depset]} == {"prep_02"}
    assert [compiled.files[f].name for f in job.input_files] == ["in_02"]
    assert [compiled.files[f].path for f in job.output_files] == ["out/2/0.25.txt"]
    assert [compiled.user_data[d].name for d in job.input_user_data] == ["meta_2"]
    assert {f.name: f.path for f in compiled.files}["in_01"] == "data/in_01.txt"


def test_product_and_zip_through_the_compiler() -> None:
    product = spec([{"name": "j_{a}_{b}", "command": "x", "parameters": {"a": "1:3", "b": "['x','y']"}}])
    assert job_names(product) == ["j_1_x", "j_1_y", "j_2_x", "j_2_y", "j_3_x", "j_3_y"]
    zipped = spec([{"name": "j_{a}_{b}", "command": "x", "parameter_mode": "zip",
                    "parameters": {"a": "1:3", "b": "[x, y, z]"}}])
    assert job_names(zipped) == ["j_1_x", "j_2_y", "j_3_z"]


def test_zip_of_unequal_lengths_is_a_spec_error_naming_the_job() -> None:
    s = spec([{"name": "j_{a}_{b}", "command": "x", "parameter_mode": "zip",
               "parameters": {"a": "1:3", "b": "[x, y]"}}])
    with pytest.raises(SpecError) as info:
        compile_workflow(s, "sweep.yaml")
    assert info.value.job == "j_{a}_{b}" and "a: 3, b: 2" in str(info.value)
    assert str(info.value).startswith("sweep.yaml")


def test_workflow_parameters_are_shared_by_jobs_that_use_them() -> None:
    s = spec(
        [
            {"name": "train_{lr}_{opt}", "command": "train {lr} {opt}"},
            {"name": "only_{opt}", "command": "x"},
            {"name": "plain", "command": "echo {lr} is not used in my name"},
            {"name": "own_{lr}", "command": "y", "parameters": {"lr": "[9]"}},
        ],
        parameters={"lr": "[0.1,0.2]", "opt": "['adam','sgd']"},
    )
    with pytest.raises(SpecError, match="job name does not"):
        compile_workflow(s)  # 'plain' uses {lr} in its command only: ambiguous
    s = spec(
        [
            {"name": "train_{lr}_{opt}", "command": "train {lr} {opt}"},
            {"name": "only_{opt}", "command": "x"},
            {"name": "plain", "command": "echo ${HOME} {nope} untouched"},
            {"name": "own_{lr}", "command": "y", "parameters": {"lr": "[9]"}},
        ],
        parameters={"lr": "[0.1,0.2]", "opt": "['adam','sgd']"},
    )
    assert job_names(s) == ["train_0.1_adam", "train_0.1_sgd", "train_0.2_adam", "train_0.2_sgd",
                            "only_adam", "only_sgd", "plain", "own_9"]
    assert compile_workflow(s).jobs[6].command == "echo ${HOME} {nope} untouched"


def test_a_job_whose_name_uses_no_parameter_gathers_its_lists() -> None:
    s = spec(
        [
            {"name": "work_{i}", "command": "w", "output_files": ["f_{i}"], "parameters": {"i": "1:3"}},
            {"name": "summary", "command": "cat", "input_files": ["f_{i}"], "parameters": {"i": "1:3"}},
        ],
        files=[{"name": "f_{i}", "path": "f{i}.txt", "parameters": {"i": "1:3"}}],
    )
    compiled = compile_workflow(s)
    summary = compiled.jobs[-1]
    assert summary.name == "summary"
    assert [compiled.files[f].name for f in summary.input_files] == ["f_1", "f_2", "f_3"]
    assert len(compiled.dependency_sets[summary.depset]) == 3


def test_user_data_can_be_parameterized() -> None:
    s = spec([{"name": "j", "command": "x"}],
             user_data=[{"name": "cfg_{k}", "data": {"v": 1}, "parameters": {"k": "['a','b']"}}])
    compiled = compile_workflow(s)
    assert [(d.name, d.data) for d in compiled.user_data] == [("cfg_a", {"v": 1}), ("cfg_b", {"v": 1})]


def test_duplicate_names_after_expansion_are_refused() -> None:
    s = spec([{"name": "j_{a:.0f}", "command": "x {a}", "parameters": {"a": "[1.1, 1.2]"}}])
    with pytest.raises(SpecError, match="two jobs are named 'j_1'"):
        compile_workflow(s)
    # a name that leaves out a parameter the command uses: the command is the ambiguous field
    s = spec([{"name": "j_{a}", "command": "x {b}", "parameters": {"a": "1:2", "b": "1:2"}}])
    with pytest.raises(SpecError, match="uses the parameter.s. b, which the job name does not") as info:
        compile_workflow(s)
    assert info.value.field == "command"
    s = spec([{"name": "f_{a}", "command": "x", "parameters": {"a": "[1, '1']"}}])
    with pytest.raises(SpecError, match="two jobs are named 'f_1'"):
        compile_workflow(s)


def test_expanded_names_are_validated() -> None:
    s = spec([{"name": "j_{p}", "command": "x", "parameters": {"p": "['a', '../b']"}}])
    with pytest.raises(SpecError, match="not allowed") as info:
        compile_workflow(s)
    assert "'j_../b'" in str(info.value)


# -- properties ------------------------------------------------------------------------------------

small_values = st.lists(st.integers(-50, 50), min_size=1, max_size=5, unique=True)


NAMES = st.sampled_from(["i", "j", "lr", "opt", "seed", "x_1"])


@given(st.dictionaries(NAMES, small_values, min_size=1, max_size=4))
def test_product_count_is_the_product_of_lengths(params: dict[str, list[int]]) -> None:
    rows = list(combinations(params, "product"))
    assert len(rows) == math.prod(len(v) for v in params.values())
    assert len({tuple(r.items()) for r in rows}) == len(rows)
    assert all(set(r) == set(params) for r in rows)


@given(st.integers(1, 8).flatmap(
    lambda n: st.dictionaries(NAMES, st.lists(st.integers(), min_size=n, max_size=n), min_size=1, max_size=4)))
def test_zip_count_is_the_length(params: dict[str, list[int]]) -> None:
    rows = list(combinations(params, "zip"))
    length = len(next(iter(params.values())))
    assert len(rows) == length
    for k, row in enumerate(rows):
        assert row == {name: values[k] for name, values in params.items()}


@st.composite
def int_ranges(draw: st.DrawFn) -> tuple[int, int, int]:
    start = draw(st.integers(-1000, 1000))
    stop = draw(st.integers(start, start + 2000))
    step = draw(st.integers(1, 300))
    return start, stop, step


@given(int_ranges(), st.booleans())
def test_int_ranges_are_inclusive_and_strictly_increasing(bounds: tuple[int, int, int], explicit: bool) -> None:
    start, stop, step = bounds
    text = f"{start}:{stop}:{step}" if explicit or step != 1 else f"{start}:{stop}"
    values = parse_values(text)
    assert values[0] == start
    assert all(b - a == step for a, b in zip(values, values[1:]))
    assert values[-1] <= stop < values[-1] + step
    if (stop - start) % step == 0:
        assert values[-1] == stop


@given(st.integers(-10**5, 10**5), st.integers(1, 10**4), st.integers(0, 500), st.integers(0, 4))
def test_float_ranges_hit_the_end(start_units: int, step_units: int, steps: int, decimals: int) -> None:
    scale = 10**decimals
    start, step = start_units / scale, step_units / scale
    end = (start_units + steps * step_units) / scale
    text = f"{start:.{decimals}f}:{end:.{decimals}f}:{step:.{decimals}f}"
    if "." not in text:
        text = f"{start:.1f}:{end:.1f}:{step:.1f}"
    values = parse_values(text)
    assert len(values) == steps + 1
    assert all(isinstance(v, float) for v in values)
    assert all(b > a for a, b in zip(values, values[1:]))
    assert math.isclose(values[0], start, rel_tol=1e-12, abs_tol=1e-12)
    assert math.isclose(values[-1], end, rel_tol=1e-9, abs_tol=1e-9)


@given(st.lists(st.integers(1, 4), min_size=1, max_size=3), st.sampled_from(["product", "zip"]))
@settings(max_examples=60, deadline=None)
def test_names_are_distinct_when_every_parameter_is_in_the_name(lengths: list[int], mode: str) -> None:
    if mode == "zip":
        lengths = [lengths[0]] * len(lengths)
    params = {f"p{k}": f"{10 * k}:{10 * k + n - 1}" for k, n in enumerate(lengths)}
    name = "job_" + "_".join("{" + p + "}" for p in params)
    names = job_names(spec([{"name": name, "command": "run", "parameters": params,
                             "parameter_mode": mode}]))
    expected = math.prod(lengths) if mode == "product" else lengths[0]
    assert len(names) == expected == len(set(names))
