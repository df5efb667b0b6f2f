"""The compiler: resources, claim order, dependencies (names, regexes, files, user_data), interned
dependency sets, cycle detection, and one clear SpecError per kind of bad workflow."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from torc_slurm.compiler import CompiledWorkflow, compile_workflow
from torc_slurm.errors import SpecError
from torc_slurm.spec import regexes
from torc_slurm.spec.load import load_spec
from torc_slurm.spec.models import WorkflowSpec

GIB = 2**30


def spec(jobs: list[dict[str, Any]], **top: Any) -> WorkflowSpec:
    return WorkflowSpec.model_validate({"name": "w", "jobs": jobs, **top})


def compile_jobs(jobs: list[dict[str, Any]], **top: Any) -> CompiledWorkflow:
    return compile_workflow(spec(jobs, **top))


def prerequisites(compiled: CompiledWorkflow) -> dict[str, set[str]]:
    """job name -> names of its prerequisites, expanded back from job.depset -> dependency_sets."""
    names = [j.name for j in compiled.jobs]
    return {j.name: ({names[m] for m in compiled.dependency_sets[j.depset]} if j.depset is not None else set())
            for j in compiled.jobs}


def error_of(jobs: list[dict[str, Any]], **top: Any) -> SpecError:
    with pytest.raises(SpecError) as info:
        compile_workflow(spec(jobs, **top), "wf.yaml")
    return info.value


def job(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "command": f"run {name}", **fields}


# -- resources ---------------------------------------------------------------------------------------

def test_a_job_without_resources_gets_the_builtin_default() -> None:
    only = compile_jobs([job("a")]).jobs[0]
    assert (only.num_cpus, only.num_gpus, only.num_nodes, only.memory_bytes, only.runtime_s) == (1, 0, 1, GIB, 60)
    assert only.resource_requirements == "default"


def test_an_entry_named_default_overrides_the_builtin_default() -> None:
    compiled = compile_jobs(
        [job("a"), job("b", resource_requirements="big")],
        resource_requirements=[{"name": "default", "num_cpus": 4, "memory": "2g", "runtime": "PT30M"},
                               {"name": "big", "num_cpus": 16, "num_gpus": 2, "memory": "1t", "runtime": "P0DT1M"}],
    )
    a, b = compiled.jobs
    assert (a.num_cpus, a.num_gpus, a.memory_bytes, a.runtime_s) == (4, 0, 2 * GIB, 1800)
    assert (b.num_cpus, b.num_gpus, b.memory_bytes, b.runtime_s) == (16, 2, 2**40, 60)


def test_a_resource_entry_defaults_runtime_to_one_minute() -> None:
    a = compile_jobs([job("a", resource_requirements="r")],
                     resource_requirements=[{"name": "r", "memory": "100m"}]).jobs[0]
    assert (a.runtime_s, a.memory_bytes, a.num_cpus) == (60, 100 * 2**20, 1)


def test_unknown_resources_and_schedulers_are_errors() -> None:
    error = error_of([job("a", resource_requirements="huge")])
    assert (error.job, error.field, error.file) == ("a", "resource_requirements", "wf.yaml")
    error = error_of([job("a", scheduler="gpu")], slurm_schedulers=[{"name": "cpu"}])
    assert error.job == "a" and "unknown scheduler 'gpu'" in str(error) and "cpu" in str(error)


# -- claim order ------------------------------------------------------------------------------------

def test_rank_is_priority_then_sort_method_then_spec_order() -> None:
    rrs = [{"name": "gpu", "num_gpus": 1, "runtime": "PT10M", "memory": "1g"},
           {"name": "long", "runtime": "PT5H", "memory": "1g"},
           {"name": "fat", "runtime": "PT10M", "memory": "64g"}]
    jobs = [job("plain1"), job("fat", resource_requirements="fat"), job("long", resource_requirements="long"),
            job("gpu", resource_requirements="gpu"), job("urgent", priority=10), job("plain2"),
            job("low", priority=-1, resource_requirements="gpu")]

    def order(method: str) -> list[str]:
        compiled = compile_jobs(jobs, resource_requirements=rrs, jobs_sort_method=method)
        assert sorted(j.rank for j in compiled.jobs) == list(range(len(jobs)))
        return [j.name for j in sorted(compiled.jobs, key=lambda j: j.rank)]

    assert order("gpus_runtime_memory") == ["urgent", "gpu", "long", "fat", "plain1", "plain2", "low"]  # plain: PT1M
    assert order("gpus_memory_runtime") == ["urgent", "gpu", "fat", "long", "plain1", "plain2", "low"]
    assert order("none") == ["urgent", "plain1", "fat", "long", "gpu", "plain2", "low"]


# -- dependencies ---------------------------------------------------------------------------------

def test_depends_on_names() -> None:
    deps = prerequisites(compile_jobs([job("a"), job("b", depends_on=["a"]), job("c", depends_on=["a", "b"])]))
    assert deps == {"a": set(), "b": {"a"}, "c": {"a", "b"}}


def test_regexes_use_search_semantics_and_never_match_the_job_itself() -> None:
    compiled = compile_jobs([
        job("x_pre_1"), job("y_pre_2"), job("other"),
        job("post", depends_on_regexes=["pre"]),           # search, not match: finds x_pre_1, y_pre_2
        job("anchored", depends_on_regexes=["^y_"]),
        job("all_but_me", depends_on_regexes=["^[a-z]"]),   # matches every job, never itself
    ])
    deps = prerequisites(compiled)
    assert deps["post"] == {"x_pre_1", "y_pre_2"}
    assert deps["anchored"] == {"y_pre_2"}
    assert deps["all_but_me"] == {"x_pre_1", "y_pre_2", "other", "post", "anchored"} - {"all_but_me"} or False


def test_all_but_me_would_be_a_cycle_with_a_later_regex_job() -> None:
    # 'all_but_me' above matched 'post' and 'anchored', which do not depend on it: fine. Two such jobs
    # wait on each other: a cycle.
    error = error_of([job("a"), job("w1", depends_on_regexes=["^w"]), job("w2", depends_on_regexes=["^w"])])
    assert "cycle" in str(error) and "'w1'" in str(error) and "'w2'" in str(error)


def test_a_regex_that_matches_only_its_own_job_is_an_error() -> None:
    error = error_of([job("a"), job("lonely", depends_on_regexes=["^lone"])])
    assert (error.job, error.field) == ("lonely", "depends_on_regexes")
    assert "'^lone' matches no other job" in str(error)


def test_every_regex_must_match() -> None:
    error = error_of([job("a"), job("b", depends_on_regexes=["^a$", "^zzz"])])
    assert error.job == "b" and "'^zzz'" in str(error)


def test_invalid_regex() -> None:
    error = error_of([job("a"), job("b", depends_on_regexes=["(unclosed"])])
    assert error.job == "b" and "invalid regular expression" in str(error)


def test_file_edges() -> None:
    compiled = compile_jobs(
        [job("consume", input_files=["f1", "ext"]), job("produce", output_files=["f1", "f2"]),
         job("consume2", input_files=["f2"])],
        files=[{"name": "f1", "path": "f1.txt"}, {"name": "f2", "path": "f2.txt"}, {"name": "ext", "path": "in.csv"}],
    )
    assert prerequisites(compiled) == {"consume": {"produce"}, "produce": set(), "consume2": {"produce"}}
    files = {f.name: f for f in compiled.files}
    assert files["f1"].producer == 1 and files["ext"].producer is None
    assert compiled.external_inputs == {2: [0]}  # 'ext' (file index 2) is needed by job 0 and made by none


def test_user_data_edges() -> None:
    compiled = compile_jobs([job("reader", input_user_data=["cfg"]), job("writer", output_user_data=["cfg"])],
                            user_data=[{"name": "cfg"}])
    assert prerequisites(compiled) == {"reader": {"writer"}, "writer": set()}
    assert compiled.user_data[0].producer == 1


def test_two_producers_of_one_file_is_an_error_naming_both() -> None:
    error = error_of([job("p1", output_files=["f"]), job("p2", output_files=["f"])],
                     files=[{"name": "f", "path": "f"}])
    assert "'f' is produced by two jobs: 'p1' and 'p2'" in str(error)
    error = error_of([job("p1", output_user_data=["u"]), job("p2", output_user_data=["u"])],
                     user_data=[{"name": "u"}])
    assert "'p1' and 'p2'" in str(error)


def test_unknown_names_are_errors() -> None:
    error = error_of([job("a", depends_on=["ghost"])])
    assert (error.job, error.field) == ("a", "depends_on") and "'ghost'" in str(error)
    error = error_of([job("a", input_files=["nofile"])])
    assert (error.job, error.field) == ("a", "input_files") and "unknown file 'nofile'" in str(error)
    error = error_of([job("a", output_user_data=["nodata"])])
    assert error.field == "output_user_data" and "unknown user_data 'nodata'" in str(error)


def test_self_dependency_is_an_error() -> None:
    error = error_of([job("a", depends_on=["a"])])
    assert (error.job, error.field) == ("a", "depends_on") and "itself" in str(error)
    error = error_of([job("a", input_files=["f"], output_files=["f"])], files=[{"name": "f", "path": "f"}])
    assert error.job == "a" and "itself" in str(error)


@pytest.mark.parametrize(
    ("jobs", "cycle"),
    [
        ([job("a", depends_on=["b"]), job("b", depends_on=["a"])], {"a", "b"}),
        ([job("a", depends_on=["c"]), job("b", depends_on=["a"]), job("c", depends_on=["b"]), job("d")],
         {"a", "b", "c"}),
        ([job("root"), job("x", depends_on=["root", "z"]), job("y", input_files=["fx"], output_files=["fy"]),
          job("z", depends_on_regexes=["^y$"]), job("fx_maker", output_files=["fx"], depends_on=["x"])],
         {"x", "z", "y", "fx_maker"}),
    ],
)
def test_cycles_are_errors_naming_the_jobs(jobs: list[dict[str, Any]], cycle: set[str]) -> None:
    error = error_of(jobs, files=[{"name": "fx", "path": "x"}, {"name": "fy", "path": "y"}])
    assert "dependency cycle" in str(error)
    named = re.findall(r"'([^']+)'", error.message)
    assert named[0] == named[-1] and set(named) == cycle
    assert error.job in cycle


# -- interning ------------------------------------------------------------------------------------

def naive_regex_spec(n: int = 1000) -> WorkflowSpec:
    return spec([job(f"pre_{i}") for i in range(n)]
                + [job(f"work_{i}", depends_on_regexes=["^pre_.*"]) for i in range(n)])


def test_naive_1000_by_1000_regex_workflow_is_one_set() -> None:
    compiled = compile_workflow(naive_regex_spec())
    assert len(compiled.jobs) == 2000
    assert len(compiled.dependency_sets) == 1
    assert compiled.dependency_sets[0] == tuple(range(1000))
    assert compiled.stored_memberships == 1000
    assert sum(j.depset is not None for j in compiled.jobs) == 1000
    assert compiled.logical_dependencies == 1_000_000
    assert compiled.counts()["stored_dependency_rows"] == 1000


def test_each_regex_is_compiled_and_matched_once(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled_patterns: list[str] = []
    searches: dict[str, int] = {}
    real_compile = regexes.compile_regex

    class CountingPattern:
        def __init__(self, pattern: str) -> None:
            self._real = real_compile(pattern)
            self.pattern = pattern

        def search(self, text: str, *args: Any) -> Any:
            searches[self.pattern] = searches.get(self.pattern, 0) + 1
            return self._real.search(text, *args)

    def counting_compile(pattern: str) -> CountingPattern:
        compiled_patterns.append(pattern)
        return CountingPattern(pattern)

    monkeypatch.setattr(regexes, "compile_regex", counting_compile)
    s = spec([job(f"pre_{i}") for i in range(1000)]
             + [job(f"work_{i}", depends_on_regexes=["^pre_.*"]) for i in range(1000)]
             + [job(f"post_{i}", depends_on_regexes=["^work_", "^pre_.*"]) for i in range(10)])
    compiled = compile_workflow(s)
    assert sorted(compiled_patterns) == ["^pre_.*", "^work_"]
    # at most one pass over the job names per pattern; an anchored literal prefix narrows it to the
    # names that start with it (1000 'pre_' and 1000 'work_' names, not all 2010)
    assert searches == {"^pre_.*": 1000, "^work_": 1000}
    assert len(compiled.dependency_sets) == 2


def test_equal_sets_are_stored_once_whatever_their_source() -> None:
    compiled = compile_jobs(
        [job("a", output_files=["fa"]), job("b"),
         job("by_name", depends_on=["a", "b"]),
         job("by_regex", depends_on_regexes=["^[ab]$"]),
         job("by_mix", depends_on=["b"], input_files=["fa"]),
         job("by_b", depends_on=["b"])],
        files=[{"name": "fa", "path": "fa"}],
    )
    by_name = {j.name: j for j in compiled.jobs}
    assert by_name["by_name"].depset == by_name["by_regex"].depset == by_name["by_mix"].depset
    assert by_name["by_b"].depset != by_name["by_name"].depset
    assert len(compiled.dependency_sets) == 2
    assert len(set(compiled.dependency_sets)) == len(compiled.dependency_sets)


# -- bad workflows in files: one SpecError naming the file, the job and the line -------------------

BAD_WORKFLOWS = {
    "bad range": ("""\
        name: w
        jobs:
          - name: ok
            command: x
          - name: sweep_{i}
            command: run {i}
            parameters:
              i: "10:1"
        """, "sweep_{i}", 8, "range '10:1' is empty"),  # found at load time: the parameter's own line
    "bad format spec": ("""\
        name: w
        jobs:
          - name: ok
            command: x
          - name: sweep_{i:q}
            command: run
            parameters:
              i: "1:3"
        """, "sweep_{i:q}", 5, "Unknown format code 'q'"),
    "bad format spec in a command": ("""\
        name: w
        jobs:
          - name: sweep_{i}
            command: run {i:.2f}
            parameters:
              i: "['a', 'b']"
        """, "sweep_{i}", 3, "cannot format 'a' with '{i:.2f}'"),
    "unmatched regex": ("""\
        name: w
        jobs:
          - name: a
            command: x
          - name: b
            command: x
            depends_on_regexes: ["^nothing_"]
        """, "b", 5, "'^nothing_' matches no other job"),
    "cycle": ("""\
        name: w
        jobs:
          - name: start
            command: x
          - name: left
            command: x
            depends_on: [right]
          - name: right
            command: x
            depends_on: [left, start]
        """, "left", 5, "dependency cycle"),
    "duplicate names after expansion": ("""\
        name: w
        jobs:
          - name: job_{i}
            command: x
            parameters: {i: "1:3"}
          - name: job_2
            command: y
        """, "job_2", 6, "two jobs are named 'job_2'"),
    "duplicate names in one entry": ("""\
        name: w
        jobs:
          - name: first
            command: x
          - name: job_{i:.0f}
            command: x {i}
            parameters: {i: "[1.1, 1.2]"}
        """, "job_1", 5, "two jobs are named 'job_1'"),
    "a scalar field uses a parameter the name does not": ("""\
        name: w
        jobs:
          - name: first
            command: x
          - name: job_{i}
            command: x {j}
            parameters: {i: "1:2", j: "1:2"}
        """, "job_{i}", 5, "uses the parameter(s) j, which the job name does not"),
    "unknown dependency": ("""\
        name: w
        jobs:
          - name: a
            command: x
          - name: b_{i}
            command: x
            depends_on: [a, "c_{i}"]
            parameters: {i: "[7]"}
        """, "b_7", 5, "depends on unknown job 'c_7'"),
}


@pytest.mark.parametrize("case", list(BAD_WORKFLOWS))
def test_bad_workflow_gives_one_spec_error_naming_file_job_and_line(tmp_path: Path, case: str) -> None:
    text, job_name, line, message = BAD_WORKFLOWS[case]
    path = tmp_path / "bad.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    with pytest.raises(SpecError) as info:
        compile_workflow(load_spec(path), str(path))
    error = info.value
    assert str(error).startswith(f"{path}:{line}, job '{job_name}'")
    assert message in str(error)
    assert (error.file, error.job, error.line) == (str(path), job_name, line)


# -- properties: random workflows against a brute-force oracle -------------------------------------

TAGS = ("x", "y", "z")
PATTERNS = ("x$", "^j0", "y", "^j1", "z", r"^j\d[02468]", "^j00x$", "q")


MASK = st.integers(0, 2**16 - 1)
# One job's random choices, drawn at once (building strategies inside a draw is slow):
# tag, depends_on mask, has regexes, regex mask, output/input file masks, output/input data masks.
JOB_CHOICES = st.tuples(st.sampled_from(TAGS), MASK, st.integers(0, 3), MASK, MASK, MASK, MASK, MASK)


def pick(items: list[str], mask: int, limit: int) -> list[str]:
    return [item for k, item in enumerate(items) if mask >> k & 1][:limit]


@st.composite
def random_workflows(draw: st.DrawFn) -> list[dict[str, Any]]:
    choices = draw(st.lists(JOB_CHOICES, min_size=2, max_size=14))
    files = [f"f{k}" for k in range(draw(st.integers(0, 6)))]
    data = [f"u{k}" for k in range(draw(st.integers(0, 3)))]
    # "careful" workflows only point backwards (regexes built to match earlier jobs, inputs made by
    # earlier jobs, one producer per item), so they compile and their edges get compared; "wild"
    # ones may break any rule, and the compiler must then report one of the broken rules.
    careful = draw(st.integers(0, 9)) < 6
    names = [f"j{i:02d}{tag}" for i, (tag, *_) in enumerate(choices)]
    produced: set[str] = set()
    jobs = []
    for i, (_, deps, regex_odds, regexes, outs, ins, data_out, data_in) in enumerate(choices):
        entry: dict[str, Any] = {"name": names[i], "command": "true",
                                 "depends_on": pick(names[:i], deps, 3),
                                 "output_files": pick(files, outs, 2), "input_files": pick(files, ins, 2),
                                 "output_user_data": pick(data, data_out, 1),
                                 "input_user_data": pick(data, data_in, 1)}
        if careful:
            if regex_odds < 2 and i:
                # anchored (^j03) or not (03[xyz]: search finds it inside the name)
                entry["depends_on_regexes"] = [f"^j{k:02d}" if regexes >> 8 & 1 else f"{k:02d}[xyz]"
                                               for k in range(i) if regexes >> k & 1][:2] or [f"^j{i - 1:02d}"]
            if deps >> 14 & 3 == 3 and i < len(names) - 1:  # now and then a forward edge: maybe a cycle
                entry["depends_on"].append(names[i + 1 + deps % (len(names) - i - 1)])
            for out, inp in (("output_files", "input_files"), ("output_user_data", "input_user_data")):
                entry[inp] = [item for item in entry[inp] if item in produced]
                entry[out] = [item for item in entry[out] if item not in produced]
                produced.update(entry[out])
        elif regex_odds == 0:
            entry["depends_on_regexes"] = pick(list(PATTERNS), regexes, 2) or [PATTERNS[0]]
        jobs.append(entry)
    return jobs


def oracle(jobs: list[dict[str, Any]]) -> tuple[dict[str, set[str]], list[str]]:
    """Brute force, independent of the compiler: each job's prerequisites and every rule broken."""
    names = [j["name"] for j in jobs]
    problems: list[str] = []
    producers: dict[tuple[str, str], list[str]] = {}
    for j in jobs:
        for kind in ("output_files", "output_user_data"):
            for item in j.get(kind, []):
                producers.setdefault((kind, item), []).append(j["name"])
    if any(len(p) > 1 for p in producers.values()):
        problems.append("produced by two jobs")
    edges: dict[str, set[str]] = {name: set() for name in names}
    for j in jobs:
        me = j["name"]
        edges[me].update(j.get("depends_on", []))
        for pattern in j.get("depends_on_regexes", []):
            hits = {other for other in names if other != me and re.search(pattern, other)}
            if not hits:
                problems.append("matches no other job")
            edges[me] |= hits
        for kind, out_kind in (("input_files", "output_files"), ("input_user_data", "output_user_data")):
            for item in j.get(kind, []):
                for producer in producers.get((out_kind, item), []):
                    if producer == me:
                        problems.append("what it produces itself")
                    else:
                        edges[me].add(producer)
    if not problems and has_cycle(edges):
        problems.append("dependency cycle")
    return edges, problems


def has_cycle(edges: dict[str, set[str]]) -> bool:
    state: dict[str, int] = {}

    def visit(node: str) -> bool:
        state[node] = 1
        for nxt in edges[node]:
            if state.get(nxt) == 1 or (nxt not in state and visit(nxt)):
                return True
        state[node] = 2
        return False

    return any(node not in state and visit(node) for node in edges)


@given(random_workflows())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_workflows_match_the_brute_force_oracle(jobs: list[dict[str, Any]]) -> None:
    files = sorted({f for j in jobs for k in ("input_files", "output_files") for f in j.get(k, [])})
    data = sorted({d for j in jobs for k in ("input_user_data", "output_user_data") for d in j.get(k, [])})
    s = spec(jobs, files=[{"name": f, "path": f"{f}.txt"} for f in files], user_data=[{"name": d} for d in data])
    edges, problems = oracle(jobs)
    if problems:
        with pytest.raises(SpecError) as info:
            compile_workflow(s, "random.yaml")
        assert any(p in str(info.value) for p in problems), (str(info.value), problems)
        assert str(info.value).startswith("random.yaml")
        return
    compiled = compile_workflow(s, "random.yaml")
    assert prerequisites(compiled) == edges
    # interning: equal prerequisite sets share one stored set, and stored sets are distinct
    assert len(set(compiled.dependency_sets)) == len(compiled.dependency_sets)
    assert all(list(members) == sorted(members) and members for members in compiled.dependency_sets)
    by_set: dict[frozenset[str], set[int | None]] = {}
    for j in compiled.jobs:
        by_set.setdefault(frozenset(edges[j.name]), set()).add(j.depset)
    assert all(len(ids) == 1 for ids in by_set.values())
    assert compiled.logical_dependencies == sum(len(e) for e in edges.values())


@st.composite
def dags_with_a_back_edge(draw: st.DrawFn) -> tuple[list[dict[str, Any]], str, str]:
    masks = draw(st.lists(MASK, min_size=2, max_size=20))
    n = len(masks)
    names = [f"n{i}" for i in range(n)]
    deps = [pick(names[:i], mask, 3) for i, mask in enumerate(masks)]
    # pick a job with ancestors and make one ancestor depend on it: a back edge closing a loop
    ancestors: list[set[str]] = []
    for i in range(n):
        found: set[str] = set()
        for d in deps[i]:
            found |= {d} | ancestors[int(d[1:])]
        ancestors.append(found)
    candidates = [i for i in range(n) if ancestors[i]]
    assume(candidates)
    late = candidates[draw(st.integers(0, len(candidates) - 1))]
    options = sorted(ancestors[late])
    early = options[draw(st.integers(0, len(options) - 1))]
    deps[int(early[1:])] = [*deps[int(early[1:])], names[late]]
    use_regex = draw(st.booleans())
    jobs = []
    for i, name in enumerate(names):
        entry: dict[str, Any] = {"name": name, "command": "true"}
        if use_regex and name == early:
            entry["depends_on"] = [d for d in deps[i] if d != names[late]]
            entry["depends_on_regexes"] = [f"^{names[late]}$"]
        elif deps[i]:
            entry["depends_on"] = deps[i]
        jobs.append(entry)
    return jobs, early, names[late]


@given(dags_with_a_back_edge())
@settings(max_examples=100, deadline=None)
def test_a_back_edge_is_always_a_cycle_error(case: tuple[list[dict[str, Any]], str, str]) -> None:
    jobs, early, late = case
    with pytest.raises(SpecError, match="dependency cycle") as info:
        compile_workflow(spec(jobs), "loop.yaml")
    named = re.findall(r"'([^']+)'", info.value.message)
    assert len(named) >= 3 and named[0] == named[-1]
    edges, _ = oracle(jobs)
    for waiter, waited_on in zip(named, named[1:]):  # "each job waits for the next"
        assert waited_on in edges[waiter], (waiter, waited_on)


# -- the regex engine: RE2, linear time, the same matches as re.search ------------------------------

def test_a_catastrophic_pattern_is_linear() -> None:
    """'^(a+)+$' on 'aaa…a_N' backtracks 2^31 times per name in re; RE2 does not backtrack."""
    import time

    names = [f"{'a' * 31}_{i}" for i in range(200)]
    started = time.perf_counter()
    error = error_of([job(n) for n in names] + [job("z", depends_on_regexes=["^(a+)+$"])])
    assert time.perf_counter() - started < 5
    assert (error.job, error.field) == ("z", "depends_on_regexes") and "matches no other job" in str(error)
    compiled = compile_jobs([job(n) for n in names] + [job("z", depends_on_regexes=["(a+)+_1"])])
    assert len(prerequisites(compiled)["z"]) == len([n for n in names if "_1" in n])


@pytest.mark.parametrize(
    ("pattern", "prefix"),
    [("^pre_.*", "pre_"), (r"^gen_\d+$", "gen_"), ("^ab*", "a"), ("^ab?c", "a"), ("^ab{2}", "a"),
     ("^abc+", "abc"), ("^a|b", ""), ("^(a)b", ""), ("pre", ""), ("^", ""), ("^é_x$", "é_x"), ("^a.b", "a")],
)
def test_literal_prefix(pattern: str, prefix: str) -> None:
    assert regexes.literal_prefix(pattern) == prefix


NAME_TEXT = st.text(alphabet="ab_1é", min_size=1, max_size=6)
PATTERN_PARTS = st.lists(st.sampled_from(["a", "b", "_", "1", "é", ".", ".*", "b*", "a?", "+", "[ab]", "(a|b)",
                                          r"\d", "$", "a{2}", "(?i)A", r"\w"]), max_size=4)


@given(st.lists(NAME_TEXT, min_size=1, max_size=30, unique=True), st.booleans(), NAME_TEXT, PATTERN_PARTS)
@settings(max_examples=200, deadline=None)
def test_re2_with_prefix_narrowing_finds_what_re_search_finds(names: list[str], anchored: bool, literal: str,
                                                              parts: list[str]) -> None:
    pattern = ("^" if anchored else "") + literal + "".join(parts)
    try:
        # RE2's \d and \w are ASCII classes (Rust's are Unicode; the README says so): compare alike.
        expected = {i for i, n in enumerate(names) if re.search(pattern, n, re.ASCII)}
    except re.error:
        return
    index = regexes.NameIndex({n: i for i, n in enumerate(names)})
    try:
        found = index.matches(pattern)
    except ValueError as exc:  # Python-only syntax, e.g. possessive '*+' (3.11): refused, not misread
        assert "invalid regular expression" in str(exc)
        return
    assert found == expected, pattern


# -- dependency sets built per job: shared when equal, capped when each differs ---------------------

def test_jobs_with_the_same_regexes_and_names_share_one_built_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two regexes per job used to build one union per job: 300 x 301 rows of work and memory."""
    import torc_slurm.compiler as compiler_module

    monkeypatch.setattr(compiler_module, "MAX_DEPENDENCY_ROWS", 1000)  # one union of 301 is built, once
    jobs = ([job("setup")] + [job(f"pre_{i}") for i in range(300)]
            + [job(f"post_{i}", depends_on_regexes=["^pre_", "^setup$"], depends_on=["setup"]) for i in range(300)])
    compiled = compile_jobs(jobs)
    assert len(compiled.dependency_sets) == 1 and compiled.stored_memberships == 301


def test_sets_that_each_differ_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    import torc_slurm.compiler as compiler_module

    monkeypatch.setattr(compiler_module, "MAX_DEPENDENCY_ROWS", 1000)
    jobs = ([job(f"pre_{i}") for i in range(100)] + [job(f"own_{i}") for i in range(100)]
            + [job(f"post_{i}", depends_on_regexes=["^pre_"], depends_on=[f"own_{i}"]) for i in range(100)])
    error = error_of(jobs)
    assert "more than 1,000 dependency rows" in error.message and "barrier" in error.message
    assert error.field == "depends_on_regexes" and error.job == "post_9"  # 10 sets of 101 rows fit
    monkeypatch.setattr(compiler_module, "MAX_DEPENDENCY_ROWS", 10_100)
    assert compile_jobs(jobs).stored_memberships == 10_100
