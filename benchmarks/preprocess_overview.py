"""Time an overview of a full-size (10980×10980) Sentinel-2 band: decimated vs full read.

    python benchmarks/preprocess_overview.py [--size 1024] [--workdir /tmp/s2bench]

Writes a Level-1C ``.SAFE`` whose B04 is a full 10 m tile (real Pisa pixels repeated) as
lossless JPEG 2000 with 1024² tiles and 6 resolution levels, like ESA's files, then times
``data_preprocess.py``'s overview (which reads only the resolution level it needs) beside
the naive way (decode the whole band, then shrink it) in the same run.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import rasterio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from s2coreg.preprocess import preprocess  # noqa: E402
import s2coreg.samples as fx  # noqa: E402

SIDE = 10980


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="overview side in px")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "s2bench")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    safe = next(args.workdir.glob("*.SAFE"), None) if args.workdir.exists() else None
    if safe is None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        real = fx.real_pixels()["B04"]
        reps = -(-SIDE // real.shape[0])
        big = np.tile(real, (reps, reps))[:SIDE, :SIDE]
        t = time.perf_counter()
        # ESA-like JPEG 2000: lossless, 1024² tiles, 6 resolution levels
        safe = fx.make_l1c(args.workdir, {"B04": big}, bands=["B04"],
                           jp2_options={"RESOLUTIONS": "6", "BLOCKXSIZE": "1024", "BLOCKYSIZE": "1024"})
        print(f"wrote a {SIDE}×{SIDE} JP2 in {time.perf_counter() - t:.0f} s")
    jp2 = next(safe.rglob("*_B04.jp2"))
    with rasterio.open(jp2) as src:
        print(f"{jp2.name}: {src.width}×{src.height}, overviews {src.overviews(1)}")
    decimated, full = [], []
    for _ in range(args.repeats):
        out = args.workdir / "out"
        t = time.perf_counter()
        preprocess(safe, out, bands=("B04",), size=args.size, masks=False, progress=False)
        decimated.append(time.perf_counter() - t)
        t = time.perf_counter()
        with rasterio.open(jp2) as src:
            whole = src.read(1)
        cv2.resize(whole, (args.size, args.size), interpolation=cv2.INTER_AREA)
        full.append(time.perf_counter() - t)
    d, f = np.median(decimated), np.median(full)
    print(f"\noverview {args.size}² of a {SIDE}² band (median of {args.repeats}):\n"
          f"| method | seconds |\n|---|---|\n| data_preprocess.py (decimated read) | {d:.2f} |\n"
          f"| decode the full band, then resize | {f:.2f} |\n\nspeed-up ×{f / d:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
