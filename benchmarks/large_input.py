"""Time and peak memory of ``ImageMatcher`` on a large input (36 megapixels, the network at 1024²).

    python benchmarks/large_input.py [--side 6000]

Writes the shipped sample's first date enlarged to ``side``² as JPEG and as GeoTIFF (temporary
folder), then matches each against the second date in a fresh process and reports the wall
time and the process's peak resident memory; the 512² sample pair itself is the baseline, run
the same way.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TIMED = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
import s2coreg.config as config
from s2coreg.matching.matcher import ImageMatcher
m = ImageMatcher(device="cpu", matcher="auto")        # the learned path: its networks are what this measures
t = time.perf_counter()
r = m.match_images({a!r}, {b!r})
seconds = time.perf_counter() - t
print(json.dumps({{"seconds": seconds, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "inliers": r.num_inliers, "size": r.image_size0}}))
"""


def run(a: Path, b: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", TIMED.format(root=str(ROOT), a=str(a), b=str(b))],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=6000)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import cv2
    import numpy as np
    import rasterio
    from PIL import Image

    from s2coreg.matching.matcher import sample_pair

    a, b = sample_pair()
    big = cv2.resize(np.asarray(Image.open(a).convert("RGB")), (args.side, args.side), interpolation=cv2.INTER_CUBIC)
    rows = {"512² sample pair (baseline)": run(a, b)}
    with tempfile.TemporaryDirectory() as tmp:
        Image.fromarray(big).save(Path(tmp) / "big.jpg", quality=90)
        with rasterio.open(Path(tmp) / "big.tif", "w", driver="GTiff", width=args.side, height=args.side, count=3,
                           dtype="uint8", tiled=True, compress="deflate") as dst:
            dst.write(np.moveaxis(big, -1, 0))
            dst.build_overviews([2, 4, 8])
        del big
        rows[f"{args.side}² JPEG against the 512² date"] = run(Path(tmp) / "big.jpg", b)
        rows[f"{args.side}² GeoTIFF (with overviews) against the 512² date"] = run(Path(tmp) / "big.tif", b)
    print("| input | seconds | peak memory | inliers |\n|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['seconds']:.2f} | {r['peak_mb']:.0f} MB | {r['inliers']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
