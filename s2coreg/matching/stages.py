"""The matching stages as scripts: ``python SuperPoint.py`` and ``python SuperGlue_architecture.py``.

The network files hold the networks; their stage scripts live here, with the matching path they
call (``s2coreg/matching/pipeline.py``), so that no module imports back the one that imports it.

    python SuperPoint.py --input data/preprocessed --output data/features
        one ``.npz`` per image: ``keypoints`` (N×2, x y, pixel centres at integers, in the input
        image's own frame), ``scores``, ``descriptors``, ``image_size``; with a fine head
        ``fine_descriptors``, ``fine_patches``, ``fine_temperature``; the correlation stage's
        ``texture`` (``matching.SuperPointExtractor``).
    python SuperGlue_architecture.py --features data/features --pairs pairs.txt --output data/matches
    python SuperGlue_architecture.py --features data/features --all-pairs --output data/matches
        one ``.npz`` per pair: ``keypoints0/1``, ``matches0`` (index into image 1, −1 = none),
        ``matching_scores0``, ``matches1`` / ``matching_scores1``, ``refined_keypoints1`` (image 1's
        keypoints after refinement; ``keypoints1`` as detected), ``refined1`` and the geometric
        verification (``homography``, NaN when not verified; ``inliers``, ``num_inliers``,
        ``verified``, ``reason``).
"""
from __future__ import annotations

import s2coreg.config as config  # noqa: I001  first: OpenMP's waiting policy is set there, before torch loads

import itertools
import sys
import time
from pathlib import Path

import numpy as np

import s2coreg.cli as cli
from s2coreg.config import SuperPointConfig
from s2coreg.matching.pipeline import (MATCHERS, OWN_MATCHER, MatchingPipeline, SuperPointExtractor, build_matcher,
                                       features_to_file, load_features)
from s2coreg.io.imaging import list_images, load_image, load_valid_mask
from s2coreg.utils import PipelineError, write_npz

EXTRACT_HELP = "SuperPoint keypoints and descriptors of every image, one .npz each."
MATCH_HELP = "Match pairs of SuperPoint feature files (SuperGlue or mutual nearest neighbours), one .npz each."


# ----------------------------------------------------------------------------- python SuperPoint.py
def extract_main(argv=None) -> int:
    """``python SuperPoint.py``: keypoints and descriptors of every image (see the module docstring)."""
    cfg = SuperPointConfig()
    parser = cli.parser(EXTRACT_HELP)
    parser.add_argument("--input", type=Path, default=config.PREPROCESSED_DIR,
                        help="an image file or a folder of images (searched recursively)")
    parser.add_argument("--output", type=Path, default=config.FEATURES_DIR, help="folder for the .npz files")
    parser.add_argument("--checkpoint", type=Path, default=config.CHECKPOINT_DIR / "superpoint.pt",
                        help="SuperPoint checkpoint")
    parser.add_argument("--max-keypoints", type=int, default=cfg.max_keypoints, help="-1 keeps all")
    parser.add_argument("--detection-threshold", type=float, default=None,
                        help="heatmap threshold (default: the checkpoint's)")
    parser.add_argument("--nms-radius", type=int, default=None, help="NMS radius in px (default: the checkpoint's)")
    parser.add_argument("--resize", type=int, default=0,
                        help="longer side the network sees (keypoints stay in each image's own frame); 0 = none")
    parser.add_argument("--overwrite", action="store_true", help="redo images already extracted")
    cli.add_runtime(parser)
    return cli.run(_extract, parser.parse_args(argv))


def _extract(args) -> int:
    from tqdm import tqdm

    extractor = SuperPointExtractor.from_checkpoint(args.checkpoint, args.device, max_keypoints=args.max_keypoints,
                                                    resize=args.resize, detection_threshold=args.detection_threshold,
                                                    nms_radius=args.nms_radius)
    if args.input.is_file():
        root, images = args.input.parent, [args.input]
    elif args.input.is_dir():
        root, images = args.input, list_images(args.input)
    else:
        raise PipelineError(f"{args.input}: no such file or folder; run stage 1 first (data_preprocess.py, or s2coreg-preprocess) or fix --input")
    if not images:
        raise PipelineError(f"{args.input}: no images (.jpg .png .tif .jp2) found")
    args.output.mkdir(parents=True, exist_ok=True)
    start, done, empty, failed = time.time(), 0, [], []
    todo = [p for p in images if args.overwrite or not (args.output / p.relative_to(root).with_suffix(".npz")).exists()]

    def extract(path: Path) -> dict:
        return extractor.extract(load_image(path), load_valid_mask(path), name=str(path))

    for path, feats in cli.each(tqdm(todo, desc="SuperPoint", unit="img"), extract, failed):
        if feats.get("reason"):
            empty.append(feats["reason"])
        out = args.output / path.relative_to(root).with_suffix(".npz")
        out.parent.mkdir(parents=True, exist_ok=True)
        write_npz(out, features_to_file(feats))
        done += 1
    print(f"extracted {done} of {len(images)} images in {time.time() - start:.1f} s "
          f"({len(images) - len(todo)} already done, {len(empty)} without keypoints, {len(failed)} failed) "
          f"→ {args.output}")
    for line in empty:
        print(f"  empty: {line}", file=sys.stderr)
    for line in failed:
        print(f"  failed: {line}", file=sys.stderr)
    return 1 if failed else 0


# ----------------------------------------------------------------------------- python SuperGlue_architecture.py
def read_pairs(path: Path) -> list[tuple[str, str]]:
    pairs = []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split("#", 1)[0].split()
        if not parts:
            continue
        if len(parts) < 2:
            raise PipelineError(f"{path}:{line_no}: expected two image names on the line, got {line.strip()!r}")
        pairs.append((parts[0], parts[1]))
    return pairs


def _features_path(folder: Path, name: str) -> Path:
    p = folder / name
    return p if p.suffix == ".npz" else p.with_suffix(".npz")


def result_to_file(result: dict) -> dict:
    """The arrays of a verified match result to write to an ``.npz``, under the names they have in
    memory (``results.MatchResult``): the detected keypoints, image 1's refined ones, the matches
    and the verification (``homography`` NaN when not verified)."""
    out = {"keypoints0": result["keypoints0"], "keypoints1": result["keypoints1"],
           "refined_keypoints1": result["refined_keypoints1"],
           "matches0": result["matches0"], "matching_scores0": result["matching_scores0"],
           "matches1": result["matches1"], "matching_scores1": result["matching_scores1"],
           "refined1": result["refined1"],
           "homography": result["homography"] if result["homography"] is not None else np.full((3, 3), np.nan),
           "inliers": result["inliers"], "num_inliers": np.int64(result["num_inliers"]),
           "verified": np.bool_(result["verified"]), "method": np.array(result["method"])}
    if result.get("reason"):
        out["reason"] = np.array(result["reason"])
    return out


def match_main(argv=None) -> int:
    """``python SuperGlue_architecture.py``: every listed pair matched (see the module docstring)."""
    parser = cli.parser(MATCH_HELP)
    parser.add_argument("--features", type=Path, default=config.FEATURES_DIR, help="folder of SuperPoint .npz")
    parser.add_argument("--pairs", type=Path, help="text file: two image (or .npz) names a line, relative "
                                                   "to --features")
    parser.add_argument("--all-pairs", action="store_true", help="match every pair of images in --features")
    parser.add_argument("--output", type=Path, default=config.MATCHES_DIR)
    parser.add_argument("--matcher", default="superglue",
                        help=f"a registered matcher ({', '.join(sorted(MATCHERS))}), or one of your own as "
                             f"{OWN_MATCHER} (its module registers it); not a cascade (ImageMatcher's default, "
                             "sift-first, extracts SIFT from the pixels, not from these feature files)")
    parser.add_argument("--checkpoint", type=Path, default=config.CHECKPOINT_DIR / "superglue.pt",
                        help="the matcher's checkpoint")
    parser.add_argument("--match-threshold", type=float, default=None, help="default: the checkpoint's")
    parser.add_argument("--no-refine", action="store_true",
                        help="keep image 1's detected keypoints (default: refine matches with the fine patches "
                             "when the features have them)")
    parser.add_argument("--no-correlate", action="store_true",
                        help="skip the correlation stage (default: Lucas-Kanade on the features' local contrast "
                             "when they carry it)")
    parser.add_argument("--min-inliers", type=int, default=config.MatchingConfig.min_inliers,
                        help="RANSAC inliers for a pair to count as verified")
    parser.add_argument("--overwrite", action="store_true")
    cli.add_runtime(parser)
    return cli.run(_match, parser.parse_args(argv))


def _pair_output(folder: Path, a: str, b: str) -> Path:
    def stem(n: str) -> str:
        return Path(n).with_suffix("").as_posix().replace("/", "_")
    return folder / f"{stem(a)}__{stem(b)}.npz"


def _match(args) -> int:
    from tqdm import tqdm

    if bool(args.pairs) == args.all_pairs:
        raise PipelineError("give either --pairs FILE or --all-pairs")
    if not args.features.is_dir():
        raise PipelineError(f"{args.features}: no such folder; run SuperPoint.py first or fix --features")
    if args.all_pairs:
        names = sorted(str(p.relative_to(args.features)) for p in args.features.rglob("*.npz"))
        pairs = list(itertools.combinations(names, 2))
    else:
        if not args.pairs.is_file():
            raise PipelineError(f"{args.pairs}: no such pairs file")
        pairs = read_pairs(args.pairs)
    matcher = build_matcher(args.matcher, args.checkpoint, args.device, match_threshold=args.match_threshold)
    pipeline = MatchingPipeline(None, matcher, refine=not args.no_refine, min_inliers=args.min_inliers,
                                correlate=not args.no_correlate)
    args.output.mkdir(parents=True, exist_ok=True)
    start, done, verified, failed = time.time(), 0, 0, []
    todo = [(a, b) for a, b in pairs if args.overwrite or not _pair_output(args.output, a, b).exists()]

    def match(pair: tuple[str, str]) -> dict:
        f0 = load_features(_features_path(args.features, pair[0]))
        f1 = load_features(_features_path(args.features, pair[1]))
        return pipeline.verify(pipeline.match_features(f0, f1))

    for (a, b), result in cli.each(tqdm(todo, desc="matching", unit="pair"), match, failed,
                                   name=lambda p: f"{p[0]} × {p[1]}"):
        write_npz(_pair_output(args.output, a, b), result_to_file(result))
        done += 1
        verified += bool(result["verified"])
    print(f"matched {done} of {len(pairs)} pairs in {time.time() - start:.1f} s, {verified} verified "
          f"(≥ {args.min_inliers} RANSAC inliers; the others are likely different places) → {args.output}"
          + (f"; {len(failed)} failed" if failed else ""))
    for line in failed:
        print(f"  failed: {line}", file=sys.stderr)
    return 1 if failed else 0
