"""Images: reading (any size, decimated where it is large), valid masks, and the normalisation
every method shares (percentile stretch, local contrast, the network's input); the band-limited
sub-pixel shift the benchmarks and tests move content with, and its inverse: the dense,
bias-free translation estimate that refines each window of a co-registration.

Pure functions: nothing here knows about networks or training. Coordinates are ``(x, y)`` with
pixel centres at integer values (docs/conventions.md).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

import s2coreg.config as config
from s2coreg.utils import PipelineError


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".jp2"}


RASTER_SUFFIXES = {".tif", ".tiff", ".jp2"}


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted; masks are skipped."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.stem.endswith(("_mask", "_cloud", "_scl", "_nodata")))


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


def to_uint8(image01: np.ndarray) -> np.ndarray:
    """0..1 float image → uint8."""
    return np.clip(np.round(np.asarray(image01) * 255.0), 0, 255).astype(np.uint8)


def fill_from_neighbours(image: np.ndarray, invalid: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """``image`` (H, W) with its ``invalid`` pixels set to the Gaussian-weighted (``sigma`` px) mean
    of the valid pixels around them — normalised convolution: local (each pixel depends only on
    pixels within ~4σ) and within the data's range, unlike OpenCV's inpainting, which overshot on
    float images. Returns (the filled image as float32, where a valid neighbour was within reach)."""
    weight = (~invalid).astype(np.float32)
    values = np.where(invalid, 0.0, image).astype(np.float32)
    den = cv2.GaussianBlur(weight, (0, 0), sigma)
    num = cv2.GaussianBlur(values * weight, (0, 0), sigma)
    return np.where(invalid, num / np.maximum(den, 1e-6), values), den > 1e-3


@dataclass
class BorderFill:
    """A constant value filling the raster from its edge inwards: fill that a file does not
    declare as no-data (``border_fill``)."""

    value: float
    fraction: float                   # share of the raster it covers
    declared: float | None = None     # the no-data value the file declares instead (one that does not fill it)


def fill_candidates(dtype) -> list[float]:
    """The values a producer fills outside the data with, for rasters of ``dtype``: 0, the dtype's
    extremes, and the usual sentinels (NaN and ±inf are no-data to every reader already)."""
    dtype = np.dtype(dtype)
    values = [0.0, -9999.0, -32768.0]
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        values = [0.0, float(info.max)] + ([float(info.min), -9999.0] if info.min < 0 else [])
    return values


def _from_edge(mask: np.ndarray) -> np.ndarray:
    """The parts of ``mask`` (rows, cols) connected (8-neighbours) to the raster's edge."""
    _, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return np.isin(labels, edge[edge > 0])


def edge_fraction(bands: np.ndarray, value: float) -> float:
    """The share of ``bands`` ((C, rows, cols) or (rows, cols)) that holds ``value`` in every band
    in regions connected to the raster's edge (what a fill looks like; scattered saturated
    pixels of the same value are not counted)."""
    data = bands[None] if bands.ndim == 2 else bands
    same = (data == value).all(axis=0)
    return float(_from_edge(same).mean()) if same.any() else 0.0


def border_fill(bands: np.ndarray, min_fraction: float = config.FILL_MIN_FRACTION,
                contrast: float = config.FILL_MIN_CONTRAST) -> BorderFill | None:
    """The fill of ``bands`` ((C, rows, cols) or (rows, cols), read with nearest-neighbour
    decimation): a value of ``fill_candidates`` that every band holds exactly over regions
    connected to the raster's edge, covering at least ``min_fraction`` of it, and that stands
    apart from the data beside it (their median at least ``contrast`` of the data's 1-99 %
    range away). The last rule tells fill from content at the dtype's limits: saturated snow
    or clipped shadow meets data of nearly its own value, a glacier's outline fill of 0 meets ice.
    None where there is none."""
    data = bands[None] if bands.ndim == 2 else bands
    if data.size == 0 or min(data.shape[1:]) < 3:
        return None
    found = None
    for value in fill_candidates(data.dtype):
        same = (data == value).all(axis=0)
        if same.mean() < min_fraction:
            continue
        fill = _from_edge(same)
        fraction = float(fill.mean())
        if fraction < min_fraction or fill.all():
            continue
        rest = ~same & np.isfinite(data).all(axis=0)
        if not rest.any():
            continue
        beside = cv2.dilate(fill.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & rest
        level = data.mean(axis=0)
        lo, hi = np.percentile(level[rest], [1, 99])
        if hi <= lo or not beside.any() or abs(np.median(level[beside]) - value) < contrast * (hi - lo):
            continue
        if found is None or fraction > found.fraction:
            found = BorderFill(value, fraction)
    return found


def sinc_shift(image: np.ndarray, dx: float, dy: float, radius: int = 8) -> np.ndarray:
    """``image`` (…, H, W) with its content moved by (dx, dy) px (what lay at p lies at p + d) by a
    Lanczos-windowed sinc of ``radius`` lobes, separably, the edges reflected: a close,
    *local* approximation of the band-limited shift (``fourier_shift``) — each output pixel depends
    only on input pixels within ``radius + |d|``, so a tiled image (Dask chunks with that overlap)
    gives the same result as the whole. Returns float64."""
    out = np.asarray(image, np.float64)
    for axis, d in ((-1, dx), (-2, dy)):
        whole = int(np.floor(d))
        frac = d - whole
        taps = np.arange(-radius + 1, radius + 1)              # out[x] = Σ_k in[x - whole - k] · w(k - frac)
        w = np.sinc(taps - frac) * np.sinc((taps - frac) / radius)
        w /= w.sum()
        pad = radius + abs(whole) + 1
        widths = [(0, 0)] * out.ndim
        widths[axis] = (pad, pad)
        padded = np.pad(out, widths, mode="reflect")
        n = out.shape[axis]
        acc = np.zeros_like(out)
        for k, wk in zip(taps, w):
            start = pad - whole - k
            acc += wk * np.take(padded, np.arange(start, start + n), axis=axis)
        out = acc
    return out


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


@dataclass
class DenseFit:
    """A translation measured from every valid pixel of two images (``dense_translation``)."""

    shift: np.ndarray           # (2,) px: ``moving``'s content lies displaced by this in ``fixed``
    se: np.ndarray              # (2,) px, its standard error per axis (from the fit's residuals)
    gain: float                 # fixed ≈ gain · moving(x − shift) + offset; negative: inverted contrast
    correlation: float          # weighted correlation of the two at the optimum (sign of the gain)
    iterations: int
    converged: bool             # the last Newton step moved it less than the tolerance
    pixels: int                 # pixels with weight (inside both images' valid data, off their edges)
    at: np.ndarray              # (2,) px (x, y): where the shift applies — the centroid of the pixels
                                # weighted by what they told the fit (weight × gradient²); where the
                                # displacement varies (a rotation), the fitted shift is the one there


def _smooth_weight(valid: np.ndarray, ramp: float) -> np.ndarray:
    """Weights rising from 0 at the edge of ``valid`` (and of the array) to 1 at ``ramp`` px
    inside it, by a raised cosine: edges (and the reflected content beyond them) count little."""
    inside = np.pad(valid.astype(np.uint8), 1)
    dist = cv2.distanceTransform(inside, cv2.DIST_L2, 5)[1:-1, 1:-1]
    return 0.5 - 0.5 * np.cos(np.pi * np.clip(dist / ramp, 0.0, 1.0))


def dense_translation(moving: np.ndarray, fixed: np.ndarray, valid_moving: np.ndarray | None = None,
                      valid_fixed: np.ndarray | None = None, start=(0.0, 0.0), max_iterations: int = 20,
                      tolerance: float = 1e-3, ramp: float = 16.0, tukey: float = 4.685,
                      smooth: float = 1.0, pad: int = 32) -> DenseFit | None:
    """The translation that best lays ``moving`` over ``fixed`` (two (H, W) images on the same
    grid), from all their valid pixels: ``fixed(x) ≈ gain · moving(x − shift) + offset``.

    ``moving`` is shifted band-limitedly (a phase ramp on its reflect-padded spectrum, as
    ``fourier_shift``), so the estimate carries no interpolation bias; gain and offset absorb the
    dates' radiometry (a negative gain: contrast inverted, as where land turned to water); each
    pixel is weighted by a Tukey biweight of its residual (changed content counts little) and by
    its distance from either image's edge or nodata (``ramp`` px). Newton's method on the robust
    cost from ``start`` (px), steps at most 0.5 px, until a step is below ``tolerance``.

    Both images are first blurred alike (Gaussian, ``smooth`` px): what a band-limited shift
    assumes. Sentinel-2's 10 m bands are aliased, and a local-contrast image more so; unblurred,
    two sub-pixel moves of the same dates gave optima 0.1–0.25 px apart on Lake Bracciano, blurred
    by 1 px 0.001–0.003 px (the blur, the same on both, moves no optimum).

    Because the cost of a content moved by δ is the same cost moved by δ, the optimum follows a
    shift of the content exactly (up to the edges) — what a sub-pixel co-registration needs.
    Returns None where the images give no curvature (flat, or no valid pixel in common)."""
    a = np.asarray(moving, np.float64)
    b = np.asarray(fixed, np.float64)
    if smooth > 0:
        a, b = cv2.GaussianBlur(a, (0, 0), smooth), cv2.GaussianBlur(b, (0, 0), smooth)
    h, w = b.shape
    spectrum = np.fft.rfft2(np.pad(a, pad, mode="reflect"))
    ky = 2j * np.pi * np.fft.fftfreq(h + 2 * pad)[:, None]
    kx = 2j * np.pi * np.fft.rfftfreq(w + 2 * pad)[None, :]
    shape = (h + 2 * pad, w + 2 * pad)
    valid_b = np.ones((h, w), bool) if valid_fixed is None else np.asarray(valid_fixed, bool)
    valid_a = None if valid_moving is None else np.asarray(valid_moving, bool)
    weights: dict[tuple[int, int], np.ndarray] = {}      # by the moving mask's whole-pixel offset
    d = np.asarray(start, np.float64).copy()
    gain, offset = None, 0.0
    converged, iteration = False, 0
    for iteration in range(1, max_iterations + 1):
        moved = spectrum * np.exp(-(kx * d[0] + ky * d[1]))
        def part(k):
            return np.fft.irfft2(moved * k, shape)[pad:pad + h, pad:pad + w]
        A, Ax, Ay = part(1.0), part(kx), part(ky)
        ox, oy = (int(v) for v in np.round(d)) if valid_a is not None else (0, 0)
        if (ox, oy) not in weights:
            both = valid_b.copy()
            if valid_a is not None:
                src = valid_a[max(0, -oy):h - max(0, oy), max(0, -ox):w - max(0, ox)]
                shifted = np.zeros_like(both)
                shifted[max(0, oy):max(0, oy) + src.shape[0], max(0, ox):max(0, ox) + src.shape[1]] = src
                both &= shifted
            weights[(ox, oy)] = _smooth_weight(both, ramp)
        weight = weights[(ox, oy)]
        sel = weight > 0
        if sel.sum() < 64:
            return None
        As, bs, ws = A[sel], b[sel], weight[sel]
        if gain is None:                 # the radiometry first, by weighted least squares
            X = np.stack([As, np.ones_like(As)], -1) * np.sqrt(ws)[:, None]
            gain, offset = np.linalg.lstsq(X, bs * np.sqrt(ws), rcond=None)[0]
        r = bs - (gain * As + offset)
        scale = 1.4826 * np.median(np.abs(r - np.median(r))) + 1e-9
        u = r / (tukey * scale)
        tw = np.where(np.abs(u) < 1, (1 - u * u) ** 2, 0.0) * ws
        J = np.stack([-gain * Ax[sel], -gain * Ay[sel], As, np.ones_like(As)], -1)
        H = J.T @ (J * tw[:, None])
        g = J.T @ (tw * r)
        # Newton where the cost's own curvature is positive: Gauss-Newton alone crawls (its steps
        # shrink by the correlation) when the dates correlate weakly
        Axx, Axy, Ayy = part(kx * kx)[sel], part(kx * ky)[sel], part(ky * ky)[sel]
        second = gain * np.array([[np.sum(tw * r * Axx), np.sum(tw * r * Axy)],
                                  [np.sum(tw * r * Axy), np.sum(tw * r * Ayy)]])
        Hn = H.copy()
        Hn[:2, :2] -= second
        try:
            if np.linalg.eigvalsh(Hn[:2, :2]).min() > 0.05 * np.linalg.eigvalsh(H[:2, :2]).min():
                H = Hn
            p = np.linalg.solve(H, g)
        except np.linalg.LinAlgError:
            return None
        if not np.isfinite(p).all() or np.linalg.eigvalsh(H[:2, :2]).min() <= 0:
            return None
        step = np.clip(p[:2], -0.5, 0.5)
        d = d + step
        gain, offset = gain + p[2], offset + p[3]
        if np.hypot(*step) < tolerance:
            converged = True
            break
    # the standard error by a block sandwich: residuals of neighbouring pixels are correlated (both
    # images blurred, their local contrast taken over a few px), so the score's variance is summed
    # over blocks of ``block`` px, not pixel by pixel
    residual = r - J @ p
    block = 8
    z = np.zeros((h, w, J.shape[1]))
    z[sel] = (tw * residual)[:, None] * J
    hb, wb = -(-h // block) * block, -(-w // block) * block
    z = np.pad(z, ((0, hb - h), (0, wb - w), (0, 0))).reshape(hb // block, block, wb // block, block, -1).sum((1, 3))
    z = z.reshape(-1, J.shape[1])
    Hinv = np.linalg.inv(H)
    cov = Hinv @ (z.T @ z) @ Hinv
    am, bm = np.average(As, weights=ws), np.average(bs, weights=ws)
    corr = float(np.sum(ws * (As - am) * (bs - bm)) / np.sqrt(np.sum(ws * (As - am) ** 2) * np.sum(ws * (bs - bm) ** 2) + 1e-12))
    info = tw * gain ** 2 * (Ax[sel] ** 2 + Ay[sel] ** 2)
    ys, xs = np.nonzero(sel)
    at = np.array([np.sum(info * xs), np.sum(info * ys)]) / max(float(info.sum()), 1e-12)
    return DenseFit(d, np.sqrt(np.maximum(np.diag(cov)[:2], 0)), float(gain), corr, iteration, converged,
                    int(sel.sum()), at)
