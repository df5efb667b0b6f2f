"""``depends_on_regexes``: compiled by RE2 and matched against job names.

RE2 (the ``google-re2`` package) matches in time linear in the text whatever the pattern, so
``^(a+)+$`` against 'aaaa…a_1' cannot hang ``torc workflows create``, as it does with a backtracking
engine. Its syntax is that of torc's own Rust ``regex`` crate: no backreferences, no lookaround;
such a pattern is refused with RE2's reason. Matching is a search (as ``re.search``): unanchored
unless the pattern anchors itself.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from typing import Any

import re2

from torc_slurm.spec.limits import short_repr

_REGEX_OPTIONS = re2.Options()
_REGEX_OPTIONS.log_errors = False  # RE2 would print its own copy of every error on stderr


def compile_regex(pattern: str) -> Any:
    """``pattern`` compiled by RE2 (linear-time matching) for searching UTF-8 *bytes* (the same
    matches as on the text, without the wrapper's per-call offset decoding); raises ValueError
    saying why it cannot be compiled."""
    try:
        return re2.compile(pattern.encode("utf-8"), _REGEX_OPTIONS)
    except re2.error as exc:
        reason = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise ValueError(f"invalid regular expression {short_repr(pattern)}: {reason} (patterns use RE2/Rust "
                         "regex syntax, which has no backreferences and no lookaround)") from None
    except (TypeError, UnicodeError) as exc:
        raise ValueError(f"invalid regular expression {short_repr(pattern)}: {exc}") from None


_REGEX_META = frozenset("\\.^$*+?()[]{}|")


def literal_prefix(pattern: str) -> str:
    """The text every match of ``pattern`` starts with, when it is anchored and begins literally:
    '^pre_\\d+$' -> 'pre_'. Empty when unsure (no '^', an alternation, a quantified last letter)."""
    if not pattern.startswith("^") or "|" in pattern:
        return ""
    end = 1
    while end < len(pattern) and pattern[end] not in _REGEX_META:
        end += 1
    prefix = pattern[1:end]
    if end < len(pattern) and pattern[end] in "*?{":  # 'ab*': the b is optional
        prefix = prefix[:-1]
    return prefix


class NameIndex:
    """Job names searched by regex. An anchored pattern with a literal prefix ('^pre_{i}$' expanded
    10,000 ways) is only tried on the names with that prefix, found by bisection in the sorted
    names, so distinct per-job patterns do not cost jobs x jobs searches."""

    def __init__(self, positions: Mapping[str, int]) -> None:
        self.positions = positions  # name -> index, in index order
        self.names = list(positions)
        self._sorted: list[str] | None = None
        self._order: list[int] = []

    def matches(self, pattern: str) -> frozenset[int]:
        search = compile_regex(pattern).search
        names = self.names
        prefix = literal_prefix(pattern)
        candidates: Iterable[int]
        if prefix and pattern == f"^{prefix}$":  # '^pre_17$': one name at most
            candidates = [self.positions[prefix]] if prefix in self.positions else []
        else:
            candidates = self._starting_with(prefix) if prefix else range(len(names))
        return frozenset(i for i in candidates if search(names[i].encode("utf-8")))

    def _starting_with(self, prefix: str) -> list[int]:
        if self._sorted is None:
            self._order = sorted(range(len(self.names)), key=self.names.__getitem__)
            self._sorted = [self.names[i] for i in self._order]
        found = []
        position = bisect.bisect_left(self._sorted, prefix)
        while position < len(self._sorted) and self._sorted[position].startswith(prefix):
            found.append(self._order[position])
            position += 1
        return found
