"""The reading library: Sentinel-2 products recognised and described, and their bands read onto a grid.

``find_products`` (a ``.SAFE`` folder or zip, L1C/L2A, plain GeoTIFF / JP2 band files, STAC Items
and ItemCollections, local or by URL; ``search_items`` for a STAC API), ``open_safe``,
``open_stac_item`` / ``item_product``, ``open_band_files``, ``is_safe`` → ``Product`` (band files,
masks, no-data policy, radiometry); band names (``normalise_bands``, ``canonical_band_name``); a
product's bands onto a ``Grid``: ``reference_grid``, ``render`` / ``render_masks`` (windowed,
decimated reads, resampled in memory where needed, normalised). ``Grid``, ``read_to_grid``,
``open_raster`` and ``nodata_value`` — one raster file read onto a grid — live in
``s2coreg.io.grid`` and are read through here too. Stage 1 (``s2coreg.preprocess``),
co-registration, ``ImageMatcher``'s georeference and the benchmarks read through this module.

Radiometry: reflectance = (DN + offset) / QUANTIFICATION_VALUE, with the offset of -1000
that products from processing baseline 04.00 on carry (RADIO_ADD_OFFSET / BOA_ADD_OFFSET),
then clipped to a fixed range (``PreprocessConfig.reflectance_min`` / ``reflectance_max``,
default 0-0.3) and optionally gamma-corrected (``normalise``): the same mapping for every date,
so one place looks alike on all of them.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import s2coreg.config as config
import s2coreg.io.remote as remote
from s2coreg.config import PreprocessConfig
# a grid and a raster file read onto it (GDAL configured on import); pixel_read_error and nodata_value
# read through here too (dp.nodata_value), beside what this module uses
from s2coreg.io.grid import Grid, nodata_value, open_raster, pixel_read_error, read_to_grid  # noqa: F401
from s2coreg.utils import PipelineError

_BAND_RE = re.compile(r"_(B\d[\dA])(?:_(\d\d)m)?\.jp2$")


@dataclass
class Product:
    """One input product: where its band files are and how to turn DN into reflectance."""

    name: str
    source: str                               # path as given (folder, zip or band file)
    level: str                                # "L1C", "L2A" or "raster"
    band_files: dict[str, dict[int, str]]     # band → {resolution m: GDAL path}
    tile_id: str = ""
    sensing_date: str = ""
    product_id: str = ""
    processing_baseline: str = ""
    quantification: float = config.S2_DEFAULT_QUANTIFICATION
    offsets: dict[str, float] = field(default_factory=dict)
    masks: dict[str, str] = field(default_factory=dict)   # "cloud_prob" | "scl" | "classi" → path
    band_index: dict[str, int] = field(default_factory=dict)  # band → 1-based index in a multi-band file
    # No-data value of the band files: "file" = each file's own nodata tag (none when it has no
    # tag), or a number (Sentinel-2 products: 0). One policy for every reader of the product.
    nodata: float | str | None = "file"
    fill: str = ""            # fill the files do not declare, read as no-data (engine.with_nodata)
    # Whose band names the product's own names are ("sentinel-2", or "landsat": Landsat 8/9, whose
    # B5 is the NIR and B8 the panchromatic band). Its bands are keyed by the Sentinel-2 names of
    # the same common name (``LANDSAT_BANDS``), so that ``red`` or ``nir`` pick the same light.
    sensor: str = "sentinel-2"

    def band_path(self, band: str) -> str:
        """The file of ``band`` at its finest resolution."""
        files = self.band_files[band]
        return files[min(files)]


# ----------------------------------------------------------------------------- discovery
@dataclass
class Found:
    """What ``find_products`` found under a path: the products it could open, and for each input
    it could not, ``(source, message)`` (reported, not fatal: a batch goes on past it)."""

    products: list[Product]
    errors: list[tuple[str, str]]

    def __len__(self) -> int:
        return len(self.products) + len(self.errors)


def find_products(path, scale: float = config.S2_DEFAULT_QUANTIFICATION, offset: float = 0.0) -> Found:
    """The products under ``path`` (see ``Found``); a path that holds none is a ``PipelineError``.
    ``path`` may be a URL (``https://``, ``s3://`` …: see ``remote``) of a raster, a STAC Item or an
    ItemCollection, or an ``ItemRef``."""
    if isinstance(path, ItemRef):
        outcomes = [_try_item(path)]
    elif remote.is_remote(path):
        outcomes = _find_remote(str(path), scale, offset)
    else:
        outcomes = _find(Path(path), scale, offset)
    return Found([p for p in outcomes if isinstance(p, Product)], [p for p in outcomes if isinstance(p, tuple)])


def _find_remote(url: str, scale: float, offset: float) -> list:
    suffix = remote.suffix_of(url)
    if suffix in (".zip", ".safe"):
        raise PipelineError(f"{url}: a .SAFE is read from a local copy; download it, or give the product's "
                            "STAC Item URL (its bands are then read as COGs, window by window)")
    if remote.is_raster(url):
        return [_try(open_band_files, [url], scale, offset)]
    return [_try_item(ref) for ref in stac_items(url)]


def _find(path: Path, scale: float, offset: float) -> list:
    if not path.exists():
        raise PipelineError(f"{path}: no such file or folder; pass a .SAFE folder, a zipped .SAFE, "
                            "a folder of them, or GeoTIFF/JP2 band files")
    if is_safe(path):
        return [_try(open_safe, path)]
    if path.is_file() and path.suffix.lower() == ".json":
        return [_try_item(ref) for ref in stac_items(path)]
    # a GDAL VRT named on its own (a mosaic, a band subset, a window an operator built): read as a
    # raster; never picked up from a folder (a stack's items/ are VRTs of ours)
    if path.is_file() and path.suffix.lower() in (".tif", ".tiff", ".jp2", ".vrt"):
        return [_try(open_band_files, [path], scale, offset)]
    if path.is_file():
        raise PipelineError(f"{path}: not a Sentinel-2 product (expected a .SAFE folder, a .zip holding "
                            "one, a .tif/.jp2/.vrt raster or a STAC Item .json)")
    safes = sorted(p for p in path.iterdir() if is_safe(p))
    if safes:
        return [_try(open_safe, p) for p in safes]
    rasters = _rasters(path)
    if rasters:
        return [_try(open_band_files, rasters, scale, offset)]
    # a folder of band-file folders, one per date (e.g. OSCD's imgs_1/, imgs_2/)
    dated = [_try(open_band_files, r, scale, offset) for d in sorted(path.iterdir()) if (r := _rasters(d))]
    if dated:
        return dated
    raise PipelineError(f"{path}: holds no .SAFE product, zipped .SAFE or .tif/.jp2 band file")


def _rasters(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".tif", ".tiff", ".jp2"))


def _try(fn, *args):
    try:
        return fn(*args)
    except PipelineError as exc:       # an input as a line names it: one date's band files by their folder
        source = args[0]
        if isinstance(source, (list, tuple)) and source:
            source = Path(source[0]).parent
        return (str(source), str(exc))


def _try_item(ref: "ItemRef"):
    try:
        return item_product(ref)
    except PipelineError as exc:
        return (str(ref), str(exc))


def is_safe(p: Path) -> bool:
    """Whether ``p`` is a Sentinel-2 ``.SAFE`` product: a folder (named ``.SAFE`` or holding its
    ``MTD_MSIL*.xml``) or a zip (assumed to hold one; ``open_safe`` checks)."""
    if p.is_dir():
        return p.suffix.upper() == ".SAFE" or any(p.glob("MTD_MSIL*.xml"))
    return p.suffix.lower() == ".zip"


def _xml_text(root: ET.Element, tag: str) -> str | None:
    for el in root.iter():
        if el.tag.split("}")[-1] == tag:
            return (el.text or "").strip()
    return None


def _xml_all(root: ET.Element, tag: str) -> list[ET.Element]:
    return [el for el in root.iter() if el.tag.split("}")[-1] == tag]


def open_safe(path: Path) -> Product:
    """Read a Level-1C or Level-2A ``.SAFE`` (folder or zip) without extracting anything."""
    path = Path(path)
    if path.is_file():  # zipped SAFE: files are read in place through GDAL's /vsizip/
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
                mtd = [n for n in names if re.search(r"\.SAFE/MTD_MSIL(1C|2A)\.xml$", n)]
                if not mtd:
                    raise PipelineError(f"{path}: the zip holds no .SAFE product (no MTD_MSIL1C.xml / "
                                        "MTD_MSIL2A.xml); download the full product")
                root = ET.fromstring(zf.read(mtd[0]))
                tl_names = [n for n in names if re.search(r"/GRANULE/[^/]+/MTD_TL\.xml$", n)]
                tile_root = ET.fromstring(zf.read(tl_names[0])) if tl_names else None
        except zipfile.BadZipFile as exc:
            raise PipelineError(f"{path}: not a readable zip ({exc}); download it again") from exc
        except ET.ParseError as exc:
            raise PipelineError(f"{path}: corrupt metadata inside the zip ({exc}); download it again") from exc
        safe_prefix = mtd[0].rsplit("/", 1)[0]
        files = [n[len(safe_prefix) + 1:] for n in names if n.startswith(safe_prefix + "/")]
        gdal_root = f"/vsizip/{path.resolve()}/{safe_prefix}"
    else:
        mtd_files = sorted(path.glob("MTD_MSIL*.xml"))
        if not mtd_files:
            raise PipelineError(f"{path}: no MTD_MSIL1C.xml or MTD_MSIL2A.xml; not a Sentinel-2 .SAFE product")
        try:
            root = ET.parse(mtd_files[0]).getroot()
        except ET.ParseError as exc:
            raise PipelineError(f"{mtd_files[0]}: corrupt product metadata ({exc}); download it again") from exc
        files = [str(p.relative_to(path)).replace("\\", "/") for p in path.rglob("*") if p.is_file()]
        gdal_root = str(path.resolve())
        tl_files = sorted(path.glob("GRANULE/*/MTD_TL.xml"))
        try:
            tile_root = ET.parse(tl_files[0]).getroot() if tl_files else None
        except ET.ParseError as exc:
            raise PipelineError(f"{tl_files[0]}: corrupt granule metadata ({exc}); download it again") from exc

    level = "L2A" if "2A" in (_xml_text(root, "PRODUCT_TYPE") or _xml_text(root, "PROCESSING_LEVEL") or "") else "L1C"
    product_uri = _xml_text(root, "PRODUCT_URI") or path.name
    product_id = re.sub(r"\.(SAFE|zip)$", "", product_uri)
    baseline = _xml_text(root, "PROCESSING_BASELINE") or ""
    # the granule's MTD_TL.xml has the tile id and sensing time; the product id has them too
    start = ((_xml_text(tile_root, "SENSING_TIME") if tile_root is not None else None)
             or _xml_text(root, "PRODUCT_START_TIME") or _xml_text(root, "DATATAKE_SENSING_START") or "")
    tile_text = _xml_text(tile_root, "TILE_ID") if tile_root is not None else None
    tile = re.search(r"_T(\d\d[A-Z]{3})_", tile_text or product_id)
    q = _xml_text(root, "QUANTIFICATION_VALUE") or _xml_text(root, "BOA_QUANTIFICATION_VALUE")
    offsets = {}
    for el in _xml_all(root, "RADIO_ADD_OFFSET") + _xml_all(root, "BOA_ADD_OFFSET"):
        offsets[config.S2_BANDS[int(el.get("band_id"))]] = float(el.text)
    if not offsets and _baseline_tuple(baseline) >= config.S2_OFFSET_BASELINE:
        # every product from baseline 04.00 on carries the offset; a missing list means edited metadata
        raise PipelineError(f"{path}: baseline {baseline} but no RADIO_ADD_OFFSET/BOA_ADD_OFFSET in the metadata; "
                            "the metadata file is incomplete, download the product again")

    band_files: dict[str, dict[int, str]] = {}
    masks: dict[str, str] = {}
    for rel in files:
        if "/IMG_DATA/" in rel and (m := _BAND_RE.search(rel)):
            band, res = m.group(1), int(m.group(2) or config.S2_BAND_RESOLUTION.get(m.group(1), 10))
            band_files.setdefault(band, {})[res] = f"{gdal_root}/{rel}"
        elif re.search(r"/QI_DATA/MSK_CLDPRB_20m\.jp2$", rel):
            masks["cloud_prob"] = f"{gdal_root}/{rel}"
        elif re.search(r"/IMG_DATA/R20m/.*_SCL_20m\.jp2$", rel):
            masks["scl"] = f"{gdal_root}/{rel}"
        elif re.search(r"/QI_DATA/MSK_CLASSI_B00\.jp2$", rel):
            masks["classi"] = f"{gdal_root}/{rel}"
    if not band_files:
        raise PipelineError(f"{path}: no band files under GRANULE/*/IMG_DATA; the product is incomplete, "
                            "download it again")
    return Product(
        name=product_id, source=str(path), level=level, band_files=band_files,
        tile_id=f"T{tile.group(1)}" if tile else "", sensing_date=start[:10].replace("-", ""),
        product_id=product_id, processing_baseline=baseline,
        quantification=float(q) if q else config.S2_DEFAULT_QUANTIFICATION, offsets=offsets, masks=masks,
        nodata=config.S2_NODATA_DN)


def canonical_band_name(name, sensor: str = "sentinel-2") -> str:
    """A band name as the readers name it: Sentinel-2's, two-digit (``b4``, ``B4`` → ``B04``;
    ``B8A``), STAC common names mapped (``red`` → ``B04``, ``pan`` → ``PAN``), 1-based indices
    (``"3"``) as they are. For a Landsat 8/9 product (``sensor="landsat"``) its own unpadded names
    (``B5``, ``SR_B5``) are Landsat's and become the Sentinel-2 band of the same common name
    (``B5`` → ``B08``, the NIR; ``B8`` → ``PAN``); a padded ``B08`` is always Sentinel-2's."""
    text = str(name).strip()
    if text.isdigit():
        return text
    if text.lower() in STAC_COMMON_NAMES:
        return STAC_COMMON_NAMES[text.lower()]
    if sensor == "landsat" and (own := _LANDSAT_NAME_RE.fullmatch(text.upper())):
        return LANDSAT_BANDS.get(int(own.group(1)), f"LANDSAT_B{own.group(1)}")
    single = re.fullmatch(r"B(\d)", text.upper())
    return f"B0{single.group(1)}" if single else text.upper()


def split_bands(text: str) -> tuple[str, ...]:
    """A comma-separated flag's bands as given (``"red, nir"`` → ``("red", "nir")``), for a config
    field; ``normalise_bands`` reads them against each product."""
    return tuple(b.strip() for b in str(text or "").split(",") if b.strip())


def normalise_bands(bands, sensor: str = "sentinel-2") -> tuple[str, ...]:
    """Bands as given by a user — ``"B04,B03,B02"``, ``("red", "green")``, ``(3, 2, 1)`` (1-based
    indices, as GDAL counts them) — as the names and index strings the readers know (STAC common
    names become band names: ``red`` → ``B04``; a Landsat product's own names, with ``sensor``
    ``"landsat"``, the Sentinel-2 band of their common name: see ``canonical_band_name``)."""
    if bands is None:
        return ()
    if isinstance(bands, str):
        bands = [b for b in bands.split(",") if b.strip()]
    out = []
    for b in bands:
        if isinstance(b, (int, np.integer)):
            if b < 1:
                raise PipelineError(f"bands {list(bands)}: indices are 1-based, as GDAL counts bands (1, 2, 3)")
            out.append(str(int(b)))
            continue
        text = str(b).strip()
        if text.isdigit() and int(text) < 1:
            raise PipelineError(f"bands={','.join(map(str, bands))!r}: indices are 1-based, as GDAL counts bands "
                                "(1, 2, 3)")
        out.append(canonical_band_name(text, sensor))
    return tuple(out)


# STAC common band names (the eo extension) → Sentinel-2 band names
STAC_COMMON_NAMES = {"coastal": "B01", "blue": "B02", "green": "B03", "red": "B04", "rededge1": "B05",
                     "rededge2": "B06", "rededge3": "B07", "nir": "B08", "nir08": "B8A", "nir09": "B09",
                     "cirrus": "B10", "swir16": "B11", "swir22": "B12", "pan": "PAN"}

# Landsat 8/9 OLI band number → the Sentinel-2 band of the same STAC common name (B5, nir08, is
# matched with Sentinel-2's B08 "nir" as well as B8A "nir08"; B8 is the 15 m panchromatic band,
# with no Sentinel-2 counterpart). TIRS's B10/B11 have none either (kept as LANDSAT_B10/B11).
LANDSAT_BANDS = {1: "B01", 2: "B02", 3: "B03", 4: "B04", 5: "B08", 6: "B11", 7: "B12", 8: "PAN", 9: "B10"}
LANDSAT_RESOLUTION = {"PAN": 15}                      # m; every other OLI band 30 m
BAND_RESOLUTION = {**config.S2_BAND_RESOLUTION, **LANDSAT_RESOLUTION}   # every band a reader knows
_LANDSAT_NAME_RE = re.compile(r"(?:SR_|ST_)?B([1-9]|1[01])")             # B4, SR_B4, ST_B10 (not B04)
# A Landsat 8/9 product by its name: Collection 2 ids (LC08_L2SP_…, LC09_L1TP_…, LO08…), a scene id
# (LC80811192020001LGN00), or a sensor tag in a file name (2023-06-30-22-01-55_L9_ms.tif).
_LANDSAT_PRODUCT_RE = re.compile(r"(?:^|[_\-.])(?:L[COT]0[89]_|L[COT][89]\d{6}|L[89](?=[_\-.]|$))")


def is_landsat_name(name) -> bool:
    """Whether a file or folder name names a Landsat 8/9 product (``_LANDSAT_PRODUCT_RE``)."""
    return bool(_LANDSAT_PRODUCT_RE.search(str(name)))


@dataclass(eq=False)
class ItemRef:
    """One STAC Item and where it was read from (``base``: its document's path or URL, against
    which relative hrefs resolve). Each date of a stack from an ItemCollection or a search is one."""

    base: str
    item: dict

    @property
    def id(self) -> str:
        return str(self.item.get("id", ""))

    def __str__(self) -> str:
        """Where the Item is: its ``self`` link, else its document's location ``#`` its id."""
        self_link = next((lk.get("href") for lk in self.item.get("links", []) or []
                          if isinstance(lk, dict) and lk.get("rel") == "self" and lk.get("href")), None)
        if self_link and remote.is_remote(self_link) and remote.is_remote(self.base):
            return str(self_link)
        return f"{self.base}#{self.id}" if self.id else str(self.base)


MAX_PAGES = 100         # pages of an ItemCollection followed at most


def stac_items(location) -> list[ItemRef]:
    """The Items of a STAC document (local path or URL): an Item, or an ItemCollection /
    FeatureCollection of them (an API's search page, ``stack.geojson``)."""
    doc = remote.read_json(location, "STAC Item or ItemCollection")
    if isinstance(doc, dict) and doc.get("type") == "Feature":
        return [ItemRef(str(location), doc)]
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection" and isinstance(doc.get("features"), list):
        items = [f for f in doc["features"] if isinstance(f, dict) and f.get("type") == "Feature"]
        page, seen = doc, {str(location)}
        while remote.is_remote(location) and len(seen) <= MAX_PAGES:        # an API's pages: rel="next" (GET)
            nxt = next((lk.get("href") for lk in page.get("links", []) or [] if isinstance(lk, dict)
                        and lk.get("rel") == "next" and str(lk.get("method", "GET")).upper() == "GET"), None)
            if not nxt:
                break
            nxt = remote.resolve_href(nxt, location, str(location))
            if nxt in seen:
                break
            seen.add(nxt)
            page = remote.read_json(nxt, "STAC ItemCollection page")
            items += [f for f in page.get("features", []) if isinstance(f, dict) and f.get("type") == "Feature"]
        if not items:
            raise PipelineError(f"{location}: an ItemCollection without Items")
        return [ItemRef(str(location), f) for f in items]
    raise PipelineError(f"{location}: not a STAC Item or ItemCollection (a GeoJSON Feature with assets, or a "
                        "FeatureCollection of them)")


def search_items(api: str, collections: list[str], bbox=None, datetime: str | None = None,
                 max_cloud: float | None = None, max_items: int = 500) -> list[ItemRef]:
    """The Items a STAC API (``pystac-client``) finds for ``collections`` over ``bbox`` (W, S, E,
    N in degrees) in ``datetime`` (``START/END``), with ``eo:cloud_cover`` ≤ ``max_cloud`` % (the
    API's query extension where it has one, and checked here too), oldest first. Each Item keeps the
    API's URL as its base: its assets must be remote."""
    from pystac_client import Client
    from pystac_client.conformance import ConformanceClasses

    if not remote.is_remote(api):
        raise PipelineError(f"api={api!r}: not the URL of a STAC API (https://...)")
    try:
        client = Client.open(api)
        query = None
        if max_cloud is not None and client.conforms_to(ConformanceClasses.QUERY):
            query = {"eo:cloud_cover": {"lte": max_cloud}}
        search = client.search(collections=collections or None, bbox=bbox, datetime=datetime, query=query,
                               max_items=max_items)
        found = list(search.items_as_dicts())
    except PipelineError:
        raise
    except Exception as exc:                      # network, HTTP and API errors: one line
        raise PipelineError(f"{api}: the STAC search failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                            "check the URL, collections=, bbox= and datetime=") from exc
    if max_cloud is not None:
        found = [i for i in found if float((i.get("properties") or {}).get("eo:cloud_cover", 0) or 0) <= max_cloud]
    if not found:
        asked = ", ".join(f"{k} {v}" for k, v in (("collections", ",".join(collections or [])), ("bbox", bbox),
                                                   ("datetime", datetime), ("max-cloud", max_cloud)) if v)
        raise PipelineError(f"{api}: the search found no Items ({asked or 'no filter'}); check collections=, widen "
                            "bbox=, datetime= or max_cloud=")
    found.sort(key=lambda i: str((i.get("properties") or {}).get("datetime") or ""))
    def base(item: dict) -> str:            # relative hrefs resolve against the Item's own URL
        link = next((lk.get("href") for lk in item.get("links", []) or [] if isinstance(lk, dict)
                     and lk.get("rel") == "self" and remote.is_remote(lk.get("href", ""))), None)
        return link or api

    return [ItemRef(base(i), i) for i in found]


def open_stac_item(path) -> Product:
    """A STAC Item (a local JSON file or a URL) as a ``Product`` (see ``item_product``)."""
    refs = stac_items(path)
    if len(refs) != 1:
        raise PipelineError(f"{path}: holds {len(refs)} Items; give one Item (or use it as a stack)")
    return item_product(refs[0])


_ASSET_BAND_RE = re.compile(r"^(B\d[\dA])(?:_\d\dM)?$", re.IGNORECASE)    # B04, B04_10m (CDSE)
_MASK_ASSETS = {"scl": "scl", "scl_20m": "scl", "cloud": "cloud_prob", "cld": "cloud_prob",
                "cld_20m": "cloud_prob", "cloud_probability": "cloud_prob", "msk_cldprb": "cloud_prob"}


def _asset_bands(key: str, asset: dict) -> list[str | None]:
    """The Sentinel-2 bands of an asset, one a raster band: from its ``eo:bands`` / ``bands``
    entries' names or common names, else (a single-band asset) its key (``B04``, ``B04_10m``,
    ``red``); None where a band is not one (``[]`` for thumbnails and metadata)."""
    entries = asset.get("eo:bands") or asset.get("bands") or [{}]

    def band(names):
        for n in names:
            m = _ASSET_BAND_RE.match(n.strip())
            if m and m.group(1).upper() in config.S2_BAND_RESOLUTION:
                return m.group(1).upper()
        return next((STAC_COMMON_NAMES[n.strip().lower()] for n in names if n.strip().lower() in STAC_COMMON_NAMES),
                    None)

    names = [[str(b.get(k, "")) for k in ("name", "common_name", "eo:common_name")] for b in entries]
    if len(entries) == 1:
        names[0].append(key)
    return [band(n) for n in names]


def item_product(ref: ItemRef) -> Product:
    """A STAC Item as a ``Product`` whose bands are its assets' files (local or remote COGs, JP2),
    each chosen by its ``eo:bands`` name or common name (``B04`` or ``red``; a single-band COG
    preferred over a JP2 of the same band, either over a band of a multi-band asset such as
    ``visual``); an ``scl`` asset is the scene classification, a cloud-probability
    asset (``cloud``, ``CLD_20m``) the cloud mask. ``raster:bands`` scale and offset, where given,
    turn DN into reflectance (an 8-bit ``data_type`` without them is scaled as an 8-bit file is). Hrefs resolve against the Item's document; a remote Item may only
    name remote assets (``remote.resolve_href``)."""
    item = ref.item
    what = str(ref)
    if not isinstance(item.get("assets"), dict):
        raise PipelineError(f"{what}: not a STAC Item (a GeoJSON Feature with assets)")
    band_files: dict[str, dict[int, str]] = {}
    masks: dict[str, str] = {}
    offsets: dict[str, float] = {}
    scales: dict[str, float] = {}
    eight_bit = False
    band_index: dict[str, int] = {}
    rank: dict[str, int] = {}          # a single-band COG before a single-band JP2 before a multi-band asset
    for key, asset in item["assets"].items():
        if not isinstance(asset, dict) or not asset.get("href"):
            continue
        media = str(asset.get("type", "")).lower()
        if media and not any(t in media for t in ("tiff", "jp2", "jpeg2000", "vrt")):
            continue                                       # thumbnails, metadata, previews
        mask = _MASK_ASSETS.get(str(key).lower())
        bands = [] if mask else _asset_bands(str(key), asset)
        if mask is None and not any(bands):
            continue
        href = remote.resolve_href(asset["href"], ref.base, what)
        if mask:
            masks.setdefault(mask, href)
            continue
        info = asset.get("raster:bands") or [{}] * len(bands)
        for k, band in enumerate(bands, start=1):
            if band is None:
                continue
            order = (2 if len(bands) > 1 else 0) + (remote.suffix_of(href) == ".jp2")
            if band in rank and rank[band] <= order:
                continue
            rank[band] = order
            band_files[band] = {BAND_RESOLUTION[band]: href}
            if len(bands) > 1:
                band_index[band] = k
            else:
                band_index.pop(band, None)
            rb = info[k - 1] if k - 1 < len(info) and isinstance(info[k - 1], dict) else {}
            eight_bit |= rb.get("data_type") == "uint8"
            if rb.get("scale"):
                scales[band] = float(rb["scale"])
                offsets[band] = float(rb.get("offset", 0.0)) / float(rb["scale"])
    if not band_files:
        raise PipelineError(f"{what}: no Sentinel-2 band among the assets {sorted(item['assets'])}; name them "
                            "by band (B04) or STAC common name (red) in eo:bands or as their keys")
    props = item.get("properties", {}) or {}
    date = re.sub(r"\D", "", str(props.get("datetime") or props.get("start_datetime") or ""))[:8]
    scale = next(iter(scales.values()), None)
    if scale is None and eight_bit:          # an 8-bit picture: 255 is the top of the display range
        scale = PreprocessConfig.reflectance_max / 255.0
    ident = str(item.get("id") or remote.stem_of(ref.base))
    return Product(name=ident, source=what, level="raster", band_files=band_files,
                   tile_id=str(props.get("s2:mgrs_tile", props.get("mgrs:tile", props.get("grid:code", "")))),
                   sensing_date=date, product_id=ident,
                   quantification=1.0 / scale if scale else config.S2_DEFAULT_QUANTIFICATION,
                   offsets={b: offsets.get(b, 0.0) for b in band_files}, masks=masks, band_index=band_index)


def _baseline_tuple(baseline: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", baseline or "")
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def open_band_files(files: list[Path], scale: float, offset: float) -> Product:
    """Plain GeoTIFF / JP2 band files: single-band files named by band (``B04.tif``,
    ``T36UYA_20190601_B04.jp2``), or one raster whose bands are named by their descriptions
    (``B04``, or a STAC common name such as ``red``). A raster without band names is used as it
    is: one band as grey, three as red, green, blue (an RGB picture), more by ``--bands``
    (1-based indices, as GDAL counts), which always select bands by index. An 8-bit raster is
    scaled so that 255 is the top of the display range."""
    band_files: dict[str, dict[int, str]] = {}
    band_index: dict[str, int] = {}
    unnamed: dict[str, int] = {}
    eight_bit = False
    files = [f if remote.is_remote(f) else Path(f) for f in files]
    opened = []
    for f in files:
        with open_raster(str(f)) as src:
            opened.append((f, src.descriptions, src.count, src.dtypes[0]))
    sensor = "landsat" if (any(is_landsat_name(remote.stem_of(f)) for f in files)
                           or is_landsat_name(remote.name_of(remote.parent_of(files[0])))
                           or any(re.fullmatch(r"(SR|ST)_B\d+", d or "") for _, ds, _, _ in opened for d in ds)) \
        else "sentinel-2"
    file_band = (r"(?:^|_)((?:SR_|ST_)?B\d{1,2})$" if sensor == "landsat" else r"(?:^|_)(B\d[\dA])(?:_\d\dm)?$")
    for f, descriptions, count, dtype in opened:
        m = re.search(file_band, remote.stem_of(f), re.IGNORECASE if sensor == "landsat" else 0)
        eight_bit |= dtype == "uint8"
        if m and count == 1:
            band = canonical_band_name(m.group(1), sensor)
            res = LANDSAT_RESOLUTION.get(band, 30) if sensor == "landsat" else config.S2_BAND_RESOLUTION.get(band, 10)
            band_files.setdefault(band, {})[res] = str(f)
            if len(files) == 1:                          # its band by index too (--bands 1)
                band_files["1"] = {res: str(f)}
                band_index["1"] = 1
            continue
        for k, d in enumerate(descriptions, start=1):
            name = canonical_band_name(d or "", sensor)
            if name in BAND_RESOLUTION:
                band_files.setdefault(name, {})[10] = str(f)
                band_index[name] = k
        if len(files) == 1:
            # every band is reachable by its 1-based index; unnamed rasters get the usual reading
            for k in range(1, count + 1):
                band_files.setdefault(str(k), {})[10] = str(f)
                band_index[str(k)] = k
            if not any(b in BAND_RESOLUTION for b in band_files):
                if count == 1:
                    unnamed = {"grey": 1}
                elif count == 3:
                    unnamed = {"B04": 1, "B03": 2, "B02": 3}
                for b, k in unnamed.items():
                    band_files[b] = {10: str(f)}
                    band_index[b] = k
    if sensor == "landsat" and "B08" in band_files and "B8A" not in band_files:
        band_files["B8A"] = band_files["B08"]            # OLI's B5 is "nir08": Sentinel-2's B8A too
        if "B08" in band_index:
            band_index["B8A"] = band_index["B08"]
    named = [b for b in band_files if not b.isdigit()]
    if not named and len(files) > 1:
        raise PipelineError(f"{remote.parent_of(files[0])}: no band recognised in "
                            f"{[remote.name_of(f) for f in files][:5]}; name single-band files by band (B04.tif) "
                            "or set band descriptions")
    first = files[0]
    folder = remote.parent_of(first)
    # the date nearest the file in its path: its own name's, else its folder's, else the folder
    # above (20160718/imgs/B04.tif) — a project folder higher up (proj_20190101/x_20180531.tif)
    # never overrides a date nearer the file
    date = next((m for m in (re.search(r"(20\d{6})", part) for part in reversed(remote.parts_of(first))) if m), None)
    place = remote.stem_of(first) if len(files) == 1 else remote.name_of(folder)
    oscd = None if remote.is_remote(first) else re.fullmatch(r"imgs_(\d)", first.parent.name)
    if oscd:  # OSCD layout: <city>/imgs_N/B04.tif with the dates in <city>/dates.txt
        place = first.parent.parent.name
        dates_txt = first.parent.parent / "dates.txt"
        if dates_txt.exists():
            date = re.search(rf"date_{oscd.group(1)}:\s*(\d{{8}})", dates_txt.read_text())
    name = place if len(files) == 1 else f"{place}_{date.group(1) if date else remote.name_of(folder)}"
    if eight_bit and scale == config.S2_DEFAULT_QUANTIFICATION:
        scale = 255.0 / PreprocessConfig.reflectance_max
    elif scale == config.S2_DEFAULT_QUANTIFICATION and offset == 0.0:
        scale, offset = _raster_scale(opened, sensor, scale)
    return Product(name=name, source=str(first if len(files) == 1 else folder), level="raster",
                   band_files=band_files, tile_id=place, sensing_date=date.group(1) if date else "",
                   product_id=name, quantification=scale, offsets={b: offset for b in band_files},
                   band_index=band_index, sensor=sensor)


LANDSAT_L2_SCALE, LANDSAT_L2_OFFSET = 2.75e-5, -0.2   # Collection 2 Level-2 surface reflectance DN


def _raster_scale(opened: list, sensor: str, scale: float) -> tuple[float, float]:
    """``(quantification, offset)`` of rasters with no scale given: Landsat Collection 2 Level-2
    surface reflectance DN (``SR_B4``, ``_L2SP_``) by their published scale; float rasters that
    already hold reflectance (a decimated sample's 99th percentile of finite values at most 2)
    as they are; else ``scale`` (Sentinel-2 DN)."""
    names = " ".join(remote.name_of(f) for f, *_ in opened)
    dtype = np.dtype(opened[0][3])
    if sensor == "landsat" and dtype.kind in "ui" and re.search(r"_L2S[PR]_|SR_B\d", names):
        return 1.0 / LANDSAT_L2_SCALE, LANDSAT_L2_OFFSET / LANDSAT_L2_SCALE
    if dtype.kind == "f":
        with open_raster(str(opened[0][0])) as src:
            shape = (max(1, min(64, src.height)), max(1, min(64, src.width)))
            sample = src.read(1, out_shape=shape).astype(np.float64)
        finite = sample[np.isfinite(sample)]
        if finite.size and np.percentile(finite, 99) <= 2.0:
            return 1.0, 0.0
    return scale, 0.0


# ----------------------------------------------------------------------------- reading
# ----------------------------------------------------------------------------- a product onto a grid
def reference_grid(product: Product, bands: list[str]) -> Grid:
    """The product's 10 m grid (20 m and 60 m bands are resampled onto it); for plain band
    files without a 10 m band, the finest grid among the requested bands."""
    tenm = [files[10] for files in product.band_files.values() if 10 in files]
    path = tenm[0] if tenm else min((product.band_path(b) for b in bands), key=lambda p: _resolution_of(p))
    with open_raster(path) as src:
        return Grid(src.transform, src.width, src.height, src.crs)


def _resolution_of(path: str) -> float:
    with open_raster(path) as src:
        return src.res[0]


def normalise(dn: np.ndarray, offset: float, quantification: float, cfg: PreprocessConfig) -> np.ndarray:
    """DN → reflectance (with the baseline offset) → fixed range → 0..1 (gamma) float32."""
    refl = (dn.astype(np.float32) + offset) / quantification
    x = np.clip((refl - cfg.reflectance_min) / (cfg.reflectance_max - cfg.reflectance_min), 0.0, 1.0)
    return x ** (1.0 / cfg.gamma) if cfg.gamma != 1.0 else x


def render(product: Product, bands: list[str], grid: Grid, window_px, out_shape, cfg: PreprocessConfig,
           warp: bool = False):
    """Normalised bands (rows, cols, C) float 0..1 and the nodata mask (True = no data);
    ``warp``: resampled onto ``grid`` (see ``read_to_grid``)."""
    channels, nodata = {}, np.zeros(out_shape, bool)
    # bands of one file are read together: one resampling for all of them
    by_file: dict[str, list[str]] = {}
    for b in bands:
        by_file.setdefault(product.band_path(b), []).append(b)
    for path, group in by_file.items():
        index = [product.band_index.get(b, 1) for b in group]
        # resampled onto the grid by a Lanczos (windowed sinc) kernel: bilinear weights shift fine
        # detail by less than the sub-pixel offset, biasing a sub-pixel estimate towards whole
        # pixels; cubic convolution less so, Lanczos least (the full-tile benchmark's dense
        # estimates: 0.10 m with cubic, 0.03 m with Lanczos)
        dn, band_nodata = read_to_grid(path, grid, window_px, out_shape, "lanczos" if warp else "bilinear",
                                       band=index if len(index) > 1 else index[0], with_nodata=True, warp=warp,
                                       nodata=product.nodata)
        nodata |= band_nodata
        for b, layer in zip(group, dn if dn.ndim == 3 else dn[None]):
            channels[b] = normalise(np.nan_to_num(layer, nan=0.0, posinf=0.0, neginf=0.0), product.offsets.get(b, 0.0), product.quantification, cfg)
    channels = [channels[b] for b in bands]
    image = np.stack(channels, -1)
    image[nodata] = 0
    return image, nodata


def render_masks(product: Product, grid: Grid, window_px, out_shape, warp: bool = False) -> dict[str, np.ndarray]:
    """Cloud and scene-classification masks of the product on the output grid (uint8)."""
    out = {}
    if "cloud_prob" in product.masks:
        out["cloud"] = read_to_grid(product.masks["cloud_prob"], grid, window_px, out_shape, "bilinear",
                                    warp=warp).astype(np.uint8)
    elif "classi" in product.masks:  # L1C from baseline 04.00: bands opaque clouds, cirrus, snow
        opaque = read_to_grid(product.masks["classi"], grid, window_px, out_shape, "nearest", band=1, warp=warp)
        cirrus = read_to_grid(product.masks["classi"], grid, window_px, out_shape, "nearest", band=2, warp=warp)
        out["cloud"] = ((opaque > 0) | (cirrus > 0)).astype(np.uint8) * 255
    if "scl" in product.masks:
        out["scl"] = read_to_grid(product.masks["scl"], grid, window_px, out_shape, "nearest",
                                  warp=warp).astype(np.uint8)
    return out

