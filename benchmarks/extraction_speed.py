"""Time detect-and-describe at 512×512 on this machine: the shipped SuperPoint beside SIFT.

    python benchmarks/extraction_speed.py [--repeats 30] [--size 512] [--threads 0]

Both run on the same crop of the shipped Pisa sample (each applies the same 1-99 percentile
stretch inside its timed extraction), interleaved, with the same budget of 1024 keypoints; the medians and their ratio are printed, and the whole pair
(two extractions + SuperGlue matching + fine refinement + correlation stage, as ``ImageMatcher``
does it) beside SIFT's (two extractions + ratio-test matching), and the fast mode's pair
(``matcher="fast"``: mutual nearest neighbours, SuperGlue only where they give few inliers).
``--threads`` sets torch's and OpenCV's threads alike (0: all cores).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import s2coreg.config as config  # noqa: E402,F401  first: OpenMP's waiting policy, before torch is used
from s2coreg.training.evaluate import OpenCVMethod, build_method  # noqa: E402
from s2coreg.matching.pipeline import correlation_stage, refine_feature_matches  # noqa: E402
from s2coreg.samples import sample_gray  # noqa: E402
from s2coreg.utils import set_threads  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=0, help="torch's and OpenCV's threads; 0 = all cores")
    args = parser.parse_args()
    threads = set_threads(args.threads or None)
    torch.set_grad_enabled(False)
    s = args.size
    a = sample_gray("imgs_1")[:s, :s]
    b = sample_gray("imgs_2")[:s, :s]
    valid = np.ones(a.shape, bool)
    sift = OpenCVMethod("sift", 1024, 0.8)
    glue = build_method("superpoint+superglue+refine+correlate", config.EvalConfig())   # what ImageMatcher runs
    fast = build_method("fast", config.EvalConfig())
    times = {k: [] for k in ("sift_image", "sp_image", "sift_pair", "spsg_pair", "fast_pair", "refine", "correlate")}
    counts = {}
    for _ in range(args.repeats + 2):          # the first two are warm-up
        for name, m in (("sift", sift), ("sp", glue)):
            t0 = time.perf_counter()
            f0 = m.extract(a, valid)
            t1 = time.perf_counter()
            f1 = m.extract(b, valid)
            matches0, _ = m.match(f0, f1)      # SuperPoint: SuperGlue + fine refinement + correlation
            t2 = time.perf_counter()
            if name == "sp":                   # the two stages again, alone, to say what they cost
                refined1 = refine_feature_matches(f0, f1, matches0)
                t3 = time.perf_counter()
                ok = matches0 > -1
                correlation_stage(f0, f1, f0["keypoints"][ok], refined1[matches0[ok]])
                times["refine"].append(t3 - t2)
                times["correlate"].append(time.perf_counter() - t3)
            counts[name] = (len(f0["keypoints"]), len(f1["keypoints"]), int((matches0 > -1).sum()))
            times[f"{name}_image"].append(t1 - t0)
            times["sift_pair" if name == "sift" else "spsg_pair"].append(t2 - t0)
        t0 = time.perf_counter()
        fast.match(fast.extract(a, valid), fast.extract(b, valid))
        times["fast_pair"].append(time.perf_counter() - t0)
    med = {k: float(np.median(v[2:])) for k, v in times.items()}
    print(f"keypoints and matches: SIFT {counts['sift']}, SuperPoint {counts['sp']} ({glue.name})")
    print(f"{s}×{s}, {threads} threads (torch and OpenCV), median of {args.repeats}:\n"
          f"| | SIFT | SuperPoint (+SuperGlue +refine +correlate) | ratio |\n|---|---|---|---|\n"
          f"| detect + describe one image | {med['sift_image']:.3f} s | {med['sp_image']:.3f} s | "
          f"{med['sp_image'] / med['sift_image']:.2f}× |\n"
          f"| whole pair (2 extractions + matching + refinement) | {med['sift_pair']:.3f} s | "
          f"{med['spsg_pair']:.3f} s | {med['spsg_pair'] / med['sift_pair']:.2f}× |\n"
          f"| whole pair, fast mode (path: {fast.cascade_path}) | | {med['fast_pair']:.3f} s | "
          f"{med['fast_pair'] / med['sift_pair']:.2f}× |\n"
          f"(of which the fine refinement of the matches: {med['refine'] * 1000:.1f} ms, the correlation stage: "
          f"{med['correlate'] * 1000:.1f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
