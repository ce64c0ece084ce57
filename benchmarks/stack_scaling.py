"""Time series on Dask: accuracy of the joint placement, and speed on 1 vs 2 workers.

    python benchmarks/stack_scaling.py --data ../shared/data [--full-tile DIR]

(a) Accuracy: the 39 dates of Lake Bracciano (SEN2DWATER, 2016–2022, 5 of them on the neighbouring
    UTM zone's grid), each with its content moved by a known random sub-pixel shift (up to ±0.5 px;
    ``imaging.fourier_shift``, band-limited, on the date's own grid, as a real misregistration looks),
    run twice with two sets of shifts; per date, the change of its estimate against the change of
    its shift relative to the reference's (the dates' own ~1 px residual cancels). Median and 90th
    percentile of that error over the placed dates (metres and px), and how many dates were placed
    or excluded. And what that differential error cannot see — the pairs' consistency in absolute
    terms: each pair's residual from the network's solution (how far the loops of pairs fail to
    close), with the dense fit and with the learned estimates alone.
(b) Speed: the same 39-date stack on a LocalCluster of 1 worker and of 2 workers (one torch thread
    each), wall time including the cluster's start, interleaved over ``--repeats`` runs; the
    speed-up is the ratio of the medians.
(c) The 30-date cloud series (SEN12MS-CR-TS region 146) against a clear date: how many dates are
    placed directly, placed through their neighbours, or excluded.
(d) With ``--full-tile DIR`` (the tiles ``benchmarks/coregistration_full_tile.py --keep DIR``
    wrote): a 2-date full-tile stack on 1 worker gives the cost of one date's extraction and of one
    pair at full size, and from them a paper estimate of a year of one tile and of many tiles.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import s2coreg.config as config  # noqa: E402,F401


def shifted_copies(dates: list[Path], folder: Path, reference_crs, seed: int) -> dict[str, np.ndarray]:
    """Each date (B04, B03, B02) with its content moved by a random known shift (±0.5 px) on its
    own grid; the truth as metres (east, north) in the reference's CRS."""
    import rasterio

    from s2coreg.io.geo import reproject_points
    from s2coreg.io.imaging import fourier_shift

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    truth = {}
    for path in dates:
        with rasterio.open(path) as s:
            profile, data, t, crs = s.profile, s.read([3, 2, 1]).astype(np.float64), s.transform, s.crs
            centre = np.array([[(s.bounds.left + s.bounds.right) / 2, (s.bounds.bottom + s.bounds.top) / 2]])
        d = rng.uniform(-0.5, 0.5, 2)
        moved = np.moveaxis(fourier_shift(np.moveaxis(data, 0, -1), *d), -1, 0)
        profile.update(count=3)
        with rasterio.open(folder / path.name, "w", **profile) as dst:
            dst.write(np.where(data > 0, np.clip(np.round(moved), 1, 65535), 0).astype(profile["dtype"]))
            dst.descriptions = ("B04", "B03", "B02")
        a = reproject_points(centre, crs, reference_crs)
        b = reproject_points(centre + [d[0] * t.a, d[1] * t.e], crs, reference_crs)
        truth[path.stem] = (b - a)[0]
    return truth


def full_tile_case(folder: Path) -> dict:
    """(d): the full-tile pair as a stack on one worker: one date's extraction and one pair's
    measurement, and what a year of a tile and a country cost from them, on paper."""
    import s2coreg.coregistration.stack as stack

    r = stack.coregister_stack([folder / "reference.tif", folder / "target.tif"], None,
                               str(folder / "reference.tif"), workers=1, progress=False)
    per_date = r["timing"]["extract_s"] / 2
    per_pair = r["timing"]["pairs_s"] / max(r["timing"]["pairs"], 1)
    year, pairs_per_date = 70, 3            # each date: its reference pair and two neighbours
    cpu_s = year * per_date + year * pairs_per_date * per_pair
    print(f"(d) full tile (10980², 3 bands, {r['windows']['planned']} windows): "
          f"one date's extraction {per_date:.0f} s, one pair {per_pair:.0f} s on one core.\n"
          f"    A year of one tile ({year} dates, ~{pairs_per_date} pairs a date): {cpu_s / 3600:.1f} core-hours, "
          f"{cpu_s / 2 / 60:.0f} min on this 2-core machine; 1000 tiles (a country the size of France "
          f"is ~600): {1000 * cpu_s / 3600:.0f} core-hours, {1000 * cpu_s / 3600 / 100:.1f} h on 100 workers")
    return {"extract_s_per_date": per_date, "pair_s": per_pair, "year_core_hours": cpu_s / 3600,
            "windows": r["windows"]["planned"]}


def main(argv=None) -> int:
    import rasterio

    import s2coreg.coregistration.stack as stack

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=config.SHARED_DATA_DIR)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--full-tile", type=Path, default=None)
    parser.add_argument("--output", type=Path, default=config.RESULTS_DIR / "stack_scaling.json")
    parser.add_argument("--only-full-tile", action="store_true", help="(d) alone (with --full-tile)")
    args = parser.parse_args(argv)
    report: dict = {"repeats": args.repeats}
    if args.only_full_tile:
        if not args.full_tile:
            parser.error("--only-full-tile needs --full-tile DIR")
        report.update(full_tile=full_tile_case(args.full_tile))
        from s2coreg.utils import write_json

        write_json(args.output, report)
        print(f"results → {args.output}")
        return 0
    dates = sorted((args.data / "sen2dwater" / "bracciano").glob("*.tif"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ref = "20160718"
        ref_crs = rasterio.open(dates[0].parent / f"{ref}.tif").crs
        t1, t2 = shifted_copies(dates, tmp / "a", ref_crs, 1), shifted_copies(dates, tmp / "b", ref_crs, 2)
        r1 = stack.coregister_stack([tmp / "a"], None, str(tmp / "a" / f"{ref}.tif"), progress=False)
        r2 = stack.coregister_stack([tmp / "b"], None, str(tmp / "b" / f"{ref}.tif"), progress=False)
        rows1 = {Path(r["path"]).stem: r for r in r1["dates"]}
        rows2 = {Path(r["path"]).stem: r for r in r2["dates"]}
        errors, excluded = [], []
        for date, row in rows1.items():
            if date == ref:
                continue
            if row["status"] == "excluded" or rows2[date]["status"] == "excluded":
                excluded.append(f"{date}: {row['reason'] or rows2[date]['reason']}")
                continue
            change = np.array([rows2[date]["dx_m"] - row["dx_m"], rows2[date]["dy_m"] - row["dy_m"]])
            expected = (t2[date] - t2[ref]) - (t1[date] - t1[ref])
            errors.append(float(np.hypot(*(change - expected))))
        direct = sum(1 for r in r1["dates"] if r["status"] == "ok" and not r["reason"])
        print(f"(a) {len(dates)} dates against {ref}: {len(errors)} placed ({direct} matched to the reference directly), "
              f"{len(excluded)} excluded; per-date error median {np.median(errors):.2f} m "
              f"({np.median(errors) / 10:.3f} px), 90th percentile {np.percentile(errors, 90):.2f} m, "
              f"largest {max(errors):.2f} m")
        for line in excluded:
            print(f"    excluded {line}")
        report["accuracy"] = {"kind": "differential (two runs, content moved by known shifts)", "dates": len(dates),
                              "placed": len(errors), "direct": direct, "excluded": excluded,
                              "median_m": float(np.median(errors)), "p90_m": float(np.percentile(errors, 90)),
                              "max_m": float(max(errors))}
        # cross-date consistency in absolute terms, which the differential error above cannot see:
        # how far each pair's measurement lies from the network's solution (a loop of pairs that
        # does not close shows each pair's content-dependent bias), with and without the dense fit
        from s2coreg.config import CoregisterConfig

        learned = stack.coregister_stack([tmp / "a"], None, str(tmp / "a" / f"{ref}.tif"), progress=False,
                                         cfg=CoregisterConfig(refine=False))
        for name, run in (("dense fit", r1), ("learned estimates only", learned)):
            res = [p["residual_m"] for p in run["pairs"] if p["verified"] and p.get("residual_m") is not None]
            print(f"    {name}: {len(res)} pairs' residuals from the network's solution, median {np.median(res):.2f} m, "
                  f"90th percentile {np.percentile(res, 90):.2f} m")
            report.setdefault("consistency", {})[name] = {
                "kind": "consistency (pair residuals from the network's solution, real content)", "pairs": len(res),
                "median_m": float(np.median(res)), "p90_m": float(np.percentile(res, 90))}
        times = {1: [], 2: []}
        timing = {}
        for _ in range(args.repeats):
            for workers in (1, 2):
                t = time.perf_counter()
                r = stack.coregister_stack([tmp / "a"], None, str(tmp / "a" / f"{ref}.tif"), workers=workers,
                                           progress=False)
                times[workers].append(time.perf_counter() - t)
                timing[workers] = r["timing"]
        m1, m2 = statistics.median(times[1]), statistics.median(times[2])
        print(f"(b) {len(dates)} dates, {timing[1]['pairs']} pairs: 1 worker {m1:.1f} s, 2 workers {m2:.1f} s "
              f"(medians of {args.repeats}): speed-up {m1 / m2:.2f}×; 1 worker's phases: extraction "
              f"{timing[1]['extract_s']:.1f} s, pairs {timing[1]['pairs_s']:.1f} s")
        report["workers"] = {"seconds_1": times[1], "seconds_2": times[2], "speed_up_of_medians": m1 / m2}
    cloud = args.data / "sen12mscrts_roi146"
    r = stack.coregister_stack([cloud], None, str(cloud / "20180730.tif"), progress=False)
    status = [r_["status"] if not r_["reason"] or r_["status"] != "ok" else "via neighbours" for r_ in r["dates"]]
    print(f"(c) cloud series (SEN12MS-CR-TS region 146, 30 dates, reference 2018-07-30): "
          f"{status.count('ok')} placed directly, {status.count('via neighbours')} placed through their neighbours "
          f"(refused against the reference), {status.count('excluded')} excluded with their reason")
    report["cloud_series"] = {"direct": status.count("ok"), "via_neighbours": status.count("via neighbours"),
                              "excluded": status.count("excluded")}
    if args.full_tile:
        report["full_tile"] = full_tile_case(args.full_tile)
    from s2coreg.utils import write_json

    write_json(args.output, report)
    print(f"results → {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
