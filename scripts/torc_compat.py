#!/usr/bin/env python3
"""Which torc workflow specs torc_slurm accepts: no network, no queue file, nothing written.

    python scripts/torc_compat.py FOLDER [--no-render] [--verbose]

Walks FOLDER (for example a clone of torc's ``examples/``) for ``.yaml``, ``.yml``, ``.json``,
``.json5`` and ``.kdl`` files and runs each as ``torc workflows create --dry-run`` does: load, validate,
compile. Unless ``--no-render``, it also renders the sbatch script of each ``slurm_schedulers`` entry
(with the shipped ``generic`` site config), which is where ``extra`` and ``slurm_defaults`` are checked.

Each file is one of:
- accepted: it compiles (and its schedulers render);
- refused:  torc_slurm says why (a spec error or an sbatch error, with file, job, field and line);
- failed:   anything else (an unexpected exception: a bug in torc_slurm, shown with its traceback).

Prints one line per file, then the counts and the refusals grouped by reason. Exit status: 1 when any
file failed, 0 otherwise (refusals are answers, not failures); 2 when FOLDER is not a folder.
"""

from __future__ import annotations

import argparse
import re
import sys
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

SUFFIXES = (".yaml", ".yml", ".json", ".json5", ".kdl")


@dataclass(frozen=True)
class Outcome:
    path: Path
    verdict: str  # "accepted" | "refused" | "failed"
    detail: str   # jobs compiled, the reason refused, or the traceback


def check_spec(path: Path, render: bool = True) -> Outcome:
    """One spec through the dry-run path (and its schedulers through sbatch rendering)."""
    from torc_slurm.compiler import compile_workflow
    from torc_slurm.errors import TorcError
    from torc_slurm.spec.load import load_spec

    try:
        compiled = compile_workflow(load_spec(path), source=str(path))
        if render:
            _render_schedulers(compiled.spec)
    except TorcError as exc:
        return Outcome(path, "refused", str(exc))
    except Exception:  # noqa: BLE001 - the point is to report it
        return Outcome(path, "failed", traceback.format_exc())
    counts = compiled.counts()
    return Outcome(path, "accepted", f"{counts['jobs']:,} jobs, {counts['files']:,} files")


def _render_schedulers(spec) -> None:  # noqa: ANN001 - a WorkflowSpec
    from torc_slurm.errors import TorcError
    from torc_slurm.slurm.render import render_sbatch
    from torc_slurm.slurm.sites import load_site

    site = load_site("generic")
    for scheduler in spec.slurm_schedulers:
        try:
            render_sbatch(scheduler=scheduler, site=site, slurm_defaults=spec.slurm_defaults,
                          job_name=f"{spec.name[:40]}-compat", output_dir=Path("/tmp/torc-compat"),
                          runner_argv=["torc-slurm-job-runner"],
                          signal_buffer_seconds=min(60, scheduler.walltime_seconds - 1),
                          account_fallback="compat")
        except TorcError as exc:
            raise type(exc)(f"sbatch script of scheduler {scheduler.name!r}: {exc}") from None


def find_specs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())


def reason_of(detail: str) -> str:
    """A refusal's reason without its location (file, line, job), to group equal reasons."""
    message = detail.split(": ", 1)[1] if ": " in detail else detail
    return re.sub(r"'[^']*'", "'…'", message)[:160]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--no-render", action="store_true", help="do not render the schedulers' sbatch scripts")
    parser.add_argument("-v", "--verbose", action="store_true", help="print the traceback of each failure")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        print(f"{args.folder}: not a folder", file=sys.stderr)
        return 2
    outcomes = [check_spec(path, render=not args.no_render) for path in find_specs(args.folder)]
    for outcome in outcomes:
        shown = outcome.path.relative_to(args.folder)
        detail = outcome.detail
        if outcome.verdict == "failed" and not args.verbose:
            detail = detail.strip().splitlines()[-1]
        elif outcome.verdict == "refused":
            detail = detail.replace(str(outcome.path), str(shown), 1)
        print(f"{outcome.verdict:8}  {shown}  {detail.strip()}")
    counts = Counter(o.verdict for o in outcomes)
    print(f"\n{len(outcomes)} specs: {counts['accepted']} accepted, {counts['refused']} refused, "
          f"{counts['failed']} failed")
    reasons = Counter(reason_of(o.detail) for o in outcomes if o.verdict == "refused")
    for reason, count in reasons.most_common():
        print(f"  refused x{count}: {reason}")
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
