"""`torc workflows create` on bad input: exit status 2, one clear line naming the spec, no traceback,
and nothing written (no queue file is created, and an existing one gains no workflow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from torc_slurm.cli import torc

GOOD = "name: good\njobs:\n  - {name: a, command: 'true'}\n"
JOB = "name: w\njobs:\n  - name: a\n    command: x\n"


def text(body: str, name: str = "spec.yaml") -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / name
        path.write_text(body, encoding="utf-8")
        return path

    return make


def raw(data: bytes) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / "spec.yaml"
        path.write_bytes(data)
        return path

    return make


def fifo(folder: Path) -> Path:
    path = folder / "spec.yaml"
    os.mkfifo(path)
    return path


def directory(folder: Path) -> Path:
    path = folder / "specs.yaml"
    path.mkdir()
    return path


def catastrophic_regex(folder: Path) -> Path:
    jobs = "".join(f"  - name: {'a' * 31}_{i}\n    command: x\n" for i in range(100))
    return text(f"name: w\njobs:\n{jobs}  - name: z\n    command: x\n    depends_on_regexes: ['^(a+)+$']\n")(folder)


LAUGHS = "metadata:\n  a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"  {chr(98 + k)}: &{chr(98 + k)} [{', '.join(['*' + chr(97 + k)] * 9)}]\n" for k in range(9))

# case -> (make the spec in a folder, what the error line must contain besides the path)
CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "num_cpus past int64": (text(JOB + "    resource_requirements: r\nresource_requirements:\n"
                                 "  - {name: r, num_cpus: 99999999999999999999}\n"),
                            "field 'resource_requirements[r].num_cpus'"),
    "priority past int64": (text(JOB + "    priority: 9223372036854775808\n"), "job 'a', field 'priority'"),
    "memory past 1 PiB": (text(JOB + "    resource_requirements: r\nresource_requirements:\n"
                               "  - {name: r, memory: 99999999t}\n"), "more than 1 PiB"),
    "huge product": (text("name: w\njobs:\n  - name: a_{i}_{j}\n    command: x\n"
                          "    parameters: {i: '0:99999', j: '0:99999'}\n"), "expand to 10,000,000,000 jobs"),
    "catastrophic regex": (catastrophic_regex, "'^(a+)+$' matches no other job"),
    "lookahead regex": (text(JOB + "  - {name: b, command: y, depends_on_regexes: ['a(?=b)']}\n"),
                        "job 'b', field 'depends_on_regexes'"),
    "fifo": (fifo, "FIFO"),
    "dev zero": (lambda folder: Path("/dev/zero"), "character device"),
    "directory": (directory, "is a directory"),
    "missing": (lambda folder: folder / "nope.yaml", "spec file not found"),
    "binary": (raw(b"\x7fELF\x02\x01\x01\x00" * 64), "NUL bytes"),
    "not utf-8": (raw(b"name: w\xff\n"), "not UTF-8"),
    "duplicate key": (text(JOB + "    name: b\n"), "duplicate key 'name' (first at line 3, again at line 5)"),
    "duplicate json key": (text('{"name": "w", "jobs": [{"name": "a", "command": "x"}], "name": "v"}',
                                "spec.json"), "duplicate key 'name'"),
    "boolean priority": (text(JOB + "    priority: yes\n"), "not a boolean"),
    "boolean parameter": (text("name: w\njobs:\n  - {name: 'a{i}', command: x, parameters: {i: true}}\n"),
                          "field 'parameters.i'"),
    "deep nesting": (text("name: w\nmetadata: " + "[" * 100_000 + "]" * 100_000 + "\n"), "nested more than 100"),
    "billion laughs": (text("name: w\n" + LAUGHS), "aliases expand the spec to more than 10,000,000 values"),
    "empty": (text(""), "the spec is empty"),
    "top-level list": (text("- a\n- b\n"), "not a list"),
    "wrong type deep inside": (text("name: w\njobs: [{name: a, command: x, env: {A: [1]}}]\n"), "field 'env.A'"),
}


def run(db: Path, *args: object) -> Result:
    return CliRunner().invoke(torc, ["--db", str(db), *map(str, args)], catch_exceptions=False)


def assert_refused(result: Result, spec: Path, message: str) -> None:
    output = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert result.exit_code == 2, output
    assert "Traceback" not in output
    assert message in output, output
    assert str(spec) in output


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dry_run", [False, True], ids=["create", "dry-run"])
def test_bad_input_exits_2_and_writes_nothing(tmp_path: Path, case: str, dry_run: bool) -> None:
    make, message = CASES[case]
    spec = make(tmp_path)
    db = tmp_path / "t.db"
    result = run(db, "workflows", "create", spec, *(["--dry-run"] if dry_run else []))
    assert_refused(result, spec, message)
    assert not db.exists() and not list(tmp_path.glob("t.db*"))


@pytest.mark.parametrize("case", list(CASES))
def test_an_existing_queue_gains_no_workflow(tmp_path: Path, case: str) -> None:
    db = tmp_path / "t.db"
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    assert run(db, "workflows", "create", good).exit_code == 0
    make, message = CASES[case]
    spec = make(tmp_path)
    assert_refused(run(db, "workflows", "create", spec), spec, message)
    listed = run(db, "workflows", "list", "-f", "json")
    assert listed.exit_code == 0, listed.output
    assert [w["name"] for w in json.loads(listed.stdout)] == ["good"]


def torc_process(db: Path, *args: object) -> subprocess.CompletedProcess[str]:
    """The `torc` console script (pyproject: torc = torc_slurm.cli:main) in a real process."""
    return subprocess.run([sys.executable, "-c", "from torc_slurm.cli import main; main()", "--db", str(db),
                           *map(str, args)], capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("case", ["fifo", "catastrophic regex", "deep nesting", "huge product"])
def test_a_real_process_neither_blocks_nor_hangs(tmp_path: Path, case: str) -> None:
    make, message = CASES[case]
    spec = make(tmp_path)
    db = tmp_path / "t.db"
    done = torc_process(db, "workflows", "create", spec)  # raises TimeoutExpired after 10 s
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert message in done.stderr and str(spec) in done.stderr
    assert not db.exists()
