"""Real sample inputs for tests and benchmarks: realistic Sentinel-2 ``.SAFE`` products and the
shipped Pisa sample as a grey image.

Real metadata (``tests/data/safe_metadata``: unmodified ``MTD_MSIL1C.xml`` of baseline
05.10, ``MTD_MSIL2A.xml`` of baseline 05.10, a trimmed granule ``MTD_TL.xml``) and real
pixels (OSCD Pisa 10 m bands, tile 18SVG 20 m / 60 m bands) written as JPEG 2000 with
rasterio's JP2OpenJPEG driver, in the layout of ``manifest.safe``.
"""
from __future__ import annotations

import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

import s2coreg.config as config

DATA = config.ROOT / "tests" / "data"
META = DATA / "safe_metadata"
SAMPLE = config.ROOT / "data" / "sample" / "pisa"  # real OSCD pixels
# tile T30NWM: UTM zone 30N; the fixture's upper-left corner in map coordinates
CRS = "EPSG:32630"
ULX, ULY = 499980.0, 600000.0

L1C_ID = "S2A_MSIL1C_20240101T102431_N0510_R065_T30NWM_20240101T122107"
L1C_GRANULE = "L1C_T30NWM_A044535_20240101T102736"
L1C_PREFIX = "T30NWM_20240101T102431"
L2A_ID = "S2B_MSIL2A_20231217T135659_N0510_R067_T21JUK_20231217T175625"
L2A_GRANULE = "L2A_T21JUK_A035414_20231217T140918"
L2A_PREFIX = "T21JUK_20231217T135659"

BANDS_10M = ("B02", "B03", "B04", "B08")


def write_jp2(path: Path, data: np.ndarray, res: float, ulx: float = ULX, uly: float = ULY,
              crs: str = CRS, **options) -> None:
    """A single-band uint16 JPEG 2000 file as ESA writes them (lossless, several resolution levels)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.asarray(data)
    count = 1 if data.ndim == 2 else data.shape[0]
    opts = {"QUALITY": "100", "REVERSIBLE": "YES", "RESOLUTIONS": "4", "YCBCR420": "NO"}
    opts.update(options)
    with rasterio.open(path, "w", driver="JP2OpenJPEG", width=data.shape[-1], height=data.shape[-2], count=count,
                       dtype=data.dtype, crs=crs, transform=from_origin(ulx, uly, res, res), **opts) as dst:
        dst.write(data if data.ndim == 3 else data[None])


def real_pixels(size10: int = 320, date: str = "imgs_1") -> dict[str, np.ndarray]:
    """Real L1C digital numbers: 10 m bands from the shipped Pisa sample (OSCD), 20 m from 18SVG B11, 60 m from B01."""
    out = {}
    for band in BANDS_10M:
        with rasterio.open(SAMPLE / date / f"{band}.tif") as src:
            out[band] = src.read(1)[:size10, :size10]
    with rasterio.open(DATA / "jp2_18SVG" / "s2_B11.tif") as src:
        b11 = src.read(1)[: size10 // 2, : size10 // 2]
    with rasterio.open(DATA / "jp2_18SVG" / "s2_B01.tif") as src:
        b01 = src.read(1)[: size10 // 6, : size10 // 6]
    for band in ("B05", "B06", "B07", "B8A", "B11", "B12"):
        out[band] = b11
    for band in ("B01", "B09", "B10"):
        out[band] = b01
    return out


def _resolution(band: str) -> int:
    return 10 if band in BANDS_10M else 60 if band in ("B01", "B09", "B10") else 20


def make_l1c(root: Path, pixels: dict[str, np.ndarray] | None = None, baseline: str = "05.10",
             date: str = "20240101", add_offset: bool = True, bands=None, zip_it: bool = False,
             jp2_options: dict | None = None) -> Path:
    """A Level-1C ``.SAFE`` with real metadata.

    ``baseline`` < 04.00 removes the offset list from the metadata (as in older products),
    and ``add_offset`` adds +1000 to the stored DN as baseline >= 04.00 products do.
    ``date`` (YYYYMMDD) changes the sensing date in the product id and metadata.
    """
    pixels = pixels if pixels is not None else real_pixels()
    bands = bands or list(pixels)
    pid = L1C_ID.replace("20240101T", f"{date}T").replace("N0510", f"N{baseline.replace('.', '')}")
    safe = root / f"{pid}.SAFE"
    granule = safe / "GRANULE" / L1C_GRANULE.replace("20240101T", f"{date}T")
    prefix = L1C_PREFIX.replace("20240101T", f"{date}T")
    xml = (META / "L1C_T30NWM_N0510_MTD_MSIL1C.xml").read_text()
    xml = xml.replace("20240101T", f"{date}T").replace("2024-01-01T", f"{date[:4]}-{date[4:6]}-{date[6:]}T")
    xml = xml.replace("N0510", f"N{baseline.replace('.', '')}").replace(
        "<PROCESSING_BASELINE>05.10<", f"<PROCESSING_BASELINE>{baseline}<")
    if tuple(int(x) for x in baseline.split(".")) < (4, 0):
        xml = re.sub(r"\s*<Radiometric_Offset_List>.*?</Radiometric_Offset_List>", "", xml, flags=re.S)
    safe.mkdir(parents=True)
    (safe / "MTD_MSIL1C.xml").write_text(xml)
    tl = (META / "TL_T23LLF_N0207_MTD_TL.xml").read_text().replace("T23LLF", "T30NWM")
    tl = re.sub(r"<SENSING_TIME([^>]*)>[^<]*<", rf"<SENSING_TIME\1>{date[:4]}-{date[4:6]}-{date[6:]}T10:27:36.024Z<", tl)
    granule.mkdir(parents=True)
    (granule / "MTD_TL.xml").write_text(tl)
    for band in bands:
        dn = pixels[band].astype(np.uint16)
        if add_offset:
            dn = np.where(dn > 0, dn + 1000, 0).astype(np.uint16)
        write_jp2(granule / "IMG_DATA" / f"{prefix}_{band}.jp2", dn, _resolution(band), **(jp2_options or {}))
    # cloud mask of baseline >= 04.00: 3 bands (opaque, cirrus, snow) at 60 m; a cloud in the corner
    n60 = pixels["B04"].shape[0] // 6
    classi = np.zeros((3, n60, n60), np.uint8)
    classi[0, :n60 // 4, :n60 // 4] = 1
    write_jp2(granule / "QI_DATA" / "MSK_CLASSI_B00.jp2", classi, 60, **(jp2_options or {}))
    return _maybe_zip(safe, zip_it)


def make_l2a(root: Path, pixels: dict[str, np.ndarray] | None = None, zip_it: bool = False) -> Path:
    """A Level-2A ``.SAFE`` (baseline 05.10, BOA_ADD_OFFSET -1000) with R10m/R20m/R60m folders,
    the scene classification and the cloud probability mask."""
    pixels = pixels if pixels is not None else real_pixels()
    safe = root / f"{L2A_ID}.SAFE"
    granule = safe / "GRANULE" / L2A_GRANULE
    safe.mkdir(parents=True)
    (safe / "MTD_MSIL2A.xml").write_text((META / "L2A_T21JUK_N0510_MTD_MSIL2A.xml").read_text())
    for band, dn in pixels.items():
        if band == "B10":
            continue  # L2A has no cirrus band
        dn = np.where(dn > 0, dn + 1000, 0).astype(np.uint16)
        res = _resolution(band)
        write_jp2(granule / "IMG_DATA" / f"R{res}m" / f"{L2A_PREFIX}_{band}_{res}m.jp2", dn, res)
        if res == 10:  # L2A also stores 10 m bands resampled at 20 m
            write_jp2(granule / "IMG_DATA" / "R20m" / f"{L2A_PREFIX}_{band}_20m.jp2", dn[::2, ::2], 20)
    n20 = pixels["B04"].shape[0] // 2
    scl = np.full((n20, n20), 4, np.uint8)          # 4 = vegetation
    scl[: n20 // 4, : n20 // 4] = 9                  # 9 = cloud high probability
    write_jp2(granule / "IMG_DATA" / "R20m" / f"{L2A_PREFIX}_SCL_20m.jp2", scl, 20)
    prob = np.zeros((n20, n20), np.uint8)
    prob[: n20 // 4, : n20 // 4] = 90
    write_jp2(granule / "QI_DATA" / "MSK_CLDPRB_20m.jp2", prob, 20)
    return _maybe_zip(safe, zip_it)


def _maybe_zip(safe: Path, zip_it: bool) -> Path:
    if not zip_it:
        return safe
    archive = safe.with_suffix(".zip")
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for p in sorted(safe.rglob("*")):
            zf.write(p, p.relative_to(safe.parent).as_posix())
    shutil.rmtree(safe)
    return archive


def sample_gray(date: str = "imgs_1") -> np.ndarray:
    """Real 512×512 grey image of the Pisa sample (float32, DN)."""
    from s2coreg.io.imaging import to_gray

    bands = []
    for band in ("B04", "B03", "B02"):
        with rasterio.open(SAMPLE / date / f"{band}.tif") as src:
            bands.append(src.read(1).astype(np.float32))
    return to_gray(np.stack(bands, -1))
