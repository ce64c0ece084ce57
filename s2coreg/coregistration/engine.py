"""The co-registration engine: what a pair and a stack of dates share. A pair is a stack of two.

``coregister.py A B`` (a pair) and ``coregister.py --stack`` (``s2coreg/coregistration/stack.py``, on Dask) run the same
functions, in this order:

1. ``open_date``: a date's product (``.SAFE``, zip, STAC Item, band files, a folder of band files,
   a multi-band raster) and the bands it is read with (``date_bands``).
2. ``locate_date``: the date's whole-pixel **coarse offset** against the reference, from both
   products' decimated overviews matched through the one matching path (``s2coreg/matching/pipeline.py``), plus
   the fraction by which its own pixels sit off the grid (``grid_fraction``: such a date is read
   pixel for pixel, without resampling), and the extent of its data on the reference grid.
   Offsets of hundreds of pixels are fine: each date is read on the reference grid moved by its
   own offset (``date_grid``).
3. ``plan_windows``: windows on the reference grid, inside the part that every date's raster
   covers after its offset (a window never reads past a date's data).
4. ``extract_date``: every window of a date read at native resolution (its no-data, cloud and
   scene-class masks applied, specks of no data inpainted), its features extracted once
   (``extract_window``). A stack extracts every window of every date (each is matched in several
   pairs). A pair instead reads its windows best first (``measure_in_rounds``): ranked on the
   overviews step 2 read (``window_prospects``: valid on both, keypoints, the coarse inliers),
   in rounds over blocks of the overlap (``window_order``), each window read, extracted and
   matched (step 5's ``measure_window``) until the verified ones bound the pair as well as more
   would (``enough_windows``); windows the overviews show invalid, and those after the stop, are
   not read. ``--threads`` windows run side by side, each on one torch thread.
5. ``measure_pair``: two dates matched window by window. A window's displacement starts from the
   **learned estimate** — the median of its USAC_MAGSAC inliers' displacements after the fine head
   and the correlation stage — and is then refined by a dense fit of every pixel both dates show
   (``refine_translation``: a band-limited shift, gain and offset, robust weights, both dates'
   validity; used only where it converges near the learned estimate). Its standard error comes from the fit's residuals (else from the points'
   spread). (An ECC refinement was once up to 0.5 px off near the data's edge, pulled by the
   target's mean-filled invalid pixels; an LK-at-points one followed which keypoints a changed
   scene gave.)
   Windows are combined by their median; those beyond ``outlier_sigmas`` spreads are rejected;
   where the tie points are not one translation (rotation, scale, a bad window) the pair carries
   a warning naming what was seen. The pair's ``sigma_px`` (``pair_standard_error``) is calibrated
   on validation pairs (``CoregisterConfig.sigma_scale``; ``benchmarks/coregistration.py`` reports
   the same-date coverage), carries a floor for two acquisitions (``sigma_cross_date_m``, measured
   on loop closures and forward/reverse pairs of real dates: ``benchmarks/sigma_calibration.py``)
   and is widened, with a warning, where the tie points and the dense estimate disagree.
6. Outputs shared by pairs and stacks: ``correction_in_crs`` (the vector that moves a date's
   georeference, in its own CRS), ``write_moved`` (a corrected COG with provenance tags),
   ``stac_item``, ``provenance`` and ``OutputFolder`` (checked before any work, locked for one
   writer, published all at once).

**Convention**: a displacement ``d`` (px on the reference grid, x right, y down) of date *b*
relative to date *a* means a feature at grid pixel *p* in date *a* is found at *p + d* in date
*b*; in metres it is x east, y north. A date's correction is its negative.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import s2coreg.config as config
import s2coreg.io.products as dp
import s2coreg.io.geo as geo
import s2coreg.io.remote as remote
from s2coreg.cli import FLAG_OF
from s2coreg.config import CoregisterConfig, PreprocessConfig
from s2coreg.io.imaging import BorderFill, DenseFit, border_fill, dense_translation, edge_fraction, fill_from_neighbours
from s2coreg.utils import PipelineError, atomic_path, no_grad, pin_thread, torch_threads

# every output name of a pair or a stack: a rerun into a folder replaces our earlier result, whichever it was
RESULT_NAMES = ("coregistration.json", "tie_points.geojson", "tie_points.csv", "shift_field.tif", "report.png",
                "corrected", "shifts.csv", "pairs.csv", "stack.json", "shifts.png", "items.geojson", "items", "search.geojson")
# what a rotation or scale warning advises; a caller that gives other advice (a stack) or has
# taken it (a pair corrected by the affine) replaces exactly this
AFFINE_ADVICE = "use correction='affine' (--correction affine)"   # read in Python and on the command line
SPECK_FILL_SIGMA_PX = 2.0    # the Gaussian that fills specks of no data from their valid neighbours
CE90_PER_SIGMA = 2.146      # radius holding 90 % of a circular normal distribution, in sigmas
MEDIAN_SE = 1.2533          # standard error of a median = 1.2533 σ / √n (normal errors)
MIN_AFFINE_WINDOWS = 3      # windows, not on one line, that a rotation or scale warning rests on at least
GRADIENT_CHI2 = 18.47       # χ² (4 degrees of freedom, p = 0.001) of a fitted gradient beyond the windows' noise
NORTH_UP_TOLERANCE_DEG = 1e-4   # a geotransform's rotation or shear within this is rounding (0.02 px over 10980 px)
WARP_NORTH_UP = "warp it north-up first, e.g. gdalwarp -r cubic IN OUT"   # the fix for a rotated or sheared grid


# ----------------------------------------------------------------------------- inputs
def open_date(path: str | Path | list, role: str = "date", bands: tuple[str, ...] = (),
              nodata: float | str | None = None) -> dp.Product:
    """The one product of a date: a ``.SAFE`` (folder or zip), a STAC Item (file, URL or
    ``dp.ItemRef``), a raster file or URL, a folder of one date's band files, or a list of one
    date's band files (paths or URLs). ``bands`` given as
    1-based indices (``1,2,3``) select those bands of a single raster, as GDAL counts them.

    ``nodata``: None — each file's own no-data tag, and where a file has none, fill it does not
    declare is found and read as no-data (``with_nodata``; ``Product.fill`` says what was
    found); ``"file"`` — the files' own tags alone (nothing looked for: a rule already decided,
    as a stack's tasks get it from its main process); a number — that value is no-data in every
    band file; ``"none"`` — no value is no-data."""
    return with_nodata(_open_product(path, role, bands), nodata, role, bands)


NODATA_PARAMETERS = {"reference": "ref_nodata", "target": "target_nodata"}    # a pair's no-data rules, by role


def with_nodata(product: dp.Product, nodata: float | str | None, role: str = "date",
                bands: tuple[str, ...] = ()) -> dp.Product:
    """``product`` under the no-data rule ``nodata`` (see ``open_date``). Fill that a file does not
    declare (a glacier outline's 0, a footprint's 65535) is not evidence: its edge is fixed on
    the map whatever the content does, and tie points on it measure nothing."""
    if nodata == "file":
        return product
    if isinstance(nodata, str):
        if nodata.strip().lower() not in ("none", "off"):
            try:
                nodata = float(nodata)
            except ValueError:
                raise PipelineError(f"{product.source}: {nodata_named(role, repr(nodata))} is not a number; give "
                                    "a value (0, -9999, nan) or none") from None
        else:
            return dataclasses.replace(product, nodata=None)
    if nodata is not None:
        if nodata != product.nodata:           # a value given, not the rule the product came with
            check_nodata_value(product, float(nodata), role)
        return dataclasses.replace(product, nodata=float(nodata))
    if product.nodata != "file":          # the product's own rule (Sentinel-2 products: 0)
        return product
    found = undeclared_fill(product, bands)
    if found is None:
        return product
    path, fill = found
    param = NODATA_PARAMETERS.get(role)
    how = (f"give {param}='none' ({FLAG_OF[param]} none) to read it as data, or another value" if param else
           "set the file's own no-data tag to choose otherwise, e.g. gdal_edit.py -a_nodata VALUE")
    tag = ("" if fill.declared is None else
           f" (it declares {fill.declared:g}, which does not fill it from the edge; {fill.declared:g} is read as data)")
    note = (f"{path}: {fill.fraction:.0%} of it is {fill.value:g} from the edge inwards, not declared as no-data"
            f"{tag}: read as no-data ({how})")
    return dataclasses.replace(product, nodata=fill.value, fill=note)


def nodata_named(role: str, value: str) -> str:
    """A no-data value given for ``role`` as its parameter (``target_nodata=300``: the command line
    says ``--target-nodata 300``), or in words where no parameter sets it."""
    name = NODATA_PARAMETERS.get(role)
    return f"{name}={value}" if name else f"no-data {value} for the {role}"


def check_nodata_value(product: dp.Product, value: float, role: str) -> None:
    """A no-data value the product's files can hold, or one line saying why not (300 or −1 in an
    8-bit file, NaN in an integer one: no pixel could ever be no-data)."""
    path = next(iter(product.band_files.values()))
    path = path[min(path)]
    with dp.open_raster(path) as src:
        dtype = np.dtype(src.dtypes[0])
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        if not np.isfinite(value) or value != round(value) or not info.min <= value <= info.max:
            raise PipelineError(f"{path}: {nodata_named(role, f'{value:g}')} cannot occur in its {dtype} pixels "
                                f"(whole numbers {info.min}..{info.max}); give one it can hold, or none")


def nodata_in_use(product: dp.Product, bands: list[str]) -> float | str | None:
    """The no-data value a date is read with (for its output): the product's rule, or under the
    ``"file"`` rule the first band file's own tag (None: no value is no-data)."""
    if product.nodata != "file":
        return product.nodata
    with dp.open_raster(product.band_path(bands[0])) as src:
        return src.nodata


def undeclared_fill(product: dp.Product, bands: tuple[str, ...] = ()) -> tuple[str, "BorderFill"] | None:
    """The fill of a product's band files that carry no no-data tag (``imaging.border_fill`` on a
    nearest-neighbour read of at most ``config.FILL_CHECK_SIZE`` px): ``(file, fill)`` of the
    largest, or None. Looked for in the bands that will be read (``bands`` the product has), else
    in all of them."""
    import rasterio
    from rasterio.enums import Resampling

    names = [b for b in bands if b in product.band_files] or list(product.band_files)
    files: dict[str, list[int]] = {}
    for b in names:
        files.setdefault(product.band_path(b), []).append(product.band_index.get(b, 1))
    best = None
    for path, indexes in list(files.items())[:4]:
        with dp.open_raster(path) as src:
            s = min(1.0, config.FILL_CHECK_SIZE / max(src.width, src.height))
            shape = (max(3, round(src.height * s)), max(3, round(src.width * s)))
            idx = sorted(set(i for i in indexes if 1 <= i <= src.count)) or [1]
            try:
                data = src.read(idx, out_shape=(len(idx), *shape), resampling=Resampling.nearest)
            except rasterio.errors.RasterioIOError as exc:
                raise dp.pixel_read_error(path, exc) from exc
            declared = src.nodata
        if declared is not None and (np.isnan(declared) or
                                     edge_fraction(data, declared) >= config.FILL_MIN_FRACTION):
            continue              # the declared value fills from the edge: the producer's word stands
        fill = border_fill(data)
        if fill is not None and (best is None or fill.fraction > best[1].fraction):
            fill.declared = declared
            best = (remote.name_of(path) if remote.is_remote(path) else str(path), fill)
    return best


def _open_product(path: str | Path | list, role: str, bands: tuple[str, ...]) -> dp.Product:
    if isinstance(path, (list, tuple)):
        files = [p if remote.is_remote(p) else Path(p) for p in path]
        missing = [f for f in files if not remote.is_remote(f) and not f.exists()]
        if missing:
            raise PipelineError(f"{missing[0]}: no such file; give the {role}'s band files")
        return dp.open_band_files(files, config.S2_DEFAULT_QUANTIFICATION, 0.0)
    if not isinstance(path, dp.ItemRef) and not remote.is_remote(path):
        path = Path(path)
    found = dp.find_products(path)
    if len(found) != 1:
        raise PipelineError(f"{path}: holds {len(found)} products; give the {role} as one product, file or "
                            "folder of one date's band files")
    if found.errors:
        raise PipelineError(found.errors[0][1])
    product = found.products[0]
    if bands and all(b.isdigit() for b in bands):
        count = max((int(b) for b in product.band_index if b.isdigit()), default=0)
        if not count:
            raise PipelineError(f"{path}: bands={','.join(bands)!r} selects bands of one raster file by 1-based "
                                "index; this input is a product or a folder of band files: give band names "
                                "(B04,B03,B02)")
        bad = [b for b in bands if not 1 <= int(b) <= count]
        if bad:
            raise PipelineError(f"{path}: has no band {', '.join(bad)} (it has {count}); fix bands= "
                                "(1-based indices)")
    return product


SMALLEST = {"window": 64, "overview": 128, "max_windows": 1, "stack_windows": 1}    # below these a setting cannot measure anything


def check_settings(cfg: CoregisterConfig) -> None:
    """The sizes a run is given can measure something (a window of SuperPoint's cells, an overview
    that can hold a product, at least one window), or one line naming the setting: ``window=0``
    divided by zero, a negative one failed in numpy, ``max_windows=0`` published a result of
    nothing."""
    for name, least in SMALLEST.items():
        value = getattr(cfg, name)
        if not isinstance(value, int) or value < least:
            raise PipelineError(f"{name}={value!r}: must be a whole number of at least {least}"
                                f"{' px' if name != 'max_windows' else ''} (default {getattr(CoregisterConfig, name)})")


def checked_config(cfg: CoregisterConfig | None, stack: bool = False) -> CoregisterConfig:
    """``cfg`` (the defaults where None) as a run takes it, checked before any work (a pair before
    its models load, a stack before its cluster starts): sizes that can measure
    (``check_settings``), a matcher co-registration takes, named as every process finds it
    (``check_matcher``)."""
    cfg = cfg or CoregisterConfig()
    check_settings(cfg)
    return check_matcher(cfg, stack)


# the matcher a job runs where ``CoregisterConfig.matcher`` is None (its comment says why)
JOB_MATCHER = {"pair": "sift-first", "stack": "fast"}


def check_matcher(cfg: CoregisterConfig, stack: bool = False) -> CoregisterConfig:
    """``cfg`` with ``matcher`` as every process takes it (None: the job's own, ``JOB_MATCHER``;
    ``matching.matcher_spec``: a user's matcher
    as ``package.module:name``, whose module a Dask worker imports), or one line saying what the
    engine takes: a pair, every matcher and cascade; a stack, those whose features are SuperPoint's
    alone (``matching.matcher_choices``): it extracts a date's windows once and matches them in
    every pair, from its cache too, where a cascade of SIFT and the learned path would keep each
    window's image to extract the learned features from."""
    from s2coreg.matching.pipeline import CASCADES, OWN_MATCHER, UnknownMatcher, matcher_choices, matcher_spec

    def choose() -> str:        # the installed plugins looked up only for a refusal (start-up: no scan)
        taken = matcher_choices(superpoint_features=stack)
        return f"{'a stack' if stack else 'co-registration'} takes {', '.join(taken)} or a matcher of your own as {OWN_MATCHER}"

    name = cfg.matcher or JOB_MATCHER["stack" if stack else "pair"]
    try:
        spec = matcher_spec(name)
    except UnknownMatcher:
        raise PipelineError(f"matcher={name!r}: no such matcher; {choose()}") from None
    if stack and spec in CASCADES and CASCADES[spec] != ("superpoint",):     # a cascade of other features too
        raise PipelineError(f"matcher={name!r}: not for a stack, which extracts a date's windows once, as "
                            f"SuperPoint features, and matches them in every pair; {choose()}")
    return config.replace(cfg, matcher=spec)


def date_bands(product: dp.Product, wanted: tuple[str, ...]) -> list[str]:
    """The bands of ``product`` read for matching: those of ``wanted`` it has (names, or 1-based
    indices of a raster); a single-band input (an unnamed raster, or one band file such as
    ``B8A.jp2``) is read as it is."""
    have = [b for b in wanted if b in product.band_files]
    if have:
        return have
    if "grey" in product.band_files:
        return ["grey"]
    named = sorted(b for b in product.band_files if not b.isdigit())
    indexed = sorted((b for b in product.band_files if b.isdigit()), key=int)
    one_file = len({p for res in product.band_files.values() for p in res.values()}) == 1
    if len(named) == 1 and one_file and len(indexed) <= 1:     # one band, named (B8A.jp2): as it is
        return named
    if not named:
        count = max(int(b) for b in product.band_files)
        raise PipelineError(f"{product.source}: {count} unnamed bands; choose the bands with bands= (1-based "
                            "indices as GDAL counts them, e.g. bands='3,2,1') or set band descriptions (B04...)")
    also = f"; bands 1-{indexed[-1]} by index" if len(indexed) > 1 else ""
    raise PipelineError(f"{product.source}: none of the bands {', '.join(wanted)} (it has: {', '.join(named)}{also}); "
                        "choose with bands= (names such as B04,B03,B02 or red,green,blue, or 1-based indices "
                        "such as 3,2,1 of a single raster file)")


def common_bands(products: list[dp.Product], wanted: tuple[str, ...], quorum: float = 1.0) -> list[list[str]]:
    """Each product's bands: the bands of ``wanted`` that the products have in common (held by
    all of them, or with ``quorum`` < 1 by at least that share: in a stack, one date with fewer
    bands does not cut the others down to its own) where there are any — the dates then look
    alike — else, and for a product without them, its own (``date_bands``)."""
    held = [b for b in wanted if sum(b in p.band_files for p in products) >= quorum * len(products) - 1e-9]
    return [held if held and all(b in p.band_files for b in held) else date_bands(p, wanted) for p in products]


# Tags of a raster's metadata that name when it was acquired, most trusted first (GDAL's default
# domain: GeoTIFF's GDAL_METADATA items and the TIFF tags); TIFFTAG_DATETIME — the file's own
# time, often when it was written — is used only where neither these nor the name give a date.
DATE_TAGS = ("ACQUISITIONDATE", "ACQUISITION_DATE", "DATE_ACQUIRED", "SENSING_TIME", "SENSING_DATE",
             "DATATAKE_SENSING_START", "PRODUCT_START_TIME", "START_TIME", "DATETIME_ORIGINAL")
# Dates in names, most specific first: a Sentinel-2 product id (MSIL1C_20230630T101559), a Landsat
# one (LC09_L2SP_123045_20230630_20230702_02_T1: the first date is the acquisition), ISO
# (2023-06-30, 2023_06_30), compact (20230630, not inside a longer number).
NAME_DATES = (("Sentinel-2 product id", r"MSI[A-Z0-9]{3}_((?:19|20)\d{6})T\d{6}"),
              ("Landsat product id", r"L[COTEM]0\d_[A-Z0-9]{4}_\d{6}_((?:19|20)\d{6})_\d{8}"),
              ("name", r"(?<!\d)((?:19|20)\d{2}[-_]\d{2}[-_]\d{2})(?!\d)"),
              ("name", r"(?<!\d)((?:19|20)\d{6})(?!\d)"))


def first_path(path) -> str:
    """A date's path as one string: the first of a list of band files, else the path itself."""
    return str(path[0] if isinstance(path, (list, tuple)) else path)


def parse_date(text) -> str:
    """``text``'s first calendar date (YYYY-MM-DD, YYYY_MM_DD, YYYYMMDD, YYYY:MM:DD as TIFF writes
    it, an ISO time after it) as YYYYMMDD, or "" (month and day checked: 8 digits are not a date)."""
    import datetime as dt

    found = re.search(r"(?<!\d)((?:19|20)\d{2})[-_:/]?(\d{2})[-_:/]?(\d{2})(?!\d)", str(text or ""))
    if not found:
        return ""
    try:
        return dt.date(*map(int, found.groups())).strftime("%Y%m%d")
    except ValueError:
        return ""


def acquisition_date(product: dp.Product | None, path, given: str | None = None) -> tuple[str, str]:
    """(YYYYMMDD or "", where it came from) — the one rule that decides a date: ``given``
    (``--date``), the product's metadata (a .SAFE or STAC Item), the raster's acquisition tags
    (``DATE_TAGS``), a product id or date in its name (``NAME_DATES``), TIFFTAG_DATETIME; else
    ("", "unknown"). ``product`` None (a date that could not be opened): ``given`` or its name."""
    if given:
        d = parse_date(given)
        if not d:
            raise PipelineError(f"dates= gives {given!r} for {remote.name_of(first_path(path))}: a date is YYYY-MM-DD")
        return d, "--date"
    name = remote.name_of(first_path(path))
    in_name = next(((parse_date(m.group(1)), source) for source, pattern in NAME_DATES
                    for m in re.finditer(pattern, name) if parse_date(m.group(1))), ("", ""))
    sensed = parse_date(product.sensing_date) if product is not None else ""
    if sensed and sensed != in_name[0]:
        return sensed, "product metadata"     # not only its name's date
    tags = {}
    first = next((f for res in product.band_files.values() for f in res.values()), None) \
        if product is not None else None
    if first is not None:
        try:
            with dp.open_raster(first) as src:
                tags = {k.upper(): v for k, v in src.tags().items()}
        except PipelineError:       # an unreadable file fails later, with its own message
            pass
    for tag in DATE_TAGS:
        if parse_date(tags.get(tag)):
            return parse_date(tags[tag]), f"tag {tag}"
    if in_name[0]:
        return in_name
    if parse_date(tags.get("TIFFTAG_DATETIME")):
        return parse_date(tags["TIFFTAG_DATETIME"]), "tag TIFFTAG_DATETIME"
    return "", "unknown"


def date_of(product: dp.Product | None, path) -> str:
    """The date's YYYYMMDD (``acquisition_date``; ``product`` None: from its name), or its name
    where none is known."""
    date, _ = acquisition_date(product, path)
    return date or remote.stem_of(first_path(path))


def check_given_dates(dates: dict | None, paths: list) -> None:
    """Every ``--date NAME`` names one of the inputs, or one line says which does not (a typo
    would otherwise be ignored, the date left unknown)."""
    for name in dates or {}:
        if not any(given_date({name: "x"}, p) for p in paths):
            labels = ", ".join(remote.name_of(first_path(p)) for p in paths[:6])
            raise PipelineError(f"dates= names {name!r}: it names no input (a path, file name or stem of: {labels}"
                                f"{' …' if len(paths) > 6 else ''}); fix the name")


def given_date(dates: dict | None, path) -> str | None:
    """The date ``--date NAME=YYYY-MM-DD`` gives ``path`` (NAME: its path, file name or stem), or None."""
    if not dates:
        return None
    label = first_path(path)
    names = {label, remote.name_of(label), remote.stem_of(label), input_label(path)}
    for name, value in dates.items():
        if name in names or str(Path(name).resolve()) in names:
            return value
    return None


def grid_of(product: dp.Product, bands: list[str]) -> dp.Grid:
    """The reference grid: the product's 10 m grid, else the finest of its bands'."""
    grid = dp.reference_grid(product, [b for b in bands if b in product.band_files])
    if grid.crs is None:
        raise PipelineError(f"{product.source}: not georeferenced (no CRS); co-registration needs a CRS and "
                            "transform: assign them (gdal_edit.py -a_srs, -a_ullr) or give another file")
    return grid


def grid_angles(transform) -> tuple[float, float]:
    """(rotation, shear) of a geotransform, degrees: the rotation of its columns' axis from east
    (counter-clockwise positive; 0 for a north-up grid) and how far its two axes are from square
    (0 for a north-up or rotated grid; a shear is no map grid)."""
    x_axis, y_axis = np.array([transform.a, transform.d]), np.array([transform.b, transform.e])
    rotation = float(np.degrees(np.arctan2(transform.d, transform.a)))
    cos = float(x_axis @ y_axis / max(np.linalg.norm(x_axis) * np.linalg.norm(y_axis), 1e-300))
    return rotation, 90.0 - float(np.degrees(np.arccos(np.clip(abs(cos), 0.0, 1.0))))


def _degrees(angle: float) -> str:
    """An angle with the decimals that tell it from a right or zero angle (89.95°, not 90.0°)."""
    for digits in range(1, 6):
        if round(angle, digits) not in (0.0, 90.0):
            return f"{angle:.{digits}f}°"
    return f"{angle:g}°"


def check_georeference(product: dp.Product, bands: list[str], role: str = "date", grid: dp.Grid | None = None) -> None:
    """Each band file of ``bands`` has a map CRS and a geotransform the engine can measure on, or
    one line (``PipelineError``) naming the file, what is wrong and the fix. A stack's date and a
    pair's target must lie on a north-up grid (a rotated or sheared geotransform of north-up
    pixels is a broken georeference: a translation cannot correct it, and measured against a
    north-up grid it gave "ok" shifts of kilometres); a pair's target may also lie on the
    reference ``grid``'s rotation (a corrected target written on a rotated reference's grid). A
    pair's ``"reference"`` may be rotated (its grid is the one measured on); a shear is refused
    for every role: no map grid is sheared."""
    from rasterio.errors import CRSError

    for path in dict.fromkeys(product.band_path(b) for b in bands):
        with dp.open_raster(path) as src:
            try:
                crs = src.crs
            except CRSError:
                crs = False
            transform, size = src.transform, (src.width, src.height)
        name = remote.name_of(path) if remote.is_remote(path) else str(path)
        corners = np.array([transform * (c, r) for c in (0, size[0]) for r in (0, size[1])])
        degrees = crs and crs.is_geographic and not ((np.abs(corners[:, 0]) <= 360).all()
                                                     and (np.abs(corners[:, 1]) <= 90).all())
        if not crs or not (crs.is_projected or crs.is_geographic) or degrees:
            what = ("has no CRS (not georeferenced)" if crs is None else "has a CRS that cannot be read" if crs is False
                    else f"has a geographic CRS, but its corner ({corners[0, 0]:.1f}, {corners[0, 1]:.1f}) is not in "
                         "degrees: the CRS is wrong" if degrees else "has a local CRS (no map projection)")
            raise PipelineError(f"{name}: {what}; co-registration needs a map CRS and transform: assign them "
                                "(gdal_edit.py -a_srs EPSG:…, -a_ullr) or give another file")
        rotation, shear = grid_angles(transform)
        if abs(shear) > NORTH_UP_TOLERANCE_DEG:
            raise PipelineError(f"{name}: its geotransform is sheared (its axes {_degrees(90 - abs(shear))} apart, not 90°: "
                                f"no map grid); {WARP_NORTH_UP}")
        if role == "reference" or abs(rotation) <= NORTH_UP_TOLERANCE_DEG:
            continue
        turn = f"rotated {_degrees(abs(rotation))} {'counter-clockwise' if rotation > 0 else 'clockwise'}"
        if role == "target" and grid is not None:
            on_grid = grid_angles(grid.transform)[0]
            if abs(rotation - on_grid) <= NORTH_UP_TOLERANCE_DEG:
                continue                     # on the reference's own rotation
            if abs(on_grid) > NORTH_UP_TOLERANCE_DEG:
                raise PipelineError(f"{name}: its geotransform is {turn}, the reference's grid {on_grid:+.1f}°; "
                                    f"{WARP_NORTH_UP}, or onto the reference's grid")
        also = ", or give it as the pair's reference" if role == "target" else ""
        raise PipelineError(f"{name}: its geotransform is {turn} (not a north-up grid); {WARP_NORTH_UP}{also}")


def bad_input_line(exc: BaseException, source) -> str | None:
    """The words for an exception that a bad input raises while it is read (naming ``source`` and
    the fix), or None where ``exc`` is not one (a fault of this tool: its traceback is wanted).
    A ``PipelineError`` is its own line; rasterio's read errors (a corrupt or truncated file),
    CRS errors, a window the file's georeference puts out of shape, and a Dask worker that died
    on the date get theirs: raw exception text never reaches a reason."""
    import rasterio.errors

    name = remote.name_of(str(source)) if remote.is_remote(str(source)) else str(source)
    if isinstance(exc, PipelineError):
        return str(exc)
    if isinstance(exc, rasterio.errors.RasterioIOError):
        return f"{name}: cannot be read (corrupt or truncated); download or export it again"
    if isinstance(exc, rasterio.errors.CRSError) or type(exc).__name__ == "CRSError" or (
            type(exc).__name__.startswith("CPLE_") and re.search(r"PROJ|coordinate operation", str(exc))):
        return (f"{name}: its CRS cannot be read or transformed to the grid's; assign a map CRS (gdal_edit.py "
                "-a_srs EPSG:…) or give another file")
    if isinstance(exc, (rasterio.errors.WindowError, rasterio.errors.TransformError)) or (
            isinstance(exc, ValueError) and _raised_in("rasterio", exc)):
        return (f"{name}: its georeference puts its pixels out of shape on the grid (a rotated, sheared or flipped "
                f"geotransform?); {WARP_NORTH_UP}")
    if type(exc).__name__ == "KilledWorker":
        return (f"{name}: the worker reading it died each time it tried (out of memory?); give the workers more "
                "memory or use fewer (workers=, --workers)")
    return None


def _raised_in(package: str, exc: BaseException) -> bool:
    """Whether the innermost frame of ``exc``'s traceback is in ``package``'s code."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and f"{os.sep}{package}{os.sep}" in tb.tb_frame.f_code.co_filename


def date_grid(grid: dp.Grid, offset_px) -> dp.Grid:
    """The reference grid moved by a date's offset (px; whole, plus the fraction by which the
    date's own pixels sit off the grid): a date is read on it, so that its content lands on the
    reference's windows (any offset; nothing is read beyond the grid's size)."""
    from rasterio.transform import Affine

    ox, oy = (float(v) for v in offset_px)
    return dp.Grid(grid.transform * Affine.translation(ox, oy), grid.width, grid.height, grid.crs)


def band_grids(product: dp.Product, bands: list[str]) -> list[dp.Grid]:
    """The own grid of each band's file (one header read each; what ``grid_fraction``,
    ``raster_extent`` and ``pixel_ratio`` look at)."""
    grids = []
    for b in bands:
        with dp.open_raster(product.band_path(b)) as src:
            if src.crs is None:
                raise PipelineError(f"{product.band_path(b)}: not georeferenced (no CRS); co-registration needs a CRS "
                                    "and transform: assign them (gdal_edit.py -a_srs, -a_ullr) or give another file")
            grids.append(dp.Grid(src.transform, src.width, src.height, src.crs))
    return grids


def grid_fraction(bands: list[dp.Grid], grid: dp.Grid) -> np.ndarray | None:
    """Where a date's own pixels (its bands' grids) lie on ``grid``, as the fractional part (2,)
    of the grid px of their pixel corners, when every band is in the grid's CRS at its pixel size
    without rotation; else None (then it is resampled onto the grid). A date whose pixels are the
    grid's shifted by a fraction is read pixel for pixel, without resampling, and the fraction is
    added to what is measured: resampling would bias a sub-pixel measurement (GDAL's cubic warp
    moves the content by a few hundredths of a pixel less than asked)."""
    found = None
    for own in bands:
        t, g = own.transform, grid.transform
        if own.crs != grid.crs or not np.allclose([t.a, t.b, t.d, t.e], [g.a, g.b, g.d, g.e], rtol=1e-9, atol=0):
            return None
        # the date's pixel corner (0, 0) in the grid's pixels, through the grid's whole transform
        # (a rotated grid's b and d too: dividing by a and e alone read a 10°-rotated pair 0.5 px off)
        corner = np.array(~g * (t.c, t.f), np.float64)
        frac = corner - np.round(corner)
        if found is not None and not np.allclose(frac, found, atol=1e-6):
            return None
        found = frac
    return found


def valid_mask(product: dp.Product, nodata: np.ndarray, grid: dp.Grid, window, shape, warp: bool,
               cfg: CoregisterConfig) -> np.ndarray:
    """Where a window of ``product`` is usable: data, no cloud (L1C ``MSK_CLASSI``, L2A cloud
    probability) and no scene class left out (cloud shadow, water, cloud, cirrus, snow)."""
    valid = ~nodata
    masks = dp.render_masks(product, grid, window, shape, warp=warp)
    if "cloud" in masks:
        valid &= masks["cloud"] <= (cfg.cloud_probability if "cloud_prob" in product.masks else 0)
    if "scl" in masks:
        valid &= ~np.isin(masks["scl"], cfg.scl_invalid)
    return valid


def read_date(product: dp.Product, bands: list[str], grid: dp.Grid, window, shape, warp: bool,
              cfg: CoregisterConfig) -> tuple[np.ndarray, np.ndarray]:
    """A window of a date on ``grid`` (its own ``date_grid``): the rendered bands (rows, cols, C)
    0..1 and where it is valid (specks of no data filled: ``fill_specks``)."""
    image, nodata = dp.render(product, bands, grid, window, shape, PreprocessConfig(), warp=warp)
    return fill_specks(image, valid_mask(product, nodata, grid, window, shape, warp, cfg), cfg.speck_px)


def fill_specks(image: np.ndarray, valid: np.ndarray, max_px: int) -> tuple[np.ndarray, np.ndarray]:
    """Invalid specks of at most ``max_px`` pixels (scattered no-data, saturated or single-pixel
    masked pixels) filled from their neighbours (``imaging.fill_from_neighbours``) and counted
    valid: the matcher drops every keypoint near no data, so 1 % of scattered invalid pixels cost
    half the tie points and 5 % refused a pair. Larger no-data (an orbit's edge, a cloud) stays
    invalid."""
    import cv2

    invalid = ~valid
    if not invalid.any() or max_px <= 0:
        return image, valid
    n, labels, stats, _ = cv2.connectedComponentsWithStats(invalid.astype(np.uint8), connectivity=8)
    small = np.zeros(n, bool)
    small[1:] = stats[1:, cv2.CC_STAT_AREA] <= max_px
    specks = small[labels] & invalid
    if not specks.any() or specks.all():          # nothing to fill, or nothing to fill it from
        return image, valid
    channels = image[..., None] if image.ndim == 2 else image
    filled, reached = [], None
    for c in np.moveaxis(channels, -1, 0):
        f, reached = fill_from_neighbours(c, invalid, SPECK_FILL_SIGMA_PX)
        filled.append(np.where(specks, f, c))
    filled = np.stack(filled, -1)
    return (filled[..., 0] if image.ndim == 2 else filled).astype(image.dtype), valid | (specks & reached)


# ----------------------------------------------------------------------------- coarse step
@dataclass
class Overview:
    """The reference's decimated overview: its features, its image and the scale to grid px."""

    features: dict
    image: np.ndarray                 # the rendered overview (the pair's report draws on it)
    scale: tuple[float, float]        # grid px per overview px (x, y)
    shape: tuple[int, int]
    valid: np.ndarray | None = None   # (rows, cols) bool: data, no cloud, no snow (``valid_mask``)
    inliers: np.ndarray | None = None  # (N, 2) a date's overview: where the coarse step's verified inliers
                                       # lie on the reference overview (px; ``locate_date``), else None


def overview_shape(grid: dp.Grid, cfg: CoregisterConfig) -> tuple[int, int]:
    s = min(1.0, cfg.overview / max(grid.width, grid.height))
    return max(8, round(grid.height * s)), max(8, round(grid.width * s))


def reference_overview(pipeline, product: dp.Product, bands: list[str], grid: dp.Grid,
                       cfg: CoregisterConfig) -> Overview:
    """The reference read whole at ``cfg.overview`` px (decimated), its features extracted."""
    ov = date_overview(pipeline, product, bands, grid, cfg, "reference overview", warp=False)
    if not ov.valid.any():
        raise PipelineError(f"{product.source}: no valid pixel in the bands {', '.join(bands)} (nodata, cloud or "
                            "snow everywhere): nothing to match on it; choose another date")
    return ov


def date_overview(pipeline, product: dp.Product, bands: list[str], grid: dp.Grid, cfg: CoregisterConfig,
                  name: str, warp: bool = True) -> Overview:
    """A date read whole on ``grid`` at ``cfg.overview`` px (decimated), its features extracted:
    what ``locate_date`` matches against the reference's, and what a pair ranks its windows on
    (``window_prospects``)."""
    shape = overview_shape(grid, cfg)
    image, valid = read_date(product, bands, grid, (0, 0, grid.width, grid.height), shape, warp, cfg)
    f = pipeline.extract(image, valid, name)
    return Overview(f, image, (grid.width / shape[1], grid.height / shape[0]), shape, valid)


@dataclass
class DateLocation:
    """Where a date lies against the reference: its coarse offset and its raster's extent."""

    path: object
    date: str
    name: str
    bands: list[str]
    offset_px: tuple[float, float]                   # whole px + the fraction of its own grid (``grid_fraction``)
    extent_px: tuple[float, float, float, float]     # (col0, row0, col1, row1) on the reference grid, offset applied
    warp: bool
    coarse: dict
    pixel_ratio: float = 1.0                         # the date's pixel size over the grid's (a 60 m date on 20 m: 3)
    date_source: str = ""                            # where ``date`` came from (``acquisition_date``)
    nodata: float | str | None = None                # its product's no-data rule, as decided (``with_nodata``)
    overview: Overview | None = field(default=None, repr=False, compare=False)   # its own, where kept (a pair)


def raster_extent(bands: list[dp.Grid], grid: dp.Grid) -> tuple[float, float, float, float]:
    """A date's raster footprint on ``grid``, in grid px (col0, row0, col1, row1): the
    intersection over its bands' grids."""
    from rasterio.transform import array_bounds
    from rasterio.warp import transform_bounds

    out = [-np.inf, -np.inf, np.inf, np.inf]
    for own in bands:
        if own.crs == grid.crs:
            # its four pixel corners through its own transform (rotated or sheared grids too:
            # array_bounds takes only two of them)
            edge = np.array([[0, 0], [own.width, 0], [0, own.height], [own.width, own.height]], np.float64)
            xy = np.stack(own.transform * (edge[:, 0], edge[:, 1]), -1)
        else:
            left, bottom, right, top = transform_bounds(own.crs, grid.crs,
                                                        *array_bounds(own.height, own.width, own.transform),
                                                        densify_pts=21)
            xy = np.array([[left, top], [right, bottom], [left, bottom], [right, top]])
        corners = geo.map_to_pixel(xy, grid.transform) + 0.5                   # pixel corners
        out = [max(out[0], corners[:, 0].min()), max(out[1], corners[:, 1].min()),
               min(out[2], corners[:, 0].max()), min(out[3], corners[:, 1].max())]
    return tuple(float(v) for v in out)


def locate_date(pipeline, path, product: dp.Product, bands: list[str], grid: dp.Grid, overview: Overview | None,
                cfg: CoregisterConfig, keep_overview: bool = False, seen: Overview | None = None) -> DateLocation:
    """The date's coarse offset against the reference overview (whole px, plus the fraction by
    which its own pixels sit off the grid's: ``grid_fraction``; 0 for the reference itself, and
    the whole part 0 when the overviews do not verify) and its raster's extent on the grid.
    ``keep_overview``: the location carries the date's own overview (``date_overview``) with
    ``inliers``, where the verified coarse inliers lie on the reference overview (a pair ranks
    its windows on them: ``window_prospects``); ``seen``: that overview, already read (a pair
    reads both dates' at once)."""
    own, fraction, extent = date_footprint(product, bands, grid)
    warp = fraction is None
    g = grid
    coarse = {"verified": None, "inliers": 0, "reason": "the reference itself", "offset_px": [0, 0]}
    offset = np.zeros(2)
    if overview is not None:
        if seen is None:
            seen = date_overview(pipeline, product, bands, g, cfg, f"{remote.name_of(str(path))} overview")
        r = pipeline.verify(pipeline.match_features(overview.features, seen.features))
        coarse = {"verified": bool(r["verified"]), "inliers": int(r["num_inliers"]), "reason": r["reason"]}
        if r["verified"]:
            d = r["mkpts1"][r["inliers"]] - r["mkpts0"][r["inliers"]]
            offset = np.round(np.median(d, axis=0) * np.array(overview.scale))
            seen.inliers = np.asarray(r["mkpts0"][r["inliers"]], np.float64)
        coarse["offset_px"] = offset.tolist()
    if fraction is not None:
        offset = offset + fraction
    ext = (extent[0] - offset[0], extent[1] - offset[1], extent[2] - offset[0], extent[3] - offset[1])
    date, source = acquisition_date(product, path)
    return DateLocation(path, date or remote.stem_of(first_path(path)), product.name, bands,
                        (float(offset[0]), float(offset[1])), ext, warp, coarse, pixel_ratio(own, grid), source,
                        product.nodata, seen if keep_overview and overview is not None else None)


def date_footprint(product: dp.Product, bands: list[str], grid: dp.Grid):
    """A date's band grids, the fraction by which its pixels sit off ``grid``'s (``grid_fraction``;
    None: read through a warp) and its raster's extent on ``grid`` (``raster_extent``); one line
    where it does not overlap the grid at all."""
    own = band_grids(product, bands)
    extent = raster_extent(own, grid)
    if extent[0] >= grid.width or extent[2] <= 0 or extent[1] >= grid.height or extent[3] <= 0:
        raise PipelineError(f"{product.source}: does not overlap the reference; give dates of the same place")
    return own, grid_fraction(own, grid), extent


def with_given_date(location: DateLocation, dates: dict | None) -> DateLocation:
    """``location`` with the date ``--date`` gives its file (``given_date``), if any."""
    given = given_date(dates, location.path)
    if given is None:
        return location
    date, source = acquisition_date(None, location.path, given)
    return dataclasses.replace(location, date=date, date_source=source)


def pixel_ratio(bands: list[dp.Grid], grid: dp.Grid) -> float:
    """A date's coarsest band's pixel size over the grid's, at least 1 (compared through the
    ground metres of one pixel)."""
    coarsest = max(metres_per_px(own) for own in bands)
    return max(1.0, coarsest / max(metres_per_px(grid), 1e-9))


# ----------------------------------------------------------------------------- windows
Window = tuple[int, int, int, int]       # (col, row, width, height) on the reference grid, px


def common_region(grid: dp.Grid, extents: list[tuple[float, float, float, float]],
                  tolerance_px: float = 0.0) -> tuple[int, int, int, int]:
    """(col0, row0, col1, row1): the part of the grid that every date's raster covers after its
    offset. A pair's windows lie inside what both cover, however little; in a stack of more than
    two dates, a date covering less than half of the grid does not shrink the others' windows
    (its windows outside its data are invalid for it alone). An edge at most ``tolerance_px``
    inside the grid's border counts as the border (``CoregisterConfig.edge_tolerance_px``): a date
    offset by a few px leaves the plan of windows as it was — a grown stack keeps its windows and
    so its work — and the sliver it does not cover is nodata for it alone."""
    region = [0.0, 0.0, float(grid.width), float(grid.height)]
    area = grid.width * grid.height
    t = float(tolerance_px)
    for e in extents:
        e = (0.0 if 0 < e[0] <= t else e[0], 0.0 if 0 < e[1] <= t else e[1],
             float(grid.width) if grid.width - t <= e[2] < grid.width else e[2],
             float(grid.height) if grid.height - t <= e[3] < grid.height else e[3])
        w = max(0.0, min(e[2], grid.width) - max(e[0], 0)) * max(0.0, min(e[3], grid.height) - max(e[1], 0))
        if len(extents) > 2 and w < 0.5 * area:
            continue
        region = [max(region[0], e[0]), max(region[1], e[1]), min(region[2], e[2]), min(region[3], e[3])]
    c0, r0 = int(np.ceil(region[0] - 1e-6)), int(np.ceil(region[1] - 1e-6))
    c1, r1 = int(np.floor(region[2] + 1e-6)), int(np.floor(region[3] + 1e-6))
    return c0, r0, max(c0, c1), max(r0, r1)


def plan_windows(region: tuple[int, int, int, int], cfg: CoregisterConfig) -> list[Window]:
    """About ``max_windows`` windows on a regular grid over ``region``; small regions get smaller
    windows (at least ``min_window`` px), a region less than two of those across is one window
    (the matcher sees all of it: more inliers than in pieces)."""
    c0, r0, c1, r1 = region
    width, height = c1 - c0, r1 - r0
    if width < 16 or height < 16:
        return []
    if min(width, height) < 2 * cfg.min_window:
        return [(c0, r0, min(width, cfg.window * 2), min(height, cfg.window * 2))] if max(width, height) <= \
            2 * cfg.window else _grid_windows(region, min(width, height, cfg.window), cfg)
    return _grid_windows(region, min(cfg.window, max(cfg.min_window, min(width, height) // 2)), cfg)


def _grid_windows(region: tuple[int, int, int, int], side: int, cfg: CoregisterConfig) -> list[Window]:
    c0, r0, c1, r1 = region
    width, height = c1 - c0, r1 - r0
    sw, sh = min(side, width), min(side, height)
    nx = max(1, min(round(width / sw), round(np.sqrt(cfg.max_windows * width / height))))
    ny = max(1, min(round(height / sh), round(cfg.max_windows / nx)))
    cols = np.linspace(c0, c1 - sw, nx).round().astype(int)
    rows = np.linspace(r0, r1 - sh, ny).round().astype(int)
    return [(int(c), int(r), sw, sh) for r in rows for c in cols]


# ----------------------------------------------------------------------------- per date
@dataclass
class DateFeatures:
    """One date read on the reference grid at its offset: per window, its features."""

    location: DateLocation
    windows: list[Window]
    features: dict[int, dict] = field(default_factory=dict)      # window index → features
    valid_share: float = 0.0
    keypoints: int = 0

    @property
    def date(self) -> str:
        return self.location.date

    @property
    def offset(self) -> np.ndarray:
        return np.array(self.location.offset_px, np.float64)


def extract_date(pipeline, product: dp.Product, location: DateLocation, grid: dp.Grid, windows: list[Window],
                 cfg: CoregisterConfig, images: bool = False, only: set[int] | None = None) -> DateFeatures:
    """Every window of the date (``only``: those of these indices) read on its ``date_grid`` and
    its features extracted once (windows with less than ``min_valid`` valid area are skipped).
    ``images``: keep each window's rendered image in its features (``image``; for the pair's
    report)."""
    g = date_grid(grid, location.offset_px)
    out = DateFeatures(location, windows)
    shares = []
    for k, window in enumerate(windows):
        if only is not None and k not in only:
            continue
        f, share, _ = extract_window(pipeline, product, location, g, k, window, cfg, images)
        shares.append(share)
        if f is not None:
            out.features[k] = f
            out.keypoints += len(f["keypoints"])
    out.valid_share = float(np.mean(shares)) if shares else 0.0
    return out


def extract_window(pipeline, product: dp.Product, location: DateLocation, g: dp.Grid, k: int, window: Window,
                   cfg: CoregisterConfig, images: bool = False) -> tuple[dict | None, float, str | None]:
    """One window of a date read on its ``date_grid`` ``g`` at native resolution, once, and its
    features extracted: ``(features, valid share, None)``, or ``(None, share, why)`` where it has
    less than ``min_valid`` valid area or no keypoint."""
    col, row, w, h = window
    e = location.extent_px              # a window reaching past the date's raster: through the warp
    inside = col >= e[0] - 1e-6 and row >= e[1] - 1e-6 and col + w <= e[2] + 1e-6 and row + h <= e[3] + 1e-6
    image, valid = read_date(product, location.bands, g, (col, row, w, h), (h, w), location.warp or not inside, cfg)
    share = float(valid.mean())
    if share < cfg.min_valid:
        return None, share, f"too little valid area ({share:.0%} < min_valid {cfg.min_valid:.0%})"
    f = pipeline.extract(image, valid, f"{remote.name_of(str(location.path))} window {k}")
    if len(f["keypoints"]) == 0:
        return None, share, f.get("reason") or "no keypoint"
    f["valid"] = valid
    if images:
        f["image"] = image
    return f, share, None


# ----------------------------------------------------------------------------- per pair
@dataclass
class WindowMeasure:
    """One window pair: the displacement of date b's content relative to date a (grid px)."""

    index: int
    window: Window
    status: str = "rejected"                  # used | rejected
    reason: str | None = None
    shift_px: np.ndarray | None = None        # (2,) the window's estimate (refined where it could be)
    learned_px: np.ndarray | None = None      # (2,) the learned estimate: median of the inliers' displacements
    refined: bool = False                     # shift_px is the dense refinement of the learned estimate
    matched_by: str | None = None             # a cascade's path that matched it (sift or learned; mnn or superglue)
    learned_why: str | None = None            # why a used window kept its learned estimate (not refined)
    correlation: float | None = None          # the dense fit's correlation (negative: contrast inverted)
    at_px: np.ndarray | None = None           # (2,) grid px of date a where the estimate applies
    se_px: np.ndarray | None = None           # (2,) its standard error per axis
    inliers: int = 0
    tie_a: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))   # grid px, date a
    tie_b: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))   # grid px where date b shows them
    score: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def centre(self) -> np.ndarray:
        """Where the window's estimate applies (grid px of date a): the centroid of what its dense
        fit used (weighted by what each pixel told it), else of its inliers (the window's middle
        where an affine explains them: ``points_estimate``), else the window's middle. Under a rotation the displacement varies over a window, and its estimate is the
        displacement there, not at the middle (an affine fitted to the middles held 1.7° of a 2°
        rotation)."""
        if self.at_px is not None:
            return np.asarray(self.at_px, np.float64)
        c, r, w, h = self.window
        return np.array([c + (w - 1) / 2, r + (h - 1) / 2])


@dataclass
class PairMeasure:
    """Two dates measured window by window and combined."""

    i: int
    j: int
    verified: bool
    shift_px: list[float] | None = None       # displacement of date j's content relative to date i
    sigma_px: float | None = None             # calibrated standard error (per axis, RMS of the two)
    se_px: list[float] | None = None          # (2,) per axis, calibrated
    spread_px: list[float] | None = None      # (2,) robust spread of the used windows' shifts
    windows_used: int = 0
    tie_points: int = 0
    reason: str | None = None
    error: str | None = None                  # the pair could not be measured (an exception, not a refusal)
    warnings: list[str] = field(default_factory=list)
    affine_shown: bool = False                # the tie points show a rotation or scale (an affine fits them)
    at_px: list[float] | None = None          # (2,) grid px where shift_px applies: the measured overlap's centre
    windows: list[WindowMeasure] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)   # windows planned but not read: why → count


def refine_translation(fa: dict, fb: dict, shift: np.ndarray, reach_px: float,
                       cfg: CoregisterConfig) -> tuple[DenseFit | None, str | None]:
    """The window's displacement measured from all the pixels both dates show
    (``imaging.dense_translation`` on their local contrast, ``texture``): date a's content moved by
    a band-limited shift (no interpolation bias), its gain and offset fitted (negative where the
    contrast inverted, as land turned to water), changed content down-weighted by a robust
    biweight, both dates' validity and the window's edges faded out. Started at the learned
    estimate ``shift``; used only where it converges within ``refine_iterations`` Newton steps to
    an optimum no further than ``reach_px`` from it (another optimum is another answer, which the
    verified matches did not find). Returns ``(fit, None)``, or ``(None, why)`` where it cannot run
    or is not used (a window's output says why).

    Why: the learned estimate is a median of points, each moved by the correlation stage's
    bilinear LK (biased ±0.03 px towards the half pixel) and drawn from whichever keypoints the
    content gave — on changed scenes (floods) two sub-pixel moves of the same target gave learned
    estimates 0.2–1.4 px apart. The dense optimum follows a move of the content exactly: 0.01–0.04 px
    apart on the same pairs (``benchmarks/coregistration.py``)."""
    ta, tb = fa.get("texture"), fb.get("texture")
    if ta is None or tb is None or ta.shape != tb.shape:
        return None, "no image kept for the dense fit"
    if not (np.allclose(fa.get("texture_scale", 1.0), 1.0) and np.allclose(fb.get("texture_scale", 1.0), 1.0)):
        return None, "read decimated: no full-resolution image"
    fit = dense_translation(ta, tb, fa.get("valid"), fb.get("valid"), start=shift,
                            max_iterations=cfg.refine_iterations, tolerance=cfg.refine_converged_px,
                            smooth=cfg.refine_smooth_px)
    if fit is None:
        return None, "the dense fit could not run (too little both dates show)"
    if not fit.converged:
        return None, f"the dense fit did not converge in {cfg.refine_iterations} steps"
    if fit.pixels < cfg.refine_min_pixels:
        return None, f"fewer than {cfg.refine_min_pixels} pixels both dates show"
    if np.hypot(*(fit.shift - shift)) > reach_px:
        return None, "the dense optimum lies beyond the learned estimate's reach (another answer)"
    return fit, None


def measure_window(pipeline, k: int, window: Window, fa: dict, fb: dict, offset_a, offset_b,
                   cfg: CoregisterConfig | None = None, refine: bool = True) -> WindowMeasure:
    """Match one window pair; its learned estimate (inlier median after the fine head and the
    correlation stage), refined by the dense fit where ``refine`` and it converges near it
    (``refine_translation``); the estimate's standard error from the fit's residuals, else from
    the points' robust spread."""
    cfg = cfg or CoregisterConfig()
    m = WindowMeasure(k, window)
    r = pipeline.verify(pipeline.match_features(fa, fb))
    m.matched_by = r.get("cascade_path")
    if not r["verified"]:
        m.reason = r["reason"]
        return m
    inl = r["inliers"]
    d = (r["mkpts1"][inl] - r["mkpts0"][inl]).astype(np.float64)
    middle = np.array([(window[2] - 1) / 2, (window[3] - 1) / 2])
    med, at_points, gradient = points_estimate(r["mkpts0"][inl].astype(np.float64), d, middle)
    m.learned_px = med + (np.asarray(offset_b, np.float64) - offset_a)
    spread = geo.MAD_TO_SIGMA * np.median(np.abs(d - med), axis=0)
    se = MEDIAN_SE * np.maximum(spread, 0.05) / np.sqrt(len(d))
    # the dense optimum may move the estimate within the learned estimate's own uncertainty
    # (``refine_reach_se`` standard errors), and at least ``refine_max_px``
    reach = max(cfg.refine_max_px, cfg.refine_reach_se * float(np.hypot(*se)))
    if not refine:
        fit, m.learned_why = None, "refinement switched off"
    elif gradient:          # the dense fit is a translation's: under a rotation it lands ~1 px from any point's
        fit, m.learned_why = None, "the tie points show a rotation or scale across the window (an affine fits them)"
    else:
        fit, m.learned_why = refine_translation(fa, fb, med, reach, cfg)
    if fit is not None:
        # its standard error: the fit's own (its residuals' noise), and never below the learned
        # estimate's — the points' spread is what shows how far changed content pulls a date
        med, se = fit.shift, np.maximum(fit.se, se)
        m.refined, m.correlation = True, fit.correlation
    origin = np.array(window[:2], np.float64)
    m.at_px = (fit.at if fit is not None else at_points) + origin + offset_a
    m.tie_a = r["mkpts0"][inl] + origin + offset_a
    m.tie_b = r["mkpts1"][inl] + origin + offset_b
    m.score = r["mconf"][inl]
    m.inliers = int(inl.sum())
    m.shift_px = med + (np.asarray(offset_b, np.float64) - offset_a)
    m.se_px = se
    m.status = "used"
    return m


def points_estimate(points: np.ndarray, d: np.ndarray, middle: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """A window's learned estimate from its inliers (window px ``points`` of date a, their
    displacements ``d``): ``(displacement, where it applies, whether an affine explains them)``.
    The median displacement, at the points' centroid — unless an affine explains the points'
    displacements (their spread about it a quarter of that about one translation or less: a
    rotation, scale or shear across the window); then the affine of the points it keeps (those
    within 3 × its residuals' median) at the window's ``middle``, where a translation of the
    window applies (a pair of one window reports it at the overlap's centre: at the points'
    centroid, a 0.002 shear put it 1.3 m off there). Under a rotation the median belongs to
    wherever the median point lies: a 2° rotated city, SIFT's points bunched, put the pair's shift
    at the centre 4.5 m from the truth, its own affine 0.01 m."""
    med, at = np.median(d, axis=0), points.mean(0)
    if len(d) < 8:
        return med, at, False
    _, residual = fit_affine_px(points, d)
    about_translation = float(np.median(np.linalg.norm(d - med, axis=1)))
    if np.median(residual) > 0.25 * about_translation:
        return med, at, False
    keep = residual <= 3 * max(float(np.median(residual)), 0.05)
    M, _ = fit_affine_px(points[keep], d[keep])
    middle = np.asarray(middle, np.float64)
    return M[:, :2] @ middle + M[:, 2] - middle, middle, True


def refinement_counts(windows: list[WindowMeasure]) -> dict:
    """Of the used windows: how many the dense fit refined, how many kept the learned estimate,
    and why (``{"refined": n, "learned": m, "learned_reasons": {why: count}}``)."""
    used = [w for w in windows if w.status == "used"]
    why: dict[str, int] = {}
    for w in used:
        if not w.refined:
            key = w.learned_why or "unknown"
            why[key] = why.get(key, 0) + 1
    return {"refined": sum(w.refined for w in used), "learned": len(used) - sum(w.refined for w in used),
            "learned_reasons": why}


def matched_by(windows: list[WindowMeasure]) -> dict[str, int]:
    """Of the used windows: how many each path of a cascade matched (sift-first: ``{"sift": n,
    "learned": m}``, the learned path loaded only where ``learned`` counts; fast: mnn, superglue);
    empty for a single path."""
    out: dict[str, int] = {}
    for w in windows:
        if w.status == "used" and w.matched_by:
            out[w.matched_by] = out.get(w.matched_by, 0) + 1
    return out


def reason_kind(reason: str | None) -> str:
    """A window's reason for rejection, as one of a few kinds (for the counts in the JSON)."""
    text = (reason or "").lower()
    for words, kind in ((("blank", "uniform"), "blank or uniform (cloud?)"), (("no keypoint",), "no keypoint"),
                        (("ransac inliers",), "too few RANSAC inliers"), (("valid",), "too little valid area"),
                        (("outlier",), "outlier window"), (("no match",), "no match")):
        if any(w in text for w in words):
            return kind
    return reason or "unknown"


def consistent_windows(shifts: np.ndarray, se: np.ndarray, cfg: CoregisterConfig) -> np.ndarray:
    """Which windows' shifts (N, 2) px lie within ``outlier_sigmas`` spreads of their median on
    both axes; the spread is the windows' robust spread (1.4826 × MAD), at least twice a window's
    own standard error and ``min_spread_px``."""
    med = np.median(shifts, axis=0)
    spread = geo.MAD_TO_SIGMA * np.median(np.abs(shifts - med), axis=0)
    spread = np.maximum(np.maximum(spread, 2 * np.median(se, axis=0)), cfg.min_spread_px)
    return (np.abs(shifts - med) <= cfg.outlier_sigmas * spread).all(1)


def fit_affine_px(centres: np.ndarray, shifts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares affine (2×3) from grid px of date a to where date b shows them, fitted to
    window centres and their shifts; and its residuals (N,) px."""
    c1 = centres + shifts
    origin = centres.mean(0)
    X = np.hstack([centres - origin, np.ones((len(centres), 1))])
    coef, *_ = np.linalg.lstsq(X, c1 - origin, rcond=None)
    A = coef[:2].T
    t = coef[2] + origin - A @ origin
    residual = np.linalg.norm(X @ coef - (c1 - origin), axis=1)
    return np.hstack([A, t[:, None]]), residual


def windows_span(windows: list[WindowMeasure]) -> bool:
    """Whether the windows can show a rotation or scale: at least ``MIN_AFFINE_WINDOWS`` of them,
    not on one line (their centres spread over both axes by at least half a window's side). One
    window's tie points are not independent evidence: changed content, a sensor's other
    resolution or the matcher's own error pattern bend them alike (a Landsat pair's one window
    "showed" a scale of 1.0114)."""
    if len(windows) < MIN_AFFINE_WINDOWS:
        return False
    centres = np.array([w.centre for w in windows], np.float64)
    side = float(np.median([min(w.window[2], w.window[3]) for w in windows]))
    return bool(np.linalg.svd(centres - centres.mean(0), compute_uv=False)[-1] / np.sqrt(len(centres))
                >= side / 4)


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def disagreement_warning(windows: list[WindowMeasure], px_m: float, cfg: CoregisterConfig,
                         coarse: float = 1.0) -> tuple[str | None, bool]:
    """A warning when the verified tie points are not one translation, naming the windows it rests
    on. Where the windows can show one (``windows_span``): an affine fitted to their tie points
    moves the corners of the measured area by more than ``disagreement_px`` (and their noise) away
    from the median shift — rotation or scale — or windows differ from the others beyond their
    noise without an affine explaining it. Fewer windows claim no rotation or scale: where their
    tie points stray from one translation beyond that limit, a note says the shift is their
    average. Returns the warning (or None) and whether an affine fits the tie points
    better than the translation (``affine_in_map`` then fits them)."""
    tie_a = np.concatenate([w.tie_a for w in windows]) if windows else np.zeros((0, 2))
    tie_b = np.concatenate([w.tie_b for w in windows]) if windows else np.zeros((0, 2))
    if len(tie_a) < 12:
        return None, False
    d = tie_b - tie_a
    med = np.median(d, axis=0)
    noise = np.linalg.norm(np.median([w.se_px for w in windows], axis=0))
    # a pixel of the coarser date, not of the grid: a 60 m date cannot show a 20 m grid's pixel
    limit = max(cfg.disagreement_px * coarse, cfg.outlier_sigmas * 2 * noise)
    M, residual = fit_affine_px(tie_a, d)
    # an affine fitted to n noisy points predicts its corners to about 3 × (point spread) / √n:
    # a reach below three of those is the points' noise, not a rotation
    spread = geo.MAD_TO_SIGMA * np.median(residual)
    limit = max(limit, 9 * spread / np.sqrt(len(tie_a)))
    lo, hi = tie_a.min(0), tie_a.max(0)
    corners = np.array([[lo[0], lo[1]], [hi[0], lo[1]], [lo[0], hi[1]], [hi[0], hi[1]]])
    moved = corners @ M[:, :2].T + M[:, 2] - corners - med
    reach = np.linalg.norm(moved, axis=1)
    n = len(windows)
    if not windows_span(windows):
        if reach.max() > limit:
            return (f"the tie points of the {plural(n, 'window')} are not one translation (up to "
                    f"{reach.max() * px_m:.0f} m from it at the corners of the measured area), but "
                    f"{plural(n, 'window')} cannot tell a misregistration that varies over the scene from local "
                    f"distortion or the matcher's error (at least {MIN_AFFINE_WINDOWS} windows across the scene can): "
                    "the shift is their affine's at the overlap's centre where an affine explains them, else their "
                    "median; check report.png"), True
        return None, False
    if reach.max() > limit:
        # counter-clockwise as seen on a map (north up), as the affine in map coordinates: grid px
        # run down, so the angle measured on them changes sign
        angle = -np.degrees(np.arctan2(M[1, 0] - M[0, 1], M[0, 0] + M[1, 1]))
        scale = np.sqrt(abs(np.linalg.det(M[:, :2])))
        return (f"windows disagree by {reach.min() * px_m:.0f}–{reach.max() * px_m:.0f} m at the corners of the "
                f"measured area: rotation or scale (an affine fits the tie points of {n} windows: rotation "
                f"{angle:+.2f}° counter-clockwise, scale {scale:.4f}); the translation is only an average, "
                f"{AFFINE_ADVICE}"), True
    shifts = np.array([w.shift_px for w in windows])
    dev = np.linalg.norm(shifts - np.median(shifts, axis=0), axis=1)
    if dev.max() > limit:
        bad = int((dev > limit).sum())
        return (f"{bad} of {n} windows disagree with the others by {np.min(dev[dev > limit]) * px_m:.0f}–"
                f"{dev.max() * px_m:.0f} m beyond their noise: local distortion, a changed landscape or a bad "
                "window (left out of the shift as outliers where beyond their spread); check report.png"), False
    return None, False


def overlap_centre(windows: list[Window]) -> np.ndarray:
    """The centre (grid px, pixel centres) of the area the windows cover: the overlap measured."""
    w = np.array(windows, np.float64)
    lo, hi = w[:, :2].min(0), (w[:, :2] + w[:, 2:]).max(0)
    return (lo + hi) / 2 - 0.5


def translation_at(windows: list[WindowMeasure], shifts: np.ndarray, se: np.ndarray, at: np.ndarray) -> np.ndarray:
    """The translation that best moves the whole overlap: the displacement at its centre ``at``,
    the median of the windows' estimates carried there (``carried_to``)."""
    return np.median(carried_to(windows, shifts, se, at), axis=0)


def carried_to(windows: list[WindowMeasure], shifts: np.ndarray, se: np.ndarray, at: np.ndarray) -> np.ndarray:
    """The windows' estimates (``shifts``, N × 2) carried to ``at``. Each estimate applies where it
    was measured (its ``centre``); where the windows can show a gradient (``windows_span``, at
    least 4) and an affine field of them departs from one translation beyond their noise (χ² of
    its gradient, 4 degrees of freedom, p < 0.001), each is carried to ``at`` along the fitted
    gradient (a 50 ppm scale left the median of a full tile's windows 0.17 m from the
    displacement at its centre), and their spread about their median is then their noise, not the
    gradient (``pair_standard_error``); else they are returned as they are (a gradient fitted to
    noise would add noise)."""
    if len(shifts) < 4 or not windows_span(windows):
        return shifts
    centres = np.array([w.centre for w in windows], np.float64)
    X = np.hstack([centres - at, np.ones((len(centres), 1))])
    coef, *_ = np.linalg.lstsq(X, shifts, rcond=None)           # (3, 2): gradient rows, then the offset
    residual = shifts - X @ coef
    noise = np.maximum(geo.MAD_TO_SIGMA * np.median(np.abs(residual), axis=0), np.median(se, axis=0))
    inv = np.linalg.pinv(X.T @ X)[:2, :2]                       # the gradient's covariance / noise²
    try:
        chi2 = sum(float(coef[:2, k] @ np.linalg.solve(inv, coef[:2, k])) / max(noise[k], 1e-9) ** 2
                   for k in range(2))
    except np.linalg.LinAlgError:
        return shifts
    if chi2 <= GRADIENT_CHI2:
        return shifts
    return shifts - (centres - at) @ coef[:2]


OUTLIER_WINDOW = "outlier: its shift disagrees with the other windows"     # a used window measure_pair rejects


def measure_pair(pipeline, i: int, j: int, a: DateFeatures, b: DateFeatures, cfg: CoregisterConfig,
                 px_m: float = 10.0, measured: dict[int, WindowMeasure] | None = None,
                 skipped: dict[int, str] | None = None) -> PairMeasure:
    """Match two dates window by window (features extracted once per date) and combine the
    windows: the median of the used windows' estimates, its calibrated standard error,
    warnings where they disagree. ``px_m``: metres per grid px (for the warnings' wording).
    ``measured``: windows already matched (``measure_in_rounds``: not matched again);
    ``skipped``: windows planned but never read, and why (counted in the refusal and in
    ``PairMeasure.skipped``)."""
    common = sorted(set(a.features) & set(b.features))
    # every window refined, resampled dates too: with both images blurred alike (imaging.
    # dense_translation), the dense fit is not drawn by the resampling kernel's bias — dates on the
    # neighbouring UTM zone (Lanczos) re-registered within 0.002 px where the learned estimate was
    # 0.03 px off; the full tile (a mosaic of chips with sharp seams) 0.03 m, learned 0.01 m
    refine = cfg.refine
    measured, skipped = measured or {}, skipped or {}
    measures = [measured[k] if k in measured else
                measure_window(pipeline, k, a.windows[k], a.features[k], b.features[k], a.offset, b.offset, cfg,
                               refine) for k in common]
    out = PairMeasure(i, j, False, windows=measures)
    for why in skipped.values():
        out.skipped[why] = out.skipped.get(why, 0) + 1
    used = [m for m in measures if m.status == "used"]
    # at least ``min_windows`` verified windows, or all of those both dates have (a small scene
    # is one window; a partly cloudy date has a few): each window is verified on its own
    needed = min(cfg.min_windows, max(1, len(common)))
    if len(used) < needed:
        kinds: dict[str, int] = {}
        for m in measures:
            kinds[reason_kind(m.reason)] = kinds.get(reason_kind(m.reason), 0) + 1
        missing = len(a.windows) - len(measures) - len(skipped)
        if missing:
            kinds[f"less than min_valid ({cfg.min_valid:.0%}) of it valid, or no texture, on one date"] = missing
        for why, n in out.skipped.items():
            kinds[f"not read, {why}"] = n
        head = (f"only {len(used)} of {len(a.windows)} windows verified (at least {needed} needed)" if common
                else f"no window with enough valid, textured area on both dates (cloud, snow or nodata; a window "
                     f"needs min_valid, {cfg.min_valid:.0%}, of it valid on both)")
        out.reason = head + "".join(f"; {k}: {v} window{'s' if v != 1 else ''}" for k, v in kinds.items())
        return out
    warning, out.affine_shown = disagreement_warning(used, px_m, cfg,
                                                     max(a.location.pixel_ratio, b.location.pixel_ratio))
    if warning:
        out.warnings.append(warning)
    shifts = np.array([m.shift_px for m in used])
    se = np.array([m.se_px for m in used])
    keep = consistent_windows(shifts, se, cfg)
    if keep.sum() < needed:
        # no majority to reject against: all of them, with the spread as their uncertainty
        keep[:] = True
        out.warnings.append(f"the {len(used)} verified windows do not agree within their noise and no majority "
                            "does: all are used, the uncertainty is their spread")
    for m, ok in zip(used, keep):
        if not ok:
            m.status, m.reason = "rejected", OUTLIER_WINDOW
    used = [m for m in used if m.status == "used"]
    shifts, se = shifts[keep], se[keep]
    n = len(used)
    out.at_px = overlap_centre(a.windows).tolist()
    carried = carried_to(used, shifts, se, np.array(out.at_px))
    med = np.median(carried, axis=0)              # translation_at
    if out.affine_shown and not windows_span(used):
        # too few windows to carry their estimates along a gradient, and their tie points are not
        # one translation (a rotation, a scale): the displacement at the centre from an affine of
        # the tie points — the median of points bunched on one side of a rotated scene is not the
        # centre's (a 3° rotation of one window: 2.95 px off, where the affine gave 0.00)
        tie_a = np.concatenate([m.tie_a for m in used])
        d = np.concatenate([m.tie_b for m in used]) - tie_a
        M, residual = fit_affine_px(tie_a, d)
        # only where the affine explains the tie points (their spread about it a quarter of that
        # about one translation, or less): points pulled by changed content (a coast between two
        # sensors' dates) stray without a rotation, and an affine of them extrapolates their noise
        if np.median(residual) < 0.25 * np.median(np.linalg.norm(d - np.median(d, axis=0), axis=1)):
            at = np.array(out.at_px)
            med = M[:, :2] @ at + M[:, 2] - at
    spread = geo.MAD_TO_SIGMA * np.median(np.abs(shifts - med), axis=0) if n > 2 else np.abs(shifts - med).max(0)
    cross = cross_date_pair(a, b)
    # the standard error from the estimates carried to the centre: a gradient the translation
    # took out (a scale of the full tile: 2.6 m of spread over its windows) is not its noise
    learned = np.array([m.learned_px for m in used]) + (carried - shifts)
    total, gap = pair_standard_error(carried, se, learned, cfg, cross_date=cross, px_m=px_m)
    if gap is not None:
        out.warnings.append(estimates_disagree_warning(used, med, gap, total, px_m, cfg))
    out.verified = True
    out.shift_px = med.tolist()
    out.se_px = total.tolist()
    out.sigma_px = float(np.sqrt(np.mean(total ** 2)))
    out.spread_px = spread.tolist()
    out.windows_used = n
    out.tie_points = int(sum(m.inliers for m in used))
    return out


# ----------------------------------------------------------------------------- a pair's windows, best first
SKIP_INVALID = "too little valid area on the overviews (nodata, cloud or snow)"
SKIP_ENOUGH = "enough verified windows over the overlap already"


def window_prospects(windows: list[Window], ref: Overview, tgt: Overview, offset_px,
                     cfg: CoregisterConfig) -> tuple[np.ndarray, np.ndarray]:
    """What the overviews both dates were located on (nothing read at full resolution) say of
    each window: the share of it valid on both (N,: data, no cloud, no snow; the target's
    content for a window lies ``offset_px`` further on its overview) and a score (N,) of how
    likely it is to answer — that share × (1 + log(1 + the keypoints the poorer of the two
    overviews has in it) + log(1 + the coarse step's verified inliers in it)): texture both dates
    show, and where the reference's content was already matched (``Overview.inliers``)."""
    sx, sy = ref.scale
    ox, oy = float(offset_px[0]) / sx, float(offset_px[1]) / sy
    # sift-first's overviews: the learned path's keypoints where the coarse step extracted them
    # (SIFT's crowd on cloud edges, which a window's dense fit cannot use; the cloudy full tile of
    # benchmarks/coregistration_full_tile.py: 0.10 m from the truth with SIFT's, 0.02 m with these)
    fr, ft = (f.get("fallback", f) for f in (ref.features, tgt.features))
    kr = np.asarray(fr.get("keypoints", np.zeros((0, 2))), np.float64).reshape(-1, 2)
    kt = np.asarray(ft.get("keypoints", np.zeros((0, 2))), np.float64).reshape(-1, 2)
    inl = np.zeros((0, 2)) if tgt.inliers is None else tgt.inliers
    share, score = np.zeros(len(windows)), np.zeros(len(windows))

    def inside(points, x0, y0, x1, y1):
        return int(((points[:, 0] >= x0) & (points[:, 0] < x1) & (points[:, 1] >= y0) & (points[:, 1] < y1)).sum())

    for k, (c, r, w, h) in enumerate(windows):
        x0, y0, nx, ny = c / sx, r / sy, max(1, round(w / sx)), max(1, round(h / sy))
        va = _crop(ref.valid, round(x0), round(y0), nx, ny)
        vb = _crop(tgt.valid, round(x0 + ox), round(y0 + oy), nx, ny)
        share[k] = float((va & vb).mean())
        x1, y1 = x0 + w / sx, y0 + h / sy
        points = min(inside(kr, x0, y0, x1, y1), inside(kt, x0 + ox, y0 + oy, x1 + ox, y1 + oy))
        score[k] = share[k] * (1 + np.log1p(points) + np.log1p(inside(inl, x0, y0, x1, y1)))
    return share, score


def _crop(mask: np.ndarray | None, x0: int, y0: int, nx: int, ny: int) -> np.ndarray:
    """``mask[y0:y0+ny, x0:x0+nx]``, False where that reaches past it (no mask: all True)."""
    if mask is None:
        return np.ones((ny, nx), bool)
    out = np.zeros((ny, nx), bool)
    ya, yb, xa, xb = max(y0, 0), min(y0 + ny, mask.shape[0]), max(x0, 0), min(x0 + nx, mask.shape[1])
    if yb > ya and xb > xa:
        out[ya - y0:yb - y0, xa - x0:xb - x0] = mask[ya:yb, xa:xb]
    return out


def window_blocks(windows: list[Window], region: tuple[int, int, int, int], blocks: int) -> list[tuple[int, int]]:
    """Each window's block (column, row) of ``blocks`` × ``blocks`` over ``region``, by its middle."""
    c0, r0, c1, r1 = region
    out = []
    for c, r, w, h in windows:
        bx = int(np.clip((c + w / 2 - c0) / max(c1 - c0, 1) * blocks, 0, blocks - 1))
        by = int(np.clip((r + h / 2 - r0) / max(r1 - r0, 1) * blocks, 0, blocks - 1))
        out.append((bx, by))
    return out


def window_order(share: np.ndarray, score: np.ndarray, blocks: list[tuple[int, int]],
                 cfg: CoregisterConfig) -> tuple[list[int], dict[int, str]]:
    """The order a pair reads its windows in, and those it does not read (index → why): windows
    whose overviews show less than ``rank_min_valid`` of them valid on both dates are skipped;
    the others go in rounds — round n holds the n-th best-scored window of every block (best
    block first), so that the first windows read already span the overlap (the affine and the
    shift field need windows all over it, not the best texture in one corner)."""
    skipped = {k: SKIP_INVALID for k in range(len(share)) if share[k] < cfg.rank_min_valid}
    per_block: dict[tuple[int, int], list[int]] = {}
    for k in sorted(range(len(share)), key=lambda k: (-score[k], k)):
        if k not in skipped:
            per_block.setdefault(blocks[k], []).append(k)
    order, n = [], 0
    while any(n < len(v) for v in per_block.values()):
        order += sorted((v[n] for v in per_block.values() if n < len(v)), key=lambda k: (-score[k], k))
        n += 1
    return order, skipped


def enough_windows(measures: list[WindowMeasure], tried: int, candidates: int, blocks: list[tuple[int, int]],
                   wanted: tuple[set, set], at: np.ndarray, cross_date: bool, px_m: float,
                   cfg: CoregisterConfig) -> bool:
    """Whether the windows measured so far (``tried`` read) bound the pair as well as more would:
    at least ``stop_windows`` verified windows that agree (``consistent_windows``), in every block
    column and every block row that has windows to read (``wanted``: the field and the affine
    need both axes spanned), and a standard error (``pair_standard_error``, the estimates carried
    to the overlap's centre ``at``) within ``stop_sigma_gain`` of what all ``candidates`` windows
    would give, verified at the rate seen so far (its windows' part shrinks as 1/√n; a floor — two
    acquisitions' ``sigma_cross_date_m`` — does not). ``stop_windows`` 0: never (every planned
    window is read)."""
    used = [m for m in measures if m.status == "used"]
    if cfg.stop_windows <= 0 or len(used) < cfg.stop_windows:
        return False
    shifts, se = np.array([m.shift_px for m in used]), np.array([m.se_px for m in used])
    keep = consistent_windows(shifts, se, cfg)
    used, shifts, se = [m for m, ok in zip(used, keep) if ok], shifts[keep], se[keep]
    if not (len(used) >= cfg.stop_windows and {blocks[m.index][0] for m in used} >= wanted[0]
            and {blocks[m.index][1] for m in used} >= wanted[1]):
        return False
    carried = carried_to(used, shifts, se, at)
    more = max(len(used), candidates * len(used) / max(tried, 1))
    f = np.sqrt(len(used) / more)            # the windows' part of σ with ``more`` of them, as spread and own errors
    med = np.median(carried, axis=0)
    now, _ = pair_standard_error(carried, se, None, cfg, cross_date=cross_date, px_m=px_m)
    best, _ = pair_standard_error(med + (carried - med) * f, se * f, None, cfg, cross_date=cross_date, px_m=px_m)
    return bool(np.sqrt(np.mean(now ** 2)) <= (1 + cfg.stop_sigma_gain) * np.sqrt(np.mean(best ** 2)))


def measure_in_rounds(pipeline, products: tuple[dp.Product, dp.Product], locations: tuple[DateLocation, DateLocation],
                      grid: dp.Grid, windows: list[Window], region: tuple[int, int, int, int],
                      overviews: tuple[Overview, Overview], cfg: CoregisterConfig,
                      threads: int = 1) -> tuple[DateFeatures, DateFeatures, dict[int, WindowMeasure], dict[int, str]]:
    """A pair's windows read, extracted and matched best first (``window_prospects``,
    ``window_order``) until ``enough_windows``; the rest are not read. Each window of each date is
    read once, at native resolution; a window the reference cannot answer (too little valid
    area, no keypoint) leaves the target's unread. ``threads`` windows run at once, each on one
    torch thread (reading in one overlaps the other's extraction: GDAL releases the GIL); the
    result does not depend on ``threads`` (windows are taken in order, and one still running
    when enough are measured is dropped). Returns both dates' features, the measured windows
    and the skipped ones (index → why), for ``measure_pair``."""
    (pa, pb), (la, lb) = products, locations
    ga, gb = date_grid(grid, la.offset_px), date_grid(grid, lb.offset_px)
    a, b = DateFeatures(la, windows), DateFeatures(lb, windows)
    share, score = window_prospects(windows, overviews[0], overviews[1], lb.offset_px, cfg)
    blocks = window_blocks(windows, region, max(1, cfg.rank_blocks))
    order, skipped = window_order(share, score, blocks, cfg)
    wanted = ({blocks[k][0] for k in order}, {blocks[k][1] for k in order})
    at, cross, px_m = overlap_centre(windows), cross_date_pair(a, b), metres_per_px(grid)
    measured: dict[int, WindowMeasure] = {}
    shares: list[float] = []

    def one(k: int):
        with no_grad():                   # thread-local: entered in the thread that runs the window
            fa, sa, why = extract_window(pipeline, pa, la, ga, k, windows[k], cfg)
            fb, sb = None, None
            if fa is not None:
                fb, sb, why = extract_window(pipeline, pb, lb, gb, k, windows[k], cfg)
            m = None if fb is None else measure_window(pipeline, k, windows[k], fa, fb, a.offset, b.offset, cfg,
                                                       cfg.refine)
        return fa, fb, sa, sb, m

    with window_runner(threads) as submit:
        pending = [(k, submit(one, k)) for k in order[:threads]]
        nxt = len(pending)
        while pending:
            k, job = pending.pop(0)
            fa, fb, sa, sb, m = job.result()
            shares.append(sa)
            for date, f in ((a, fa), (b, fb)):
                if f is not None:
                    date.features[k] = f
                    date.keypoints += len(f["keypoints"])
            if m is not None:
                measured[k] = m
            if enough_windows(list(measured.values()), len(shares), len(order), blocks, wanted, at, cross, px_m, cfg):
                for k2, job2 in pending:      # running when enough were measured: dropped (the same answer
                    job2.cancel()             # whatever ``threads``)
                for k2 in [k2 for k2, _ in pending] + order[nxt:]:
                    skipped[k2] = SKIP_ENOUGH
                    a.features.pop(k2, None), b.features.pop(k2, None)
                break
            if nxt < len(order):
                pending.append((order[nxt], submit(one, order[nxt])))
                nxt += 1
    a.valid_share = b.valid_share = float(np.mean(shares)) if shares else 0.0
    return a, b, measured, skipped


@contextlib.contextmanager
def window_runner(threads: int):
    """``submit(fn, *args)`` → a future: run in this thread (``threads`` 1), else in a pool of
    ``threads`` threads, each with one torch and one OpenCV thread (the process's ``threads``
    spent as whole windows side by side, not split inside each operation: no thread waits on
    another's share of a core, so one busy core elsewhere slows it no more than one thread);
    torch's and OpenCV's thread counts are restored after."""
    if threads <= 1:
        from concurrent.futures import Future

        def now(fn, *args):
            f = Future()
            f.set_result(fn(*args))
            return f
        yield now
        return
    import cv2
    from concurrent.futures import ThreadPoolExecutor

    before_cv = cv2.getNumThreads()
    cv2.setNumThreads(1)
    # each window's thread on one torch thread, now or when torch loads (the learned path of
    # sift-first loads where SIFT first does not verify: ``utils.pin_thread``)
    pool = ThreadPoolExecutor(threads, thread_name_prefix="window", initializer=pin_thread, initargs=(1,))
    try:
        yield pool.submit
    finally:
        # a window still running is not waited for (its result is dropped: ``measure_in_rounds``)
        pool.shutdown(wait=False, cancel_futures=True)
        torch_threads()           # this thread's count, as it was given (a pool thread may have loaded torch)
        cv2.setNumThreads(before_cv)


def cross_date_pair(a: DateFeatures, b: DateFeatures) -> bool:
    """Whether the pair is two acquisitions (dates that differ, or not known to be the same), a
    date resampled onto the grid (another CRS or pixel size), or one acquisition delivered on two
    MGRS tiles (each tile orthorectified and resampled on its own: the issue's same acquisition
    on two tiles was 0.47 m apart at σ 0.05 m): what the ``sigma_cross_date_m`` floor stands for.
    Two files of one acquisition on one tile and grid are not."""
    tiles = [mgrs_tile(d.location) for d in (a, b)]
    other_tile = all(tiles) and tiles[0] != tiles[1]
    return a.date != b.date or a.location.warp or b.location.warp or other_tile


def mgrs_tile(location: DateLocation) -> str:
    """The MGRS tile (``T32TPN``) a date's name or path carries, or ''."""
    found = re.search(r"(?:^|[_./\\-])T?(\d{2}[C-X][A-Z]{2})(?=[_./\\-]|$)", f"{location.name}/{location.path}")
    return found.group(1) if found else ""


def pair_standard_error(shifts: np.ndarray, se: np.ndarray, learned: np.ndarray | None, cfg: CoregisterConfig,
                        *, cross_date: bool, px_m: float) -> tuple[np.ndarray, np.ndarray | None]:
    """The pair's standard error per axis (2,) px from its used windows' shifts (N, 2), their own
    standard errors (N, 2) and their learned estimates (N, 2, the tie points' medians; None: not
    known); and the gap (2,) between the tie points' and the dense estimate where they disagree
    beyond their noise (else None). ``px_m``: metres per grid px.

    * the median's error: from the windows' spread where there are enough of them to tell (4),
      never below what the windows' own errors allow, nor ``sigma_floor_px``; times ``sigma_scale``;
    * two acquisitions (``cross_date``): ``sigma_cross_date_m`` added in quadrature — what the
      model cannot see between two dates (radiometric and landscape differences pulling the
      estimate, resampling). In metres: at ~107 m px loops closed without it, at 10 m they needed
      it (docs/benchmarks.md "σ calibration");
    * the learned and the dense estimate ``sigma_disagreement`` times their noise apart or more:
      σ widened to ``sigma_disagreement_share`` × the gap on that axis at least (half: both
      within 2σ)."""
    n = len(shifts)
    med = np.median(shifts, axis=0)
    spread = geo.MAD_TO_SIGMA * np.median(np.abs(shifts - med), axis=0) if n > 2 else np.abs(shifts - med).max(0)
    own = MEDIAN_SE * np.sqrt(np.mean(se ** 2, axis=0) / n)
    between = MEDIAN_SE * spread / np.sqrt(n) if n >= 4 else np.zeros(2)
    base = np.maximum(np.maximum(own, between), cfg.sigma_floor_px)
    total = cfg.sigma_scale * base
    if cross_date:
        total = np.hypot(total, cfg.sigma_cross_date_m / px_m)
    if learned is None or not len(learned):
        return total, None
    gap = np.median(learned, axis=0) - med
    # the noise of their difference: at most √2 × the windows' (the two share the windows' content)
    if not (np.abs(gap) > cfg.sigma_disagreement * np.sqrt(2) * base).any():
        return total, None
    return np.maximum(total, cfg.sigma_disagreement_share * np.abs(gap)), gap


def estimates_disagree_warning(used: list[WindowMeasure], med: np.ndarray, gap: np.ndarray, total: np.ndarray,
                               px_m: float, cfg: CoregisterConfig) -> str:
    """One line: the dense estimate (reported) and the tie points' median, how far apart, the
    widened σ, and which to trust: the dense fit where it correlates well over the windows it
    refined (it follows a move of all pixels both dates show; the tie points are drawn by which
    keypoints the content gave), else the tie points' median."""
    corr = [abs(m.correlation) for m in used if m.refined and m.correlation is not None]
    r = float(np.median(corr)) if corr else 0.0
    trust = (f"trust the dense estimate (reported; its fit correlates at {r:.2f})" if r >= cfg.dense_trust_correlation
             else f"trust the tie points' median rather (the dense fit correlates at only {r:.2f})")
    dense, tie = med, med + gap
    sigma = float(np.sqrt(np.mean(total ** 2))) * px_m
    return (f"the dense estimate and the tie points' median differ by {np.hypot(*gap) * px_m:.2f} m, beyond their "
            f"noise ({plural(len(used), 'window')}; on the reference grid, px right and down: dense "
            f"({dense[0]:+.3f}, {dense[1]:+.3f}), tie points ({tie[0]:+.3f}, {tie[1]:+.3f})): σ widened to "
            f"{sigma:.2f} m to cover both; {trust}")


# ----------------------------------------------------------------------------- metres
def pixel_shifts_in_metres(grid: dp.Grid, at_px: np.ndarray, shifts_px: np.ndarray) -> tuple[np.ndarray, object]:
    """Displacements ``shifts_px`` (N, 2) of the grid's pixels ``at_px`` in metres, x east, y north
    (``geo.displacements_in_metres``); and the metric CRS."""
    at_px = np.asarray(at_px, np.float64).reshape(-1, 2)
    return geo.displacements_in_metres(geo.pixel_to_map(at_px, grid.transform),
                                       geo.pixel_to_map(at_px + np.asarray(shifts_px).reshape(-1, 2), grid.transform),
                                       grid.crs)


def metres_per_px(grid: dp.Grid) -> float:
    centre = np.array([[grid.width / 2, grid.height / 2]])
    return float(np.linalg.norm(pixel_shifts_in_metres(grid, centre, [[1.0, 0.0]])[0][0]))


def correction_in_crs(grid: dp.Grid, shift_px, crs, at_px=None) -> np.ndarray:
    """The vector (in ``crs``'s units) that moves a date's georeference onto the reference: the
    negative of its displacement ``shift_px`` on the reference grid, expressed in the date's own
    CRS at ``at_px`` (default the grid's centre) — a date on another UTM zone is moved by the
    same ground vector, not by the reference CRS's numbers."""
    at = np.array([at_px if at_px is not None else [grid.width / 2, grid.height / 2]], np.float64)
    p0 = geo.pixel_to_map(at, grid.transform)
    p1 = geo.pixel_to_map(at + np.asarray(shift_px, np.float64), grid.transform)
    q0, q1 = (geo.reproject_points(p, grid.crs, crs) for p in (p0, p1))
    return -(q1 - q0)[0]


# ----------------------------------------------------------------------------- provenance
def software_version() -> dict:
    """The project's version and, in a git checkout, its commit (``+dirty`` with local edits)."""
    out = {"name": config.PROJECT_NAME, "version": config.VERSION}
    root = config.CHECKOUT
    if root is not None and (root / ".git").exists():
        try:
            commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                    timeout=5).stdout.strip()
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            if commit:
                out["commit"] = commit + ("+dirty" if dirty else "")
        except (OSError, subprocess.SubprocessError):
            pass
    return out


def input_label(date) -> str:
    """A date's input as one string: its absolute path (a list of band files: each of them, joined
    by ``;``); a URL as it is."""
    if isinstance(date, (list, tuple)):
        return ";".join(input_label(p) for p in date)
    if isinstance(date, dp.ItemRef):
        return str(date) if remote.is_remote(date.base) else f"{Path(date.base).resolve()}#{date.id}"
    return str(date) if remote.is_remote(date) or "://" in str(date) else str(Path(date).resolve())


def provenance(inputs: list, cfg: CoregisterConfig, **settings) -> dict:
    """What made a result: software, settings, inputs, time (for the JSON and the COG tags)."""
    return {**software_version(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "inputs": [input_label(p) for p in inputs],
            "settings": {**config.as_dict(cfg), **settings}}


def pipeline_device(pipeline) -> str | None:
    """The device a matching pipeline's learned models run on (``cpu``, ``cuda:0``), for the
    provenance; None where none does."""
    for part in (pipeline, getattr(pipeline, "fallback", None)):
        if getattr(part, "loaded", True) is False:     # sift-first's learned path, never needed
            continue
        device = getattr(getattr(part, "extractor", None), "device", None)
        if device is not None:
            return str(device)
    return None


def provenance_tags(prov: dict, **extra) -> dict:
    """Provenance as GeoTIFF metadata tags (``gdalinfo`` / ``rio info --tags`` show them)."""
    tags = {"SOFTWARE": f"{prov['name']} {prov['version']}" + (f" ({prov['commit']})" if prov.get("commit") else ""),
            "PROCESSING_TIME": prov["created"], "COREGISTRATION_SETTINGS": json.dumps(prov["settings"]),
            "COREGISTRATION_INPUTS": json.dumps(prov["inputs"])}
    tags.update({k.upper(): v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()})
    return tags


# ----------------------------------------------------------------------------- outputs
class OutputFolder:
    """A result folder written as a whole, by one run at a time. Files of others in it are never touched.

    * ``check``: one line when the folder cannot be made or written, before any work.
    * ``locked``: this run is the folder's only writer for the block (``LOCK_NAME``, an ``flock``
      that dies with its process: a killed run's lock is taken over by the next); a second run
      into the folder is refused at once with one line naming its holder (pid, host, start,
      command line: the lock file's text). The file is removed as the lock is let go; a killed
      run's stays, naming it, until the next run takes it over. The leftovers of killed runs are
      removed when the lock is taken (``clean``).
    * ``building``: a fresh folder to write a result into (``RESULTS/<run>``); when the block ends
      without an error the result is **published all at once**: every name of ``owned`` at the
      top of the folder is a relative link ``name -> .results/current/name``, and ``current`` (a
      link to the run's folder) is replaced atomically (``os.replace`` of a new link onto it) —
      a reader sees the earlier result or the new one, whole, never a mix or a part; links the
      new result adds are made before the switch (pointing at nothing until then), those it
      lacks removed after it, and the earlier result's folder after that (Ctrl-C is held off
      meanwhile: ``interrupts_held``; a kill leaves what ``clean`` removes). The links are
      relative, so the folder may be moved or copied as a whole (``cp -a``, ``tar``); a file
      opened through a link stays readable while the result is replaced. A reader that wants
      two files of one result (``shifts.csv`` and ``stack.json``) while a rerun may switch it
      reads them under ``.results/current`` resolved once (``os.path.realpath``).

    Where the file system refuses symbolic links (some network and FAT file systems), the result
    is moved in name by name instead, the earlier one's JSON removed first and the new one's
    written last (``JSON_NAMES``): a reader then may see a part of the new result for a moment,
    but never a JSON of a result that is not whole. A real file or folder of ours at a top-level
    name (an older version of this tool wrote them so) is replaced by its link, the JSON first
    (its result then disappears before the new one appears: once, at the first run of this
    version).

    ``flock`` is honoured between processes of one machine on local file systems; on NFS it holds
    across machines only where the mount has locking (NFSv4, or NFSv3 with lockd; not
    ``nolock``), and on file systems that ignore it two runs are not kept apart: there run one at
    a time into a folder. Where the lock cannot be taken at all (ENOLCK, EOPNOTSUPP) the run goes
    on unlocked and says so in one line."""

    def __init__(self, folder: str | Path, owned: tuple[str, ...]):
        self.folder = Path(folder).resolve()
        self.owned = owned

    def check(self) -> "OutputFolder":
        """One line (a ``PipelineError``) when the folder cannot be made or written; creates
        nothing (a probe file in the nearest existing folder is removed at once)."""
        existing = self.folder
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        try:
            if not existing.is_dir():
                raise NotADirectoryError(20, f"{existing} is not a folder")
            fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=existing)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise PipelineError(f"{self.folder}: cannot write there ({exc.strerror or exc}); choose another "
                                "output=") from None
        return self

    # ------------------------------------------------------------------ one writer
    @contextlib.contextmanager
    def locked(self):
        """The folder locked for this run for the block (made when missing: removed again when
        the block leaves it empty); the leftovers of killed runs removed first. Re-entrant in one
        thread (``coregister_dataarray`` holds it around ``coregister_stack``); another thread
        or process is refused with a ``PipelineError`` naming the holder."""
        held = _HELD.get(self.folder)
        if held is not None:
            if held["thread"] != threading.get_ident():
                raise PipelineError(self._busy_line(held["holder"]))
            held["depth"] += 1
            try:
                yield self
            finally:
                held["depth"] -= 1
            return
        self.check()
        made = []                                   # the folders this run creates, innermost last
        p = self.folder
        while not p.exists() and p != p.parent:
            made.append(p)
            p = p.parent
        self.folder.mkdir(parents=True, exist_ok=True)
        holder = _holder_text()
        try:
            fd = self._take_lock(holder)
        except BaseException:
            _remove_empty(made)
            raise
        _HELD[self.folder] = {"thread": threading.get_ident(), "depth": 1, "holder": holder}
        try:
            self.claim()
            self.clean()
            yield self
        finally:
            del _HELD[self.folder]
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.unlink(self.folder / LOCK_NAME)     # while still held: see _take_lock
                os.close(fd)
            _remove_empty(made)

    def _take_lock(self, holder: str) -> int | None:
        """The lock file's descriptor, locked (``flock``, exclusive, not waiting) and holding
        ``holder``; None where the file system cannot lock. A holder removes the file as it lets
        go: a lock taken on a file no longer at its path is let go and taken again."""
        try:
            import fcntl
        except ImportError:                         # not a POSIX system
            return self._unlocked("this system has no flock")
        path = self.folder / LOCK_NAME
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                text = _read_holder(fd)
                os.close(fd)
                raise PipelineError(self._busy_line(text)) from None
            except OSError as exc:                  # ENOLCK, EOPNOTSUPP: this file system cannot lock
                os.close(fd)
                with contextlib.suppress(OSError):
                    path.unlink()
                return self._unlocked(exc.strerror or str(exc))
            try:
                here = os.stat(path)
                mine = os.fstat(fd)
                same = (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino)
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, holder.encode("utf-8", "replace"))
        return fd

    def _unlocked(self, why: str) -> None:
        print(f"warning: {self.folder}: cannot be locked ({why}); another run into it at the same time is not "
              "kept apart", file=sys.stderr)
        return None

    def _busy_line(self, holder: str) -> str:
        return (f"{self.folder}: another run is writing there ({holder or 'its holder not yet named'}); wait for it "
                "to end, or give another output folder")

    # ------------------------------------------------------------------ leftovers
    def claim(self) -> None:
        """Refuse a folder whose files at our names are not ours: a real file or folder at one of
        ``owned`` (``items/``, ``report.png`` …) where no result of ours was ever published (no
        ``RESULTS`` folder, no JSON of ours beside it) is the user's, and publishing would
        delete it — one line naming them instead."""
        top = self.folder
        if (top / RESULTS).is_dir() or any((top / n).is_file() for n in JSON_NAMES if n in self.owned):
            return
        foreign = sorted(n for n in self.owned if (top / n).exists() and not (top / n).is_symlink())
        if foreign:
            shown = ", ".join(n + ("/" if (top / n).is_dir() else "") for n in foreign[:5])
            raise PipelineError(f"{top}: holds {shown}, which this tool did not write (no result of ours is "
                                "there), and a result would replace them; choose another output folder, or move "
                                "them")

    def clean(self) -> list[Path]:
        """Remove what killed runs left in the folder (only ever while holding the lock): hidden
        build folders (``.building.*``), results that are not ``current``, half-made links,
        the temporary files of atomic writes (``utils.atomic_path``: ``.<stem>.<random>.part<suffix>``)
        of our names and in ``cache/``, and links of ours that point at nothing. Returns what
        was removed."""
        gone = []
        top = self.folder
        results = top / RESULTS
        stems = {Path(n).stem for n in self.owned}
        for p in list(top.iterdir()) if top.is_dir() else []:
            n = p.name
            ours = (n.startswith((".building.", ".write-check.", LINK_TEMP))
                    or (n.startswith(".") and ".part" in n and n[1:].split(".")[0] in stems))
            if ours:
                gone.append(p)
            elif n in self.owned and p.is_symlink() and not p.exists() \
                    and os.readlink(p) == _link_target(n):       # a link of ours whose result lacks it
                gone.append(p)
        if results.is_dir():
            live = _current_run(results)
            gone += [p for p in results.iterdir() if p.name not in (CURRENT, live)]
        cache = top / "cache"
        if cache.is_dir():
            gone += [p for p in cache.rglob(".*") if ".part" in p.name and (p.is_file() or p.is_symlink())]
        for p in gone:
            _remove(p)
        return gone

    # ------------------------------------------------------------------ publishing
    @contextlib.contextmanager
    def building(self):
        """Yield a fresh folder to write the whole result into; when the block ends without an
        error it is published (see the class): on an error or an interrupt it is removed and
        the earlier result stands. Holds the lock (``locked``) for the block."""
        with self.locked():
            results = self.folder / RESULTS
            results.mkdir(exist_ok=True)
            run = Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%dT%H%M%S-", time.gmtime()), dir=results))
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(run, 0o777 & ~umask)                 # mkdtemp's folder is private
            try:
                yield run
                with interrupts_held():
                    if self._links_work(results):
                        self._switch(run)
                    else:
                        self._move_in(run)
            finally:
                if _current_run(results) != run.name:     # not published (an error, an interrupt): removed
                    shutil.rmtree(run, ignore_errors=True)
                with contextlib.suppress(OSError):
                    results.rmdir()                       # where it holds nothing

    def _links_work(self, results: Path) -> bool:
        probe = results / f"{LINK_TEMP}probe.{os.getpid()}"
        try:
            os.symlink(CURRENT, probe)
        except OSError:
            return False
        probe.unlink()
        return True

    def _switch(self, run: Path) -> None:
        """Publish ``run`` by links (see the class)."""
        top, results = self.folder, self.folder / RESULTS
        has = {n for n in self.owned if (run / n).exists()}
        for n in sorted(self.owned, key=lambda n: n not in JSON_NAMES):    # an older version's real files: JSON first
            p = top / n
            if not p.is_symlink() and p.exists():
                _remove(p)
        for n in sorted(has):                       # the new result's names, pointing at nothing until the switch
            if not ((top / n).is_symlink() and os.readlink(top / n) == _link_target(n)):
                _replace_link(_link_target(n), top / n)
        earlier = _current_run(results)
        _replace_link(run.name, results / CURRENT)  # the switch: one rename
        try:                                        # tidying: what fails here, the next run's clean() does
            for n in self.owned:                    # the names it lacks (now pointing at nothing)
                p = top / n
                if n not in has and p.is_symlink():
                    p.unlink()
            if earlier and earlier != run.name:
                _remove(results / earlier)
        except OSError:
            pass

    def _move_in(self, run: Path) -> None:
        """Publish ``run`` where links cannot be made: the earlier result removed (its JSON first),
        the new one moved in (its JSON last)."""
        for n in sorted(self.owned, key=lambda n: n not in JSON_NAMES):
            p = self.folder / n
            if p.is_symlink() or p.exists():
                _remove(p)
        results = self.folder / RESULTS
        earlier = _current_run(results)             # a result published by links before: gone too
        _remove(results / CURRENT)
        if earlier and earlier != run.name:
            _remove(results / earlier)
        for p in sorted(run.iterdir(), key=lambda q: q.name in JSON_NAMES):
            os.replace(p, self.folder / p.name)


def one_writer(fn):
    """``fn`` run as its output folder's one writer (``OutputFolder.locked``) when its ``output``
    argument is given: the public calls that write results (``coregister.coregister``,
    ``stack.coregister_stack``, ``stack.coregister_dataarray``) hold the lock from before any work
    to their last write (a stack's cache pruned), from the command line and from Python alike."""
    import functools
    import inspect

    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def run(*args, **kwargs):
        output = signature.bind_partial(*args, **kwargs).arguments.get("output")
        if output is None:
            return fn(*args, **kwargs)
        with OutputFolder(output, RESULT_NAMES).locked():
            return fn(*args, **kwargs)
    return run


LOCK_NAME = ".coregister.lock"      # in an output folder: the flock of its one writer, naming it
RESULTS = ".results"                # in an output folder: each published result's folder, and ``current``
CURRENT = "current"                 # .results/current -> the published result's folder
LINK_TEMP = ".link-tmp."            # a link made beside the one it replaces, then renamed onto it
JSON_NAMES = ("coregistration.json", "stack.json")      # what says a result is whole: removed first, written last
_HELD: dict = {}                    # this process's locked output folders → thread, depth, holder


def _link_target(name: str) -> str:
    return f"{RESULTS}/{CURRENT}/{name}"


def _current_run(results: Path) -> str | None:
    """The name of the run folder ``results/current`` points at, or None."""
    try:
        return os.readlink(results / CURRENT)
    except OSError:
        return None


def _replace_link(target: str, path: Path) -> None:
    """``path`` made (or replaced, atomically) a symbolic link to ``target``."""
    tmp = path.with_name(f"{LINK_TEMP}{path.name}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    if path.is_dir() and not path.is_symlink():     # a copy that followed the links (shutil.copytree,
        shutil.rmtree(path)                          # cp -rL) made it a folder: a rename cannot replace it
    os.symlink(target, tmp)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _remove_empty(folders: list[Path]) -> None:
    """The folders a run made, where it left them empty (innermost first)."""
    for p in folders:
        try:
            p.rmdir()
        except OSError:
            return


def _holder_text() -> str:
    """Who holds a lock: pid, host, start time (UTC), command line — one line."""
    import shlex
    import socket

    command = shlex.join([Path(sys.executable).name, *sys.argv]) if sys.argv and sys.argv[0] else "python"
    command = " ".join(command.split())
    if len(command) > 300:
        command = command[:297] + "…"
    return (f"pid {os.getpid()} on {socket.gethostname()} since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}: {command}")


def _read_holder(fd: int) -> str:
    try:
        return os.pread(fd, 2000, 0).decode("utf-8", "replace").strip().splitlines()[0]
    except (OSError, IndexError):
        return ""


@contextlib.contextmanager
def interrupts_held():
    """Ctrl-C (SIGINT) held off while the block runs (publishing a result: milliseconds): an
    interrupt then does not leave it half done; one that came meanwhile is dropped — the block
    is the run's last step, and it finished. Only in the main thread (signals are delivered
    there); elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda *_: None)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def write_moved(src_path: str | Path, out: Path, move, tags: dict | None = None) -> Path:
    """A raster with its georeference moved by ``move`` (its own CRS's units) and its pixels
    untouched, as a Cloud-Optimized GeoTIFF with ``tags`` (written atomically), block by block."""
    import rasterio
    import rasterio.shutil
    from rasterio.transform import Affine

    plain = out.with_name(f".{out.stem}.plain.tif")
    try:
        with dp.open_raster(src_path) as src:
            profile = {**src.profile, "driver": "GTiff", "transform": Affine.translation(*move) * src.transform,
                       "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate",
                       "BIGTIFF": "IF_SAFER"}
            profile.pop("photometric", None)
            with rasterio.open(plain, "w", **profile) as dst:
                for _, win in dst.block_windows(1):
                    dst.write(src.read(window=win), window=win)
                dst.descriptions = src.descriptions
                dst.update_tags(**src.tags())
                if tags:
                    dst.update_tags(**tags)
        with atomic_path(out) as tmp:
            rasterio.shutil.copy(plain, tmp, driver="COG", compress="deflate")
    finally:
        plain.unlink(missing_ok=True)
    return out


def write_moved_vrt(dataset, location, out: Path, transform) -> Path:
    """A GDAL VRT of the open ``dataset`` at ``location`` (a path or URL, referenced by its absolute
    location: no pixel is copied or resampled) whose georeference is ``transform``: any GDAL-based
    reader (rasterio, odc-stac, stackstac, QGIS) opening it gets the date with its correction."""
    import xml.etree.ElementTree as ET

    import rasterio.shutil

    source = remote.gdal_path(location) if remote.is_remote(location) else str(Path(location).resolve())
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        rasterio.shutil.copy(dataset, tmp, driver="VRT")
        tree = ET.parse(tmp)
        root = tree.getroot()
        geo_transform = root.find("GeoTransform")
        if geo_transform is None:
            geo_transform = ET.SubElement(root, "GeoTransform")
        geo_transform.text = ", ".join(repr(float(v)) for v in (transform.c, transform.a, transform.b, transform.f,
                                                               transform.d, transform.e))
        for name in root.iter("SourceFilename"):        # absolute: the VRT may be moved
            name.text, name.attrib["relativeToVRT"] = source, "0"
        tree.write(tmp)
    return out


def footprint_lonlat(path: str | Path, transform=None) -> tuple[dict, list[float], dict]:
    """A raster's footprint as a GeoJSON polygon in lon/lat, its bbox, and its ``proj:`` fields
    (with ``transform`` instead of its own when given)."""
    with dp.open_raster(path) as src:
        return footprint(src.width, src.height, src.crs, transform or src.transform)


def footprint(w: int, h: int, crs, t) -> tuple[dict, list[float], dict]:
    """A raster of ``w`` × ``h`` px on ``t`` in ``crs``: its footprint polygon in lon/lat, bbox and
    ``proj:`` fields (see ``footprint_lonlat``)."""
    edge = np.linspace(0, 1, 11)[:-1]            # each side without its last corner: a closed ring
    ring = np.concatenate([np.stack([edge * w, np.zeros_like(edge)], -1), np.stack([np.full_like(edge, w), edge * h], -1),
                           np.stack([(1 - edge) * w, np.full_like(edge, h)], -1),
                           np.stack([np.zeros_like(edge), (1 - edge) * h], -1)])
    xy = np.stack(t * (ring[:, 0], ring[:, 1]), -1)
    ll = geo.reproject_points(xy, crs, "EPSG:4326")
    coords = [[round(float(x), 7), round(float(y), 7)] for x, y in ll]
    coords.append(coords[0])
    bbox = [float(ll[:, 0].min()), float(ll[:, 1].min()), float(ll[:, 0].max()), float(ll[:, 1].max())]
    proj = {"proj:shape": [h, w], "proj:transform": [float(v) for v in tuple(t)[:6]]}
    epsg = crs.to_epsg()
    proj.update({"proj:epsg": epsg} if epsg else {"proj:wkt2": crs.to_wkt()})
    return {"type": "Polygon", "coordinates": [coords]}, bbox, proj


def stac_datetime(date: str) -> str | None:
    """A date's STAC ``datetime`` (YYYY-MM-DDT00:00:00Z), or None where ``date`` is not a date
    (``acquisition_date`` found none: the Item would not validate, so none is written)."""
    d = parse_date(date) if re.fullmatch(r"\d{8}", str(date or "")) else ""
    return f"{d[:4]}-{d[4:6]}-{d[6:8]}T00:00:00Z" if d else None


def undated_line(source, name: str) -> str:
    """The one line said where a date gets no STAC Item (no acquisition date is known)."""
    return f"{source}: no STAC Item written: its acquisition date is not known (give --date {name}=YYYY-MM-DD)"


def stac_item(item_id: str, date: str, cog, source: str, properties: dict, footprint=None) -> dict:
    """A STAC Item (1.0, projection extension) for a corrected COG: geometry, bbox and ``proj:``
    fields of the corrected raster (or ``footprint``'s, as ``footprint()`` gives them), a link to
    what it was made from, ``cog`` as its ``data`` asset (replaced by the caller when None). A date
    that is not known raises ``PipelineError`` (one line; the writers print it and go on): pystac
    refuses an Item without ``datetime`` or ``start_datetime`` and ``end_datetime``."""
    when = stac_datetime(date)
    if when is None:
        raise PipelineError(undated_line(source, remote.stem_of(str(source))))
    geometry, bbox, proj = footprint or footprint_lonlat(cog)
    links = [{"rel": "derived_from", "href": str(source) if "://" in str(source) else Path(source).resolve().as_uri()}]
    return {"type": "Feature", "stac_version": "1.0.0",
            "stac_extensions": ["https://stac-extensions.github.io/projection/v1.1.0/schema.json",
                                "https://stac-extensions.github.io/processing/v1.2.0/schema.json"],
            "id": item_id, "geometry": geometry, "bbox": bbox,
            "properties": {"datetime": when, **proj, **properties},
            "links": links,
            "assets": {} if cog is None else {"data": {"href": remote.name_of(cog), "roles": ["data"],
                                "type": "image/tiff; application=geotiff; profile=cloud-optimized"}}}


def safe_name(text: str) -> str:
    """A file name made from an outside name (an id, a date, a file stem): letters, digits and
    ``._-`` only, never a path."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._") or "date"
    return name[:120]


def write_csv(path: Path, rows: list[dict], fields: list[str] | None = None) -> None:
    import csv

    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields or (list(rows[0]) if rows else []))
            writer.writeheader()
            writer.writerows(rows)
