"""The few domain errors. Only the CLI turns them into messages and exit codes."""

from __future__ import annotations


class TorcError(Exception):
    """Base class: a problem the user can act on (no traceback is shown for these)."""

    exit_code = 1


class SpecError(TorcError):
    """A workflow spec is invalid. Names the file, the job, the field and the line when known."""

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        job: str | None = None,
        field: str | None = None,
        line: int | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.job = job
        self.field = field
        self.line = line
        super().__init__(self.describe())

    def describe(self) -> str:
        where = []
        if self.file:
            where.append(f"{self.file}" + (f":{self.line}" if self.line else ""))
        if self.job:
            where.append(f"job '{self.job}'")
        if self.field:
            where.append(f"field '{self.field}'")
        prefix = ", ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message

    def with_context(self, **context: object) -> "SpecError":
        """A copy with missing location fields filled in (the caller knows the file, say)."""
        merged = {k: getattr(self, k) for k in ("file", "job", "field", "line")}
        merged.update({k: v for k, v in context.items() if merged.get(k) is None})
        return SpecError(self.message, **merged)  # type: ignore[arg-type]


class QueueError(TorcError):
    """The SQLite queue refused an operation (not a torc DB, newer schema, unknown workflow …).

    ``retryable`` tells a caller whether waiting and trying again can help (see ``QueueUnavailable``)."""

    retryable = False


class QueueUnavailable(QueueError):
    """The queue cannot be used right now, but may be soon: retry with backoff.

    ``reason`` is one of ``busy`` (another process holds SQLite's own lock without taking torc's),
    ``lock-timeout`` (torc's lock was not free within the wait limit), ``lock-lost`` (a soft lock was
    broken while this process held it), ``disk-full`` (no space, quota or file-size limit) and
    ``io`` (an I/O error). Whatever the reason, the transaction that met it was rolled back.
    Exit status 75 (EX_TEMPFAIL): a script may run the command again later."""

    exit_code = 75
    retryable = True

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class QueueReadOnly(QueueError):
    """The queue file, its folder or its filesystem is not writable (waiting will not help)."""


class QueueCorrupt(QueueError):
    """The file is not an SQLite database, or its pages are damaged."""


class LockKindMismatch(QueueError):
    """A process asked for a lock kind other than the one the queue was created with."""


class SlurmError(TorcError):
    """Slurm is absent, refused a request, or answered something we could not parse."""
