"""`torc reports plot ID --output FILE.html|FILE.png`: a timeline of a workflow's attempts per node
and runner, above the nodes' CPU, memory and GPU use, on one time axis.

- The timeline: one band of lanes per runner (label: host and runner id). Attempts that overlap in
  time on a runner take separate lanes, so every bar is visible. Bars run from an attempt's start to
  its end, coloured by outcome; failures, timeouts, OOM kills, walltime terminations and lost
  attempts have strong colours and an outline, completed ones a quiet green.
- Beneath it: the runners' samples over time (``runner_samples``: CPU % of the runner's CPUs, RSS of
  its jobs, GPU % where a sampler ran), once some runner has `MIN_SAMPLES` of them. With more than `MAX_LINES` runners the panels show them
  together (CPU and GPU as a mean weighted by size, memory summed) in time bins. Without (enough)
  samples, the CPU and memory panels show what the running attempts held (their requests), and the subtitle
  says so.
- Per job (workflows whose resource_monitor has granularity: time_series, `job_samples`): a CPU and a
  memory panel with one line per attempt, placed at the attempt's start on the same time axis (at most
  `MAX_JOB_LINES` attempts: those with the highest peak memory; the subtitle says when some are left
  out). `job_series` shapes them (pure).

HTML comes from plotly (self-contained: plotly.js is inlined, nothing is fetched when it is
opened); PNG from matplotlib's Agg backend. Both are in the ``plot`` extra; without it the command
says how to install it. Reading is paged (short locked reads); at most `MAX_ATTEMPTS` attempts
are drawn (the first ones recorded), and the subtitle says when some were left out.
"""

from __future__ import annotations

import heapq
import os
import textwrap
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from torc_slurm.errors import TorcError
from torc_slurm.reports.summary import runner_end, runner_size
from torc_slurm.store.db import Database
from torc_slurm.store.workflows import get_workflow

MAX_ATTEMPTS = 20_000
MAX_LINES = 8  # runners drawn one line each; more are drawn together
PAGE = 5_000
BINS = 200
MAX_JOB_LINES = 20  # attempts drawn in the per-job panels (the highest peak memory first)
MIN_SAMPLES = 3  # a runner with fewer samples (a short run) does not make a usage curve: derive it
INSTALL_HINT = "reports plot needs the plot extra: pip install 'torc-slurm[plot]'"

# Outcome -> (label, colour, stands out). Order is the legend's.
CATEGORIES: dict[str, tuple[str, str, bool]] = {
    "completed": ("completed", "#7fbf7b", False),
    "failed": ("failed", "#d62728", True),
    "timeout": ("timed out", "#9c27b0", True),
    "oom": ("out of memory", "#8c2d04", True),
    "terminated": ("terminated (walltime)", "#ff7f0e", True),
    "lost": ("lost", "#404040", True),
    "canceled": ("canceled", "#b0b0b0", False),
}


def category(status: str, reason: str | None) -> str:
    """An attempt's colour key: its reason where it is a kind of its own (timeout, oom), else its status."""
    if reason in ("timeout", "oom"):
        return reason
    return status if status in CATEGORIES else "failed"


@dataclass
class Attempt:
    job: str
    attempt: int
    status: str
    reason: str | None
    runner_id: int | None
    start: float
    end: float
    num_cpus: int
    memory_bytes: int
    lane: int = 0
    job_id: int = 0

    @property
    def kind(self) -> str:
        return category(self.status, self.reason)


@dataclass
class Runner:
    id: int
    hostname: str
    start: float
    end: float
    cpus: int
    gpus: int
    lanes: int = 1
    first_row: int = 0

    @property
    def label(self) -> str:
        return f"{self.hostname} · runner {self.id}"


@dataclass
class Series:
    """One line of a usage panel: x in seconds since t0."""

    name: str
    x: list[float] = field(default_factory=list)
    y: list[float] = field(default_factory=list)


@dataclass
class PlotData:
    workflow_id: int
    name: str
    t0: float
    attempts: list[Attempt]
    runners: list[Runner]
    cpu: list[Series]
    memory: list[Series]  # GiB
    gpu: list[Series]
    measured: bool  # from runner_samples (else derived from the attempts)
    notes: list[str]
    job_cpu: list[Series] = field(default_factory=list)     # per attempt, from job_samples (time_series)
    job_memory: list[Series] = field(default_factory=list)  # GiB

    @property
    def rows(self) -> int:
        return sum(r.lanes for r in self.runners)


@dataclass(frozen=True)
class PlotResult:
    attempts: int
    runners: int
    usage_note: str


# -- reading ---------------------------------------------------------------------------------------
def plot_data(db: Database, workflow_id: int, *, now: float | None = None) -> PlotData:
    workflow = get_workflow(db, workflow_id)
    now = time.time() if now is None else now
    attempts: list[Attempt] = []
    after, truncated = -1, False
    while True:
        page = db.read(
            "SELECT x.id, j.name, x.attempt, x.status, x.reason, x.runner_id, x.started_at, x.ended_at, x.exec_s,"
            " j.num_cpus, j.memory_bytes, x.job_id FROM results x JOIN jobs j ON j.id = x.job_id"
            " WHERE x.workflow_id = ? AND x.id > ? AND x.started_at IS NOT NULL ORDER BY x.id LIMIT ?",
            (workflow_id, after, PAGE))
        for r in page:
            end = r["ended_at"] if r["ended_at"] is not None else r["started_at"] + (r["exec_s"] or 0.0)
            attempts.append(Attempt(r["name"], r["attempt"], r["status"], r["reason"], r["runner_id"],
                                    r["started_at"], max(end, r["started_at"]), r["num_cpus"], r["memory_bytes"],
                                    job_id=r["job_id"]))
        if len(attempts) >= MAX_ATTEMPTS:
            truncated, attempts = True, attempts[:MAX_ATTEMPTS]
            break
        if len(page) < PAGE:
            break
        after = page[-1]["id"]
    runners = []
    for r in db.read("SELECT id, hostname, status, resources, started_at, heartbeat_at, ended_at FROM runners"
                     " WHERE workflow_id = ? ORDER BY hostname, id", (workflow_id,)):
        cpus, gpus = runner_size(dict(r))
        runners.append(Runner(r["id"], r["hostname"], r["started_at"], runner_end(dict(r), now), cpus, gpus))
    known = {r.id for r in runners}
    if any(a.runner_id not in known for a in attempts):  # records from a runner row that is gone
        runners.append(Runner(-1, "unknown runner", min(a.start for a in attempts), max(a.end for a in attempts),
                              0, 0))
        for a in attempts:
            if a.runner_id not in known:
                a.runner_id = -1
    starts = [r.start for r in runners] + [a.start for a in attempts]
    t0 = min(starts) if starts else now
    _assign_lanes(attempts, runners)
    samples = _samples(db, workflow_id, runners)
    notes = []
    if truncated:
        notes.append(f"the first {MAX_ATTEMPTS:,} attempts shown")
    enough = any(len(rows) >= MIN_SAMPLES for rows in samples.values())
    if enough:
        cpu, memory, gpu = _measured(samples, runners, t0)
        measured = True
        if not gpu:
            notes.append("GPU use not sampled (no nvidia-smi/NVML on the nodes)" if any(r.gpus for r in runners)
                         else "no GPUs")
    else:
        cpu, memory = _held(attempts, runners, t0)
        gpu, measured = [], False
        if runners:
            count = sum(len(rows) for rows in samples.values())
            notes.append(f"{'too few node samples (' + str(count) + ')' if count else 'no node samples'}: "
                         "CPU and memory are what the running jobs held (requested)")
    job_cpu, job_memory, job_note = _job_samples(db, workflow_id, attempts, t0)
    if job_note:
        notes.append(job_note)
    return PlotData(workflow_id, workflow.name, t0, attempts, runners, cpu, memory, gpu, measured, notes,
                    job_cpu, job_memory)


def _job_samples(db: Database, workflow_id: int, attempts: list[Attempt],
                 t0: float) -> tuple[list[Series], list[Series], str | None]:
    """The per-job panels' lines: the sampled attempts with the highest peak memory (at most
    `MAX_JOB_LINES`), read attempt by attempt."""
    from torc_slurm.store.samples import attempt_samples, sampled_attempts

    sampled = sampled_attempts(db, workflow_id)
    if not sampled:
        return [], [], None
    chosen = sorted(sampled, key=lambda a: -(a["peak_memory_bytes"] or 0))[:MAX_JOB_LINES]
    rows = {(a["job_id"], a["attempt"]): attempt_samples(db, a["job_id"], a["attempt"]) for a in chosen}
    cpu, memory = job_series(attempts, rows, t0)
    note = (f"per-job lines: the {len(chosen)} attempts with the highest peak memory of {len(sampled):,} sampled"
            if len(sampled) > len(chosen) else None)
    return cpu, memory, note


def job_series(attempts: list[Attempt], rows: dict[tuple[int, int], list[dict[str, Any]]],
               t0: float) -> tuple[list[Series], list[Series]]:
    """(CPU %, memory GiB) lines, one per sampled attempt that has a result (pure): x is the
    attempt's start plus each row's t, minus ``t0``; a row without CPU (the first pass) is left out
    of the CPU line only. Lines are in the attempts' start order."""
    starts = {(a.job_id, a.attempt): a for a in attempts}
    cpu, memory = [], []
    for key in sorted((k for k in rows if k in starts and rows[k]), key=lambda k: (starts[k].start, k)):
        a = starts[key]
        label = a.job if a.attempt == 1 else f"{a.job} #{a.attempt}"
        c, m = Series(label), Series(label)
        for r in rows[key]:
            x = a.start + r["t"] - t0
            if r["cpu_percent"] is not None:
                c.x.append(x)
                c.y.append(r["cpu_percent"])
            if r["memory_bytes"] is not None:
                m.x.append(x)
                m.y.append(r["memory_bytes"] / 2**30)
        if c.x:
            cpu.append(c)
        if m.x:
            memory.append(m)
    return cpu, memory


def _samples(db: Database, workflow_id: int, runners: list[Runner]) -> dict[int, list[dict[str, Any]]]:
    """runner id -> its samples in time order (primary-key pages per runner)."""
    found: dict[int, list[dict[str, Any]]] = {}
    for runner in runners:
        after = float("-inf")
        while True:
            page = db.read("SELECT at, cpu_percent, memory_bytes, gpu_percent, gpu_memory_bytes FROM runner_samples"
                           " WHERE runner_id = ? AND workflow_id = ? AND at > ? ORDER BY at LIMIT ?",
                           (runner.id, workflow_id, after, PAGE))
            if page:
                found.setdefault(runner.id, []).extend(dict(r) for r in page)
            if len(page) < PAGE:
                break
            after = page[-1]["at"]
    return found


# -- shaping (pure) --------------------------------------------------------------------------------
def _assign_lanes(attempts: list[Attempt], runners: list[Runner]) -> None:
    """Each attempt gets the lowest free lane of its runner (interval partitioning); each runner
    gets its band of rows, in runner order."""
    by_runner: dict[int | None, list[Attempt]] = defaultdict(list)
    for a in attempts:
        by_runner[a.runner_id].append(a)
    row = 0
    for runner in runners:
        mine = sorted(by_runner.get(runner.id, []), key=lambda a: (a.start, a.end))
        free: list[int] = []  # lanes free now
        busy: list[tuple[float, int]] = []  # (end, lane)
        lanes = 0
        for a in mine:
            while busy and busy[0][0] <= a.start:
                heapq.heappush(free, heapq.heappop(busy)[1])
            if free:
                a.lane = heapq.heappop(free)
            else:
                a.lane, lanes = lanes, lanes + 1
            heapq.heappush(busy, (a.end, a.lane))
        runner.lanes, runner.first_row = max(1, lanes), row
        row += runner.lanes


def _measured(samples: dict[int, list[dict[str, Any]]], runners: list[Runner],
              t0: float) -> tuple[list[Series], list[Series], list[Series]]:
    size = {r.id: r for r in runners}
    if len(samples) <= MAX_LINES:
        cpu, memory, gpu = [], [], []
        for runner_id, rows in samples.items():
            label = size[runner_id].label
            cpu.append(Series(label, [s["at"] - t0 for s in rows], [s["cpu_percent"] or 0.0 for s in rows]))
            memory.append(Series(label, [s["at"] - t0 for s in rows], [(s["memory_bytes"] or 0) / 2**30 for s in rows]))
            with_gpu = [s for s in rows if s["gpu_percent"] is not None]
            if with_gpu:
                gpu.append(Series(label, [s["at"] - t0 for s in with_gpu], [s["gpu_percent"] for s in with_gpu]))
        return cpu, memory, gpu
    # Many runners: time bins; per bin each runner's mean, then CPU/GPU weighted by size, memory summed.
    first = min(rows[0]["at"] for rows in samples.values())
    last = max(rows[-1]["at"] for rows in samples.values())
    width = max((last - first) / BINS, 1e-9)
    bins: dict[int, dict[int, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for runner_id, rows in samples.items():
        for s in rows:
            bins[int((s["at"] - first) / width)][runner_id].append(s)
    label = f"all {len(samples)} runners"
    cpu, memory, gpu = Series(label), Series(label), Series(label)
    for index in sorted(bins):
        x = first + (index + 0.5) * width - t0
        cpu_sum = cpu_w = gpu_sum = gpu_w = mem = 0.0
        for runner_id, rows in bins[index].items():
            cpus, gpus = max(size[runner_id].cpus, 1), size[runner_id].gpus
            cpu_sum += cpus * sum(s["cpu_percent"] or 0.0 for s in rows) / len(rows)
            cpu_w += cpus
            mem += sum(s["memory_bytes"] or 0 for s in rows) / len(rows)
            gpu_rows = [s["gpu_percent"] for s in rows if s["gpu_percent"] is not None]
            if gpu_rows and gpus:
                gpu_sum += gpus * sum(gpu_rows) / len(gpu_rows)
                gpu_w += gpus
        cpu.x.append(x)
        cpu.y.append(cpu_sum / cpu_w)
        memory.x.append(x)
        memory.y.append(mem / 2**30)
        if gpu_w:
            gpu.x.append(x)
            gpu.y.append(gpu_sum / gpu_w)
    return [cpu], [memory], [gpu] if gpu.x else []


def _held(attempts: list[Attempt], runners: list[Runner], t0: float) -> tuple[list[Series], list[Series]]:
    """Step series of the CPUs (% of the runner's) and memory (GiB) that running attempts held."""
    by_runner: dict[int | None, list[Attempt]] = defaultdict(list)
    for a in attempts:
        by_runner[a.runner_id].append(a)
    groups = [(r.label, [r], by_runner.get(r.id, [])) for r in runners if by_runner.get(r.id)]
    if len(groups) > MAX_LINES:
        groups = [(f"all {len(groups)} runners", [r for _, rs, _ in groups for r in rs],
                   [a for _, _, mine in groups for a in mine])]
    cpu, memory = [], []
    for label, members, mine in groups:
        total_cpus = sum(r.cpus for r in members) or max(a.num_cpus for a in mine)
        changes: dict[float, tuple[int, int]] = defaultdict(lambda: (0, 0))
        for a in mine:
            c, m = changes[a.start]
            changes[a.start] = (c + a.num_cpus, m + a.memory_bytes)
            c, m = changes[a.end]
            changes[a.end] = (c - a.num_cpus, m - a.memory_bytes)
        held_cpu = held_mem = 0
        c_series, m_series = Series(label), Series(label)
        for at in sorted(changes):
            for series, value in ((c_series, 100.0 * held_cpu / total_cpus), (m_series, held_mem / 2**30)):
                series.x.append(at - t0)
                series.y.append(value)
            d_cpu, d_mem = changes[at]
            held_cpu, held_mem = held_cpu + d_cpu, held_mem + d_mem
            for series, value in ((c_series, 100.0 * held_cpu / total_cpus), (m_series, held_mem / 2**30)):
                series.x.append(at - t0)
                series.y.append(value)
        cpu.append(c_series)
        memory.append(m_series)
    return cpu, memory


def time_unit(span_s: float) -> tuple[str, float]:
    """(label, seconds per unit) for an axis spanning ``span_s`` seconds."""
    if span_s <= 180:
        return "s", 1.0
    if span_s <= 3 * 3600:
        return "min", 60.0
    return "h", 3600.0


def _span(data: PlotData) -> float:
    ends = [a.end for a in data.attempts] + [r.end for r in data.runners]
    return max([e - data.t0 for e in ends] + [1.0])


def _title(data: PlotData) -> tuple[str, str]:
    start = datetime.fromtimestamp(data.t0, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    title = f"Workflow {data.workflow_id} {data.name}: {len(data.attempts):,} attempts on {len(data.runners)} runner(s)"
    usage = "node use from runner samples" if data.measured else "node use derived from the attempts"
    return title, "; ".join([f"from {start}", usage, *data.notes])


def _panels(data: PlotData) -> list[tuple[str, list[Series], str]]:
    cpu_label = "CPU % (sampled)" if data.measured else "CPUs held %"
    mem_label = "memory GiB (RSS)" if data.measured else "memory held GiB"
    panels = [(cpu_label, data.cpu, "%"), (mem_label, data.memory, "GiB")]
    if data.gpu:
        panels.append(("GPU % (sampled)", data.gpu, "%"))
    if data.job_cpu:
        panels.append(("job CPU %", data.job_cpu, "%"))
    if data.job_memory:
        panels.append(("job memory GiB", data.job_memory, "GiB"))
    return panels


# -- writing ---------------------------------------------------------------------------------------
def write_plot(db: Database, workflow_id: int, output: Path) -> PlotResult:
    """Draw the workflow to ``output`` (.html with plotly, .png with matplotlib)."""
    suffix = output.suffix.lower()
    if suffix not in (".html", ".png"):
        raise TorcError(f"{output}: the output must end in .html or .png")
    writer = _write_html if suffix == ".html" else _write_png
    writer_modules = ("plotly",) if suffix == ".html" else ("matplotlib",)
    for module in writer_modules:
        try:
            __import__(module)
        except ImportError:
            raise TorcError(f"{INSTALL_HINT} ({module} is not installed)") from None
    data = plot_data(db, workflow_id)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(output, os.O_WRONLY | os.O_CREAT, 0o600))  # a new file is the user's only
        writer(data, output)
    except OSError as exc:
        raise TorcError(f"cannot write {output}: {exc.strerror or exc}") from exc
    return PlotResult(len(data.attempts), len(data.runners),
                      "node use from runner samples" if data.measured else "node use derived from the attempts")


def _hover(a: Attempt, runner: Runner | None) -> str:
    from torc_slurm.reports import human_seconds

    why = f" ({a.reason})" if a.reason else ""
    where = runner.label if runner else "unknown runner"
    return f"{a.job} attempt {a.attempt}<br>{a.status}{why}<br>{human_seconds(a.end - a.start)} on {where}"


def _write_html(data: PlotData, output: Path) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    panels = _panels(data)
    unit, scale = time_unit(_span(data))
    title, subtitle = _title(data)
    rows = 1 + len(panels)
    gantt_share = 0.6 if data.rows > 4 else 0.45
    fig = make_subplots(rows=rows, cols=1, shared_xaxes=True, vertical_spacing=0.05,
                        row_heights=[gantt_share] + [(1 - gantt_share) / len(panels)] * len(panels))
    runners = {r.id: r for r in data.runners}
    minimum = _span(data) / 400
    show_text = len(data.attempts) <= 200
    for kind, (label, colour, loud) in CATEGORIES.items():
        mine = [a for a in data.attempts if a.kind == kind]
        if not mine:
            continue
        fig.add_trace(go.Bar(
            name=label, orientation="h", base=[(a.start - data.t0) / scale for a in mine],
            x=[max(a.end - a.start, minimum) / scale for a in mine],
            y=[runners[a.runner_id].first_row + a.lane for a in mine],
            marker={"color": colour, "line": {"color": "black" if loud else colour, "width": 1.5 if loud else 0.5}},
            text=[a.job for a in mine] if show_text else None, textposition="inside", insidetextanchor="start",
            hovertext=[_hover(a, runners.get(a.runner_id)) for a in mine], hoverinfo="text", width=0.8,
            customdata=[a.job for a in mine]), row=1, col=1)
    fig.update_yaxes(tickvals=[r.first_row for r in data.runners], ticktext=[r.label for r in data.runners],
                     autorange="reversed", row=1, col=1)
    for index, (label, series, _) in enumerate(panels, start=2):
        for s in series:
            fig.add_trace(go.Scatter(x=[x / scale for x in s.x], y=s.y, mode="lines+markers" if (data.measured or label.startswith("job "))
                                     and len(s.x) < 30
                                     else "lines", name=f"{label}: {s.name}",
                                     line={"width": 1.5}, showlegend=len(series) > 1 or label.startswith("job ")), row=index, col=1)
        fig.update_yaxes(title_text=label, rangemode="tozero", row=index, col=1)
    if not data.attempts:
        fig.add_annotation(text="no attempts recorded yet", showarrow=False, xref="paper", yref="paper", x=0.5, y=0.8)
    fig.update_xaxes(title_text=f"time since start ({unit})", row=rows, col=1)
    fig.update_layout(title={"text": f"{title}<br><sub>{'<br>'.join(textwrap.wrap(subtitle, 140))}</sub>"}, barmode="overlay",
                      height=360 + 22 * data.rows + 160 * len(panels), legend={"traceorder": "normal"},
                      template="plotly_white")
    output.write_text(fig.to_html(include_plotlyjs=True, full_html=True), encoding="utf-8")


def _write_png(data: PlotData, output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    panels = _panels(data)
    unit, scale = time_unit(_span(data))
    title, subtitle = _title(data)
    gantt_h = min(1.2 + 0.32 * data.rows, 7.0)
    fig, axes = plt.subplots(1 + len(panels), 1, sharex=True, figsize=(10, gantt_h + 1.5 * len(panels) + 0.9),
                             gridspec_kw={"height_ratios": [gantt_h] + [1.5] * len(panels)}, dpi=100,
                             squeeze=False)
    axes = axes[:, 0]
    gantt = axes[0]
    gantt.set_axisbelow(True)
    runners = {r.id: r for r in data.runners}
    span = _span(data)
    minimum = span / 400
    char = span / scale * 0.0075  # the width of one 7-point character, in axis units (10-inch figure)
    label_end: dict[int, float] = {}  # row -> where its last label ends
    for a in sorted(data.attempts, key=lambda a: a.start):
        label, colour, loud = CATEGORIES[a.kind]
        row = runners[a.runner_id].first_row + a.lane
        left, width = (a.start - data.t0) / scale, max(a.end - a.start, minimum) / scale
        gantt.barh(row, width, left=left, height=0.8, color=colour, edgecolor="black" if loud else colour,
                   linewidth=1.2 if loud else 0.4)
        if len(data.attempts) > 60:
            continue
        text_w = char * (len(a.job) + 1)
        if text_w <= width:  # inside the bar
            gantt.text(left + width / 2, row, a.job, ha="center", va="center", fontsize=7, clip_on=True)
            label_end[row] = left + width
        elif left + width >= label_end.get(row, float("-inf")):  # just after it, if nothing is written there
            gantt.text(left + width + char / 2, row, a.job, ha="left", va="center", fontsize=7, clip_on=True,
                       color=colour if loud else "black", fontweight="bold" if loud else "normal")
            label_end[row] = left + width + text_w + char
    gantt.set_yticks([r.first_row for r in data.runners], [r.label for r in data.runners], fontsize=8)
    for r in data.runners[1:]:
        gantt.axhline(r.first_row - 0.5, color="#cccccc", linewidth=0.8)
    gantt.set_ylim(max(data.rows, 1) - 0.5, -0.5)
    used = [k for k in CATEGORIES if any(a.kind == k for a in data.attempts)]
    if used:
        gantt.legend(handles=[Patch(facecolor=CATEGORIES[k][1], edgecolor="black" if CATEGORIES[k][2] else
                                    CATEGORIES[k][1], label=CATEGORIES[k][0]) for k in used],
                     loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    else:
        gantt.text(0.5, 0.5, "no attempts recorded yet", transform=gantt.transAxes, ha="center", va="center")
    gantt.set_title(title + "\n" + "\n".join(textwrap.wrap(subtitle, 120)), fontsize=9, loc="left")
    gantt.grid(axis="x", color="#eeeeee")
    for ax, (label, series, _) in zip(axes[1:], panels):
        for s in series:
            ax.plot([x / scale for x in s.x], s.y, linewidth=1.2, label=s.name,
                    marker="o" if (data.measured or label.startswith("job ")) and len(s.x) < 30 else None, markersize=3)
        ax.set_ylabel(label, fontsize=8)
        ax.set_ylim(bottom=0)
        ax.grid(color="#eeeeee")
        ax.tick_params(labelsize=8)
        if len(series) > 1 or label.startswith("job "):
            ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
    axes[-1].set_xlabel(f"time since start ({unit})", fontsize=8)
    gantt.set_xlim(left=0)
    fig.tight_layout()
    fig.savefig(output, format="png")
    plt.close(fig)


# -- resource_monitor.generate_plots ---------------------------------------------------------------
def plots_wanted(db: Database, workflow_id: int) -> bool:
    """Whether the workflow's spec asks for plots at its end (``resource_monitor.generate_plots``)."""
    from torc_slurm.reports.samples import monitor_settings

    return bool(monitor_settings(db, workflow_id)["generate_plots"])


def generate_plots(db: Database, workflow_id: int, output_dir: Path) -> tuple[Path | None, str]:
    """``generate_plots: true``: once a runner sees its workflow finished, it writes this module's
    HTML picture to ``<output_dir>/resource_plots/workflow_<id>.html`` (a temp file renamed over
    it, so a reader never sees half a file) and records it in a ``resource_plot`` event; without
    the plot extra (or when writing fails) it writes nothing and the event says why.

    One runner per round draws it: the first to post a ``resource_plot`` event after the newest
    ``runner_started`` event claims it (both by index); the others return (None, why).
    Returns (the file or None, the message)."""
    from torc_slurm.store.events import add_event

    target = output_dir / "resource_plots" / f"workflow_{workflow_id}.html"
    with db.transaction() as conn:
        newest = conn.execute("SELECT MAX(id) FROM events WHERE workflow_id = ? AND kind = ?",
                              (workflow_id, "runner_started")).fetchone()[0] or 0
        drawn = conn.execute("SELECT MAX(id) FROM events WHERE workflow_id = ? AND kind = ?",
                             (workflow_id, "resource_plot")).fetchone()[0] or 0
        if drawn > newest:
            return None, "resource plot: another runner draws it"
        event = add_event(conn, workflow_id, "resource_plot", f"resource plot: writing {target}",
                          data={"path": None}, source="torc")
    path: Path | None = None
    try:
        __import__("plotly")
    except ImportError:
        message = f"resource_monitor.generate_plots: no plot written; {INSTALL_HINT}"
    else:
        tmp = target.with_name(f".{target.stem}.{os.getpid()}.html")
        try:
            write_plot(db, workflow_id, tmp)
            os.replace(tmp, target)
            path, message = target, f"resource plot written to {target}"
        except (OSError, TorcError) as exc:
            message = f"resource_monitor.generate_plots: could not write {target}: {exc}"
            try:
                tmp.unlink()
            except OSError:
                pass
    import json

    with db.transaction() as conn:
        conn.execute("UPDATE events SET message = ?, data = ? WHERE id = ?",
                     (message, json.dumps({"path": str(path) if path else None}), event))
    return path, message


def plots_at_end(db: Database, workflow_id: int, output_dir: Path, exit_reason: str) -> str | None:
    """What `torc run` and `torc slurm run-jobs` call when their runner ends: the picture, when the
    spec asks for it and the runner ended because the workflow is finished. Returns the message
    (None when nothing was asked)."""
    if exit_reason != "workflow complete" or not plots_wanted(db, workflow_id):
        return None
    return generate_plots(db, workflow_id, output_dir)[1]
