"""The direct-exec rule (README "Direct exec"): a command without shell syntax is exec'd directly,
everything else runs under ``bash -c``, and either way the job sees exactly what ``bash -c`` gives:
the same stdout, stderr and exit status. Each case runs the command both ways and compares."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torc_slurm.runner.process import Finished, LaunchSpec, ProcessPool, direct_argv

DEADLINE_S = 30.0
ECHO = shutil.which("echo", path="/usr/bin:/bin")
PRINTF = shutil.which("printf", path="/usr/bin:/bin")


def run_once(tmp: Path, command: str, *, direct: bool, spawn: bool, env: dict[str, str] | None = None,
             tag: str = "") -> tuple[bytes, bytes, int | None]:
    out, err = tmp / f"{tag}{direct}{spawn}.out", tmp / f"{tag}{direct}{spawn}.err"
    with ProcessPool(direct_exec=direct, posix_spawn=spawn) as pool:
        started = pool.start(LaunchSpec(1, 1, command, tmp, env if env is not None else dict(os.environ), out, err))
        if isinstance(started, Finished):
            raise AssertionError(f"launch failed: {started.launch_error}")
        deadline = time.monotonic() + DEADLINE_S
        done: list[Finished] = []
        while not done and time.monotonic() < deadline:
            done = pool.wait(DEADLINE_S)
    assert done, "job did not finish"
    return out.read_bytes(), err.read_bytes(), done[0].return_code


def same_as_bash(tmp: Path, command: str, *, env: dict[str, str] | None = None,
                 sort_lines: bool = False) -> tuple[bytes, bytes, int | None]:
    """Run ``command`` under bash -c and with direct exec allowed, through Popen (cwd given) and
    through posix_spawn (cwd = the runner's); assert all agree; return bash's result."""
    results = {}
    for direct, spawn in ((False, False), (True, False), (True, True)):
        if spawn:
            previous = os.getcwd()
            os.chdir(tmp)
        try:
            got = run_once(tmp, command, direct=direct, spawn=spawn, env=env)
        finally:
            if spawn:
                os.chdir(previous)
        if sort_lines:
            got = (b"\n".join(sorted(got[0].splitlines())), got[1], got[2])
        results[(direct, spawn)] = got
    reference = results[(False, False)]
    for key, got in results.items():
        assert got == reference, f"{command!r}: {key} gave {got}, bash -c gave {reference}"
    return reference


# -- the classifier ---------------------------------------------------------------------------
@pytest.mark.parametrize("command, argv", [
    ("true", ["true"]),
    ("/bin/echo hello", ["/bin/echo", "hello"]),
    ("prog  a\tb", ["prog", "a", "b"]),
    ("prog 'a b' \"c d\" e'f'g", ["prog", "a b", "c d", "efg"]),
    ("prog '$HOME' '*.txt' 'a;b' 'x|y' '~' '#'", ["prog", "$HOME", "*.txt", "a;b", "x|y", "~", "#"]),
    ("prog \"it's\"", ["prog", "it's"]),
    ("prog key=value --opt=1 a,b 1:2 u@h 50% ^x +y", ["prog", "key=value", "--opt=1", "a,b", "1:2", "u@h", "50%", "^x", "+y"]),
    ("prog héllo wörld ✓ 日本", ["prog", "héllo", "wörld", "✓", "日本"]),
    ("python3 -c 'print(1)'", ["python3", "-c", "print(1)"]),
])
def test_plain_commands_run_directly(command, argv):
    assert direct_argv(command) == argv


@pytest.mark.parametrize("command", [
    "", "   ",
    "echo $HOME", "echo ${HOME}", "echo `date`", "echo $(date)", 'echo "$HOME"', 'echo "a\\b"', "echo a\\ b",
    "ls *.py", "ls ?.py", "ls [ab].py", "ls a]", "echo ~", "echo ~/x", "echo {a,b}",
    "prog > out", "prog < in", "prog 2>&1", "prog | cat", "a && b", "a || b", "a; b", "a & b", "(a)",
    "prog # comment", "prog\nprog", "prog 'a\nb'", "A=1 prog", "a=b", "'unbalanced", 'un"balanced',
    "! prog", "prog !x", "%1", "prog\u00a0x", "prog\rx",
    "cd /tmp", "export A=1", "source x", ". x", "exec prog", "if", "for", "while", "time prog", "[ -f x ]",
    "echo hi", "printf x", "true x", "false --help", "eval x", "set -e", "ulimit -n", "umask 077", "kill 1",
])
def test_shell_syntax_and_builtins_need_bash(command):
    assert direct_argv(command) is None


_word = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=12)


@settings(max_examples=300, deadline=None)
@given(st.lists(_word, min_size=1, max_size=6))
def test_shlex_join_round_trips(args):
    """Any argv written with shlex.join runs directly as that argv (a newline inside an argument
    means bash, which gives the same argv: not checked here, see the next test)."""
    argv = ["/usr/bin/prog", *args]
    got = direct_argv(shlex.join(argv))
    if any("\n" in a for a in args):
        assert got is None
    else:
        assert got == argv


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=8), max_size=4),
       st.sampled_from([" ", "  ", "\t", " \t "]))
def test_generated_commands_split_as_bash_splits(tmp_path, args, sep):
    """Whatever direct_argv accepts, bash splits into the same words (checked with bash itself)."""
    if PRINTF is None:
        pytest.skip("no printf program")
    command = sep.join([PRINTF, "'%s\\0'", "start", *(shlex.quote(a) if a else "''" for a in args)])
    argv = direct_argv(command)
    assert argv is not None
    words = subprocess.run(["bash", "-c", command], capture_output=True, check=True).stdout
    assert words.split(b"\0")[:-1] == [a.encode() for a in argv[2:]] == [b"start", *(a.encode() for a in args)]


# -- behaviour: exactly bash's -----------------------------------------------------------------
@pytest.mark.parametrize("command", [
    f"{ECHO} 'a  b' \"c   d\" e'f'g",            # quoting
    f"{ECHO} '$HOME' \"it's\" '*'",               # quoted specials stay literal
    f"{ECHO} héllo 'wörld ✓' 日本",               # unicode
    "true", "false",                                # the two builtins that run as programs
])
def test_direct_commands_match_bash(tmp_path, command):
    assert direct_argv(command) is not None
    same_as_bash(tmp_path, command)


@pytest.mark.parametrize("command", [
    "echo *.txt", "echo [ab].txt",                  # globbing
    "echo hi > made.txt; cat made.txt", "echo out; echo err >&2",   # redirection
    "true && echo yes", "false && echo no; echo $?",                 # &&
    "echo $HOME ${TORC_TEST_VAR:-unset} $TORC_TEST_VAR",            # env expansion
    'echo "héllo $TORC_TEST_VAR ✓"',                                 # unicode + expansion
    "cd / && pwd", "export X=1; echo $X", "echo hi", "printf '%s,' a b",  # builtins
])
def test_shell_commands_match_bash(tmp_path, command):
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "b.txt").write_text("y")
    assert direct_argv(command) is None
    env = {**os.environ, "TORC_TEST_VAR": "vär"}
    same_as_bash(tmp_path, command, env=env)


def test_environment_matches_bash(tmp_path):
    """The job sees the same variables (bash adds PWD, SHLVL and _, and drops an OLDPWD that is
    no directory; the direct exec does the same). Compared as sorted lines: the order differs."""
    env_program = shutil.which("env", path="/usr/bin:/bin")
    env = {**os.environ, "TORC_X": "1", "OLDPWD": "/nonexistent", "PWD": "/"}
    env.pop("SHLVL", None)
    assert direct_argv(env_program) == [env_program]
    same_as_bash(tmp_path, env_program, env=env, sort_lines=True)
    same_as_bash(tmp_path, env_program, env={**env, "SHLVL": "3", "OLDPWD": "/", "PWD": str(tmp_path)},
                 sort_lines=True)
    same_as_bash(tmp_path, "env", env={**env, "SHLVL": "7"}, sort_lines=True)


@pytest.mark.parametrize("name", ["PS1", "PS2", "PS4", "IFS", "PPID", "OPTIND", "OPTERR", "LINENO", "RANDOM",
                                  "SRANDOM", "HISTCMD", "COMP_WORDBREAKS", "EPOCHSECONDS", "BASH_VERSION"])
def test_variables_bash_rewrites_give_bash_s_environment(tmp_path, name):
    """bash drops or resets these before it execs (PS1 of a user's dotfiles is the usual one): with
    any of them in the job's environment the command goes through bash, so the job sees the same."""
    env_program = shutil.which("env", path="/usr/bin:/bin")
    env = {**os.environ, name: "zz"}
    env.pop("SHLVL", None)
    out, _, rc = same_as_bash(tmp_path, env_program, env=env, sort_lines=True)
    assert rc == 0 and f"{name}=zz".encode() not in out.splitlines()


@pytest.mark.parametrize("command, code", [
    ("no-such-program-torc", 127), ("no-such-program-torc with args", 127), ("./no-such-file", 127),
    ("./plain", 126),                  # not executable
    ("/", 126), ("./", 126),           # a directory
])
def test_failures_match_bash(tmp_path, command, code):
    """A program that cannot be exec'd: the same exit status and the same message as bash's,
    because the runner then starts the command under bash (nothing of the job ran)."""
    (tmp_path / "plain").write_text("not a program\n")
    (tmp_path / "plain").chmod(0o600)
    assert direct_argv(command) is not None
    out, err, rc = same_as_bash(tmp_path, command)
    assert rc == code and b"bash" in err


def test_script_without_shebang_runs_as_bash_would(tmp_path):
    script = tmp_path / "s"
    script.write_text("echo from script $((1+2))\n")
    script.chmod(0o700)
    assert direct_argv("./s") == ["./s"]
    out, _, rc = same_as_bash(tmp_path, "./s")
    assert out == b"from script 3\n" and rc == 0


def test_exported_functions_and_bash_env_mean_bash(tmp_path):
    """bash runs BASH_ENV first and exported functions shadow programs: then bash it is."""
    rc_file = tmp_path / "rc"
    rc_file.write_text("echo from BASH_ENV\n")
    out, _, _ = same_as_bash(tmp_path, f"{ECHO} x", env={**os.environ, "BASH_ENV": str(rc_file)})
    assert out == b"from BASH_ENV\nx\n"
    out, _, _ = same_as_bash(tmp_path, "greet", env={**os.environ, "BASH_FUNC_greet%%": "() { echo hi; }"})
    assert out == b"hi\n"


def test_path_is_the_jobs(tmp_path):
    """The program is looked up on the job's PATH, as bash does, not the runner's."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    prog = bin_dir / "torc-only-here"
    prog.write_text("#!/bin/sh\necho found me\n")
    prog.chmod(0o700)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    out, _, rc = same_as_bash(tmp_path, "torc-only-here", env=env)
    assert out == b"found me\n" and rc == 0
