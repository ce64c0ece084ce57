"""Co-registration where the data lives: rasters and STAC documents over HTTP (a Range-capable
server in its own process) and S3 (moto's server), a STAC API search, xarray in and out, and a
stack that grows."""
from __future__ import annotations

import csv
import json
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

import s2coreg.coregistration.pair as coregister
import s2coreg.coregistration.engine as engine
import s2coreg.io.products as dp
import s2coreg.coregistration.stack as stack
from s2coreg.io.imaging import fourier_shift
from s2coreg.matching.pipeline import MatchingPipeline
from s2coreg.utils import PipelineError

pytestmark = pytest.mark.shipped

HERE = Path(__file__).resolve().parent
DATES = sorted((HERE / "data" / "t36uya").glob("*.tif"))     # 7 dates, 2016-02-12 snow
CLOUDY = "20161205"


@pytest.fixture(scope="module")
def pipeline():
    return MatchingPipeline.from_checkpoints()


def serve(folder: Path, *flags: str, log: Path | None = None):
    """``tests/local_server.py`` on ``folder`` in its own process: (base URL, process)."""
    cmd = [sys.executable, str(HERE / "local_server.py"), str(folder), *flags] + (["--log", str(log)] if log else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    return f"http://127.0.0.1:{port}", proc


def date_of(path: Path) -> str:
    return re.search(r"(20\d{6})", path.name).group(1)


def write_items(folder: Path, files: list[Path], collection: str = "s2-test") -> list[dict]:
    """One STAC Item a file in ``folder/items/`` (its red band an asset, href relative), and
    ``folder/items.json``, an ItemCollection of them."""
    (folder / "items").mkdir(parents=True, exist_ok=True)
    items = []
    for f in files:
        d = date_of(f)
        geometry, bbox, proj = engine.footprint_lonlat(f)
        item = {"type": "Feature", "stac_version": "1.0.0", "id": f"S2_T36UYA_{d}", "collection": collection,
                "stac_extensions": ["https://stac-extensions.github.io/projection/v1.1.0/schema.json",
                                    "https://stac-extensions.github.io/eo/v1.1.0/schema.json"],
                "geometry": geometry, "bbox": bbox,
                "properties": {"datetime": f"{d[:4]}-{d[4:6]}-{d[6:]}T08:30:00Z",
                               "eo:cloud_cover": 80.0 if d == CLOUDY else 5.0, **proj},
                "assets": {"red": {"href": f"../{f.parent.name}/{f.name}",
                                   "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                                   "eo:bands": [{"name": "B04", "common_name": "red"}],
                                   "raster:bands": [{"data_type": "uint8", "nodata": 0}]},
                           "thumbnail": {"href": "thumb.png", "type": "image/png"}},
                "links": []}
        (folder / "items" / f"{item['id']}.json").write_text(json.dumps(item))
        items.append(item)
    collection_items = [{**i, "assets": {k: {**a, "href": a["href"].replace("../", "")} for k, a in i["assets"].items()}}
                        for i in items]
    (folder / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": collection_items}))
    return items


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The T36UYA dates and their Items, served over HTTP (with a STAC API) from another process."""
    root = tmp_path_factory.mktemp("site")
    shutil.copytree(HERE / "data" / "t36uya", root / "t36uya")
    write_items(root, sorted((root / "t36uya").glob("*.tif")))
    log = root / "bytes.log"
    url, proc = serve(root, "--stac-api", log=log)
    yield {"root": root, "url": url, "log": log}
    proc.terminate()
    proc.wait(10)


def shifts(path: Path) -> dict[str, tuple[float, float]]:
    return {r["date"]: (float(r["dx_m"]), float(r["dy_m"])) for r in csv.DictReader(open(path))}


def test_pair_over_http_reads_windows_and_equals_local(pipeline, site):
    """The same pair from URLs and from the files: the same shift; bytes were fetched by range."""
    a, b = "T36UYA_20160830_B04.tif", "T36UYA_20190606_B04.tif"
    local = coregister.coregister(site["root"] / "t36uya" / a, site["root"] / "t36uya" / b, pipeline=pipeline,
                                  progress=False)
    before = site["log"].read_text() if site["log"].exists() else ""
    over_http = coregister.coregister(f"{site['url']}/t36uya/{a}", f"{site['url']}/t36uya/{b}", pipeline=pipeline,
                                      progress=False)
    assert over_http["verified"] and over_http["target"].startswith("http://")
    np.testing.assert_allclose(over_http["shift_m"]["shift_px"], local["shift_m"]["shift_px"], atol=1e-9)
    assert site["log"].read_text() != before                 # it went through the server


def test_stack_from_an_item_collection_url(site, tmp_path, dask_client):
    """A stack given as the URL of an ItemCollection (four of the dates: the snowy one, the
    reference and two summers): the same shifts as from the local files, each row carrying its
    Item id; a date whose asset is missing on the server is excluded with its reason and the
    others go on; items.geojson carries each correction in proj:transform."""
    subset = ("20160212", "20160621", "20160830", "20190606")
    doc = json.loads((site["root"] / "items.json").read_text())
    doc["features"] = [f for f in doc["features"] if f["id"].endswith(subset)]
    broken = json.loads(json.dumps(doc["features"][1]))
    broken["id"] = "S2_missing"
    broken["assets"]["red"]["href"] = "t36uya/nothing_here_B04.tif"
    doc["features"].append(broken)
    (site["root"] / "with_missing.json").write_text(json.dumps(doc))
    reference = str(DATES[2])                                # 2016-08-30
    local = stack.coregister_stack([d for d in DATES if date_of(d) in subset], tmp_path / "local", reference=reference,
                                   client=dask_client, progress=False)
    remote = stack.coregister_stack([f"{site['url']}/with_missing.json"], tmp_path / "remote",
                                    reference="S2_T36UYA_20160830", client=dask_client, progress=False)
    rows = {r["id"]: r for r in remote["dates"]}
    assert rows["S2_missing"]["status"] == "excluded" and "nothing_here_B04.tif" in rows["S2_missing"]["reason"]
    by_date = {r["date"]: r for r in local["dates"]}
    for r in remote["dates"]:
        if r["id"] == "S2_missing":
            continue
        assert r["id"] == f"S2_T36UYA_{r['date']}" and r["status"] == by_date[r["date"]]["status"]
        if r["status"] != "excluded":
            np.testing.assert_allclose([r["dx_m"], r["dy_m"]], [by_date[r["date"]]["dx_m"], by_date[r["date"]]["dy_m"]],
                                       atol=1e-9)
    with open(tmp_path / "remote" / "shifts.csv") as f:
        assert {row["id"] for row in csv.DictReader(f)} == set(rows)
    items = json.loads((tmp_path / "remote" / "items.geojson").read_text())["features"]
    assert {i["id"] for i in items} == {k for k, r in rows.items() if r["status"] != "excluded"}
    for item in items:
        row, asset = rows[item["id"]], item["assets"]["red"]
        assert asset["coregistration:source_href"].startswith(site["url"])
        assert "thumbnail" not in item["assets"]                      # a relative, local-only asset: dropped
        with rasterio.open(site["root"] / "t36uya" / Path(asset["coregistration:source_href"]).name) as src:
            original = src.transform
        moved = asset["proj:transform"]
        np.testing.assert_allclose([moved[2] - original.c, moved[5] - original.f], [-row["dx_m"], -row["dy_m"]],
                                   atol=1e-6)
        with rasterio.open(tmp_path / "remote" / asset["href"]) as vrt:   # a VRT of the URL, georeference moved
            np.testing.assert_allclose(list(vrt.transform)[:6], moved, atol=1e-9)
        assert item["properties"]["coregistration:dx_m"] == row["dx_m"] and item["bbox"]
    again = stack.coregister_stack([tmp_path / "remote" / "items.geojson"], None, reference="S2_T36UYA_20160830",
                                   client=dask_client, progress=False)           # the corrected dates re-registered: 0
    # (a check of the correction's sign and units: the same pixels are read, the moved georeference
    # is all that differs; content moves are measured in tests/test_coregister.py and test_stack.py)
    placed = [r for r in again["dates"] if r["status"] != "excluded"]
    assert len(placed) == len(items) and max(abs(r["dx_m"]) + abs(r["dy_m"]) for r in placed) < 0.02


def test_asset_keys_of_real_catalogs():
    """Earth Search (common names, raster:bands scale/offset, a visual asset), Planetary Computer
    (B04, SCL), CDSE (B04_10m, SCL_20m): the bands, masks and reflectance scaling found."""
    base = "https://catalog.example/items/x.json"
    earth = {"type": "Feature", "id": "e", "properties": {}, "assets": {
        "red": {"href": "r.tif", "type": "image/tiff; application=geotiff",
                "eo:bands": [{"name": "red", "common_name": "red"}],
                "raster:bands": [{"scale": 0.0001, "offset": -0.1, "data_type": "uint16"}]},
        "visual": {"href": "v.tif", "type": "image/tiff", "eo:bands": [{"name": "red"}, {"name": "green"},
                                                                       {"name": "blue"}]},
        "scl": {"href": "scl.tif", "type": "image/tiff"}, "thumbnail": {"href": "t.jpg", "type": "image/jpeg"}}}
    p = dp.item_product(dp.ItemRef(base, earth))
    assert p.band_path("B04").endswith("/r.tif") and p.band_path("B03").endswith("/v.tif")
    assert p.band_index["B03"] == 2 and "B04" not in p.band_index and p.masks["scl"].endswith("/scl.tif")
    assert p.quantification == pytest.approx(10000) and p.offsets["B04"] == pytest.approx(-1000)
    cdse = {"type": "Feature", "id": "c", "properties": {}, "assets": {
        "B04_10m": {"href": "B04_10m.jp2"}, "B11_20m": {"href": "B11_20m.jp2"}, "SCL_20m": {"href": "SCL_20m.jp2"}}}
    p = dp.item_product(dp.ItemRef(base, cdse))
    assert set(p.band_files) == {"B04", "B11"} and p.masks["scl"].endswith("SCL_20m.jp2")


def test_an_extensionless_cog_url_and_unreachable_ones(pipeline, site):
    """A raster URL without a file extension is read as a raster (sniffed), not fetched as JSON; a
    404 and a refused connection each fail in one line saying so."""
    for name in ("noext_a", "noext_b"):
        shutil.copy(site["root"] / "t36uya" / DATES[2 if name.endswith("a") else 4].name, site["root"] / name)
    r = coregister.coregister(f"{site['url']}/noext_a", f"{site['url']}/noext_b", pipeline=pipeline, progress=False)
    assert r["verified"]
    with pytest.raises(PipelineError, match=r"missing.tif: cannot read \(HTTP 404"):
        coregister.coregister(f"{site['url']}/noext_a", f"{site['url']}/missing.tif", pipeline=pipeline, progress=False)
    with socket.socket() as s:                       # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(PipelineError, match=r"cannot read \(connection refused\)"):
        coregister.coregister(f"http://127.0.0.1:{port}/a.tif", f"{site['url']}/noext_b", pipeline=pipeline,
                              progress=False)


def test_a_hung_server_costs_one_time_bound_not_one_a_date(pipeline, tmp_path, monkeypatch, capsys):
    """A server that accepts and never answers: without a total bound an open took 139 s (GDAL
    retries its own 30 s timeout); with one, each date fails within the bound and the dates of a
    stack are opened together — three hung dates cost about one bound, not three — each with a
    reason in words, the good dates opened; a pair with a hung target is one line, exit 2."""
    monkeypatch.setenv("COREGISTER_OPEN_TIMEOUT", "3")
    url, proc = serve(HERE / "data" / "t36uya", "--hang", "/hung*")
    try:
        hung = [f"{url}/hung_2019060{k}_B04.tif" for k in (1, 2, 3)]
        start = time.time()
        products, errors = stack.open_dates([DATES[0], *hung, f"{url}/{DATES[1].name}"], ("B04",))
        elapsed = time.time() - start
        assert sorted(products) == [0, 4] and sorted(errors) == [1, 2, 3]
        assert all("no answer within 3 s" in errors[k] and hung[k - 1] in errors[k] for k in (1, 2, 3))
        assert elapsed < 2 * 3, f"the three hung dates took {elapsed:.1f} s: opened one after another"
        start = time.time()
        assert coregister.main([str(DATES[0]), hung[0], "--output", str(tmp_path / "out")]) == 2
        assert time.time() - start < 2 * 3 + 5
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "no answer within 3 s" in err[0] and "Traceback" not in err[0]
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_remote_catalog_never_names_a_local_file(tmp_path):
    secret = tmp_path / "secret.tif"
    secret.write_bytes(b"not for a remote catalog")
    for href in (str(secret), secret.as_uri()):
        item = {"type": "Feature", "id": "x", "properties": {}, "assets": {"B04": {"href": href}}}
        with pytest.raises(PipelineError, match="names the local file"):
            dp.item_product(dp.ItemRef("https://catalog.example/items/x.json", item))
    relative = {"type": "Feature", "id": "x", "properties": {}, "assets": {"B04": {"href": "../B04.tif"}}}
    product = dp.item_product(dp.ItemRef("https://catalog.example/items/x.json", relative))
    assert product.band_path("B04") == "https://catalog.example/B04.tif"


def test_stac_search_co_registers_what_the_api_finds(site, tmp_path, stack_cli_on_shared_cluster):
    """--stac-search against a STAC API stub: the cloudy date is left out by --max-cloud, the
    dates outside --datetime too; the rest is a stack."""
    out = tmp_path / "found"
    code = coregister.main(["--stack", "--stac-search", site["url"] + "/", "--collection", "s2-test",
                            "--bbox", "36", "50", "38", "51", "--datetime", "2016-03-01/2019-08-31",
                            "--max-cloud", "50", "--output", str(out), "--workers", "2"])
    assert code == 0
    with open(out / "shifts.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["date"] for r in rows) == ["20160621", "20160830", "20190606", "20190815"]
    assert all(r["id"] == f"S2_T36UYA_{r['date']}" and r["status"] in ("ok", "reference") for r in rows)
    nothing = coregister.main(["--stack", "--stac-search", site["url"] + "/", "--collection", "no-such",
                               "--output", str(tmp_path / "none")])
    assert nothing == 2


def moto_server():
    if shutil.which("moto_server") is None:
        pytest.skip("moto's server is not installed (pip install 'moto[server]')")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(["moto_server", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return port, proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    pytest.skip("moto's server did not start")


def test_pair_from_s3(pipeline, monkeypatch):
    """s3:// URLs through GDAL's /vsis3/, credentials and endpoint from the environment only."""
    boto3 = pytest.importorskip("boto3")
    port, proc = moto_server()
    try:
        env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_S3_ENDPOINT": f"127.0.0.1:{port}", "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "FALSE"}
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}")
        s3.create_bucket(Bucket="sentinel-test")
        for f in DATES[2], DATES[4]:
            s3.upload_file(str(f), "sentinel-test", f"t36uya/{f.name}")
        local = coregister.coregister(DATES[2], DATES[4], pipeline=pipeline, progress=False)
        from_s3 = coregister.coregister(f"s3://sentinel-test/t36uya/{DATES[2].name}",
                                        f"s3://sentinel-test/t36uya/{DATES[4].name}", pipeline=pipeline, progress=False)
        np.testing.assert_allclose(from_s3["shift_m"]["shift_px"], local["shift_m"]["shift_px"], atol=1e-9)
        with pytest.raises(PipelineError, match="s3://sentinel-test/t36uya/missing.tif: cannot read"):
            coregister.coregister(f"s3://sentinel-test/t36uya/{DATES[2].name}", "s3://sentinel-test/t36uya/missing.tif",
                                  pipeline=pipeline, progress=False)
    finally:
        proc.terminate()
        proc.wait(10)


# ----------------------------------------------------------------------------- xarray
def dataarray(files: list[Path], moves: dict[str, tuple[float, float]] | None = None):
    """A (time, band, y, x) DataArray of ``files`` (rioxarray), each date's content moved by a
    known band-limited shift (px) where ``moves`` says."""
    import pandas as pd
    import rioxarray
    import xarray as xr

    arrays = []
    for f in files:
        a = rioxarray.open_rasterio(f).load().assign_coords(band=["red"])
        d = (moves or {}).get(date_of(f))
        if d is not None:
            moved = np.clip(np.round(fourier_shift(a.values[0].astype(np.float64), *d)), 1, 255)
            a = a.copy(data=np.where(a.values == 0, 0, moved[None]).astype(a.dtype))
        arrays.append(a)
    return xr.concat(arrays, dim=pd.Index([pd.Timestamp(date_of(f)) for f in files], name="time"))


def xr_concat(a, b):
    import xarray as xr

    return xr.concat([a, b], dim="time")


@pytest.mark.slow
def test_dataarray_in_and_out(tmp_path, dask_client):
    """coregister_dataarray gives the same shifts as the stack of the same files; known content
    moves are measured; align() moves every date onto the reference (re-registered ≈ 0), lazily
    per chunk for a Dask-backed array, same dims, coords and dtype."""
    files = [DATES[1], DATES[2], DATES[4], DATES[5]]
    moves = {"20190606": (0.6, -0.4), "20190815": (-0.3, 0.7)}
    da = dataarray(files, moves)
    for f, a in zip(files, da):
        a.rio.to_raster(tmp_path / f.name)
    on_files = stack.coregister_stack([tmp_path / f.name for f in files], None, str(tmp_path / files[1].name),
                                      client=dask_client, progress=False)
    result = stack.coregister_dataarray(da, reference=1, client=dask_client, output=tmp_path / "xa")
    assert list(result["status"].values) == [r["status"] for r in on_files["dates"]]
    assert json.loads(result.attrs["reused"])["dates"] == 0
    grown = stack.coregister_dataarray(xr_concat(da, dataarray([DATES[6]])), reference=1, client=dask_client,
                                       output=tmp_path / "xa")
    assert json.loads(grown.attrs["reused"])["dates"] == 4 and grown.sizes["time"] == 5
    np.testing.assert_allclose(result["dx_m"].values, [r["dx_m"] for r in on_files["dates"]], atol=1e-9)
    plain = stack.coregister_dataarray(dataarray(files), reference=1, client=dask_client)
    for date, d in moves.items():                    # the moves measured (the dates' own residual cancels)
        k = [date_of(f) for f in files].index(date)
        change = [float(result["dx_px"][k] - plain["dx_px"][k]), float(result["dy_px"][k] - plain["dy_px"][k])]
        np.testing.assert_allclose(change, d, atol=0.1)
    aligned = stack.align(da.chunk({"time": 1, "y": 256, "x": 256}), result)
    assert hasattr(aligned.data, "dask") and aligned.dims == da.dims and aligned.dtype == da.dtype
    assert (aligned["x"].values == da["x"].values).all() and (aligned["time"].values == da["time"].values).all()
    again = stack.coregister_dataarray(aligned.compute(), reference=1, client=dask_client)
    placed = again["status"].values != "excluded"
    assert placed.sum() >= 3
    assert np.abs(np.stack([again["dx_px"].values[placed], again["dy_px"].values[placed]])).max() < 0.1


def test_dataarray_from_odc_stac(site, dask_client):
    """A DataArray as odc-stac loads it from STAC Items (``.to_array("band")``, CRS on its geobox)."""
    odc_stac = pytest.importorskip("odc.stac")
    import pystac

    items = [pystac.Item.from_file(str(p)) for p in sorted((site["root"] / "items").glob("*.json"))]
    items = [i for i in items if i.id.split("_")[-1] in ("20160621", "20160830", "20190606")]
    ds = odc_stac.load(items, bands=["red"], chunks={})
    da = ds.to_array("band")
    if "time" not in da.dims or da.sizes["time"] != 3:
        pytest.skip(f"odc-stac loaded {dict(da.sizes)}")
    da = da.transpose("time", "band", "y", "x")
    result = stack.coregister_dataarray(da, client=dask_client)
    assert (result["status"].values != "excluded").sum() == 3
    assert result.attrs["crs"] == "EPSG:32636"


# ----------------------------------------------------------------------------- a stack that grows
@pytest.mark.slow
def test_a_growing_stack_reuses_its_work(tmp_path, dask_client):
    """3 dates, then 5 into the same folder: the 3 dates' work and pairs reused, the result equal
    to a fresh 5-date run; a changed file is recomputed."""
    folder = tmp_path / "dates"
    folder.mkdir()
    for f in DATES[1:6]:                                # 2016-06-21 … 2019-08-15
        shutil.copy(f, folder / f.name)
    files = sorted(folder.glob("*.tif"))
    first = stack.coregister_stack(files[:3], tmp_path / "out", client=dask_client, progress=False)
    assert first["reused"] == {"dates": 0, "pairs": 0, "locations": 0, "windows": 0}
    grown = stack.coregister_stack(files, tmp_path / "out", client=dask_client, progress=False)
    assert grown["reference"] == first["reference"] and grown["reference_reason"].startswith("kept from the earlier")
    assert grown["reused"]["dates"] == 3 and grown["reused"]["pairs"] >= 2 and grown["computed"]["dates"] == 2
    assert json.loads((tmp_path / "out" / "stack.json").read_text())["reused"] == grown["reused"]
    fresh = stack.coregister_stack(files, tmp_path / "fresh", client=dask_client, progress=False)
    for a, b in zip(grown["dates"], fresh["dates"]):
        assert a["status"] == b["status"]
        np.testing.assert_allclose(a["shift_px"], b["shift_px"], atol=1e-9)
    with rasterio.open(files[4], "r+") as dst:          # the file changes (its brightness): its work is redone
        data = dst.read()
        dst.write(np.where(data > 0, np.maximum(1, data * 0.8), 0).astype(data.dtype))
    changed = stack.coregister_stack(files, tmp_path / "out", client=dask_client, progress=False)
    assert changed["computed"]["dates"] == 1 and changed["reused"]["dates"] == 4
    assert changed["computed"]["pairs"] >= 2
    np.testing.assert_allclose(changed["dates"][4]["shift_px"], fresh["dates"][4]["shift_px"], atol=0.1)


def test_a_date_with_fewer_bands_does_not_cut_the_others_down(tmp_path, dask_client):
    """Three RGB dates and one date of the red band only: the RGB dates are read with B04,B03,B02,
    the single-band date with B04 (and warned); all placed."""
    bracciano = sorted((HERE / "data" / "bracciano").glob("*.tif"))
    with rasterio.open(bracciano[2]) as src:
        profile, red = {**src.profile, "count": 1}, src.read(1)
    with rasterio.open(tmp_path / "20190720_B04.tif", "w", **profile) as dst:
        dst.write(red[None])
    result = stack.coregister_stack([*bracciano, tmp_path / "20190720_B04.tif"], None, reference=str(bracciano[0]),
                                    client=dask_client, progress=False)
    rows = {Path(r["path"]).name: r for r in result["dates"]}
    assert all(rows[f.name]["bands"] == "B04,B03,B02" for f in bracciano)
    odd = rows["20190720_B04.tif"]
    assert odd["bands"] == "B04" and "read with B04 (most dates: B04,B03,B02)" in odd["warnings"]
    assert all(r["status"] != "excluded" for r in result["dates"])


def test_items_geojson_loads_aligned_with_odc_stac(tmp_path, dask_client):
    """items.geojson's assets (VRTs with the corrected georeference) load aligned with odc-stac:
    re-registered, the dates that were 3–5 m off are within 0.6 m (cubic resampling onto one grid)."""
    odc_stac = pytest.importorskip("odc.stac")
    import pystac

    bracciano = sorted((HERE / "data" / "bracciano").glob("*.tif"))
    first = stack.coregister_stack(bracciano, tmp_path / "out", reference=str(bracciano[0]), client=dask_client,
                                   progress=False)
    assert max(np.hypot(r["dx_m"], r["dy_m"]) for r in first["dates"]) > 2.5
    items = pystac.ItemCollection.from_file(str(tmp_path / "out" / "items.geojson"))
    ds = odc_stac.load(items, bands=["B04", "B03", "B02"], crs="EPSG:32632", resolution=10, resampling="cubic")
    again = stack.coregister_dataarray(ds.to_array("band").transpose("time", "band", "y", "x"), reference=0,
                                       client=dask_client)
    assert (again["status"].values != "excluded").all()
    assert np.hypot(again["dx_m"].values, again["dy_m"].values).max() < 0.6


def test_a_read_that_fails_over_the_network_is_not_called_a_corrupt_file():
    """Pixels a server stopped sending after the open (GDAL's timeout) are said as a network
    failure, not as a corrupt or truncated file (which sends the user to download it again);
    a local file's failed read is still a damaged file."""
    exc = rasterio.errors.RasterioIOError("CURL error: Operation timed out after 30002 milliseconds")
    remote_line = str(dp.pixel_read_error("/vsicurl/http://h/a_20190601_B04.tif", exc))
    assert "over the network failed (CURL error: Operation timed out" in remote_line
    assert "corrupt" not in remote_line
    assert "corrupt or truncated" in str(dp.pixel_read_error("/data/a.tif", exc))
