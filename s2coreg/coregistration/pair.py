"""Co-register two Sentinel-2 products: tie points, the shift in metres, a corrected target.

    python coregister.py REFERENCE TARGET [--output DIR] [--bands B04,B03,B02] [--write-corrected]
    python coregister.py --stack DATES... [--reference auto|PATH|ID] [--scheduler ADDRESS]  (s2coreg/coregistration/stack.py)
    python coregister.py --stack --stac-search API_URL --collection NAME --bbox W S E N --datetime START/END

REFERENCE and TARGET: a ``.SAFE`` (folder or zip, L1C or L2A), a GeoTIFF / JP2 band file, a
multi-band raster (bands named by their descriptions, or unnamed: one band is grey, three are
RGB, others by ``--bands`` as 1-based indices), a folder of one date's band files, or a STAC Item
— local paths or URLs (``https://``, ``s3://``: only the windows needed are read; see
``s2coreg/io/remote.py``). They may differ in CRS, grid or resolution: the target is read onto the
reference's grid, window by window; nothing is reprojected beyond what is read.

A pair is a stack of two: this script and ``--stack`` run the same engine (``s2coreg/coregistration/engine.py``):
coarse offset from the overviews, windows inside the data both dates cover, per window the
learned estimate (the median of its verified inliers after the fine head and the correlation
stage), windows combined by their median with a calibrated standard error, warnings where they
disagree beyond their noise (rotation, scale, a bad window).

Outputs in DIR (one run at a time writes there; the earlier run's result is replaced as a whole,
all at once: each name is a link into the current result, ``DIR/.results/current``):
``coregistration.json`` (with the provenance: version, settings, inputs, time), ``tie_points.geojson`` / ``.csv``,
``shift_field.tif`` (dx, dy in metres on a coarse grid), ``report.png``, and with
``--write-corrected`` the target aligned to the reference as COGs (translation: its georeference
moved by the correction expressed in its own CRS, no resampling; ``--correction affine|field``:
resampled onto the reference grid) with the provenance as tags, and a STAC Item for each.
**Convention**: ``shift_m`` is the displacement of the target's content relative to the reference,
in metres, x east and y north: a feature at reference map point P is found in the target at
P + (dx, dy). The correction applied to the target is its negative.

Exit codes: 0 co-registered (a stack: every date placed); 1 results written but the pair is not
verified (a stack: some dates excluded, each with its reason); 2 a bad input or output folder,
another run writing into DIR, or a write refused (disk full, quota, read-only file system,
permission), named in one line: nothing published (a stack: also where a pair could not be
measured — an error, not a refusal — its files written, the error in pairs.csv); 130 interrupted
(Ctrl-C): nothing published, the earlier result in DIR stands (a stack keeps its finished work
in DIR/cache, and a rerun resumes from it); 3 an unforeseen error (a bug: its traceback printed,
nothing published).
"""
from __future__ import annotations

import s2coreg.config as config  # noqa: I001  first: OpenMP's waiting policy is set there, before torch loads

import contextlib
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np

import s2coreg.cli as cli
import s2coreg.coregistration.engine as engine
import s2coreg.io.products as dp
import s2coreg.io.geo as geo
import s2coreg.io.remote as remote
from s2coreg.config import CoregisterConfig
from s2coreg.coregistration.engine import CE90_PER_SIGMA, pixel_shifts_in_metres  # noqa: F401  (public names of this script)
from s2coreg.matching.pipeline import OWN_MATCHER, MatchingPipeline, Pipeline, matcher_choices
from s2coreg.results import CoregistrationResult, ShiftEstimate
from s2coreg.io.imaging import normalize_for_network
from s2coreg.utils import PipelineError, atomic_path, cores, one_blas_thread, set_threads, threads_given, write_json

PAIR_OUTPUTS = engine.RESULT_NAMES         # a rerun replaces any earlier result of ours, pair or stack


class Coregistration:
    """Co-register ``target`` to ``reference`` (see the module docstring): the engine's steps for
    a stack of two, run in this process.

    ``pipeline``: the matching path (default: the shipped checkpoints with ``cfg.matcher``, as
    ``ImageMatcher`` uses them, no resizing); one given replaces ``cfg.matcher`` (the provenance
    records its ``matcher_name`` and ``matching``, the path that ran).
    """

    def __init__(self, reference, target, bands: tuple[str, ...] | None = None, cfg: CoregisterConfig | None = None,
                 pipeline: Pipeline | None = None, progress: bool = True,
                 ref_nodata: float | str | None = None, target_nodata: float | str | None = None,
                 dates: dict | None = None):
        self.cfg = cfg or CoregisterConfig()
        self.dates = dates          # NAME → YYYY-MM-DD (``--date``): a date where the file gives none
        engine.check_given_dates(dates, [reference, target])
        if pipeline is not None:     # the path given is the one that runs, and the one recorded
            self.cfg = config.replace(self.cfg, matcher=pipeline.matcher_name)
        self.cfg = engine.checked_config(self.cfg)      # a user's matcher as package.module:name
        shared = bands if bands else tuple(self.cfg.bands)
        specs = (self.cfg.reference_bands or shared, self.cfg.target_bands or shared)   # as the user gave them
        self.inputs = (reference, target)
        self.ref = engine.open_date(reference, "reference", dp.normalise_bands(specs[0]), ref_nodata)
        self.tgt = engine.open_date(target, "target", dp.normalise_bands(specs[1]), target_nodata)
        # each input's bands read in its own sensor's naming (Landsat's B5 is the NIR, B8 the pan)
        wanted = [dp.normalise_bands(spec, p.sensor) for spec, p in zip(specs, (self.ref, self.tgt))]
        if wanted[0] == wanted[1]:
            self.ref_bands, self.tgt_bands = engine.common_bands([self.ref, self.tgt], wanted[0])
        else:
            self.ref_bands, self.tgt_bands = (engine.date_bands(p, w) for p, w in zip((self.ref, self.tgt), wanted))
        # the grid measured on: the reference's, rotated or not; the target on a north-up grid or on that one
        engine.check_georeference(self.ref, self.ref_bands, "reference")
        self.grid = engine.grid_of(self.ref, self.ref_bands)
        engine.check_georeference(self.tgt, self.tgt_bands, "target", self.grid)
        self.pipeline = pipeline or pair_pipeline(self.cfg)
        self.progress = progress

    def run(self) -> dict:
        start = time.time()
        e, c, g = engine, self.cfg, self.grid
        threads = window_threads()
        e.date_footprint(self.tgt, self.tgt_bands, g)       # one line, before reading, if it lies elsewhere
        # both dates' overviews read and extracted side by side (``--threads`` 2 or more)
        with e.window_runner(min(threads, 2)) as submit:
            ref_job = submit(e.reference_overview, self.pipeline, self.ref, self.ref_bands, g, c)
            tgt_job = submit(e.date_overview, self.pipeline, self.tgt, self.tgt_bands, g, c,
                             f"{remote.name_of(str(self.inputs[1]))} overview")
            self.overview, seen = ref_job.result(), tgt_job.result()
        self.loc_ref = e.locate_date(self.pipeline, self.inputs[0], self.ref, self.ref_bands, g, None, c)
        # the target's overview kept: its windows are ranked on it before any is read in full
        self.loc_tgt = e.locate_date(self.pipeline, self.inputs[1], self.tgt, self.tgt_bands, g, self.overview, c,
                                     keep_overview=True, seen=seen)
        self.overview_tgt = self.loc_tgt.overview
        self.loc_ref, self.loc_tgt = (e.with_given_date(loc, self.dates) for loc in (self.loc_ref, self.loc_tgt))
        # exactly what both cover: a pair has no earlier plan to keep (a stack's edge tolerance
        # would put the target's few px of no data inside a window, where they moved a changed
        # scene's learned estimate by 0.6 px and left the dense fit out of reach)
        self.region = e.common_region(g, [self.loc_ref.extent_px, self.loc_tgt.extent_px])
        self.windows = e.plan_windows(self.region, c)
        # best first, until the verified windows bound the shift and the field; both cores as whole windows
        self.a, self.b, measured, self.skipped = e.measure_in_rounds(
            self.pipeline, (self.ref, self.tgt), (self.loc_ref, self.loc_tgt), g, self.windows, self.region,
            (self.overview, self.overview_tgt), c, threads=threads)
        self.pair = e.measure_pair(self.pipeline, 0, 1, self.a, self.b, c, e.metres_per_px(g), measured,
                                   self.skipped)
        self.check = self.second_band_check()
        result = pair_result(self, self.pair)
        result.update(coarse=self.loc_tgt.coarse, seconds=round(time.time() - start, 2),
                      bands={"reference": self.ref_bands, "target": self.tgt_bands},
                      nodata={"reference": e.nodata_in_use(self.ref, self.ref_bands),
                              "target": e.nodata_in_use(self.tgt, self.tgt_bands)},
                      reference=engine.input_label(self.ref.source), target=engine.input_label(self.tgt.source),
                      crs=g.crs.to_string(),
                      # the target's date as a stack's row gives it (results.DateShift)
                      date=self.loc_tgt.date or remote.stem_of(engine.first_path(self.inputs[1])))
        if self.check is not None:
            result["band_check"] = self.check
        return result


    def second_band_check(self) -> dict | None:
        """Across sensors (``Product.sensor`` differs: Landsat beside Sentinel-2), visible bands
        differ in spectral response and in what each sensor's processing does to them: R,G,B and
        NIR of one real Landsat 9 / Sentinel-2 pair gave shifts 10.9 m apart, beyond three combined
        σ (``benchmarks/cross_sensor.py``). Where the pair was measured on other bands than NIR
        and both inputs have NIR, the same windows are measured again on NIR; where the two
        disagree beyond three combined σ, the pair's σ is widened to cover both and a warning
        says so and that NIR is the one to trust (it also measured the known shifts more
        precisely there). Returns what the check measured, or None where it does not apply."""
        nir = "B08"
        if self.ref.sensor == self.tgt.sensor or not self.pair.verified or nir in self.ref_bands \
                or not (nir in self.ref.band_files and nir in self.tgt.band_files):
            return None
        import dataclasses

        e, c, g = engine, self.cfg, self.grid
        px_m = e.metres_per_px(g)
        loc_a, loc_b = (dataclasses.replace(loc, bands=[nir]) for loc in (self.loc_ref, self.loc_tgt))
        read = {k for k in range(len(self.windows)) if k not in self.skipped}     # the windows the pair read
        a = e.extract_date(self.pipeline, self.ref, loc_a, g, self.windows, c, only=read)
        b = e.extract_date(self.pipeline, self.tgt, loc_b, g, self.windows, c, only=read)
        other = e.measure_pair(self.pipeline, 0, 1, a, b, c, px_m, skipped=self.skipped)
        out = {"bands": "nir", "verified": other.verified}
        if not other.verified:
            return out
        d = (np.array(other.shift_px) - np.array(self.pair.shift_px)) * px_m
        bound = 3 * np.hypot(self.pair.sigma_px, other.sigma_px) * px_m
        at = np.array([other.at_px if other.at_px is not None else [g.width / 2, g.height / 2]])
        nir_m, _ = engine.pixel_shifts_in_metres(g, at, [other.shift_px])
        out.update(dx=float(nir_m[0, 0]), dy=float(nir_m[0, 1]), sigma_m=other.sigma_px * px_m,
                   shift_px=list(other.shift_px), apart_m=float(np.hypot(*d)), three_sigma_m=float(bound))
        if np.hypot(*d) > bound:
            # σ covering both: the half-distance between them, per axis, at least what it was
            widened = np.maximum(np.array(self.pair.se_px), np.abs(d / px_m) / 2)
            self.pair.se_px = widened.tolist()
            self.pair.sigma_px = float(np.sqrt(np.mean(widened ** 2)))
            self.pair.warnings.append(
                f"{','.join(self.ref_bands)} and NIR disagree by {np.hypot(*d):.1f} m, beyond three combined σ "
                f"({bound:.1f} m): across sensors ({self.ref.sensor} against {self.tgt.sensor}) the visible bands "
                f"differ; σ widened to cover both; trust NIR, the more precise on known shifts of a real pair "
                f"(docs/benchmarks.md): it gives dx {out['dx']:+.1f} m, dy {out['dy']:+.1f} m (bands='nir', --bands nir)")
        return out


def pair_pipeline(cfg: CoregisterConfig, device=None) -> Pipeline:
    """The matching path a pair runs for ``cfg`` (``engine.checked_config``'s: its matcher named),
    what ``coregister`` builds: sift-first's learned path is built where a window or the coarse step
    first needs it (a pair SIFT answers never imports torch: ``matching.LazyPipeline``), and of its
    two answers that agree, the one with more inliers is kept (they rank the windows and make the
    tie points; the dense fit, not the matches, makes a window's estimate precise)."""
    return MatchingPipeline.from_checkpoints(matcher=cfg.matcher, device=device, lazy=True, keep_more_inliers=True)


def window_threads() -> int:
    """Windows a pair runs side by side: the threads this process was given (``--threads``,
    ``set_threads``; else torch's count where torch is loaded, else every core), each window
    then on one."""
    import sys

    given = threads_given()
    if given:
        return given
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "get_num_threads"):
        return max(1, torch.get_num_threads())
    return cores()


def pair_result(co: Coregistration, pair: engine.PairMeasure) -> dict:
    """The content of ``coregistration.json`` for a measured pair (shift in metres, its
    uncertainty, the affine, the windows' counts and the warnings)."""
    reasons: dict[str, int] = {}
    for w in pair.windows:
        if w.status != "used":
            key = engine.reason_kind(w.reason)
            reasons[key] = reasons.get(key, 0) + 1
    skipped = sum(pair.skipped.values())
    tried = len(co.windows) - skipped
    missing = tried - len(pair.windows)
    if missing:
        reasons["too little valid area or texture"] = missing
    warnings = [p.fill for p in (co.ref, co.tgt) if p.fill] + list(pair.warnings)
    if co.ref_bands != co.tgt_bands:
        warnings.append(f"the dates were matched on different bands ({','.join(co.ref_bands)} against "
                        f"{','.join(co.tgt_bands)}): what they show differs; give both the same bands if you can")
    learned = getattr(co.pipeline, "fallback", None)
    if co.pipeline.matcher_name == "sift-first" and learned is not None and "superglue" not in learned.name:
        # fast refuses without it; sift-first's learned path falls back to mutual nearest neighbours
        warnings.append("no superglue*.pt beside the SuperPoint checkpoint: where SIFT does not answer, windows are "
                        "matched by mutual nearest neighbours alone (less accurate); restore it (git checkout "
                        "model_checkpoints/superglue.pt) or give --matcher mnn to say so")
    counted = pair.windows if pair.verified else []      # of the windows used: none where the pair is refused
    result = {"verified": pair.verified, "reason": pair.reason, "warnings": warnings, "shift_m": None,
              "affine": None, "tie_points": pair.tie_points,
              # planned = tried + skipped (not read: ranked out on the overviews, or enough already);
              # tried = used + rejected (read, and why not used: reasons)
              "windows": {"used": pair.windows_used, "rejected": tried - pair.windows_used,
                          "reasons": reasons, "planned": len(co.windows), "tried": tried,
                          "skipped": dict(pair.skipped), "size_px": list(co.windows[0][2:]) if co.windows else None,
                          **engine.refinement_counts(counted), "matched_by": engine.matched_by(counted)}}
    if not co.windows:
        c0, r0, c1, r1 = co.region
        result["reason"] = (f"the data both dates cover is {max(0, c1 - c0)}×{max(0, r1 - r0)} px on the reference grid: "
                            "too small for a window (16 px at least) — no overlap, or a raster too small")
    if not pair.verified:
        return result
    g = co.grid
    centre = np.array([pair.at_px]) if pair.at_px is not None else np.array([[g.width / 2, g.height / 2]])
    d_m, metric = engine.pixel_shifts_in_metres(g, centre, [pair.shift_px])
    px_m = engine.metres_per_px(g)
    se = np.array(pair.se_px) * px_m
    sigma_m = float(np.sqrt(np.mean(se ** 2)))
    result["shift_m"] = {"dx": float(d_m[0, 0]), "dy": float(d_m[0, 1]), "sigma_m": sigma_m,
                         "ce90_m": CE90_PER_SIGMA * sigma_m, "se_x": float(se[0]), "se_y": float(se[1]),
                         "window_spread_m": [float(v) * px_m for v in pair.spread_px],
                         "shift_px": [float(v) for v in pair.shift_px], "metric_crs": metric.to_string(),
                         "at": at_in_map(g, centre[0])}
    result["affine"] = affine_in_map(co, pair)
    return result


def at_in_map(grid, at_px) -> dict:
    """Where ``shift_m`` applies: the centre of the overlap measured, in grid px and map coordinates."""
    x, y = geo.pixel_to_map(np.asarray(at_px, np.float64).reshape(1, 2), grid.transform)[0]
    return {"px": [round(float(v), 2) for v in at_px], "map": [float(x), float(y)], "crs": grid.crs.to_string()}


def affine_in_map(co: Coregistration, pair: engine.PairMeasure) -> dict | None:
    """The affine from reference map coordinates to where the target shows them. Its linear part:
    where the tie points show a rotation or scale beyond their noise (the warning), least squares
    on all of them (thousands of points, each at its own place — a window's estimate is one
    translation of a window over which a rotation varies: fitted to the windows, 1.86° of a 2°
    rotation came back and the corrected target was still 5 m off); else, with at least 4
    windows, least squares on the windows' estimates (each where it applies:
    ``WindowMeasure.centre``); else the translation itself (tie points are noisier than the
    window estimates: fitted freely they moved a corrected target by 0.6 m)."""
    used = [w for w in pair.windows if w.status == "used"]
    if not used:
        return None
    tie0 = np.concatenate([w.tie_a for w in used])
    if pair.affine_shown and len(tie0) >= 12:
        p0 = geo.pixel_to_map(tie0, co.grid.transform)
        p1 = geo.pixel_to_map(np.concatenate([w.tie_b for w in used]), co.grid.transform)
        source = "tie points"
    else:
        p0 = geo.pixel_to_map(np.array([w.centre for w in used]), co.grid.transform)
        p1 = geo.pixel_to_map(np.array([w.centre + w.shift_px for w in used]), co.grid.transform)
        source = "windows" if len(used) >= 4 else "the translation (no rotation or scale beyond the tie points' noise)"
    if source.startswith("the translation"):
        A, t = np.eye(2), np.mean(p1 - p0, axis=0)
    else:
        M, _ = engine.fit_affine_px(p0, p1 - p0)           # the same least squares, in map coordinates
        A, t = M[:, :2], M[:, 2]
    residual = np.linalg.norm(p0 @ A.T + t - p1, axis=1)
    return {"matrix": np.round(np.hstack([A, t[:, None]]), 9).tolist(), "fitted_to": source, "points": len(p0),
            "rmse": float(np.sqrt(np.mean(residual ** 2))),
            "rmse_units": "m" if co.grid.crs.is_projected else "degrees (the reference CRS's units)",
            "convention": "reference map (x, y) → target map (x', y') = matrix @ (x, y, 1)"}


# ----------------------------------------------------------------------------- outputs
def write_outputs(co: Coregistration, result: dict, folder: Path, write_corrected: bool = False,
                  correction: str = "translation") -> list[Path]:
    """Every output file of a co-registration, built in a folder of its own and published into
    ``folder`` all at once (``engine.OutputFolder.building``: the earlier run's outputs gone with
    it, nothing stale beside a refusal)."""
    out = engine.OutputFolder(folder, PAIR_OUTPUTS)
    names = ["coregistration.json", "tie_points.geojson", "tie_points.csv"]
    with out.building() as tmp:
        rows = tie_point_rows(co)
        write_tie_points(co, rows, tmp)
        if result["verified"]:
            write_shift_field(co, tmp / "shift_field.tif")
            names.append("shift_field.tif")
            if write_corrected and correction == "translation":
                written = write_corrected_target(co, result, tmp / "corrected")
            elif write_corrected:
                written = [write_resampled_target(co, result, tmp / "corrected", correction)]
            if write_corrected:
                names += [f"corrected/{p.name}" for p in written]
                items = [engine.stac_item(engine.safe_name(p.stem), co.loc_tgt.date, p, str(co.tgt.source),
                                          {"coregistration:dx_m": result["shift_m"]["dx"],
                                           "coregistration:dy_m": result["shift_m"]["dy"],
                                           "coregistration:sigma_m": result["shift_m"]["sigma_m"],
                                           "coregistration:correction": correction,
                                           "processing:software": {result["provenance"]["name"]:
                                                                   result["provenance"]["version"]}})
                         for p in written if p.suffix == ".tif" and engine.stac_datetime(co.loc_tgt.date)]
                if engine.stac_datetime(co.loc_tgt.date) is None:
                    print(engine.undated_line(co.inputs[1], remote.stem_of(str(co.inputs[1]))), file=sys.stderr)
                write_json(tmp / "corrected" / "items.geojson", {"type": "FeatureCollection", "features": items})
                names.append("corrected/items.geojson")
        write_report(co, result, rows, tmp / "report.png")
        names.append("report.png")
        write_json(tmp / "coregistration.json", {**result, "outputs": [str(out.folder / n) for n in names]})
    return [out.folder / n for n in names]


def tie_point_rows(co: Coregistration) -> list[dict]:
    rows = []
    crs = co.grid.crs
    for w in co.pair.windows:
        if not len(w.tie_a):
            continue
        p0 = geo.pixel_to_map(w.tie_a, co.grid.transform)
        p1 = geo.pixel_to_map(w.tie_b, co.grid.transform)
        d, _ = geo.displacements_in_metres(p0, p1, crs)
        ll0 = geo.reproject_points(p0, crs, "EPSG:4326")
        for i in range(len(p0)):
            rows.append({"window": w.index, "ref_x": float(p0[i, 0]), "ref_y": float(p0[i, 1]),
                         "target_x": float(p1[i, 0]), "target_y": float(p1[i, 1]),
                         "dx_m": float(d[i, 0]), "dy_m": float(d[i, 1]), "score": float(w.score[i]),
                         "inlier": w.status == "used", "lon": float(ll0[i, 0]), "lat": float(ll0[i, 1])})
    return rows


def write_tie_points(co: Coregistration, rows: list[dict], folder: Path) -> None:
    """Tie points as GeoJSON (WGS84 points at the reference position) and CSV (reference CRS)."""
    fields = ["window", "ref_x", "ref_y", "target_x", "target_y", "dx_m", "dy_m", "score", "inlier", "lon", "lat"]
    geojson = {"type": "FeatureCollection", "source_crs": co.grid.crs.to_string(),
               "features": [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [r["lon"], r["lat"]]},
                             "properties": r} for r in rows]}
    write_json(folder / "tie_points.geojson", geojson)
    engine.write_csv(folder / "tie_points.csv", rows, fields)


def shift_field(co: Coregistration) -> tuple[np.ndarray, object]:
    """(2, rows, cols) dx, dy in metres on a coarse grid over the reference (inverse-distance
    weighted window shifts), and its transform."""
    from rasterio.transform import Affine

    g = co.grid
    cell = max(g.width, g.height) / co.cfg.field_cells
    cols, rows = max(1, round(g.width / cell)), max(1, round(g.height / cell))
    xs = (np.arange(cols) + 0.5) * g.width / cols - 0.5
    ys = (np.arange(rows) + 0.5) * g.height / rows - 0.5
    field_px = displacement_px(co, {}, "field", xs, ys)                        # (2, rows, cols)
    gx, gy = np.meshgrid(xs, ys)
    metres, _ = pixel_shifts_in_metres(g, np.stack([gx.ravel(), gy.ravel()], -1),
                                       field_px.reshape(2, -1).T)
    transform = g.transform * Affine.scale(g.width / cols, g.height / rows)
    return metres.T.reshape(2, rows, cols).astype(np.float32), transform


def write_shift_field(co: Coregistration, path: Path) -> Path:
    import rasterio

    data, transform = shift_field(co)
    with atomic_path(path) as tmp:
        with rasterio.open(tmp, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=2,
                           dtype="float32", crs=co.grid.crs, transform=transform) as dst:
            dst.write(data)
            dst.set_band_description(1, "dx_m (east)")
            dst.set_band_description(2, "dy_m (north)")
    return path


def target_files(co: Coregistration) -> list[str]:
    """Every file of the target product (a multi-band file once)."""
    return sorted({p for res in co.tgt.band_files.values() for p in res.values()})


def write_corrected_target(co: Coregistration, result: dict, folder: Path) -> list[Path]:
    """The target with its georeference moved by the correction (the negative of the shift,
    expressed in each file's own CRS), no resampling, as Cloud-Optimized GeoTIFFs with the
    provenance as tags: the target file itself when it holds every band, else one per band."""
    folder.mkdir(parents=True, exist_ok=True)
    d = np.array(result["shift_m"]["shift_px"])
    tags = engine.provenance_tags(result["provenance"], coregistration_shift_m=result["shift_m"],
                                  coregistration_correction="translation")
    written = []
    for path in target_files(co):
        with dp.open_raster(path) as src:
            crs = src.crs
        move = engine.correction_in_crs(co.grid, d, crs)
        written.append(engine.write_moved(path, folder / (engine.safe_name(remote.stem_of(path)) + "_coregistered.tif"),
                                          move, tags))
    return written


def displacement_px(co: Coregistration, result: dict, model: str, cols: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(2, len(rows), len(cols)) displacement in reference-grid px at those pixel centres, by the
    ``affine`` (map → map, fitted to the windows) or the ``field`` (windows, inverse-distance)."""
    gx, gy = np.meshgrid(cols.astype(np.float64), rows.astype(np.float64))
    if model == "affine":
        M = np.array(result["affine"]["matrix"])
        p = geo.pixel_to_map(np.stack([gx.ravel(), gy.ravel()], -1), co.grid.transform)
        moved = geo.map_to_pixel(p @ M[:, :2].T + M[:, 2], co.grid.transform)
        return (moved - np.stack([gx.ravel(), gy.ravel()], -1)).T.reshape(2, *gx.shape)
    used = [w for w in co.pair.windows if w.status == "used"]
    centres = np.array([w.centre for w in used])
    shifts = np.array([w.shift_px for w in used])
    d2 = (gx[..., None] - centres[:, 0]) ** 2 + (gy[..., None] - centres[:, 1]) ** 2
    wgt = 1 / (d2 + (co.cfg.window / 2) ** 2)
    return np.einsum("rcn,nk->krc", wgt, shifts) / wgt.sum(-1)


def write_resampled_target(co: Coregistration, result: dict, folder: Path, model: str, block: int = 1024) -> Path:
    """The target resampled onto the reference grid by the ``affine`` or the ``field`` (Lanczos,
    after a cubic resampling where the target is not on the reference's grid), every band of the
    target product (every band of a single raster file, named or not), in its own data type, block
    by block, as one COG with the provenance as tags. No data: the target's own no-data value,
    else NaN for floating-point data and 0 for integers (data then clipped to ≥ 1)."""
    import rasterio
    import rasterio.shutil
    from rasterio.transform import Affine

    if model == "affine" and not result.get("affine"):
        raise PipelineError(f"{co.tgt.source}: no affine could be fitted (too few tie points); use "
                            "correction='translation' or correction='field'")
    folder.mkdir(parents=True, exist_ok=True)
    g = co.grid
    offset = np.array(co.loc_tgt.offset_px)
    P = 1024                                 # px of the target read around the grid
    padded = dp.Grid(g.transform * Affine.translation(offset[0] - P, offset[1] - P), g.width + 2 * P,
                     g.height + 2 * P, g.crs)
    layers = target_layers(co)                        # (file, band index, description)
    dtypes, nodatas = [], []
    for path, _, _ in layers:
        with dp.open_raster(path) as src:
            dtypes.append(src.dtypes[0])
            nodatas.append(dp.nodata_value(src, co.tgt.nodata))
    dtype = np.result_type(*dtypes)
    floating = np.issubdtype(dtype, np.floating)
    fill = nodatas[0] if nodatas[0] is not None else (np.nan if floating else 0)
    low, high = (None, None) if floating else (np.iinfo(dtype).min + (fill == np.iinfo(dtype).min),
                                              np.iinfo(dtype).max)
    name = folder / f"{engine.safe_name(remote.stem_of(co.tgt.source))}_coregistered_{model}.tif"
    with tempfile_beside(name) as plain:
        profile = dict(driver="GTiff", width=g.width, height=g.height, count=len(layers), dtype=dtype.name,
                       crs=g.crs, transform=g.transform, nodata=fill, tiled=True, blockxsize=512, blockysize=512,
                       compress="deflate", BIGTIFF="IF_SAFER")
        with rasterio.open(plain, "w", **profile) as dst:
            for r0 in range(0, g.height, block):
                for c0 in range(0, g.width, block):
                    h, w = min(block, g.height - r0), min(block, g.width - c0)
                    # the displacement is smooth: evaluated every 32 px, then bilinearly between those
                    # nodes (node k at px k·step: exact for the affine; cv2.resize would align pixel
                    # centres instead and stretch it by n/(n−1), which left 9 % of a rotation in)
                    step = 32
                    cs, rs = np.arange(c0, c0 + w + step, step), np.arange(r0, r0 + h + step, step)
                    coarse = displacement_px(co, result, model, cs, rs) - offset[:, None, None]
                    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
                    d = np.stack([cv2.remap(c.astype(np.float32), xx / step, yy / step, cv2.INTER_LINEAR,
                                            borderMode=cv2.BORDER_REPLICATE) for c in coarse])
                    pad = min(P, int(np.ceil(np.abs(d).max())) + 4)
                    win = (c0 - pad + P, r0 - pad + P, w + 2 * pad, h + 2 * pad)
                    map_x, map_y = xx + pad + d[0], yy + pad + d[1]
                    for k, (path, index, _) in enumerate(layers, 1):
                        src, nodata = dp.read_to_grid(path, padded, win, (win[3], win[2]), "cubic", band=index,
                                                      with_nodata=True, warp=True, nodata=co.tgt.nodata)
                        src = np.where(nodata, 0, np.nan_to_num(src.astype(np.float32)))
                        out = cv2.remap(src, map_x, map_y, cv2.INTER_LANCZOS4, borderMode=cv2.BORDER_CONSTANT,
                                        borderValue=0)
                        bad = cv2.remap(nodata.astype(np.uint8), map_x, map_y, cv2.INTER_NEAREST,
                                        borderMode=cv2.BORDER_CONSTANT, borderValue=1) > 0
                        if not floating:
                            out = np.clip(np.round(out), low, high)
                        out = np.where(bad, fill, out).astype(dtype)
                        dst.write(out, k, window=rasterio.windows.Window(c0, r0, w, h))
            dst.descriptions = tuple(d for _, _, d in layers)
            dst.update_tags(**engine.provenance_tags(result["provenance"], coregistration_correction=model))
        with atomic_path(name) as tmp:
            rasterio.shutil.copy(plain, tmp, driver="COG", compress="deflate")
    return name


def target_layers(co: Coregistration) -> list[tuple[str, int, str | None]]:
    """The target's bands to resample, as (file, 1-based band index, description): every band of
    a single raster file; one a band file otherwise."""
    files = target_files(co)
    if len(files) == 1:
        with dp.open_raster(files[0]) as src:
            return [(files[0], k, src.descriptions[k - 1]) for k in range(1, src.count + 1)]
    return [(co.tgt.band_path(b), co.tgt.band_index.get(b, 1), b) for b in co.tgt.band_files if not b.isdigit()]


@contextlib.contextmanager
def tempfile_beside(path: Path):
    """A temporary file name beside ``path``, removed afterwards."""
    tmp = path.with_name(f".{path.stem}.building.tif")
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def write_report(co: Coregistration, result: dict, rows: list[dict], path: Path) -> Path:
    """Window shift vectors over the reference overview, the tie points' displacements, the numbers."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    g = co.grid
    overview = co.overview.image            # read once, for the coarse estimate
    fig = Figure(figsize=(13, 6.5), dpi=100)
    ax = fig.add_axes([0.02, 0.08, 0.5, 0.82])
    ax.imshow(normalize_for_network(overview, 1)[0], cmap="gray", extent=(-0.5, g.width - 0.5, g.height - 0.5, -0.5))
    measured = {w.index: w for w in co.pair.windows}
    for k, (col, row, ww, wh) in enumerate(co.windows):
        colour = ("lime" if k in measured and measured[k].status == "used" else
                  "grey" if k in co.skipped else "red")
        ax.add_patch(Rectangle((col, row), ww, wh, fill=False, ec=colour, lw=0.6, alpha=0.6,
                               ls=":" if colour == "grey" else "-"))
    used = [w for w in co.pair.windows if w.status == "used" and w.shift_px is not None]
    if used:
        c = np.array([w.centre for w in used])
        d = np.array([w.shift_px for w in used])
        scale = 0.25 * co.cfg.window / max(np.abs(d).max(), 0.5)
        ax.quiver(c[:, 0], c[:, 1], d[:, 0], d[:, 1], color="yellow", angles="xy", scale_units="xy", scale=1 / scale,
                  width=0.004)
        ax.set_title(f"window shifts ×{scale:.0f} (green: used, red: rejected, grey: not read)", fontsize=9)
    ax.set_axis_off()
    ax2 = fig.add_axes([0.58, 0.45, 0.38, 0.45])
    if rows:
        dx = np.array([r["dx_m"] for r in rows if r["inlier"]])
        dy = np.array([r["dy_m"] for r in rows if r["inlier"]])
        if len(dx):
            lim = max(5.0, float(np.percentile(np.abs(np.r_[dx, dy]), 95)) * 1.2)
            ax2.hist2d(dx, dy, bins=41, range=[[-lim, lim], [-lim, lim]], cmap="magma")
    ax2.set_xlabel("dx (m, east)")
    ax2.set_ylabel("dy (m, north)")
    ax2.set_title("tie points' displacements (used windows)", fontsize=9)
    shift = result.get("shift_m")
    text = [f"reference: {result.get('reference')}", f"target: {result.get('target')}",
            f"verified: {result['verified']}" + (f" — {result['reason']}" if result.get("reason") else "")]
    if shift:
        text.append(f"shift: dx {shift['dx']:+.2f} m east, dy {shift['dy']:+.2f} m north "
                    f"(σ {shift['sigma_m']:.2f} m, CE90 {shift['ce90_m']:.2f} m)")
    text += [f"warning: {w}" for w in result.get("warnings", [])]
    wn = result["windows"]
    text.append(f"windows: {wn['used']} used, {wn['rejected']} rejected, {wn['tried']} of {wn['planned']} read; "
                f"tie points {result['tie_points']}; "
                f"{result.get('seconds', 0):.1f} s")
    fig.text(0.58, 0.36, "\n".join(textwrap.fill(t, 70) for t in text), va="top", fontsize=8.5,
             family="monospace")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


# ----------------------------------------------------------------------------- API and script
@engine.one_writer
def coregister(reference, target, output: str | Path | None = None, bands: tuple[str, ...] | None = None,
               write_corrected: bool = False, cfg: CoregisterConfig | None = None,
               pipeline: Pipeline | None = None, progress: bool = True,
               correction: str = "translation", ref_nodata: float | str | None = None,
               target_nodata: float | str | None = None, dates: dict | None = None) -> CoregistrationResult:
    """Co-register ``target`` to ``reference``; with ``output``, write every output there
    (``correction``: the model the corrected target is written with — ``translation``: its
    georeference moved, no resampling; ``affine`` / ``field``: resampled onto the reference grid).
    ``ref_nodata`` / ``target_nodata``: each input's no-data rule (``engine.open_date``:
    None = its files' tags, and fill they do not declare found and read as no-data, with a
    warning; a number; ``"none"``). ``dates``: {NAME: YYYY-MM-DD} for inputs whose date their
    metadata and name do not give (NAME: the path, file name or stem). With ``output``, the call
    is the folder's one writer (``engine.one_writer``: another run into it is refused).
    Returns the content of ``coregistration.json`` as a ``results.CoregistrationResult``."""
    if correction not in ("translation", "affine", "field"):
        raise PipelineError(f"correction={correction!r}: choose 'translation', 'affine' or 'field'")
    if output is not None:
        engine.OutputFolder(output, PAIR_OUTPUTS).check()         # before any work
    co = Coregistration(reference, target, bands, cfg, pipeline, progress, ref_nodata, target_nodata, dates)
    with one_blas_thread():            # numpy's BLAS: see utils.one_blas_thread
        result = co.run()
        if write_corrected and correction != "translation":     # the warning's advice is already taken
            result["warnings"] = [w.replace(engine.AFFINE_ADVICE, f"corrected here with --correction {correction}")
                                  for w in result.get("warnings", [])]
        result["provenance"] = engine.provenance([reference, target], co.cfg,
                                                 bands=list(dp.normalise_bands(bands) or co.cfg.bands),
                                                 correction=correction if write_corrected else None,
                                                 matching=co.pipeline.name, device=engine.pipeline_device(co.pipeline))
        if output is not None:
            result["outputs"] = [str(p) for p in write_outputs(co, result, Path(output), write_corrected, correction)]
        if result.get("shift_m") is not None:
            result["shift_m"] = ShiftEstimate.from_dict(result["shift_m"])
    return CoregistrationResult.from_dict(result)


def main(argv=None) -> int:
    cfg = CoregisterConfig()
    parser = cli.parser(__doc__, epilog=__doc__[__doc__.index("Exit codes"):])
    parser.add_argument("reference", nargs="?", help="the product the target is aligned to (a path or URL)")
    parser.add_argument("target", nargs="?", help="the product to co-register (a path or URL)")
    parser.add_argument("--stack", nargs="*", default=None, metavar="INPUT",
                        help="co-register these dates jointly instead (files, folders, globs, URLs of rasters, "
                             "STAC Items or ItemCollections; docs/coregistration.md)")
    parser.add_argument("--stac-search", metavar="API_URL", default=None,
                        help="with --stack: the dates are the Items this STAC API finds (see --collection, --bbox, "
                             "--datetime, --max-cloud)")
    parser.add_argument("--collection", action="append", default=[], help="with --stac-search: a collection to "
                        "search (e.g. sentinel-2-l2a); repeat for several")
    parser.add_argument("--bbox", nargs=4, type=float, metavar=("W", "S", "E", "N"), default=None,
                        help="with --stac-search: the area, degrees")
    parser.add_argument("--datetime", default=None, help="with --stac-search: START/END (ISO dates, .. open)")
    parser.add_argument("--max-cloud", type=float, default=None, help="with --stac-search: eo:cloud_cover at most, %%")
    parser.add_argument("--max-items", type=int, default=100, help="with --stac-search: Items used at most")
    parser.add_argument("--reference", "--stack-reference", dest="stack_reference", default="auto",
                        help="with --stack: auto (the most valid, textured date) or the path of one input")
    parser.add_argument("--scheduler", default=None,
                        help="with --stack: a Dask scheduler address (tcp://HOST:8786); none = a LocalCluster")
    parser.add_argument("--workers", type=int, default=0,
                        help="with --stack and no --scheduler: worker processes; 0 = one per core")
    parser.add_argument("--neighbours", type=int, default=2,
                        help="with --stack: dates matched on each side in time (and each with the reference)")
    parser.add_argument("--output", type=Path, default=config.OUTPUT_DIR / "coregistration",
                        help="the result folder (a rerun replaces our earlier result there, all at once; one run "
                             "at a time)")
    parser.add_argument("--bands", default=",".join(cfg.bands),
                        help="bands used: names (those both products have) or, for a raster whose bands have no "
                             "names, 1-based indices as GDAL counts them (3,2,1)")
    parser.add_argument("--ref-bands", dest="reference_bands", metavar="BANDS", default=",".join(cfg.reference_bands),
                        help="a pair's reference bands, where they differ from --bands (e.g. pan, or 1): names, "
                             "common names (red,green,blue, nir, swir16, swir22, pan) or 1-based indices")
    parser.add_argument("--target-bands", metavar="BANDS", default=",".join(cfg.target_bands),
                        help="a pair's target bands, where they differ from --bands (e.g. 3,2,1 of a 5-band "
                             "raster against a 1-band reference)")
    parser.add_argument("--window", type=int, default=cfg.window, help="matching window side, px")
    parser.add_argument("--max-windows", type=int, default=cfg.max_windows, help="windows matched at most")
    parser.add_argument("--overview", type=int, default=cfg.overview, help="coarse estimate's longer side, px")
    parser.add_argument("--matcher", default=cfg.matcher,
                        help=f"every window's matching: {', '.join(matcher_choices())}, or a matcher of your own "
                             f"as {OWN_MATCHER} (its module registers it; Dask's workers import it too). Default: "
                             "a pair sift-first (SIFT, the learned path only where SIFT does not verify or has few "
                             "inliers: a pair SIFT answers never loads torch), a stack fast (mnn, SuperGlue where "
                             "they give few inliers; a stack takes no sift-first). auto: SuperGlue where its "
                             "checkpoint is, else mnn (mutual nearest neighbours)")
    parser.add_argument("--write-corrected", action="store_true",
                        help="also write the target aligned to the reference, as COGs (see --correction)")
    for role, flag in (("reference", "--ref-nodata"), ("target", "--target-nodata")):
        parser.add_argument(flag, default=None, metavar="VALUE",
                            help=f"the {role}'s no-data value (a number, nan, or none: no value is no-data); "
                                 "default: its files' own tag, and fill they do not declare (a constant from the "
                                 "edge inwards: 0, the dtype's maximum ...) is found and read as no-data, with a "
                                 "warning")
    parser.add_argument("--correction", default="translation", choices=["translation", "affine", "field"],
                        help="the corrected target: its georeference moved (translation, no resampling), or "
                             "resampled onto the reference grid by the affine or the shift field")
    parser.add_argument("--date", action="append", default=[], metavar="NAME=YYYY-MM-DD",
                        help="the acquisition date of an input (NAME: its path, file name or stem); repeat for "
                             "several. Otherwise a date comes from the file's metadata (a .SAFE's or STAC Item's, "
                             "the raster's ACQUISITIONDATE / DATE_ACQUIRED / SENSING_TIME tags), a Sentinel-2 or "
                             "Landsat product id or a date (2023-06-30, 2023_06_30, 20230630) in its name, else "
                             "TIFFTAG_DATETIME; an input without one gets no STAC Item")
    cli.add_runtime(parser, device_help="cpu, cuda, or auto (a CUDA GPU where torch can use one, else the CPU); "
                                        "with --stack, every worker's (auto: resolved on each worker)")
    args = parser.parse_args(argv)
    # Every flag has its effect on a pair and on a stack alike, or is refused in one line where it
    # has none (never ignored): a flag counts as given at its default value too (tests/test_flags.py)
    given = cli.given(parser, argv)
    flag = {a.dest: a.option_strings[0] for a in parser._actions if a.option_strings}

    def named(*dests: str) -> list[str]:
        return [flag[d] for d in dests if d in given]

    dated = {}
    for text in args.date:
        name, _, value = text.rpartition("=")
        if not name or not engine.parse_date(value) or len(value.strip()) != 10:
            parser.error(f"--date {text}: NAME=YYYY-MM-DD (NAME: an input's path, file name or stem)")
        dated[name] = value.strip()
    args.date = dated or None
    for dest in ("workers", "neighbours"):
        if getattr(args, dest) < 0:
            parser.error(f"{flag[dest]} {getattr(args, dest)}: 0 or more")
    if args.max_items < 1:
        parser.error(f"--max-items {args.max_items}: 1 or more")
    search_only = named("collection", "bbox", "datetime", "max_cloud", "max_items")
    if search_only and not args.stac_search:
        parser.error(f"{', '.join(search_only)}: for --stac-search only")
    if args.bbox and not (-90 <= args.bbox[1] <= 90 and -90 <= args.bbox[3] <= 90 and -180 <= args.bbox[0] <= 180
                          and -180 <= args.bbox[2] <= 180):
        parser.error(f"--bbox {' '.join(map(str, args.bbox))}: W S E N in degrees (longitudes -180..180, "
                     "latitudes -90..90)")
    if args.bbox and args.bbox[1] >= args.bbox[3]:
        parser.error(f"--bbox {' '.join(map(str, args.bbox))}: W S E N in degrees, south below north")
    if args.stack is not None and args.correction != "translation":
        parser.error(f"--correction {args.correction} is for a pair; a stack's corrected dates have their "
                     "georeference moved (translation)")
    if "correction" in given and not args.write_corrected:
        parser.error(f"--correction {args.correction}: the model the corrected target is written with; add "
                     "--write-corrected (without it, no corrected target is written)")
    if args.stac_search and args.stack is None:
        parser.error("--stac-search finds the dates of a stack: add --stack")
    if args.stack is not None and not args.stack and not args.stac_search:
        parser.error("--stack needs its dates (files, folders, globs or URLs), or --stac-search API_URL")
    if args.stack is not None:
        if args.reference is not None:
            parser.error(f"{args.reference}: give the dates of a stack after --stack (and its reference with "
                         "--reference), or REFERENCE TARGET without --stack")
        pair_only = named("ref_nodata", "target_nodata")
        if pair_only:
            parser.error(f"{', '.join(pair_only)}: for a pair; a stack reads each date's own no-data tag, and fill "
                         "a file does not declare as no-data")
        per_input = named("reference_bands", "target_bands")
        if per_input:
            parser.error(f"{', '.join(per_input)}: for a pair; a stack's dates share --bands (common names such as "
                         "red,green,blue or nir pick the same light on Sentinel-2 and Landsat)")
        if "threads" in given:
            parser.error("--threads: for a pair; a stack's workers run one torch thread each (choose how many "
                         "workers with --workers)")
        if "workers" in given and args.scheduler:
            parser.error("--workers: the LocalCluster's; with --scheduler, the cluster's own workers run the "
                         "tasks (dask worker --nworkers N)")
        return stack_main(args, config_of(args, cfg))
    if args.reference is None or args.target is None:
        parser.error("give REFERENCE and TARGET, or --stack INPUTS...")
    if "stack_reference" in given:
        parser.error("--reference chooses the reference of a --stack; for a pair, REFERENCE is the first of "
                     "REFERENCE TARGET")
    stack_only = named("scheduler", "workers", "neighbours")
    if stack_only:
        parser.error(f"{', '.join(stack_only)}: for --stack only; a pair runs in this process")
    try:
        set_threads(args.threads or None)
        cfg = engine.checked_config(config_of(args, cfg))    # before any model loads: one line naming what is wrong
        pipeline = pair_pipeline(cfg, args.device)
        result = coregister(args.reference, args.target, args.output, args.bands,
                            args.write_corrected, cfg, pipeline, correction=args.correction,
                            ref_nodata=args.ref_nodata, target_nodata=args.target_nodata, dates=args.date)
    except BaseException as exc:
        code = cli.failure(exc, **ending(args.output, stack=False))
        if code is None:
            raise
        return code
    for w in result.get("warnings", []):
        print(f"warning: {w}", file=sys.stderr)
    shift = result["shift_m"]
    if shift:
        print(f"shift of the target: dx {shift['dx']:+.2f} m east, dy {shift['dy']:+.2f} m north "
              f"(sigma {shift['sigma_m']:.2f} m, CE90 {shift['ce90_m']:.2f} m); {result['windows']['used']} "
              f"window{'s' if result['windows']['used'] != 1 else ''} used of {result['windows']['tried']} read "
              f"({result['windows']['planned']} planned), "
              f"{result['tie_points']} tie points, {result['seconds']:.1f} s → {args.output}")
        return 0
    print(f"not co-registered: {result['reason']} → {args.output}", file=sys.stderr)
    return 1


def config_of(args, cfg: CoregisterConfig) -> CoregisterConfig:
    """``cfg`` with what the flags set: every flag whose ``dest`` is a field of ``CoregisterConfig``
    (the same name; comma-separated bands as a tuple), for a pair and a stack alike."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(cfg)}
    return dataclasses.replace(cfg, **{k: dp.split_bands(v) if isinstance(getattr(cfg, k), tuple) else v
                                       for k, v in vars(args).items() if k in fields})


def ending(output: Path, stack: bool) -> dict:
    """What a run into ``output`` says when Ctrl-C or a refused write ends it (``cli.failure``)."""
    said = f"nothing published in {output} (its earlier result, if any, stands)"
    kept = f"; the finished work is kept in {output / 'cache'}, and a rerun resumes from it" if stack else ""
    return {"interrupted": f"interrupted: {said}{kept}", "note": f"; {said}", "where": output}


def stack_main(args, cfg: CoregisterConfig) -> int:
    from s2coreg.coregistration.stack import coregister_stack

    try:
        with engine.OutputFolder(args.output, engine.RESULT_NAMES).locked():      # before the search
            inputs = list(args.stack)
            if args.stac_search:
                found = dp.search_items(args.stac_search, args.collection, args.bbox, args.datetime, args.max_cloud,
                                        args.max_items)
                print(f"{len(found)} Items found by {args.stac_search}", file=sys.stderr)
                inputs += found
            result = coregister_stack(inputs, args.output, args.stack_reference, bands=args.bands, cfg=cfg,
                                      scheduler=args.scheduler, workers=args.workers or None,
                                      neighbours=args.neighbours, write_corrected=args.write_corrected,
                                      dates=args.date, device=args.device)
    except BaseException as exc:
        code = cli.failure(exc, **ending(args.output, stack=True))
        if code is None:
            raise
        return code
    rows = result["dates"]
    for r in rows:
        if r["status"] == "excluded":
            reason = cli.flags(str(r["reason"]))          # the library's parameters said as this command's flags
            print(f"excluded: {reason if reason.startswith(r['path']) else r['path'] + ': ' + reason}", file=sys.stderr)
    placed = sum(r["status"] != "excluded" for r in rows)
    print(f"{placed} of {len(rows)} dates placed relative to {result['reference']} ({result['reference_reason']}) "
          f"in {result['seconds']:.1f} s → {args.output / 'shifts.csv'}")
    if result.get("errors"):      # the placement rests on pairs that failed, not on refusals: not a result
        print(f"error: {len(result['errors'])} pair{'s' if len(result['errors']) != 1 else ''} could not be measured "
              f"(the placement rests on the others; pairs.csv's error column): {result['errors'][0]}", file=sys.stderr)
        return 2
    return 0 if placed == len(rows) else 1
