"""Co-registration where the data lives, each case beside its local counterpart in the same run.

    python benchmarks/remote.py --data ../shared/data [--tiles DIR] [--skip tile,stack,grow,xarray]

(a) tile: the full-size tile pair of ``benchmarks/coregistration_full_tile.py`` (10980² px, 3
    bands; built there with ``--keep DIR``, or here when ``--tiles`` has none) converted to
    Cloud-Optimized GeoTIFFs and served over HTTP by ``tests/local_server.py`` (Range requests,
    its own process, bytes sent counted). ``coregister.py`` on the URLs against the same files
    read locally, each in a fresh process: error at the tile centre, wall time, bytes read.
(b) stack: Lake Bracciano's 39 dates (SEN2DWATER; 5 of them on the neighbouring UTM zone) as a
    STAC ItemCollection whose assets are the 5-band files (``eo:bands``), its URL given to
    ``--stack``, against the local files: the largest difference of the shifts.
(c) grow: 7 dates of tile T36UYA (2019, 1024² px, the whole tile at 107 m), then grown to 10 in
    the same output folder, against a fresh 10-date run, on one running LocalCluster of 2 workers
    (a monitoring service keeps its cluster), over ``--repeats`` interleaved runs: median times,
    their ratio, the largest shift difference.
(d) xarray: the 10 dates of one UTM zone as a rioxarray DataArray: ``coregister_dataarray``
    against ``--stack`` on the same files, then ``align`` and the aligned array re-registered.
"""
from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import s2coreg.cli as cli  # noqa: E402
import s2coreg.config as config  # noqa: E402

SERVER = ROOT / "tests" / "local_server.py"


def serve(folder: Path, log: Path):
    """``tests/local_server.py`` on ``folder`` in its own process (GDAL reading from a server in
    its own process would deadlock): (URL, process)."""
    proc = subprocess.Popen([sys.executable, str(SERVER), str(folder), "--log", str(log)], stdout=subprocess.PIPE,
                            text=True)
    return f"http://127.0.0.1:{int(proc.stdout.readline())}", proc


def bytes_sent(log: Path) -> int:
    return sum(int(line.split()[-1]) for line in log.read_text().splitlines()) if log.exists() else 0


PAIR = """
import json, sys, time
sys.path.insert(0, {root!r})
from s2coreg.coregistration.pair import coregister
t = time.perf_counter()
r = coregister({ref!r}, {tgt!r}, {out!r}, progress=False)
print(json.dumps({{"seconds": time.perf_counter() - t, "shift": [r["shift_m"]["dx"], r["shift_m"]["dy"]]
                   if r["shift_m"] else None, "reason": r["reason"]}}))
"""


def run_pair(ref: str, tgt: str, out: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", PAIR.format(root=str(ROOT), ref=ref, tgt=tgt, out=str(out))],
                          capture_output=True, text=True, cwd=ROOT)
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        return {"seconds": None, "shift": None, "reason": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(lines[-1])


def tile_case(data: Path, tiles: Path, work: Path) -> list[str]:
    import rasterio.shutil

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import coregistration_full_tile as ft

    ref, tgt = tiles / "reference.tif", tiles / "target.tif"
    if not (ref.exists() and tgt.exists()):
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "coregistration_full_tile.py"), "--data", str(data),
                        "--keep", str(tiles), "--no-arosics", "--timeout", "1"], check=True, cwd=ROOT)
    cogs = work / "cogs"
    cogs.mkdir(exist_ok=True)
    for src in (ref, tgt):
        if not (cogs / src.name).exists():
            rasterio.shutil.copy(src, cogs / src.name, driver="COG", compress="deflate", level=1, blocksize=512,
                                 overview_resampling="average", BIGTIFF="IF_SAFER")
    total = sum((cogs / p.name).stat().st_size for p in (ref, tgt))
    from rasterio.transform import Affine

    ref_t = Affine(ft.RES, 0, ft.ORIGIN[0], 0, -ft.RES, ft.ORIGIN[1])
    r_t = ft.RES * (1 + ft.SCALE)
    tgt_t = Affine(r_t, 0, ft.ORIGIN[0] + ft.SHIFT[0], 0, -r_t, ft.ORIGIN[1] + ft.SHIFT[1])
    q = ft.SIDE / 2
    truth = np.array([tgt_t.c + tgt_t.a * q - (ref_t.c + ref_t.a * q), tgt_t.f + tgt_t.e * q - (ref_t.f + ref_t.e * q)])
    local = run_pair(str(cogs / ref.name), str(cogs / tgt.name), work / "tile_local")
    log = work / "tile_bytes.log"
    log.unlink(missing_ok=True)
    url, proc = serve(cogs, log)
    try:
        http = run_pair(f"{url}/{ref.name}", f"{url}/{tgt.name}", work / "tile_http")
    finally:
        proc.terminate()
        proc.wait(10)
    read = bytes_sent(log)
    lines = ["| full tile, 2 COGs | seconds | error at the centre | bytes read | result |", "|---|---|---|---|---|"]
    for name, r, b in (("local files", local, None), ("over HTTP (Range requests)", http, read)):
        err = "—" if r["shift"] is None else f"{np.hypot(*(np.array(r['shift']) - truth)):.3f} m"
        secs = "—" if r["seconds"] is None else f"{r['seconds']:.1f}"
        share = "—" if b is None else f"{b / 2 ** 20:.0f} MB of {total / 2 ** 20:.0f} MB ({b / total:.1%})"
        lines.append(f"| {name} | {secs} | {err} | {share} | {r['reason'] or 'ok'} |")
    if local["shift"] and http["shift"]:
        lines.append(f"\nHTTP vs local: shifts differ by {np.hypot(*np.subtract(http['shift'], local['shift'])):.4f} m; "
                     f"time ratio {http['seconds'] / local['seconds']:.2f}")
    return lines


def bracciano(data: Path) -> list[Path]:
    return sorted((data / "sen2dwater" / "bracciano").glob("*.tif"))


def write_collection(files: list[Path], folder: Path) -> Path:
    """An ItemCollection (hrefs relative to it) of one Item a file, its 5-band asset named by eo:bands."""
    import rasterio

    import s2coreg.coregistration.engine as engine

    folder.mkdir(parents=True, exist_ok=True)
    features = []
    for f in files:
        shutil.copy(f, folder / f.name)
        with rasterio.open(f) as src:
            names = list(src.descriptions)
        geometry, bbox, proj = engine.footprint_lonlat(f)
        features.append({"type": "Feature", "stac_version": "1.0.0", "id": f"bracciano_{f.stem}",
                         "geometry": geometry, "bbox": bbox,
                         "properties": {"datetime": f"{f.stem[:4]}-{f.stem[4:6]}-{f.stem[6:8]}T10:00:00Z", **proj},
                         "assets": {"data": {"href": f.name, "type": "image/tiff; application=geotiff",
                                             "eo:bands": [{"name": n} for n in names]}}, "links": []})
    path = folder / "collection.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def largest_difference(a: list[dict], b: list[dict], key: str = "shift_px") -> float:
    diffs = [np.abs(np.subtract(x[key], y[key])).max() for x, y in zip(a, b)
             if x["status"] != "excluded" and y["status"] != "excluded"]
    same_status = all(x["status"] == y["status"] for x, y in zip(a, b))
    return float(max(diffs)) if diffs and same_status else float("nan")


def stack_case(data: Path, work: Path) -> list[str]:
    import s2coreg.coregistration.stack as stack

    files = bracciano(data)
    collection = write_collection(files, work / "catalog")
    log = work / "stack_bytes.log"
    url, proc = serve(collection.parent, log)
    try:
        t = time.perf_counter()
        local = stack.coregister_stack(files, work / "stack_local", reference=str(files[0]), workers=2, progress=False)
        t_local = time.perf_counter() - t
        t = time.perf_counter()
        remote = stack.coregister_stack([f"{url}/collection.json"], work / "stack_http",
                                        reference=f"bracciano_{files[0].stem}", workers=2, progress=False)
        t_remote = time.perf_counter() - t
    finally:
        proc.terminate()
        proc.wait(10)
    diff = largest_difference(local["dates"], remote["dates"])
    return [f"| {len(files)}-date stack | placed | seconds | largest shift difference |", "|---|---|---|---|",
            f"| local files | {local['placed']} | {t_local:.1f} | — |",
            f"| ItemCollection URL (HTTP) | {remote['placed']} | {t_remote:.1f} | {diff:.2e} px |"]


def t36uya_dates(data: Path, folder: Path, count: int = 10) -> list[Path]:
    """``count`` dates of tile T36UYA (2019, spring to summer) as 1024² GeoTIFFs on one grid (the
    data set's whole-tile TCI JPEGs, 107 m px; identity truth between dates)."""
    import rasterio
    from PIL import Image
    from rasterio.transform import from_origin

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for jpg in sorted((data / "ukraine_T36UYA").glob("T36UYA_2019*_TCI.jpg"))[:count]:
        grey = np.asarray(Image.open(jpg).convert("L"))
        path = folder / f"{jpg.stem[:15]}.tif"
        with rasterio.open(path, "w", driver="GTiff", width=grey.shape[1], height=grey.shape[0], count=1,
                           dtype="uint8", crs="EPSG:32636", transform=from_origin(699960, 5600040, 107.2265625,
                                                                                  107.2265625), nodata=0) as dst:
            dst.write(grey[None])
        out.append(path)
    return out


def grow_case(data: Path, work: Path, repeats: int) -> list[str]:
    from dask.distributed import Client, LocalCluster

    import s2coreg.coregistration.stack as stack

    files = t36uya_dates(data, work / "t36uya")
    with stack.workers_without_rerunning_main():
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(cluster)
    fresh_s, grow_s, diffs, counts = [], [], [], None
    try:
        stack.coregister_stack(files[:2], None, client=client, progress=False)      # workers load the model
        for k in range(repeats):
            out = work / f"grow_{k}"
            stack.coregister_stack(files[:7], out, reference=str(files[0]), client=client, progress=False)
            t = time.perf_counter()
            grown = stack.coregister_stack(files, out, reference=str(files[0]), client=client, progress=False)
            grow_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            fresh = stack.coregister_stack(files, work / f"fresh_{k}", reference=str(files[0]), client=client,
                                           progress=False)
            fresh_s.append(time.perf_counter() - t)
            diffs.append(largest_difference(grown["dates"], fresh["dates"]))
            counts = grown["reused"], grown["computed"]
    finally:
        client.close()
        cluster.close()
    g, f = statistics.median(grow_s), statistics.median(fresh_s)
    return ["| 7 dates grown to 10 | median seconds | reused / computed |", "|---|---|---|",
            f"| fresh 10-date run | {f:.1f} | — |",
            f"| grown from 7 | {g:.1f} | dates {counts[0]['dates']} / {counts[1]['dates']}, "
            f"pairs {counts[0]['pairs']} / {counts[1]['pairs']} |",
            f"\ngrown / fresh time: {g / f:.2f} (medians of {repeats}); largest shift difference "
            f"{max(diffs):.2e} px"]


def xarray_case(data: Path, work: Path) -> list[str]:
    import pandas as pd
    import rasterio
    import rioxarray
    import xarray as xr

    import s2coreg.coregistration.stack as stack

    files = []
    for f in bracciano(data):
        with rasterio.open(f) as src:
            if src.crs.to_epsg() == 32632:
                files.append(f)
    files = files[:10]
    da = xr.concat([rioxarray.open_rasterio(f).load() for f in files],
                   dim=pd.Index([pd.Timestamp(f.stem[:8]) for f in files], name="time"))
    da = da.assign_coords(band=["B02", "B03", "B04", "B08", "B11"])
    on_files = stack.coregister_stack(files, None, reference=str(files[0]), workers=2, progress=False)
    result = stack.coregister_dataarray(da, reference=0, workers=2)
    diff = np.nanmax(np.abs(result["dx_m"].values - [r["dx_m"] for r in on_files["dates"]]))
    aligned = stack.align(da.chunk({"time": 1, "y": 160, "x": 160}), result)
    again = stack.coregister_dataarray(aligned.compute(), reference=0, workers=2)
    ok = again["status"].values == "ok"
    before = np.hypot(result["dx_px"].values, result["dy_px"].values)[result["status"].values == "ok"]
    after = np.hypot(again["dx_px"].values, again["dy_px"].values)[ok]
    return ["| xarray, 10 dates | placed | median shift | largest |", "|---|---|---|---|",
            f"| coregister_dataarray | {(result['status'].values != 'excluded').sum()} | {np.median(before):.3f} px | "
            f"{before.max():.3f} px |",
            f"| the aligned array re-registered | {(again['status'].values != 'excluded').sum()} | "
            f"{np.median(after):.3f} px | {after.max():.3f} px |",
            f"\ncoregister_dataarray vs --stack on the same files: largest difference {diff:.2e} m"]


def main(argv=None) -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("--data", type=Path, default=config.SHARED_DATA_DIR)
    parser.add_argument("--tiles", type=Path, default=None,
                        help="the full-tile pair (benchmarks/coregistration_full_tile.py --keep DIR); built here if absent")
    parser.add_argument("--skip", default="", help="cases to leave out: tile,stack,grow,xarray")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of the grow case")
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    work = Path(tempfile.mkdtemp(prefix="remote_bench_"))
    sections = []
    try:
        if "tile" not in skip:
            sections.append(tile_case(args.data, args.tiles or work / "tiles", work))
        if "stack" not in skip:
            sections.append(stack_case(args.data, work))
        if "grow" not in skip:
            sections.append(grow_case(args.data, work, args.repeats))
        if "xarray" not in skip:
            sections.append(xarray_case(args.data, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n\n".join("\n".join(s) for s in sections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
