"""Geometry and ground truth, pure functions: points through homographies, homography
sampling by difficulty, robust homography estimation and the verification rule, ground-truth
matches, the metrics (corner error, AUC) and nearest neighbours in descriptor space.

Coordinates are ``(x, y)`` with pixel centres at integer values (docs/conventions.md).
"""
from __future__ import annotations

import cv2
import numpy as np

import s2coreg.config as config


def warp_points(points: np.ndarray, H: np.ndarray) -> np.ndarray:
    """Apply homography ``H`` (3×3) to ``points`` (N×2, x y). Returns N×2 float64."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    homog = np.concatenate([points, np.ones((len(points), 1))], axis=1) @ np.asarray(H, np.float64).T
    with np.errstate(divide="ignore", invalid="ignore"):
        return homog[:, :2] / homog[:, 2:3]


def translation(tx: float, ty: float) -> np.ndarray:
    return np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]], dtype=np.float64)


def sample_homography(rng: np.random.Generator, size: tuple[int, int],
                      difficulty: str | config.HomographyDifficulty = "medium") -> np.ndarray:
    """Random homography about the centre of an image of ``size`` = (width, height).

    Composed of a projective tilt, rotation, log-uniform zoom and translation, each drawn
    from the ranges of ``difficulty`` (see ``config.DIFFICULTIES``). Maps image-0 pixels to
    image-1 pixels.
    """
    d = config.DIFFICULTIES[difficulty] if isinstance(difficulty, str) else difficulty
    w, h = size
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    half = max(w, h) / 2.0
    p = rng.uniform(-1, 1, size=2) * d.perspective / half
    P = np.array([[1, 0, 0], [0, 1, 0], [p[0], p[1], 1]], dtype=np.float64)
    a = np.deg2rad(rng.uniform(-d.max_angle, d.max_angle))
    s = np.exp(rng.uniform(np.log(d.scale[0]), np.log(d.scale[1])))
    RS = np.array([[s * np.cos(a), -s * np.sin(a), 0], [s * np.sin(a), s * np.cos(a), 0], [0, 0, 1]])
    t = rng.uniform(-1, 1, size=2) * d.translation * np.array([w, h])
    H = translation(cx + t[0], cy + t[1]) @ RS @ P @ translation(-cx, -cy)
    return H / H[2, 2]


def corner_error(H_est: np.ndarray | None, H_gt: np.ndarray, size: tuple[int, int]) -> float:
    """Mean distance (px) between the image-0 corners mapped by ``H_est`` and by ``H_gt``.

    ``size`` = (width, height) of image 0. ``inf`` when ``H_est`` is None or degenerate.
    """
    if H_est is None:
        return float("inf")
    w, h = size
    corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], dtype=np.float64)
    err = np.linalg.norm(warp_points(corners, H_est) - warp_points(corners, H_gt), axis=1).mean()
    return float(err) if np.isfinite(err) else float("inf")


def estimate_homography(mkpts0: np.ndarray, mkpts1: np.ndarray, threshold: float = 3.0,
                        seed: int = config.SEED):
    """Homography from matched points with OpenCV's USAC_MAGSAC (the same for every method).

    Returns ``(H, inliers)``; ``(None, all-False)`` with fewer than 4 matches or on failure.
    """
    inliers = np.zeros(len(mkpts0), dtype=bool)
    if len(mkpts0) < 4:
        return None, inliers
    cv2.setRNGSeed(seed)
    H, mask = cv2.findHomography(np.float64(mkpts0), np.float64(mkpts1), cv2.USAC_MAGSAC,
                                 threshold, maxIters=10000, confidence=0.9999)
    if H is None or not np.isfinite(H).all() or abs(np.linalg.det(H)) < 1e-8:
        return None, inliers
    return H, mask.ravel().astype(bool)


def is_verified(H, inliers: np.ndarray, min_inliers: int) -> bool:
    """Whether a homography from ``estimate_homography`` verifies the pair: found, with at
    least ``min_inliers`` inliers (fewer are chance agreements on snow, cloud or water)."""
    return H is not None and int(inliers.sum()) >= min_inliers


def pose_auc(errors, thresholds) -> list[float]:
    """Area under the recall-vs-error curve up to each threshold, normalised to 0..1.

    As SuperGlue / glue-factory report homography accuracy: errors sorted, recall at each,
    trapezoid integration from 0 to the threshold. Failures are ``inf``.
    """
    errors = np.sort(np.asarray(errors, dtype=np.float64))
    recall = (np.arange(len(errors)) + 1) / max(len(errors), 1)
    errors = np.concatenate([[0.0], errors])
    recall = np.concatenate([[0.0], recall])
    aucs = []
    for t in thresholds:
        last = np.searchsorted(errors, t)
        e = np.concatenate([errors[:last], [t]])
        r = np.concatenate([recall[:last], [recall[last - 1]]])
        aucs.append(float(np.trapezoid(r, x=e) / t))
    return aucs


def mutual_nearest_neighbours(desc0: np.ndarray, desc1: np.ndarray, min_similarity: float = -1.0) -> np.ndarray:
    """Mutual nearest neighbours of two sets of unit descriptors (N×D, M×D).

    Returns ``matches0`` (N): index into set 1, or -1 where the nearest neighbour is not
    mutual or its cosine similarity is below ``min_similarity``.
    """
    matches0 = np.full(len(desc0), -1, dtype=np.int64)
    if len(desc0) == 0 or len(desc1) == 0:
        return matches0
    sim = desc0 @ desc1.T
    nn01 = sim.argmax(1)
    nn10 = sim.argmax(0)
    mutual = (nn10[nn01] == np.arange(len(desc0))) & (sim[np.arange(len(desc0)), nn01] >= min_similarity)
    matches0[mutual] = nn01[mutual]
    return matches0


def ground_truth_matches(kpts0: np.ndarray, kpts1: np.ndarray, H: np.ndarray, positive: float = 3.0,
                         negative: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth assignment of two keypoint sets related by homography ``H`` (0 → 1).

    A pair is positive when the two are mutual nearest neighbours (after warping image 0's
    keypoint into image 1) within ``positive`` px. A keypoint without a positive is
    unmatched (-1, its match is the dustbin) when its nearest neighbour in the other image
    is farther than ``negative`` px, and ignored (-2) in between. Returns ``(matches0,
    matches1)`` as int arrays (N0), (N1).
    """
    m0 = np.full(len(kpts0), -1, np.int64)
    m1 = np.full(len(kpts1), -1, np.int64)
    if len(kpts0) == 0 or len(kpts1) == 0:
        return m0, m1
    w0 = warp_points(kpts0, H)
    w1 = warp_points(kpts1, np.linalg.inv(H))
    d = np.linalg.norm(w0[:, None] - kpts1[None], axis=-1)                  # in image 1
    d_back = np.linalg.norm(kpts0[:, None] - w1[None], axis=-1)             # in image 0
    dist = np.maximum(d, d_back)                                             # symmetric
    nn01, nn10 = dist.argmin(1), dist.argmin(0)
    mutual = nn10[nn01] == np.arange(len(kpts0))
    pos = mutual & (dist[np.arange(len(kpts0)), nn01] < positive)
    m0[pos] = nn01[pos]
    m1[nn01[pos]] = np.nonzero(pos)[0]
    ignore0 = (m0 < 0) & (dist.min(1) <= negative)
    ignore1 = (m1 < 0) & (dist.min(0) <= negative)
    m0[ignore0], m1[ignore1] = -2, -2
    return m0, m1
