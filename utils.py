"""Shared helpers: safe file writing, image loading and normalisation, geometry, metrics.

Pure functions only: nothing here knows about networks or training. Coordinates are
``(x, y)`` with pixel centres at integer values (see ``config.py``).
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

import config

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".jp2"}
RASTER_SUFFIXES = {".tif", ".tiff", ".jp2"}


class PipelineError(Exception):
    """A problem with the user's input: printed as one line by the scripts, no traceback."""


# ----------------------------------------------------------------------------- files
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; rename it to ``path`` only on success.

    Readers never see a half-written file, and a failure leaves nothing behind.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".part{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if tmp.is_file():  # mkstemp makes files private (0600); give the usual permissions
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
        aux = tmp.with_name(tmp.name + ".aux.xml")  # GDAL may leave statistics beside a raster
        if aux.exists():
            aux.unlink()


def write_json(path: str | os.PathLike, data) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")


def write_npz(path: str | os.PathLike, arrays: dict) -> None:
    """Write arrays to an ``.npz``, atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted; masks are skipped."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.stem.endswith(("_mask", "_cloud", "_scl", "_nodata")))


# ----------------------------------------------------------------------------- images
@contextlib.contextmanager
def _reading(path: Path):
    """Read an image file inside: a missing or unreadable file becomes one clear line."""
    if not path.is_file():
        raise PipelineError(f"{path}: no such file; check the path")
    try:
        yield
    except PipelineError:
        raise
    except Exception as exc:  # corrupt or truncated file
        raise PipelineError(f"{path}: cannot read image ({exc}); re-export or re-download it") from exc


def load_image(path: str | os.PathLike, out_size: tuple[int, int] | None = None) -> np.ndarray:
    """Read an image file as an array ``(H, W)`` or ``(H, W, C)``, in its own dtype.

    JPEG/PNG go through Pillow; GeoTIFF/JP2 through rasterio (bands last). With ``out_size``
    (width, height) the image comes back at that size, area-averaged: rasters are read
    decimated (JPEG 2000 resolution levels, overviews), so a whole tile never sits in memory.
    """
    path = Path(path)
    with _reading(path):
        if path.suffix.lower() in RASTER_SUFFIXES:
            import rasterio
            from rasterio.enums import Resampling

            with rasterio.open(path) as src:
                shape = None if out_size is None else (src.count, out_size[1], out_size[0])
                data = src.read(out_shape=shape, resampling=Resampling.average)
            return data[0] if data.shape[0] == 1 else np.moveaxis(data, 0, -1)
        from PIL import Image

        with Image.open(path) as im:
            im.load()
            if im.mode in ("P", "LA", "RGBA", "CMYK", "YCbCr"):
                im = im.convert("RGB")
            array = np.asarray(im)
        return array if out_size is None else resize_to(array, *out_size)


def image_dimensions(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image file, from its header (no pixels decoded)."""
    path = Path(path)
    with _reading(path):
        if path.suffix.lower() in RASTER_SUFFIXES:
            import rasterio

            with rasterio.open(path) as src:
                return src.width, src.height
        from PIL import Image

        with Image.open(path) as im:
            return im.size


def to_gray(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` or ``(H, W, C)`` array as float32 grey ``(H, W)``.

    Three channels are taken as R, G, B (ITU-R 601 luma); any other count is averaged.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        return image.astype(np.float32)
    if image.ndim != 3:
        raise PipelineError(f"expected an (H, W) or (H, W, C) image, got shape {image.shape}")
    if image.shape[2] == 3:
        return image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return image.astype(np.float32).mean(axis=2)


def percentile_stretch(image: np.ndarray, low: float = 1.0, high: float = 99.0,
                       valid: np.ndarray | None = None) -> np.ndarray:
    """Per-image contrast stretch: the ``low``..``high`` percentiles map to 0..1 (clipped).

    ``valid`` (bool, same ``H, W``) excludes nodata from the percentiles. Channels are
    stretched together. A uniform image gives zeros. Returns float32.
    """
    image = np.asarray(image, dtype=np.float32)
    values = image[valid] if valid is not None else image
    if values.size == 0:
        return np.zeros_like(image)
    lo, hi = np.percentile(values, [low, high])
    if hi - lo < 1e-6:
        return np.zeros_like(image)
    return np.clip((image - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0).astype(np.float32)


def local_contrast(image: np.ndarray, valid: np.ndarray | None = None,
                   sigma: float = config.MatchingConfig.correlation_sigma) -> np.ndarray:
    """Grey image with its local mean removed and divided by its local spread (Gaussian windows
    of ``sigma`` px), as uint8 (128 = the local mean, 40 levels per local standard deviation).

    Invariant to gain and offset that vary slowly over the image — between two dates, haze,
    illumination, the season's brightness — which is what correlation across dates needs.
    Nodata (``valid`` False) is set to the local mean (no texture) first.
    """
    grey = to_gray(image)
    if valid is not None and not valid.all():
        grey = np.where(valid, grey, np.float32(grey[valid].mean()) if valid.any() else np.float32(0))
    mean = cv2.GaussianBlur(grey, (0, 0), sigma)
    detail = grey - mean
    spread = np.sqrt(cv2.GaussianBlur(detail * detail, (0, 0), sigma))
    scaled = detail / (spread + 1e-3 * max(float(spread.max()), 1e-6)) * 40 + 128
    return np.clip(scaled, 0, 255).astype(np.uint8)


def normalize_for_network(image: np.ndarray, channels: int = 1, valid: np.ndarray | None = None) -> np.ndarray:
    """Any image array → float32 ``(C, H, W)`` in 0..1 with a 1-99 percentile stretch.

    The same input normalisation is used for training, extraction and the baselines, so
    dark or hazy chips (e.g. OMBRIA's false-colour composites) get full contrast. ``valid``
    (H, W) bool keeps nodata out of the percentiles, as in training and evaluation.
    """
    image = np.asarray(image)
    if channels == 1:
        return percentile_stretch(to_gray(image), valid=valid)[None]
    if image.ndim != 3 or image.shape[2] < channels:
        raise PipelineError(f"the model takes {channels} bands but the image has shape {image.shape}")
    return np.moveaxis(percentile_stretch(image[..., :channels], valid=valid), -1, 0)


def load_valid_mask(image_path: str | os.PathLike, out_size: tuple[int, int] | None = None) -> np.ndarray | None:
    """Where an image file holds data (True), by the one no-data policy of the project: the mask
    written beside a ``data_preprocess.py`` image (``<stem>_nodata.png``, 255 = no data), else a
    GeoTIFF / JP2's own no-data value (every band at it = no data; a raster without a no-data
    tag has none); ``None`` when there is no no-data. ``out_size`` (width, height) as in
    ``load_image`` (a decimated read)."""
    image_path = Path(image_path)
    mask_path = image_path.with_name(image_path.stem + "_nodata.png")
    if mask_path.exists():
        valid = load_image(mask_path) == 0
        return valid if out_size is None else resize_to(valid.astype(np.uint8), *out_size, nearest=True) > 0
    if image_path.suffix.lower() not in RASTER_SUFFIXES or not image_path.is_file():
        return None
    import rasterio
    from rasterio.enums import Resampling

    with _reading(image_path), rasterio.open(image_path) as src:
        if src.nodata is None:
            return None
        shape = None if out_size is None else (out_size[1], out_size[0])
        masks = [src.read_masks(k, out_shape=shape, resampling=Resampling.nearest) for k in range(1, src.count + 1)]
    return np.any(np.stack(masks) > 0, axis=0)


def resize_to(image: np.ndarray, width: int, height: int, nearest: bool = False) -> np.ndarray:
    """``image`` (H, W) or (H, W, C) resized to ``width`` × ``height`` in its own dtype (area
    averaging, or nearest neighbour for masks); bool masks stay bool."""
    image = np.asarray(image)
    if image.shape[1] == width and image.shape[0] == height:
        return image
    if image.dtype == bool:
        return resize_to(image.astype(np.uint8), width, height, nearest=True) > 0
    if image.dtype not in (np.uint8, np.uint16, np.int16, np.float32, np.float64):
        image = image.astype(np.float32)
    method = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
    if image.ndim == 3 and image.shape[2] > 4:   # OpenCV resizes up to 4 channels at once
        return np.stack([cv2.resize(image[..., c], (width, height), interpolation=method)
                         for c in range(image.shape[2])], -1)
    out = cv2.resize(image, (width, height), interpolation=method)
    return out[..., None] if image.ndim == 3 and out.ndim == 2 else out


def set_threads(threads: int | None = None) -> int:
    """Set torch's CPU threads: ``threads``, or every core this process may use when ``None``.

    When several workers share a machine, give each ``cores // workers`` (1 per worker on 2
    cores): more threads than cores make every thread wait for the others. Returns the count.
    """
    import torch

    if not threads:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def to_uint8(image01: np.ndarray) -> np.ndarray:
    """0..1 float image → uint8."""
    return np.clip(np.round(np.asarray(image01) * 255.0), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- geometry
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


def fourier_shift(image: np.ndarray, dx: float, dy: float, pad: int = 32) -> np.ndarray:
    """``image`` (H, W) or (H, W, C) with its content moved by (dx, dy) px (x right, y down: what
    lay at p lies at p + d), by a band-limited shift — a phase ramp in the Fourier domain of the
    reflect-padded image — on the same pixel grid, as a real sub-pixel misregistration looks.
    Exact for band-limited content; unlike a cubic or Lanczos warp it adds no bias (OpenCV's cubic
    shift biases a sub-pixel truth by 0.02–0.04 px). Returns float64."""
    a = np.asarray(image, np.float64)
    squeeze = a.ndim == 2
    a = a[..., None] if squeeze else a
    h, w = a.shape[:2]
    p = np.pad(a, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    ky = np.fft.fftfreq(p.shape[0])[:, None, None]
    kx = np.fft.fftfreq(p.shape[1])[None, :, None]
    ramp = np.exp(-2j * np.pi * (kx * dx + ky * dy))
    out = np.real(np.fft.ifft2(np.fft.fft2(p, axes=(0, 1)) * ramp, axes=(0, 1)))[pad:pad + h, pad:pad + w]
    return out[..., 0] if squeeze else out


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


# ----------------------------------------------------------------------------- metrics
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
