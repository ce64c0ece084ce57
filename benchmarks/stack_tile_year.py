"""A tile-year's cost: a stack of full-size dates (10980² px, 3 bands at 10 m) co-registered as a
user runs it, its CPU time per date, and what a year of a tile, a country and a continent cost,
beside AROSICS's global COREG on one date pair of the same size.

    python benchmarks/stack_tile_year.py --keep DIR [--dates 5] [--profile] [--no-arosics]

The dates are the full-tile benchmark's mosaic of real 10 m pixels (OMBRIA's 256² chips, 43 × 43;
``benchmarks/coregistration_full_tile.py``: its ``mosaic`` and ``write``, tiled GeoTIFFs with
overviews): the reference as that benchmark writes it, and ``--dates`` targets, each (``date_spec``)
with its georeference moved by its own known amount (a few metres, sub-pixel; the truth of its
``dx_m, dy_m``), its own gain, offset and noise, and on some dates bright opaque clouds (not
declared: real content replaced) and a no-data corner (an orbit's edge). They are written once
into ``--keep DIR`` (with ``truth.json``) and reused by later runs; building is timed apart.

Measured, each in a fresh process, as a user runs it (``coregister.py --stack REF T1 … --reference
REF --output OUT``, a LocalCluster of one single-threaded worker a core): the CPU time of the
process tree (user + system, ``resource.getrusage(RUSAGE_CHILDREN)``: the run's process and its
Dask workers, which it waits for), its wall time and the tree's peak resident memory (the sum over
its processes, sampled every ``POLL_S``). Two stacks: the reference with one target (``C_1``) and
with all ``--dates`` targets (``C_N``). A date's cost:

- **added to a stack** (the once-per-stack cost excluded: start-up, the cluster and its models, the
  reference's overview, location and windows): ``m = (C_N − C_1) / (N − 1)``;
- **its share of a 70-date tile-year** (the once-per-stack cost included): ``Y / 70`` with
  ``Y = C_1 + 68 m``, the 70-date stack's cost;
- **as run**: ``C_N / N``.

Each target's estimate is checked against its truth (its error at the overlap's centre, m: a date
moves by a translation only, the same everywhere), and each date's status (``ok``, ``excluded``
with its reason) is reported. AROSICS's global ``COREG`` runs on one date pair of the same size
(the reference and the first target, clear) in a fresh process: its CPU time is its cost a date.

``--profile``: where the stack's time goes, by stage (``profile_coregistration.STAGES``): the stack
of the reference and ``--profile-dates`` targets in one process on an in-process Dask worker (one
thread), each stage's CPU time per thread (``time.thread_time``: waiting costs nothing), and each
task's (overview, locate, extract, pair). From the tasks' CPU the cost of a pair against a date's
own work (locate + extract) gives the 70-date figure corrected for its pairs a date (a 70-date
stack has more pairs a date than a short one: ``pairs_per_date``).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import s2coreg.config as config  # noqa: E402
from coregistration_full_tile import ORIGIN, RES, SIDE, mosaic, write  # noqa: E402

YEAR = 70                   # dates a tile-year (a 5-day revisit)
NEIGHBOURS = 2              # coregister --stack's default --neighbours
POLL_S = 0.25               # the process tree's memory and CPU sampled this often
REFERENCE_DATE = "20250301"
# the stack's tasks timed by --profile (s2coreg/coregistration/stack.py); a task's CPU is its worker
# thread's: work it hands to threads of its own is counted in the profile's other threads
TASKS = ("task_overview", "task_locate", "task_extract", "task_pair")
STEP_DAYS = 5

# what a year of many tiles is scaled by (--country-tiles, --continent-tiles, --price)
COUNTRY = ("France (metropolitan)", 92,
           "92 MGRS tiles touch its land (satfarming.com, 'Outil de téléchargement des images Sentinel-2', 2019)")
CONTINENT = ("Europe", 1700,
             "an estimate, not a count: France's tiles per km² (92 / 0.55 M km²) over Europe's 10.2 M km²")
PRICE = (0.05, "USD a core-hour: an on-demand cloud vCPU (a compute-optimised instance's price / its vCPUs, "
               "order of magnitude; spot instances are about a third of it)")


def date_spec(k: int) -> dict:
    """Target ``k`` (1-based): its name and date, its georeference's move (m, east and north: its
    truth), its radiometry (gain, offset, noise σ in DN), its cloud cover (a fraction, bright and
    opaque) and its no-data corner (a fraction of the tile, 0 = none; which corner). Deterministic;
    the pattern of six repeats: clear, some cloud, a no-data corner, clear, cloudy with a corner,
    overcast (nearly all cloud: a date a real year has, which should be refused)."""
    rng = np.random.default_rng(1000 + k)
    dx, dy = rng.uniform(-6, 6, 2).round(2)
    kind = k % 6
    cloud = {2: 0.2, 5: 0.45, 0: 0.95}.get(kind, 0.0)
    corner = {3: 0.3, 5: 0.2}.get(kind, 0.0)
    day = np.datetime64("2025-03-01") + np.timedelta64(STEP_DAYS * k, "D")
    return {"name": str(day).replace("-", ""), "shift_m": [float(dx), float(dy)],
            "gain": round(float(rng.uniform(0.85, 1.2)), 3), "offset": round(float(rng.uniform(-40, 80)), 1),
            "noise": round(float(rng.uniform(8, 20)), 1), "cloud": cloud, "corner": corner,
            "corner_at": int(rng.integers(4)), "seed": k}


def cloud_alpha(fraction: float, seed: int) -> np.ndarray:
    """(SIDE, SIDE) float32 opacity in [0, 1]: smooth blobs (a few km) covering about ``fraction``
    of the tile, soft at their edges (made at 1/16 and enlarged)."""
    import cv2
    from scipy.ndimage import gaussian_filter

    n = SIDE // 16
    field = gaussian_filter(np.random.default_rng(seed).standard_normal((n, n)), 10)
    thr = np.quantile(field, 1 - fraction)
    soft = (field.max() - thr) * 0.15
    alpha = np.clip((field - thr) / soft, 0, 1).astype(np.float32)
    return cv2.resize(alpha, (SIDE, SIDE), interpolation=cv2.INTER_LINEAR)


def corner_mask(fraction: float, at: int) -> np.ndarray:
    """(SIDE, SIDE) bool: a triangle of ``fraction`` of the tile at corner ``at`` (0 top-left,
    clockwise), as the edge of an orbit's swath crosses a tile."""
    leg = SIDE * np.sqrt(2 * fraction)
    r = np.arange(SIDE, dtype=np.float32)
    rows, cols = (r if at in (0, 1) else r[::-1])[:, None], (r if at in (0, 3) else r[::-1])[None, :]
    return rows + cols < leg


def target_data(base: np.ndarray, spec: dict) -> np.ndarray:
    """(3, SIDE, SIDE) uint16: ``base`` with the date's gain, offset, noise, clouds and corner (0 = no data)."""
    rng = np.random.default_rng(spec["seed"])
    alpha = cloud_alpha(spec["cloud"], spec["seed"]) if spec["cloud"] else None
    out = np.empty_like(base)
    for b in range(base.shape[0]):        # a band at a time: ~1.5 GB at most beside the mosaic
        band = base[b].astype(np.float32) * spec["gain"] + spec["offset"]
        band += rng.standard_normal(band.shape, dtype=np.float32) * spec["noise"]
        if alpha is not None:             # bright, nearly flat: a cloud's top (the noise stays)
            band *= 1 - alpha
            band += alpha * (8000 + 400 * b)
        out[b] = np.where(base[b] > 0, np.clip(band, 1, 65535), 0)
        del band
    if spec["corner"]:
        out[:, corner_mask(spec["corner"], spec["corner_at"])] = 0
    return out


def build_stack(data: Path, folder: Path, n: int) -> tuple[Path, list[tuple[Path, dict]], float]:
    """The reference and targets 1..n in ``folder`` (a date whose file and spec in ``truth.json``
    are already there is reused); returns (reference, [(target, spec)], seconds spent building)."""
    from rasterio.transform import Affine

    folder.mkdir(parents=True, exist_ok=True)
    truth_file = folder / "truth.json"
    truth = json.loads(truth_file.read_text()) if truth_file.exists() else {}
    ref = folder / f"{REFERENCE_DATE}.tif"
    specs = [date_spec(k) for k in range(1, n + 1)]
    todo = [s for s in specs if truth.get(s["name"]) != s or not (folder / f"{s['name']}.tif").exists()]
    t = time.perf_counter()
    if not ref.exists() or todo:
        base = mosaic(data, "before")
        if not ref.exists():
            write(ref, base, Affine(RES, 0, ORIGIN[0], 0, -RES, ORIGIN[1]))
            print(f"  built the reference {ref.name}", flush=True)
        for s in todo:
            path = folder / f"{s['name']}.tif"
            path.unlink(missing_ok=True)
            dx, dy = s["shift_m"]
            write(path, target_data(base, s), Affine(RES, 0, ORIGIN[0] + dx, 0, -RES, ORIGIN[1] + dy))
            truth[s["name"]] = s
            truth_file.write_text(json.dumps(truth, indent=1))
            print(f"  built {path.name} ({time.perf_counter() - t:.0f} s so far)", flush=True)
        del base
    return ref, [(folder / f"{s['name']}.tif", s) for s in specs], time.perf_counter() - t


def tree_cost(cmd: list[str], timeout: int, env=None) -> dict:
    """Wall seconds, CPU seconds (user + system) of ``cmd``'s whole process tree, as the kernel
    accounts them for waited-for children, and its peak resident memory (the sum over the tree's
    live processes, sampled) with the largest CPU sum sampled (a check that the kernel's figure
    holds every worker: a process not waited for would be missing from it) and its main process's
    share (the rest is its workers')."""
    import psutil

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    peak, seen, stop = [0.0], {}, threading.Event()

    def poll():
        root = psutil.Process(p.pid)
        while not stop.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                break
            rss = 0
            for q in procs:
                try:
                    rss += q.memory_info().rss
                    c = q.cpu_times()
                    seen[q.pid] = c.user + c.system
                except psutil.Error:
                    pass
            peak[0] = max(peak[0], rss / 2 ** 20)
            stop.wait(POLL_S)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        err += f"\nstopped after {timeout} s"
    stop.set()
    watcher.join()
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"rc": p.returncode, "wall_s": wall, "cpu_s": cpu, "cpu_sampled_s": sum(seen.values()),
            "cpu_sampled_main_s": seen.get(p.pid, 0.0),
            "processes": len(seen), "peak_mb": peak[0], "stdout": out, "stderr": err}


def run_stack(ref: Path, targets: list[tuple[Path, dict]], out: Path, timeout: int) -> dict:
    """``coregister.py --stack`` on the reference and ``targets`` into a fresh ``out`` (no earlier
    run's cache); its cost, and each target's estimate against its truth."""
    import csv

    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, str(ROOT / "coregister.py"), "--stack", str(ref), *(str(p) for p, _ in targets),
           "--reference", str(ref), "--output", str(out)]
    cost = tree_cost(cmd, timeout)
    if cost["rc"] not in (0, 1):
        raise SystemExit(f"the stack failed (rc {cost['rc']}):\n{cost['stderr'][-3000:]}")
    rows = {Path(r["path"]).stem: r for r in csv.DictReader(open(out / "shifts.csv"))}
    pairs = list(csv.DictReader(open(out / "pairs.csv")))
    meta = json.loads((out / "stack.json").read_text())
    dates = []
    for path, spec in targets:
        r = rows[path.stem]
        est = None if r["status"] == "excluded" else [float(r["dx_m"]), float(r["dy_m"])]
        err = None if est is None else float(np.hypot(est[0] - spec["shift_m"][0], est[1] - spec["shift_m"][1]))
        dates.append({"date": path.stem, "truth_m": spec["shift_m"], "estimate_m": est, "error_m": err,
                      "sigma_m": None if est is None else float(r["sigma_m"]), "status": r["status"],
                      "reason": r["reason"] or None, "cloud": spec["cloud"], "corner": spec["corner"]})
    cost.pop("stdout")
    cost["stderr"] = cost["stderr"][-2000:]
    return {"command": " ".join(cmd), **cost, "targets": len(targets), "pairs": len(pairs),
            "pairs_verified": sum(p["verified"] == "True" for p in pairs), "timing": meta.get("timing"),
            "windows": meta.get("windows"), "dates": dates}


def arosics_pair(ref: Path, tgt: Path, truth, timeout: int) -> dict:
    """AROSICS's global COREG on one pair in a fresh process (``coregistration_full_tile.AROSICS``)."""
    from coregistration_full_tile import AROSICS

    cost = tree_cost([sys.executable, "-c", AROSICS.format(ref=str(ref), tgt=str(tgt))], timeout)
    lines = cost.pop("stdout").strip().splitlines()
    r = json.loads(lines[-1]) if cost["rc"] == 0 and lines else {"shift": None, "reason": cost["stderr"][-300:]}
    err = None if r.get("shift") is None else float(np.hypot(*(np.array(r["shift"]) - truth)))
    cost["stderr"] = cost["stderr"][-500:]
    return {**cost, "shift_m": r.get("shift"), "error_m": err, "reason": r.get("reason")}


def nominal_pairs(n: int, ref_pos: int = 0, neighbours: int = NEIGHBOURS) -> int:
    """Pairs a stack of ``n`` dates measures as ``coregister_stack`` plans them (before any extra
    pair for a date with too few verified ones): each date with ``neighbours`` on each side in time
    and with the reference (at position ``ref_pos`` in time)."""
    wanted = set()
    for k in range(n):
        for m in range(max(0, k - neighbours), min(n, k + neighbours + 1)):
            if m != k:
                wanted.add((min(k, m), max(k, m)))
        if k != ref_pos:
            wanted.add((min(k, ref_pos), max(k, ref_pos)))
    return len(wanted)


# ----------------------------------------------------------------------------- --profile
OTHER = "threads other than the worker's and the main one (Dask's event loops, OpenBLAS's, GDAL's: not attributed)"
def profile_child(args) -> int:
    """The stack of ``args.inputs`` (the reference first) in this process under a per-thread CPU
    stage clock, on an in-process Dask worker of one thread; prints one JSON line."""
    from profile_coregistration import REST, StageClock

    class ThreadCpuClock(StageClock):
        """``StageClock`` on every thread, in that thread's CPU seconds (``time.thread_time``)."""

        def __init__(self):
            self.local = threading.local()
            self.lock = threading.Lock()
            super().__init__()

        def _now(self):
            return time.thread_time()

        def _state(self):
            if not hasattr(self.local, "stack"):
                self.local.stack, self.local.t = [REST], time.thread_time()
            return self.local

        def _timed_here(self):
            return True

        def _add(self, stage, seconds):
            with self.lock:
                self.seconds[stage] += seconds

    clock = ThreadCpuClock()
    clock.hook_imports()
    cpu0 = time.process_time()
    import s2coreg.coregistration.stack as stack
    from dask.distributed import Client, LocalCluster

    clock.hook_stages()
    tasks = defaultdict(lambda: [0, 0.0])           # task → [calls, CPU s of its thread]
    for name in TASKS:
        fn = getattr(stack, name, None)
        if fn is None:                              # an engine without that task: its row is left out
            continue

        def timed(*a, _fn=fn, _name=name, **kw):
            t = time.thread_time()
            try:
                return _fn(*a, **kw)
            finally:
                tasks[_name][0] += 1
                tasks[_name][1] += time.thread_time() - t
        timed.__module__, timed.__qualname__, timed.__name__ = fn.__module__, fn.__qualname__, fn.__name__
        setattr(stack, name, timed)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        r = stack.coregister_stack(args.inputs, args.profile_out, reference=args.inputs[0], client=client,
                                   progress=False)
    stages = clock.totals()
    print(json.dumps({"stages": stages, "process_cpu_s": time.process_time() - cpu0,
                      "tasks": {k: {"calls": c, "cpu_s": s} for k, (c, s) in tasks.items()},
                      "placed": r["placed"], "pairs": len(r["pairs"]), "windows": r["windows"]}))
    return 0


def profile_stack(ref: Path, targets: list[tuple[Path, dict]], out: Path, timeout: int,
                  env: dict | None = None) -> dict:
    """``profile_child`` in a fresh process (``env``: variables set for it, beside this one's)."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, __file__, "--profile-child", "--profile-out", str(out), str(ref),
           *(str(p) for p, _ in targets)]
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                       env={**os.environ, **env} if env else None)
    lines = p.stdout.strip().splitlines()
    if p.returncode != 0 or not lines:
        raise SystemExit(f"the profiled stack failed:\n{p.stderr[-3000:]}")
    return {"wall_s": time.perf_counter() - t, "targets": len(targets), **json.loads(lines[-1])}


def profile_table(prof: dict) -> list[str]:
    from profile_coregistration import REST, STAGES

    stages = dict(prof["stages"])
    imports = sum(v for k, v in stages.items() if k.startswith("imports"))
    stages = {k: v for k, v in stages.items() if not k.startswith("imports")}
    stages["imports"] = imports
    other = max(prof["process_cpu_s"] - sum(stages.values()), 0.0)
    stages[OTHER] = other
    total = sum(stages.values())
    lines = ["| stage | CPU s | share |", "|---|---|---|"]
    for s in [*STAGES, REST, OTHER]:
        if s in stages:
            lines.append(f"| {s} | {stages[s]:.1f} | {100 * stages[s] / total:.0f} % |")
    lines.append(f"| **the process's CPU** | **{total:.1f}** | 100 % |")
    return lines


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=Path, default=Path("/tmp/tileyear/dates"),
                        help="the dates are written here once and reused (~0.7 GB a date)")
    parser.add_argument("--dates", type=int, default=6, help="targets beside the reference (at least 2)")
    parser.add_argument("--data", type=Path, default=config.SHARED_DATA_DIR, help="OMBRIA's chips for the mosaic")
    parser.add_argument("--work", type=Path, default=None, help="the runs' outputs (default: KEEP/../runs)")
    parser.add_argument("--no-arosics", action="store_true", help="leave AROSICS's pair out")
    parser.add_argument("--profile", action="store_true", help="also profile a stack by stage (slow: one core)")
    parser.add_argument("--profile-dates", type=int, default=2, help="targets in the profiled stack")
    parser.add_argument("--profile-env", action="append", default=[], metavar="VAR=VALUE",
                        help="with --profile: profile again with this variable set, beside the plain profile "
                             "(e.g. OPENBLAS_NUM_THREADS=1: numpy's BLAS on the worker's own thread); repeatable")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds each run may take")
    parser.add_argument("--country-tiles", type=int, default=COUNTRY[1], help=f"{COUNTRY[0]}: {COUNTRY[2]}")
    parser.add_argument("--continent-tiles", type=int, default=CONTINENT[1], help=f"{CONTINENT[0]}: {CONTINENT[2]}")
    parser.add_argument("--price", type=float, default=PRICE[0], help=PRICE[1])
    parser.add_argument("--output", type=Path, default=config.RESULTS_DIR / "stack_tile_year.json", help="the JSON")
    parser.add_argument("--profile-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("inputs", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.profile_child:
        return profile_child(args)
    if args.dates < 2:
        parser.error("--dates: at least 2 (a date's cost is the difference of two stacks)")
    work = args.work or args.keep.parent / "runs"
    load = os.getloadavg()
    report = {"run": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": f"{os.cpu_count()} cores, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
                         "(1 / 5 / 15 min) at the start"}
    print(f"{report['run']}, {report['machine']}", flush=True)
    ref, targets, built = build_stack(args.data, args.keep, max(args.dates, args.profile_dates if args.profile else 0))
    report["build_s"] = round(built, 1)
    print(f"dates in {args.keep}: the reference and {len(targets)} targets ({built:.0f} s building, not counted)",
          flush=True)
    n = args.dates
    one = run_stack(ref, targets[:1], work / "stack_1", args.timeout)
    print(f"stack of the reference + 1 target: {one['cpu_s']:.0f} CPU s, {one['wall_s']:.0f} s wall", flush=True)
    full = run_stack(ref, targets[:n], work / f"stack_{n}", args.timeout)
    print(f"stack of the reference + {n} targets: {full['cpu_s']:.0f} CPU s, {full['wall_s']:.0f} s wall", flush=True)
    report["stack_1"], report[f"stack_{n}"] = one, full
    for run in (one, full):
        if run["cpu_sampled_s"] > 1.05 * run["cpu_s"]:
            print(f"  warning: the sampled CPU ({run['cpu_sampled_s']:.0f} s) exceeds the kernel's "
                  f"({run['cpu_s']:.0f} s): a process was not waited for; the sampled figure is used", file=sys.stderr)
            run["cpu_s"] = run["cpu_sampled_s"]
    m = (full["cpu_s"] - one["cpu_s"]) / (n - 1)
    year_s = one["cpu_s"] + (YEAR - 2) * m
    per_date = {"added_to_a_stack_s": m, "share_of_a_tile_year_s": year_s / YEAR, "as_run_s": full["cpu_s"] / n}
    pairs_run = (full["pairs"] - one["pairs"]) / (n - 1)
    pairs_year = (nominal_pairs(YEAR, YEAR // 2) - 1) / (YEAR - 2)
    cost = {"pairs_per_added_date_run": pairs_run, "pairs_per_added_date_year": pairs_year}
    if args.profile:
        prof = profile_stack(ref, targets[:args.profile_dates], work / "stack_profiled", args.timeout)
        report["profile"] = prof
        for setting in args.profile_env:
            var, _, value = setting.partition("=")
            report.setdefault("profile_with", {})[setting] = profile_stack(
                ref, targets[:args.profile_dates], work / "stack_profiled_env", args.timeout, {var: value})
        t = prof["tasks"]
        if all(k in t and t[k]["calls"] for k in ("task_locate", "task_extract", "task_pair")):
            own = (t["task_locate"]["cpu_s"] + t["task_extract"]["cpu_s"]) / t["task_extract"]["calls"]
            pair = t["task_pair"]["cpu_s"] / t["task_pair"]["calls"]
            # m = e + q·c with c = pair/own·e (the profile's ratio): a date added to a 70-date stack
            e = m / (1 + pairs_run * pair / own)
            m_year = e * (1 + pairs_year * pair / own)
            cost.update(pair_over_date=pair / own, added_to_a_stack_year_s=m_year)
            year_s = one["cpu_s"] + (YEAR - 2) * m_year
            per_date["share_of_a_tile_year_s"] = year_s / YEAR
    year_h = year_s / 3600
    scale = {"tile_year_core_hours": year_h,
             "country": {"name": COUNTRY[0], "tiles": args.country_tiles, "source": COUNTRY[2],
                         "core_hours": year_h * args.country_tiles},
             "continent": {"name": CONTINENT[0], "tiles": args.continent_tiles, "source": CONTINENT[2],
                           "core_hours": year_h * args.continent_tiles},
             "price_per_core_hour": {"usd": args.price, "assumption": PRICE[1]}}
    report.update(per_date_cpu_s=per_date, pairs=cost, scale=scale)
    truth1 = np.array(targets[0][1]["shift_m"])
    if not args.no_arosics:
        try:
            import arosics  # noqa: F401
            report["arosics_global_pair"] = arosics_pair(ref, targets[0][0], truth1, args.timeout)
        except ImportError:
            print("AROSICS is not installed: its row is skipped", file=sys.stderr)
    from s2coreg.utils import write_json

    write_json(args.output, report)

    # ---------------------------------------------------------------- the tables
    print(f"\n## A stack of the reference and {n} full-size dates (10980², 3 bands), `coregister.py --stack`\n")
    print("| date | truth dx, dy (m) | estimate (m) | error at the centre | status | cloud | no-data corner |")
    print("|---|---|---|---|---|---|---|")
    for d in full["dates"]:
        est = "—" if d["estimate_m"] is None else f"{d['estimate_m'][0]:+.2f}, {d['estimate_m'][1]:+.2f}"
        err = "—" if d["error_m"] is None else f"{d['error_m']:.2f} m"
        status = d["status"] + (f" ({d['reason']})" if d["reason"] else "")
        print(f"| {d['date']} | {d['truth_m'][0]:+.2f}, {d['truth_m'][1]:+.2f} | {est} | {err} | {status} | "
              f"{d['cloud']:.0%} | {d['corner']:.0%} |")
    print("\n| run | CPU s (process tree) | of which the main process | wall s | peak memory (tree) | pairs (verified) |"
          "\n|---|---|---|---|---|---|")
    for name, run in (("reference + 1 target", one), (f"reference + {n} targets", full)):
        print(f"| {name} | {run['cpu_s']:.0f} | {run['cpu_sampled_main_s']:.0f} | {run['wall_s']:.0f} | "
              f"{run['peak_mb'] / 1024:.2f} GiB | {run['pairs']} ({run['pairs_verified']}) |")
    a = report.get("arosics_global_pair")
    if a:
        err = "—" if a["error_m"] is None else f"{a['error_m']:.2f} m"
        print(f"| AROSICS COREG (global), one pair | {a['cpu_s']:.1f} | — | {a['wall_s']:.1f} | "
              f"{a['peak_mb'] / 1024:.2f} GiB | error {err} |")
    print(f"\ncore-seconds a date: {m:.0f} added to a stack (its once-per-stack cost excluded); "
          f"{per_date['share_of_a_tile_year_s']:.0f} as its share of a {YEAR}-date tile-year (that cost included); "
          f"{per_date['as_run_s']:.0f} as run ({n} targets)" + (f"; AROSICS global: {a['cpu_s']:.1f} a date" if a else ""))
    if "pair_over_date" in cost:
        print(f"pairs a date added: {pairs_run:.2f} in this run, {pairs_year:.2f} in a {YEAR}-date stack; a pair costs "
              f"{cost['pair_over_date']:.2f}× a date's own work (profiled) → {cost['added_to_a_stack_year_s']:.0f} "
              f"core-s a date added to a {YEAR}-date stack")
    else:
        print(f"pairs a date added: {pairs_run:.2f} in this run, {pairs_year:.2f} in a {YEAR}-date stack "
              "(not corrected for: --profile gives a pair's cost)")
    print(f"a {YEAR}-date tile-year: {year_h:.2f} core-hours (target ≤ 0.3)"
          + (f"; AROSICS global: {YEAR * a['cpu_s'] / 3600:.2f}" if a else ""))
    for key in ("country", "continent"):
        s = scale[key]
        print(f"{s['name']} ({s['tiles']} tiles: {s['source']}): {s['core_hours']:,.0f} core-hours a year, "
              f"${s['core_hours'] * args.price:,.0f} on a Dask cluster at ${args.price}/core-hour")
    if args.profile:
        prof = report["profile"]
        print(f"\n## Where a stack's time goes (the reference + {prof['targets']} targets, one worker thread, "
              f"{prof['pairs']} pairs; CPU s by stage)\n")
        print("\n".join(profile_table(prof)))
        print("\n| task | calls | CPU s a call |\n|---|---|---|")
        for k, v in prof["tasks"].items():
            print(f"| {k} | {v['calls']} | {v['cpu_s'] / max(v['calls'], 1):.1f} |")
        for setting, other in report.get("profile_with", {}).items():
            rest = other["process_cpu_s"] - sum(other["stages"].values())
            print(f"with {setting}: the process's CPU {other['process_cpu_s']:.1f} s (plain: {prof['process_cpu_s']:.1f}), "
                  f"of which other threads {max(rest, 0):.1f} s")
    print(f"\nresults → {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
