"""Co-registration accuracy of ``coregister.py`` beside AROSICS, on real pairs with known shifts.

    python benchmarks/coregistration.py --data ../shared/data [--no-arosics] [--output data/results/coreg.json]

Places no model here was trained on: Lake Bracciano (SEN2DWATER, 10 m, UTM 32N; seven years,
one date on the neighbouring UTM zone's grid) and the OSCD validation cities (both dates
reprojected to their UTM zone at 10 m). Every input is a 3-band GeoTIFF (B04, B03, B02 with band
descriptions), the same files for both methods; AROSICS (``arosics.COREG``, FFT phase
correlation in a 256² window, the field's standard) matches on B04.

(a) Cross-date, differential: the target date is written twice with two known sub-pixel
    shifts of its georeference (s1, s2; up to ±1.5 px); the error is |(estimate2 − estimate1) −
    (s2 − s1)|, which cancels the dataset's own ~1 px registration residual between the dates.
(b) Same date, absolute: the reference date against itself with a known shift, a 10 % gain, an
    offset and noise; the error is |estimate − s|.
Both report, per method, the median error in metres, the share within 2 m (a) or 0.5 m (b),
the pairs without a result (refused, failed) and the median seconds per estimate.
(c) What fails: the 30-date cloud series of SEN12MS-CR-TS region 146 (clear, hazy, cloudy and
cloud-covered dates on one grid) against a clear date: results given, refused, and beyond 20 m.

AROSICS is a benchmark-only dependency (not in requirements.txt). On these machines:
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
import config  # noqa: E402  first: OpenMP's waiting policy, before torch is used

BRACCIANO_REF = "20160718"
BRACCIANO_TARGETS = {          # date → category
    "20170705": "summer-summer", "20180708": "summer-summer", "20220702": "across-years",
    "20161115": "summer-autumn", "20180129": "summer-winter", "20190302": "summer-winter",
    "20210324": "summer-spring", "20170404": "other-utm-zone", "20190625": "other-utm-zone",
}
BANDS = ("B04", "B03", "B02")


def stack(files: list[Path], out: Path, crs=None) -> None:
    """Bands → one GeoTIFF (B04, B03, B02, descriptions set); reprojected to ``crs`` at 10 m if given."""
    import rasterio
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    with rasterio.open(files[0]) as src:
        profile, src_crs, src_transform = src.profile, src.crs, src.transform
        width, height = src.width, src.height
        data = np.stack([rasterio.open(f).read(1) for f in files]) if len(files) > 1 else src.read(list(range(1, 4)))
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


def shifted(src: Path, out: Path, dx: float, dy: float, gain: float = 1.0, offset: float = 0.0,
            noise: float = 0.0, seed: int = 0) -> None:
    """``src`` with its georeference moved by (dx, dy) map units (its content then lies at P + d),
    optionally with a radiometric gain, offset and Gaussian noise (in DN)."""
    import rasterio
    from rasterio.transform import Affine

    with rasterio.open(src) as s:
        profile, data, desc = s.profile, s.read().astype(np.float64), s.descriptions
        profile["transform"] = Affine.translation(dx, dy) * s.transform
    if gain != 1.0 or offset or noise:
        valid = data > 0
        rng = np.random.default_rng(seed)
        data = np.where(valid, np.clip(data * gain + offset + rng.normal(0, noise, data.shape), 1, 65535), 0)
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(data.astype(profile["dtype"]))
        dst.descriptions = desc


def pairs(data: Path, tmp: Path) -> list[dict]:
    """The benchmark's pairs as stacked GeoTIFFs in ``tmp``."""
    import rasterio

    def three_bands(src_path: Path, out_path: Path) -> Path:
        with rasterio.open(src_path) as src:
            idx = [src.descriptions.index(x) + 1 for x in BANDS]
            profile = {**src.profile, "count": 3, "compress": "deflate"}
            with rasterio.open(out_path, "w", **profile) as dst:
                dst.write(src.read(idx))
                dst.descriptions = BANDS
        return out_path

    out = []
    b = data / "sen2dwater" / "bracciano"
    ref = three_bands(b / f"{BRACCIANO_REF}.tif", tmp / f"bracciano_{BRACCIANO_REF}.tif")
    for date, category in BRACCIANO_TARGETS.items():
        tgt = three_bands(b / f"{date}.tif", tmp / f"bracciano_{date}.tif")
        out.append({"name": f"bracciano {BRACCIANO_REF}-{date}", "category": category, "ref": ref, "tgt": tgt})
    from dataset import OSCD_VAL_CITIES
    from geo import metric_crs

    for city in OSCD_VAL_CITIES:
        folder = data / "oscd" / city
        if not folder.exists():
            continue
        with rasterio.open(folder / "imgs_1" / "B04.tif") as src:
            centre = np.array([[(src.bounds.left + src.bounds.right) / 2, (src.bounds.bottom + src.bounds.top) / 2]])
            utm = metric_crs(src.crs, centre)
        paths = []
        for k in (1, 2):
            p = tmp / f"oscd_{city}_{k}.tif"
            stack([folder / f"imgs_{k}" / f"{band}.tif" for band in BANDS], p, utm)
            paths.append(p)
        out.append({"name": f"oscd {city}", "category": "oscd-city", "ref": paths[0], "tgt": paths[1]})
    return out


# ----------------------------------------------------------------------------- methods
class Ours:
    name = "coregister.py"

    def __init__(self):
        from matching import MatchingPipeline

        self.pipeline = MatchingPipeline.from_checkpoints()

    def __call__(self, ref: Path, tgt: Path):
        from coregister import coregister

        r = coregister(ref, tgt, pipeline=self.pipeline, progress=False)
        if not r["verified"]:
            return None, r["reason"]
        return np.array([r["shift_m"]["dx"], r["shift_m"]["dy"]]), None


class Arosics:
    name = "AROSICS COREG"

    def __init__(self):
        import arosics  # noqa: F401  (absent: ImportError, the method is skipped)

    def __call__(self, ref: Path, tgt: Path):
        from arosics import COREG

        import rasterio

        with rasterio.open(ref) as src:
            side = min(256, (min(src.width, src.height) // 2) * 2 - 32)
            crs = src.crs
            centre = np.array([[(src.bounds.left + src.bounds.right) / 2, (src.bounds.bottom + src.bounds.top) / 2]])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                cr = COREG(str(ref), str(tgt), ws=(side, side), r_b4match=1, s_b4match=1, max_shift=10,
                           nodata=(0, 0), q=True, ignore_errors=True, CPUs=1)
                cr.calculate_spatial_shifts()
            except Exception as exc:  # AROSICS raises on what it cannot do; that is a failure here
                return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        if not cr.success:
            return None, "no reliable shift (AROSICS: not successful)"
        # x_shift_map / y_shift_map are the correction in map units; the displacement is their
        # negative, in metres like ours (the local UTM zone's for a geographic CRS)
        d = -np.array([cr.x_shift_map, cr.y_shift_map], np.float64)
        if not crs.is_projected:
            from geo import metric_crs

            d = in_crs(centre, d, crs, metric_crs(crs, centre))
        return d, None


def in_crs(point: np.ndarray, shift: np.ndarray, src_crs, dst_crs) -> np.ndarray:
    """A displacement ``shift`` at ``point`` in ``src_crs`` as a displacement in ``dst_crs``."""
    from geo import reproject_points

    a = reproject_points(point, src_crs, dst_crs)
    b = reproject_points(point + shift, src_crs, dst_crs)
    return (b - a)[0]


def run(methods, items: list[dict], tmp: Path, seed: int) -> dict:
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    records = {m.name: [] for m in methods}
    for item in tqdm(items, desc="pairs", unit="pair"):
        import rasterio

        with rasterio.open(item["tgt"]) as src:
            res = abs(src.transform.a)
            t_crs, t_centre = src.crs, np.array([[(src.bounds.left + src.bounds.right) / 2,
                                                  (src.bounds.bottom + src.bounds.top) / 2]])
        with rasterio.open(item["ref"]) as src:
            r_crs = src.crs
        s1, s2 = rng.uniform(-1.5, 1.5, (2, 2)) * res
        # the shifts are applied in the target's CRS; the estimates are in the reference's
        truth1, truth2 = (in_crs(t_centre, s, t_crs, r_crs) for s in (s1, s2))
        t1, t2 = tmp / "t1.tif", tmp / "t2.tif"
        shifted(item["tgt"], t1, *s1)
        shifted(item["tgt"], t2, *s2)
        same = tmp / "same.tif"
        s3 = rng.uniform(-1.5, 1.5, 2) * res
        shifted(item["ref"], same, *s3, gain=1.1, offset=50, noise=20, seed=seed)
        for m in methods:
            t = time.perf_counter()
            e1, why1 = m(item["ref"], t1)
            e2, why2 = m(item["ref"], t2)
            e3, why3 = m(item["ref"], same)
            sec = (time.perf_counter() - t) / 3
            rec = {"name": item["name"], "category": item["category"], "seconds": sec,
                   "cross_error": None if e1 is None or e2 is None else float(np.hypot(*((e2 - e1) - (truth2 - truth1)))),
                   "cross_reason": why1 or why2, "estimate": None if e1 is None else (e1 - truth1).tolist(),
                   "same_error": None if e3 is None else float(np.hypot(*(e3 - s3))), "same_reason": why3}
            records[m.name].append(rec)
    return records


def cloud_series(methods, data: Path, reference: str = "20180730") -> list[str]:
    """(c) The 30-date cloud series of SEN12MS-CR-TS region 146 against one clear date: which
    dates each method gives a result for, and how far those results lie from zero (the dates
    share one grid, registered to ~1 px: a result tens of metres off is a wrong answer)."""
    folder = data / "sen12mscrts_roi146"
    dates = sorted(folder.glob("*.tif"))
    lines = ["| method | dates with a result | refused or failed | results beyond 20 m | largest result |",
             "|---|---|---|---|---|"]
    for m in methods:
        results = []
        for f in dates:
            if f.stem == reference:
                continue
            e, _ = m(folder / f"{reference}.tif", f)
            results.append(e)
        found = [np.hypot(*e) for e in results if e is not None]
        lines.append(f"| {m.name} | {len(found)} | {len(results) - len(found)} | {sum(v > 20 for v in found)} | "
                     + (f"{max(found):.1f} m" if found else "—") + " |")
    return lines


def summary(records: list[dict]) -> dict:
    cross = [r["cross_error"] for r in records if r["cross_error"] is not None]
    same = [r["same_error"] for r in records if r["same_error"] is not None]
    n = len(records)
    return {"pairs": n,
            "cross_median_m": float(np.median(cross)) if cross else None,
            "cross_within_2m": sum(e <= 2 for e in cross) / n,
            "cross_failed": n - len(cross),
            "same_median_m": float(np.median(same)) if same else None,
            "same_within_0.5m": sum(e <= 0.5 for e in same) / n,
            "same_failed": n - len(same),
            "seconds": float(np.median([r["seconds"] for r in records]))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=config.SHARED_DATA_DIR)
    parser.add_argument("--no-arosics", action="store_true")
    parser.add_argument("--seed", type=int, default=config.SEED)
    parser.add_argument("--output", type=Path, default=config.RESULTS_DIR / "coregistration.json")
    args = parser.parse_args(argv)
    methods = [Ours()]
    if not args.no_arosics:
        try:
            methods.append(Arosics())
        except ImportError:
            print("AROSICS is not installed: skipped (see this script's docstring to install it)", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        items = pairs(args.data, Path(tmp))
        records = run(methods, items, Path(tmp), args.seed)
    table = ["| method | pairs | cross-date median error | within 2 m | no result | same-date median error | "
             "within 0.5 m | no result | s / estimate |", "|---|---|---|---|---|---|---|---|---|"]
    out = {}
    for name, recs in records.items():
        s = summary(recs)
        out[name] = {"summary": s, "records": recs}

        def f(v):
            return "—" if v is None else f"{v:.2f} m"
        table.append(f"| {name} | {s['pairs']} | {f(s['cross_median_m'])} | {s['cross_within_2m']:.0%} | "
                     f"{s['cross_failed']} | {f(s['same_median_m'])} | {s['same_within_0.5m']:.0%} | "
                     f"{s['same_failed']} | {s['seconds']:.2f} |")
    cats = sorted({r["category"] for recs in records.values() for r in recs})
    table += ["", "Cross-date median error by category (pairs):", "",
              "| method | " + " | ".join(cats) + " |", "|---|" + "---|" * len(cats)]
    for name, recs in records.items():
        cells = []
        for c in cats:
            errs = [r["cross_error"] for r in recs if r["category"] == c and r["cross_error"] is not None]
            total = sum(r["category"] == c for r in recs)
            cells.append((f"{np.median(errs):.2f} m" if errs else "—") + f" ({len(errs)}/{total})")
        table.append(f"| {name} | " + " | ".join(cells) + " |")
    table += ["", "Cloud series (SEN12MS-CR-TS region 146, 29 dates against 2018-07-30):", "",
              *cloud_series(methods, args.data)]
    text = "\n".join(table)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    from utils import write_json

    write_json(args.output, {"results": out, "table": text, "seed": args.seed})
    print(f"\nresults → {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
