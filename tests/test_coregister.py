"""coregister.py: known shifts recovered on real crops, CRSs, masks, outputs, bad inputs."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine

import s2coreg.config as config
import s2coreg.coregistration.pair as coregister
from s2coreg.matching.pipeline import MatchingPipeline
import s2coreg.samples as fx
from s2coreg.io.imaging import fourier_shift
from s2coreg.utils import PipelineError

pytestmark = pytest.mark.shipped

DATA = Path(__file__).parent / "data" / "bracciano"
REF, SUMMER, OTHER_ZONE = DATA / "20160718.tif", DATA / "20180610.tif", DATA / "20170404.tif"


@pytest.fixture(scope="module")
def pipeline():
    return MatchingPipeline.from_checkpoints()


@pytest.fixture(scope="module")
def summer_pair(pipeline):
    """The Bracciano pair (REF, SUMMER) co-registered once for the tests that read its result:
    ``coregister.coregister(REF, SUMMER, pipeline=pipeline, progress=False)``."""
    return coregister.coregister(REF, SUMMER, pipeline=pipeline, progress=False)


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
    """Another date (real seasonal change) whose *content* is moved 0.42 px (4.2 m) east, then
    0.33 px (3.3 m) south, by a band-limited shift on its own grid: each estimate moves by that,
    sign and axis, within 0.15 m (the dates' own residual cancels). A matcher that returned its
    coarse estimate, or none, fails this."""
    base = shift_of(coregister.coregister(REF, content_shifted(SUMMER, tmp_path / "b.tif", 0, 0), pipeline=pipeline,
                                          progress=False))
    east = shift_of(coregister.coregister(REF, content_shifted(SUMMER, tmp_path / "e.tif", 0.42, 0),
                                          pipeline=pipeline, progress=False))
    south = shift_of(coregister.coregister(REF, content_shifted(SUMMER, tmp_path / "s.tif", 0, 0.33),
                                           pipeline=pipeline, progress=False))
    np.testing.assert_allclose(east - base, [4.2, 0.0], atol=0.15)
    np.testing.assert_allclose(south - base, [0.0, -3.3], atol=0.15)


def test_numpy_blas_runs_on_one_thread_while_a_pair_is_measured_and_as_it_was_after(pipeline, monkeypatch):
    """``utils.one_blas_thread``: OpenBLAS's threads only spin on the engine's small systems, so a
    co-registration runs numpy's BLAS on one thread; the caller's setting (here 2) is back after."""
    from threadpoolctl import threadpool_info, threadpool_limits

    def blas_threads():
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    seen, run = [], coregister.Coregistration.run

    def recording(self):
        seen.append(blas_threads())
        return run(self)

    monkeypatch.setattr(coregister.Coregistration, "run", recording)
    with threadpool_limits(limits=2, user_api="blas"):
        before = blas_threads()
        coregister.coregister(REF, SUMMER, pipeline=pipeline, progress=False)
        assert seen == [{1}] and blas_threads() == before == {2}


def test_a_vrt_named_on_its_own_is_read_as_its_raster(pipeline, summer_pair, tmp_path):
    """Operators hand over GDAL VRTs (a mosaic, a band subset): one named as an input is read as
    the raster it describes — the same shift as from the file itself."""
    import rasterio.shutil

    vrt = tmp_path / "summer.vrt"
    rasterio.shutil.copy(SUMMER, vrt, driver="VRT")
    np.testing.assert_allclose(shift_of(coregister.coregister(REF, vrt, pipeline=pipeline, progress=False)),
                               shift_of(summer_pair), atol=1e-6)


def test_one_rotated_window_gives_the_displacement_at_the_centre(pipeline, tmp_path):
    """A scene whose content is rotated 3° about its centre, one window: its tie points are not one
    translation, and the shift at the overlap's centre is their affine's there (within 1 m of the
    rotation's; the median of the inliers was 29.5 m off, verified), with the note that says why."""
    import cv2

    with rasterio.open(OTHER_ZONE) as src:
        profile, data = src.profile, src.read()
    h, w = data.shape[1:]
    centre = np.array([(w - 1) / 2, (h - 1) / 2])
    R = cv2.getRotationMatrix2D(tuple(centre), 3.0, 1.0)
    rotated = np.stack([cv2.warpAffine(b.astype(np.float32), R, (w, h), flags=cv2.INTER_CUBIC,
                                       borderMode=cv2.BORDER_REFLECT) for b in data]).astype(data.dtype)
    target = tmp_path / "rotated.tif"
    with rasterio.open(target, "w", **profile) as dst:
        dst.write(rotated)
    r = coregister.coregister(OTHER_ZONE, target, pipeline=pipeline, progress=False)
    at = np.array(r["shift_m"]["at"]["px"], np.float64)
    truth_px = R[:, :2] @ at + R[:, 2] - at                  # where the content at ``at`` moved (grid px)
    truth_m = np.array([truth_px[0], -truth_px[1]]) * 10.0   # metres: x east, y north (10 m pixels)
    assert r["windows"]["used"] == 1 and any("not one translation" in w for w in r["warnings"])
    assert np.hypot(*(shift_of(r) - truth_m)) < 1.0, (shift_of(r), truth_m)


def test_georeference_offsets_keep_sign_and_units(pipeline, summer_pair, tmp_path):
    """Sign and units only (the pixels read are the same; the engine adds the fraction by which
    the target's grid sits off the reference's): a georeference moved 4.2 m east, then 3.3 m
    south, comes back as exactly that."""
    base = shift_of(summer_pair)
    east = shift_of(coregister.coregister(REF, shifted(SUMMER, tmp_path / "e.tif", 4.2, 0), pipeline=pipeline,
                                          progress=False))
    south = shift_of(coregister.coregister(REF, shifted(SUMMER, tmp_path / "s.tif", 0, -3.3), pipeline=pipeline,
                                           progress=False))
    np.testing.assert_allclose(east - base, [4.2, 0.0], atol=0.01)
    np.testing.assert_allclose(south - base, [0.0, -3.3], atol=0.01)


def content_shifted(src: Path, out: Path, dx: float, dy: float) -> Path:
    """``src`` with its *content* moved by (dx, dy) px on the same grid: a band-limited (Fourier)
    shift of the reflect-padded image, as a real misregistration looks."""
    with rasterio.open(src) as s:
        profile, data, desc = s.profile, s.read().astype(np.float64), s.descriptions
    moved = np.moveaxis(fourier_shift(np.moveaxis(data, 0, -1), dx, dy), -1, 0)
    top = np.iinfo(np.dtype(profile["dtype"])).max
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(np.clip(np.round(moved), 0 if profile.get("nodata") is None else 1, top).astype(profile["dtype"]))
        dst.descriptions = desc
    return out


def ombria_chip(png: Path, out: Path) -> Path:
    """An OMBRIA chip (8-bit false-colour PNG, no georeference) as an unnamed 3-band uint8
    GeoTIFF on a UTM 10 m grid without a nodata tag — read as RGB, as in the benchmark."""
    from PIL import Image
    from rasterio.transform import from_origin

    rgb = np.asarray(Image.open(png).convert("RGB"))
    with rasterio.open(out, "w", driver="GTiff", width=rgb.shape[1], height=rgb.shape[0], count=3, dtype="uint8",
                       crs="EPSG:32632", transform=from_origin(500_000, 4_800_000, 10, 10)) as dst:
        dst.write(np.moveaxis(rgb, -1, 0))
    return out


@pytest.mark.parametrize("chip", ["0070", "0615"])
def test_a_changed_scene_follows_a_subpixel_move_of_its_content(pipeline, tmp_path, chip):
    """Two OMBRIA validation flood chips (0070: fields and forest a season apart; 0615: land
    turned to water under cloud, its contrast inverted), the target's content moved twice by
    known sub-pixel shifts: the two estimates differ by the shifts' difference within 0.1 px (1 m;
    measured 0.01 and 0.05 px). The learned estimates alone scatter with the keypoints a changed
    scene gives (0.15 and 0.57 px here); the dense refinement follows the content."""
    ombria = Path(__file__).parent / "data" / "ombria"
    ref = ombria_chip(ombria / f"S2_before_{chip}.png", tmp_path / "before.tif")
    after = ombria_chip(ombria / f"S2_after_{chip}.png", tmp_path / "after.tif")
    s1, s2 = np.array([0.82, -1.13]), np.array([-0.64, 0.47])
    estimates = []
    for k, s in enumerate((s1, s2)):
        co = coregister.Coregistration(ref, content_shifted(after, tmp_path / f"t{k}.tif", *s), pipeline=pipeline,
                                       progress=False)
        r = co.run()
        assert r["verified"], r["reason"]
        assert all(w.refined for w in co.pair.windows if w.status == "used")
        estimates.append(np.array(r["shift_m"]["shift_px"]))
    assert np.hypot(*((estimates[1] - estimates[0]) - (s2 - s1))) < 0.1


def test_same_date_precision(pipeline, tmp_path):
    """The reference against itself, moved by a known sub-pixel shift of its content (windows at
    the data's edge: the scene is one window) or of its georeference: within 0.1 m (0.01 px)."""
    r = coregister.coregister(REF, content_shifted(REF, tmp_path / "c.tif", 1.37, -0.62), pipeline=pipeline,
                              progress=False)
    np.testing.assert_allclose(shift_of(r), [13.7, 6.2], atol=0.1)
    # and its georeference moved (sign and units: the same pixels are read)
    r = coregister.coregister(REF, shifted(REF, tmp_path / "t.tif", 2.6, -1.7), pipeline=pipeline, progress=False)
    np.testing.assert_allclose(shift_of(r), [2.6, -1.7], atol=0.1)
    assert r["shift_m"]["sigma_m"] < 0.5 and r["crs"] == "EPSG:32632" and r["windows"]["used"] >= 1
    assert not r["warnings"]


def test_a_window_at_the_data_edge_keeps_the_learned_precision(pipeline, tmp_path):
    """A same-date pair whose content is moved by (−2.25, +2.46) px: the window reaches the data's
    edge on both dates; its learned estimate and its final one lie within 0.05 px of the truth
    (the ECC refinement this replaced was up to 0.5 px off there)."""
    truth = np.array([-2.25, 2.46])
    target = content_shifted(REF, tmp_path / "t.tif", *truth)
    co = coregister.Coregistration(REF, target, pipeline=pipeline, progress=False)
    r = co.run()
    (col, row, w, h), = co.windows
    assert col <= 3 and row <= 3 and col + w >= 315 and row + h >= 314             # all of the overlap
    (win,) = co.pair.windows
    assert np.hypot(*(win.learned_px - truth)) < 0.05 and np.hypot(*(win.shift_px - truth)) < 0.05
    assert np.hypot(*(np.array(r["shift_m"]["shift_px"]) - truth)) < 0.05


def test_target_on_another_utm_zone_in_degrees_or_at_20m(pipeline, summer_pair, tmp_path):
    """The same date on the reference's grid, reprojected to the next UTM zone and to EPSG:4326,
    and averaged to 20 m: resampled onto the grid, the same shift comes out in the
    reference's metres."""
    direct = shift_of(summer_pair)
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
    """Every output of a pair; the target's content moved by (0.63, 0.41) px, its corrected COG
    (georeference moved by the correction) re-registers within 0.3 m."""
    target = content_shifted(SUMMER, tmp_path / "20180610_target.tif", 0.63, 0.41)     # dated by its name
    out = tmp_path / "out"
    r = coregister.coregister(REF, target, out, write_corrected=True, pipeline=pipeline, progress=False)
    info = json.loads((out / "coregistration.json").read_text())
    assert info["verified"] and set(info["shift_m"]) >= {"dx", "dy", "sigma_m", "ce90_m"}
    assert info["windows"]["used"] == r["windows"]["used"] >= 1
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
    (corrected,) = (out / "corrected").glob("*.tif")
    with rasterio.open(corrected) as c, rasterio.open(target) as t:
        assert c.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        np.testing.assert_array_equal(c.read(), t.read())            # moved, not resampled
        assert c.descriptions == t.descriptions
        tags = c.tags()                                              # provenance, as `rio info --tags` shows
    assert tags["SOFTWARE"].startswith(config.PROJECT_NAME) and "window" in json.loads(tags["COREGISTRATION_SETTINGS"])
    assert str(target.resolve()) in json.loads(tags["COREGISTRATION_INPUTS"])
    prov = info["provenance"]
    assert prov["version"] == config.VERSION and prov["settings"]["correction"] == "translation" and prov["created"]
    assert all(Path(p).is_absolute() for p in prov["inputs"] + info["outputs"] + [info["target"]])
    (item,) = json.loads((out / "corrected" / "items.geojson").read_text())["features"]
    assert item["geometry"]["type"] == "Polygon" and 12.0 < item["bbox"][0] < item["bbox"][2] < 12.4
    assert item["properties"]["proj:epsg"] == 32632 and item["links"][0]["rel"] == "derived_from"
    assert item["properties"]["proj:transform"][2] == pytest.approx(rasterio.open(corrected).transform.c)
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
    # the OSCD Pisa dates' own residual on this 320 px crop: (-2.1, +9.9) m, measured (ImageMatcher
    # gives (-2.6, +11.8) on the whole 512 px sample: the residual is not uniform over the scene)
    np.testing.assert_allclose(shift_of(r), [-2.1, 9.9], atol=0.5)
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
    with rasterio.open(tmp_path / "nir.tif", "w", **{**profile, "count": 2}) as dst:
        dst.write(np.full((2, profile["height"], profile["width"]), 1000, np.uint16))
        dst.descriptions = ("B08", "B11")
    with pytest.raises(PipelineError, match="nir.tif: none of the bands B04, B03, B02 .*bands="):
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
        (out,) = (tmp_path / model / "corrected").glob("*.tif")
        with rasterio.open(out) as c, rasterio.open(REF) as ref:
            assert c.transform == ref.transform and c.shape == ref.shape and c.descriptions == ref.descriptions
            assert c.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG" and c.nodata == 0
        again = coregister.coregister(REF, out, pipeline=pipeline, progress=False)
        assert np.hypot(*shift_of(again)) < 0.3 < np.hypot(*shift_of(r)), model


def test_stac_item_and_band_indices(pipeline, summer_pair, tmp_path):
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
    direct = shift_of(summer_pair)
    via_stac = shift_of(coregister.coregister(REF, tmp_path / "item.json", pipeline=pipeline, progress=False))
    np.testing.assert_allclose(via_stac, direct, atol=1e-6)
    with rasterio.open(SUMMER) as s:
        plain = {**s.profile}
    with rasterio.open(tmp_path / "plain.tif", "w", **plain) as dst:     # no band descriptions
        dst.write(data)
    by_index = coregister.coregister(REF, tmp_path / "plain.tif", bands=("1", "2", "3"), pipeline=pipeline,
                                     progress=False)
    assert by_index["bands"] == {"reference": ["1", "2", "3"], "target": ["1", "2", "3"]} and by_index["verified"]
    remote = {**item, "assets": {"red": {"href": "https://example.com/B04.tif"}}}
    (tmp_path / "remote.json").write_text(json.dumps(remote))
    with pytest.raises(PipelineError, match=r"https://example.com/B04.tif: cannot read .* after 3 attempts"):
        coregister.coregister(REF, tmp_path / "remote.json", pipeline=pipeline, progress=False)   # no network here


def test_corrupt_jp2_in_a_safe(pipeline, tmp_path):
    l1c = fx.make_l1c(tmp_path / "a", fx.real_pixels(320, "imgs_1"))
    broken = fx.make_l1c(tmp_path / "c", fx.real_pixels(320, "imgs_2"), date="20180211")
    (jp2,) = broken.glob("GRANULE/*/IMG_DATA/*_B04.jp2")
    jp2.write_bytes(jp2.read_bytes()[:2000])                              # truncated download
    with pytest.raises(PipelineError, match="B04.jp2.*(corrupt|truncated)"):
        coregister.coregister(l1c, broken, pipeline=pipeline, progress=False)


def rotated(src: Path, out: Path, degrees: float) -> Path:
    """``src``'s content rotated about the scene's centre (same grid, same georeference)."""
    import cv2

    with rasterio.open(src) as s:
        profile, data, desc = s.profile, s.read(), s.descriptions
    h, w = data.shape[1:]
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), degrees, 1.0)
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(np.stack([cv2.warpAffine(b, m, (w, h), flags=cv2.INTER_CUBIC) for b in data]))
        dst.descriptions = desc
    return out


def test_a_rotated_target_is_warned_about(pipeline, tmp_path):
    """A target rotated by 3°, measured in 128 px windows (four across the scene): not one
    translation, and the result says so, how, and on how many windows it rests; the same date
    without the rotation gets no warning. (One window cannot show a rotation:
    tests/test_evidence.py.)"""
    cfg = config.replace(config.CoregisterConfig(), window=128, min_window=128)
    r = coregister.coregister(REF, rotated(SUMMER, tmp_path / "rot.tif", 3.0), pipeline=pipeline, progress=False,
                              cfg=cfg)
    warning = r["warnings"][0]
    assert "rotation or scale" in warning and "--correction affine" in warning
    angle = float(re.search(r"rotation ([+-][\d.]+)°", warning).group(1))
    assert abs(angle - 3.0) < 0.1
    assert f"tie points of {r['windows']['used']} windows" in warning and r["windows"]["used"] >= 3
    assert not coregister.coregister(REF, SUMMER, pipeline=pipeline, progress=False, cfg=cfg)["warnings"]


@pytest.mark.parametrize("matcher", ["sift-first", "auto"])
def test_a_rotated_window_gives_the_displacement_where_it_applies(matcher, tmp_path):
    """Under a 3° rotation (128 px windows, the same date) each window's estimate, kept from its
    tie points (the dense fit cannot follow a rotation), is the displacement at the point it says
    it applies (``WindowMeasure.centre``), and the pair's shift at the overlap's centre the
    rotation's there: the inliers' median displacement belongs to the median point, not to their
    centroid (a 2° rotated city, SIFT's points bunched: 4.5 m off at the centre)."""
    import cv2

    cfg = config.replace(config.CoregisterConfig(), window=128, min_window=128, matcher=matcher)
    target = rotated(REF, tmp_path / "rot.tif", 3.0)
    with rasterio.open(REF) as src:
        h, w = src.height, src.width
    R = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), 3.0, 1.0)
    co = coregister.Coregistration(str(REF), str(target), cfg=cfg, progress=False)
    co.run()
    used = [m for m in co.pair.windows if m.status == "used" and not m.refined]
    assert len(used) >= 3
    for m in used:
        truth = R[:, :2] @ m.centre + R[:, 2] - m.centre
        assert np.hypot(*(m.shift_px - truth)) < 0.15, (m.index, m.shift_px, truth)
    at = np.asarray(co.pair.at_px)
    assert np.hypot(*(np.asarray(co.pair.shift_px) - (R[:, :2] @ at + R[:, 2] - at))) < 0.1


@pytest.mark.parametrize("shear, scale", [(0.005, 0.0), (0.0, 0.002)])
def test_a_slight_shear_or_scale_in_one_window_is_measured_at_the_centre(shear, scale, tmp_path):
    """One window (a 318² scene), its content sheared by 0.005 or scaled by 1.002 about the scene's
    centre: too little for the pair's rotation warning, but its tie points show it; the shift at
    the overlap's centre is the truth there within 0.03 px (the window's affine evaluated at the
    window's middle: at its tie points' centroid it was 0.13–0.29 px off, a user trial)."""
    import cv2

    with rasterio.open(SUMMER) as src:
        profile, data = src.profile, src.read()
    h, w = data.shape[1:]
    c = np.array([(w - 1) / 2, (h - 1) / 2])
    L = (1 + scale) * np.array([[1.0, shear], [0.0, 1.0]])
    A = np.hstack([L, (c - L @ c)[:, None]])
    target = tmp_path / "affine.tif"
    with rasterio.open(target, "w", **profile) as dst:
        dst.write(np.stack([cv2.warpAffine(b, A, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
                            for b in data]))
    r = coregister.coregister(SUMMER, target, progress=False)
    at = np.array(r["shift_m"]["at"]["px"], np.float64)
    assert r["windows"]["used"] == 1
    assert np.hypot(*(np.asarray(r["shift_m"]["shift_px"]) - (A[:, :2] @ at + A[:, 2] - at))) < 0.03


def test_a_rotated_target_corrected_by_the_affine_registers_to_zero(pipeline, tmp_path):
    """The same date rotated by 2° (one window: a small scene): the affine holds the rotation
    (within 0.05°) and the target it corrects re-registers within 0.2 m, without a rotation
    warning. (Its translation placed at the tie points' centroid left this target 2.5 m off; on a
    larger scene an affine fitted to the windows' middles held 1.7° and left it 11 m off; the
    resampling's displacement grid, stretched by cv2.resize, left 9 % of the rotation: 0.5 m.)"""
    r = coregister.coregister(REF, rotated(REF, tmp_path / "rot.tif", 2.0), tmp_path / "out", pipeline=pipeline,
                              progress=False, write_corrected=True, correction="affine")
    M = np.array(r["affine"]["matrix"])
    assert abs(np.degrees(np.arctan2(M[1, 0], M[0, 0])) - 2.0) < 0.05
    (warning,) = r["warnings"]                  # one window: it claims no rotation, and advises nothing
    assert "1 window" in warning and "rotation" not in warning and "use --correction" not in warning
    (corrected,) = (tmp_path / "out" / "corrected").glob("*.tif")
    again = coregister.coregister(REF, corrected, pipeline=pipeline, progress=False)
    assert again["verified"] and not again["warnings"] and np.hypot(*shift_of(again)) < 0.2


def test_a_large_offset_and_a_coarser_reference(pipeline, summer_pair, tmp_path):
    """An 80 px (800 m) misregistration found by the coarse step is measured, not refused; a 30 m
    reference (the 10 m reference averaged 3 × 3) co-registers the 10 m target to the same shift
    within a tenth of its pixel."""
    direct = shift_of(summer_pair)
    far = coregister.coregister(REF, shifted(SUMMER, tmp_path / "far.tif", 800, -300), pipeline=pipeline,
                                progress=False)
    assert far["coarse"]["offset_px"][0] == pytest.approx(80, abs=1)
    np.testing.assert_allclose(shift_of(far), direct + [800, -300], atol=0.3)
    from rasterio.windows import Window

    with rasterio.open(REF) as s:
        h, w = s.height // 3 * 3, s.width // 3 * 3
        data = s.read(window=Window(0, 0, w, h)).reshape(3, h // 3, 3, w // 3, 3).mean((2, 4))
        profile = {**s.profile, "width": w // 3, "height": h // 3, "transform": s.transform * Affine.scale(3)}
        with rasterio.open(tmp_path / "ref30.tif", "w", **profile) as dst:
            dst.write(np.round(data).astype(np.uint16))
            dst.descriptions = s.descriptions
    moved = content_shifted(SUMMER, tmp_path / "moved.tif", 1.8, -1.4)          # ~23 m: a zero shift fails
    direct = shift_of(coregister.coregister(REF, moved, pipeline=pipeline, progress=False))
    coarse = coregister.coregister(tmp_path / "ref30.tif", moved, pipeline=pipeline, progress=False)
    assert np.hypot(*direct) > 15
    np.testing.assert_allclose(shift_of(coarse), direct, atol=3.0)


def test_other_utm_zone_corrected_registers_to_zero(pipeline, tmp_path):
    """A date on the neighbouring UTM zone's grid: its corrected COG is moved by the correction
    expressed in its own CRS, so registering it again against the reference gives ≈ 0."""
    r = coregister.coregister(REF, OTHER_ZONE, tmp_path / "out", write_corrected=True, pipeline=pipeline,
                              progress=False)
    (corrected,) = (tmp_path / "out" / "corrected").glob("*.tif")
    with rasterio.open(corrected) as c:
        assert c.crs.to_epsg() == 32633
    again = coregister.coregister(REF, corrected, pipeline=pipeline, progress=False)
    assert np.hypot(*shift_of(r)) > 2 and np.hypot(*shift_of(again)) < 0.3


def write_raster(path: Path, data: np.ndarray, like: Path, **profile) -> Path:
    with rasterio.open(like) as s:
        base = {**s.profile, "count": data.shape[0], "dtype": str(data.dtype), **profile}
    with rasterio.open(path, "w", **base) as dst:
        dst.write(data)
    return path


def test_inputs_as_users_have_them(pipeline, summer_pair, tmp_path):
    """Rasters without band names are used as they are: one band as grey, three as RGB, others
    refused naming the file and --bands; no-data is the file's own value (none without a tag)."""
    with rasterio.open(SUMMER) as s:
        data = s.read()
    direct = shift_of(summer_pair)
    grey = write_raster(tmp_path / "grey.tif", data[:1], SUMMER, nodata=None)
    r = coregister.coregister(REF, grey, pipeline=pipeline, progress=False)
    assert r["bands"]["target"] == ["grey"] and np.hypot(*(shift_of(r) - direct)) < 1.0
    rgb8 = np.clip(data / 12, 0, 255).astype(np.uint8)
    # dark water clipped to 0, its shore fading in: data, not no-data (a block of 0 against bright
    # land from the edge would be fill a file does not declare: tests/test_evidence.py)
    rgb8[:, :46, :46] = np.minimum(rgb8[:, :46, :46], 3)
    rgb8[:, :40, :40] = 0
    eight = write_raster(tmp_path / "rgb8.tif", rgb8, SUMMER, nodata=None)
    r = coregister.coregister(REF, eight, pipeline=pipeline, progress=False)
    assert r["bands"]["target"] == ["B04", "B03", "B02"] and np.hypot(*(shift_of(r) - direct)) < 1.0
    import s2coreg.io.products as dp

    product = coregister.engine.open_date(eight)
    grid = coregister.engine.grid_of(product, ["B04"])
    _, nodata = dp.render(product, ["B04", "B03", "B02"], grid, (0, 0, 80, 80), (80, 80), config.PreprocessConfig())
    assert not nodata.any()                                            # no tag: DN 0 is data
    tagged = write_raster(tmp_path / "tagged.tif", rgb8, SUMMER, nodata=255)
    _, nodata = dp.render(coregister.engine.open_date(tagged), ["B04", "B03", "B02"], grid, (0, 0, 80, 80), (80, 80),
                          config.PreprocessConfig())
    assert not nodata.any()                                            # its own tag (255), not 0
    five = write_raster(tmp_path / "five.tif", np.concatenate([data, data[:2]]), SUMMER)
    with pytest.raises(PipelineError, match=r"five.tif: 5 unnamed bands.*bands="):
        coregister.coregister(REF, five, pipeline=pipeline, progress=False)
    r = coregister.coregister(REF, five, bands=("1", "2", "3"), pipeline=pipeline, progress=False)
    assert r["verified"]


def test_a_rerun_replaces_the_whole_earlier_result(pipeline, tmp_path):
    """A refused rerun into the folder of a verified one leaves no corrected COG or shift field
    of the earlier run beside ``verified: false``; files of others in the folder stay."""
    out = tmp_path / "out"
    assert coregister.main([str(REF), str(SUMMER), "--output", str(out), "--write-corrected"]) == 0
    assert (out / "corrected").is_dir() and (out / "shift_field.tif").exists()
    (out / "my_notes.txt").write_text("mine")
    with rasterio.open(SUMMER) as s:
        profile = s.profile
    with rasterio.open(tmp_path / "blank.tif", "w", **profile) as dst:
        dst.write(np.full((3, profile["height"], profile["width"]), 3000, np.uint16))
        dst.descriptions = ("B04", "B03", "B02")
    assert coregister.main([str(REF), str(tmp_path / "blank.tif"), "--output", str(out)]) == 1
    info = json.loads((out / "coregistration.json").read_text())
    assert not info["verified"] and not (out / "corrected").exists() and not (out / "shift_field.tif").exists()
    assert (out / "my_notes.txt").read_text() == "mine" and not list(out.glob(".building*"))
    assert sorted(p.name for p in out.iterdir() if p.name != ".results") == sorted(     # .results: see test_publishing
        ["coregistration.json", "tie_points.geojson", "tie_points.csv", "report.png", "my_notes.txt"])


def test_an_unwritable_output_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    out = tmp_path / "a_file" / "out"
    assert coregister.main([str(REF), str(SUMMER), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write there" in err and "--output" in err and "Traceback" not in err
    assert coregister.main(["--stack", str(REF), str(SUMMER), "--output", str(out)]) == 2
    assert "cannot write there" in capsys.readouterr().err


def test_single_band_files_of_different_bands_and_bands_as_users_write_them(pipeline, summer_pair, tmp_path):
    """One band file against another (B04 against B08): each read as it is, with a warning that
    the dates show different bands; ``bands`` as a string, as integers (1-based) or common names."""
    with rasterio.open(SUMMER) as s:
        data, profile = s.read(), {**s.profile, "count": 1}
    for name, k in (("T32TQM_20180610_B04.tif", 0), ("T32TQM_20180610_B08.tif", 1)):
        with rasterio.open(tmp_path / name, "w", **profile) as dst:
            dst.write(data[k:k + 1])
    r = coregister.coregister(tmp_path / "T32TQM_20180610_B04.tif", tmp_path / "T32TQM_20180610_B08.tif",
                              pipeline=pipeline, progress=False)
    assert r["bands"] == {"reference": ["B04"], "target": ["B08"]} and "different bands" in r["warnings"][-1]
    direct = shift_of(summer_pair)
    for bands in ("B04,B03,B02", ("red", "green", "blue"), (1, 2, 3)):
        r = coregister.coregister(REF, SUMMER, bands=bands, pipeline=pipeline, progress=False)
        np.testing.assert_allclose(shift_of(r), direct, atol=1e-6)
    with pytest.raises(PipelineError, match="1-based"):
        coregister.coregister(REF, SUMMER, bands=(0, 1, 2), pipeline=pipeline, progress=False)
    # a five-band raster naming one Sentinel-2 band (NIR) and four others it cannot read (R, G, B,
    # SWIR) is not co-registered on NIR alone: refused, naming what it has and the flag
    with rasterio.open(REF) as s:
        data, profile = s.read(), {**s.profile, "count": 5}
    with rasterio.open(tmp_path / "five.tif", "w", **profile) as dst:
        dst.write(np.concatenate([data[:1], data, data[2:]]))
        dst.descriptions = ("NIR", "R", "G", "B", "SWIR")
    with pytest.raises(PipelineError, match="none of the bands B04, B03, B02 .it has: B08; bands 1-5 by index.*bands="):
        coregister.coregister(tmp_path / "five.tif", tmp_path / "five.tif", pipeline=pipeline, progress=False)


def test_a_target_covering_part_of_a_small_reference(pipeline, tmp_path):
    """The windows lie inside what both dates cover, whichever is the reference."""
    from rasterio.windows import Window

    with rasterio.open(SUMMER) as s:
        win = Window(150, 120, 168, 197)
        profile = {**s.profile, "width": 168, "height": 197, "transform": s.window_transform(win)}
        with rasterio.open(tmp_path / "part.tif", "w", **profile) as dst:
            dst.write(s.read(window=win))
            dst.descriptions = s.descriptions
    a = coregister.coregister(REF, tmp_path / "part.tif", pipeline=pipeline, progress=False)
    b = coregister.coregister(tmp_path / "part.tif", REF, pipeline=pipeline, progress=False)
    np.testing.assert_allclose(shift_of(a), -shift_of(b), atol=0.5)


def test_a_reference_on_a_rotated_grid(pipeline, tmp_path):
    """A reference whose geotransform is rotated (10°): the pair measures the same shift as on the
    north-up grid, and the affine correction resampled onto the rotated grid registers to ≈ 0."""
    from rasterio.warp import Resampling, reproject

    with rasterio.open(REF) as s:
        t = s.transform
        angle = np.radians(10)
        rot = Affine(10 * np.cos(angle), 10 * np.sin(angle), t.c + 500, 10 * np.sin(angle), -10 * np.cos(angle),
                     t.f - 300)
        out = np.zeros((3, 220, 220), np.uint16)
        reproject(s.read(), out, src_transform=t, src_crs=s.crs, dst_transform=rot, dst_crs=s.crs,
                  resampling=Resampling.cubic, src_nodata=0, dst_nodata=0)
        profile = {**s.profile, "width": 220, "height": 220, "transform": rot}
    with rasterio.open(tmp_path / "rot.tif", "w", **profile) as dst:
        dst.write(out)
        dst.descriptions = ("B04", "B03", "B02")
    target = content_shifted(SUMMER, tmp_path / "moved.tif", 2.5, -1.5)     # ~29 m: 10° left out moves it 5 m
    direct = shift_of(coregister.coregister(REF, target, pipeline=pipeline, progress=False))
    r = coregister.coregister(tmp_path / "rot.tif", target, tmp_path / "out", write_corrected=True,
                              correction="affine", pipeline=pipeline, progress=False)
    assert np.hypot(*direct) > 20
    np.testing.assert_allclose(shift_of(r), direct, atol=0.5)
    (corrected,) = (tmp_path / "out" / "corrected").glob("*.tif")
    again = coregister.coregister(tmp_path / "rot.tif", corrected, pipeline=pipeline, progress=False)
    assert np.hypot(*shift_of(again)) < 0.5 and not any("rotation" in w for w in again["warnings"])


def test_a_web_mercator_reference_reports_ground_metres(pipeline, tmp_path):
    """EPSG:3857's units are 1/cos(latitude) ground metres (1.35 at Lake Bracciano): the shift is
    reported in the local UTM zone's metres, as for a geographic reference."""
    target = content_shifted(SUMMER, tmp_path / "moved.tif", 2.5, -1.5)     # ~29 m: a unit slip shows
    direct = shift_of(coregister.coregister(REF, target, pipeline=pipeline, progress=False))
    mercator = coregister.coregister(reprojected(REF, tmp_path / "ref3857.tif", "EPSG:3857"), target,
                                     pipeline=pipeline, progress=False)
    assert mercator["shift_m"]["metric_crs"] == "EPSG:32633" or mercator["shift_m"]["metric_crs"] == "EPSG:32632"
    assert np.hypot(*direct) > 20
    # as long as the UTM reference's within 3 % (Mercator units would be 35 % more); its direction
    # within 5°: the local UTM zone's grid north may be the next zone's (4° apart here)
    m = shift_of(mercator)
    assert abs(np.hypot(*m) / np.hypot(*direct) - 1) < 0.03
    assert abs(np.degrees(np.arctan2(m[1], m[0]) - np.arctan2(direct[1], direct[0]))) < 5


def test_flags_of_the_other_mode_are_refused(capsys):
    with pytest.raises(SystemExit) as stop:
        coregister.main([str(REF), str(SUMMER), "--workers", "2"])
    assert stop.value.code == 2 and "for --stack only" in capsys.readouterr().err


def test_a_coarse_date_is_not_warned_about_its_own_pixels(pipeline):
    """A 60 m band against a 20 m one (real crops of tile 18SVG): their tie points scatter by a
    fraction of a 60 m pixel — noise at that resolution, not a rotation — so no rotation warning;
    the shift is within a third of the coarse pixel of the bands' own registration."""
    jp2 = Path(__file__).parent / "data" / "jp2_18SVG"
    r = coregister.coregister(jp2 / "s2_B11.tif", jp2 / "s2_B01.tif", pipeline=pipeline, progress=False)
    assert r["verified"] and not any("rotation" in w for w in r["warnings"])
    assert np.hypot(*shift_of(r)) < 20 and any("different bands" in w for w in r["warnings"])


@pytest.mark.parametrize("share,nan", [(0.01, False), (0.05, True)])
def test_scattered_no_data_specks_are_matched_through(pipeline, summer_pair, tmp_path, share, nan):
    """1 % (no-data value 0) or 5 % (NaN in a float file) of the target's pixels no data at random
    (single pixels): filled from their neighbours for matching, so the pair keeps most of its tie
    points and its shift (5 % used to refuse the pair: OpenCV's inpainting overshot on floats)."""
    clean = summer_pair
    with rasterio.open(SUMMER) as s:
        profile, data, desc = s.profile, s.read(), s.descriptions
    holes = np.random.default_rng(0).random(data.shape[1:]) < share
    if nan:
        data, profile = data.astype(np.float32), {**profile, "dtype": "float32", "nodata": np.nan}
    data[:, holes] = np.nan if nan else 0
    with rasterio.open(tmp_path / "specks.tif", "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = desc
    r = coregister.coregister(REF, tmp_path / "specks.tif", pipeline=pipeline, progress=False)
    assert r["verified"] and r["tie_points"] >= 0.8 * clean["tie_points"]
    np.testing.assert_allclose(shift_of(r), shift_of(clean), atol=0.2)


def test_the_result_is_typed_and_reads_as_its_json(summer_pair):
    import s2coreg.results as results

    r = summer_pair
    assert isinstance(r, results.CoregistrationResult) and isinstance(r.shift_m, results.ShiftEstimate)
    assert r.shift_m.sigma_m == r["shift_m"]["sigma_m"] and r.shift_m.se_x is not None and r.shift_m.se is None
    assert r.verified is r["verified"] and r.windows["used"] >= 1 and set(r) >= {"provenance", "warnings"}


def test_the_learned_path_loads_where_first_needed_and_a_bad_checkpoint_is_one_line(tmp_path):
    """sift-first's learned path (a pair's default) is built where SIFT first does not answer: a
    missing checkpoint is one line before any work, an unreadable one is one line where it loads
    (here: SIFT made to verify nothing, so the coarse step needs it), and nothing is written."""
    import shutil

    with pytest.raises(PipelineError, match="no such checkpoint"):
        MatchingPipeline.from_checkpoints(tmp_path / "missing", matcher="sift-first", lazy=True)
    (tmp_path / "superpoint.pt").write_bytes(b"not a checkpoint")
    shutil.copy(config.CHECKPOINT_DIR / "superglue.pt", tmp_path / "superglue.pt")
    p = MatchingPipeline.from_checkpoints(tmp_path, matcher="sift-first", lazy=True, keep_more_inliers=True)
    assert not p.fallback.loaded and p.name == "sift+ratio+correlate, else superpoint+superglue+refine+correlate"
    p.first.min_inliers = 10 ** 6                     # SIFT verifies nothing: the learned path is needed
    with pytest.raises(PipelineError, match="superpoint.pt: not a readable PyTorch checkpoint"):
        coregister.coregister(REF, SUMMER, tmp_path / "out", pipeline=p, progress=False)
    assert not (tmp_path / "out").exists()
    # without superglue.pt the learned path is SuperPoint + mutual nearest neighbours: said, not silent
    (tmp_path / "superglue.pt").unlink()
    shutil.copy(config.CHECKPOINT_DIR / "superpoint.pt", tmp_path / "superpoint.pt")
    p = MatchingPipeline.from_checkpoints(tmp_path, matcher="sift-first", lazy=True, keep_more_inliers=True)
    r = coregister.coregister(REF, SUMMER, pipeline=p, progress=False)
    assert r.verified and any("no superglue*.pt" in w for w in r["warnings"])
    assert not any("superglue" in w for w in coregister.coregister(REF, SUMMER, progress=False)["warnings"])


def test_windows_matched_in_the_fast_mode(pipeline, summer_pair, tmp_path):
    """``--matcher fast`` and the pair's default, sift-first (``CoregisterConfig.matcher`` None):
    the same shift as SuperGlue's within 0.05 m (the dense fit makes each precise), the path in
    the provenance."""
    cfg = config.replace(config.CoregisterConfig(), matcher="fast")
    fast = coregister.coregister(REF, SUMMER, cfg=cfg, progress=False)
    direct = summer_pair
    assert np.hypot(*(shift_of(fast) - shift_of(direct))) < 0.05
    assert fast["provenance"]["settings"]["matcher"] == "fast"
    assert fast["provenance"]["settings"]["matching"].startswith("superpoint+mnn")
    default = coregister.coregister(REF, SUMMER, progress=False)
    assert config.CoregisterConfig.matcher is None and default["provenance"]["settings"]["matcher"] == "sift-first"
    assert default["provenance"]["settings"]["matching"].startswith("sift+ratio+correlate, else superpoint+superglue")
    assert np.hypot(*(shift_of(default) - shift_of(direct))) < 0.05
    for r, paths in ((default, {"sift", "learned"}), (fast, {"mnn", "superglue"})):   # which path matched each window
        assert set(r["windows"]["matched_by"]) <= paths and sum(r["windows"]["matched_by"].values()) == r.windows["used"]
    # a pipeline given is what runs, and what the provenance records, whatever cfg.matcher says
    given = coregister.coregister(REF, SUMMER, cfg=cfg, pipeline=pipeline, progress=False)
    assert given["provenance"]["settings"]["matcher"] == "superglue"
    assert given["provenance"]["settings"]["matching"] == pipeline.name
    np.testing.assert_allclose(shift_of(given), shift_of(direct), atol=1e-9)
    assert coregister.main([str(REF), str(SUMMER), "--matcher", "fast", "--output", str(tmp_path / "out")]) == 0
    written = json.loads((tmp_path / "out" / "coregistration.json").read_text())
    assert written["provenance"]["settings"]["matcher"] == "fast"


@pytest.mark.parametrize("name, tags, date, source", [
    ("2023-06-30-22-01-55_L9_ms.tif", {}, "20230630", "name"),
    ("20230630.tif", {}, "20230630", "name"),
    ("scene_2023_06_30.tif", {}, "20230630", "name"),
    ("S2A_MSIL1C_20230630T101559_N0509_R065_T32TQM_20230701T140000_B04.tif", {}, "20230630", "Sentinel-2 product id"),
    ("LC09_L2SP_123045_20230630_20230702_02_T1_SR_B4.TIF", {}, "20230630", "Landsat product id"),
    ("T36UYA_12345678.tif", {}, "", "unknown"),                       # 8 digits, not a date
    ("tile_20231399.tif", {"TIFFTAG_DATETIME": "2024:01:05 10:00:00"}, "20240105", "tag TIFFTAG_DATETIME"),
    ("cut_20240105.tif", {"ACQUISITIONDATE": "2023-06-30T10:15:59Z"}, "20230630", "tag ACQUISITIONDATE"),
])
def test_acquisition_dates_from_tags_and_names(tmp_path, name, tags, date, source):
    path = tmp_path / name
    with rasterio.open(REF) as s:
        profile, data = s.profile, s.read(1)
    profile.update(count=1)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
        dst.update_tags(**tags)
    product = coregister.engine.open_date(path)
    assert coregister.engine.acquisition_date(product, path) == (date, source)
    assert coregister.engine.acquisition_date(product, path, "2020-02-29") == ("20200229", "--date")


def test_a_pair_without_dates_writes_stac_that_validates_once_dated(pipeline, tmp_path, capsys):
    """Names without dates: no STAC Item (pystac refuses one without a datetime), one line says how
    to give one; with ``--date NAME=YYYY-MM-DD`` the Item is written and passes pystac."""
    import pystac

    ref = tmp_path / "ref.tif"
    ref.write_bytes(REF.read_bytes())
    target = shifted(SUMMER, tmp_path / "target.tif", 6.3, -4.1)
    coregister.coregister(ref, target, tmp_path / "a", write_corrected=True, pipeline=pipeline, progress=False)
    assert "target=YYYY-MM-DD" in capsys.readouterr().err
    assert len(pystac.ItemCollection.from_file(str(tmp_path / "a" / "corrected" / "items.geojson"))) == 0
    r = coregister.coregister(ref, target, tmp_path / "b", write_corrected=True, pipeline=pipeline, progress=False,
                              dates={"target": "2018-06-10"})
    (item,) = pystac.ItemCollection.from_file(str(tmp_path / "b" / "corrected" / "items.geojson"))
    assert item.datetime.strftime("%Y-%m-%d") == "2018-06-10" and item.geometry and item.bbox
    pystac.Item.from_dict(item.to_dict())
    assert r["verified"]


def tiled(src: Path, out: Path, n: int = 3, blank: tuple[slice, slice] | None = None) -> Path:
    """``src`` repeated ``n`` × ``n`` on one grid (a scene large enough for many small windows);
    ``blank``: (rows, cols) set to no-data."""
    with rasterio.open(src) as s:
        profile, data, desc = s.profile, s.read(), s.descriptions
    data = np.tile(data, (1, n, n))
    if blank is not None:
        data[:, blank[0], blank[1]] = 0
    profile.update(width=data.shape[2], height=data.shape[1], nodata=0)
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = desc
    return out


@pytest.fixture(scope="module")
def tiled_pair(tmp_path_factory):
    """Bracciano's two dates, each repeated 3 × 3 (951 × 954 px); the target's top-left 320² px
    no-data (the windows there cannot answer)."""
    folder = tmp_path_factory.mktemp("tiled")
    return tiled(REF, folder / "ref.tif"), tiled(SUMMER, folder / "tgt.tif", blank=(slice(0, 320), slice(0, 320)))


SMALL_WINDOWS = dict(window=128, min_window=128)        # 49 windows of 128² on the tiled scene


def test_windows_are_read_best_first_until_they_bound_the_pair(pipeline, tiled_pair):
    """A pair ranks its windows on the overviews, reads them best first in rounds over 3 × 3
    blocks of the overlap and stops once enough verified windows span it: fewer windows read than
    planned, those under the target's no-data never read, the used ones in every block row and
    column, and the shift that of every window read (within 0.05 px). The JSON counts them:
    planned = read + not read, read = used + rejected."""
    ref, tgt = tiled_pair
    every = coregister.Coregistration(ref, tgt, cfg=config.replace(config.CoregisterConfig(), stop_windows=0,
                                                                    **SMALL_WINDOWS), pipeline=pipeline)
    r_all = every.run()
    co = coregister.Coregistration(ref, tgt, cfg=config.replace(config.CoregisterConfig(), **SMALL_WINDOWS),
                                   pipeline=pipeline)
    r = co.run()
    w = r["windows"]
    assert w["planned"] == r_all["windows"]["planned"] >= 40
    assert w["planned"] == w["tried"] + sum(w["skipped"].values()) and w["tried"] == w["used"] + w["rejected"]
    assert w["skipped"].get(coregister.engine.SKIP_INVALID, 0) >= 4          # under the target's no-data
    assert w["skipped"].get(coregister.engine.SKIP_ENOUGH, 0) > 0 and w["tried"] < r_all["windows"]["tried"]
    assert r_all["windows"]["skipped"].get(coregister.engine.SKIP_ENOUGH, 0) == 0
    blank = [k for k, (c, row, ww, wh) in enumerate(co.windows) if c + ww <= 320 and row + wh <= 320]
    assert blank and not set(blank) & set(co.a.features)          # never read (the reference's either)
    c0, r0, c1, r1 = co.region
    used = np.array([m.centre for m in co.pair.windows if m.status == "used"])
    cols = set(((used[:, 0] - c0) / (c1 - c0) * 3).astype(int))
    rows = set(((used[:, 1] - r0) / (r1 - r0) * 3).astype(int))
    assert cols == rows == {0, 1, 2}
    assert np.abs(np.array(r["shift_m"]["shift_px"]) - r_all["shift_m"]["shift_px"]).max() < 0.05


def test_windows_side_by_side_give_the_same_answer_as_one_thread(pipeline, tiled_pair):
    """Two threads (windows side by side, one torch thread each) measure the same windows and the
    same shift as one: a window still running when enough are measured is dropped, not used."""
    from s2coreg.utils import set_threads

    ref, tgt = tiled_pair
    cfg = config.replace(config.CoregisterConfig(), **SMALL_WINDOWS)
    results = []
    try:
        for threads in (1, 2):
            set_threads(threads)
            co = coregister.Coregistration(ref, tgt, cfg=cfg, pipeline=pipeline)
            r = co.run()
            results.append((r["windows"], r["shift_m"]["shift_px"],
                            sorted(m.index for m in co.pair.windows if m.status == "used")))
    finally:
        set_threads(1)
    assert results[0][2] and results[0][2] == results[1][2]
    assert results[0][0] == results[1][0] and np.allclose(results[0][1], results[1][1], atol=1e-6)
