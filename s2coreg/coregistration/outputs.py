"""What a stack run writes (``coregister.py --stack``; ``s2coreg/coregistration/stack.py`` computes it): ``shifts.csv``,
``pairs.csv``, ``stack.json``, ``report.png``, ``items.geojson`` (every placed date as a STAC Item
whose assets are VRTs carrying its correction, no pixel written) and, with
``--write-corrected``, ``corrected/`` (COGs with their georeference moved, and
``corrected/stack.geojson`` of them). All built in a folder of their own and published at once
(``engine.OutputFolder.building``: each name a link into ``.results/current``)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import s2coreg.coregistration.engine as engine
import s2coreg.io.products as dp
import s2coreg.io.remote as remote
from s2coreg.utils import PipelineError, write_json

EO_EXTENSION = "https://stac-extensions.github.io/eo/v1.1.0/schema.json"
RASTER_EXTENSION = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"
STACK_OUTPUTS = engine.RESULT_NAMES        # a rerun replaces any earlier result of ours, pair or stack


def write_stack_outputs(result: dict, paths: list, products: dict, grid: dp.Grid, folder: Path,
                        write_corrected: bool) -> None:
    out = engine.OutputFolder(folder, STACK_OUTPUTS)
    with out.building() as tmp:
        engine.write_csv(tmp / "shifts.csv", [shifts_row(r) for r in result["dates"]], SHIFTS_COLUMNS)
        engine.write_csv(tmp / "pairs.csv", result["pairs"])
        plot_report(result, tmp / "report.png")
        write_json(tmp / "items.geojson", corrected_items(result, paths, products, grid, tmp, out.folder))
        if write_corrected:
            write_corrected_stack(result, paths, products, grid, tmp / "corrected", out.folder / "corrected")
        write_json(tmp / "stack.json", {k: v for k, v in result.items() if k not in ("dates", "pairs")})


SHIFTS_COLUMNS = ["path", "id", "date", "date_source", "bands", "dx_m", "dy_m", "sigma_m", "tie_points", "status",
                  "reason", "warnings"]


def shifts_row(row) -> dict:
    """A date's line of ``shifts.csv`` (a ``results.StackDate``, or its dict): its warnings one
    text, joined by "; " (empty where there are none)."""
    warnings = row["warnings"]
    text = "; ".join(warnings) if isinstance(warnings, (list, tuple)) else warnings
    return {**{k: row[k] for k in SHIFTS_COLUMNS}, "warnings": text or None}


def plot_report(result: dict, path: Path) -> None:
    """``picture.stack_report_figure(result)`` written as ``path`` (PNG, atomically)."""
    from s2coreg.picture import stack_report_figure     # matplotlib: loaded when a report is drawn
    from s2coreg.utils import atomic_path

    fig = stack_report_figure(result)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def _dated(row: dict) -> bool:
    """Whether a date gets a STAC Item (its acquisition date is known); where not, one line says so."""
    if engine.stac_datetime(row["date"]) is not None:
        return True
    print(engine.undated_line(row["path"], row["id"]), file=sys.stderr)
    return False


def corrected_items(result: dict, paths: list, products: dict, grid: dp.Grid, folder: Path, final: Path) -> dict:
    """Every placed date as a STAC Item whose georeference carries its correction, no pixel
    written: each raster asset (a band file or URL as read) becomes a GDAL VRT of it in
    ``folder/items/<id>/`` (a few hundred bytes that reference the original, absolute) whose
    geotransform is moved by the correction in the asset's own CRS — readers that take the
    georeference from the file (odc-stac, stackstac, rasterio, QGIS) load the date aligned — with
    ``proj:transform`` (the moved one), ``proj:shape``, ``proj:epsg`` and
    ``coregistration:source_href`` (the original); the Item's geometry and bbox moved likewise. A
    date that came as a STAC Item keeps its id, properties and other remote assets. Asset hrefs are
    relative to ``items.geojson`` (the folder can move: this project's reader resolves them against
    the document) and each Item's ``self`` link is ``final/items.geojson`` (pystac and odc-stac
    resolve them against it, while the folder stays where it was written). A file of several bands
    is one asset with their ``eo:bands``."""
    import copy

    from rasterio.transform import Affine

    prov = result["provenance"]
    items = []
    for k, row in enumerate(result["dates"]):
        if row["status"] == "excluded" or k not in products:
            continue
        product, date = products[k], paths[k]
        if not isinstance(date, dp.ItemRef) and not _dated(row):
            continue
        d_px = np.array(row["shift_px"])
        source = copy.deepcopy(date.item) if isinstance(date, dp.ItemRef) else None
        assets = {}
        by_href = {}
        for band, files in product.band_files.items():
            for href in files.values():
                by_href.setdefault(href, []).append(band)
        source_keys = _asset_keys(date) if source is not None else {}     # href as read → the Item's asset key
        first = None                                                      # the first band's footprint
        for href in sorted({h for h in list(by_href) + list(product.masks.values())}):
            named = [b for b in by_href.get(href, []) if not b.isdigit() and b != "grey"]
            key = source_keys.get(href) or (named[0] if len(named) == 1 else "data" if len(named) > 1 and
                                            len(by_href) == 1 else engine.safe_name(remote.stem_of(href)))
            vrt = Path("items") / engine.safe_name(row["id"]) / f"{engine.safe_name(key)}.vrt"
            with dp.open_raster(href) as src:                 # one header read an asset
                moved = Affine.translation(*engine.correction_in_crs(grid, d_px, src.crs)) * src.transform
                engine.write_moved_vrt(src, href, folder / vrt, moved)
                raster_bands = [{"data_type": t, **({"nodata": src.nodata} if src.nodata is not None
                                                     and np.isfinite(src.nodata) else {})} for t in src.dtypes]
                fp = engine.footprint(src.width, src.height, src.crs, moved)
            if first is None and href in by_href:
                first = fp
            asset = dict((source or {}).get("assets", {}).get(key, {}))
            if source is None and len(named) > 1:             # a multi-band file: its bands in file order
                asset["eo:bands"] = [{"name": b} for b in sorted(named, key=lambda b: product.band_index.get(b, 0))]
            asset.pop("type", None)            # a VRT has no registered media type; readers see role "data"
            asset.setdefault("raster:bands", raster_bands)
            asset.update({"href": vrt.as_posix(), "coregistration:source_href": engine.input_label(href), **fp[2]})
            asset.setdefault("roles", ["data"])
            assets[key] = asset
        geometry, bbox, proj = first
        props = {"coregistration:dx_m": row["dx_m"], "coregistration:dy_m": row["dy_m"],
                 "coregistration:sigma_m": row["sigma_m"], "coregistration:status": row["status"],
                 "coregistration:reference": result["reference_id"],
                 "processing:software": {prov["name"]: prov["version"]}}
        if source is not None:
            item = source
            item["assets"] = {**{kk: v for kk, v in item.get("assets", {}).items() if kk not in assets
                                 and remote.is_remote(v.get("href", ""))}, **assets}
            item["geometry"], item["bbox"] = geometry, bbox
            item.setdefault("properties", {}).update({**proj, **props})
            item["links"] = [lk for lk in item.get("links", []) if lk.get("rel") not in ("self", "root", "parent")]
            item["links"].append({"rel": "derived_from", "href": str(date)})
            item["links"].append({"rel": "self", "href": str(final / "items.geojson")})
            exts = set(item.get("stac_extensions", [])) | {
                "https://stac-extensions.github.io/projection/v1.1.0/schema.json"}
            item["stac_extensions"] = sorted(exts)
        else:
            item = engine.stac_item(row["id"], row["date"], None, row["path"], props, footprint=first)
            item["assets"] = assets
            item["links"].append({"rel": "self", "href": str(final / "items.geojson")})
            item["stac_extensions"] = sorted({*item["stac_extensions"], RASTER_EXTENSION,
                                              *([EO_EXTENSION] if any("eo:bands" in a for a in assets.values()) else [])})
        items.append(item)
    return {"type": "FeatureCollection", "features": items}


def _asset_keys(ref: dp.ItemRef) -> dict[str, str]:
    """An Item's asset keys by their hrefs as the readers resolve them (assets whose href cannot be
    read from here — a local path in a remote Item — left out)."""
    keys = {}
    for key, asset in (ref.item.get("assets") or {}).items():
        try:
            keys[remote.resolve_href(asset.get("href", ""), ref.base, str(ref))] = key
        except PipelineError:
            continue
    return keys


def write_corrected_stack(result: dict, paths: list, products: dict, grid: dp.Grid, folder: Path,
                          final: Path) -> None:
    """Each placed date's files with their georeference moved by its correction (the negative of
    its displacement, expressed in each file's own CRS: a date on another UTM zone is moved by the
    same ground vector), no resampling, as COGs with provenance tags; and a STAC ItemCollection of
    them (``stack.geojson``, hrefs relative to it). A date of several files gets a folder of
    them under their own names (readable as a date again)."""
    folder.mkdir(parents=True, exist_ok=True)
    prov = result["provenance"]
    x_by_k = {}
    for k, row in enumerate(result["dates"]):
        if row["status"] != "excluded" and k in products:
            x_by_k[k] = row               # every placed date's COG; its STAC Item where its date is known
    items = []
    for k, row in x_by_k.items():
        product = products[k]
        files = sorted({p for res in product.band_files.values() for p in res.values()})
        d_px = np.array(row["shift_px"])
        assets, first = {}, None
        for f in files:
            with dp.open_raster(f) as src:
                move = engine.correction_in_crs(grid, d_px, src.crs)
            # one file: <name>_coregistered.tif; several: a folder a date, the files' own names (a
            # date folder of band files again, B04.tif ...)
            out = (folder / f"{engine.safe_name(remote.stem_of(f))}_coregistered.tif" if len(files) == 1 else
                   folder / engine.safe_name(row["id"]) / f"{engine.safe_name(remote.stem_of(f))}.tif")
            out.parent.mkdir(parents=True, exist_ok=True)
            tags = engine.provenance_tags(prov, coregistration_shift_m={"dx": row["dx_m"], "dy": row["dy_m"],
                                                                       "sigma_m": row["sigma_m"]},
                                          coregistration_reference=result["reference"])
            engine.write_moved(f, out, move, tags)
            first = first or out
            assets[engine.safe_name(remote.stem_of(f))] = {"href": str(out.relative_to(folder)), "roles": ["data"],
                                                     "type": "image/tiff; application=geotiff; profile=cloud-optimized"}
        if engine.stac_datetime(row["date"]) is None:       # said once, where the Items are written
            continue
        item = engine.stac_item(row["id"], row["date"], first, row["path"],
                                {"coregistration:dx_m": row["dx_m"], "coregistration:dy_m": row["dy_m"],
                                 "coregistration:sigma_m": row["sigma_m"], "coregistration:status": row["status"],
                                 "coregistration:reference": result["reference_id"],
                                 "processing:software": {prov["name"]: prov["version"]}})
        item["assets"] = assets
        items.append(item)
    write_json(folder / "stack.geojson", {"type": "FeatureCollection", "features": items,
                                          "links": [{"rel": "self", "href": (final / "stack.geojson").as_uri()}]})
