"""Geo helpers shared by preprocessing, inference and co-registration.

Reading an image's georeference, pixel ↔ map coordinates, a metric CRS for a shift, the
statistics of a shift between two dates, and tie points as GeoJSON / CSV a GIS opens.

Conventions: pixel coordinates are ``(x, y)`` with pixel *centres* at integers (``config.py``);
a transform is a rasterio ``Affine`` of the pixel *corners*, so a pixel centre ``(x, y)`` lies at
``transform * (x + 0.5, y + 0.5)``. A shift is the displacement of image 1's content relative to
image 0, in metres, x east and y north: a feature at map point P in image 0 is found at
P + (dx, dy) in image 1.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from s2coreg.io.imaging import RASTER_SUFFIXES
from s2coreg.utils import PipelineError, atomic_path, write_json

MAD_TO_SIGMA = 1.4826   # median absolute deviation → standard deviation of a normal distribution


@dataclass
class Georeference:
    """Where an image's pixel grid lies: an affine ``transform`` (map units per pixel corner)
    and its ``crs`` (rasterio objects)."""

    transform: object
    crs: object

    def scaled(self, sx: float, sy: float) -> "Georeference":
        """The georeference of the same image resampled by ``sx``, ``sy`` (new pixels per old)."""
        from rasterio.transform import Affine

        return Georeference(self.transform * Affine.scale(1 / sx, 1 / sy), self.crs)


def window_transform(transform, window_px, out_shape):
    """The affine of an output image showing ``window_px`` = (col, row, width, height) of a grid
    with ``transform`` at ``out_shape`` = (rows, cols): the window's origin, pixels scaled."""
    from rasterio.transform import Affine

    col, row, w, h = window_px
    return transform @ Affine.translation(col, row) @ Affine.scale(w / out_shape[1], h / out_shape[0])


def sidecar_georeference(transform, crs) -> dict:
    """The georeference fields of a ``data_preprocess.py`` sidecar ``.json`` (what
    ``read_georeference`` reads back): ``crs`` and the six ``transform`` coefficients."""
    return {"crs": crs.to_string() if crs else None, "transform": list(transform)[:6]}


def read_georeference(path: str | Path) -> Georeference | None:
    """The georeference of a raster file or of a ``data_preprocess.py`` sidecar ``.json``; None."""
    path = Path(path)
    if path.suffix.lower() in RASTER_SUFFIXES:
        import rasterio

        try:
            with rasterio.open(path) as src:
                if src.crs is not None and not src.transform.is_identity:
                    return Georeference(src.transform, src.crs)
        except rasterio.errors.RasterioError as exc:
            raise PipelineError(f"{path}: cannot read its georeference ({exc}); re-export it") from exc
    sidecar = path.with_suffix(".json")
    if sidecar.exists():
        try:
            meta = json.loads(sidecar.read_text())
        except ValueError as exc:
            raise PipelineError(f"{sidecar}: not valid JSON ({exc}); re-run data_preprocess.py") from exc
        if meta.get("crs") and meta.get("transform"):
            from rasterio.crs import CRS
            from rasterio.transform import Affine

            return Georeference(Affine(*meta["transform"][:6]), CRS.from_user_input(meta["crs"]))
    return None


def pixel_to_map(points: np.ndarray, transform) -> np.ndarray:
    """Pixel centres (N, 2) x y → map coordinates (N, 2) through an affine ``transform``."""
    p = np.asarray(points, np.float64).reshape(-1, 2) + 0.5
    a, b, c, d, e, f = transform[:6]
    return np.stack([a * p[:, 0] + b * p[:, 1] + c, d * p[:, 0] + e * p[:, 1] + f], axis=-1)


def map_to_pixel(xy: np.ndarray, transform) -> np.ndarray:
    """Map coordinates (N, 2) → pixel centres (N, 2) x y; the inverse of ``pixel_to_map``."""
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    col, row = ~transform * (xy[:, 0], xy[:, 1])
    return np.stack([np.asarray(col) - 0.5, np.asarray(row) - 0.5], axis=-1)


def reproject_points(xy: np.ndarray, src_crs, dst_crs) -> np.ndarray:
    """Map coordinates (N, 2) from one CRS to another (a no-op for equal CRSs)."""
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    if len(xy) == 0 or src_crs == dst_crs:
        return xy
    from rasterio.warp import transform as warp

    x, y = warp(src_crs, dst_crs, xy[:, 0], xy[:, 1])
    return np.stack([x, y], -1)


def metric_crs(crs, xy: np.ndarray):
    """A CRS in ground metres for points ``xy`` of ``crs``: itself when it is projected in metres
    with less than 2 % scale distortion there (UTM, national grids), else the local UTM zone (a
    geographic CRS; Web Mercator, whose "metres" are 1/cos(latitude) ground metres)."""
    from rasterio.crs import CRS

    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    if crs.is_projected and _scale_at(crs, xy) < 1.02:
        return crs
    lonlat = reproject_points(xy, crs, "EPSG:4326")
    lon, lat = np.median(lonlat[:, 0]), np.median(lonlat[:, 1])
    zone = int((lon + 180) // 6) % 60 + 1
    return CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)


def _scale_at(crs, xy: np.ndarray) -> float:
    """How far a projected CRS's units stray from ground metres at ``xy`` (1 = none): the ratio of
    a 100-unit east step and its length on the ground (haversine on the mean Earth radius: good to
    0.5 %, enough to tell UTM from Web Mercator)."""
    p = np.median(xy, axis=0, keepdims=True)
    (lon0, lat0), (lon1, lat1) = np.radians(reproject_points(np.vstack([p, p + [100.0, 0.0]]), crs, "EPSG:4326"))
    a = np.sin((lat1 - lat0) / 2) ** 2 + np.cos(lat0) * np.cos(lat1) * np.sin((lon1 - lon0) / 2) ** 2
    ground = 2 * 6_371_008.8 * np.arcsin(np.sqrt(a))
    return float(max(100.0 / max(ground, 1e-9), ground / 100.0))


def displacements_in_metres(points0: np.ndarray, points1: np.ndarray, crs) -> tuple[np.ndarray, object]:
    """Displacements ``points1 − points0`` (map coordinates (N, 2) in ``crs``) in metres, x east and
    y north, in the metric CRS of ``metric_crs``; and that CRS."""
    points0 = np.asarray(points0, np.float64).reshape(-1, 2)
    metric = metric_crs(crs, points0)
    return reproject_points(points1, crs, metric) - reproject_points(points0, crs, metric), metric


def shift_statistics(points0: np.ndarray, points1: np.ndarray, crs):
    """The shift between two dates from matched map points (N, 2) in ``crs`` as a
    ``results.ShiftEstimate``; None without points.

    ``dx``, ``dy``: the median displacement vector in metres (x east, y north), robust to a
    minority of wrong matches. ``sigma_x``, ``sigma_y``: robust spread of one match's
    displacement (1.4826 × MAD); ``r68``, ``r95``: radii holding 68 % / 95 % of the
    displacements around the median; ``se``: standard error of the median vector
    (1.2533 × sigma / √n), what the shift itself is uncertain by when the matches are independent;
    ``sigma_m`` the same per axis (the RMS of the two: ``se`` / √2), as a co-registration gives it.
    """
    if len(points0) == 0:
        return None
    d, metric = displacements_in_metres(points0, points1, crs)
    median = np.median(d, axis=0)
    residual = d - median
    sigma = MAD_TO_SIGMA * np.median(np.abs(residual), axis=0)
    radius = np.linalg.norm(residual, axis=1)
    n = len(d)
    from s2coreg.results import ShiftEstimate

    se = float(1.2533 * np.hypot(*sigma) / np.sqrt(n))                 # of the vector
    sigma_m = float(1.2533 * np.sqrt(np.mean(sigma ** 2)) / np.sqrt(n))  # per axis, as a co-registration's
    return ShiftEstimate(dx=float(median[0]), dy=float(median[1]), sigma_m=sigma_m, metric_crs=metric.to_string(),
                         length=float(np.hypot(*median)), sigma_x=float(sigma[0]), sigma_y=float(sigma[1]),
                         r68=float(np.percentile(radius, 68)), r95=float(np.percentile(radius, 95)), se=se,
                         points=int(n))


def georeference_matches(mkpts0: np.ndarray, mkpts1: np.ndarray, geo0: Georeference | None,
                         geo1: Georeference | None, inliers: np.ndarray) -> dict:
    """Matched pixels of two georeferenced images in image 0's CRS, and the shift between the
    dates from the ``inliers``: ``crs``, ``map_points0/1`` (N, 2), ``shift_m``."""
    if geo0 is None or geo1 is None:
        return {"crs": None}
    map0 = pixel_to_map(mkpts0, geo0.transform)
    map1 = reproject_points(pixel_to_map(mkpts1, geo1.transform), geo1.crs, geo0.crs)
    inliers = np.asarray(inliers, bool)
    return {"crs": geo0.crs.to_string(), "map_points0": map0, "map_points1": map1,
            "shift_m": shift_statistics(map0[inliers], map1[inliers], geo0.crs)}


def write_matches(result: dict, folder: str | Path, stem: str = "matches") -> list[Path]:
    """GeoJSON (WGS84 lon/lat, RFC 7946; a point at image 0's position per match) and CSV of a
    georeferenced match result: pixel and map coordinates of both images, confidence, inlier."""
    if not result.get("crs"):
        return []
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    m0, m1 = result["map_points0"], result["map_points1"]
    ll0 = reproject_points(m0, result["crs"], "EPSG:4326")
    ll1 = reproject_points(m1, result["crs"], "EPSG:4326")
    rows = []
    for i in range(len(m0)):
        rows.append({"x0": float(result["mkpts0"][i, 0]), "y0": float(result["mkpts0"][i, 1]),
                     "x1": float(result["mkpts1"][i, 0]), "y1": float(result["mkpts1"][i, 1]),
                     "map_x0": float(m0[i, 0]), "map_y0": float(m0[i, 1]),
                     "map_x1": float(m1[i, 0]), "map_y1": float(m1[i, 1]),
                     "lon0": float(ll0[i, 0]), "lat0": float(ll0[i, 1]),
                     "lon1": float(ll1[i, 0]), "lat1": float(ll1[i, 1]),
                     "confidence": float(result["mconf"][i]), "inlier": bool(result["inliers"][i])})
    geojson = {"type": "FeatureCollection", "source_crs": result["crs"], "shift_m": result.get("shift_m"),
               "features": [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [r["lon0"], r["lat0"]]},
                             "properties": r} for r in rows]}
    paths = [folder / f"{stem}.geojson", folder / f"{stem}.csv"]
    write_json(paths[0], geojson)
    with atomic_path(paths[1]) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["x0", "y0", "x1", "y1"])
            writer.writeheader()
            writer.writerows(rows)
    return paths
