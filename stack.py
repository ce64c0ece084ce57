"""Co-register a whole stack of dates jointly, as Dask tasks: ``coregister.py --stack``.

    python coregister.py --stack DATES... [--reference auto|PATH] --output DIR [--scheduler tcp://HOST:8786]

Every date is read on one grid (the first input's, or ``--reference PATH``'s) in the same windows
and its features are extracted once (one task per date). Pairs are then matched window by window
(one task per pair): every date against the reference candidates' neighbours in time (``--neighbours``
on each side) and, where a date has too few verified pairs, against more distant dates. Each pair
gives a displacement (the median of its windows, each refined by ECC as in ``coregister.py``) with a
standard error. A robust weighted least-squares adjustment over the pair graph then places every
date: ``x_j − x_i = d_ij`` for every verified pair, the reference fixed at 0, Cauchy-reweighted so
that inconsistent pairs lose their weight (their residuals, the loop-closure errors, are reported).
A date that cannot be matched to the reference directly is placed through its neighbours; a date
that joins no pair with the reference's part of the graph is excluded with the reason.

Dask: by default a ``LocalCluster`` with one single-threaded worker process per core (torch then
never oversubscribes); ``--scheduler`` runs the same tasks on an existing cluster, whose scheduler
and workers must import this repository (``PYTHONPATH=/path/to/repo dask scheduler`` and
``PYTHONPATH=/path/to/repo dask worker tcp://HOST:8786 --nworkers N --nthreads 1``; the
checkpoints are read from the repository's ``model_checkpoints/`` on each worker). A failing
product is reported and the others go on; Dask retries a task whose worker died.
"""
from __future__ import annotations

import csv
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import data_preprocess as dp
import geo
from config import CoregisterConfig, PreprocessConfig
from utils import PipelineError, atomic_path, set_threads, write_json

_PIPELINE = None      # one matching pipeline per worker process, loaded on its first task


def worker_pipeline():
    """The matching pipeline of this process (loaded once; one torch thread per worker)."""
    global _PIPELINE
    if _PIPELINE is None:
        from matching import MatchingPipeline

        set_threads(1)
        _PIPELINE = MatchingPipeline.from_checkpoints(device="cpu")
    return _PIPELINE


# ----------------------------------------------------------------------------- per date
@dataclass
class DateFeatures:
    """One date read on the stack's grid: per window its features and the grey image (for ECC)."""

    path: str
    date: str
    windows: list[tuple[int, int, int, int]]
    features: dict[int, dict] = field(default_factory=dict)      # window index → features
    images: dict[int, np.ndarray] = field(default_factory=dict)   # window index → float16 grey 0..1
    valids: dict[int, np.ndarray] = field(default_factory=dict)
    keypoints: int = 0
    valid_share: float = 0.0


def date_of(product: dp.Product, path: str) -> str:
    if product.sensing_date:
        return product.sensing_date
    found = re.search(r"(20\d{6})", Path(path).name)
    return found.group(1) if found else Path(path).stem


def extract_date(path: str, grid: dp.Grid, windows: list[tuple[int, int, int, int]], bands: tuple[str, ...],
                 cfg: CoregisterConfig) -> DateFeatures:
    """Task: read one date on ``grid`` in ``windows`` and extract each window's features once."""
    from coregister import choose_bands, open_product, valid_mask
    from utils import normalize_for_network

    pipeline = worker_pipeline()
    product = open_product(path, "date", bands)
    use = choose_bands(product, product, bands)
    out = DateFeatures(path, date_of(product, path), windows)
    render_cfg = PreprocessConfig()
    shares = []
    for k, (col, row, w, h) in enumerate(windows):
        image, nodata = dp.render(product, use, grid, (col, row, w, h), (h, w), render_cfg, warp=True)
        valid = valid_mask(product, nodata, grid, (col, row, w, h), (h, w), True, cfg)
        shares.append(valid.mean())
        if valid.mean() < cfg.min_valid:
            continue
        f = pipeline.extract(image, valid, f"{Path(path).name} window {k}")
        if len(f["keypoints"]) == 0:
            continue
        out.features[k] = f
        out.images[k] = normalize_for_network(image, 1, valid)[0].astype(np.float16)
        out.valids[k] = valid
        out.keypoints += len(f["keypoints"])
    out.valid_share = float(np.mean(shares)) if shares else 0.0
    return out


# ----------------------------------------------------------------------------- per pair
@dataclass
class PairResult:
    i: int
    j: int
    verified: bool
    shift_px: list[float] | None = None            # displacement of date j's content relative to date i
    sigma_px: float | None = None
    windows: int = 0
    tie_points: int = 0
    reason: str | None = None


def match_pair(i: int, j: int, a: DateFeatures, b: DateFeatures, cfg: CoregisterConfig) -> PairResult:
    """Task: match two dates window by window (features extracted once per date)."""
    from coregister import consistent_windows, window_shift

    pipeline = worker_pipeline()
    shifts, tie_points = [], 0
    for k in sorted(set(a.features) & set(b.features)):
        r = pipeline.verify(pipeline.match_features(a.features[k], b.features[k]))
        if not r["verified"]:
            continue
        shift, _, _ = window_shift(r, a.images[k].astype(np.float32), a.valids[k], b.images[k].astype(np.float32),
                                   b.valids[k], cfg)
        shifts.append(shift)
        tie_points += int(r["inliers"].sum())
    if len(shifts) < max(1, cfg.min_windows // 2 + 1):
        return PairResult(i, j, False, windows=len(shifts), reason=f"{len(shifts)} verified windows")
    d = np.array(shifts)
    med = np.median(d, axis=0)
    spread = np.maximum(geo.MAD_TO_SIGMA * np.median(np.abs(d - med), axis=0), 0.05)
    d = d[consistent_windows(d, cfg)]
    med = np.median(d, axis=0)
    sigma = 1.2533 * float(np.sqrt(np.mean(spread ** 2))) / np.sqrt(len(d))
    return PairResult(i, j, True, med.tolist(), max(sigma, 0.02), len(d), tie_points)


# ----------------------------------------------------------------------------- adjustment
def adjust(n: int, pairs: list[PairResult], reference: int, iterations: int = 20) -> dict:
    """Robust weighted least squares of ``x_j − x_i = d_ij`` over the verified pairs, ``x_ref = 0``.

    Returns per date ``x`` (n, 2) px (NaN where not placed), ``sigma`` (n,), ``placed`` (n,) and per
    pair ``weight`` and ``residual`` (px). Cauchy weights on residuals normalised by each pair's
    sigma (scale 2.385): a pair inconsistent with the rest loses its weight.
    """
    ok = [p for p in pairs if p.verified]
    # dates connected to the reference through verified pairs
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
    weights = {id(p): 1.0 for p in use}
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
            weights[id(p)] = float(w[r])
            residuals[id(p)] = float(np.linalg.norm(res[r]))
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


# ----------------------------------------------------------------------------- driver
def expand_inputs(inputs: list[str | Path]) -> list[Path]:
    """Files, folders (their products or rasters, not recursing into .SAFE) and globs → sorted paths."""
    import glob

    out = []
    for item in inputs:
        item = str(item)
        matches = sorted(glob.glob(item)) if any(ch in item for ch in "*?[") else [item]
        for m in matches:
            p = Path(m)
            if p.is_dir() and not dp._is_safe(p):
                out += sorted(q for q in p.iterdir() if dp._is_safe(q) or q.suffix.lower() in
                              (".tif", ".tiff", ".jp2", ".json"))
            else:
                out.append(p)
    return out


def coregister_stack(inputs: list[str | Path], output: str | Path | None = None, reference: str = "auto",
                     bands: tuple[str, ...] | None = None, cfg: CoregisterConfig | None = None,
                     scheduler: str | None = None, workers: int | None = None, neighbours: int = 2,
                     write_corrected: bool = False, progress: bool = True) -> dict:
    """Co-register every date of ``inputs`` jointly (see the module docstring); returns the rows of
    ``shifts.csv`` and ``pairs.csv`` and what the run was, and with ``output`` writes them."""
    from dask.distributed import Client, LocalCluster, as_completed

    cfg = cfg or CoregisterConfig()
    bands = tuple(bands or cfg.bands)
    paths = expand_inputs(inputs)
    if len(paths) < 2:
        raise PipelineError(f"{inputs}: a stack needs at least two dates")
    missing = [p for p in paths if not p.exists()]
    start = time.time()
    ref_path = Path(reference) if reference != "auto" else None
    if ref_path is not None:
        same = [p for p in paths if p.resolve() == ref_path.resolve()]
        if same:
            ref_path = same[0]
        else:
            paths = [ref_path, *paths]
    from coregister import choose_bands, open_product

    grid_product = open_product(ref_path or next(p for p in paths if p.exists()), "reference", bands)
    grid = dp.reference_grid(grid_product, choose_bands(grid_product, grid_product, bands))
    from coregister import plan_windows

    windows = plan_windows(grid, cfg)
    if scheduler:
        client = Client(scheduler)
        cluster = None
    else:
        n = workers or len(os.sched_getaffinity(0))
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
    try:
        from tqdm import tqdm

        t_extract = time.time()
        date_futures = {k: client.submit(extract_date, str(p), grid, windows, bands, cfg, retries=2,
                                         key=f"extract-{k}-{p.name}") for k, p in enumerate(paths) if p not in missing}
        dates: list[DateFeatures | None] = [None] * len(paths)
        errors = {k: f"{p}: no such file or folder" for k, p in enumerate(paths) if p in missing}
        for fut in tqdm(as_completed(list(date_futures.values())), total=len(date_futures), desc="dates",
                        unit="date", disable=not progress):
            k = next(k for k, f in date_futures.items() if f.key == fut.key)
            try:
                dates[k] = fut.result()
            except Exception as exc:       # a bad product is reported; the others go on
                errors[k] = str(exc) if isinstance(exc, PipelineError) else f"{paths[k]}: {type(exc).__name__}: {exc}"
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
            k_best, ref_reason = choose_reference([dates[k] if k in ok else None for k in range(len(paths))])
            ref = k_best
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
        results = run_pairs(client, sorted(wanted), date_futures, cfg, progress)
        # a date with fewer than 2 verified pairs gets pairs with more distant dates
        counts = {k: 0 for k in ok}
        for p in results:
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
            results += run_pairs(client, sorted(extra), date_futures, cfg, progress)
        timing = {"workers": len(client.scheduler_info()["workers"]), "dates": len(date_futures),
                  "extract_s": round(t_pairs - t_extract, 2), "pairs": len(results),
                  "pairs_s": round(time.time() - t_pairs, 2)}
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    solution = adjust(len(paths), results, ref)
    result = finish(paths, dates, errors, results, solution, ref, ref_reason, grid, output, write_corrected,
                    time.time() - start, scheduler)
    result["timing"] = timing
    return result


def run_pairs(client, pairs: list[tuple[int, int]], date_futures: dict, cfg, progress: bool) -> list[PairResult]:
    from dask.distributed import as_completed
    from tqdm import tqdm

    futures = [client.submit(match_pair, i, j, date_futures[i], date_futures[j], cfg, retries=2,
                             key=f"pair-{i}-{j}-{time.time_ns()}") for i, j in pairs]
    out = []
    for fut in tqdm(as_completed(futures), total=len(futures), desc="pairs", unit="pair", disable=not progress):
        try:
            out.append(fut.result())
        except Exception as exc:
            i, j = (int(v) for v in fut.key.split("-")[1:3])
            out.append(PairResult(i, j, False, reason=f"{type(exc).__name__}: {exc}"))
    return sorted(out, key=lambda p: (p.i, p.j))


def _to_metres(grid: dp.Grid, d_px) -> np.ndarray:
    """Displacements (N, 2) in grid px (NaN where unknown) → metres east/north at the grid's centre."""
    from coregister import pixel_shifts_in_metres

    d_px = np.atleast_2d(np.asarray(d_px, np.float64))
    out = np.full(d_px.shape, np.nan)
    known = np.isfinite(d_px).all(1)
    if known.any():
        centre = np.tile([[grid.width / 2, grid.height / 2]], (int(known.sum()), 1))
        out[known] = pixel_shifts_in_metres(grid, centre, d_px[known])[0]
    return out


def finish(paths, dates, errors, results, solution, ref, ref_reason, grid, output, write_corrected, seconds,
           scheduler) -> dict:
    px = abs(grid.transform.a) if grid.crs.is_projected else float(np.linalg.norm(_to_metres(grid, [[1, 0]])[0]))
    x_m = _to_metres(grid, solution["x"])
    rows = []
    for k, p in enumerate(paths):
        d = dates[k]
        status, reason = "excluded", errors.get(k)
        if k == ref:
            status, reason = "reference", ref_reason
        elif solution["placed"][k] and np.isfinite(solution["x"][k]).all():
            direct = any(r.verified and {r.i, r.j} == {k, ref} for r in results)
            status, reason = "ok", None if direct else "placed through its neighbours (not matched to the reference)"
        elif reason is None:
            reason = "no verified pair joins it to the reference (snow, cloud or a different place?)"
        rows.append({"path": str(p), "date": d.date if d else "", "dx_m": float(x_m[k, 0]),
                     "dy_m": float(x_m[k, 1]), "sigma_m": float(solution["sigma"][k] * px),
                     "tie_points": sum(r.tie_points for r in results if r.verified and k in (r.i, r.j)),
                     "status": status, "reason": reason})
    pair_rows = []
    for r in results:
        d_m = _to_metres(grid, [r.shift_px])[0] if r.verified else [np.nan, np.nan]
        pair_rows.append({"date_i": rows[r.i]["date"], "date_j": rows[r.j]["date"], "path_i": str(paths[r.i]),
                          "path_j": str(paths[r.j]), "verified": r.verified, "dx_m": float(d_m[0]),
                          "dy_m": float(d_m[1]), "sigma_m": float((r.sigma_px or np.nan) * px), "windows": r.windows,
                          "weight": solution["weight"].get(id(r), 0.0) if r.verified else 0.0,
                          "residual_m": solution["residual"].get(id(r), np.nan) * px if r.verified else np.nan,
                          "reason": r.reason})
    result = {"reference": str(paths[ref]), "reference_reason": ref_reason, "dates": rows, "pairs": pair_rows,
              "seconds": round(seconds, 1), "scheduler": scheduler or "LocalCluster", "crs": grid.crs.to_string()}
    if output is not None:
        write_stack_outputs(result, Path(output), write_corrected)
    return result


def write_stack_outputs(result: dict, folder: Path, write_corrected: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("shifts.csv", result["dates"]), ("pairs.csv", result["pairs"])):
        with atomic_path(folder / name) as tmp:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
    write_json(folder / "stack.json", {k: v for k, v in result.items() if k not in ("dates", "pairs")})
    plot_shifts(result, folder / "shifts.png")
    if write_corrected:
        write_corrected_stack(result, folder / "corrected")


def plot_shifts(result: dict, path: Path) -> None:
    """dx and dy over time with ±2 sigma; excluded dates marked on the time axis."""
    from datetime import datetime

    from matplotlib.figure import Figure

    def when(s):
        try:
            return datetime.strptime(s[:8], "%Y%m%d")
        except ValueError:
            return None

    fig = Figure(figsize=(11, 5), dpi=100)
    axes = [fig.add_subplot(2, 1, k + 1) for k in range(2)]
    for ax, key, label in zip(axes, ("dx_m", "dy_m"), ("dx (m, east)", "dy (m, north)")):
        rows = [r for r in result["dates"] if r["status"] != "excluded" and when(r["date"])]
        t = [when(r["date"]) for r in rows]
        ax.errorbar(t, [r[key] for r in rows], yerr=[2 * r["sigma_m"] for r in rows], fmt="o", ms=4, capsize=2)
        for r in result["dates"]:
            if r["status"] == "excluded" and when(r["date"]):
                ax.axvline(when(r["date"]), color="red", alpha=0.3, lw=1)
        ax.axhline(0, color="gray", lw=0.5)
        ax.set_ylabel(label)
    axes[0].set_title(f"shift of each date relative to {Path(result['reference']).name} (±2σ; red: excluded)",
                      fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def write_corrected_stack(result: dict, folder: Path) -> None:
    """Each placed date with its georeference moved by the negative of its shift (no resampling),
    as COGs, and a STAC ItemCollection listing them (``stack.geojson``)."""
    import rasterio

    from coregister import write_moved

    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for row in result["dates"]:
        if row["status"] == "excluded" or not Path(row["path"]).is_file():
            continue
        with rasterio.open(row["path"]) as src:
            centre = np.array([[(src.bounds.left + src.bounds.right) / 2, (src.bounds.bottom + src.bounds.top) / 2]])
            metric = geo.metric_crs(src.crs, centre)
            c_m = geo.reproject_points(centre, src.crs, metric)
            moved = geo.reproject_points(c_m + [row["dx_m"], row["dy_m"]], metric, src.crs)
        out = write_moved(row["path"], folder / f"{Path(row['path']).stem}_coregistered.tif", -(moved - centre)[0])
        items.append({"type": "Feature", "stac_version": "1.0.0", "id": Path(row["path"]).stem,
                      "properties": {"datetime": f"{row['date'][:4]}-{row['date'][4:6]}-{row['date'][6:8]}T00:00:00Z"
                                     if re.fullmatch(r"\d{8}", row["date"]) else None,
                                     "coregistration:dx_m": row["dx_m"], "coregistration:dy_m": row["dy_m"],
                                     "coregistration:sigma_m": row["sigma_m"]},
                      "geometry": None, "assets": {"data": {"href": out.name, "type":
                                                            "image/tiff; application=geotiff; profile=cloud-optimized"}}})
    write_json(folder / "stack.geojson", {"type": "FeatureCollection", "features": items})
