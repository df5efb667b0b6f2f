"""Every limit a spec must stay within, in one place. A spec past any of them gets one SpecError
naming the limit, before anything is written (``torc workflows create --dry-run`` finds them too).

The spec file (``spec.load``):
  - a regular file (not a directory, FIFO, device or socket) of at most ``MAX_SPEC_BYTES`` (64 MiB),
    UTF-8 text without NUL characters;
  - one YAML document (a ``.json`` file is read as JSON) without duplicate keys at any depth;
  - nested at most ``MAX_NESTING`` (100) levels deep, aliases included;
  - at most ``MAX_VALUES`` (10,000,000) values (strings, numbers, lists, mappings…) in all, YAML
    aliases expanded: a "billion laughs" document is refused before it is expanded, and a huge
    flat document before it fills memory (a written-out spec of 500,000 jobs fits);
  - integers of at most ``MAX_INTEGER_DIGITS`` (1000) digits; only the plain YAML types (strings,
    numbers, booleans, null, lists, mappings): no ``!!binary``, ``!!set``, ``!!timestamp`` or custom
    tags. Dates and base-60 numbers stay strings (``i: 1:30`` is a range, as in torc, not 90).

Values (``spec.models``), checked when the spec is loaded:
  - ``num_cpus``, ``num_gpus``, ``num_nodes``, ``nodes``, ``ntasks_per_node``: at most ``MAX_COUNT``
    (1,000,000);
  - ``memory``: at most ``MAX_MEMORY_BYTES`` (1 PiB); ``runtime``, ``walltime`` and the
    ``compute_node_*_seconds`` settings: at most ``MAX_SECONDS`` (3650 days);
  - ``priority``: a signed 64-bit integer (what SQLite stores);
  - ``command`` (with ``invocation_script``) and each ``env`` entry: shorter than
    ``MAX_ARGUMENT_BYTES`` (128 KiB), the most Linux passes to a process as one argument or variable;
  - whole numbers must be written as numbers: ``true``/``yes`` or ``4.0`` are not counts.

Expansion (``compiler``), checked before anything is expanded:
  - one parameter has at most ``MAX_PARAMETER_VALUES`` (10,000,000) values;
  - a workflow has at most ``MAX_JOBS`` (10,000,000) jobs after parameter expansion, and at most as
    many files and as many user_data entries. The count is computed from the parameter sizes
    (product: their product, zip: their common length), so a ``{i: '0:99999', j: '0:99999'}`` sweep
    is refused at once instead of filling memory. Million-job sweeps are fine.
  - the dependency sets built for a workflow hold at most ``MAX_DEPENDENCY_ROWS`` (20,000,000)
    members in all. Jobs with the same prerequisites share one set (1000 jobs waiting on the same
    1000 jobs are 1000 rows), so only jobs whose prerequisites each differ while being large (a
    regex over 100,000 jobs plus a name of their own) come near it;
  - ``depends_on_regexes`` run on RE2 (linear time: no catastrophic backtracking), so they may not use
    backreferences or lookaround, as in torc's own (Rust) regex syntax.
"""

from __future__ import annotations

MAX_SPEC_BYTES = 64 * 2**20
MAX_NESTING = 100
MAX_VALUES = 10_000_000
MAX_INTEGER_DIGITS = 1000

SQLITE_INT_MIN = -(2**63)
SQLITE_INT_MAX = 2**63 - 1
MAX_COUNT = 1_000_000
MAX_MEMORY_BYTES = 2**50
MAX_SECONDS = 3650 * 86400
MAX_ARGUMENT_BYTES = 128 * 2**10

MAX_PARAMETER_VALUES = 10_000_000
MAX_JOBS = 10_000_000
MAX_DEPENDENCY_ROWS = 20_000_000
MAX_ECHO_CHARS = 60


def short_text(text: str, limit: int = MAX_ECHO_CHARS) -> str:
    """``text`` for an error message, cut in the middle past ``limit`` characters: a message about a
    10 MB string quotes its two ends and says how long it is."""
    if len(text) <= limit:
        return text
    keep = max((limit - 5) // 2, 1)
    return f"{text[:keep]} … {text[-keep:]} ({len(text):,} characters)"


def short_repr(value: object, limit: int = MAX_ECHO_CHARS) -> str:
    """``repr(value)`` for an error message, cut like ``short_text`` (a long number is described)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**limit:
        digits = int(abs(value).bit_length() * 0.30103) + 1  # str() refuses numbers past 4300 digits
        return f"<a number of about {digits:,} digits>"
    return short_text(repr(value), limit)
