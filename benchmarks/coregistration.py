"""Co-registration accuracy of ``coregister.py`` beside AROSICS and ``ImageMatcher``, on real
cross-date pairs whose target *content* is moved by known sub-pixel shifts.

    python benchmarks/coregistration.py --data ../shared/data [--no-arosics] [--split val|test]
                                        [--output data/results/coregistration.json]

writes the JSON and, where ``coregister.py`` refused a pair or missed it by more than 1 m, a
picture of those pairs beside it (``coregistration_<split>_misses.png``).

Pairs (``--split val``, the default: places the shipped models were selected on, never trained on;
``--split test``: places nobody here trained or selected on):
* val: the five OSCD validation cities (both dates reprojected to their UTM zone at 10 m, 3-band
  uint16 GeoTIFFs B04, B03, B02 with band descriptions, nodata 0; 241–1180 px) and OMBRIA's
  validation flood chips (every 5th chip of its test split; before/after, 256² 8-bit RGB, written
  as unnamed 3-band uint8 GeoTIFFs with a UTM georeference and no nodata tag — read as RGB);
* test: Lake Bracciano (318 px, 3-band, two dates on the neighbouring UTM zone's grid) and OMBRIA
  2021's chips.

(a) Cross-date, differential: the target's content is moved twice by known sub-pixel shifts s1, s2
    (±1.5 px each axis; ``imaging.fourier_shift``: a band-limited shift of the reflect-padded image,
    on the same grid — as a real misregistration looks; windows reach the data's edge on these
    small scenes); the error is |(estimate2 − estimate1) − (s2 − s1)| in metres, which cancels the
    dataset's own ~1 px residual between the dates.
(b) Same date, absolute: the reference against its own content moved by s3 (±1.5 px) with a 10 %
    gain, an offset and noise; the error is |estimate − s3|.
(c) Calibration of ``sigma_m``: the share of same-date errors within 2σ (target ≥ 80 %), and of
    cross-date differential errors within 2·√(σ1² + σ2²).
(d) The 30-date cloud series of SEN12MS-CR-TS region 146 against a clear date: results given,
    refused, and beyond 20 m (a wrong answer).

Methods, same files, same run: ``coregister.py`` (``coregister.coregister``), ``ImageMatcher``'s
``shift_m`` on the whole images (the matcher alone), AROSICS 1.12 ``COREG`` (FFT phase correlation
in a window as large as fits, up to 256²) on each of the three bands (it takes one band a side),
targets on another UTM zone reprojected onto the reference's CRS first, as its users would. AROSICS is a benchmark-only dependency
(not in requirements.txt); on these machines:
    apt-get install libgdal-dev && pip install --no-build-isolation gdal==$(gdal-config --version)
    pip install -c <(echo gdal==$(gdal-config --version)) arosics
Its ``x_shift_map`` / ``y_shift_map`` are the *correction*: the displacement is their negative.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import s2coreg.config as config  # noqa: E402  first: OpenMP's waiting policy, before torch is used

BANDS = ("B04", "B03", "B02")
MAX_SHIFT = 1.5            # px, each axis
OMBRIA_ORIGIN = (500_000.0, 4_800_000.0)    # a UTM 32N georeference for the chips (they have none)


# ----------------------------------------------------------------------------- pairs
def stack_bands(files: list[Path], out: Path, crs=None) -> None:
    """Band files → one 3-band GeoTIFF (B04, B03, B02, descriptions set, nodata 0); reprojected
    to ``crs`` at 10 m if given."""
    import rasterio
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    with rasterio.open(files[0]) as src:
        profile, src_crs, src_transform = src.profile, src.crs, src.transform
        width, height = src.width, src.height
    data = np.stack([rasterio.open(f).read(1) for f in files])
    if crs is not None and crs != src_crs:
        left, bottom, right, top = rasterio.transform.array_bounds(height, width, src_transform)
        transform, w, h = calculate_default_transform(src_crs, crs, width, height, left, bottom, right, top,
                                                      resolution=10)
        out_data = np.zeros((3, h, w), data.dtype)
        reproject(data, out_data, src_transform=src_transform, src_crs=src_crs, dst_transform=transform,
                  dst_crs=crs, resampling=Resampling.bilinear, src_nodata=0, dst_nodata=0)
        data, src_transform, src_crs, width, height = out_data, transform, crs, w, h
    profile.update(driver="GTiff", count=3, crs=src_crs, transform=src_transform, width=width, height=height,
                   nodata=0, compress="deflate")
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = BANDS


def chip_geotiff(png: Path, out: Path) -> None:
    """An 8-bit RGB chip as an unnamed 3-band uint8 GeoTIFF on a UTM 10 m grid (no nodata tag)."""
    import rasterio
    from PIL import Image
    from rasterio.transform import from_origin

    rgb = np.asarray(Image.open(png).convert("RGB"))
    with rasterio.open(out, "w", driver="GTiff", width=rgb.shape[1], height=rgb.shape[0], count=3, dtype="uint8",
                       crs="EPSG:32632", transform=from_origin(*OMBRIA_ORIGIN, 10, 10)) as dst:
        dst.write(np.moveaxis(rgb, -1, 0))


def three_bands(src_path: Path, out_path: Path) -> Path:
    import rasterio

    with rasterio.open(src_path) as src:
        idx = [src.descriptions.index(x) + 1 for x in BANDS]
        profile = {**src.profile, "count": 3, "compress": "deflate", "nodata": 0}
        with rasterio.open(out_path, "w", **profile) as dst:
            dst.write(src.read(idx))
            dst.descriptions = BANDS
    return out_path


def pairs(data: Path, tmp: Path, split: str) -> list[dict]:
    """The benchmark's pairs as GeoTIFFs in ``tmp``."""
    import rasterio

    from s2coreg.training.dataset import OMBRIA_VAL_EVERY, OSCD_VAL_CITIES
    from s2coreg.io.geo import metric_crs

    out = []
    if split == "val":
        for city in OSCD_VAL_CITIES:
            folder = data / "oscd" / city
            if not folder.exists():
                continue
            with rasterio.open(folder / "imgs_1" / "B04.tif") as src:
                centre = np.array([[(src.bounds.left + src.bounds.right) / 2,
                                    (src.bounds.bottom + src.bounds.top) / 2]])
                utm = metric_crs(src.crs, centre)
            paths = []
            for k in (1, 2):
                p = tmp / f"oscd_{city}_{k}.tif"
                stack_bands([folder / f"imgs_{k}" / f"{band}.tif" for band in BANDS], p, utm)
                paths.append(p)
            out.append({"name": f"oscd {city}", "category": "city", "ref": paths[0], "tgt": paths[1]})
        for before in sorted((data / "ombria" / "BEFORE").glob("S2_before_*.png")):
            chip = before.stem.split("_")[-1]
            if int(chip) % OMBRIA_VAL_EVERY:
                continue
            ref, tgt = tmp / f"ombria_{chip}_before.tif", tmp / f"ombria_{chip}_after.tif"
            chip_geotiff(before, ref)
            chip_geotiff(data / "ombria" / "AFTER" / f"S2_after_{chip}.png", tgt)
            out.append({"name": f"ombria {chip}", "category": "flood", "ref": ref, "tgt": tgt})
    else:
        b = data / "sen2dwater" / "bracciano"
        ref = three_bands(b / "20160718.tif", tmp / "bracciano_20160718.tif")
        for date in ("20170705", "20180129", "20190302", "20220702", "20170404", "20190625"):
            tgt = three_bands(b / f"{date}.tif", tmp / f"bracciano_{date}.tif")
            out.append({"name": f"bracciano {date}", "category": "bracciano", "ref": ref, "tgt": tgt})
        for before in sorted((data / "ombria2021" / "FRANCE" / "BEFORE").glob("imbefore_*.png"))[::8]:
            n = before.stem.split("_")[-1]
            ref, tgt = tmp / f"ombria2021_{n}_before.tif", tmp / f"ombria2021_{n}_after.tif"
            chip_geotiff(before, ref)
            chip_geotiff(data / "ombria2021" / "FRANCE" / "AFTER" / f"imafter_{n}.png", tgt)
            out.append({"name": f"ombria2021 {n}", "category": "flood", "ref": ref, "tgt": tgt})
    return out


def content_shifted(src: Path, out: Path, dx: float, dy: float, gain: float = 1.0, offset: float = 0.0,
                    noise: float = 0.0, seed: int = 0) -> None:
    """``src`` with its content moved by (dx, dy) px on the same grid (``imaging.fourier_shift``),
    optionally with a radiometric gain, offset and Gaussian noise (in DN); its nodata (when it has
    a tag) moved with it and kept out."""
    import rasterio

    from s2coreg.io.imaging import fourier_shift

    with rasterio.open(src) as s:
        profile, data, desc = s.profile, s.read().astype(np.float64), s.descriptions
    moved = fourier_shift(np.moveaxis(data, 0, -1), dx, dy)
    top = np.iinfo(np.dtype(profile["dtype"])).max
    lo = 0
    if profile.get("nodata") is not None:
        bad = fourier_shift((data == profile["nodata"]).all(0).astype(np.float64), dx, dy) > 0.02
        lo = 1
    else:
        bad = np.zeros(moved.shape[:2], bool)
    rng = np.random.default_rng(seed)
    moved = moved * gain + offset + (rng.normal(0, noise, moved.shape) if noise else 0)
    moved = np.clip(np.round(moved), lo, top)
    moved[bad] = profile.get("nodata") or 0
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(np.moveaxis(moved, -1, 0).astype(profile["dtype"]))
        dst.descriptions = desc


def px_to_metres(path: Path, d_px, reference: Path | None = None) -> np.ndarray:
    """A displacement of the file's content by ``d_px`` (its own px, x right, y down) as metres
    (east, north) of ``reference``'s CRS (default: its own; a geographic CRS: its local UTM
    zone, as ``coregister.py`` reports metres): at the file's centre, through both CRSs — a date on the neighbouring UTM zone's grid is rotated by the zones' grid convergence
    (~4° at Lake Bracciano), which an earlier version left out (0.1–0.15 px of false error)."""
    import rasterio

    from s2coreg.io.geo import reproject_points

    from s2coreg.io.geo import metric_crs

    with rasterio.open(path) as src:
        t, crs = src.transform, src.crs
        centre = np.array([[(src.bounds.left + src.bounds.right) / 2, (src.bounds.bottom + src.bounds.top) / 2]])
    moved = centre + [[d_px[0] * t.a, d_px[1] * t.e]]
    ref_crs = crs
    if reference is not None:
        with rasterio.open(reference) as ref:
            ref_crs = ref.crs
    if not ref_crs.is_projected:        # degrees: the same displacement in metres, as coregister.py gives it
        ref_crs = metric_crs(ref_crs, reproject_points(centre, crs, ref_crs))
    if ref_crs == crs:
        return (moved - centre)[0]
    return (reproject_points(moved, crs, ref_crs) - reproject_points(centre, crs, ref_crs))[0]


# ----------------------------------------------------------------------------- methods
class Ours:
    name = "coregister.py"

    def __init__(self, pipeline, cfg=None):
        self.pipeline, self.cfg = pipeline, cfg

    def __call__(self, ref: Path, tgt: Path):
        from s2coreg.coregistration.pair import coregister

        r = coregister(ref, tgt, pipeline=self.pipeline, progress=False, cfg=self.cfg)
        if not r["verified"]:
            return None, None, r["reason"]
        return np.array([r["shift_m"]["dx"], r["shift_m"]["dy"]]), r["shift_m"]["sigma_m"], None


class Matcher:
    name = "ImageMatcher shift_m"

    def __init__(self):
        from s2coreg.matching.matcher import ImageMatcher

        self.matcher = ImageMatcher(bands=(1, 2, 3), matcher="auto")     # the learned path, as the published row

    def __call__(self, ref: Path, tgt: Path):
        r = self.matcher.match_images(ref, tgt)
        if not r.get("shift_m"):
            return None, None, r.get("reason") or "no shift"
        return np.array([r["shift_m"]["dx"], r["shift_m"]["dy"]]), r["shift_m"]["se"], None


class Arosics:
    """AROSICS 1.12 ``COREG`` on one band (``band``: 1 = red, 2 = green, 3 = blue of the 3-band
    files), as its users run it: a target on another CRS is first reprojected onto the reference's
    CRS at the reference's pixel size (cubic, as ``gdalwarp -r cubic``); AROSICS takes one band
    each side, so every band is run and the best is reported beside ours."""

    def __init__(self, band: int = 1):
        import arosics  # noqa: F401  (absent: ImportError, the method is skipped)

        self.band = band
        self.name = f"AROSICS COREG (band {band}: {BANDS[band - 1]})"

    def __call__(self, ref: Path, tgt: Path):
        import rasterio
        from arosics import COREG

        with rasterio.open(ref) as src:
            side = min(256, (min(src.width, src.height) // 2) * 2 - 32)
            nodata, crs = src.nodata, src.crs
            centre = np.array([[(src.bounds.left + src.bounds.right) / 2, (src.bounds.bottom + src.bounds.top) / 2]])
            res = abs(src.transform.a)
        with rasterio.open(tgt) as t:
            other_crs = t.crs != crs
        if other_crs:
            tgt = reprojected_for_arosics(tgt, crs, res, Path(tgt).with_name(Path(tgt).stem + "_warped.tif"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                cr = COREG(str(ref), str(tgt), ws=(side, side), r_b4match=self.band, s_b4match=self.band,
                           max_shift=10, nodata=(nodata, nodata) if nodata is not None else (None, None), q=True,
                           ignore_errors=True, CPUs=1)
                cr.calculate_spatial_shifts()
            except Exception as exc:  # AROSICS raises on what it cannot do; that is a failure here
                return None, None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        if not cr.success:
            return None, None, "no reliable shift (AROSICS: not successful)"
        d = -np.array([cr.x_shift_map, cr.y_shift_map], np.float64)
        if not crs.is_projected:         # map units are degrees: the same displacement in metres, like ours
            from s2coreg.io.geo import metric_crs, reproject_points

            metric = metric_crs(crs, centre)
            d = (reproject_points(centre + d, crs, metric) - reproject_points(centre, crs, metric))[0]
        return d, None, None


def reprojected_for_arosics(src_path: Path, crs, res: float, out: Path) -> Path:
    """``src_path`` reprojected onto ``crs`` at ``res`` (cubic; nodata kept), as an AROSICS user
    would prepare a target on another UTM zone."""
    import rasterio
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    with rasterio.open(src_path) as s:
        transform, w, h = calculate_default_transform(s.crs, crs, s.width, s.height, *s.bounds, resolution=res)
        profile = {**s.profile, "crs": crs, "transform": transform, "width": w, "height": h}
        nodata = s.nodata if s.nodata is not None else 0
        with rasterio.open(out, "w", **{**profile, "nodata": nodata}) as dst:
            for b in range(1, s.count + 1):
                reproject(rasterio.band(s, b), rasterio.band(dst, b), resampling=Resampling.cubic,
                          src_nodata=nodata, dst_nodata=nodata)
            dst.descriptions = s.descriptions
    return out


def run(methods, items: list[dict], tmp: Path, seed: int) -> dict:
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    records = {m.name: [] for m in methods}
    for item in tqdm(items, desc="pairs", unit="pair"):
        s1, s2, s3 = rng.uniform(-MAX_SHIFT, MAX_SHIFT, (3, 2))
        # the same-date copy keeps the reference's name: one acquisition (no cross-date σ floor)
        (tmp / "same").mkdir(exist_ok=True)
        t1, t2, same = tmp / "t1.tif", tmp / "t2.tif", tmp / "same" / Path(item["ref"]).name
        content_shifted(item["tgt"], t1, *s1)
        content_shifted(item["tgt"], t2, *s2)
        noise = 2.0 if "ombria" in item["name"] else 20.0
        content_shifted(item["ref"], same, *s3, gain=1.1, offset=noise * 2.5, noise=noise, seed=seed)
        truth_diff = px_to_metres(item["tgt"], s2 - s1, item["ref"])
        truth_same = px_to_metres(item["ref"], s3)
        for m in methods:
            t = time.perf_counter()
            e1, sg1, why1 = m(item["ref"], t1)
            e2, sg2, why2 = m(item["ref"], t2)
            e3, sg3, why3 = m(item["ref"], same)
            sec = (time.perf_counter() - t) / 3
            cross = None if e1 is None or e2 is None else float(np.hypot(*((e2 - e1) - truth_diff)))
            rec = {"name": item["name"], "category": item["category"], "seconds": sec, "cross_error": cross,
                   "cross_reason": why1 or why2, "same_error": None if e3 is None else float(np.hypot(*(e3 - truth_same))),
                   "same_reason": why3, "same_sigma": sg3,
                   "cross_sigma": None if sg1 is None or sg2 is None else float(np.hypot(sg1, sg2))}
            records[m.name].append(rec)
    return records


def cloud_series(methods, data: Path, reference: str = "20180730") -> list[str]:
    """(d) The 30-date cloud series of SEN12MS-CR-TS region 146 against one clear date: which
    dates each method gives a result for, and how far those results lie from zero (the dates
    share one grid, registered to ~1 px: a result tens of metres off is a wrong answer)."""
    folder = data / "sen12mscrts_roi146"
    dates = sorted(folder.glob("*.tif"))
    lines = ["| method | dates with a result | refused or failed | results beyond 20 m | largest result |",
             "|---|---|---|---|---|"]
    for m in methods:
        if isinstance(m, Matcher):
            continue
        results = []
        for f in dates:
            if f.stem == reference:
                continue
            e, _, _ = m(folder / f"{reference}.tif", f)
            results.append(e)
        found = [np.hypot(*e) for e in results if e is not None]
        lines.append(f"| {m.name} | {len(found)} | {len(results) - len(found)} | {sum(v > 20 for v in found)} | "
                     + (f"{max(found):.1f} m" if found else "—") + " |")
    return lines


def summary(records: list[dict]) -> dict:
    cross = [r["cross_error"] for r in records if r["cross_error"] is not None]
    same = [r["same_error"] for r in records if r["same_error"] is not None]
    n = len(records)
    cal_same = [r["same_error"] <= 2 * r["same_sigma"] for r in records
                if r["same_error"] is not None and r["same_sigma"] is not None]
    cal_cross = [r["cross_error"] <= 2 * r["cross_sigma"] for r in records
                 if r["cross_error"] is not None and r["cross_sigma"] is not None]
    return {"pairs": n,
            "cross_median_m": float(np.median(cross)) if cross else None,
            "cross_within_1m": sum(e <= 1 for e in cross) / n,
            "cross_within_2m": sum(e <= 2 for e in cross) / n,
            "cross_failed": n - len(cross),
            "same_median_m": float(np.median(same)) if same else None,
            "same_within_0.5m": sum(e <= 0.5 for e in same) / n,
            "same_failed": n - len(same),
            "same_within_2sigma": float(np.mean(cal_same)) if cal_same else None,
            "cross_within_2sigma": float(np.mean(cal_cross)) if cal_cross else None,
            "seconds": float(np.median([r["seconds"] for r in records]))}


def misses_figure(items: list[dict], records: list[dict], path: Path, limit_m: float = 1.0) -> int:
    """A picture of the pairs a method missed (no result, or a cross-date error beyond
    ``limit_m``): each pair's reference and target side by side (1–99 % stretch), named, with its
    error or reason. Returns how many; writes nothing when there are none."""
    import rasterio
    from PIL import Image, ImageDraw

    from s2coreg.io.imaging import percentile_stretch, to_uint8

    side, rows = 160, []
    for item, rec in zip(items, records):
        if rec["cross_error"] is not None and rec["cross_error"] <= limit_m:
            continue
        tiles = []
        for key in ("ref", "tgt"):
            with rasterio.open(item[key]) as src:
                rgb = np.moveaxis(src.read(out_shape=(3, side, side), resampling=rasterio.enums.Resampling.average), 0, -1)
            tiles.append(to_uint8(percentile_stretch(rgb.astype(np.float32))))
        row = Image.fromarray(np.concatenate([tiles[0], np.full((side, 6, 3), 255, np.uint8), tiles[1]], 1))
        canvas = Image.new("RGB", (row.width, side + 30), "white")
        canvas.paste(row, (0, 30))
        what = "refused" if rec["cross_error"] is None else f"{rec['cross_error']:.1f} m off"
        ImageDraw.Draw(canvas).text((4, 8), f"{item['name']}: {what} (reference | target)", fill="black")
        rows.append(np.asarray(canvas))
    if rows:
        Image.fromarray(np.concatenate(rows, 0)).quantize(128).save(path, optimize=True)
    return len(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=config.SHARED_DATA_DIR)
    parser.add_argument("--split", choices=["val", "test"], default="val")
    parser.add_argument("--no-arosics", action="store_true")
    parser.add_argument("--no-cloud-series", action="store_true")
    parser.add_argument("--seed", type=int, default=config.SEED)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a CoregisterConfig setting for coregister.py (variants: --set refine=False, "
                             "--set matcher=fast)")
    parser.add_argument("--no-matcher", action="store_true", help="leave out ImageMatcher")
    parser.add_argument("--output", type=Path, default=None,
                        help="default data/results/coregistration_<split>.json")
    args = parser.parse_args(argv)
    from s2coreg.coregistration import engine
    from s2coreg.coregistration.pair import pair_pipeline
    from s2coreg.utils import set_threads, write_json

    set_threads(args.threads or None)
    cfg = config.CoregisterConfig()
    for item in args.set:
        name, value = item.split("=", 1)
        kind = type(getattr(cfg, name)) if getattr(cfg, name) is not None else str
        cfg = config.replace(cfg, **{name: value == "True" if kind is bool else kind(value)})
    cfg = engine.checked_config(cfg)           # the matcher a pair runs (sift-first unless --set matcher=...)
    methods = [Ours(pair_pipeline(cfg), cfg)] + ([] if args.no_matcher else [Matcher()])
    if not args.no_arosics:
        try:
            methods += [Arosics(band) for band in (1, 2, 3)]
        except ImportError:
            print("AROSICS is not installed: skipped (see this script's docstring to install it)", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        items = pairs(args.data, Path(tmp), args.split)
        records = run(methods, items, Path(tmp), args.seed)
        output = args.output or config.RESULTS_DIR / f"coregistration_{args.split}.json"
        output.parent.mkdir(parents=True, exist_ok=True)
        figure = output.with_name(output.stem + "_misses.png")
        figure.unlink(missing_ok=True)
        missed = misses_figure(items, records[methods[0].name], figure)
    table = ["| method | pairs | cross-date median error | within 1 m | within 2 m | no result | same-date median "
             "error | within 0.5 m | no result | same-date within 2σ | cross-date within 2σ | s / estimate |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    out = {}

    def f(v, unit=" m"):
        return "—" if v is None else f"{v:.2f}{unit}"

    def pct(v):
        return "—" if v is None else f"{v:.0%}"

    for name, recs in records.items():
        s = summary(recs)
        out[name] = {"summary": s, "records": recs}
        table.append(f"| {name} | {s['pairs']} | {f(s['cross_median_m'])} | {s['cross_within_1m']:.0%} | "
                     f"{s['cross_within_2m']:.0%} | {s['cross_failed']} | {f(s['same_median_m'])} | "
                     f"{s['same_within_0.5m']:.0%} | {s['same_failed']} | {pct(s['same_within_2sigma'])} | "
                     f"{pct(s['cross_within_2sigma'])} | {s['seconds']:.2f} |")
    cats = sorted({r["category"] for recs in records.values() for r in recs})
    table += ["", "Cross-date median error by category (pairs with a result / pairs):", "",
              "| method | " + " | ".join(cats) + " |", "|---|" + "---|" * len(cats)]
    for name, recs in records.items():
        cells = []
        for c in cats:
            errs = [r["cross_error"] for r in recs if r["category"] == c and r["cross_error"] is not None]
            total = sum(r["category"] == c for r in recs)
            cells.append((f"{np.median(errs):.2f} m" if errs else "—") + f" ({len(errs)}/{total})")
        table.append(f"| {name} | " + " | ".join(cells) + " |")
    if not args.no_cloud_series:
        table += ["", "Cloud series (SEN12MS-CR-TS region 146, 29 dates against 2018-07-30):", "",
                  *cloud_series(methods, args.data)]
    text = "\n".join(table)
    print(text)
    write_json(output, {"results": out, "table": text, "seed": args.seed, "split": args.split, "settings": args.set})
    print(f"\nresults → {output}")
    if missed:
        print(f"{missed} pair(s) {methods[0].name} refused or missed by more than 1 m → {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
