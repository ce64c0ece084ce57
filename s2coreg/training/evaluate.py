"""Benchmark of matching methods on real cross-date Sentinel-2 pairs of held-out places.

    python evaluate.py --data ../shared/data \
        --methods sift,orb,akaze,superpoint,superpoint+superglue,superpoint+superglue+refine

For every validation pair (``dataset.evaluation_pairs``): a centre crop of one date
(default 512 px), the other date viewed through a seeded random homography of the chosen
difficulty, features matched by each method, and a homography estimated from the matches
with the **same** OpenCV USAC_MAGSAC at 3 px for every method. Reported per method and
pair category: AUC of the mean corner error at 1/3/5/10 px, precision of the matches at
3 px, number of correct matches, keypoint repeatability, geometric verification as
``ImageMatcher`` does it (a pair is verified with at least ``min_inliers`` RANSAC inliers;
the precision of the inliers it hands over, and how often a verified homography is wrong),
and the median seconds per pair
(detect + describe both images + match, + refine) and per image (detect + describe) on this
machine. Every input image gets the same 1-99 percentile contrast stretch, for every method.
``+refine`` moves each match's point in image 1 with SuperPoint's fine head (sub-pixel);
``+correlate`` then makes the inliers of a provisional homography precise by correlation
(``matching.correlation_stage``; ``sift+correlate`` gives SIFT the same stage, for comparison).
"""
from __future__ import annotations

import s2coreg.config as config  # noqa: I001  first: OpenMP's waiting policy is set there, before torch loads

import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import torch

import s2coreg.cli as cli
from s2coreg.config import EvalConfig
from s2coreg.training.dataset import (SENSOR_VIEWS, VALIDATION_SOURCES, evaluation_pairs, make_eval_sample,
                                      test_pairs)
from s2coreg.matching.pipeline import (CASCADES, MATCHERS, OWN_MATCHER, MatchingPipeline, Pipeline, UnknownMatcher,
                                       correlate_keypoints1, matcher_class)
from s2coreg.matching.geometry import corner_error, estimate_homography, is_verified, pose_auc, warp_points
from s2coreg.io.imaging import local_contrast, percentile_stretch, to_uint8
from s2coreg.utils import PipelineError, set_threads, write_json


# ----------------------------------------------------------------------------- methods
# A benchmark method has ``name``, ``extract(image, valid) -> features`` (``keypoints`` (N, 2)
# at least) and ``match(f0, f1) -> (matches0, keypoints1)``: the matches and image 1's
# keypoints after any refinement. Every method gets the raw crop and its valid mask and applies
# the same 1-99 percentile stretch over the valid pixels itself, inside its timed extraction.
OPENCV_METHODS = ("sift", "orb", "akaze")


class OpenCVMethod:
    """Detect-describe-match with an OpenCV feature (SIFT + ratio test, ORB/AKAZE + mutual NN)."""

    def __init__(self, name: str, max_keypoints: int, ratio: float, correlate: bool = False,
                 ransac_threshold: float = EvalConfig.ransac_threshold):
        self.name = name + ("+correlate" if correlate else "")
        self.ratio, self.max_keypoints = ratio, max_keypoints
        self.correlate, self.ransac_threshold = correlate, ransac_threshold
        if name == "sift":
            self.feature = cv2.SIFT_create(nfeatures=max(max_keypoints, 0))
            self.norm = cv2.NORM_L2
        elif name == "orb":
            self.feature = cv2.ORB_create(nfeatures=max_keypoints if max_keypoints > 0 else 100_000)
            self.norm = cv2.NORM_HAMMING
        elif name == "akaze":
            self.feature = cv2.AKAZE_create(threshold=1e-4)
            self.norm = cv2.NORM_HAMMING
        else:
            raise PipelineError(f"unknown OpenCV method {name!r}")

    def extract(self, image: np.ndarray, valid: np.ndarray) -> dict:
        image8 = to_uint8(percentile_stretch(image, valid=valid))
        kps, desc = self.feature.detectAndCompute(image8, valid.astype(np.uint8) * 255)
        if self.max_keypoints > 0 and len(kps) > self.max_keypoints:  # AKAZE has no budget of its own
            order = np.argsort([-k.response for k in kps])[: self.max_keypoints]
            kps, desc = [kps[i] for i in order], desc[order]
        pts = np.array([k.pt for k in kps], np.float64).reshape(-1, 2)
        features = {"keypoints": pts, "descriptors": desc}
        if self.correlate:
            features["texture"] = local_contrast(image, valid)
        return features

    def match(self, f0: dict, f1: dict) -> tuple[np.ndarray, np.ndarray]:
        """Matches, and image 1's keypoints as detected (or moved by the correlation stage)."""
        matches0 = np.full(len(f0["keypoints"]), -1, np.int64)
        if f0["descriptors"] is None or f1["descriptors"] is None or len(f1["keypoints"]) < 2:
            return matches0, f1["keypoints"]
        sift = self.name.startswith("sift")
        matcher = cv2.BFMatcher(self.norm, crossCheck=not sift)
        if sift:
            for pair in matcher.knnMatch(f0["descriptors"], f1["descriptors"], k=2):
                if len(pair) == 2 and pair[0].distance < self.ratio * pair[1].distance:
                    matches0[pair[0].queryIdx] = pair[0].trainIdx
        else:
            for m in matcher.match(f0["descriptors"], f1["descriptors"]):
                matches0[m.queryIdx] = m.trainIdx
        if not self.correlate:
            return matches0, f1["keypoints"]
        return matches0, correlate_keypoints1(f0, f1, matches0, f1["keypoints"], self.ransac_threshold)[0]


class PipelineMethod:
    """A learned method: the one matching pipeline of ``s2coreg/matching/pipeline.py`` (SuperPoint, a registered
    matcher, optional fine-head refinement), exactly as ``ImageMatcher`` runs it."""

    def __init__(self, pipeline: Pipeline):
        self.pipeline, self.name = pipeline, pipeline.name

    def extract(self, image: np.ndarray, valid: np.ndarray) -> dict:
        return self.pipeline.extract(image, valid)

    def match(self, f0: dict, f1: dict) -> tuple[np.ndarray, np.ndarray]:
        result = self.pipeline.match_features(f0, f1)
        self.cascade_path = result.get("cascade_path")      # a cascade's: which path made it
        # the keypoints the result's matches index (a sift-first cascade's learned path has its own)
        f0["keypoints"], f1["keypoints"] = result["keypoints0"], result["keypoints1"]
        return result["matches0"], result["refined_keypoints1"]


def method_names() -> list[str]:
    """Every method name the benchmark takes: the OpenCV baselines (with or without the
    correlation stage), and SuperPoint with each registered matcher, with or without the fine
    head and the correlation stage (``superpoint`` = ``superpoint+mnn``); besides these,
    ``superpoint+package.module:name`` for a matcher of one's own (``matching.matcher_class``)."""
    learned = [f"superpoint+{m}{r}{c}" for m in sorted(MATCHERS) for r in ("", "+refine") for c in ("", "+correlate")]
    return [*OPENCV_METHODS, *(f"{m}+correlate" for m in OPENCV_METHODS), *learned, *CASCADES]


def build_method(name: str, cfg: EvalConfig, model_path: Path = config.CHECKPOINT_DIR, device: str = "cpu",
                 match_threshold: float | None = None, superpoint=None, superglue=None):
    """The benchmark method called ``name`` (see ``method_names``). ``superpoint`` /
    ``superglue``: models already in memory (training validation) instead of checkpoint files."""
    if name in CASCADES:     # a cheap path first, the learned one where it does not verify
        method = PipelineMethod(MatchingPipeline.from_checkpoints(model_path, name, device,
                                                                  max_keypoints=cfg.max_keypoints,
                                                                  match_threshold=match_threshold,
                                                                  ransac_threshold=cfg.ransac_threshold,
                                                                  min_inliers=cfg.min_inliers))
        method.name = name
        return method
    parts = name.split("+")
    correlate = parts[-1] == "correlate"
    if correlate:
        parts.pop()
    if len(parts) == 1 and parts[0] in OPENCV_METHODS:
        return OpenCVMethod(parts[0], cfg.max_keypoints, cfg.sift_ratio, correlate, cfg.ransac_threshold)
    if parts == ["superpoint"] or parts == ["superpoint", "refine"]:
        parts.insert(1, "mnn")
    refine = parts[-1] == "refine"
    unknown = PipelineError(f"unknown method {name!r}; choose from {', '.join(method_names())}, or "
                            f"superpoint+{OWN_MATCHER} (a matcher of your own)")
    if parts[0] != "superpoint" or len(parts) != 2 + refine:
        raise unknown
    try:
        matcher_class(parts[1])      # superpoint+package.module:name: its module imported here
    except UnknownMatcher:
        raise unknown from None
    pipeline = MatchingPipeline.from_checkpoints(model_path, parts[1], device, max_keypoints=cfg.max_keypoints,
                                                 match_threshold=match_threshold, refine=refine, correlate=correlate,
                                                 ransac_threshold=cfg.ransac_threshold, min_inliers=cfg.min_inliers,
                                                 superpoint=superpoint,
                                                 superglue=superglue if parts[1] == "superglue" else None)
    if refine and not pipeline.refine:
        raise PipelineError(f"{name}: this SuperPoint has no fine head to refine matches with; "
                            "train one with train_superpoint.py --fine-from")
    return PipelineMethod(pipeline)


# ----------------------------------------------------------------------------- metrics
def repeatability(kpts0: np.ndarray, kpts1: np.ndarray, H: np.ndarray, valid0: np.ndarray,
                  valid1: np.ndarray, threshold: float) -> float:
    """Share of keypoints, among those seen by both images, with a partner within ``threshold`` px
    (SuperPoint paper's definition, both directions)."""
    def visible(pts, valid):
        xi, yi = np.round(pts).astype(int).T if len(pts) else (np.zeros(0, int),) * 2
        h, w = valid.shape
        ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        ok[ok] = valid[yi[ok], xi[ok]]
        return ok

    w0 = warp_points(kpts0, H)
    w1 = warp_points(kpts1, np.linalg.inv(H))
    a = kpts0[visible(kpts0, valid0) & visible(w0, valid1)]
    b = kpts1[visible(kpts1, valid1) & visible(w1, valid0)]
    if len(a) == 0 or len(b) == 0:
        return 0.0
    d = np.linalg.norm(warp_points(a, H)[:, None] - b[None], axis=-1)
    return float(((d.min(1) < threshold).sum() + (d.min(0) < threshold).sum()) / (len(a) + len(b)))


def evaluate_sample(method, sample: dict, cfg: EvalConfig) -> dict:
    """Run one method on one warped pair and measure it."""
    t0 = time.perf_counter()
    f0 = method.extract(sample["image0"], sample["valid0"])
    t1 = time.perf_counter()
    f1 = method.extract(sample["image1"], sample["valid1"])
    t2 = time.perf_counter()
    matches0, k1 = method.match(f0, f1)
    k0 = f0["keypoints"]
    t3 = time.perf_counter()
    H_gt = sample["H_0to1"]
    m = matches0 > -1
    mk0, mk1 = k0[m], k1[matches0[m]]
    H_est, inliers = estimate_homography(mk0, mk1, cfg.ransac_threshold)
    h, w = sample["image0"].shape
    reproj = np.linalg.norm(warp_points(mk0, H_gt) - mk1, axis=1) if len(mk0) else np.zeros(0)
    is_correct = reproj < cfg.correct_threshold
    correct = int(is_correct.sum())
    error = corner_error(H_est, H_gt, (w, h))
    # what ImageMatcher hands over: the RANSAC inliers, or nothing when too few verify the pair
    verified = is_verified(H_est, inliers, cfg.min_inliers)
    return {
        "name": sample["name"], "category": sample["category"],
        "corner_error": error,
        "num_keypoints": (len(k0) + len(k1)) / 2, "num_matches": int(m.sum()), "num_correct": correct,
        "precision": correct / max(int(m.sum()), 1),
        # how well the correct matches are localised: their median reprojection error (px), RANSAC aside
        "residual": float(np.median(reproj[is_correct])) if correct else float("nan"),
        "num_inliers": int(inliers.sum()), "verified": float(verified),
        "verified_precision": float(is_correct[inliers].mean()) if verified else 0.0,
        "verified_wrong": float(verified and error > cfg.wrong_error),
        "repeatability": repeatability(k0, f1["keypoints"], H_gt, sample["valid0"], sample["valid1"], cfg.correct_threshold),
        "seconds_pair": t3 - t0, "seconds_image": ((t1 - t0) + (t2 - t1)) / 2,
        "cascade_path": getattr(method, "cascade_path", None),
    }


def summarise(records: list[dict], cfg: EvalConfig) -> dict:
    """Aggregate per-pair records: AUCs over pairs, means of counts, medians of times."""
    aucs = pose_auc([r["corner_error"] for r in records], cfg.auc_thresholds)
    out = {f"auc@{t:g}px": a for t, a in zip(cfg.auc_thresholds, aucs)}
    for key in ("precision", "num_correct", "num_matches", "num_keypoints", "repeatability", "num_inliers",
                "verified", "verified_precision", "verified_wrong"):
        out[key] = float(np.mean([r[key] for r in records]))
    verified = [r["verified_precision"] for r in records if r["verified"]]
    out["precision_where_verified"] = float(np.mean(verified)) if verified else float("nan")
    residuals = [r["residual"] for r in records if not np.isnan(r.get("residual", np.nan))]
    out["residual"] = float(np.median(residuals)) if residuals else float("nan")   # over pairs with a correct match
    for key in ("seconds_pair", "seconds_image"):
        out[key] = float(np.median([r[key] for r in records]))
    out["pairs"] = len(records)
    paths = [r.get("cascade_path") for r in records if r.get("cascade_path")]
    if paths:     # a cascade: the share of pairs each path made
        out["cascade_paths"] = {p: paths.count(p) / len(records) for p in sorted(set(paths))}
    return out


def validation_metrics(method, samples: list[dict], cfg: EvalConfig | None = None) -> dict:
    """The headline metrics of ``method`` on ``samples`` (used for validation while training)."""
    cfg = cfg or EvalConfig()
    summary = summarise([evaluate_sample(method, s, cfg) for s in samples], cfg)
    keys = [f"auc@{t:g}px" for t in cfg.auc_thresholds] + ["precision", "num_correct", "repeatability"]
    return {k: summary[k] for k in keys}


def run_benchmark(methods: list, samples: list[dict], cfg: EvalConfig, progress: bool = True,
                  configs: dict[str, EvalConfig] | None = None) -> dict:
    """Evaluate every method on every sample; methods interleaved per pair so that machine
    noise hits them alike. ``configs``: a method's own settings by its name (another inlier
    threshold: ``benchmarks/learned_precision_ablation.py``), else ``cfg``. Returns ``{method:
    {"records": [...], "overall": {...}, "by_category": {...}}}``."""
    from tqdm import tqdm

    configs = configs or {}
    records = defaultdict(list)
    for sample in tqdm(samples, desc="pairs", unit="pair", disable=not progress):
        for method in methods:
            records[method.name].append(evaluate_sample(method, sample, configs.get(method.name, cfg)))
    results = {}
    for name, recs in records.items():
        cats = defaultdict(list)
        for r in recs:
            cats[r["category"]].append(r)
        results[name] = {"overall": summarise(recs, cfg),
                         "by_category": {c: summarise(v, cfg) for c, v in sorted(cats.items())},
                         "records": recs}
    return results


def markdown_table(results: dict, cfg: EvalConfig) -> str:
    """Markdown tables: overall, geometric verification, then AUC@5px and precisions per category."""
    auc_cols = [f"auc@{t:g}px" for t in cfg.auc_thresholds]
    head = ["method", *[c.replace("auc@", "AUC@") for c in auc_cols], "prec@3px", "correct", "matches",
            "repeat.", "s/pair", "s/image"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, res in results.items():
        o = res["overall"]
        lines.append("| " + " | ".join([name, *[f"{o[c]:.3f}" for c in auc_cols], f"{o['precision']:.3f}",
                                        f"{o['num_correct']:.0f}", f"{o['num_matches']:.0f}",
                                        f"{o['repeatability']:.3f}", f"{o['seconds_pair']:.3f}",
                                        f"{o['seconds_image']:.3f}"]) + " |")
    lines += ["", f"Geometric verification (USAC_MAGSAC at {cfg.ransac_threshold:g} px; a pair is verified with at least "
              f"{cfg.min_inliers} inliers, wrong when its homography's corner error exceeds {cfg.wrong_error:g} px; "
              "precision of the inliers of verified pairs, a rejected pair counts 0):", "",
              "| method | inliers | pairs verified | verified but wrong | verified prec@3px | same, over verified pairs |",
              "|---|---|---|---|---|---|"]
    for name, res in results.items():
        o = res["overall"]
        lines.append(f"| {name} | {o['num_inliers']:.0f} | {o['verified']:.3f} | {o['verified_wrong']:.3f} | "
                     f"{o['verified_precision']:.3f} | {o['precision_where_verified']:.3f} |")
    cascades = [(name, res["overall"]["cascade_paths"]) for name, res in results.items()
                if "cascade_paths" in res["overall"]]
    if cascades:
        lines += ["", "Cascades, the share of pairs each path made: " + "; ".join(
            f"{name}: " + ", ".join(f"{p} {share:.0%}" for p, share in shares.items()) for name, shares in cascades)]
    cats = sorted({c for res in results.values() for c in res["by_category"]})
    for key, title in (("auc@5px", "AUC@5px"), ("precision", "Precision at 3 px"),
                       ("verified_precision", "Precision at 3 px of the verified matches")):
        lines += ["", f"{title} by pair category (pairs):", "",
                  "| method | " + " | ".join(f"{c} ({next(iter(results.values()))['by_category'][c]['pairs']})"
                                            for c in cats) + " |", "|" + "---|" * (len(cats) + 1)]
        for name, res in results.items():
            lines.append(f"| {name} | " + " | ".join(f"{res['by_category'][c][key]:.3f}" for c in cats) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    with torch.no_grad():        # inference only; the caller's autograd state is left as it was
        return _main(argv)


def _main(argv=None) -> int:
    cfg = EvalConfig()
    parser = cli.parser(__doc__)
    parser.add_argument("--data", type=Path, default=config.SHARED_DATA_DIR,
                        help="the shared data folder: oscd/, ombria/, ukraine_T36UYA/ (validation), ombria2021/, "
                             "sen2dwater/, sen12mscrts_roi146/ (test)")
    parser.add_argument("--methods", default="sift,superpoint+mnn,superpoint+superglue,superpoint+superglue+refine,"
                                             + config.MatchingConfig.matcher,
                        help="comma-separated, from " + ", ".join(method_names())
                             + f"; {config.MatchingConfig.matcher} is what ImageMatcher() runs (MatchingConfig.matcher)")
    parser.add_argument("--difficulty", default=cfg.difficulty, choices=["easy", "medium", "hard"])
    parser.add_argument("--crop", type=int, default=cfg.crop, help="crop side in px (smaller images: their side)")
    parser.add_argument("--max-keypoints", type=int, default=cfg.max_keypoints, help="budget for every method")
    parser.add_argument("--repeats", type=int, default=1, help="random warps per pair")
    parser.add_argument("--sources", default=None, help="subset of oscd,ombria,t36uya (validation split)")
    parser.add_argument("--split", default="val", choices=["val", "test"],
                        help="val: the places checkpoints are selected on; test: places never used for training "
                             "or selection (OMBRIA 2021, Lake Bracciano, SEN12MS-CR-TS region 146)")
    parser.add_argument("--model-path", type=Path, default=config.CHECKPOINT_DIR,
                        help="folder of the checkpoints, or a SuperPoint file (its matcher looked for beside it)")
    parser.add_argument("--superglue", type=Path, default=None,
                        help="a SuperGlue checkpoint to use instead of the one in --model-path")
    parser.add_argument("--match-threshold", type=float, default=None,
                        help="the matcher's score threshold (default: the checkpoint's)")
    parser.add_argument("--sensor", default=cfg.sensor, choices=sorted(SENSOR_VIEWS),
                        help="image 1 seen as another sensor: Landsat OLI's 30 m bands or its 15 m pan "
                             "(dataset.sensor_view); image 0 stays Sentinel-2's")
    parser.add_argument("--seed", type=int, default=config.SEED)
    # the CPU by default, deliberately: the baselines run there and the timings are compared
    cli.add_runtime(parser, device="cpu", device_help="the learned methods' device; timings are reported for it")
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON results (default data/results/eval_<split>_<difficulty>.json)")
    parser.add_argument("--reference", type=Path, default=None,
                        help="also write every 10th pair's per-method corner errors here (the tests rerun them "
                             "to check that the shipped checkpoints reproduce these figures)")
    args = parser.parse_args(argv)
    cfg = config.replace(cfg, crop=args.crop, difficulty=args.difficulty, max_keypoints=args.max_keypoints,
                         sensor=args.sensor)
    try:
        set_threads(args.threads or None)
        if args.max_keypoints == 0 or args.max_keypoints < -1:     # named as the flag (the extractor says it too)
            raise PipelineError(f"--max-keypoints {args.max_keypoints}: keypoints per image, 1 or more (-1: all)")
        superglue = None
        if args.superglue is not None:
            from s2coreg.models.superglue import SuperGlue

            superglue = SuperGlue.from_checkpoint(args.superglue, args.device)
        methods = [build_method(m.strip(), cfg, args.model_path, args.device, args.match_threshold,
                                superglue=superglue) for m in args.methods.split(",") if m.strip()]
        sources = tuple(s.strip() for s in args.sources.split(",") if s.strip()) if args.sources else None
        if sources and args.split == "test":
            raise PipelineError("--sources chooses among the validation places (oscd, ombria, t36uya); "
                                "the test split is run whole")
        unknown = sorted(set(sources or ()) - set(VALIDATION_SOURCES))
        if unknown:
            raise PipelineError(f"--sources {','.join(unknown)}: unknown; choose from {','.join(VALIDATION_SOURCES)}")
        pairs = test_pairs(args.data) if args.split == "test" else evaluation_pairs(args.data, sources)
        samples = [make_eval_sample(p, cfg.crop, cfg.difficulty, args.seed, r, sensor=cfg.sensor)
                   for p in pairs for r in range(args.repeats)]
        results = run_benchmark(methods, samples, cfg)
    except PipelineError as exc:
        return cli.fail(exc)
    table = markdown_table(results, cfg)
    print(f"\n{len(samples)} {args.split} pairs, crop {cfg.crop}, difficulty {cfg.difficulty}, "
          f"{'image 1 as ' + cfg.sensor + ', ' if cfg.sensor else ''}"
          f"{torch.get_num_threads()} threads\n\n{table}")
    out = args.output or config.RESULTS_DIR / f"eval_{args.split}_{cfg.difficulty}{'_' + cfg.sensor if cfg.sensor else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, {"config": config.as_dict(cfg), "data": str(args.data), "seed": args.seed,
                     "results": results, "table": table})
    print(f"\nresults → {out}")
    if args.reference:
        write_json(args.reference, reference_subset(results, cfg, args))
        print(f"reference subset → {args.reference}")
    return 0


def reference_subset(results: dict, cfg: EvalConfig, args, every: int = 10) -> dict:
    """Every ``every``-th pair's corner error per method, with the settings that reproduce it."""
    return {"split": args.split, "difficulty": cfg.difficulty, "crop": cfg.crop, "seed": args.seed,
            "max_keypoints": cfg.max_keypoints,
            "methods": {name: {r["name"]: r["corner_error"] for r in res["records"][::every]}
                        for name, res in results.items()}}
