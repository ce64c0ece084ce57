"""What keying a stack's cache by content costs: the content key of one full-size date.

    python benchmarks/cache_key_cost.py [--bands 4] [--repeats 3] [--no-jp2] [--output data/results/cache_key_cost.json]

A date's cache key hashes every byte of its files (``remote.content_key``: BLAKE2b, read in
``remote.HASH_CHUNK`` blocks), so that a pixel edited in place is never taken for the old one.
This writes one full-tile band — 10980 × 10980 uint16, the real Lake Bracciano B04 texture of
``tests/data/bracciano`` laid over the tile (flipped and turned tile by tile), so that it
compresses as a real band does — as a deflate-compressed tiled GeoTIFF and as a lossless JPEG
2000 (as ESA ships it: ~0.85 byte/px here, ~100 MB, like a real 10 m band), copies each to
``--bands`` band files (B02, B03, B04, B08: one date), and times that date's key as a stack run
computes it (``WorkCache.date_content``: file after file, nothing memoized, as in a new run),
``--repeats`` times:

- warm: the files in the page cache (just written, as a date read a moment ago);
- cold: each file's pages dropped first (``posix_fadvise(DONTNEED)``, this process's files only),
  so the disk read is in the figure.

Printed and written to ``--output``: seconds a date (median), the rate, and the ratio to one
date's extraction at full size (``extract_s_per_date`` of ``data/results/stack_scaling_full_tile.json``,
measured by ``benchmarks/stack_scaling.py --full-tile``), with the machine's load average
(hashing is one core's work: other processes slow it). Under a minute on two cores.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import s2coreg.config as config  # noqa: E402,F401
import s2coreg.io.remote as remote  # noqa: E402

TILE_PX = 10980                  # a Sentinel-2 tile at 10 m
SOURCE = ROOT / "tests" / "data" / "bracciano" / "20160718.tif"    # band 1: B04, uint16 reflectance
BAND_NAMES = ("B02", "B03", "B04", "B08", "B05", "B06", "B07", "B8A", "B11", "B12")   # a date's band files
EXTRACTION = ROOT / "data" / "results" / "stack_scaling_full_tile.json"


def full_tile_band(seed: int = 0) -> np.ndarray:
    """(TILE_PX, TILE_PX) uint16: the source's B04 crop, flipped and turned at random, tile by tile."""
    import rasterio

    with rasterio.open(SOURCE) as s:
        crop = s.read(1)
    side = min(crop.shape)
    crop = crop[:side, :side]
    rng = np.random.default_rng(seed)
    n = -(-TILE_PX // side)
    rows = [np.hstack([np.rot90(np.flip(crop, int(rng.integers(0, 2))), int(rng.integers(0, 4))) for _ in range(n)])
            for _ in range(n)]
    return np.ascontiguousarray(np.vstack(rows)[:TILE_PX, :TILE_PX])


def write(data: np.ndarray, path: Path, driver: str) -> float:
    """``data`` written as ``driver`` at ``path``; seconds taken."""
    import rasterio
    from rasterio.transform import Affine

    options = (dict(compress="deflate", predictor=2, tiled=True, blockxsize=512, blockysize=512, num_threads="ALL_CPUS")
               if driver == "GTiff" else dict(QUALITY=100, REVERSIBLE="YES", NUM_THREADS="ALL_CPUS"))
    t = time.perf_counter()
    with rasterio.open(path, "w", driver=driver, width=data.shape[1], height=data.shape[0], count=1,
                       dtype=data.dtype.name, crs="EPSG:32633", transform=Affine(10, 0, 300000, 0, -10, 4700040),
                       **options) as dst:
        dst.write(data, 1)
    return time.perf_counter() - t


def drop_from_page_cache(path: Path) -> None:
    """This file's pages out of the page cache (written to disk first), so its next read is from disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def time_keys(files: list[Path], repeats: int, cold: bool) -> list[float]:
    """Seconds to key the date of band ``files`` as a stack run does (``WorkCache.date_content``,
    a new run's cache: nothing memoized), ``repeats`` times."""
    import s2coreg.io.products as dp
    from s2coreg.coregistration.cache import WorkCache

    product = dp.open_band_files(files, config.S2_DEFAULT_QUANTIFICATION, 0.0)
    bands = sorted(product.band_files)
    out = []
    for _ in range(repeats):
        cache = WorkCache(None, {})
        if cold:
            for f in files:
                drop_from_page_cache(f)
        t = time.perf_counter()
        cache.date_content(product, bands)
        out.append(time.perf_counter() - t)
        assert {k[0] for k in cache.content_keys} >= {os.path.abspath(f) for f in files}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bands", type=int, default=4, choices=range(1, len(BAND_NAMES) + 1), metavar="N",
                        help="band files a date (default 4)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-jp2", action="store_true", help="the GeoTIFF alone (the JPEG 2000 takes ~20 s to write)")
    parser.add_argument("--output", type=Path, default=config.RESULTS_DIR / "cache_key_cost.json")
    args = parser.parse_args(argv)
    extract_s = json.loads(EXTRACTION.read_text())["full_tile"]["extract_s_per_date"]
    data = full_tile_band()
    report: dict = {"tile_px": TILE_PX, "bands": args.bands, "repeats": args.repeats, "hash": "blake2b",
                    "chunk_bytes": remote.HASH_CHUNK, "extract_s_per_date": extract_s, "cores": len(os.sched_getaffinity(0)),
                    "load_average_before": round(os.getloadavg()[0], 1), "formats": {}}
    with tempfile.TemporaryDirectory(dir=ROOT / "data") as tmp:
        for driver, suffix in (("GTiff", ".tif"), ("JP2OpenJPEG", ".jp2")):
            if driver == "JP2OpenJPEG" and args.no_jp2:
                continue
            files = [Path(tmp) / f"{band}{suffix}" for band in BAND_NAMES[:args.bands]]
            first = files[0]
            written_s = write(data, first, driver)
            for f in files[1:]:
                shutil.copyfile(first, f)
            size = first.stat().st_size
            warm = statistics.median(time_keys(files, args.repeats, cold=False))
            cold = statistics.median(time_keys(files, args.repeats, cold=True))
            case = {"file_mb": round(size / 1e6, 1), "date_mb": round(size * args.bands / 1e6, 1),
                    "written_s": round(written_s, 1),
                    "warm_s_per_date": round(warm, 2), "warm_mb_per_s": round(size * args.bands / 1e6 / warm),
                    "cold_s_per_date": round(cold, 2), "cold_mb_per_s": round(size * args.bands / 1e6 / cold),
                    "warm_of_extraction": round(warm / extract_s, 3), "cold_of_extraction": round(cold / extract_s, 3)}
            report["formats"][driver] = case
            print(f"{driver}: {args.bands} × {case['file_mb']} MB: content key of a date {case['warm_s_per_date']} s "
                  f"warm ({case['warm_mb_per_s']} MB/s), {case['cold_s_per_date']} s from disk "
                  f"({case['cold_mb_per_s']} MB/s); {100 * case['warm_of_extraction']:.1f} % / "
                  f"{100 * case['cold_of_extraction']:.1f} % of a date's extraction ({extract_s} s)")
            for f in files:
                f.unlink()
    report["load_average_after"] = round(os.getloadavg()[0], 1)
    from s2coreg.utils import write_json

    write_json(args.output, report)
    print(f"results → {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
