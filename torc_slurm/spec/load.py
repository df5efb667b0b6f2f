"""Read a spec file (YAML, JSON or JSON5) into a validated ``WorkflowSpec``.

Every failure becomes one ``SpecError`` naming the file, the job, the field and, where the text gives
it, the line; never a traceback, and nothing is written. What is refused, and the limits, are listed
in ``spec.limits``: only regular files of at most 64 MiB of UTF-8 text are read (a FIFO, a device or
a directory is refused before it is opened, so nothing blocks), YAML goes through the bounded reader
in ``spec.safe_yaml``, and a ``.json`` file is read as JSON (duplicate keys refused there too).

A ``.json5`` file, and a ``.json`` file that is not strict JSON, is read with ``pyjson5`` (comments,
unquoted keys, trailing commas, single quotes, hex), after strict JSON is tried. Line numbers of a JSON
or JSON5 spec come from the YAML composer run over the text, comments blanked, only when an error
needs one.
torc's third format, KDL, is refused with a message (see the README's "torc spec compatibility").
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from torc_slurm.errors import SpecError
from torc_slurm.spec import osmo, safe_yaml
from torc_slurm.spec.limits import (MAX_INTEGER_DIGITS, MAX_NESTING, MAX_SPEC_BYTES, MAX_VALUES, short_repr,
                                    short_text)
from torc_slurm.spec.models import SourceLines, WorkflowSpec

_KINDS = {"jobs": "job", "files": "file", "user_data": "user_data", "resource_requirements":
          "resource_requirements", "slurm_schedulers": "scheduler"}
_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISSOCK, "a socket"))
_BAD_CHARACTER = re.compile("[\x00\ud800-\udfff]")
_MAX_MESSAGE = 2000


def load_spec(path: str | Path) -> WorkflowSpec:
    path = Path(path)
    return parse_spec(read_spec_text(path), source=str(path))


def read_spec_text(path: Path) -> str:
    """The text of a spec file: a regular file of at most ``MAX_SPEC_BYTES``, strict UTF-8, no NUL."""
    source = str(path)
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise SpecError("spec file not found", file=source) from None
    except OSError as exc:
        raise SpecError(f"cannot read spec file: {exc.strerror or exc}", file=source) from None
    _check_regular(info, source)
    try:
        # O_NONBLOCK: if a FIFO was put in its place since the stat, opening it does not wait.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise SpecError(f"cannot read spec file: {exc.strerror or exc}", file=source) from None
    try:
        _check_regular(os.fstat(fd), source)
        chunks, total = [], 0
        while total <= MAX_SPEC_BYTES:
            chunk = os.read(fd, min(1 << 20, MAX_SPEC_BYTES + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        raise SpecError(f"cannot read spec file: {exc.strerror or exc}", file=source) from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(f"the spec file is larger than {MAX_SPEC_BYTES // 2**20} MiB, the most a spec may be",
                        file=source)
    nul = data.find(b"\x00")
    if nul >= 0:
        raise SpecError("the file contains NUL bytes, so it is binary (or UTF-16), not a YAML or JSON spec",
                        file=source, line=data.count(b"\n", 0, nul) + 1)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"the file is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start:,})",
                        file=source, line=data.count(b"\n", 0, exc.start) + 1) from None


def _check_regular(info: os.stat_result, source: str) -> None:
    if stat.S_ISREG(info.st_mode):
        if info.st_size > MAX_SPEC_BYTES:
            raise SpecError(f"the spec file is {info.st_size:,} bytes; a spec may be at most "
                            f"{MAX_SPEC_BYTES // 2**20} MiB", file=source)
        return
    kind = next((name for test, name in _FILE_KINDS if test(info.st_mode)), "not a regular file")
    raise SpecError(f"this is {kind}, not a spec file: give the path of a YAML or JSON file", file=source)


def parse_spec(text: str, source: str = "<spec>") -> WorkflowSpec:
    bad = _BAD_CHARACTER.search(text)
    if bad:
        raise SpecError(f"the text contains {_describe_character(bad[0])}", file=source,
                        line=text.count("\n", 0, bad.start()) + 1)
    root: Any = None
    suffix = os.path.splitext(source.lower())[1]
    if suffix == ".kdl":
        raise SpecError("KDL specs are not supported: torc_slurm reads torc specs written as YAML, JSON or JSON5 "
                        "(the same fields; see the README, 'torc spec compatibility')", file=source)
    if suffix in (".json", ".json5"):
        data = _load_json(text, source, json5_too=True) if suffix == ".json" else _load_json5(text, source)
        lines: Callable[[], Any] = lambda: _compose_quietly(_blank_comments(text))  # noqa: E731  (when asked)
    else:
        root, data = _load_yaml(text, source)
        lines = lambda: root  # noqa: E731
    if data is None:
        raise SpecError("the spec is empty: it needs at least 'name' and 'jobs'", file=source)
    if not isinstance(data, dict):
        raise SpecError(f"a spec must be a mapping with at least 'name' and 'jobs', not {_kind(data)}",
                        file=source)
    if "\\" in text:  # escapes are the only way to NUL characters or lone surrogates inside strings
        _check_strings(data, source, lines)
    if osmo.is_osmo(data):
        return _parse_osmo(data, source, lines)
    try:
        spec = WorkflowSpec.model_validate(data)
    except ValidationError as exc:
        raise _spec_error(exc, data, lines(), source) from None
    except (ValueError, TypeError, RecursionError, ArithmeticError) as exc:  # a validator's own bug
        raise SpecError(f"cannot validate the spec: {exc}", file=source) from None
    spec._lines = SourceLines(lambda: _job_lines(lines()))
    return spec


# -- YAML and JSON ---------------------------------------------------------------------------------

def _load_yaml(text: str, source: str) -> tuple[Any, Any]:
    try:
        return safe_yaml.load(text)
    except safe_yaml.LimitError as exc:
        raise _limit_error(exc, source) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        if context and isinstance(exc, yaml.composer.ComposerError):  # "expected a single document, but found …"
            problem = f"{context}, {problem}"
        raise SpecError(f"not valid YAML: {problem}", file=source, line=mark.line + 1 if mark else None) from None
    except (ValueError, TypeError, RecursionError, ArithmeticError, MemoryError) as exc:
        raise SpecError(f"cannot read the YAML: {exc}", file=source) from None


class _JsonRefused(Exception):
    pass


def _json_int(text: str) -> int:
    if len(text) > MAX_INTEGER_DIGITS:
        raise _JsonRefused(f"an integer of {len(text):,} digits is too long (at most {MAX_INTEGER_DIGITS:,})")
    return int(text)


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) < len(pairs):
        seen: set[str] = set()
        key = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise _JsonRefused(f"duplicate key {short_repr(key)}")
    return result


def _load_json(text: str, source: str, json5_too: bool = False) -> Any:
    try:
        data = json.loads(text.removeprefix("\ufeff"), object_pairs_hook=_json_object, parse_int=_json_int)
    except json.JSONDecodeError as exc:
        if json5_too:  # JSON5 in a .json file is read as JSON5; if it is not that either, the JSON error says why
            try:
                return _load_json5(text, source, try_json=False)
            except SpecError:
                pass
        raise SpecError(f"not valid JSON: {exc.msg}", file=source, line=exc.lineno) from None
    except _JsonRefused as exc:
        # The YAML reader finds the same problem with its line (and both lines of a duplicate key).
        try:
            safe_yaml.compose(text)
        except safe_yaml.LimitError as located:
            raise _limit_error(located, source) from None
        except Exception:  # noqa: BLE001 - only a better message was at stake
            pass
        raise SpecError(str(exc), file=source) from None
    except RecursionError:
        raise SpecError(f"the spec is nested more than {MAX_NESTING} levels deep", file=source) from None
    except (ValueError, TypeError, MemoryError) as exc:
        raise SpecError(f"cannot read the JSON: {exc}", file=source) from None
    _check_depth(data, source)
    return data


# JSON5 tokens: strings, comments, punctuation, and bare words (keys, numbers, literals).
_JSON5_TOKENS = re.compile(r""""(?:\\.|[^"\\])*"?|'(?:\\.|[^'\\])*'?|//[^\n]*|/\*.*?(?:\*/|\Z)|[\[\]{}:,]|[^\s\[\]{}:,"'/]+|/""",
                           re.S)
_JSON5_NEAR = re.compile(r"(?: starting)? near (\d+)")
# A run of hex digits long enough to hold an integer over the limit, written in decimal or as JSON5's
# 0x… (1000 decimal digits need 831 hex digits); a long hex string elsewhere only costs a walk.
_LONG_NUMBER = re.compile(r"[0-9A-Fa-f]{%d}" % int(MAX_INTEGER_DIGITS * 0.8305))


def _load_json5(text: str, source: str, try_json: bool = True) -> Any:
    """JSON5 with ``pyjson5`` (C; strict JSON is tried first, which is faster still). Errors name the
    line; duplicate keys, nesting and long integers are refused as for JSON."""
    if try_json:
        try:
            return _load_json(text, source)
        except SpecError as exc:
            if not exc.message.startswith("not valid JSON:"):
                raise
    import pyjson5  # noqa: PLC0415 - only JSON5 that is not JSON pays for the import

    text = text.removeprefix("\ufeff")
    try:
        data = pyjson5.decode(text, maxdepth=MAX_NESTING)
    except pyjson5.Json5NestingTooDeep as exc:
        raise SpecError(f"the spec is nested more than {MAX_NESTING} levels deep", file=source,
                        line=_json5_error_line(text, exc)) from None
    except pyjson5.Json5Exception as exc:
        message = _JSON5_NEAR.sub("", str(exc.args[0]) if exc.args else type(exc).__name__)
        reason = re.sub(r"U\+([0-9A-Fa-f]{4,6})", lambda m: repr(chr(int(m[1], 16))),
                        re.sub(r"b'([^']*)'", r"\1", message))  # "Stray b'comma'", "Expected U+005c"
        raise SpecError(f"not valid JSON5: {reason}", file=source, line=_json5_error_line(text, exc)) from None
    except (ValueError, TypeError, MemoryError, RecursionError, ArithmeticError) as exc:
        raise SpecError(f"cannot read the JSON5: {exc}", file=source) from None
    duplicate = _json5_duplicate_key(text)
    if duplicate:
        try:  # the YAML reader names the entry and field too, when it can read the text
            safe_yaml.compose(_blank_comments(text))
        except safe_yaml.LimitError as located:
            raise _limit_error(located, source) from None
        except Exception:  # noqa: BLE001 - only a better message was at stake
            pass
        key, first, again = duplicate
        raise SpecError(f"duplicate key {short_repr(key)} (first at line {first}, again at line {again})",
                        file=source, line=again) from None
    if _LONG_NUMBER.search(text):
        _check_integers(data, source)
    _check_depth(data, source)
    return data


def _json5_error_line(text: str, exc: Exception) -> int | None:
    match = _JSON5_NEAR.search(str(exc.args[0]) if exc.args else "")
    return text.count("\n", 0, int(match[1])) + 1 if match else None


def _json5_duplicate_key(text: str) -> tuple[str, int, int] | None:
    """The first key written twice in one object of a valid JSON5 text: (key, first line, second line)."""
    import pyjson5  # noqa: PLC0415

    stack: list[dict[str, int] | None] = []  # per open container: an object's keys (-> offset), None for a list
    pending: re.Match[str] | None = None
    for token in _JSON5_TOKENS.finditer(text):
        first = token[0][0]
        if first == "/" and token[0][:2] in ("//", "/*"):
            continue
        if first in "{[":
            stack.append({} if first == "{" else None)
            pending = None
        elif first in "}]":
            if stack:
                stack.pop()
            pending = None
        elif first == ":":
            keys = stack[-1] if stack else None
            if pending is not None and keys is not None:
                key = pending[0]
                if key[0] in "\"'":
                    key = pyjson5.decode(key if key[0] == '"' else f"[{key}]")
                    key = key[0] if isinstance(key, list) else key
                if key in keys:
                    return key, text.count("\n", 0, keys[key]) + 1, text.count("\n", 0, pending.start()) + 1
                keys[key] = pending.start()
            pending = None
        elif first == ",":
            pending = None
        else:
            pending = token
    return None


def _check_integers(data: Any, source: str) -> None:
    """No integer longer than ``MAX_INTEGER_DIGITS`` digits (JSON5 numbers are not parsed by our hook)."""
    stack = [data]
    most = 10 ** MAX_INTEGER_DIGITS
    while stack:
        value = stack.pop()
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= most:
            raise SpecError(f"an integer of more than {MAX_INTEGER_DIGITS:,} digits is too long", file=source)
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)


def _blank_comments(text: str) -> str:
    """JSON5 text with its comments replaced by spaces (newlines kept), so the YAML composer can
    find the line of each value. Strict JSON comes back unchanged."""
    if "/" not in text:
        return text

    def blank(match: re.Match[str]) -> str:
        token = match[0]
        if token.startswith(("//", "/*")):
            return re.sub(r"[^\n]", " ", token)
        return token

    return _JSON5_TOKENS.sub(blank, text)


def _compose_quietly(text: str) -> Any:
    """The YAML node tree of a JSON text (for line numbers only), or None."""
    try:
        return safe_yaml.compose(text)
    except Exception:  # noqa: BLE001 - JSON YAML cannot read (rare) just has no line numbers
        return None


def _check_depth(data: Any, source: str) -> None:
    """JSON's nesting and size, as the YAML reader checks them (``MAX_NESTING``, ``MAX_VALUES``)."""
    stack = [(data, 1)]
    values = 1
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        values += len(children)
        if values > MAX_VALUES:
            raise SpecError(f"the spec holds more than {MAX_VALUES:,} values", file=source)
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > MAX_NESTING:
                    raise SpecError(f"the spec is nested more than {MAX_NESTING} levels deep", file=source)
                stack.append((child, depth + 1))


def _check_strings(data: Any, source: str, lines: Callable[[], Any]) -> None:
    """No NUL character and no lone surrogate in any key or string (aliases are visited once)."""
    seen: set[int] = set()
    stack: list[tuple[Any, tuple[Any, ...]]] = [(data, ())]
    while stack:
        value, loc = stack.pop()
        if isinstance(value, str):
            bad = _BAD_CHARACTER.search(value)
            if bad:
                job, field = describe_location(loc, data)
                raise SpecError(f"the value contains {_describe_character(bad[0])}", file=source, job=job,
                                field=field, line=_line_of(lines(), loc))
            continue
        if not isinstance(value, (dict, list)) or id(value) in seen:
            continue
        seen.add(id(value))
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, child in items:
            if isinstance(key, str):
                stack.append((key, loc))
            stack.append((child, (*loc, key)))


def _describe_character(character: str) -> str:
    if character == "\x00":
        return "a NUL character ('\\0'), which no command, name or path can hold"
    return f"an unpaired surrogate ('\\u{ord(character):04x}'), which is not valid Unicode"


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
        type(value), type(value).__name__)


# -- OSMO workflows (spec.osmo) -------------------------------------------------------------------

# Native fields of a translated job -> the OSMO field they come from (for errors found by the models).
_OSMO_FIELDS = {"command": "command", "env": "environment", "image": "image", "depends_on": "inputs",
                "group": "name", "resource_requirements": "resources"}


def _parse_osmo(data: dict[str, Any], source: str, lines: Callable[[], Any]) -> WorkflowSpec:
    """An OSMO document (``spec.osmo.is_osmo``): translated into a torc spec, then validated as one.
    Errors name the file, the task, the OSMO field and its line (inside a multi-line script, the
    line of the substitution)."""
    try:
        native = osmo.translate(data)
    except osmo.OsmoError as exc:
        raise exc.with_context(file=source, line=_osmo_line(lines(), exc.loc, exc.line_offset)) from None
    except (ValueError, TypeError, RecursionError, ArithmeticError) as exc:  # a translation bug, not a traceback
        raise SpecError(f"cannot read the OSMO workflow: {exc}", file=source) from None
    tasks = osmo.task_locations(data)
    try:
        spec = WorkflowSpec.model_validate(native)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        if len(message) > _MAX_MESSAGE:
            message = message[: _MAX_MESSAGE - 20] + " … (message cut)"
        where: tuple[Any, ...] = ()
        task = field = None
        if len(loc) >= 2 and loc[0] == "jobs" and isinstance(loc[1], int) and loc[1] < len(tasks):
            where, task = tasks[loc[1]], native["jobs"][loc[1]]["name"]
            field = _OSMO_FIELDS.get(str(loc[2]), str(loc[2])) if len(loc) > 2 else None
            if field == "command" and "args" in _get(data, where):
                field = "command/args"
        elif loc[:1] == ("resource_requirements",):
            where, field = ("workflow", "resources"), "workflow.resources"
        else:
            field = ".".join(map(str, loc)) or None
        raise osmo.OsmoError(message, file=source, task=task, field=field,
                             line=_osmo_line(lines(), where, None) if where else None) from None
    except (ValueError, TypeError, RecursionError, ArithmeticError) as exc:  # a validator's own bug
        raise SpecError(f"cannot validate the spec: {exc}", file=source) from None
    spec._lines = SourceLines(lambda: tuple(_osmo_line(lines(), loc, None) for loc in tasks))
    return spec


def _get(data: Any, loc: tuple[Any, ...]) -> Any:
    for part in loc:
        data = data[part]
    return data


def _osmo_line(root: Any, loc: tuple[Any, ...], offset: int | None) -> int | None:
    """The line of the value at ``loc``; ``offset`` lines further into a literal block (``|``)."""
    node, line, key_line = root, None, None
    for part in loc:
        if node is None:
            break
        line, key_line = node.start_mark.line + 1, None
        if isinstance(node, yaml.MappingNode):
            pair = next(((key, value) for key, value in node.value if key.value == str(part)), None)
            if pair is None:
                return line
            key_line, node = pair[0].start_mark.line + 1, pair[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            node = None
    if node is None:
        return line
    if offset is not None and isinstance(node, yaml.ScalarNode) and node.style == "|":
        return node.start_mark.line + 2 + offset  # the text starts on the line after the '|'
    return key_line or node.start_mark.line + 1  # a field: the line of its key


# -- error locations -----------------------------------------------------------------------------

def _job_lines(root: Any) -> tuple[int | None, ...]:
    """The 1-based line where each entry of ``jobs`` starts."""
    if not isinstance(root, yaml.MappingNode):
        return ()
    jobs = next((value for key, value in root.value if key.value == "jobs"), None)
    if not isinstance(jobs, yaml.SequenceNode):
        return ()
    return tuple(node.start_mark.line + 1 for node in jobs.value)


def _limit_error(exc: safe_yaml.LimitError, source: str) -> SpecError:
    job, field = _where(exc.loc, lambda prefix: exc.names.get(prefix))
    return SpecError(exc.message, file=source, job=job, field=field, line=exc.line)


def _spec_error(exc: ValidationError, data: dict[str, Any], root: Any, source: str) -> SpecError:
    first = exc.errors()[0]
    loc = tuple(first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    elif first["type"] == "missing":
        message = "required field is missing"
    if len(message) > _MAX_MESSAGE:
        message = message[: _MAX_MESSAGE - 20] + " … (message cut)"
    more = exc.error_count() - 1
    if more:
        message += f" (and {more} more problem{'s' if more > 1 else ''})"
    job, field = describe_location(loc, data)
    return SpecError(message, file=source, job=job, field=field, line=_line_of(root, loc))


def describe_location(loc: tuple[Any, ...], data: dict[str, Any]) -> tuple[str | None, str | None]:
    """('jobs', 3, 'command') -> ("<name of job 3>", "command"); other sections keep their path."""

    def name_of(prefix: tuple[Any, ...]) -> str | None:
        items = data.get(prefix[0])
        item = items[prefix[1]] if isinstance(items, list) and prefix[1] < len(items) else None
        name = item.get("name") if isinstance(item, dict) else None
        return name if isinstance(name, str) else None

    return _where(loc, name_of)


def _where(loc: tuple[Any, ...], name_of: Callable[[tuple[Any, ...]], str | None]) -> tuple[str | None, str | None]:
    if len(loc) >= 2 and loc[0] in _KINDS and isinstance(loc[1], int):
        name = name_of(loc[:2])
        label = short_text(name) if name else f"#{loc[1] + 1}"
        field = ".".join(str(part) for part in loc[2:]) or None
        if loc[0] == "jobs":
            return label, field
        return None, f"{loc[0]}[{label}]" + (f".{field}" if field else "")
    return None, ".".join(str(part) for part in loc) or None


def _line_of(node: Any, loc: tuple[Any, ...]) -> int | None:
    """Follow ``loc`` through the YAML node tree; the line of the deepest node reached (1-based)."""
    line = None
    for part in loc:
        if node is None:
            break
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            node = next((value for key, value in node.value if key.value == str(part)), None)
            if node is None:  # an unknown key: point at the key itself
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            node = None
    if node is not None:
        line = node.start_mark.line + 1
    return line
