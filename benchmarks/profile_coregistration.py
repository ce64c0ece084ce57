"""Where a co-registration's time goes: a full tile and a small pair's whole process, by stage,
beside AROSICS's time in the same run.

    python benchmarks/profile_coregistration.py [--full-tile DIR] [--pair-only] [--repeats 5] [--no-arosics]

(a) **Full tile**: ``coregister REF TGT`` on the 10980² tiles of ``benchmarks/coregistration_full_tile.py``
(built into DIR once, as its ``--keep DIR`` does, and reused), profiled in a fresh process; then
the same command without the profiler and AROSICS's global COREG, each in a fresh process (wall
time and the process's CPU time, user + system, from ``resource.getrusage(RUSAGE_CHILDREN)``).
(b) **A 256² pair's whole process**: ``python coregister.py A B`` on 256² windows cut from two
real Lake Bracciano dates (``s2coreg.samples.DATA``), profiled once, then its CPU time (median of
``--repeats``) beside AROSICS's ``COREG`` in a subprocess on the same pair, interleaved. Our
command runs twice: with its bytecode cached (as ``pip install`` leaves a package: the children
get a ``PYTHONPYCACHEPREFIX`` in a temporary folder, warmed once) and as the environment runs it
(``PYTHONDONTWRITEBYTECODE`` set here: the package compiled from source at every start), and
with ``--matcher fast`` (the learned path on every window, as a stack runs: torch loaded; the
pair's default before sift-first, whose learned path loads only where SIFT does not answer).

The profile is cProfile's (the process's main thread; imports included: the profiler starts
before the command's first import), grouped into stages by the functions that run them, each
call's time given to the innermost stage running (``STAGES``), except that everything under
locating the dates on the overviews is locating (its reads, extraction and matching), and an
import is an import wherever it happens (named by the top-level package of the module being
imported, innermost: torch importing numpy counts numpy's time as numpy's). Seconds are under the profiler (it slows Python-heavy
code more than torch's kernels); the shares are what to compare.
"""
from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import s2coreg.config as config  # noqa: E402

PAIR_SIDE = 256
PAIR_DATES = ("20160718", "20180610")       # s2coreg.samples.DATA / "bracciano": the same grid, two years apart

# stage → the functions that run it ("module:attribute" or "module:Class.method")
STAGES = {
    "imports": [],            # importlib's _find_and_load (below), by the package imported (innermost)
    "opening the inputs": ["s2coreg.coregistration.engine:open_date"],
    "loading the models": ["s2coreg.matching.pipeline:MatchingPipeline.from_checkpoints",
                           "s2coreg.matching.pipeline:CascadePipeline.from_checkpoints"],
    "locating the dates on overviews": ["s2coreg.coregistration.engine:reference_overview",
                                        "s2coreg.coregistration.engine:locate_date"],
    "reading and warping windows": ["s2coreg.coregistration.engine:read_date"],
    "SuperPoint extraction": ["s2coreg.matching.pipeline:SuperPointExtractor.extract",
                              "s2coreg.matching.pipeline:MatchingPipeline.extract"],
    "matcher (SuperGlue / MNN)": [],                                 # every registered Matcher's match (below)
    "fine head, correlation, RANSAC": ["s2coreg.matching.pipeline:MatchingPipeline.match_features",
                                       "s2coreg.matching.pipeline:MatchingPipeline.verify"],
    "dense refinement": ["s2coreg.coregistration.engine:refine_translation"],
    "writing outputs (JSON, tie points, field, report.png)": ["s2coreg.coregistration.pair:write_outputs"],
}
ABSORBING = {"locating the dates on overviews"}
REST = "the rest"


class StageClock:
    """Exclusive wall time per stage on the main thread: a call's time goes to the innermost
    stage running (an absorbing stage keeps everything under it but imports). A subclass may
    time other threads or another clock by overriding ``_now``, ``_state``, ``_timed_here`` and
    ``_add`` (``stack_tile_year.py``'s per-thread CPU clock)."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.stack = [REST]
        self.t = self._now()
        self.main = threading.get_ident()
        self.planned = None

    def _now(self) -> float:
        return time.perf_counter()

    def _state(self):
        """What holds the running ``stack`` of stages and the time ``t`` of the last switch."""
        return self

    def _timed_here(self) -> bool:
        return threading.get_ident() == self.main

    def _add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] += seconds

    def _switch(self, push: str | None):
        st, now = self._state(), self._now()
        self._add(st.stack[-1], now - st.t)
        st.t = now
        if push is None:
            st.stack.pop()
        else:
            top = st.stack[-1]
            if (top.startswith("imports") or top in ABSORBING) and not push.startswith("imports"):
                push = top                  # an import's own work, whatever it runs; locating's reads
            st.stack.append(push)

    def wrap(self, fn, stage: str | None):
        """``fn`` timed as ``stage`` (None: an import, named by its top-level package)."""
        def timed(*args, **kwargs):
            if not self._timed_here():
                return fn(*args, **kwargs)
            self._switch(stage or f"imports: {str(args[0]).partition('.')[0]}")
            try:
                return fn(*args, **kwargs)
            finally:
                self._switch(None)
        timed.__wrapped__ = fn
        return timed

    def hook_imports(self):
        import _frozen_importlib as boot          # what the import statement calls (importlib._bootstrap)

        boot._find_and_load = self.wrap(boot._find_and_load, None)

    def hook_stages(self):
        import importlib

        from s2coreg.matching.pipeline import MATCHERS

        for stage, names in STAGES.items():
            for name in names:
                module, _, attr = name.partition(":")
                owner = importlib.import_module(module)
                *classes, fn = attr.split(".")
                for c in classes:
                    owner = getattr(owner, c)
                raw = owner.__dict__[fn]
                if isinstance(raw, classmethod):
                    setattr(owner, fn, classmethod(self.wrap(raw.__func__, stage)))
                else:
                    setattr(owner, fn, self.wrap(raw, stage))
        for cls in set(MATCHERS.values()):
            if "match" in cls.__dict__:
                cls.match = self.wrap(cls.__dict__["match"], "matcher (SuperGlue / MNN)")
        import s2coreg.coregistration.engine as engine

        plan = engine.plan_windows

        def planned(*args, **kwargs):
            out = plan(*args, **kwargs)
            self.planned = len(out)
            return out
        engine.plan_windows = planned

    def totals(self) -> dict[str, float]:
        self._switch(REST)          # close the running stretch
        self._state().stack.pop()
        return dict(self.seconds)


def child(args) -> int:
    """Run ``coregister`` on ``args.inputs`` in this process under cProfile and the stage clock;
    print one JSON line: the stages, the total, the windows, the top functions."""
    clock = StageClock()
    prof = cProfile.Profile()
    clock.hook_imports()
    start = time.perf_counter()
    prof.enable()
    from s2coreg import commands
    import s2coreg.coregistration.pair  # noqa: F401  (imported by the command anyway; hooked before it runs)

    clock.hook_stages()
    ref, tgt, out = args.inputs
    argv = [ref, tgt, "--output", out] + (["--matcher", args.matcher] if args.matcher else [])
    rc = commands.run("coregister", argv)
    prof.disable()
    total = time.perf_counter() - start
    stages = clock.totals()
    if args.profile_file:
        prof.dump_stats(args.profile_file)
    stats = pstats.Stats(prof)
    top = sorted(((v[2], f"{Path(k[0]).name}:{k[1]}({k[2]})") for k, v in stats.stats.items()), reverse=True)[:12]
    result = json.loads((Path(out) / "coregistration.json").read_text()) if rc in (0, 1) else {}
    print(json.dumps({"rc": rc, "total_s": total, "stages": stages, "planned_windows": clock.planned,
                      "windows": result.get("windows"), "shift_m": result.get("shift_m"),
                      "top_own_time": [[round(s, 3), name] for s, name in top]}))
    return 0


def run_child(inputs, out_json: dict | None = None, matcher: str | None = None, profile_file: Path | None = None,
              env=None, timeout: int = 1800) -> dict:
    cmd = [sys.executable, __file__, "--child", *map(str, inputs)]
    if matcher:
        cmd += ["--matcher", matcher]
    if profile_file:
        cmd += ["--profile-file", str(profile_file)]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)
    lines = p.stdout.strip().splitlines()
    if p.returncode != 0 or not lines:
        raise SystemExit(f"the profiled run failed:\n{p.stderr[-3000:]}")
    return json.loads(lines[-1])


def process_cost(cmd: list[str], env=None, timeout: int = 1800) -> dict:
    """Wall seconds and CPU seconds (user + system) of ``cmd`` in a fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd[:3])} … failed:\n{p.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "stdout": p.stdout.strip().splitlines()[-1:]}


def arosics_cmd(ref, tgt) -> list[str]:
    from coregistration_full_tile import AROSICS

    return [sys.executable, "-c", AROSICS.format(ref=str(ref), tgt=str(tgt))]


def ours_cmd(ref, tgt, out, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "coregister.py"), str(ref), str(tgt), "--output", str(out), *extra]


def stage_table(run: dict, packages: int = 7) -> list[str]:
    """The stages as a markdown table; imports in all, then the ``packages`` costliest by name."""
    stages = dict(run["stages"])
    imports = {k.partition(": ")[2]: v for k, v in stages.items() if k.startswith("imports")}
    stages = {k: v for k, v in stages.items() if not k.startswith("imports")}
    stages["imports"] = sum(imports.values())
    total = sum(stages.values())
    order = [s for s in [*STAGES, REST] if s in stages]
    lines = ["| stage | seconds | share |", "|---|---|---|"]
    for s in order:
        lines.append(f"| {s} | {stages[s]:.2f} | {100 * stages[s] / total:.0f} % |")
        if s == "imports":
            top = sorted(imports.items(), key=lambda kv: -kv[1])
            shown = top[:packages]
            rest = sum(v for _, v in top[packages:])
            lines += [f"| &nbsp;&nbsp;of which {k} | {v:.2f} | {100 * v / total:.0f} % |" for k, v in shown]
            lines.append(f"| &nbsp;&nbsp;of which the others ({len(top) - len(shown)}) | {rest:.2f} | "
                         f"{100 * rest / total:.0f} % |")
    lines.append(f"| **total (under the profiler)** | **{total:.2f}** | 100 % |")
    return lines


def window_line(run: dict) -> str:
    w = run.get("windows") or {}
    planned = run.get("planned_windows")
    used, rejected = w.get("used", 0), w.get("rejected", 0)
    reasons = "; ".join(f"{k}: {v}" for k, v in (w.get("reasons") or {}).items())
    skipped = (planned - used - rejected) if planned is not None else None
    return (f"windows: {planned} planned, {used} used, {rejected} rejected" + (f" ({reasons})" if reasons else "")
            + (f", {skipped} not matched (too little valid area or no keypoint on a date)" if skipped else ""))


def cut_pair(folder: Path) -> tuple[Path, Path]:
    """256² windows of two real dates (the same grid), as 3-band GeoTIFFs in ``folder``."""
    import rasterio
    from rasterio.windows import Window

    from s2coreg.samples import DATA

    out = []
    for d in PAIR_DATES:
        path = folder / f"{d}_{PAIR_SIDE}.tif"
        with rasterio.open(DATA / "bracciano" / f"{d}.tif") as src:
            w = Window(30, 30, PAIR_SIDE, PAIR_SIDE)
            profile = dict(src.profile, width=PAIR_SIDE, height=PAIR_SIDE, transform=src.window_transform(w))
            with rasterio.open(path, "w", **profile) as dst:
                dst.write(src.read(window=w))
                dst.descriptions = src.descriptions
        out.append(path)
    return out[0], out[1]


def pair_case(work: Path, repeats: int, arosics: bool) -> dict:
    ref, tgt = cut_pair(work)
    out = work / "pair_out"
    prof = run_child([ref, tgt, out])
    cache = work / "pycache"
    env_cached = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env_cached["PYTHONPYCACHEPREFIX"] = str(cache)
    process_cost(ours_cmd(ref, tgt, out), env_cached)          # warm the bytecode cache
    runs = defaultdict(list)
    for _ in range(repeats):                                    # interleaved: the load beside moves all alike
        runs["ours"].append(process_cost(ours_cmd(ref, tgt, out), env_cached))
        runs["ours, bytecode not cached"].append(process_cost(ours_cmd(ref, tgt, out)))
        # the learned path on every window (a stack's matcher; a pair's default until sift-first): torch loaded
        runs["ours, --matcher fast"].append(process_cost(ours_cmd(ref, tgt, out, "--matcher", "fast"), env_cached))
        if arosics:
            runs["AROSICS COREG"].append(process_cost(arosics_cmd(ref, tgt)))
    med = {k: {"cpu_s": statistics.median(r["cpu_s"] for r in v), "wall_s": statistics.median(r["wall_s"] for r in v),
               "cpu_all": [round(r["cpu_s"], 2) for r in v]} for k, v in runs.items()}
    return {"profile": prof, "processes": med}


def tile_case(folder: Path, work: Path, data: Path, arosics: bool) -> dict:
    from coregistration_full_tile import build_tiles

    ref, tgt, *_ = build_tiles(data, folder)
    out = work / "tile_out"
    prof = run_child([ref, tgt, out], profile_file=work / "full_tile.prof")
    procs = {"ours": process_cost(ours_cmd(ref, tgt, out))}
    if arosics:
        procs["AROSICS COREG (global)"] = process_cost(arosics_cmd(ref, tgt))
    return {"profile": prof, "processes": procs}


def print_case(title: str, case: dict) -> None:
    prof = case["profile"]
    print(f"\n## {title}\n")
    print("\n".join(stage_table(prof)))
    print(f"\n{window_line(prof)}; shift {prof.get('shift_m') and {k: round(v, 3) for k, v in prof['shift_m'].items() if isinstance(v, float)}}")
    print("\nfunctions with the most own time (profiled):")
    for s, name in prof["top_own_time"][:8]:
        print(f"  {s:7.3f} s  {name}")
    print("\n| process | CPU s (user + system) | wall s |\n|---|---|---|")
    for k, v in case["processes"].items():
        extra = f" (runs: {', '.join(map(str, v['cpu_all']))})" if "cpu_all" in v else ""
        print(f"| {k} | {v['cpu_s']:.2f}{extra} | {v['wall_s']:.2f} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full-tile", type=Path, default=None,
                        help="the full-tile benchmark's tiles (built here once if missing; default: a temporary folder)")
    parser.add_argument("--data", type=Path, default=config.SHARED_DATA_DIR, help="OMBRIA's chips for the tile")
    parser.add_argument("--pair-only", action="store_true", help="only the 256² pair")
    parser.add_argument("--repeats", type=int, default=5, help="whole-process runs of the pair (median)")
    parser.add_argument("--no-arosics", action="store_true")
    parser.add_argument("--output", type=Path, default=config.RESULTS_DIR / "profile_coregistration.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--matcher", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--profile-file", default=None, help=argparse.SUPPRESS)
    parser.add_argument("inputs", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    arosics = not args.no_arosics
    if arosics:
        try:
            import arosics as _  # noqa: F401
        except ImportError:
            print("AROSICS is not installed: its rows are skipped", file=sys.stderr)
            arosics = False
    results = {"machine": f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at the start"}
    with tempfile.TemporaryDirectory(prefix="profile_coreg_") as tmp:
        work = Path(tmp)
        results["pair_256"] = pair_case(work, args.repeats, arosics)
        print_case(f"A {PAIR_SIDE}² pair's whole process (python coregister.py A B)", results["pair_256"])
        if not args.pair_only:
            results["full_tile"] = tile_case(args.full_tile or work / "tile", work, args.data, arosics)
            print_case("A full tile (10980², 3 bands)", results["full_tile"])
    from s2coreg.utils import write_json

    write_json(args.output, results)
    print(f"\nresults → {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
