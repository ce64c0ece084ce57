"""Landsat 8/9 beside Sentinel-2 (issue 27, item 3), on the shipped real pair of Unalakleet, Alaska
(``tests/data/l9_s2_unalakleet/``: Landsat 9, 15 m float32 reflectance with −inf no-data, EPSG:32604,
as the reference; Sentinel-2, 10 m uint16, EPSG:32603, as the target): known content shifts
recovered, band names on both sensors, per-input bands, float non-finite no-data."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.warp import transform as warp_points

import s2coreg.coregistration.pair as coregister
import s2coreg.io.products as dp
from s2coreg.coregistration.engine import date_bands
from s2coreg.config import CoregisterConfig
from s2coreg.io.imaging import fourier_shift
from s2coreg.matching.pipeline import MatchingPipeline

pytestmark = pytest.mark.shipped
DATA = Path(__file__).parent / "data" / "l9_s2_unalakleet"
L9, S2 = DATA / "2023-06-30-22-01-55_L9_ms.tif", DATA / "2023-10-09-22-28-02_S2_ms.tif"
S1, S2_SHIFT = np.array([-1.2, 0.9]), np.array([1.1, -1.3])       # px of the target's 10 m grid


@pytest.fixture(scope="module")
def pipeline():
    return MatchingPipeline.from_checkpoints()


def moved(src: Path, out: Path, d_px, as_float: bool = False, fill=None) -> Path:
    """``src`` with its content moved by ``d_px`` (x right, y down) on its own grid (band-limited);
    ``as_float``: float32 reflectance (DN / 10000) with no no-data tag; ``fill(x, y)`` (map points of
    the reference CRS) → True where the pixel is set to −inf: a footprint fixed in map coordinates."""
    with rasterio.open(src) as s:
        profile, data, desc = s.profile, s.read().astype(np.float64), s.descriptions
    out_data = np.moveaxis(fourier_shift(np.moveaxis(data, 0, -1), *d_px), -1, 0) if np.any(d_px) else data
    if as_float:
        out_data = (out_data / 1e4 if profile["dtype"] != "float32" else out_data).astype(np.float32)
        profile.update(dtype="float32", nodata=None, predictor=1)
    else:
        out_data = np.clip(np.round(out_data), 1, 65535).astype(profile["dtype"])
    if fill is not None:
        out_data[:, fill_mask(profile, fill)] = -np.inf
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(out_data)
        dst.descriptions = desc
    return out


def fill_mask(profile, fill) -> np.ndarray:
    rows, cols = np.mgrid[0:profile["height"], 0:profile["width"]]
    x, y = profile["transform"] * (cols + 0.5, rows + 0.5)
    x, y = warp_points(profile["crs"], L9_CRS, x.ravel(), y.ravel())
    return fill(np.asarray(x), np.asarray(y)).reshape(rows.shape)


with rasterio.open(L9) as _src:
    L9_CRS, L9_BOUNDS = _src.crs, _src.bounds


def truth_m(d_px) -> np.ndarray:
    """A move of the target's content by ``d_px`` as metres (east, north) of the reference CRS."""
    with rasterio.open(S2) as s:
        t = s.transform
        cx, cy = (s.bounds.left + s.bounds.right) / 2, (s.bounds.bottom + s.bounds.top) / 2
        xs, ys = warp_points(s.crs, L9_CRS, [cx, cx + d_px[0] * t.a], [cy, cy + d_px[1] * t.e])
    return np.array([xs[1] - xs[0], ys[1] - ys[0]])


def differential(pipeline, ref, t1, t2, bands="red,green,blue", cfg=None) -> float:
    r1 = coregister.coregister(ref, t1, bands=bands, pipeline=pipeline, progress=False, cfg=cfg)
    r2 = coregister.coregister(ref, t2, bands=bands, pipeline=pipeline, progress=False, cfg=cfg)
    assert r1["verified"] and r2["verified"], (r1.get("reason"), r2.get("reason"))
    got = np.array([r2["shift_m"]["dx"] - r1["shift_m"]["dx"], r2["shift_m"]["dy"] - r1["shift_m"]["dy"]])
    return float(np.hypot(*(got - truth_m(S2_SHIFT - S1))))


@pytest.mark.parametrize("bands", ["red,green,blue", "nir"])
def test_two_known_content_shifts_of_sentinel2_against_landsat_are_recovered(pipeline, tmp_path, bands):
    t1, t2 = moved(S2, tmp_path / "a_S2.tif", S1), moved(S2, tmp_path / "b_S2.tif", S2_SHIFT)
    assert np.hypot(*truth_m(S2_SHIFT - S1)) > 20          # a zero estimate would miss by > 20 m
    assert differential(pipeline, L9, t1, t2, bands) <= 0.5


def test_common_band_names_resolve_on_landsat_and_sentinel2(tmp_path):
    l9, s2 = dp.find_products(L9).products[0], dp.find_products(S2).products[0]
    assert (l9.sensor, s2.sensor) == ("landsat", "sentinel-2")
    # the shipped rasters' descriptions: Landsat's own B2..B6, Sentinel-2's B02, B03, B04, B08
    for product, own_nir in ((l9, 4), (s2, 4)):
        wanted = dp.normalise_bands("red,green,blue", product.sensor)
        assert [product.band_index[b] for b in date_bands(product, wanted)] == [3, 2, 1]
        assert [product.band_index[b] for b in date_bands(product, dp.normalise_bands("nir", product.sensor))] \
            == [own_nir]
    assert l9.band_index[dp.normalise_bands("swir16", "landsat")[0]] == 5
    assert dp.normalise_bands("B5,B8,SR_B6", "landsat") == ("B08", "PAN", "B11")     # Landsat's own names
    assert dp.normalise_bands("B8") == ("B08",)                                        # Sentinel-2's NIR
    # a folder of Collection 2 band files: names by band number, the pan band at 15 m, QA ignored
    folder = tmp_path / "LC08_L1TP_076014_20230701_20230710_02_T1"
    folder.mkdir()
    with rasterio.open(L9) as src:
        profile = {**src.profile, "count": 1, "dtype": "uint16", "nodata": 0, "predictor": 1}
        for name, k in (("B4", 3), ("B5", 4), ("B8", 1), ("QA_PIXEL", 1)):
            with rasterio.open(folder / f"{folder.name}_{name}.TIF", "w", **profile) as dst:
                dst.write((np.nan_to_num(src.read(k), neginf=0) * 3e4 + 1).astype("uint16"), 1)
    product = dp.find_products(folder).products[0]
    assert product.sensor == "landsat"
    files = {b: Path(product.band_path(b)).stem[-3:] for b in dp.normalise_bands("red,nir,pan", "landsat")}
    assert files == {"B04": "_B4", "B08": "_B5", "PAN": "_B8"}
    assert product.band_files["PAN"].keys() == {15} and product.band_files["B04"].keys() == {30}


def test_a_multiband_target_runs_against_a_single_band_reference(tmp_path):
    ref = tmp_path / "2023-10-09_S2_B08.tif"             # one band, no description: read as it is
    with rasterio.open(S2) as src:
        with rasterio.open(ref, "w", **{**src.profile, "count": 1}) as dst:
            dst.write(src.read(4), 1)
    out = tmp_path / "out"
    rc = coregister.main([str(ref), str(L9), "--target-bands", "nir", "--ref-bands", "1", "--output", str(out),
                          "--threads", "1"])
    result = json.loads((out / "coregistration.json").read_text())
    assert rc == 0 and result["verified"]
    assert result["bands"] == {"reference": ["1"], "target": ["B08"]}       # Landsat's B5, the 4th band
    with pytest.raises(SystemExit):                                          # a stack: refused, one line
        coregister.main(["--stack", str(ref), str(L9), "--target-bands", "nir", "--output", str(tmp_path / "s")])
    assert CoregisterConfig().target_bands == () and CoregisterConfig().reference_bands == ()


def test_float_minus_inf_outside_the_footprint_is_no_data(pipeline, tmp_path):
    width = (L9_BOUNDS.right - L9_BOUNDS.left) * 0.45     # a scene edge across the north-east corner

    def fill(x, y):
        return (x - L9_BOUNDS.left) + (y - L9_BOUNDS.bottom) > 2 * (L9_BOUNDS.right - L9_BOUNDS.left) - width

    ref = moved(L9, tmp_path / "ref_L9.tif", (0.0, 0.0), as_float=True, fill=fill)      # no nodata tag
    with rasterio.open(ref) as src:
        assert src.nodata is None and np.isneginf(src.read(1)).mean() > 0.05
        grid = dp.Grid(src.transform, src.width, src.height, src.crs)
    _, bad = dp.read_to_grid(str(ref), grid, (0, 0, grid.width, grid.height), (grid.height, grid.width),
                             with_nodata=True)
    with rasterio.open(ref) as src:
        assert np.array_equal(bad, np.isneginf(src.read(1)))
    t1 = moved(S2, tmp_path / "a_S2.tif", S1, as_float=True, fill=fill)
    t2 = moved(S2, tmp_path / "b_S2.tif", S2_SHIFT, as_float=True, fill=fill)
    assert differential(pipeline, ref, t1, t2, "nir") <= 0.5       # the fixed edge would pull towards zero
    co = coregister.Coregistration(ref, t2, "nir", pipeline=pipeline, progress=False)
    co.run()
    rows = coregister.tie_point_rows(co)
    x, y = np.array([r["ref_x"] for r in rows]), np.array([r["ref_y"] for r in rows])
    edge = 2 * (L9_BOUNDS.right - L9_BOUNDS.left) - width
    distance = np.abs((x - L9_BOUNDS.left) + (y - L9_BOUNDS.bottom) - edge) / np.sqrt(2)
    assert len(rows) >= 10 and (distance < 15.0).mean() < 0.1      # not on the −inf edge (15 m: a pixel)
    assert not fill(x, y).any()                                    # none inside the fill


def test_visible_and_nir_bands_that_disagree_across_sensors_are_said_and_widen_sigma(pipeline):
    """Landsat 9 against Sentinel-2 on R,G,B: NIR is measured on the same windows too; the two lie
    10.9 m apart, beyond three combined σ (8.3 m): σ is widened to cover both (at least half the
    distance), and the warning names both numbers and that NIR is the one to trust, giving its
    shift, which equals the pair run on NIR alone."""
    r = coregister.coregister(L9, S2, pipeline=pipeline, progress=False)
    check = r["band_check"]
    assert check["verified"] and check["apart_m"] > check["three_sigma_m"]
    assert r["shift_m"]["sigma_m"] >= check["apart_m"] / 2 / np.sqrt(2) - 1e-6
    (warning,) = [w for w in r["warnings"] if "NIR disagree" in w]
    assert "trust NIR" in warning and f"{check['apart_m']:.1f} m" in warning
    nir = coregister.coregister(L9, S2, bands=("nir",), pipeline=pipeline, progress=False)
    assert "band_check" not in nir.extra and not nir["warnings"]
    assert np.hypot(nir["shift_m"]["dx"] - check["dx"], nir["shift_m"]["dy"] - check["dy"]) < 0.05
    assert f"dx {check['dx']:+.1f} m, dy {check['dy']:+.1f} m" in warning
