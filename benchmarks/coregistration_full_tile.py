"""A full-size tile pair (10980² px, 3 bands at 10 m): time, peak memory and error of
``coregister.py``, beside AROSICS's global COREG on the same files.

    python benchmarks/coregistration_full_tile.py --data ../shared/data [--no-arosics] [--keep DIR]

The tile is a mosaic of real 10 m pixels: OMBRIA's chips (256², the "before" dates), 43 × 43
of them, written as tiled GeoTIFFs with overviews (as a COG product would be read). The target
is the same mosaic with a 10 % gain, an offset and noise, and a known georeference: its origin
moved by (+3.4, −2.7) m and its pixels 5e-5 larger (a gentle scale difference: 2.7 m more
displacement at the tile centre, 5.5 m at the far edge). (Cross-date accuracy is measured by
``benchmarks/coregistration.py``: OMBRIA's before/after chips come from different products, each
registered to its own ~1 px, so a mosaic of them has no exact truth.) The truth at the tile centre is compared with the
translation; the affine's displacement field with the truth's over the whole tile. Each method
runs in a fresh process; its wall time, CPU time (user + system) and peak resident memory are
reported, and for ``coregister.py`` its windows: planned, read (tried) and used.

A second, cloudy target (``--cloudy``, written once beside the others): the same target with bright
opaque cloud blobs over ~40 % of it (not masked: no cloud mask comes with a GeoTIFF) and a
no-data corner — where windows that cannot answer are many, and reading them costs most.

``coregister.py`` runs with its defaults on 2 threads (windows side by side) and on 1
(``--threads 1``), its windows matched by SuperGlue (``--matcher auto``), and every planned
window read (``stop_windows=0``); ``--baseline-root DIR`` adds a row run from another checkout
of this repository (e.g. ``git worktree add /tmp/main main``: the code before a change, in the
same run).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import s2coreg.config as config  # noqa: E402

SIDE, CHIP, RES = 10980, 256, 10.0
ORIGIN = (600_000.0, 5_000_040.0)
SHIFT, SCALE = (3.4, -2.7), 5e-5


def mosaic(data: Path, which: str) -> np.ndarray:
    """(3, SIDE, SIDE) uint16 DN from OMBRIA's training chips (``which``: before | after)."""
    from PIL import Image

    folder = data / "ombria_train" / which.upper()
    names = sorted(p.name.split("_")[-1] for p in (data / "ombria_train" / "BEFORE").glob("S2_before_*.png"))
    n = -(-SIDE // CHIP)
    out = np.zeros((3, n * CHIP, n * CHIP), np.uint16)
    for k in range(n * n):
        chip = np.asarray(Image.open(folder / f"S2_{which}_{names[k % len(names)]}").convert("RGB"), np.uint16)
        r, c = divmod(k, n)
        out[:, r * CHIP:(r + 1) * CHIP, c * CHIP:(c + 1) * CHIP] = np.moveaxis(chip, -1, 0) * 12 + 1
    return out[:, :SIDE, :SIDE]


def write(path: Path, data: np.ndarray, transform) -> None:
    import rasterio

    with rasterio.open(path, "w", driver="GTiff", width=SIDE, height=SIDE, count=3, dtype="uint16",
                       crs="EPSG:32632", transform=transform, nodata=0, tiled=True, blockxsize=512, blockysize=512,
                       compress="deflate", zlevel=1, BIGTIFF="IF_SAFER") as dst:
        dst.write(data)
        dst.descriptions = ("B04", "B03", "B02")
        dst.build_overviews([2, 4, 8, 16, 32])


# The child's own peak: VmHWM belongs to the process's address space, which exec starts afresh;
# getrusage's ru_maxrss would also count the parent's resident size when it forked (here up to
# 7.5 GB while the tiles are built), which hid the methods' own peaks in an earlier version.
PEAK = """
def peak_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

def cpu_s():
    import os
    t = os.times()                 # its worker processes too (AROSICS's CPUs=2)
    return t.user + t.system + t.children_user + t.children_system
"""

OURS = PEAK + """
import json, sys, time
sys.path.insert(0, {root!r})
import s2coreg.config as config
from s2coreg.coregistration.pair import coregister
from s2coreg.utils import set_threads
set_threads({threads!r})
t, c = time.perf_counter(), cpu_s()
r = coregister({ref!r}, {tgt!r}, {out!r}, progress=False,
               cfg=config.replace(config.CoregisterConfig(), **{settings!r}))
print(json.dumps({{"seconds": time.perf_counter() - t, "cpu_s": cpu_s() - c,
                   "shift": [r["shift_m"]["dx"], r["shift_m"]["dy"]] if r["shift_m"] else None,
                   "sigma_m": r["shift_m"]["sigma_m"] if r["shift_m"] else None, "affine": r["affine"],
                   "windows": r["windows"], "reason": r["reason"], "peak_mb": peak_mb()}}))
"""

AROSICS = PEAK + """
import json, time, warnings
warnings.simplefilter("ignore")
from arosics import COREG
t, c = time.perf_counter(), cpu_s()
cr = COREG({ref!r}, {tgt!r}, r_b4match=1, s_b4match=1, max_shift=10, nodata=(0, 0), q=True, ignore_errors=True)
cr.calculate_spatial_shifts()
ok = bool(cr.success)
print(json.dumps({{"seconds": time.perf_counter() - t, "cpu_s": cpu_s() - c,
                   "shift": [-cr.x_shift_map, -cr.y_shift_map] if ok else None, "reason": None if ok else "not successful",
                   "peak_mb": peak_mb()}}))
"""


# AROSICS's local co-registration: a grid of the same COREG every GRID px (its own way to see a
# displacement that varies over a tile), its tie points' displacements (the negative of the
# correction in X_SHIFT_M / Y_SHIFT_M) fitted by an affine, as our field is: evaluated at the centre
# and over the tile like ours
AROSICS_LOCAL = PEAK + """
import json, time, warnings
import numpy as np
warnings.simplefilter("ignore")
from arosics import COREG_LOCAL
t, c = time.perf_counter(), cpu_s()
cl = COREG_LOCAL({ref!r}, {tgt!r}, grid_res={grid}, window_size=(256, 256), r_b4match=1, s_b4match=1,
                 max_shift=10, nodata=(0, 0), q=True, ignore_errors=True, CPUs=2)
tbl = cl.CoRegPoints_table
ok = tbl[(tbl["OUTLIER"] == False) & (tbl["ABS_SHIFT"] != -9999)]
res = None
if len(ok) >= 3:
    p = ok[["X_MAP", "Y_MAP"]].to_numpy(float)
    d = -ok[["X_SHIFT_M", "Y_SHIFT_M"]].to_numpy(float)
    X = np.hstack([p, np.ones((len(p), 1))])
    coef = np.linalg.lstsq(X, p + d, rcond=None)[0].T          # reference map -> target map
    res = coef.tolist()
print(json.dumps({{"seconds": time.perf_counter() - t, "cpu_s": cpu_s() - c,
                   "affine": {{"matrix": res}} if res else None,
                   "points": int(len(ok)), "grid_points": int(len(tbl)),
                   "reason": None if res else "fewer than 3 valid tie points", "peak_mb": peak_mb()}}))
"""


def measure(code: str, timeout: int) -> dict:
    """Run ``code`` in a fresh process; its last line is a JSON result with its own peak memory."""
    t = time.perf_counter()
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"seconds": timeout, "shift": None, "reason": f"stopped after {timeout} s", "peak_mb": None}
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        return {"seconds": time.perf_counter() - t, "shift": None, "peak_mb": None,
                "reason": (out.stderr.strip().splitlines() or ["failed"])[-1][:200]}
    return json.loads(lines[-1])


def build_tiles(data: Path, folder: Path):
    """The reference and target tiles in ``folder`` (written once: kept tiles are reused);
    returns their paths and transforms ``(ref, tgt, ref_transform, tgt_transform)``."""
    from rasterio.transform import Affine

    folder.mkdir(parents=True, exist_ok=True)
    ref, tgt = folder / "reference.tif", folder / "target.tif"
    ref_t = Affine(RES, 0, ORIGIN[0], 0, -RES, ORIGIN[1])
    r_t = RES * (1 + SCALE)
    tgt_t = Affine(r_t, 0, ORIGIN[0] + SHIFT[0], 0, -r_t, ORIGIN[1] + SHIFT[1])
    if not (ref.exists() and tgt.exists()):
        t = time.perf_counter()
        write(ref, mosaic(data, "before"), ref_t)
        base = mosaic(data, "before")
        rng = np.random.default_rng(0)
        noisy = base.astype(np.float32) * 1.1 + 40 + rng.normal(0, 15, base.shape).astype(np.float32)
        write(tgt, np.where(base > 0, np.clip(noisy, 1, 65535), 0).astype(np.uint16), tgt_t)
        del base, noisy
        print(f"tiles written in {time.perf_counter() - t:.0f} s → {folder}")
    return ref, tgt, ref_t, tgt_t


CLOUD_SHARE, CLOUD_DN = 0.4, 9000          # share of the cloudy target under cloud, their brightness (DN)


def build_cloudy(folder: Path, tgt: Path) -> Path:
    """``target_cloudy.tif`` in ``folder`` (written once): the target with bright opaque cloud
    blobs over ``CLOUD_SHARE`` of it (a smoothed random field, thresholded; a faint texture of
    noise over them) and its north-west corner no-data (a triangle of a fifth of the side)."""
    import cv2
    import rasterio
    from s2coreg.utils import atomic_path

    out = folder / "target_cloudy.tif"
    if out.exists():
        return out
    t = time.perf_counter()
    rng = np.random.default_rng(1)
    low = cv2.GaussianBlur(rng.normal(size=(344, 344)).astype(np.float32), (0, 0), 6)
    low = cv2.resize(low, (SIDE, SIDE), interpolation=cv2.INTER_LINEAR)
    cloud = low > np.quantile(low[::16, ::16], 1 - CLOUD_SHARE)
    del low
    with rasterio.open(tgt) as src:
        transform = src.transform
        data = src.read()
    noise = rng.normal(0, 20, (SIDE, SIDE)).astype(np.float32)
    for b in range(data.shape[0]):
        data[b][cloud] = np.clip(CLOUD_DN + noise[cloud], 1, 65535).astype(np.uint16)
    del noise, cloud
    corner = SIDE // 5
    rows, cols = np.ogrid[:corner, :corner]
    data[:, :corner, :corner][:, (rows + cols) < corner] = 0
    with atomic_path(out) as tmp:
        write(tmp, data, transform)
    print(f"cloudy target written in {time.perf_counter() - t:.0f} s → {out}")
    return out


def main(argv=None) -> int:

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=config.SHARED_DATA_DIR)
    parser.add_argument("--no-arosics", action="store_true")
    parser.add_argument("--timeout", type=int, default=900, help="seconds each method may take")
    parser.add_argument("--arosics-grid", type=int, default=1000, help="COREG_LOCAL's grid_res, px")
    parser.add_argument("--output", type=Path, default=config.RESULTS_DIR / "coregistration_full_tile.json")
    parser.add_argument("--keep", type=Path, default=None,
                        help="write the tiles here, or reuse those already there (default: a temporary folder)")
    parser.add_argument("--cloudy", action="store_true", help="also the cloudy target (built once in --keep)")
    parser.add_argument("--baseline-root", type=Path, default=None,
                        help="another checkout of this repository whose coregister.py runs as a row (the code "
                             "before a change, in the same run)")
    parser.add_argument("--no-variants", action="store_true",
                        help="only the defaults (2 and 1 threads), no --matcher auto / every-window rows")
    parser.add_argument("--no-local", action="store_true", help="leave out AROSICS's COREG_LOCAL")
    args = parser.parse_args(argv)
    folder = args.keep or Path(tempfile.mkdtemp())
    ref, tgt, ref_t, tgt_t = build_tiles(args.data, folder)
    targets = {"clear": tgt}
    if args.cloudy:
        targets["cloudy"] = build_cloudy(folder, tgt)

    def truth(q):   # displacement (m) at reference pixel centres q (N, 2): same pixel index on both grids
        q = np.asarray(q, np.float64) + 0.5
        p_ref = np.stack([ref_t.c + ref_t.a * q[:, 0], ref_t.f + ref_t.e * q[:, 1]], -1)
        p_tgt = np.stack([tgt_t.c + tgt_t.a * q[:, 0], tgt_t.f + tgt_t.e * q[:, 1]], -1)
        return p_tgt - p_ref

    centre_truth = truth([[SIDE / 2 - 0.5, SIDE / 2 - 0.5]])[0]
    ours = {"coregister.py": ({}, 2), "coregister.py --threads 1": ({}, 1)}
    if not args.no_variants:
        ours.update({"coregister.py --matcher auto": ({"matcher": "auto"}, 2),
                     "coregister.py, every window (stop_windows=0)": ({"stop_windows": 0}, 2)})
    rows = {}
    for case, target in targets.items():
        def row(name):
            return f"{name} [{case}]" if len(targets) > 1 else name
        runs = [(row(name), ROOT, settings, threads) for name, (settings, threads) in ours.items()]
        if args.baseline_root:
            runs.append((row(f"coregister.py ({args.baseline_root})"), args.baseline_root.resolve(), {}, 2))
        for name, root, settings, threads in runs:
            rows[name] = measure(OURS.format(root=str(root), ref=str(ref), tgt=str(target),
                                             out=str(folder / f"out_{case}"), settings=settings, threads=threads),
                                 args.timeout)
        if args.no_arosics:
            continue
        try:
            import arosics  # noqa: F401
        except ImportError:
            print("AROSICS is not installed: skipped (see benchmarks/coregistration.py)", file=sys.stderr)
            continue
        rows[row("AROSICS COREG (global)")] = measure(AROSICS.format(ref=str(ref), tgt=str(target)), args.timeout)
        if not args.no_local:
            local = measure(AROSICS_LOCAL.format(ref=str(ref), tgt=str(target), grid=args.arosics_grid),
                            args.timeout)
            if local.get("affine"):      # its translation: the affine's displacement at the tile's centre
                M = np.array(local["affine"]["matrix"])
                c = np.array([ref_t.c + ref_t.a * SIDE / 2, ref_t.f + ref_t.e * SIDE / 2])
                local["shift"] = (M[:, :2] @ c + M[:, 2] - c).tolist()
            rows[row(f"AROSICS COREG_LOCAL (every {args.arosics_grid} px, affine fit)")] = local
    print(f"truth at the tile centre: dx {centre_truth[0]:+.2f} m, dy {centre_truth[1]:+.2f} m\n")
    print("| method | wall s | CPU s | peak memory | error at the centre | σ | affine field RMSE | windows planned / "
          "read / used | result |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        err = "—" if r.get("shift") is None else f"{np.hypot(*(np.array(r['shift']) - centre_truth)):.2f} m"
        field = "—"
        if r.get("affine"):
            M = np.array(r["affine"]["matrix"])
            g = np.stack(np.meshgrid(np.linspace(0, SIDE - 1, 11), np.linspace(0, SIDE - 1, 11)), -1).reshape(-1, 2)
            p = np.stack([ref_t.c + ref_t.a * (g[:, 0] + 0.5), ref_t.f + ref_t.e * (g[:, 1] + 0.5)], -1)
            pred = p @ M[:, :2].T + M[:, 2] - p
            field = f"{np.sqrt(np.mean(np.sum((pred - truth(g)) ** 2, 1))):.2f} m"
        peak = "—" if r.get("peak_mb") is None else f"{r['peak_mb']:.0f} MB"
        status = r.get("reason") or (f"{r['points']} of {r['grid_points']} points" if r.get("points") else "ok")
        wn = r.get("windows")
        counts = "—"
        if wn:
            planned = wn.get("planned", wn["used"] + wn["rejected"])
            counts = f"{planned} / {wn.get('tried', planned)} / {wn['used']}"
        cpu = "—" if r.get("cpu_s") is None else f"{r['cpu_s']:.1f}"
        sigma = "—" if r.get("sigma_m") is None else f"{r['sigma_m']:.2f} m"
        print(f"| {name} | {r['seconds']:.1f} | {cpu} | {peak} | {err} | {sigma} | {field} | {counts} | {status} |")
        r.update(error_at_centre_m=None if err == "—" else float(err[:-2]),
                 field_rmse_m=None if field == "—" else float(field[:-2]))
    from s2coreg.utils import write_json

    write_json(args.output, {"truth_at_centre_m": centre_truth.tolist(), "rows": rows})
    print(f"\nresults → {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
