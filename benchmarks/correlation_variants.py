"""Settings of the correlation stage, compared on the validation split (where they were chosen).

    python benchmarks/correlation_variants.py [--difficulty medium]

Every val pair is matched once by the shipped SuperPoint + SuperGlue + fine head; then the
correlation stage (``matching.correlation_stage``) runs with each setting — the window side, the
largest move from the provisional homography's prediction, the Gaussian scale of the local
contrast — and the benchmark's USAC_MAGSAC homography of the resulting matches is scored as in
``evaluate.py`` (AUC of the mean corner error). The first row is no correlation at all. The
shipped setting is ``config.MatchingConfig``'s.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import s2coreg.config as config  # noqa: E402  first: OpenMP's waiting policy, before torch is used
from s2coreg.training.dataset import evaluation_pairs, make_eval_sample  # noqa: E402
from s2coreg.training.evaluate import build_method  # noqa: E402
from s2coreg.matching.pipeline import correlation_stage  # noqa: E402
from s2coreg.matching.geometry import corner_error, estimate_homography
from s2coreg.io.imaging import local_contrast
from s2coreg.matching.geometry import pose_auc  # noqa: E402

# (window px, max shift px, local-contrast sigma px); None = no correlation stage
VARIANTS = [None, (31, 3.0, 2.0), (15, 3.0, 2.0), (21, 3.0, 2.0), (41, 3.0, 2.0), (31, 2.0, 2.0), (31, 5.0, 2.0),
            (31, 3.0, 1.0), (31, 3.0, 4.0), (31, 3.0, 8.0)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=config.SHARED_DATA_DIR)
    parser.add_argument("--difficulty", default="medium", choices=["easy", "medium", "hard"])
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    cfg = config.replace(config.EvalConfig(), difficulty=args.difficulty)
    method = build_method("superpoint+superglue+refine", cfg)       # no correlation: it is varied here
    errors = {v: [] for v in VARIANTS}
    moved = {v: [] for v in VARIANTS}
    samples = [make_eval_sample(p, cfg.crop, cfg.difficulty, config.SEED) for p in evaluation_pairs(args.data)]
    for sample in samples:
        f0 = method.extract(sample["image0"], sample["valid0"])
        f1 = method.extract(sample["image1"], sample["valid1"])
        matches0, keypoints1 = method.match(f0, f1)
        ok = matches0 > -1
        mk0 = np.asarray(f0["keypoints"], np.float64)[ok]
        h, w = sample["image0"].shape
        for variant in VARIANTS:
            mk1 = np.asarray(keypoints1, np.float64)[matches0[ok]]
            if variant is not None:
                window, max_shift, sigma = variant
                t0 = {"texture": local_contrast(sample["image0"], sample["valid0"], sigma)}
                t1 = {"texture": local_contrast(sample["image1"], sample["valid1"], sigma)}
                points, did = correlation_stage(t0, t1, mk0, mk1, cfg.ransac_threshold, window, max_shift)
                mk1 = points.astype(np.float64)
                moved[variant].append(did.mean() if len(did) else 0.0)
            H, _ = estimate_homography(mk0, mk1, cfg.ransac_threshold)
            errors[variant].append(corner_error(H, sample["H_0to1"], (w, h)))
    m = config.MatchingConfig
    shipped = (m.correlation_window, m.correlation_max_shift, m.correlation_sigma)
    print(f"{len(samples)} val pairs, {cfg.difficulty}, SuperPoint + SuperGlue + fine head, then:\n")
    print("| correlation stage | window | max shift | sigma | AUC@1px | AUC@3px | AUC@5px | AUC@10px | matches moved |")
    print("|---|---|---|---|---|---|---|---|---|")
    for variant in VARIANTS:
        aucs = pose_auc(errors[variant], cfg.auc_thresholds)
        name = "none" if variant is None else ("**shipped**" if variant == shipped else "")
        cells = ["—"] * 3 if variant is None else [f"{variant[0]} px", f"{variant[1]:g} px", f"{variant[2]:g} px"]
        share = f"{np.mean(moved[variant]):.2f}" if moved[variant] else "—"
        print(f"| {name} | " + " | ".join(cells) + " | " + " | ".join(f"{a:.3f}" for a in aucs) + f" | {share} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
