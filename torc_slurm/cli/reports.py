"""`torc reports results|resources|summary|samples|plot ID`: what ran, where, what it used, and a picture.

Tables fit 80 columns: long values fold at spaces, short words never wrap (rich ``overflow="fold"``,
``no_wrap``); `-f json` has every figure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from torc_slurm.cli.app import App, format_option, pass_app

RESULT_STATUSES = ("completed", "failed", "terminated", "lost", "canceled")


@click.group("reports")
def reports() -> None:
    """Reports on what ran: attempts, nodes, resource use, a summary and a timeline picture."""


@reports.command("results")
@click.argument("workflow_id", metavar="ID", type=int)
@click.option("-s", "--status", type=click.Choice(RESULT_STATUSES), help="Only attempts with this outcome.")
@format_option
@pass_app
def results(app: App, workflow_id: int, status: str | None, fmt: str) -> None:
    """Every attempt of every job: outcome, return code, node, time and peak memory.

    Exits 1 when any attempt shown failed."""
    from torc_slurm.reports.results import results as query

    rows = query(app.db, workflow_id, status=status)
    app.emit(rows, fmt, _results_table)
    if any(r["status"] == "failed" for r in rows):
        raise click.exceptions.Exit(1)


@reports.command("summary")
@click.argument("workflow_id", metavar="ID", type=int)
@format_option
@pass_app
def summary(app: App, workflow_id: int, fmt: str) -> None:
    """One screen: jobs by status, failures by reason and exit code, wall time, CPU- and GPU-hours
    used versus allocated (from the runners' records), and the five longest jobs."""
    from torc_slurm.reports.summary import summary as query

    app.emit(query(app.db, workflow_id), fmt, summary_view)


@reports.command("resources")
@click.argument("workflow_id", metavar="ID", type=int)
@click.option("--apply", "apply_", is_flag=True,
              help="Write the suggested memory, runtime and CPUs to the jobs of each requirement that have "
                   "not run yet (uninitialized, blocked, ready), in one transaction.")
@click.option("--include-failed", is_flag=True,
              help="With --apply: also resize failed, canceled and terminated jobs (those a reset runs again).")
@click.option("-r", "--requirement", "names", multiple=True, metavar="NAME",
              help="With --apply: only these resource_requirements names (repeatable).")
@click.option("--dry-run", is_flag=True, help="With --apply: show what would change, write nothing.")
@format_option
@pass_app
def resources(app: App, workflow_id: int, apply_: bool, include_failed: bool, names: tuple[str, ...],
              dry_run: bool, fmt: str) -> None:
    """Requested versus used, per resource_requirements: flags overuse (peak memory or run time over
    the request, oom, timeouts) and waste (under 25 % used), and suggests values.

    \b
    Suggestions (for flagged resources only):
      memory   peak x 1.2, rounded up to 64 MiB (<1 GiB), 256 MiB (<16 GiB), else 1 GiB
      runtime  longest x 1.5, rounded up to whole minutes
      CPUs     peak CPU use in cores, rounded up
    """
    from torc_slurm.reports.resources import apply_suggestions, resource_report

    if (include_failed or names or dry_run) and not apply_:
        app.abort("--include-failed, --requirement and --dry-run go with --apply", code=2)
    report = resource_report(app.db, workflow_id)
    if not apply_:
        app.emit(report, fmt, resources_view)
        return
    applied = apply_suggestions(app.db, workflow_id, names=list(names) or None, include_failed=include_failed,
                                dry_run=dry_run, report=report)
    if fmt == "json":
        app.emit({"report": report, "applied": applied}, fmt, resources_view)
        return
    app.console.print(resources_view(report))
    app.console.print(applied_view(applied))


@reports.command("plot")
@click.argument("workflow_id", metavar="ID", type=int)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="FILE.html (interactive, self-contained, plotly) or FILE.png (matplotlib).")
@pass_app
def plot(app: App, workflow_id: int, output: Path) -> None:
    """A timeline of the attempts per node and runner, coloured by outcome, above the nodes' CPU,
    memory and GPU use on the same time axis. Needs the plot extra: pip install 'torc-slurm[plot]'."""
    from torc_slurm.reports.plot import write_plot

    kind = output.suffix.lower()
    if kind not in (".html", ".png"):
        app.abort(f"{output}: the output must end in .html or .png", code=2)
    done = write_plot(app.db, workflow_id, output)
    app.note(f"Wrote {output} ({done.attempts} attempt(s) on {done.runners} runner(s); {done.usage_note})")


@reports.command("samples")
@click.argument("workflow_id", metavar="ID", type=int)
@click.argument("job", metavar="[JOB]", required=False)
@click.option("--attempt", type=click.IntRange(min=1), default=None, metavar="N", help="Only this attempt.")
@format_option
@pass_app
def samples(app: App, workflow_id: int, job: str | None, attempt: int | None, fmt: str) -> None:
    """The CPU and memory samples of each job attempt, kept when the spec's resource_monitor has
    granularity: time_series.

    Without JOB: one line per sampled attempt (rows, span, mean and peak CPU, peak memory). With
    JOB (a name or an id): every row of its attempts. CPU is summed over the job's processes (100 %
    = one core); memory is their summed RSS. A long attempt keeps at most 1000 rows, evenly spaced."""
    from torc_slurm.reports.samples import samples_report

    app.emit(samples_report(app.db, workflow_id, job, attempt), fmt, samples_view)


# -- views (80 columns) ----------------------------------------------------------------------------
def _table(title: str | None = None, **kwargs: Any):
    from rich import box
    from rich.table import Table

    return Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, **kwargs)


def _para(text: str, style: str = "dim"):
    """A paragraph that wraps at words to the console's width (the app's console soft-wraps plain text)."""
    from rich.table import Table

    grid = Table.grid()
    grid.add_column(overflow="fold")
    grid.add_row(text, style=style)
    return grid


def _code(row: dict[str, Any]) -> str:
    if row.get("signal") is not None:
        return f"sig {row['signal']}"
    return "-" if row.get("return_code") is None else str(row["return_code"])


def _results_table(rows):
    from torc_slurm.reports import human_seconds

    table = _table("Attempts")
    table.add_column("job", overflow="fold")
    table.add_column("try", no_wrap=True, justify="right")
    table.add_column("status", no_wrap=True)
    table.add_column("rc", no_wrap=True)
    table.add_column("node", overflow="fold")
    table.add_column("exec", no_wrap=True, justify="right")
    table.add_column("peak mem", no_wrap=True, justify="right")
    table.add_column("why", overflow="fold")
    for r in rows:
        reason, message = r.get("reason"), r["message"]
        why = message if reason and message and reason in message else "; ".join(filter(None, [reason, message]))
        table.add_row(r["job"], str(r["attempt"]), r["status"], _code(r), r["node"] or "-", human_seconds(r["exec_s"]),
                      _peak_memory(r), why or "")
    if any(r["peak_memory_bytes"] is None and r["peak_rss_bytes"] is None for r in rows):
        from rich.console import Group

        return Group(table, _para(NOT_SAMPLED))
    return table


def _peak_memory(row: dict[str, Any]) -> str:
    """An attempt's peak memory; '-' (never 0) when the runner measured none, which a note under
    the table explains (`NOT_SAMPLED`)."""
    from torc_slurm.reports import human_bytes

    peak = row["peak_memory_bytes"] or row["peak_rss_bytes"]
    return "-" if peak is None else human_bytes(peak)


NOT_SAMPLED = ("peak mem -: not sampled (the spec's resource_monitor has enabled: false, or the attempt "
               "ended before the sampler saw it)")


def hours(value: float | None) -> str:
    """Resource-hours: '1,234 h', '2.5 h'; under an hour as time ('12m', '3.3s')."""
    from torc_slurm.reports import human_seconds

    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f} h"
    if value >= 1:
        return f"{value:.1f} h"
    return human_seconds(value * 3600)


def _share(part: float | None, percent: float | None) -> str:
    if part is None:
        return "-"
    return hours(part) + ("" if percent is None else f" ({percent:.0f}%)")


def summary_view(data: dict[str, Any]):
    from rich.console import Group
    from rich.text import Text

    from torc_slurm.reports import human_seconds

    wall = data["wall"]
    state = "running" if wall["running"] else "not started" if wall["seconds"] is None else "finished"
    head = Text(f"Workflow {data['workflow_id']} {data['name']}: {data['jobs_total']:,} jobs, wall time "
                f"{human_seconds(wall['seconds'])} ({state})", style="bold")
    facts = _table(show_header=False, show_edge=False)
    facts.add_column(no_wrap=True, style="bold")
    facts.add_column(overflow="fold")
    facts.add_row("jobs", ", ".join(f"{n:,} {s}" for s, n in data["jobs_by_status"].items()) or "none")
    failures = data["failures"]
    facts.add_row("not completed", ", ".join(
        f"{f['attempts']:,} {f['status']}" + (f" ({f['reason']})" if f["reason"] != f["status"] else "")
        for f in failures["by_reason"]) or "none")
    if failures["by_exit_code"]:
        facts.add_row("exit codes", ", ".join(
            f"{'signal ' + str(c['signal']) if c['signal'] is not None else 'rc ' + str(c['return_code'])}: "
            f"{c['attempts']:,}" for c in failures["by_exit_code"]))
    alloc = data["allocation"]
    use = _table(f"Allocation use ({alloc['runners']} runner(s), {alloc['live_runners']} live)")
    use.add_column("resource-hours", no_wrap=True)
    use.add_column("allocated", no_wrap=True, justify="right")
    use.add_column("held by jobs", overflow="fold", justify="right")
    use.add_column("used", overflow="fold", justify="right")
    cpu, gpu = alloc["cpu"], alloc["gpu"]
    use.add_row("CPU", hours(cpu["allocated_hours"]), _share(cpu["held_hours"], cpu["held_percent"]),
                _share(cpu["used_hours"], cpu["used_percent"]))
    if gpu["allocated_hours"] or gpu["held_hours"]:
        use.add_row("GPU", hours(gpu["allocated_hours"]), _share(gpu["held_hours"], gpu["held_percent"]),
                    _share(gpu["used_hours"], gpu["used_percent"]) if alloc["gpu_sampled"] else "not sampled")
    longest = _table("Longest jobs")
    longest.add_column("job", overflow="fold")
    longest.add_column("try", no_wrap=True, justify="right")
    longest.add_column("status", no_wrap=True)
    longest.add_column("exec", no_wrap=True, justify="right")
    longest.add_column("node", overflow="fold")
    for j in data["longest"]:
        longest.add_row(j["job"], str(j["attempt"]), j["status"], human_seconds(j["exec_s"]), j["node"] or "-")
    parts: list[Any] = [head, facts, use]
    if alloc["gpu_sampled"]:
        parts.append(_para("CPU used: the jobs' CPU time. GPU used: the sampled utilisation of the runners' GPUs, "
                           "whoever used them."))
    if data["longest"]:
        parts.append(longest)
    return Group(*parts)


def resources_view(report: dict[str, Any]):
    from rich.console import Group
    from rich.text import Text

    from torc_slurm.reports import human_bytes, human_seconds

    def pct(part: float | None, whole: float | None) -> str:
        return f" ({part / whole:.0%})" if part is not None and whole else ""

    rows = report["requirements"]
    table = _table(f"Requested versus used, workflow {report['workflow_id']}")
    table.add_column("requirements", overflow="fold")
    table.add_column("jobs", overflow="fold", justify="right")
    table.add_column("memory", overflow="fold")
    table.add_column("runtime", overflow="fold")
    table.add_column("CPUs", overflow="fold")
    table.add_column("GPU", overflow="fold")
    for r in rows:
        asked = {k: "asked up to" if k in r["mixed"] else "asked" for k in ("memory_bytes", "runtime_s", "num_cpus")}
        memory = f"{asked['memory_bytes']} {human_bytes(r['memory_bytes'])}"
        if r["peak_memory_bytes"] is not None:
            memory += f"\npeak {human_bytes(r['peak_memory_bytes'])}{pct(r['peak_memory_bytes'], r['memory_bytes'])}"
        elif r["attempts"]:
            memory += "\npeak not sampled"
        runtime = f"{asked['runtime_s']} {human_seconds(r['runtime_s'])}"
        if r["longest_s"] is not None:
            runtime += f"\nlongest {human_seconds(r['longest_s'])}{pct(r['longest_s'], r['runtime_s'])}"
        cpus = f"{asked['num_cpus']} {r['num_cpus']}"
        if r["peak_cpu_percent"] is not None:
            cpus += f"\npeak {r['peak_cpu_percent']:.0f}%"
        elif r["attempts"]:
            cpus += "\npeak not sampled"
        if r["gpu_sampled"]:
            gpu = (f"{r['num_gpus']} asked\nmean {r['avg_gpu_percent']:.0f}%\n"
                   f"peak {human_bytes(r['peak_gpu_memory_bytes'])}")
        else:
            gpu = "not sampled" if r["gpu_note"] else (f"{r['num_gpus']} asked" if r["num_gpus"] else "-")
        jobs = f"{r['jobs']:,}\n{r['completed']:,} done" if r["attempts"] else f"{r['jobs']:,}\nno runs yet"
        table.add_row(r["name"], jobs, memory, runtime, cpus, gpu)
    flags = _table("Flags and suggestions")
    flags.add_column("requirements", overflow="fold")
    flags.add_column("flag", no_wrap=True)
    flags.add_column("detail", overflow="fold")
    flags.add_column("suggest", overflow="fold")
    for r in rows:
        suggested = r["suggested"]
        for f in r["flags"]:
            key = {"memory": "memory_bytes", "runtime": "runtime_s", "cpus": "num_cpus"}.get(f["resource"])
            value = suggested.get(key) if key else None
            text = ("-" if value is None else human_bytes(value) if key == "memory_bytes"
                    else _runtime_text(value) if key == "runtime_s" else f"{value} CPUs")
            style = "red" if f["kind"] == "overuse" else "yellow"
            flags.add_row(r["name"], Text(f"{f['kind']} {f['resource']}", style=style), f["message"], text)
    parts: list[Any] = [table]
    if flags.row_count:
        parts.append(flags)
        waiting = sum(r["not_run"] for r in rows if r["suggested"])
        parts.append(_para(f"Rules: memory {report['rules']['memory']}; runtime {report['rules']['runtime']}; "
                           f"CPUs {report['rules']['cpus']}. `--apply` writes them to the {waiting:,} job(s) "
                           "of those requirements that have not run yet."))
    elif rows and any(r["attempts"] for r in rows):
        parts.append(_para("No overuse or waste found.", style="green"))
    elif rows:
        parts.append(_para("No attempt has finished yet: nothing to compare the requests with."))
    notes = sorted({r["gpu_note"] for r in rows if r["gpu_note"]})
    parts += [_para(n) for n in notes]
    return Group(*parts)


def _runtime_text(seconds: int) -> str:
    from torc_slurm.reports import human_seconds

    return f"{human_seconds(seconds)} (PT{seconds // 60}M)" if seconds % 60 == 0 else human_seconds(seconds)


def applied_view(applied: dict[str, Any]):
    from rich.console import Group
    from rich.text import Text

    from torc_slurm.reports import human_bytes

    verb = "Would change" if applied["dry_run"] else "Changed"
    table = _table(f"{verb} {applied['jobs']:,} job(s) ({', '.join(applied['statuses'])})")
    table.add_column("requirements", overflow="fold")
    table.add_column("jobs", no_wrap=True, justify="right")
    table.add_column("memory", no_wrap=True)
    table.add_column("runtime", no_wrap=True)
    table.add_column("CPUs", no_wrap=True)
    for c in applied["changes"]:
        table.add_row(c["name"], f"{c['jobs']:,}", "-" if c["memory_bytes"] is None else human_bytes(c["memory_bytes"]),
                      "-" if c["runtime_s"] is None else _runtime_text(c["runtime_s"]),
                      "-" if c["num_cpus"] is None else str(c["num_cpus"]))
    if not applied["changes"]:
        return Text("Nothing to apply: no suggestions.")
    return Group(table, _para("Dry run: nothing written." if applied["dry_run"] else
                              "Recorded as a resources_applied event."))


def _cpu(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def samples_view(data: dict[str, Any]):
    from rich.console import Group

    from torc_slurm.reports import human_bytes, human_seconds

    parts: list[Any] = []
    if data["job"] is None and data["attempts"]:
        table = _table(f"Sampled attempts, workflow {data['workflow_id']}")
        table.add_column("job", overflow="fold")
        table.add_column("try", no_wrap=True, justify="right")
        table.add_column("rows", no_wrap=True, justify="right")
        table.add_column("span", no_wrap=True, justify="right")
        table.add_column("CPU mean", no_wrap=True, justify="right")
        table.add_column("CPU peak", no_wrap=True, justify="right")
        table.add_column("mem peak", no_wrap=True, justify="right")
        for a in data["attempts"]:
            table.add_row(a["job"], str(a["attempt"]), f"{a['samples']:,}", human_seconds(a["span_s"]),
                          _cpu(a["avg_cpu_percent"]), _cpu(a["peak_cpu_percent"]), human_bytes(a["peak_memory_bytes"]))
        parts.append(table)
    for a in data["attempts"] if data["job"] is not None else []:
        gpu = any(r["gpu_percent"] is not None for r in a["rows"])
        table = _table(f"{a['job']} attempt {a['attempt']}: {a['samples']:,} samples over "
                       f"{human_seconds(a['span_s'])}, peak {human_bytes(a['peak_memory_bytes'])}")
        table.add_column("t", no_wrap=True, justify="right")
        table.add_column("CPU", no_wrap=True, justify="right")
        table.add_column("memory", no_wrap=True, justify="right")
        table.add_column("procs", no_wrap=True, justify="right")
        if gpu:
            table.add_column("GPU", no_wrap=True, justify="right")
            table.add_column("GPU mem", no_wrap=True, justify="right")
        for r in a["rows"]:
            cells = [f"{r['t']:.1f}s", _cpu(r["cpu_percent"]), human_bytes(r["memory_bytes"]),
                     "-" if r["num_processes"] is None else str(r["num_processes"])]
            if gpu:
                cells += [_cpu(r["gpu_percent"]), human_bytes(r["gpu_memory_bytes"])]
            table.add_row(*cells)
        parts.append(table)
    if data["note"]:
        parts.append(_para(data["note"]))
    return Group(*parts)
