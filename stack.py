"""Co-register a whole stack of dates jointly, as Dask tasks: ``coregister.py --stack``.

    python coregister.py --stack DATES... [--reference auto|PATH] --output DIR [--scheduler tcp://HOST:8786]

DATES: files, folders or globs. A folder of ``.SAFE`` products, STAC Items or dated rasters holds
one date each; a folder of one date's band files (``B02.tif``, ``B03.tif``, ``B04.tif``) is one
date; a folder of such folders (``imgs_1/``, ``imgs_2/``) is one date a sub-folder.

The same engine as a pair (``coreg_engine.py``; a pair is a stack of two): every date is read on
one grid (the first input's, or ``--reference PATH``'s), each at its own coarse offset, in the
same windows, and its features are extracted once (one task per date). Pairs are then measured
window by window (one task per pair): every date against its neighbours in time
(``--neighbours`` on each side) and the reference and, where a date has too few verified pairs,
against more distant dates. Each pair gives a displacement with its calibrated standard error and
its warnings. A robust weighted least-squares adjustment over the pair graph then places every
date: ``x_j − x_i = d_ij`` for every verified pair, the reference fixed at 0, Cauchy-reweighted so
that inconsistent pairs lose their weight (their residuals, the loop-closure errors, are reported).
A date that cannot be matched to the reference directly is placed through its neighbours; a date
that joins no pair with the reference's part of the graph is excluded with the reason.

Outputs in DIR (the earlier run's replaced as a whole): ``shifts.csv`` (a row a date: absolute
path, item id, date, dx_m, dy_m, sigma_m, status ``reference`` / ``ok`` / ``excluded``, reason,
warnings), ``pairs.csv``, ``stack.json`` (reference, timing, provenance), ``report.png`` (shifts
over time, the reference marked) and with ``--write-corrected`` ``corrected/``: every placed
date's files with their georeference moved by its correction in their own CRS (COGs with the
provenance as tags) and ``stack.geojson``, a STAC ItemCollection of them (geometry, bbox,
``proj:`` fields, links).

Dask: by default a ``LocalCluster`` with one single-threaded worker process per core (torch then
never oversubscribes); ``--scheduler`` runs the same tasks on an existing cluster, whose scheduler
and workers must import this repository (``PYTHONPATH=/path/to/repo dask scheduler`` and
``PYTHONPATH=/path/to/repo dask worker tcp://HOST:8786 --nworkers N --nthreads 1``; the
checkpoints are read from the repository's ``model_checkpoints/`` on each worker). From a plain
Python script, ``coregister_stack`` works without an ``if __name__ == "__main__":`` guard: the
LocalCluster's workers are started without running the script again. A failing product is
reported and the others go on; Dask retries a task whose worker died.
"""
from __future__ import annotations

import contextlib
import functools
import glob
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import coreg_engine as engine
import data_preprocess as dp
from config import CoregisterConfig
from coreg_engine import DateFeatures, PairMeasure
from utils import PipelineError, set_threads, write_json

STACK_OUTPUTS = engine.RESULT_NAMES        # a rerun replaces any earlier result of ours, pair or stack
_PIPELINE = None      # one matching pipeline per worker process, loaded on its first task


def worker_pipeline():
    """The matching pipeline of this process (loaded once; one torch thread per worker)."""
    global _PIPELINE
    if _PIPELINE is None:
        from matching import MatchingPipeline

        set_threads(1)
        _PIPELINE = MatchingPipeline.from_checkpoints(device="cpu")
    return _PIPELINE


# ----------------------------------------------------------------------------- inputs
def _is_band_file(p: Path) -> bool:
    return bool(re.search(r"(?:^|_)(B\d[\dA])(?:_\d\dm)?$", p.stem))


def _dates_in_folder(folder: Path) -> list:
    """The dates a folder holds (each a path, or a list of one date's band files)."""
    safes = sorted(p for p in folder.iterdir() if dp.is_safe(p))
    items = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".json")
    rasters = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".tif", ".tiff", ".jp2"))
    out: list = [*safes, *items]
    if rasters:
        by_date: dict[str, list[Path]] = {}
        for r in rasters:
            found = re.search(r"(20\d{6})", r.name)
            by_date.setdefault(found.group(1) if found else f"#{r.name}", []).append(r)
        dated = [k for k in by_date if not k.startswith("#")]
        if len(dated) >= 2:                               # dated files: one date per date in the names
            out += [files if len(files) > 1 else files[0] for _, files in sorted(by_date.items())]
        elif all(_is_band_file(r) for r in rasters):       # one date's band files
            out.append(folder)
        else:                                              # rasters of their own (multi-band)
            out += rasters
    if not out:                                            # a folder of date folders (imgs_1/, imgs_2/)
        out = [d for d in sorted(folder.iterdir()) if d.is_dir() and any(
            q.suffix.lower() in (".tif", ".tiff", ".jp2") for q in d.iterdir())]
    return out


def expand_inputs(inputs: list) -> list:
    """Files, folders and globs → the stack's dates, in the order given (each a path, or a list
    of one date's band files)."""
    out: list = []
    for item in inputs:
        if isinstance(item, (list, tuple)):
            out.append([Path(p) for p in item])
            continue
        item = str(item)
        matches = sorted(glob.glob(item)) if any(ch in item for ch in "*?[") else [item]
        for m in matches:
            p = Path(m)
            out += _dates_in_folder(p) if p.is_dir() and not dp.is_safe(p) else [p]
    return out


def _label(date) -> str:
    """A date's path as one string (a list of band files: their folder)."""
    if isinstance(date, (list, tuple)):
        return str(Path(date[0]).parent.resolve())
    return engine.input_label(date)


# ----------------------------------------------------------------------------- tasks
@dataclass
class TaskError:
    """A task's bad input (a ``PipelineError``), returned as a value: reported once with the date,
    not retried, no worker traceback in the log."""

    message: str


def reports_bad_input(task):
    """A task that returns its ``PipelineError`` as a ``TaskError`` instead of raising it (Dask
    would log the traceback on the worker and retry a failure that cannot change)."""
    @functools.wraps(task)
    def run(*args, **kwargs):
        try:
            return task(*args, **kwargs)
        except PipelineError as exc:
            return TaskError(str(exc))
    return run


@reports_bad_input
def task_overview(path, bands: list[str], grid: dp.Grid, cfg: CoregisterConfig) -> engine.Overview:
    """Task: the reference grid product's overview and its features."""
    product = engine.open_date(path, "reference", tuple(bands))
    return engine.reference_overview(worker_pipeline(), product, bands, grid, cfg)


@reports_bad_input
def task_locate(path, bands: list[str], grid: dp.Grid, overview: engine.Overview | None,
                cfg: CoregisterConfig) -> engine.DateLocation:
    """Task: a date's coarse offset and extent on the grid."""
    product = engine.open_date(path, "date", tuple(bands))
    return engine.locate_date(worker_pipeline(), path, product, bands, grid, overview, cfg)


@reports_bad_input
def task_extract(location: engine.DateLocation, grid: dp.Grid, windows, cfg: CoregisterConfig) -> DateFeatures:
    """Task: a date's windows read and their features extracted once."""
    product = engine.open_date(location.path, "date", tuple(location.bands))
    return engine.extract_date(worker_pipeline(), product, location, grid, windows, cfg)


def task_pair(i: int, j: int, a: DateFeatures, b: DateFeatures, cfg: CoregisterConfig, px_m: float) -> PairMeasure:
    """Task: two dates measured window by window (their tie points dropped: not needed here)."""
    pair = engine.measure_pair(worker_pipeline(), i, j, a, b, cfg, px_m)
    for w in pair.windows:
        w.tie_a = w.tie_b = w.score = np.zeros(0)
    return pair


# ----------------------------------------------------------------------------- adjustment
def adjust(n: int, pairs: list[PairMeasure], reference: int, iterations: int = 20) -> dict:
    """Robust weighted least squares of ``x_j − x_i = d_ij`` over the verified pairs, ``x_ref = 0``.

    Returns per date ``x`` (n, 2) px (NaN where not placed), ``sigma`` (n,), ``placed`` (n,) and per
    pair ``weight`` and ``residual`` (px). Cauchy weights on residuals normalised by each pair's
    sigma (scale 2.385): a pair inconsistent with the rest loses its weight.
    """
    ok = [p for p in pairs if p.verified]
    adj = {k: set() for k in range(n)}
    for p in ok:
        adj[p.i].add(p.j)
        adj[p.j].add(p.i)
    placed, todo = {reference}, [reference]
    while todo:
        for m in adj[todo.pop()]:
            if m not in placed:
                placed.add(m)
                todo.append(m)
    unknown = [k for k in range(n) if k in placed and k != reference]
    col = {k: c for c, k in enumerate(unknown)}
    use = [p for p in ok if p.i in placed and p.j in placed]
    x = np.full((n, 2), np.nan)
    x[reference] = 0.0
    sigma = np.full(n, np.nan)
    sigma[reference] = 0.0
    weights = {(p.i, p.j): 1.0 for p in use}
    residuals = {}
    if unknown and use:
        A = np.zeros((len(use), len(unknown)))
        for r, p in enumerate(use):
            if p.j in col:
                A[r, col[p.j]] += 1
            if p.i in col:
                A[r, col[p.i]] -= 1
        D = np.array([p.shift_px for p in use])
        s = np.array([p.sigma_px for p in use])
        w = np.ones(len(use))
        for _ in range(iterations):
            W = w / s ** 2
            N = A.T @ (A * W[:, None])
            sol = np.linalg.lstsq(N, A.T @ (D * W[:, None]), rcond=None)[0]       # (unknowns, 2)
            res = D - A @ sol
            u = np.linalg.norm(res, axis=1) / s
            w = 1 / (1 + (u / 2.385) ** 2)
        cov = np.linalg.pinv(A.T @ (A * (w / s ** 2)[:, None]))
        for k, c in col.items():
            x[k] = sol[c]
            sigma[k] = float(np.sqrt(max(cov[c, c], 0.0)))
        for r, p in enumerate(use):
            weights[(p.i, p.j)] = float(w[r])
            residuals[(p.i, p.j)] = float(np.linalg.norm(res[r]))
    return {"x": x, "sigma": sigma, "placed": np.array([k in placed for k in range(n)]),
            "weight": weights, "residual": residuals}


def choose_reference(dates: list[DateFeatures | None]) -> tuple[int, str]:
    """The date with the most keypoints over valid windows (most valid, cloud- and snow-free,
    textured area)."""
    scores = [(d.keypoints if d is not None else -1) for d in dates]
    k = int(np.argmax(scores))
    d = dates[k]
    return k, (f"most keypoints in valid windows: {d.keypoints} over {len(d.features)} of {len(d.windows)} windows "
               f"({d.valid_share:.0%} of their area valid)")


# ----------------------------------------------------------------------------- cluster
@contextlib.contextmanager
def workers_without_rerunning_main():
    """Start worker processes without running the caller's script again.

    Dask's LocalCluster starts its workers with multiprocessing's *spawn*, which runs the main
    script again in each (as ``__mp_main__``) — without an ``if __name__ == "__main__":`` guard
    that starts a cluster inside every worker. The workers need only this repository's modules
    (on ``sys.path``, which spawn passes on), so the main module's file and spec are hidden while
    they start, and restored after."""
    main = sys.modules.get("__main__")
    saved = {a: getattr(main, a) for a in ("__file__", "__spec__") if main is not None and hasattr(main, a)}
    try:
        if main is not None:
            if "__file__" in saved:
                del main.__file__
            main.__spec__ = None
        yield
    finally:
        if main is not None:
            for a, v in saved.items():
                setattr(main, a, v)


def start_client(scheduler: str | None, workers: int | None):
    from dask.distributed import Client, LocalCluster

    if scheduler:
        return Client(scheduler), None
    n = workers or len(os.sched_getaffinity(0))
    with workers_without_rerunning_main():
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None)
    return Client(cluster), cluster


def _gather(futures: dict, label: str, progress: bool, errors: dict, paths: list) -> dict:
    """Results of ``futures`` (key → future) as they finish; a failing one's error recorded."""
    from dask.distributed import as_completed
    from tqdm import tqdm

    by_key = {f.key: k for k, f in futures.items()}
    out = {}
    for fut in tqdm(as_completed(list(futures.values())), total=len(futures), desc=label, unit="date",
                    disable=not progress):
        k = by_key[fut.key]
        try:
            value = fut.result()
            if isinstance(value, TaskError):
                errors[k] = value.message
            else:
                out[k] = value
        except Exception as exc:       # a bad product is reported; the others go on
            errors[k] = str(exc) if isinstance(exc, PipelineError) else f"{_label(paths[k])}: {type(exc).__name__}: {exc}"
    return out


# ----------------------------------------------------------------------------- driver
def coregister_stack(inputs: list, output: str | Path | None = None, reference: str = "auto",
                     bands: tuple[str, ...] | None = None, cfg: CoregisterConfig | None = None,
                     scheduler: str | None = None, workers: int | None = None, neighbours: int = 2,
                     write_corrected: bool = False, progress: bool = True) -> dict:
    """Co-register every date of ``inputs`` jointly (see the module docstring); returns the rows of
    ``shifts.csv`` and ``pairs.csv`` and what the run was, and with ``output`` writes them."""
    cfg = cfg or CoregisterConfig()
    bands = engine.normalise_bands(bands) or tuple(cfg.bands)
    if output is not None:
        engine.OutputFolder(output, STACK_OUTPUTS).check()          # before any work
    paths = expand_inputs(inputs)
    start = time.time()
    ref_path = Path(reference) if reference != "auto" else None
    if ref_path is not None:
        same = [p for p in paths if not isinstance(p, list) and Path(p).resolve() == ref_path.resolve()]
        if same:
            ref_path = same[0]
        else:
            paths = [ref_path, *paths]
    if len(paths) < 2:
        raise PipelineError(f"{', '.join(map(str, inputs))}: a stack needs at least two dates (found {len(paths)})")
    errors: dict[int, str] = {}
    products: dict[int, dp.Product] = {}
    for k, p in enumerate(paths):
        try:
            products[k] = engine.open_date(p, "date", bands)
        except PipelineError as exc:
            errors[k] = str(exc)
    grid_k = paths.index(ref_path) if ref_path is not None else next(iter(products), None)
    if grid_k is None or grid_k not in products:
        raise PipelineError(errors.get(grid_k if grid_k is not None else 0, "no date of the stack can be opened"))
    keys = list(products)
    try:
        per_date = engine.common_bands([products[k] for k in keys], bands)
    except PipelineError:
        per_date = []
        for k in keys:
            try:
                per_date.append(engine.date_bands(products[k], bands))
            except PipelineError as exc:
                errors[k] = str(exc)
                per_date.append(None)
    date_bands = {k: b for k, b in zip(keys, per_date) if b is not None}
    if grid_k not in date_bands:
        raise PipelineError(errors[grid_k])
    grid = engine.grid_of(products[grid_k], date_bands[grid_k])
    px_m = engine.metres_per_px(grid)
    client, cluster = start_client(scheduler, workers)
    try:
        t_extract = time.time()
        ov = client.submit(task_overview, paths[grid_k], date_bands[grid_k], grid, cfg, retries=2,
                           key=f"overview-{time.time_ns()}")
        if isinstance(ov.result(), TaskError):
            raise PipelineError(ov.result().message)
        located = {k: client.submit(task_locate, paths[k], date_bands[k], grid, None if k == grid_k else ov, cfg,
                                    retries=2, key=f"locate-{k}-{time.time_ns()}") for k in date_bands}
        locations = _gather(located, "locate", progress, errors, paths)
        if grid_k not in locations:
            raise PipelineError(f"{_label(paths[grid_k])}: the grid's date cannot be read: {errors.get(grid_k)}")
        region = engine.common_region(grid, [loc.extent_px for loc in locations.values()])
        windows = engine.plan_windows(region, cfg)
        extracted = {k: client.submit(task_extract, loc, grid, windows, cfg, retries=2,
                                      key=f"extract-{k}-{time.time_ns()}") for k, loc in locations.items()}
        results = _gather(extracted, "dates", progress, errors, paths)
        dates: list[DateFeatures | None] = [results.get(k) for k in range(len(paths))]
        ok = [k for k in range(len(paths)) if dates[k] is not None and dates[k].features]
        for k in range(len(paths)):
            if dates[k] is not None and not dates[k].features:
                errors[k] = "no window with enough valid, textured area (cloud, snow or nodata)"
        if ref_path is not None:
            ref = paths.index(ref_path)
            if ref not in ok:
                raise PipelineError(f"{ref_path}: the reference has no usable window: {errors.get(ref)}")
            ref_reason = "given"
        elif ok:
            ref, ref_reason = choose_reference([dates[k] if k in ok else None for k in range(len(paths))])
        else:
            raise PipelineError("no date of the stack has a usable window: " + "; ".join(errors.values()))
        t_pairs = time.time()
        order = sorted(ok, key=lambda k: dates[k].date)
        wanted = set()
        for pos, k in enumerate(order):
            for m in order[max(0, pos - neighbours): pos + neighbours + 1]:
                if m != k:
                    wanted.add((min(k, m), max(k, m)))
            if k != ref:
                wanted.add((min(k, ref), max(k, ref)))
        futures = {k: extracted[k] for k in ok}
        pairs = run_pairs(client, sorted(wanted), futures, cfg, px_m, progress)
        counts = {k: 0 for k in ok}                 # a date with fewer than 2 verified pairs: more distant dates
        for p in pairs:
            if p.verified:
                counts[p.i] += 1
                counts[p.j] += 1
        extra = set()
        for k in ok:
            if counts[k] < 2:
                pos = order.index(k)
                for m in order[max(0, pos - 3 * neighbours): pos + 3 * neighbours + 1]:
                    if m != k and (min(k, m), max(k, m)) not in wanted:
                        extra.add((min(k, m), max(k, m)))
        if extra:
            pairs += run_pairs(client, sorted(extra), futures, cfg, px_m, progress)
        timing = {"workers": len(client.scheduler_info()["workers"]), "dates": len(extracted),
                  "extract_s": round(t_pairs - t_extract, 2), "pairs": len(pairs),
                  "pairs_s": round(time.time() - t_pairs, 2)}
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    solution = adjust(len(paths), pairs, ref)
    result = finish(paths, products, locations, dates, errors, pairs, solution, ref, ref_reason, grid, time.time() - start,
                    scheduler)
    result["timing"] = timing
    result["windows"] = {"planned": len(windows), "size_px": list(windows[0][2:]) if windows else None}
    result["provenance"] = engine.provenance([_label(p) for p in paths], cfg, bands=list(bands),
                                             reference=reference, neighbours=neighbours,
                                             correction="translation" if write_corrected else None)
    if output is not None:
        write_stack_outputs(result, paths, products, grid, Path(output), write_corrected)
    return result


def run_pairs(client, pairs: list[tuple[int, int]], date_futures: dict, cfg, px_m: float,
              progress: bool) -> list[PairMeasure]:
    from dask.distributed import as_completed
    from tqdm import tqdm

    futures = {client.submit(task_pair, i, j, date_futures[i], date_futures[j], cfg, px_m, retries=2,
                             key=f"pair-{i}-{j}-{time.time_ns()}"): (i, j) for i, j in pairs}
    out = []
    for fut in tqdm(as_completed(list(futures)), total=len(futures), desc="pairs", unit="pair",
                    disable=not progress):
        try:
            out.append(fut.result())
        except Exception as exc:
            i, j = futures[fut]
            out.append(PairMeasure(i, j, False, reason=f"{type(exc).__name__}: {exc}"))
    return sorted(out, key=lambda p: (p.i, p.j))


def _to_metres(grid: dp.Grid, d_px) -> np.ndarray:
    """Displacements (N, 2) in grid px (NaN where unknown) → metres east/north at the grid's centre."""
    d_px = np.atleast_2d(np.asarray(d_px, np.float64))
    out = np.full(d_px.shape, np.nan)
    known = np.isfinite(d_px).all(1)
    if known.any():
        centre = np.tile([[grid.width / 2, grid.height / 2]], (int(known.sum()), 1))
        out[known] = engine.pixel_shifts_in_metres(grid, centre, d_px[known])[0]
    return out


def item_ids(paths: list, products: dict) -> list[str]:
    """A unique, file-name-safe id a date: its product's name (else its file or folder name)."""
    ids, seen = [], {}
    for k, p in enumerate(paths):
        base = engine.safe_name(products[k].name if k in products else Path(_label(p)).name)
        seen[base] = seen.get(base, 0) + 1
        ids.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
    return ids


def finish(paths, products, locations, dates, errors, pairs, solution, ref, ref_reason, grid, seconds,
           scheduler) -> dict:
    px = engine.metres_per_px(grid)
    x_m = _to_metres(grid, solution["x"])
    ids = item_ids(paths, products)
    rows = []
    for k, p in enumerate(paths):
        d = dates[k]
        status, reason = "excluded", errors.get(k)
        if k == ref:
            status, reason = "reference", ref_reason
        elif solution["placed"][k] and np.isfinite(solution["x"][k]).all():
            direct = any(r.verified and {r.i, r.j} == {k, ref} for r in pairs)
            status, reason = "ok", None if direct else "placed through its neighbours (not matched to the reference)"
        elif reason is None:
            reason = "no verified pair joins it to the reference (snow, cloud or a different place?)"
        # a pair's warnings belong to its dates other than the reference (the reference is the yardstick)
        warnings = [] if k == ref else sorted({w for r in pairs if r.verified and k in (r.i, r.j) for w in r.warnings})
        date = d.date if d else (locations[k].date if k in locations else
                                 (engine.date_of(products[k], p) if k in products else ""))
        rows.append({"path": _label(p), "id": ids[k], "date": date, "dx_m": float(x_m[k, 0]),
                     "dy_m": float(x_m[k, 1]), "sigma_m": float(solution["sigma"][k] * px),
                     "tie_points": sum(r.tie_points for r in pairs if r.verified and k in (r.i, r.j)),
                     "status": status, "reason": reason, "warnings": "; ".join(warnings) or None,
                     "offset_px": list(locations[k].offset_px) if k in locations else None,
                     "shift_px": [float(v) for v in solution["x"][k]]})
    pair_rows = []
    for r in pairs:
        d_m = _to_metres(grid, [r.shift_px])[0] if r.verified else [np.nan, np.nan]
        pair_rows.append({"date_i": rows[r.i]["date"], "date_j": rows[r.j]["date"], "path_i": rows[r.i]["path"],
                          "path_j": rows[r.j]["path"], "verified": r.verified, "dx_m": float(d_m[0]),
                          "dy_m": float(d_m[1]), "sigma_m": float((r.sigma_px or np.nan) * px),
                          "windows": r.windows_used,
                          "weight": solution["weight"].get((r.i, r.j), 0.0) if r.verified else 0.0,
                          "residual_m": solution["residual"].get((r.i, r.j), np.nan) * px if r.verified else np.nan,
                          "reason": r.reason, "warnings": "; ".join(r.warnings) or None})
    return {"reference": rows[ref]["path"], "reference_id": ids[ref], "reference_reason": ref_reason, "dates": rows,
            "pairs": pair_rows, "seconds": round(seconds, 1), "scheduler": scheduler or "LocalCluster",
            "crs": grid.crs.to_string(), "grid": {"transform": list(grid.transform)[:6],
                                                  "width": grid.width, "height": grid.height},
            "placed": sum(r["status"] != "excluded" for r in rows), "excluded": sum(r["status"] == "excluded" for r in rows)}


# ----------------------------------------------------------------------------- outputs
def write_stack_outputs(result: dict, paths: list, products: dict, grid: dp.Grid, folder: Path,
                        write_corrected: bool) -> None:
    out = engine.OutputFolder(folder, STACK_OUTPUTS)
    with out.building() as tmp:
        engine.write_csv(tmp / "shifts.csv", [{k: v for k, v in r.items() if k not in ("offset_px", "shift_px")}
                                              for r in result["dates"]])
        engine.write_csv(tmp / "pairs.csv", result["pairs"])
        plot_report(result, tmp / "report.png")
        if write_corrected:
            write_corrected_stack(result, paths, products, grid, tmp / "corrected", out.folder / "corrected")
        write_json(tmp / "stack.json", {k: v for k, v in result.items() if k not in ("dates", "pairs")})


def plot_report(result: dict, path: Path) -> None:
    """dx and dy over time with ±2 sigma, the reference marked (a star), excluded dates marked
    on the time axis, warned dates in orange."""
    from datetime import datetime

    from matplotlib.figure import Figure

    from utils import atomic_path

    def when(s):
        try:
            return datetime.strptime(s[:8], "%Y%m%d")
        except (ValueError, TypeError):
            return None

    rows = result["dates"]
    fig = Figure(figsize=(11, 5.5), dpi=100)
    axes = [fig.add_subplot(2, 1, k + 1) for k in range(2)]
    timed = all(when(r["date"]) for r in rows)
    xs = [when(r["date"]) if timed else k for k, r in enumerate(rows)]
    for ax, key, label in zip(axes, ("dx_m", "dy_m"), ("dx (m, east)", "dy (m, north)")):
        for k, r in enumerate(rows):
            if r["status"] == "excluded":
                ax.axvline(xs[k], color="red", alpha=0.3, lw=1)
            elif r["status"] == "reference":
                ax.plot([xs[k]], [0], marker="*", ms=14, color="gold", mec="black", zorder=5)
            else:
                ax.errorbar([xs[k]], [r[key]], yerr=[2 * r["sigma_m"]], fmt="o", ms=4, capsize=2,
                            color="tab:orange" if r.get("warnings") else "tab:blue")
        ax.axhline(0, color="gray", lw=0.5)
        ax.set_ylabel(label)
    axes[0].set_title(f"shift of each date relative to the reference {result['reference_id']} (★; ±2σ; red lines: "
                      f"excluded; orange: warned) — {result['placed']} placed, {result['excluded']} excluded",
                      fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def write_corrected_stack(result: dict, paths: list, products: dict, grid: dp.Grid, folder: Path,
                          final: Path) -> None:
    """Each placed date's files with their georeference moved by its correction (the negative of
    its displacement, expressed in each file's own CRS: a date on another UTM zone is moved by the
    same ground vector), no resampling, as COGs with provenance tags; and a STAC ItemCollection of
    them (``stack.geojson``, hrefs relative to it). A date of several files gets a folder of
    them under their own names (readable as a date again)."""
    import rasterio

    folder.mkdir(parents=True, exist_ok=True)
    prov = result["provenance"]
    x_by_k = {}
    for k, row in enumerate(result["dates"]):
        if row["status"] != "excluded" and k in products:
            x_by_k[k] = row
    items = []
    for k, row in x_by_k.items():
        product = products[k]
        files = sorted({p for res in product.band_files.values() for p in res.values()})
        d_px = np.array(row["shift_px"])
        assets, first = {}, None
        for f in files:
            with rasterio.open(f) as src:
                move = engine.correction_in_crs(grid, d_px, src.crs)
            # one file: <name>_coregistered.tif; several: a folder a date, the files' own names (a
            # date folder of band files again, B04.tif ...)
            out = (folder / f"{engine.safe_name(Path(f).stem)}_coregistered.tif" if len(files) == 1 else
                   folder / row["id"] / f"{engine.safe_name(Path(f).stem)}.tif")
            out.parent.mkdir(parents=True, exist_ok=True)
            tags = engine.provenance_tags(prov, coregistration_shift_m={"dx": row["dx_m"], "dy": row["dy_m"],
                                                                       "sigma_m": row["sigma_m"]},
                                          coregistration_reference=result["reference"])
            engine.write_moved(f, out, move, tags)
            first = first or out
            assets[engine.safe_name(Path(f).stem)] = {"href": str(out.relative_to(folder)), "roles": ["data"],
                                                     "type": "image/tiff; application=geotiff; profile=cloud-optimized"}
        item = engine.stac_item(row["id"], row["date"], first, row["path"],
                                {"coregistration:dx_m": row["dx_m"], "coregistration:dy_m": row["dy_m"],
                                 "coregistration:sigma_m": row["sigma_m"], "coregistration:status": row["status"],
                                 "coregistration:reference": result["reference_id"],
                                 "processing:software": {prov["name"]: prov["version"]}})
        item["assets"] = assets
        items.append(item)
    write_json(folder / "stack.geojson", {"type": "FeatureCollection", "features": items,
                                          "links": [{"rel": "self", "href": (final / "stack.geojson").as_uri()}]})
