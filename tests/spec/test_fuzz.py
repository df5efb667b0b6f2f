"""Fuzzing: valid specs (the repo's examples, a spec using every field, in YAML and JSON) mutated
at the data level (keys deleted, renamed or duplicated, values replaced by hostile ones) and at the
byte level (random bytes, cuts, duplicated lines, YAML syntax sprinkled in). Whatever comes out,
``load_spec`` + ``compile_workflow`` either succeed or raise one SpecError naming the file: no
other exception, well under 10 s, and no file written.

    TORC_FUZZ_EXAMPLES=5000 python -m pytest tests/spec/test_fuzz.py    # a longer hunt (default 200)
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torc_slurm.compiler import compile_workflow
from torc_slurm.errors import SpecError
from torc_slurm.spec.load import load_spec

from .test_load import FULL

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
BASES: list[dict[str, Any]] = [yaml.safe_load(FULL)] + [
    yaml.safe_load(path.read_text()) for path in sorted(EXAMPLES.glob("*.yaml"))]

HOSTILE_VALUES = st.one_of(
    st.sampled_from([
        True, False, None, 0, -1, 2**63, -(2**63) - 1, 99999999999999999999, 10**400, 1.5, float("inf"),
        float("nan"), -0.0, "", " ", "yes", "null", "~", "0:99999999999", "1:3", "0.1:0.3:0.1", "5:1", "0:10:0",
        "1e-400:1:1e-400", "[1, 2", "[]", "[a, b]", "['x', 1e999]", "{i}", "{i:q}", "{i!r:>{j}}", "{{", "}",
        "^(a+)+$", "(a)\\1", "a(?=b)", "(unclosed", "[", "*", "../..", "a/b", "\x00", "\ud800", "é" * 40,
        "x" * 200_000, "PT1H", "P99999999D", "99999999t", "4g", "1-00:00:00", "--wrap=x\n#SBATCH", "${HOME}",
        [], [None], [[[]]], [True], {}, {"a": {"b": {"c": None}}}, {"": 1}, {"name": "x"},
    ]),
    st.integers(), st.text(max_size=20), st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)
KEYS = st.sampled_from(["name", "command", "jobs", "parameters", "i", "depends_on", "depends_on_regexes",
                        "resource_requirements", "num_cpus", "memory", "runtime", "priority", "env", "files",
                        "user_data", "slurm_schedulers", "walltime", "parameter_mode", "<<", "bogus", ""])
SNIPPETS = [b"&a ", b"*a", b"<<: *a\n", b"!!binary ", b"!!python/object:os.system ", b"{", b"[", b"]", b"\t",
            b"\x00", b"\xff", b"\xc3", b'"', b"'", b"\\u0000", b"\\ud800", b"---\n", b"? ", b": ", b"- ", b"\n  ",
            b"%YAML 1.1\n", b"#", b"!!bool ", b"!!int ", b"!!float ", b"!!null ", b"!!str ", b"!!map ", b"!!seq ",
            b"9" * 30, b"[" * 300, b"- " * 300]


def containers(value: Any, out: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Every (container, key or index) in ``value``, depth first."""
    if isinstance(value, dict):
        for key, child in value.items():
            out.append((value, key))
            containers(child, out)
    elif isinstance(value, list):
        for index, child in enumerate(value):
            out.append((value, index))
            containers(child, out)
    return out


def mutate_data(data: st.DataObject, spec: dict[str, Any]) -> dict[str, Any]:
    places = containers(spec, [])
    if not places:
        return spec
    container, key = data.draw(st.sampled_from(places))
    action = data.draw(st.sampled_from(["delete", "replace", "replace", "rename", "duplicate", "wrap"]))
    if action == "delete":
        del container[key]
    elif action == "replace":
        container[key] = data.draw(HOSTILE_VALUES)
    elif action == "rename" and isinstance(container, dict):
        container[data.draw(KEYS)] = container.pop(key)
    elif action == "duplicate" and isinstance(container, list):
        container.append(copy.deepcopy(container[key]))
    elif action == "wrap":
        container[key] = [container[key]]
    return spec


def mutate_bytes(data: st.DataObject, text: bytes) -> bytes:
    position = data.draw(st.integers(0, len(text)))
    action = data.draw(st.sampled_from(["insert", "snippet", "snippet", "cut", "duplicate line", "truncate"]))
    if action == "insert":
        return text[:position] + data.draw(st.binary(min_size=1, max_size=8)) + text[position:]
    if action == "snippet":
        return text[:position] + data.draw(st.sampled_from(SNIPPETS)) + text[position:]
    if action == "cut":
        return text[:position] + text[position + data.draw(st.integers(1, 40)):]
    if action == "duplicate line":
        lines = text.split(b"\n")
        index = min(position * len(lines) // (len(text) + 1), len(lines) - 1)
        return b"\n".join(lines[: index + 1] + lines[index:])
    return text[:position]


@given(st.data())
@settings(max_examples=int(os.environ.get("TORC_FUZZ_EXAMPLES", "200")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
def test_mutated_specs_give_a_spec_error_or_a_workflow(data: st.DataObject) -> None:
    spec = copy.deepcopy(data.draw(st.sampled_from(BASES)))
    for _ in range(data.draw(st.integers(0, 4))):
        spec = mutate_data(data, spec)
    kind = data.draw(st.sampled_from(["yaml", "json"]))
    if kind == "json":
        text = json.dumps(spec, indent=data.draw(st.sampled_from([None, 1]))).encode("utf-8", "surrogatepass")
    else:
        text = yaml.safe_dump(spec, sort_keys=False, allow_unicode=True).encode("utf-8", "surrogatepass")
    for _ in range(data.draw(st.integers(0, 3))):
        text = mutate_bytes(data, text)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"spec.{kind}"
        path.write_bytes(text)
        started = time.perf_counter()
        try:
            compiled = compile_workflow(load_spec(path), str(path))
        except SpecError as exc:
            assert str(exc).startswith(str(path)), str(exc)
            assert len(str(exc)) < 3000 + len(str(path))
        else:
            assert compiled.jobs
        assert time.perf_counter() - started < 10
        assert os.listdir(folder) == [path.name]  # nothing written beside the spec
