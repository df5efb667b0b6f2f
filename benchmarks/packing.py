"""Packing quality: a seeded heterogeneous workload on a declared 16-CPU, 4-GPU, 64 GB node.

Two ways to run it.

``--simulate`` (pure, seconds): drives ``torc_slurm.runner.packing`` directly, event by event, with
jobs ending exactly at their declared runtime, for seeds 1-7 (``--seeds``):

  * ``packer``: every ready job is a candidate at every event (the packer alone);
  * ``loop``: a model of ``runner/loop.py`` as it is: the chooser packs a window of the first 64
    ready jobs and claims what starts now plus claim-ahead (one job per CPU slot in all, in the
    window's order); the backlog of claimed jobs is packed in claim order. The loop does not pass
    priorities to the packer today, so its plan order is the given order;
  * ``loop+``: the same with the loop changes the plan order needs (priorities passed,
    claim-ahead and ``_pack``'s prefix cut in ``plan_order``); see RESULTS.md;
  * ``gangs``: two such nodes (a declared 2-node allocation) run twice the single-node mix, with
    and without six 2-node jobs (8 or 16 CPUs, 0-2 GPUs per node, 3-10 s). A 2-node job starts
    only when both nodes place its per-node share at the same moment. When it fits on one node
    only, both treat it as blocked until it can fit on the other (``pack(not_before=...)``), so
    EASY backfill keeps its reservation on both nodes;
  * ``late wide``: the mix with each 16-CPU job waiting for a random narrow job (so wide jobs
    become ready mid-run), packer alone, seeds 1-30 (``--late-seeds``);
  * the chooser's time per call (a copy of ``Runner._chooser`` with ``Runner._pack``'s prefix
    cut) on a 512-job window, on an empty, a half-full and a full node.

``before`` is the packer at ``--baseline-rev`` (read with ``git show``), ``after`` this tree's.
``--json PATH`` writes every figure.

Without ``--simulate``, it runs the real thing:

    torc --db D/torc.db run D/spec.yaml --num-cpus 16 --num-gpus 4 --memory-gb 64 --output D/out

Jobs are `sleep N` with a declared runtime of exactly N seconds (PT<N>S), so the packer's
shadow-time reasoning (EASY backfill) works on true figures. The mix (``--seed``, default 7):

  * 1-CPU jobs, no GPU, 1-2 GB, 2-20 s
  * 4-CPU jobs, 0-2 GPUs, 4-8 GB, 2-12 s
  * 16-CPU jobs (the whole node's CPUs), 0-2 GPUs, 16-32 GB, 2-6 s
  * with ``--wide-first``: the 16-CPU jobs get ``priority: 1``, so they are claimed first
  * with ``--chains N``: N 3-job chains (prep -> main -> post) on top, so the critical path is a
    real path and the claim order (priority, then jobs_sort_method, which knows nothing of the
    DAG) shows its effect

Lower bound = max(CPU-seconds / CPUs, GPU-seconds / GPUs, critical path), from the declared
runtimes. Memory is sized so that it never binds. Makespan = first job start to last job end
(results table); the process wall time (compile, store, runner start and exit included) is printed
as well.

    python benchmarks/packing.py                 # ~80 s of work
    python benchmarks/packing.py --seed 3 --scale 0.5
    python benchmarks/packing.py --simulate --json benchmarks/packing.json

Target (from the issue): makespan / lower bound <= 1.05.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, machine, run_timed, tail, torc_env, write_spec  # noqa: E402

CPUS, GPUS, MEMORY_GB = 16, 4, 64


def workload(seed: int, scale: float, chains: int = 0) -> list[dict]:
    """Job dicts: name, cpus, gpus, mem_gb, runtime (s), deps (names)."""
    rng = random.Random(seed)

    def secs(lo: int, hi: int) -> int:
        return max(1, round(rng.randint(lo, hi) * scale))

    jobs: list[dict] = []
    for i in range(40):
        jobs.append({"name": f"small_{i:02d}", "cpus": 1, "gpus": 0, "mem_gb": rng.choice([1, 2]),
                     "runtime": secs(2, 20), "deps": []})
    for i in range(16):
        jobs.append({"name": f"medium_{i:02d}", "cpus": 4, "gpus": rng.choice([0, 1, 1, 2]),
                     "mem_gb": rng.choice([4, 6, 8]), "runtime": secs(2, 12), "deps": []})
    for i in range(4):
        jobs.append({"name": f"large_{i}", "cpus": 16, "gpus": rng.choice([0, 1, 2]),
                     "mem_gb": rng.choice([16, 24, 32]), "runtime": secs(2, 6), "deps": []})
    for c in range(chains):
        prep = {"name": f"chain{c}_prep", "cpus": 1, "gpus": 0, "mem_gb": 1, "runtime": secs(2, 8), "deps": []}
        main = {"name": f"chain{c}_main", "cpus": 4, "gpus": rng.choice([0, 1]), "mem_gb": 4,
                "runtime": secs(4, 16), "deps": [prep["name"]]}
        post = {"name": f"chain{c}_post", "cpus": 1, "gpus": 0, "mem_gb": 1, "runtime": secs(2, 8),
                "deps": [main["name"]]}
        jobs += [prep, main, post]
    rng.shuffle(jobs)  # submission order carries no hint; the queue's sort order decides
    return jobs


def spec_for(jobs: list[dict], wide_first: bool = False) -> dict:
    kinds = sorted({(j["cpus"], j["gpus"], j["mem_gb"], j["runtime"]) for j in jobs})
    names = {k: f"c{k[0]}_g{k[1]}_m{k[2]}_t{k[3]}" for k in kinds}
    return {
        "name": "packing",
        "resource_requirements": [{"name": names[k], "num_cpus": k[0], "num_gpus": k[1], "memory": f"{k[2]}g",
                                   "runtime": f"PT{k[3]}S"} for k in kinds],
        "jobs": [{"name": j["name"], "command": f"sleep {j['runtime']}", "depends_on": j["deps"],
                  "resource_requirements": names[(j["cpus"], j["gpus"], j["mem_gb"], j["runtime"])],
                  "priority": 1 if wide_first and j["cpus"] == CPUS else 0}
                 for j in jobs],
    }


def bounds(jobs: list[dict]) -> dict:
    by_name = {j["name"]: j for j in jobs}
    finish: dict[str, float] = {}

    def earliest_end(name: str) -> float:  # longest path ending with this job
        if name not in finish:
            job = by_name[name]
            finish[name] = job["runtime"] + max((earliest_end(d) for d in job["deps"]), default=0.0)
        return finish[name]

    cpu_s = sum(j["cpus"] * j["runtime"] for j in jobs)
    gpu_s = sum(j["gpus"] * j["runtime"] for j in jobs)
    critical = max(earliest_end(j["name"]) for j in jobs)
    return {"cpu_s": cpu_s, "gpu_s": gpu_s, "critical": critical,
            "lower": max(cpu_s / CPUS, gpu_s / GPUS, critical)}


# --- simulation (--simulate) -------------------------------------------------------------------

GB = 2**30
WINDOW, PREFETCH = 64, CPUS  # Runner._window() and Runner._prefetch() at these completion rates
BASELINE_REV = "4971645"  # the packer before the plan order


def load_packer(rev: str | None) -> types.ModuleType:
    """This tree's packer, or the one at git revision ``rev`` (loaded from ``git show``)."""
    if rev is None:
        from torc_slurm.runner import packing
        return packing
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:torc_slurm/runner/packing.py"],
                            capture_output=True, text=True, check=True).stdout
    with tempfile.TemporaryDirectory(prefix="torc-packing-baseline-") as tmp:
        path = Path(tmp) / f"packing_{rev}.py"
        path.write_text(source, encoding="utf-8")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module.__name__] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
    return module


def node(nid: int = 0) -> Any:
    from torc_slurm.runner.packing import NodeCapacity
    return NodeCapacity(tuple(range(CPUS)), tuple(str(g) for g in range(GPUS)), MEMORY_GB * GB)


def candidates(jobs: list[dict], *, priorities: bool, wide_first: bool = False) -> list[Any]:
    """The queue's rank order (compiler._ranks with jobs_sort_method = gpus_runtime_memory: priority,
    GPUs, runtime, memory, spec order; all descending but spec order) as packing Candidates.
    ``priorities``: pass each job's priority to the packer (else None, as the loop does today)."""
    from torc_slurm.runner.packing import Candidate
    keyed = []
    for i, j in enumerate(jobs):
        prio = 1 if wide_first and j["cpus"] == CPUS else 0
        keyed.append(((-prio, -j["gpus"], -j["runtime"], -j["mem_gb"], i), j, prio))
    keyed.sort(key=lambda k: k[0])
    return [Candidate(i, j["cpus"], j["gpus"], j["mem_gb"] * GB, j["runtime"], prio if priorities else None,
                      j.get("nodes", 1)) for i, (_, j, prio) in enumerate(keyed)]


def simulate_packer(packer: types.ModuleType, cands: list[Any], deps: dict[int, set[int]] | None = None) -> float:
    """The packer alone: at every event (a job ending) every ready job (``deps``: job id -> the ids
    it waits for) is a candidate. -> makespan."""
    capacity = node()
    deps = deps or {}
    now, running, waiting, done, last = 0.0, [], list(cands), set(), 0.0
    while waiting or running:
        queue = [c for c in waiting if deps.get(c.job_id, set()) <= done]
        for p in packer.pack(capacity, running, queue, now=now, end_time=None):
            running.append(p)
            last = max(last, p.expected_end)
        started = {p.job_id for p in running}
        waiting = [c for c in waiting if c.job_id not in started]
        if not running:
            raise RuntimeError(f"{len(waiting)} jobs can never start")
        now = min(p.expected_end for p in running)
        done |= {p.job_id for p in running if p.expected_end <= now}
        running = [p for p in running if p.expected_end > now]
    return last


def late_wide(seed: int) -> list[dict]:
    """The mix, but each 16-CPU job waits for a random narrow job: wide jobs become ready mid-run."""
    jobs = workload(seed, 1.0)
    rng = random.Random(seed)
    narrow = [j["name"] for j in jobs if j["cpus"] < CPUS]
    for j in jobs:
        if j["cpus"] == CPUS:
            j["deps"] = [rng.choice(narrow)]
    return jobs


def dependencies(jobs: list[dict]) -> dict[int, set[int]]:
    """Job id (as ``candidates`` numbers them) -> the ids it waits for."""
    ranked = sorted(range(len(jobs)), key=lambda i: (-jobs[i]["gpus"], -jobs[i]["runtime"], -jobs[i]["mem_gb"], i))
    ids = {jobs[i]["name"]: job_id for job_id, i in enumerate(ranked)}
    return {ids[j["name"]]: {ids[d] for d in j["deps"]} for j in jobs}


def loop_pack(packer: types.ModuleType, capacity: Any, busy: list, cands: list, now: float,
              planned: bool = False) -> list:
    """Runner._pack: pack, with its prefix cut when the candidate list is long (``planned``: the
    cut taken from the plan order, loop change 3 in RESULTS.md)."""
    if planned:
        cands = packer.plan_order(capacity, cands)

    def run(cs: list) -> list:
        return packer.pack(capacity, busy, cs, now=now, end_time=None)
    free = len(capacity.cpu_ids) - sum(len(p.cpu_ids) for p in busy)
    cut = 2 * free + 8
    if 0 < free and cut < len(cands):
        placed = run(cands[:cut])
        if sum(len(p.cpu_ids) for p in placed) >= free and all(c.num_cpus >= 1 for c in cands[cut:]):
            return placed
    return run(cands)


def loop_choose(packer: types.ModuleType, capacity: Any, busy: list, window: list, room: int, now: float,
                claim_in_plan_order: bool) -> list[int]:
    """Runner._chooser's choose(): what starts now, then claim-ahead, ``room`` jobs at most."""
    chosen = [p.job_id for p in loop_pack(packer, capacity, busy, window, now, claim_in_plan_order)][:room]
    taken = set(chosen)
    ahead = packer.plan_order(capacity, window) if claim_in_plan_order else window
    for c in ahead:
        if len(chosen) >= room:
            break
        if c.job_id not in taken and packer.fits_node(capacity, c):
            chosen.append(c.job_id)
            taken.add(c.job_id)
    return chosen


def simulate_loop(packer: types.ModuleType, cands: list[Any], *, claim_in_plan_order: bool = False) -> float:
    # claim_in_plan_order: the loop changes of RESULTS.md (claim-ahead and prefix cut in plan order)
    """The runner loop's two packing steps, with claims taking no time: at each event, start from
    the backlog, claim (chooser over the first WINDOW ready jobs, room = PREFETCH - backlog), start
    from the backlog again. -> makespan."""
    capacity = node()
    now, running, ready, backlog, last = 0.0, [], list(cands), [], 0.0

    def start_backlog() -> None:
        nonlocal backlog, last
        for p in loop_pack(packer, capacity, running, backlog, now, claim_in_plan_order):
            running.append(p)
            last = max(last, p.expected_end)
        started = {p.job_id for p in running}
        backlog = [c for c in backlog if c.job_id not in started]

    def claim() -> None:
        nonlocal ready
        room = PREFETCH - len(backlog)
        if room <= 0:
            return
        by_id = {c.job_id: c for c in ready[:WINDOW]}
        chosen = loop_choose(packer, capacity, running, ready[:WINDOW], room, now, claim_in_plan_order)
        backlog.extend(by_id[i] for i in chosen)
        taken = set(chosen)
        ready = [c for c in ready if c.job_id not in taken]

    while ready or backlog or running:
        start_backlog()
        claim()
        start_backlog()
        if not running:
            raise RuntimeError(f"{len(ready) + len(backlog)} jobs can never start")
        now = min(p.expected_end for p in running)
        running = [p for p in running if p.expected_end > now]
    return last


def simulate_two_nodes(packer: types.ModuleType, cands: list[Any]) -> float:
    """Two nodes, the packer alone on each (node 0 packs first, node 1 gets what is left). A gang
    (num_nodes 2) starts when both place it at once; when only one does, both retry with it
    blocked until it can fit on the other (not_before), so each node keeps an EASY reservation for
    it instead of filling up again. -> makespan."""
    from torc_slurm.runner.packing import shadow_time
    caps = [node(0), node(1)]
    now, running, queue, last = 0.0, [[], []], list(cands), 0.0
    while queue or running[0] or running[1]:
        waits: dict[int, float] = {}
        for _attempt in range(6):
            placed0 = packer.pack(caps[0], running[0], queue, now=now, end_time=None, not_before=waits)
            taken0 = {p.job_id for p in placed0 if p.job_id not in waits}
            rest = [c for c in queue if c.job_id not in taken0 or c.num_nodes > 1]
            placed1 = packer.pack(caps[1], running[1], rest, now=now, end_time=None, not_before=waits)
            on0, on1 = {p.job_id for p in placed0}, {p.job_id for p in placed1}
            gangs = {c.job_id: c for c in queue if c.num_nodes > 1}
            partial = [g for g in gangs if (g in on0) != (g in on1)]
            if not partial:
                break
            for g in partial:  # when could it fit on the node that did not place it (after its placements)?
                other, placed = (1, placed1) if g in on0 else (0, placed0)
                busy = running[other] + [p for p in placed if p.job_id not in gangs]
                waits[g] = max(waits.get(g, now), shadow_time(caps[other], busy, gangs[g], now=now))
        else:
            placed0 = [p for p in placed0 if p.job_id not in partial]
            placed1 = [p for p in placed1 if p.job_id not in partial]
        for n, placed in ((0, placed0), (1, placed1)):
            for p in placed:
                running[n].append(p)
                last = max(last, p.expected_end)
        started = {p.job_id for p in placed0} | {p.job_id for p in placed1}
        queue = [c for c in queue if c.job_id not in started]
        if not running[0] and not running[1]:
            raise RuntimeError(f"{len(queue)} jobs can never start")
        now = min(p.expected_end for r in running for p in r)
        running = [[p for p in r if p.expected_end > now] for r in running]
    return last


def gang_workload(seed: int, gangs: int) -> list[dict]:
    """Twice the single-node mix (seeds ``seed`` and ``seed + 1000``), plus ``gangs`` 2-node jobs."""
    rng = random.Random(seed + 5000)
    jobs = [dict(j, name=f"a_{j['name']}") for j in workload(seed, 1.0)]
    jobs += [dict(j, name=f"b_{j['name']}") for j in workload(seed + 1000, 1.0)]
    for i in range(gangs):
        jobs.append({"name": f"gang_{i}", "cpus": rng.choice([8, 16]), "gpus": rng.choice([0, 1, 2]),
                     "mem_gb": rng.choice([8, 16, 32]), "runtime": rng.randint(3, 10), "deps": [], "nodes": 2})
    random.Random(seed + 6000).shuffle(jobs)
    return jobs


def two_node_bound(jobs: list[dict]) -> float:
    cpu_s = sum(j["cpus"] * j.get("nodes", 1) * j["runtime"] for j in jobs)
    gpu_s = sum(j["gpus"] * j.get("nodes", 1) * j["runtime"] for j in jobs)
    return max(cpu_s / (2 * CPUS), gpu_s / (2 * GPUS), max(j["runtime"] for j in jobs))


def chooser_seconds(packer: types.ModuleType, *, priorities: bool, busy_cpus: int, repeat: int) -> float:
    """Seconds per loop_choose() call on a 512-job window (jobs drawn from the mix), with
    ``busy_cpus`` CPUs (and a GPU each, up to 4) held by running jobs that end at different times."""
    from torc_slurm.runner.packing import Placement
    jobs = [j for seed in range(100, 110) for j in workload(seed, 1.0)][:512]
    cands = candidates(jobs, priorities=priorities)
    capacity = node()
    busy = [Placement(10_000 + k, (k,), (str(k),) if k < GPUS else (), GB, 5.0 + k) for k in range(busy_cpus)]
    batches = []
    for _ in range(5):  # best of 5 batches: the machine is shared
        t0 = time.perf_counter()
        for _ in range(max(1, repeat // 5)):
            loop_choose(packer, capacity, busy, cands, PREFETCH, 0.0, priorities)
        batches.append((time.perf_counter() - t0) / max(1, repeat // 5))
    return min(batches)


def simulate_main(args: argparse.Namespace) -> int:
    before = load_packer(args.baseline_rev)
    after = load_packer(None)
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"packing --simulate: seeds {seeds}; before = packer at {args.baseline_rev}, after = this tree; {machine()}")
    out: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine(),
        "nproc": os.cpu_count(), "kernel": platform.release(), "baseline_rev": args.baseline_rev,
        "node": {"cpus": CPUS, "gpus": GPUS, "memory_gb": MEMORY_GB}, "single_node": [], "two_nodes": [], "late_wide": [],
        "chooser_seconds_per_call": {}}
    header = ("seed", "bound", "packer before", "packer after", "wide-first before", "loop before",
              "loop after", "loop+ after")
    print("  single node, makespan / lower bound:")
    print("  " + " | ".join(f"{h:>17s}" for h in header))
    for seed in seeds:
        jobs = workload(seed, 1.0)
        bound = bounds(jobs)["lower"]
        plain, known = candidates(jobs, priorities=False), candidates(jobs, priorities=True)
        row = {"seed": seed, "lower_bound": bound,
               "packer_before": simulate_packer(before, plain),
               "packer_after": simulate_packer(after, known),
               "wide_first_before": simulate_packer(before, candidates(jobs, priorities=False, wide_first=True)),
               "loop_before": simulate_loop(before, plain),
               "loop_after": simulate_loop(after, plain),
               "loop_plus_after": simulate_loop(after, known, claim_in_plan_order=True)}
        same = simulate_packer(after, plain)
        if same != row["packer_before"]:
            print(f"  NOTE seed {seed}: this tree without priorities gives {same}, not the baseline's"
                  f" {row['packer_before']}")
        out["single_node"].append(row)
        figures = [row[k] / bound for k in ("packer_before", "packer_after", "wide_first_before", "loop_before",
                                            "loop_after", "loop_plus_after")]
        print("  " + " | ".join([f"{seed:>17d}", f"{bound:>15.1f} s", *(f"{x:>17.3f}" for x in figures)]))

    print(f"  two nodes (twice the mix, {args.gangs} 2-node jobs in 'with gangs'), makespan / lower bound:")
    for seed in seeds:
        row = {"seed": seed}
        for label, n in (("without", 0), ("with", args.gangs)):
            jobs = gang_workload(seed, n)
            bound = two_node_bound(jobs)
            row[f"{label}_gangs"] = {
                "lower_bound": bound,
                "given_order": simulate_two_nodes(after, candidates(jobs, priorities=False)),
                "plan_order": simulate_two_nodes(after, candidates(jobs, priorities=True))}
        out["two_nodes"].append(row)
        print(f"    seed {seed}: " + "; ".join(
            f"{label} gangs (bound {row[f'{label}_gangs']['lower_bound']:.1f} s) given order"
            f" {row[f'{label}_gangs']['given_order'] / row[f'{label}_gangs']['lower_bound']:.3f},"
            f" plan order {row[f'{label}_gangs']['plan_order'] / row[f'{label}_gangs']['lower_bound']:.3f}"
            for label in ("without", "with")))

    print("  wide jobs ready mid-run (each waits for a random narrow job), packer alone, makespan / lower bound:")
    for seed in range(1, args.late_seeds + 1):
        jobs = late_wide(seed)
        bound, deps = bounds(jobs)["lower"], dependencies(jobs)
        row = {"seed": seed, "lower_bound": bound,
               "packer_before": simulate_packer(before, candidates(jobs, priorities=False), deps),
               "packer_after": simulate_packer(after, candidates(jobs, priorities=True), deps)}
        out["late_wide"].append(row)
    late = out["late_wide"]
    for key in ("packer_before", "packer_after"):
        ratios = [r[key] / r["lower_bound"] for r in late]
        print(f"    {key}: seeds 1-{args.late_seeds}: max {max(ratios):.3f}, mean {sum(ratios) / len(ratios):.3f},"
              f" {sum(x > 1.05 for x in ratios)} above 1.05; seeds 1-7: "
              + " ".join(f"{x:.3f}" for x in ratios[:7]))
    better = sum(r["packer_after"] < r["packer_before"] for r in late)
    worse = sum(r["packer_after"] > r["packer_before"] for r in late)
    print(f"    after vs before: better on {better} seeds, worse on {worse}, equal on {len(late) - better - worse}")

    print("  chooser, microseconds per call on a 512-job window (best of 5 batches of --repeat/5 calls):")
    for busy_cpus in (0, 8, 16):
        figures = {
            "before": chooser_seconds(before, priorities=False, busy_cpus=busy_cpus, repeat=args.repeat),
            "after_no_priorities": chooser_seconds(after, priorities=False, busy_cpus=busy_cpus, repeat=args.repeat),
            "after": chooser_seconds(after, priorities=True, busy_cpus=busy_cpus, repeat=args.repeat)}
        out["chooser_seconds_per_call"][f"{busy_cpus}_of_{CPUS}_cpus_busy"] = figures
        print(f"    {busy_cpus:2d}/{CPUS} CPUs busy: " + ", ".join(f"{k} {v * 1e6:.0f} us" for k, v in figures.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
        print(f"  wrote {args.json}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--chains", type=int, default=0, help="add N prep -> main -> post chains")
    parser.add_argument("--wide-first", action="store_true",
                        help="give the 16-CPU jobs priority 1 (the user's lever on the claim order)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every runtime (whole seconds, >= 1)")
    parser.add_argument("--tmpdir", help="where the temp dir goes (default: $TMPDIR or /tmp)")
    parser.add_argument("--timeline", action="store_true", help="print CPUs/GPUs in use, second by second")
    parser.add_argument("--simulate", action="store_true", help="simulate the packer instead of running torc")
    parser.add_argument("--seeds", default="1,2,3,4,5,6,7", help="with --simulate: comma-separated seeds")
    parser.add_argument("--gangs", type=int, default=6, help="with --simulate: 2-node jobs in the 2-node runs")
    parser.add_argument("--baseline-rev", default=BASELINE_REV, help="with --simulate: git revision for 'before'")
    parser.add_argument("--repeat", type=int, default=500, help="with --simulate: chooser calls timed per figure")
    parser.add_argument("--late-seeds", type=int, default=30, help="with --simulate: seeds of the mid-run-wide mix")
    parser.add_argument("--json", help="with --simulate: write the figures to this file")
    args = parser.parse_args()
    if args.simulate:
        return simulate_main(args)

    jobs = workload(args.seed, args.scale, args.chains)
    b = bounds(jobs)
    counts = {c: sum(1 for j in jobs if j["cpus"] == c) for c in (1, 4, 16)}
    print(f"packing: {len(jobs)} jobs (seed {args.seed}: {counts[1]} x 1-CPU, {counts[4]} x 4-CPU,"
          f" {counts[16]} x 16-CPU; {sum(1 for j in jobs if j['gpus'])} use GPUs; {args.chains} chains"
          f"{'; wide jobs first' if args.wide_first else ''}) on a declared"
          f" {CPUS}-CPU {GPUS}-GPU {MEMORY_GB} GB node; {machine()}")
    print(f"  lower bound {b['lower']:.1f} s = max(CPU-s {b['cpu_s']}/{CPUS} = {b['cpu_s'] / CPUS:.1f},"
          f" GPU-s {b['gpu_s']}/{GPUS} = {b['gpu_s'] / GPUS:.1f}, critical path {b['critical']:.0f})", flush=True)

    with tempfile.TemporaryDirectory(prefix="torc-packing-", dir=args.tmpdir) as tmp_name:
        tmp = Path(tmp_name)
        spec_path = write_spec(tmp / "spec.yaml", spec_for(jobs, args.wide_first))
        db = tmp / "torc.db"
        argv = ["torc", "--db", str(db), "run", str(spec_path), "--num-cpus", str(CPUS), "--num-gpus", str(GPUS),
                "--memory-gb", str(MEMORY_GB), "--output", str(tmp / "out")]
        timed = run_timed(argv, cwd=tmp, env=torc_env())
        if timed.returncode != 0:
            print(f"  torc run FAILED (exit {timed.returncode}):\n{tail(timed.stderr + timed.stdout, 10)}")
            return 1
        conn = sqlite3.connect(db)
        rows = conn.execute("SELECT j.name, j.num_cpus, j.num_gpus, r.started_at, r.ended_at, r.exec_s"
                            " FROM results r JOIN jobs j ON j.id = r.job_id WHERE r.status = 'completed'").fetchall()
        conn.close()

    first = min(r[3] for r in rows)
    last = max(r[4] for r in rows)
    makespan = last - first
    overrun = sum(r[5] for r in rows) - sum(j["runtime"] for j in jobs)
    busy_cpu_s = sum(r[1] * r[5] for r in rows)
    print(f"  {len(rows)} of {len(jobs)} jobs completed")
    print(f"  makespan (first start -> last end) {makespan:.2f} s; makespan / lower bound ="
          f" {makespan / b['lower']:.3f} (target <= 1.05)")
    print(f"  process wall (torc run start -> exit) {timed.seconds:.2f} s; / lower bound ="
          f" {timed.seconds / b['lower']:.3f}")
    last_start = max(r[3] for r in rows)
    tail_busy = sum(r[1] * (r[4] - max(r[3], last_start)) for r in rows if r[4] > last_start)
    idle = CPUS * makespan - busy_cpu_s
    tail_idle = CPUS * (last - last_start) - tail_busy
    print(f"  CPU slots busy {busy_cpu_s / (CPUS * makespan):.1%} of the makespan; idle {idle:.0f} CPU-s, of which"
          f" {tail_idle:.0f} in the tail after the last start ({last - last_start:.1f} s) and {idle - tail_idle:.0f}"
          f" before it (drains ahead of wide jobs)")
    print(f"  jobs ran {overrun:+.2f} s in total beyond their declared runtimes (spawn + bash + sleep overhead)")
    if args.timeline:
        print_timeline(rows, first, last)
    return 0


def print_timeline(rows: list[tuple], first: float, last: float) -> None:
    """One line per second: CPUs and GPUs in use (sampled mid-second), and what started."""
    for second in range(int(last - first) + 1):
        t = first + second + 0.5
        live = [r for r in rows if r[3] <= t < r[4]]
        cpus, gpus = sum(r[1] for r in live), sum(r[2] for r in live)
        started = [f"{r[0]}({r[1]}c{r[2]}g,{r[5]:.0f}s)" for r in rows if first + second <= r[3] < first + second + 1]
        print(f"  {second:4d}s  cpu {cpus:2d}/{CPUS} {'#' * cpus:16s}  gpu {gpus}/{GPUS}  {' '.join(started)}")


if __name__ == "__main__":
    sys.exit(main())
