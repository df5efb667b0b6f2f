"""torc's spec features, each written by hand in YAML and in JSON5 (issue 12): null for an empty
field, ``extra`` as one string, ``use_parameters``, names that use only some of the parameters,
regexes over file and user_data names, resource_monitor spellings, torc's server-only options refused
with the reason. And ``scripts/torc_compat.py`` over a folder of such specs."""

from __future__ import annotations

import importlib.util
import math
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torc_slurm.compiler import CompiledWorkflow, compile_workflow
from torc_slurm.errors import SpecError
from torc_slurm.spec.load import load_spec, parse_spec

FORMATS = ["yaml", "json5"]


def compiled_from(tmp_path: Path, texts: dict[str, str], fmt: str) -> CompiledWorkflow:
    path = tmp_path / f"spec.{fmt}"
    path.write_text(textwrap.dedent(texts[fmt]), encoding="utf-8")
    return compile_workflow(load_spec(path), str(path))


def error_from(tmp_path: Path, texts: dict[str, str], fmt: str) -> tuple[SpecError, Path]:
    path = tmp_path / f"spec.{fmt}"
    path.write_text(textwrap.dedent(texts[fmt]), encoding="utf-8")
    with pytest.raises(SpecError) as info:
        compile_workflow(load_spec(path), str(path))
    return info.value, path


def prerequisites(compiled: CompiledWorkflow, name: str) -> list[str]:
    job = next(j for j in compiled.jobs if j.name == name)
    if job.depset is None:
        return []
    return sorted(compiled.jobs[m].name for m in compiled.dependency_sets[job.depset])


def job(compiled: CompiledWorkflow, name: str) -> Any:
    return next(j for j in compiled.jobs if j.name == name)


# -- null for an empty field ---------------------------------------------------------------------

NULLS = {
    "yaml": """\
        name: nulls
        description: null
        files: null
        user_data: null
        jobs:
          - name: first
            command: echo first
            depends_on: null
            input_files: null
            output_files: null
            input_user_data: null
            invocation_script: null
            resource_requirements: null
            parameters: null
          - name: second
            command: echo second
            depends_on: [first]
        slurm_schedulers:
          - name: cpu
            account: acct
            gres: null
            extra: null
        """,
    "json5": """\
        {
          name: 'nulls',
          description: null,
          files: null,
          user_data: null,
          jobs: [
            {name: 'first', command: 'echo first', depends_on: null, input_files: null, output_files: null,
             input_user_data: null, invocation_script: null, resource_requirements: null, parameters: null},
            {name: 'second', command: 'echo second', depends_on: ['first']},
          ],
          slurm_schedulers: [{name: 'cpu', account: 'acct', gres: null, extra: null}],
        }
        """,
}


@pytest.mark.parametrize("fmt", FORMATS)
def test_null_means_empty_or_unset(tmp_path: Path, fmt: str) -> None:
    compiled = compiled_from(tmp_path, NULLS, fmt)
    assert [j.name for j in compiled.jobs] == ["first", "second"]
    assert prerequisites(compiled, "first") == [] and prerequisites(compiled, "second") == ["first"]
    assert compiled.spec.jobs[0].invocation_script is None and compiled.spec.jobs[0].depends_on == []
    assert compiled.spec.slurm_schedulers[0].extra == [] and compiled.spec.files == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_null_for_a_required_field_is_still_an_error(tmp_path: Path, fmt: str) -> None:
    texts = {"yaml": "name: w\njobs:\n  - name: a\n    command: null\n",
             "json5": "{name: 'w',\n jobs: [\n  {name: 'a',\n   command: null}]}\n"}
    error, path = error_from(tmp_path, texts, fmt)
    assert (error.job, error.field, error.line) == ("a", "command", 4)
    assert "string" in error.message


# -- extra as one string ---------------------------------------------------------------------------

EXTRA = {
    "yaml": """\
        name: extra
        jobs: [{name: a, command: x, scheduler: gpu}]
        slurm_schedulers:
          - name: gpu
            account: acct
            extra: "--constraint=v100 --exclusive --comment='two words'"
        """,
    "json5": """\
        {name: 'extra', jobs: [{name: 'a', command: 'x', scheduler: 'gpu'}],
         slurm_schedulers: [{name: 'gpu', account: 'acct',
                             extra: "--constraint=v100 --exclusive --comment='two words'"}]}
        """,
}


@pytest.mark.parametrize("fmt", FORMATS)
def test_extra_as_one_string_is_split_like_a_shell(tmp_path: Path, fmt: str) -> None:
    compiled = compiled_from(tmp_path, EXTRA, fmt)
    assert compiled.spec.slurm_schedulers[0].extra == ["--constraint=v100", "--exclusive", "--comment=two words"]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("extra, message", [
    ("--constraint='v100", "cannot split"),
    ("--constraint=v100 exclusive", "must look like '--option=value'"),
])
def test_bad_extra_string_names_the_scheduler_field(tmp_path: Path, fmt: str, extra: str, message: str) -> None:
    texts = {k: v.replace("--constraint=v100 --exclusive --comment='two words'", extra) for k, v in EXTRA.items()}
    error, _ = error_from(tmp_path, texts, fmt)
    assert error.field == "slurm_schedulers[gpu].extra" and message in error.message
    assert error.line == (6 if fmt == "yaml" else 3)


# -- use_parameters ----------------------------------------------------------------------------------

USE = {
    "yaml": """\
        name: shared
        parameters:
          lr: "[0.1, 0.01]"
          seed: "1:3"
          unused: "['x', 'y']"
        files:
          - name: model_{lr}
            path: /m/{lr}.pt
            use_parameters: [lr]
        user_data:
          - name: cfg_{seed}
            data: {fixed: true}
            use_parameters: [seed]
        jobs:
          - name: train_{lr}_{seed}
            command: train --lr {lr} --seed {seed} --keep {unused}
            use_parameters: [lr, seed]
            input_user_data: ["cfg_{seed}"]
          - name: export_{lr}
            command: export {lr}
            use_parameters: [lr]
            output_files: ["model_{lr}"]
            depends_on: ["train_{lr}_{seed}"]
            parameters:
              seed: "[1, 2]"
        """,
    "json5": """\
        {
          name: 'shared',
          parameters: {lr: '[0.1, 0.01]', seed: '1:3', unused: "['x', 'y']"},
          files: [{name: 'model_{lr}', path: '/m/{lr}.pt', use_parameters: ['lr']}],
          user_data: [{name: 'cfg_{seed}', data: {fixed: true}, use_parameters: ['seed']}],
          jobs: [
            {name: 'train_{lr}_{seed}', command: 'train --lr {lr} --seed {seed} --keep {unused}',
             use_parameters: ['lr', 'seed'], input_user_data: ['cfg_{seed}']},
            {name: 'export_{lr}', command: 'export {lr}', use_parameters: ['lr'],
             output_files: ['model_{lr}'], depends_on: ['train_{lr}_{seed}'], parameters: {seed: '[1, 2]'}},
          ],
        }
        """,
}


@pytest.mark.parametrize("fmt", FORMATS)
def test_use_parameters_picks_the_named_workflow_parameters(tmp_path: Path, fmt: str) -> None:
    compiled = compiled_from(tmp_path, USE, fmt)
    names = [j.name for j in compiled.jobs]
    assert names[:6] == ["train_0.1_1", "train_0.1_2", "train_0.1_3", "train_0.01_1", "train_0.01_2", "train_0.01_3"]
    # a placeholder of a workflow parameter that use_parameters leaves out stays as written
    assert job(compiled, "train_0.1_1").command == "train --lr 0.1 --seed 1 --keep {unused}"
    assert [f.name for f in compiled.files] == ["model_0.1", "model_0.01"]
    assert [d.name for d in compiled.user_data] == ["cfg_1", "cfg_2", "cfg_3"]
    # the entry's own seed (1, 2) wins over the workflow's (1:3); lr comes from use_parameters
    assert prerequisites(compiled, "export_0.1") == ["train_0.1_1", "train_0.1_2"]
    assert names[6:] == ["export_0.1", "export_0.01"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_use_parameters_naming_no_workflow_parameter_is_an_error(tmp_path: Path, fmt: str) -> None:
    texts = {k: v.replace("use_parameters: [lr, seed]", "use_parameters: [lr, sede]")
             .replace("use_parameters: ['lr', 'seed']", "use_parameters: ['lr', 'sede']") for k, v in USE.items()}
    error, _ = error_from(tmp_path, texts, fmt)
    assert (error.job, error.field) == ("train_{lr}_{seed}", "use_parameters")
    assert error.message == "'sede' is not a workflow-level parameter (defined: lr, seed, unused)"
    assert error.line == (15 if fmt == "yaml" else 7)


def test_use_parameters_on_a_file_names_the_file_entry() -> None:
    spec = parse_spec("name: w\nparameters: {i: '1:2'}\njobs: [{name: a, command: x}]\n"
                      "files: [{name: 'f_{i}', path: 'p_{i}', use_parameters: [j]}]\n")
    with pytest.raises(SpecError) as info:
        compile_workflow(spec)
    assert info.value.field == "file[f_{i}].use_parameters"


# -- names that use only some of the parameters ---------------------------------------------------

PARTIAL = {
    "yaml": """\
        name: partial
        jobs:
          - name: analyze_{dataset}_{kind}
            command: analyze {dataset} {kind}
            output_files: ["result_{dataset}_{kind}"]
            parameters: &both
              dataset: "['sales', 'stock']"
              kind: "['mean', 'trend', 'peak']"
          - name: report_{dataset}
            command: report --dataset {dataset}
            env: {DATASET: "{dataset}"}
            depends_on: ["analyze_{dataset}_{kind}"]
            input_files: ["result_{dataset}_{kind}"]
            parameters: *both
          - name: summary
            command: summarize
            depends_on: ["report_{dataset}"]
            parameters: {dataset: "['sales', 'stock']"}
        files:
          - name: result_{dataset}_{kind}
            path: /r/{dataset}/{kind}.json
            parameters: *both
        """,
    "json5": """\
        {
          name: 'partial',
          jobs: [
            {name: 'analyze_{dataset}_{kind}', command: 'analyze {dataset} {kind}',
             output_files: ['result_{dataset}_{kind}'],
             parameters: {dataset: "['sales', 'stock']", kind: "['mean', 'trend', 'peak']"}},
            {name: 'report_{dataset}', command: 'report --dataset {dataset}', env: {DATASET: '{dataset}'},
             depends_on: ['analyze_{dataset}_{kind}'], input_files: ['result_{dataset}_{kind}'],
             parameters: {dataset: "['sales', 'stock']", kind: "['mean', 'trend', 'peak']"}},
            {name: 'summary', command: 'summarize', depends_on: ['report_{dataset}'],
             parameters: {dataset: "['sales', 'stock']"}},
          ],
          files: [{name: 'result_{dataset}_{kind}', path: '/r/{dataset}/{kind}.json',
                   parameters: {dataset: "['sales', 'stock']", kind: "['mean', 'trend', 'peak']"}}],
        }
        """,
}


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_name_using_some_parameters_gives_one_job_per_value_of_those(tmp_path: Path, fmt: str) -> None:
    compiled = compiled_from(tmp_path, PARTIAL, fmt)
    assert [j.name for j in compiled.jobs][6:] == ["report_sales", "report_stock", "summary"]
    assert prerequisites(compiled, "report_sales") == ["analyze_sales_mean", "analyze_sales_peak", "analyze_sales_trend"]
    assert prerequisites(compiled, "report_stock") == ["analyze_stock_mean", "analyze_stock_peak", "analyze_stock_trend"]
    assert prerequisites(compiled, "summary") == ["report_sales", "report_stock"]
    report = job(compiled, "report_stock")
    assert report.command == "report --dataset stock" and report.env == {"DATASET": "stock"}
    assert [compiled.files[f].name for f in report.input_files] == \
        ["result_stock_mean", "result_stock_trend", "result_stock_peak"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_scalar_field_using_a_parameter_the_name_does_not_is_an_error(tmp_path: Path, fmt: str) -> None:
    texts = {k: v.replace("report --dataset {dataset}", "report --dataset {dataset} --kind {kind}")
             for k, v in PARTIAL.items()}
    error, _ = error_from(tmp_path, texts, fmt)
    assert (error.job, error.field) == ("report_{dataset}", "command")
    assert "uses the parameter(s) kind, which the job name does not" in error.message
    assert error.line == (9 if fmt == "yaml" else 7)


def test_env_using_a_parameter_the_name_does_not_is_an_error() -> None:
    spec = parse_spec("name: w\njobs:\n  - name: j_{a}\n    command: x\n    env: {B: '{b}'}\n"
                      "    parameters: {a: '1:2', b: '1:2'}\n")
    with pytest.raises(SpecError) as info:
        compile_workflow(spec)
    assert info.value.field == "env.B"


def test_partial_names_in_zip_mode_group_the_zipped_rows() -> None:
    spec = parse_spec("""\
name: w
jobs:
  - name: run_{city}_{year}
    command: run {city} {year}
    parameters: {city: "['a', 'a', 'b']", year: "[2020, 2021, 2020]"}
    parameter_mode: zip
  - name: city_{city}
    command: gather {city}
    depends_on: ["run_{city}_{year}"]
    parameters: {city: "['a', 'a', 'b']", year: "[2020, 2021, 2020]"}
    parameter_mode: zip
""")
    compiled = compile_workflow(spec)
    assert [j.name for j in compiled.jobs][3:] == ["city_a", "city_b"]
    assert prerequisites(compiled, "city_a") == ["run_a_2020", "run_a_2021"]
    assert prerequisites(compiled, "city_b") == ["run_b_2020"]


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(1, 4), min_size=1, max_size=3), data=st.data())
def test_partial_names_property(sizes: list[int], data: st.DataObject) -> None:
    """For any product of parameters and any subset the name uses: one job per combination of that
    subset, each depending on exactly the leaf jobs that agree with it."""
    names = [f"p{k}" for k in range(len(sizes))]
    params = {name: f"0:{size - 1}" for name, size in zip(names, sizes)}
    used = data.draw(st.lists(st.sampled_from(names), unique=True))
    leaf = "leaf" + "".join(f"_{{{n}}}" for n in names)
    gather = "g" + "".join(f"_{{{n}}}" for n in used)
    spec = parse_spec(f"""\
name: w
jobs:
  - {{name: "{leaf}", command: x, parameters: {params}}}
  - {{name: "{gather}", command: y, depends_on: ["{leaf}"], parameters: {params}}}
""")
    compiled = compile_workflow(spec)
    leaves = math.prod(sizes)
    gathers = compiled.jobs[leaves:]
    assert len(gathers) == math.prod(sizes[names.index(n)] for n in used)
    for g in gathers:
        values = g.name.split("_")[1:]
        expected = [j.name for j in compiled.jobs[:leaves]
                    if all(j.name.split("_")[1 + names.index(n)] == v for n, v in zip(used, values))]
        assert prerequisites(compiled, g.name) == sorted(expected)
        assert len(expected) == leaves // len(gathers)


# -- regexes over file and user_data names ---------------------------------------------------------

REGEXES = {
    "yaml": """\
        name: regexes
        files:
          - {name: "part_{i}", path: "/p/{i}", parameters: {i: "1:3"}}
          - {name: total, path: /p/total}
        user_data:
          - {name: "stat_{i}", parameters: {i: "1:2"}}
        jobs:
          - name: "make_{i}"
            command: make {i}
            output_files: ["part_{i}"]
            parameters: {i: "1:3"}
          - name: stats
            command: stats
            output_user_data_regexes: ["^stat_"]
          - name: merge
            command: merge
            input_file_regexes: ['^part_\\d+$']
            input_user_data_regexes: ["stat_1"]
            output_file_regexes: ["^tot"]
        """,
    "json5": """\
        {
          name: 'regexes',
          files: [{name: 'part_{i}', path: '/p/{i}', parameters: {i: '1:3'}}, {name: 'total', path: '/p/total'}],
          user_data: [{name: 'stat_{i}', parameters: {i: '1:2'}}],
          jobs: [
            {name: 'make_{i}', command: 'make {i}', output_files: ['part_{i}'], parameters: {i: '1:3'}},
            {name: 'stats', command: 'stats', output_user_data_regexes: ['^stat_']},
            {name: 'merge', command: 'merge', input_file_regexes: ['^part_\\\\d+$'],
             input_user_data_regexes: ['stat_1'], output_file_regexes: ['^tot']},
          ],
        }
        """,
}


@pytest.mark.parametrize("fmt", FORMATS)
def test_file_and_user_data_regexes_add_the_names_they_match(tmp_path: Path, fmt: str) -> None:
    compiled = compiled_from(tmp_path, REGEXES, fmt)
    assert prerequisites(compiled, "merge") == ["make_1", "make_2", "make_3", "stats"]
    merge = job(compiled, "merge")
    assert [compiled.files[f].name for f in merge.input_files] == ["part_1", "part_2", "part_3"]
    assert [compiled.files[f].name for f in merge.output_files] == ["total"]
    assert [compiled.user_data[d].name for d in job(compiled, "stats").output_user_data] == ["stat_1", "stat_2"]
    assert compiled.files[3].producer == [j.name for j in compiled.jobs].index("merge")


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_file_regex_matching_nothing_is_an_error(tmp_path: Path, fmt: str) -> None:
    texts = {k: v.replace("^tot", "^nothing") for k, v in REGEXES.items()}
    error, _ = error_from(tmp_path, texts, fmt)
    assert (error.job, error.field) == ("merge", "output_file_regexes")
    assert error.message == "regular expression '^nothing' matches no file (defined under 'files')"
    assert error.line == (15 if fmt == "yaml" else 8)


def test_a_bad_file_regex_names_the_job_and_field() -> None:
    spec = parse_spec("name: w\nfiles: [{name: f, path: p}]\njobs: [{name: a, command: x, "
                      "input_file_regexes: ['(a)\\1']}]\n")
    with pytest.raises(SpecError) as info:
        compile_workflow(spec)
    assert (info.value.job, info.value.field) == ("a", "input_file_regexes")


# -- resource_monitor --------------------------------------------------------------------------------

@pytest.mark.parametrize("written, kept", [("TimeSeries", "time_series"), ("time_series", "time_series"),
                                           ("Summary", "summary"), ("summary", "summary")])
def test_resource_monitor_reads_both_granularity_spellings(written: str, kept: str) -> None:
    spec = parse_spec(f"{{name: 'w', jobs: [{{name: 'a', command: 'x'}}], "
                      f"resource_monitor: {{granularity: '{written}', metrics: ['cpu_percent', 'memory_bytes'],}}}}",
                      source="s.json5")
    assert spec.resource_monitor.granularity == kept
    assert spec.resource_monitor.enabled is True


def test_resource_monitor_refuses_metrics_it_does_not_sample() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec("name: w\njobs: [{name: a, command: x}]\nresource_monitor:\n  metrics: [cpu_percent, gpu_util]\n")
    assert info.value.field == "resource_monitor.metrics" and "'gpu_util' is not sampled" in info.value.message
    assert info.value.line == 4


# -- torc options without meaning here ---------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("field, value, reason", [
    ("use_pending_failed", "true", "AI-assisted recovery"),
    ("compute_node_ignore_workflow_completion", "true", "not supported"),
    ("compute_node_wait_for_healthy_database_minutes", "20", "no database server"),
])
def test_server_only_options_are_refused_naming_the_field(tmp_path: Path, fmt: str, field: str, value: str,
                                                           reason: str) -> None:
    texts = {"yaml": f"name: w\njobs: [{{name: a, command: x}}]\n{field}: {value}\n",
             "json5": f"{{name: 'w', jobs: [{{name: 'a', command: 'x'}}],\n  {field}: {value},}}"}
    error, path = error_from(tmp_path, texts, fmt)
    assert error.field == field and reason in error.message and field in error.message
    assert (error.file, error.line) == (str(path), 3 if fmt == "yaml" else 2)


@pytest.mark.parametrize("field, value", [("use_pending_failed", "false"),
                                          ("compute_node_ignore_workflow_completion", "false"),
                                          ("compute_node_wait_for_healthy_database_minutes", "null")])
def test_torc_defaults_of_those_options_are_accepted(field: str, value: str) -> None:
    parse_spec(f"name: w\njobs: [{{name: a, command: x}}]\n{field}: {value}\n")


# -- scripts/torc_compat.py ----------------------------------------------------------------------------

def _compat_module() -> Any:
    path = Path(__file__).resolve().parents[2] / "scripts" / "torc_compat.py"
    spec = importlib.util.spec_from_file_location("torc_compat", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["torc_compat"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_compat_script_counts_accepted_refused_and_failed(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "good.yaml").write_text(textwrap.dedent(PARTIAL["yaml"]))
    (tmp_path / "sub" / "good.json5").write_text(textwrap.dedent(EXTRA["json5"]))
    (tmp_path / "sub" / "bad.yaml").write_text("name: w\njobs: [{name: a, command: x, depends_on: [b]}]\n")
    (tmp_path / "spec.kdl").write_text('name "w"\n')
    (tmp_path / "notes.txt").write_text("not a spec")
    compat = _compat_module()
    assert compat.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "4 specs: 2 accepted, 2 refused, 0 failed" in out
    assert "refused   sub/bad.yaml  sub/bad.yaml:2, job 'a', field 'depends_on': depends on unknown job 'b'" in out
    assert "accepted  good.yaml  9 jobs, 6 files" in out

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("torc_slurm.compiler.compile_workflow", broken)
    assert compat.main([str(tmp_path / "sub")]) == 1
    out = capsys.readouterr().out
    assert "failed    good.json5  RuntimeError: a bug" in out and "0 accepted, 0 refused, 2 failed" in out


def test_compat_script_refuses_an_sbatch_conflict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "s.yaml").write_text("name: w\njobs: [{name: a, command: x}]\nslurm_schedulers:\n"
                                     "  - {name: g, account: acct, gres: 'gpu:1', extra: '--gres=gpu:2'}\n")
    assert _compat_module().main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "sbatch script of scheduler 'g'" in out and "0 accepted, 1 refused" in out


def test_an_empty_name_with_parameters_is_a_spec_error_not_a_crash() -> None:
    spec = parse_spec("name: w\njobs:\n  - {name: '', command: 'x {i}', parameters: {i: '1:2'}}\n")
    with pytest.raises(SpecError) as info:
        compile_workflow(spec)
    assert info.value.field in ("name", "command")
