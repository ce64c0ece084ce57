"""Bands beyond RGB for co-registration: each input mode measured per category, same engine,
same pairs, one run.

    python benchmarks/multispectral.py --data ../shared/data [--output data/results/multispectral.json]

Input modes (``coregister.py --bands``; the shipped models take one grey channel, so three bands
are turned to grey as RGB would be):
* ``rgb``   B04, B03, B02 (the default)
* ``nir``   B08 alone
* ``swir``  B11 alone (20 m in a product, resampled to 10 m in these files)
* ``nir+rgb`` B08, B04, B03 — near-infrared in the red channel's place (a false-colour composite)

Categories, where the data have these bands:
* **city, season** — validation: the five OSCD validation cities, two dates each (B02, B03, B04,
  B08; no B11), reprojected to their UTM zone at 10 m.
* **haze, cloud** — validation-only use: the 30-date SEN12MS-CR-TS region 146 series (B02, B03,
  B04, B08, B11), 29 dates against the clear 2018-07-30.
* **water, seasons, years** — Lake Bracciano, 38 dates against 2016-07-18 (5 of them on the
  neighbouring UTM zone) — a *test* place of this project: reported, never chosen on.
* snow and flood: not measured — the multi-date snow series (T36UYA) is grey previews and the flood
  chips (OMBRIA) are 8-bit composites; no NIR/SWIR band exists for them in ``../shared/data``.

Per mode and category: how many pairs give a result (the rest refused with a reason), and the
precision of those results measured as ``benchmarks/coregistration.py`` does: the target's
content moved twice by known sub-pixel shifts (band-limited, ±1.5 px), the error of the
difference of the two estimates (the data's own ~1 px residual cancels) — median, share within
1 m — and results further than 20 m from the known move (the dates share a grid registered to
~1 px: a wrong answer).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import s2coreg.config as config  # noqa: E402  first: OpenMP's waiting policy, before torch is used

MODES = {"rgb": ("B04", "B03", "B02"), "nir": ("B08",), "swir": ("B11",), "nir+rgb": ("B08", "B04", "B03")}
MAX_SHIFT = 1.5


def city_pairs(data: Path, tmp: Path) -> list[dict]:
    """The OSCD validation cities as 4-band GeoTIFFs (B02, B03, B04, B08, descriptions set,
    nodata 0) in their UTM zone at 10 m."""
    import rasterio
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    from s2coreg.training.dataset import OSCD_VAL_CITIES
    from s2coreg.io.geo import metric_crs

    bands = ("B02", "B03", "B04", "B08")
    out = []
    for city in OSCD_VAL_CITIES:
        folder = data / "oscd" / city
        if not folder.exists():
            continue
        paths = []
        for k in (1, 2):
            files = [folder / f"imgs_{k}" / f"{b}.tif" for b in bands]
            with rasterio.open(files[0]) as src:
                profile, crs, t, w, h = src.profile, src.crs, src.transform, src.width, src.height
                centre = np.array([[(src.bounds.left + src.bounds.right) / 2, (src.bounds.bottom + src.bounds.top) / 2]])
            utm = metric_crs(crs, centre)
            stack = np.stack([rasterio.open(f).read(1) for f in files])
            left, bottom, right, top = rasterio.transform.array_bounds(h, w, t)
            t2, w2, h2 = calculate_default_transform(crs, utm, w, h, left, bottom, right, top, resolution=10)
            moved = np.zeros((len(bands), h2, w2), stack.dtype)
            reproject(stack, moved, src_transform=t, src_crs=crs, dst_transform=t2, dst_crs=utm,
                      resampling=Resampling.bilinear, src_nodata=0, dst_nodata=0)
            p = tmp / f"oscd_{city}_{k}.tif"
            profile.update(driver="GTiff", count=len(bands), crs=utm, transform=t2, width=w2, height=h2, nodata=0,
                           compress="deflate")
            with rasterio.open(p, "w", **profile) as dst:
                dst.write(moved)
                dst.descriptions = bands
            paths.append(p)
        out.append({"category": "city, season (val)", "name": f"oscd {city}", "ref": paths[0], "tgt": paths[1]})
    return out


def series_pairs(folder: Path, reference: str, category: str, every: int = 1) -> list[dict]:
    dates = sorted(p for p in folder.glob("*.tif") if p.stem != reference)[::every]
    return [{"category": category, "name": f"{folder.name} {p.stem}", "ref": folder / f"{reference}.tif", "tgt": p}
            for p in dates]


def measure(pairs: list[dict], modes: dict, tmp: Path, seed: int, pipeline) -> list[dict]:
    """Each pair through each mode: two content shifts of the target, the differential error."""
    from tqdm import tqdm

    from s2coreg.coregistration.pair import coregister
    from coregistration import content_shifted, px_to_metres

    rng = np.random.default_rng(seed)
    records = []
    for item in tqdm(pairs, desc="pairs", unit="pair"):
        s1, s2 = rng.uniform(-MAX_SHIFT, MAX_SHIFT, (2, 2))
        t1, t2 = tmp / "t1.tif", tmp / "t2.tif"
        content_shifted(item["tgt"], t1, *s1)
        content_shifted(item["tgt"], t2, *s2)
        truth = px_to_metres(item["tgt"], s2 - s1, item["ref"])
        moved1 = px_to_metres(item["tgt"], s1, item["ref"])
        for mode, bands in modes.items():
            t = time.perf_counter()
            results = [coregister(item["ref"], tgt, bands=bands, pipeline=pipeline, progress=False) for tgt in (t1, t2)]
            sec = (time.perf_counter() - t) / 2
            est = [None if not r["verified"] else np.array([r["shift_m"]["dx"], r["shift_m"]["dy"]]) for r in results]
            rec = {"category": item["category"], "name": item["name"], "mode": mode, "seconds": sec,
                   "reason": next((r["reason"] for r in results if not r["verified"]), None),
                   "error_m": None if any(e is None for e in est) else float(np.hypot(*((est[1] - est[0]) - truth))),
                   "size_m": None if est[0] is None else float(np.hypot(*(est[0] - moved1)))}
            records.append(rec)
    return records


def table(records: list[dict]) -> str:
    lines = ["| category | mode | pairs | with a result | differential median | within 1 m (of all) | beyond 20 m (wrong) |",
             "|---|---|---|---|---|---|---|"]
    for category in dict.fromkeys(r["category"] for r in records):
        for mode in dict.fromkeys(r["mode"] for r in records):
            rows = [r for r in records if r["category"] == category and r["mode"] == mode]
            if not rows:
                continue
            errs = [r["error_m"] for r in rows if r["error_m"] is not None]
            wrong = sum(1 for r in rows if r["size_m"] is not None and r["size_m"] > 20)
            lines.append(f"| {category} | {mode} | {len(rows)} | {len(errs)} | "
                         + (f"{np.median(errs):.2f} m" if errs else "—")
                         + f" | {sum(e <= 1 for e in errs) / len(rows):.0%} | {wrong} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    sys.path.insert(1, str(Path(__file__).resolve().parent))      # benchmarks/coregistration.py's helpers
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=config.SHARED_DATA_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--every", type=int, default=1, help="every n-th date of the two series (quicker runs)")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    from s2coreg.coregistration import engine
    from s2coreg.coregistration.pair import pair_pipeline
    from s2coreg.utils import set_threads, write_json

    set_threads(args.threads)
    pipeline = pair_pipeline(engine.checked_config(config.CoregisterConfig()))     # what a pair runs
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cities = city_pairs(args.data, tmp)
        records = measure(cities, {k: v for k, v in MODES.items() if k != "swir"}, tmp, args.seed, pipeline)
        cloud = series_pairs(args.data / "sen12mscrts_roi146", "20180730", "haze, cloud (val)", args.every)
        records += measure(cloud, MODES, tmp, args.seed, pipeline)
        lake = series_pairs(args.data / "sen2dwater" / "bracciano", "20160718", "water, years (test place)",
                            args.every)
        records += measure(lake, MODES, tmp, args.seed, pipeline)
    text = table(records)
    print(text)
    if args.output:
        write_json(args.output, {"table": text, "records": records, "seed": args.seed})
        print(f"results → {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
