"""coregister.py: known shifts recovered on real crops, CRSs, masks, outputs, bad inputs."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine

import config
import coregister
from matching import MatchingPipeline
from tests import safe_fixture as fx
from utils import PipelineError

pytestmark = pytest.mark.shipped

DATA = Path(__file__).parent / "data" / "bracciano"
REF, SUMMER, OTHER_ZONE = DATA / "20160718.tif", DATA / "20180610.tif", DATA / "20170404.tif"


@pytest.fixture(scope="module")
def pipeline():
    return MatchingPipeline.from_checkpoints()


def shifted(src: Path, out: Path, dx: float, dy: float, fill: tuple[slice, slice] | None = None) -> Path:
    """``src`` with its georeference moved by (dx, dy) map units: its content then lies at P + d.
    ``fill``: (rows, cols) set to nodata."""
    with rasterio.open(src) as s:
        profile, data, desc = s.profile, s.read(), s.descriptions
        profile["transform"] = Affine.translation(dx, dy) * s.transform
    if fill is not None:
        data[:, fill[0], fill[1]] = 0
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = desc
    return out


def reprojected(src: Path, out: Path, crs: str) -> Path:
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    with rasterio.open(src) as s:
        transform, w, h = calculate_default_transform(s.crs, crs, s.width, s.height, *s.bounds)
        profile = {**s.profile, "crs": crs, "transform": transform, "width": w, "height": h}
        with rasterio.open(out, "w", **profile) as dst:
            for b in range(1, s.count + 1):
                reproject(rasterio.band(s, b), rasterio.band(dst, b), resampling=Resampling.cubic,
                          src_nodata=0, dst_nodata=0)
            dst.descriptions = s.descriptions
    return out


def shift_of(result: dict) -> np.ndarray:
    assert result["verified"], result["reason"]
    return np.array([result["shift_m"]["dx"], result["shift_m"]["dy"]])


def test_known_shift_recovered_along_each_axis(pipeline, tmp_path):
    """Another date (real seasonal change) with its georeference moved 4.2 m east, then 3.3 m
    south: each estimate moves by exactly that, sign and axis (the dates' own residual cancels)."""
    base = shift_of(coregister.coregister(REF, SUMMER, pipeline=pipeline, progress=False))
    east = shift_of(coregister.coregister(REF, shifted(SUMMER, tmp_path / "e.tif", 4.2, 0), pipeline=pipeline,
                                          progress=False))
    south = shift_of(coregister.coregister(REF, shifted(SUMMER, tmp_path / "s.tif", 0, -3.3), pipeline=pipeline,
                                           progress=False))
    np.testing.assert_allclose(east - base, [4.2, 0.0], atol=0.5)
    np.testing.assert_allclose(south - base, [0.0, -3.3], atol=0.5)


def test_same_date_precision(pipeline, tmp_path):
    r = coregister.coregister(REF, shifted(REF, tmp_path / "t.tif", 2.6, -1.7), pipeline=pipeline, progress=False)
    np.testing.assert_allclose(shift_of(r), [2.6, -1.7], atol=0.3)
    assert r["shift_m"]["sigma_m"] < 0.5 and r["crs"] == "EPSG:32632" and r["windows"]["used"] >= 3


def test_target_on_another_utm_zone_in_degrees_or_at_20m(pipeline, tmp_path):
    """The same date on the reference's grid, reprojected to the next UTM zone and to EPSG:4326,
    and averaged to 20 m: read through a virtual warp, the same shift comes out in the
    reference's metres."""
    direct = shift_of(coregister.coregister(REF, SUMMER, pipeline=pipeline, progress=False))
    for crs in ("EPSG:32633", "EPSG:4326"):
        r = coregister.coregister(REF, reprojected(SUMMER, tmp_path / f"{crs[5:]}.tif", crs), pipeline=pipeline,
                                  progress=False)
        np.testing.assert_allclose(shift_of(r), direct, atol=0.6)
    assert coregister.coregister(REF, OTHER_ZONE, pipeline=pipeline, progress=False)["verified"]
    # and at 20 m: 2 × 2 pixels averaged, the grid's pixels twice as large
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    with rasterio.open(SUMMER) as s:
        data = s.read(window=Window(0, 0, 318, 316), out_shape=(3, 158, 159), resampling=Resampling.average)
        profile = {**s.profile, "width": 159, "height": 158, "transform": s.transform * Affine.scale(2, 2)}
        descriptions = s.descriptions
    with rasterio.open(tmp_path / "20m.tif", "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = descriptions
    r = coregister.coregister(REF, tmp_path / "20m.tif", pipeline=pipeline, progress=False)
    np.testing.assert_allclose(shift_of(r), direct, atol=0.6)


def test_outputs_and_the_corrected_target_registers_to_zero(pipeline, tmp_path):
    target = shifted(SUMMER, tmp_path / "target.tif", 6.3, -4.1)
    out = tmp_path / "out"
    r = coregister.coregister(REF, target, out, write_corrected=True, pipeline=pipeline, progress=False)
    info = json.loads((out / "coregistration.json").read_text())
    assert info["verified"] and set(info["shift_m"]) >= {"dx", "dy", "sigma_m", "ce90_m"}
    assert info["affine"]["matrix"] and info["windows"]["used"] == r["windows"]["used"]
    geojson = json.loads((out / "tie_points.geojson").read_text())
    rows = list(csv.DictReader(open(out / "tie_points.csv")))
    assert len(geojson["features"]) == len(rows) >= info["tie_points"] > 50
    lon, lat = geojson["features"][0]["geometry"]["coordinates"]
    assert 12.0 < lon < 12.4 and 42.0 < lat < 42.2                  # Lake Bracciano
    with rasterio.open(out / "shift_field.tif") as f:
        assert f.count == 2 and f.crs.to_epsg() == 32632
        field = f.read()
    np.testing.assert_allclose(np.median(field, axis=(1, 2)), shift_of(r), atol=1.0)
    assert (out / "report.png").stat().st_size > 20_000
    (corrected,) = (out / "corrected").iterdir()
    with rasterio.open(corrected) as c, rasterio.open(target) as t:
        assert c.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        np.testing.assert_array_equal(c.read(), t.read())            # moved, not resampled
        assert c.descriptions == t.descriptions
    again = coregister.coregister(REF, corrected, pipeline=pipeline, progress=False)
    assert np.hypot(*shift_of(again)) < 0.3


def test_nodata_and_cloud_masks_move_no_tie_point_there(pipeline, tmp_path):
    target = shifted(SUMMER, tmp_path / "t.tif", 0, 0, fill=(slice(None), slice(0, 159)))   # left half nodata
    cfg = config.replace(config.CoregisterConfig(), min_windows=1)
    r = coregister.coregister(REF, target, tmp_path / "out", cfg=cfg, pipeline=pipeline, progress=False)
    rows = list(csv.DictReader(open(tmp_path / "out" / "tie_points.csv")))
    assert r["verified"] and rows
    with rasterio.open(REF) as src:
        mid = (src.transform * (159, 0))[0]
    assert min(float(row["ref_x"]) for row in rows) > mid


def test_safe_products_with_their_cloud_masks(pipeline, tmp_path):
    """Two L1C products of one place (summer, and winter zipped), each with a cloud in the
    top-left corner of MSK_CLASSI: co-registered, and no tie point under the cloud."""
    summer = fx.make_l1c(tmp_path / "a", fx.real_pixels(320, "imgs_1"), date="20150704")
    winter = fx.make_l1c(tmp_path / "b", fx.real_pixels(320, "imgs_2"), date="20180211", zip_it=True)
    r = coregister.coregister(summer, winter, tmp_path / "out", pipeline=pipeline, progress=False)
    assert np.hypot(*shift_of(r)) < 15                       # the OSCD dates: about a pixel apart
    rows = list(csv.DictReader(open(tmp_path / "out" / "tie_points.csv")))
    corner = (320 // 6) // 4 * 60                              # the fixture's cloud: a quarter of the 60 m mask
    cloud_x, cloud_y = fx.ULX + corner, fx.ULY - corner
    assert rows and not any(float(p["ref_x"]) < cloud_x and float(p["ref_y"]) > cloud_y for p in rows)


def test_bad_inputs_one_line_and_nothing_half_written(pipeline, tmp_path, capsys):
    out = tmp_path / "out"
    assert coregister.main([str(REF), str(tmp_path / "missing.tif"), "--output", str(out)]) == 2
    assert "missing.tif: no such file" in capsys.readouterr().err and not out.exists()
    far = shifted(SUMMER, tmp_path / "far.tif", 100_000, 0)
    with pytest.raises(PipelineError, match="does not overlap the reference"):
        coregister.coregister(REF, far, pipeline=pipeline, progress=False)
    (tmp_path / "corrupt.tif").write_bytes(b"II*\x00 not a tiff")
    with pytest.raises(PipelineError, match="corrupt.tif"):
        coregister.coregister(REF, tmp_path / "corrupt.tif", pipeline=pipeline, progress=False)
    with rasterio.open(SUMMER) as s:
        profile = s.profile
    with rasterio.open(tmp_path / "nir.tif", "w", **{**profile, "count": 1}) as dst:
        dst.write(np.full((1, profile["height"], profile["width"]), 1000, np.uint16))
        dst.descriptions = ("B08",)
    with pytest.raises(PipelineError, match="none of the bands B04, B03, B02 in both products"):
        coregister.coregister(REF, tmp_path / "nir.tif", pipeline=pipeline, progress=False)
    # a blank target (cloud-covered, uniform): refused with its reason, no corrected output
    with rasterio.open(tmp_path / "blank.tif", "w", **profile) as dst:
        dst.write(np.full((3, profile["height"], profile["width"]), 3000, np.uint16))
        dst.descriptions = ("B04", "B03", "B02")
    assert coregister.main([str(REF), str(tmp_path / "blank.tif"), "--output", str(out), "--write-corrected"]) == 1
    info = json.loads((out / "coregistration.json").read_text())
    assert not info["verified"] and info["reason"] and info["shift_m"] is None
    assert not (out / "corrected").exists() and not list(out.glob(".*part*"))


def test_resampled_corrections_on_the_reference_grid(pipeline, tmp_path):
    """--correction affine / field: the target resampled onto the reference grid (every band,
    nodata kept) registers to ~0 against the reference."""
    target = shifted(REF, tmp_path / "t.tif", 6.3, -4.1)
    for model in ("affine", "field"):
        r = coregister.coregister(REF, target, tmp_path / model, write_corrected=True, correction=model,
                                  pipeline=pipeline, progress=False)
        (out,) = (tmp_path / model / "corrected").iterdir()
        with rasterio.open(out) as c, rasterio.open(REF) as ref:
            assert c.transform == ref.transform and c.shape == ref.shape and c.descriptions == ref.descriptions
            assert c.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG" and c.nodata == 0
        again = coregister.coregister(REF, out, pipeline=pipeline, progress=False)
        assert np.hypot(*shift_of(again)) < 0.3 < np.hypot(*shift_of(r)), model


def test_stac_item_and_band_indices(pipeline, tmp_path):
    """A local STAC Item whose assets are single-band files (named by eo:bands or common names),
    and a file without band names read by 1-based band indices."""
    with rasterio.open(SUMMER) as s:
        profile, data = {**s.profile, "count": 1}, s.read()
    assets = {}
    for k, (key, eo) in enumerate([("red", None), ("green", "B03"), ("blue", None)]):
        with rasterio.open(tmp_path / f"band{k}.tif", "w", **profile) as dst:
            dst.write(data[k:k + 1])
        assets[key] = {"href": f"band{k}.tif", **({"eo:bands": [{"name": eo}]} if eo else {})}
    item = {"type": "Feature", "stac_version": "1.0.0", "id": "S2B_test", "properties": {"datetime":
            "2018-06-10T10:00:00Z"}, "geometry": None, "assets": assets}
    (tmp_path / "item.json").write_text(json.dumps(item))
    direct = shift_of(coregister.coregister(REF, SUMMER, pipeline=pipeline, progress=False))
    via_stac = shift_of(coregister.coregister(REF, tmp_path / "item.json", pipeline=pipeline, progress=False))
    np.testing.assert_allclose(via_stac, direct, atol=1e-6)
    with rasterio.open(SUMMER) as s:
        plain = {**s.profile}
    with rasterio.open(tmp_path / "plain.tif", "w", **plain) as dst:     # no band descriptions
        dst.write(data)
    by_index = coregister.coregister(REF, tmp_path / "plain.tif", bands=("1", "2", "3"), pipeline=pipeline,
                                     progress=False)
    assert by_index["bands"] == ["1", "2", "3"] and by_index["verified"]
    remote = {**item, "assets": {"red": {"href": "https://example.com/B04.tif"}}}
    (tmp_path / "remote.json").write_text(json.dumps(remote))
    with pytest.raises(PipelineError, match="remote.*download the assets"):
        coregister.coregister(REF, tmp_path / "remote.json", pipeline=pipeline, progress=False)


def test_corrupt_jp2_in_a_safe(pipeline, tmp_path):
    l1c = fx.make_l1c(tmp_path / "a", fx.real_pixels(320, "imgs_1"))
    broken = fx.make_l1c(tmp_path / "c", fx.real_pixels(320, "imgs_2"), date="20180211")
    (jp2,) = broken.glob("GRANULE/*/IMG_DATA/*_B04.jp2")
    jp2.write_bytes(jp2.read_bytes()[:2000])                              # truncated download
    with pytest.raises(PipelineError, match="B04.jp2.*(corrupt|truncated)"):
        coregister.coregister(l1c, broken, pipeline=pipeline, progress=False)
