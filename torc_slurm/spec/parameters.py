"""Parameter values and their expansion (pure).

A parameter is a list of values written as an inclusive range (``"0:999"``, ``"0:100:10"``,
``"0.0:1.0:0.25"``), a list (``"[1,5,10]"``, ``"['adam','sgd']"``, ``"[a,b]"``), a YAML list, or one
scalar. ``product`` crosses a mapping of parameters, ``zip`` pairs them.

Templates use Python format specs (``{i}``, ``{i:03d}``, ``{lr:.4f}``). Only placeholders that name a
known parameter are substituted; any other brace (``${HOME}``, ``awk '{print $1}'``) is left alone,
so shell commands need no escaping.

Ranges are lazy sequences (``range``, ``FloatRange``): their length is known without building them,
so the compiler counts a workflow's jobs before expanding anything (limits in ``spec.limits``). One
parameter has at most ``MAX_VALUES`` values.
"""

from __future__ import annotations

import ast
import itertools
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from decimal import DecimalException
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, overload

from torc_slurm.spec.limits import MAX_PARAMETER_VALUES, short_repr

Value = int | float | str

_INT_RANGE = re.compile(r"^\s*(-?\d+)\s*:\s*(-?\d+)\s*(?::\s*(-?\d+)\s*)?$")
_NUMBER = r"-?(?:\d+\.?\d*|\.\d+)(?:[eE]-?\d+)?"
_FLOAT_RANGE = re.compile(rf"^\s*({_NUMBER})\s*:\s*({_NUMBER})\s*(?::\s*({_NUMBER})\s*)?$")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(![rsa])?(?::([^{}]*))?\}")
MAX_VALUES = MAX_PARAMETER_VALUES
_MAX_RANGE_TEXT = 200  # 'start:end:step' longer than this is no range anyone writes


class FloatRange(Sequence[float]):
    """The values of 'start:end:step' with decimal steps, computed on demand with Decimal arithmetic on
    the written numbers ("0.1:0.3:0.1" has exactly 3 values and ends at 0.3)."""

    __slots__ = ("start", "step", "count")

    def __init__(self, start: Decimal, step: Decimal, count: int) -> None:
        self.start, self.step, self.count = start, step, count

    def __len__(self) -> int:
        return self.count

    @overload
    def __getitem__(self, index: int) -> float: ...
    @overload
    def __getitem__(self, index: slice) -> list[float]: ...
    def __getitem__(self, index: int | slice) -> float | list[float]:
        if isinstance(index, slice):
            return [self[k] for k in range(*index.indices(self.count))]
        if index < 0:
            index += self.count
        if not 0 <= index < self.count:
            raise IndexError("FloatRange index out of range")
        return float(self.start + index * self.step)

    def __iter__(self) -> Iterator[float]:
        start, step = self.start, self.step
        return (float(start + k * step) for k in range(self.count))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and len(other) == self.count and all(a == b for a, b in zip(self, other))

    def __repr__(self) -> str:
        return f"FloatRange({self.start}, step {self.step}, {self.count} values)"


def parse_values(raw: Any) -> Sequence[Value]:
    """One parameter's spec value -> its values (a list, or a lazy ``range``/``FloatRange`` for a
    range). Raises ValueError with a readable reason."""
    if isinstance(raw, bool):
        raise ValueError(f"a parameter cannot be a boolean ({raw!r})")
    if isinstance(raw, (int, float)):
        return [_scalar(raw)]
    if isinstance(raw, list):
        if not raw:
            raise ValueError("a parameter list must not be empty")
        if len(raw) > MAX_VALUES:
            raise ValueError(f"a parameter list has more than {MAX_VALUES:,} values")
        return [_scalar(item) for item in raw]
    if not isinstance(raw, str):
        raise ValueError(f"unsupported parameter value {short_repr(raw)}")
    text = raw.strip()
    try:
        if text.startswith("["):
            return _parse_list(text)
        if ":" in text:
            return _parse_range(text)
    except (ArithmeticError, DecimalException, RecursionError, MemoryError):
        raise ValueError(f"cannot read the parameter {short_repr(text)}") from None
    return [_coerce(text)]


def _scalar(item: Any) -> Value:
    if isinstance(item, bool) or not isinstance(item, (int, float, str)):
        raise ValueError(f"parameter list items must be numbers or strings, not {short_repr(item)}")
    if isinstance(item, float) and not math.isfinite(item):
        raise ValueError(f"a parameter value must be a finite number, not {item!r}")
    return item


def _coerce(text: str) -> Value:
    try:
        return int(text)
    except ValueError:  # not an integer (or one of more than 4300 digits)
        pass
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else text  # 'inf', 'nan' and '1e999' stay words


def _parse_list(text: str) -> list[Value]:
    if not text.endswith("]"):
        raise ValueError(f"unterminated list {short_repr(text)}")
    try:
        parsed = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):  # torc also accepts bare words
        inner = text[1:-1].strip()
        parsed = [_coerce(part.strip().strip("'\"")) for part in inner.split(",")] if inner else []
    if not isinstance(parsed, list) or not parsed:
        raise ValueError(f"a parameter list must be a non-empty list: {short_repr(text)}")
    if len(parsed) > MAX_VALUES:
        raise ValueError(f"a parameter list has more than {MAX_VALUES:,} values")
    return [_scalar(item) for item in parsed]


def _parse_range(text: str) -> Sequence[Value]:
    if len(text) > _MAX_RANGE_TEXT:
        raise ValueError(f"invalid range {short_repr(text)}: use 'start:end' or 'start:end:step'")
    match = _INT_RANGE.match(text)
    if match:
        start, stop, step = int(match[1]), int(match[2]), int(match[3] or 1)
        if step <= 0:
            raise ValueError(f"range {text!r}: the step must be positive")
        if stop < start:
            raise ValueError(f"range {text!r} is empty: the end is below the start")
        if (stop - start) // step + 1 > MAX_VALUES:
            raise ValueError(f"range {text!r} has more than {MAX_VALUES:,} values")
        return range(start, stop + 1, step)
    match = _FLOAT_RANGE.match(text)
    if not match:
        raise ValueError(f"invalid range {text!r}: use 'start:end' or 'start:end:step'")
    # Decimal arithmetic on the written numbers: "0.1:0.3:0.1" has exactly 3 values and ends at 0.3.
    start, stop = Decimal(match[1]), Decimal(match[2])
    step = Decimal(match[3]) if match[3] else Decimal(1)
    if step <= 0 or not all(math.isfinite(float(x)) for x in (start, stop, step)):
        raise ValueError(f"range {text!r}: the step must be a positive number")
    if stop < start:
        raise ValueError(f"range {text!r} is empty: the end is below the start")
    if (stop - start) / step >= MAX_VALUES:
        raise ValueError(f"range {text!r} has more than {MAX_VALUES:,} values")
    return FloatRange(start, step, int((stop - start) / step) + 1)


def count_combinations(parameters: Mapping[str, Sequence[Value]], mode: str) -> int:
    """How many assignments ``combinations`` yields, computed from the lengths alone: the product of
    the lengths, or for 'zip' their common length (unequal lengths are a ValueError)."""
    lengths = {name: len(values) for name, values in parameters.items()}
    if mode == "zip" and lengths:
        if len(set(lengths.values())) > 1:
            detail = ", ".join(f"{name}: {count}" for name, count in lengths.items())
            raise ValueError(f"parameter_mode 'zip' needs parameters of equal length ({detail})")
        return next(iter(lengths.values()))
    return math.prod(lengths.values())


def combinations(parameters: Mapping[str, Sequence[Value]], mode: str) -> Iterator[dict[str, Value]]:
    """All assignments of the parameters: the cross product (last varies fastest) or the zip."""
    names = list(parameters)
    if not names:
        yield {}
        return
    columns = [parameters[name] for name in names]
    if mode == "zip":
        count_combinations(parameters, mode)  # equal lengths
        rows: Iterator[tuple[Value, ...]] = zip(*columns)
    else:
        rows = itertools.product(*columns)
    for row in rows:
        yield dict(zip(names, row))


@dataclass(frozen=True)
class Template:
    """A string split once into literal text and placeholders, rendered many times cheaply.

    ``fmt`` is the same template as a ``str.format`` string (literal braces doubled), so rendering
    is one C call; the part-by-part path only runs to explain a failure."""

    text: str
    parts: tuple[str | tuple[str, str | None, str], ...]
    fmt: str | None = field(default=None, compare=False, repr=False)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(part[0] for part in self.parts if isinstance(part, tuple))

    def render(self, values: Mapping[str, Value]) -> str:
        if len(self.parts) == 1 and isinstance(self.parts[0], str):
            return self.parts[0]
        if self.fmt is not None:
            try:
                return self.fmt.format_map(values)
            except (ValueError, TypeError):
                pass  # explain it below
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            name, conversion, spec = part
            value: Any = values[name]
            if conversion:
                value = {"r": repr, "s": str, "a": ascii}[conversion[1]](value)
            try:
                out.append(format(value, spec))
            except (ValueError, TypeError) as exc:
                placeholder = "{" + name + (conversion or "") + (f":{spec}" if spec else "") + "}"
                raise ValueError(f"cannot format {value!r} with '{placeholder}': {exc}") from None
        return "".join(out)


def compile_template(text: str, known: frozenset[str] | set[str]) -> Template:
    """Split ``text`` at the placeholders that name one of ``known``."""
    parts: list[str | tuple[str, str | None, str]] = []
    fmt: list[str] = []
    position = 0
    for match in _PLACEHOLDER.finditer(text):
        if match[1] not in known:
            continue
        if match.start() > position:
            parts.append(text[position : match.start()])
            fmt.append(_escape(text[position : match.start()]))
        parts.append((match[1], match[2], match[3] or ""))
        fmt.append(match[0])
        position = match.end()
    if position < len(text) or not parts:
        parts.append(text[position:])
        fmt.append(_escape(text[position:]))
    return Template(text, tuple(parts), "".join(fmt))


def _escape(literal: str) -> str:
    return literal.replace("{", "{{").replace("}", "}}")


def referenced_names(texts: Sequence[str], known: frozenset[str] | set[str]) -> set[str]:
    """Which of ``known`` appear as placeholders in any of ``texts``."""
    found: set[str] = set()
    for text in texts:
        found.update(match[1] for match in _PLACEHOLDER.finditer(text) if match[1] in known)
    return found
