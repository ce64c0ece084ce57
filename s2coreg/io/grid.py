"""Raster files read onto a grid: a ``Grid`` (affine transform, size, CRS), ``open_raster`` (a
local path or a URL, with bounded retries and one-line errors), ``read_to_grid`` (a window of the
grid from one file, windowed and decimated: JPEG 2000 resolution levels and overviews, another CRS
or off-grid pixels resampled in memory from only the pixels under the window), the no-data policy
(``nodata_value``). Files by path, nothing of products: ``products`` reads a product's bands
through these (``reference_grid``, ``render``). No torch here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import s2coreg.io.remote as remote
from s2coreg.utils import PipelineError

remote.configure_gdal()          # GDAL's settings for reading COGs over the network, in this process


@dataclass
class Grid:
    """An output pixel grid: affine transform (map units), size, CRS."""

    transform: object
    width: int
    height: int
    crs: object


def open_raster(path: str):
    """``rasterio.open(path)`` for a local path or a URL (through GDAL's virtual file systems, with
    bounded retries and a total time bound: ``remote``), with a corrupt, truncated or unreachable
    file as one line (``PipelineError``)."""
    import rasterio

    try:
        return remote.within_deadline(lambda: remote.with_retries(lambda: rasterio.open(remote.gdal_path(path)),
                                                                  path), path)
    except remote.DeadlineExceeded as exc:
        raise PipelineError(f"{path}: cannot read ({exc}; COREGISTER_OPEN_TIMEOUT sets the bound); check the URL "
                            "and the network") from None
    except rasterio.errors.RasterioIOError as exc:
        if remote.is_remote(path):
            why = remote.diagnose(path) or str(exc).splitlines()[0]
            raise PipelineError(f"{path}: cannot read ({why}) after {remote.OPEN_RETRIES} attempts; check the URL, "
                                "the network and credentials (AWS_*, GDAL_HTTP_*)") from exc
        plain = not str(path).startswith("/vsi")          # not a file inside a zip (GDAL's /vsizip/)
        if plain and not Path(path).exists():
            raise PipelineError(f"{path}: no such file; give an existing file") from exc
        if plain and not os.access(path, os.R_OK):
            raise PipelineError(f"{path}: cannot be read (permission denied); make it readable") from exc
        raise PipelineError(f"{path}: cannot open (not a raster GDAL reads): the file is corrupt or truncated, "
                            "download the product again") from exc


def pixel_read_error(path, exc: BaseException) -> PipelineError:
    """Why a raster's pixels could not be read, in one line: a local file's are corrupt or
    truncated; a URL's may be a server that stopped answering after the open (GDAL's timeout, its
    own retries) — said as such, not as a corrupt file."""
    if remote.is_remote(path):
        why = " ".join(str(exc).split())[:160] or type(exc).__name__
        return PipelineError(f"{path}: reading its pixels over the network failed ({why}); check the server and "
                             "the network, and run again")
    return PipelineError(f"{path}: cannot decode its pixels: the file is corrupt or truncated, download the product "
                         "again")


def nodata_value(src, policy: float | str | None = "file") -> float | None:
    """The no-data value of an open raster under ``policy`` (``Product.nodata``): ``"file"`` = its
    own tag (None when it has none), else the number given (None: no value is no-data)."""
    return src.nodata if policy == "file" else policy


def read_to_grid(path: str, grid: Grid, window_px: tuple[int, int, int, int], out_shape: tuple[int, int],
                 resampling_up: str = "bilinear", band: int | list[int] = 1, with_nodata: bool = False,
                 warp: bool = False, nodata: float | str | None = "file"):
    """Read one band (or a list of bands of the file: (k, rows, cols)) into a window of the
    reference grid at ``out_shape`` = (rows, cols).

    ``window_px`` = (col_off, row_off, width, height) in reference-grid pixels; a band in
    another CRS, or any band with ``warp`` (another date's pixels off the grid's), is resampled
    onto the grid in memory from only the source pixels under the window (``_warp_window``). The
    band is read only over that window, at the decimation the output needs: JPEG 2000 resolution
    levels / overviews make an overview read touch a fraction of the data (over HTTP, a fraction
    of the bytes). Finer bands are averaged down, coarser bands resampled up (``resampling_up``).

    With ``with_nodata``, returns ``(data, nodata)``: a pixel is no data where the band holds the
    no-data value (``nodata``: see ``nodata_value``), is not finite, or lies outside the file,
    judged without blending in neighbours — from the same read when it is pixel for pixel
    (full-resolution tiles), else from a second, nearest-neighbour read.
    """
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    shape = (len(band), *out_shape) if isinstance(band, list) else out_shape

    def read(src, win, resampling):
        try:
            return src.read(band, window=win, out_shape=shape, resampling=resampling, boundless=False)
        except rasterio.errors.RasterioIOError as exc:
            raise pixel_read_error(path, exc) from exc

    col, row, w, h = window_px
    with open_raster(path) as file:
        value = nodata_value(file, nodata)
        if warp or not (grid.crs is None or file.crs is None or file.crs == grid.crs):
            data, bad = _warp_window(file, grid, window_px, out_shape, band, value, resampling_up)
            return (data, bad) if with_nodata else data
        # the window's corners in the file's pixels (through map coordinates: a grid may be rotated,
        # and the file's pixels may be another size)
        to_src = ~file.transform * grid.transform
        c0, r0 = to_src * (col, row)
        c1, r1 = to_src * (col + w, row + h)
        win = Window(min(c0, c1), min(r0, r1), abs(c1 - c0), abs(r1 - r0))
        coarser = win.width / out_shape[1] > 1.01          # the output's pixels are larger: average
        resampling = Resampling.average if coarser else getattr(Resampling, resampling_up)
        data = read(file, win, resampling)
        if not with_nodata:
            return data
        pixel_for_pixel = (abs(win.width - out_shape[1]) < 1e-6 and abs(win.height - out_shape[0]) < 1e-6
                           and abs(win.col_off - round(win.col_off)) < 1e-6
                           and abs(win.row_off - round(win.row_off)) < 1e-6)
        nearest = data if pixel_for_pixel else read(file, win, Resampling.nearest)
    bad = ~np.isfinite(nearest) if np.issubdtype(nearest.dtype, np.floating) else np.zeros(nearest.shape, bool)
    if value is not None:
        bad |= nearest == value
    bad = bad.any(axis=0) if bad.ndim == 3 else bad
    return data, bad


def _warp_window(file, grid: Grid, window_px, out_shape, band, value, resampling_up: str = "bilinear"):
    """A window of ``grid`` read from a file on another grid (another CRS, or pixels off the grid's):
    only the source pixels under the window (a margin of 3) are read — from the file's overviews
    when the output is coarser (at about its resolution, then averaged) — and reprojected in
    memory. (A virtual warp reads far more: over HTTP, 3.5× the bytes of a window and most of the
    file for an overview.) No data: a pixel whose nearest source pixel is no data or outside the
    file. Returns (data in the file's dtype, no-data mask)."""
    from rasterio.transform import Affine, array_bounds
    from rasterio.warp import Resampling, reproject, transform_bounds
    from rasterio.windows import Window, from_bounds

    col, row, w, h = window_px
    bands = band if isinstance(band, list) else [band]
    dst_transform = grid.transform * Affine.translation(col, row) * Affine.scale(w / out_shape[1], h / out_shape[0])
    bounds = transform_bounds(grid.crs, file.crs, *array_bounds(out_shape[0], out_shape[1], dst_transform),
                              densify_pts=21)
    src_px = np.hypot(file.transform.a, file.transform.d)
    out_px = src_px * _pixel_ratio(file, grid, dst_transform, bounds)
    # source px per read px: decimated (from the overviews, then averaged) only where the output is
    # clearly coarser; near 1:1 (another UTM zone, Web Mercator) native pixels, interpolated
    factor = out_px / src_px if out_px / src_px >= 1.5 else 1.0
    margin = 3 * factor
    win = from_bounds(*bounds, transform=file.transform)
    win = Window(win.col_off - margin, win.row_off - margin, win.width + 2 * margin, win.height + 2 * margin)
    c0, r0 = max(0, int(np.floor(win.col_off))), max(0, int(np.floor(win.row_off)))      # whole source pixels:
    c1 = min(file.width, int(np.ceil(win.col_off + win.width)))                          # the data and its
    r1 = min(file.height, int(np.ceil(win.row_off + win.height)))                        # transform agree
    win = Window(c0, r0, c1 - c0, r1 - r0)
    if win.width <= 0 or win.height <= 0:                  # no overlap: all outside
        empty = np.zeros((len(bands), *out_shape), file.dtypes[0])
        return (empty if isinstance(band, list) else empty[0]), np.ones(out_shape, bool)
    shape = (max(1, round(win.height / factor)), max(1, round(win.width / factor)))
    coarser = factor > 1.0
    try:
        src = file.read(bands, window=win, out_shape=(len(bands), *shape),
                        resampling=Resampling.average if coarser else Resampling.nearest).astype(np.float64)
        masks = file.read_masks(bands[0], window=win, out_shape=shape, resampling=Resampling.nearest) == 0
    except Exception as exc:
        raise pixel_read_error(file.name, exc) from exc
    invalid = ~np.isfinite(src).all(axis=0) | masks
    if value is not None:
        invalid |= (src == value).any(axis=0)
    src[:, invalid] = np.nan
    src_transform = file.window_transform(win) * Affine.scale(win.width / shape[1], win.height / shape[0])
    common = dict(src_transform=src_transform, src_crs=file.crs, dst_transform=dst_transform, dst_crs=grid.crs)
    out = np.full((len(bands), *out_shape), np.nan)
    reproject(src, out, src_nodata=np.nan, dst_nodata=np.nan,
              resampling=Resampling.average if coarser else getattr(Resampling, resampling_up), **common)
    flag = np.full(out_shape, np.nan)
    reproject(invalid.astype(np.float64), flag, dst_nodata=np.nan, resampling=Resampling.nearest, **common)
    bad = ~(flag == 0) | ~np.isfinite(out).all(axis=0)     # no data, or outside the file
    dtype = np.dtype(file.dtypes[0])
    data = np.where(np.isfinite(out), out, value if value is not None else 0)
    if not np.issubdtype(dtype, np.floating):
        info = np.iinfo(dtype)
        data = np.clip(np.round(data), info.min, info.max)
    data = data.astype(dtype)
    return (data if isinstance(band, list) else data[0]), bad


def _pixel_ratio(file, grid: Grid, dst_transform, bounds) -> float:
    """The output's pixel size over the file's, through ground positions (any two CRSs)."""
    from rasterio.warp import transform as warp_points

    x0, y0 = (bounds[0] + bounds[2]) / 2, (bounds[1] + bounds[3]) / 2
    step = np.hypot(file.transform.a, file.transform.d) * 10
    xs, ys = warp_points(file.crs, grid.crs, [x0, x0 + step], [y0, y0])
    grid_units = np.hypot(xs[1] - xs[0], ys[1] - ys[0]) / 10          # one file pixel in grid units
    out_units = np.hypot(dst_transform.a, dst_transform.d)
    return float(out_units / max(grid_units, 1e-12))
