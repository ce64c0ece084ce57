"""A result rests on evidence that can show it: fill a file does not declare is no-data, a
rotation or scale is claimed only from windows that can show one, and ``shift_m`` is the
displacement at the overlap's centre."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import rasterio

import s2coreg.coregistration.pair as coregister
import s2coreg.io.imaging as imaging
from s2coreg.io.imaging import fourier_shift
from s2coreg.matching.pipeline import MatchingPipeline
from tests.test_coregister import rotated

pytestmark = pytest.mark.shipped

DATA = Path(__file__).parent / "data" / "bracciano"
REF, SUMMER = DATA / "20160718.tif", DATA / "20180610.tif"


@pytest.fixture(scope="module")
def pipeline():
    return MatchingPipeline.from_checkpoints()


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as s:
        return s.read()


def outline(shape: tuple[int, int]) -> np.ndarray:
    """Outside an ellipse over most of the scene: where a glacier outline's fill would be (45 %)."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return ((yy - 150) / 125.0) ** 2 + ((xx - 165) / 140.0) ** 2 > 1


def undeclared(out: Path, data: np.ndarray, like: Path) -> Path:
    """``data`` with ``like``'s georeference and band names, and no no-data tag."""
    with rasterio.open(like) as s:
        profile, desc = {**s.profile, "nodata": None}, s.descriptions
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = desc
    return out


def moved(data: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """Content moved by (dx, dy) px on its grid: a band-limited shift of the reflect-padded image."""
    out = np.moveaxis(fourier_shift(np.moveaxis(data.astype(np.float64), 0, -1), dx, dy), -1, 0)
    return np.clip(np.round(out), 1, 65535).astype(data.dtype)


def featureless(shape: tuple[int, int], seed: int) -> np.ndarray:
    """Snow: smooth, bright, nothing a matcher can hold on to (3 bands uint16)."""
    n = cv2.GaussianBlur(np.random.default_rng(seed).normal(0, 1, shape), (0, 0), 3)
    return np.stack([np.clip(6000 + 300 * n, 1, 65535)] * 3).astype(np.uint16)


def test_border_fill_is_told_from_saturation_and_dark_content():
    """0 from the edge inwards beside bright data is fill; the same share of the dtype's maximum
    beside data of nearly that value (saturated snow), or a clipped dark corner, is content."""
    a = read(REF)
    fill = a.copy()
    fill[:, outline(a.shape[1:])] = 0
    found = imaging.border_fill(fill)
    assert found is not None and found.value == 0 and found.fraction == pytest.approx(0.45, abs=0.03)
    assert imaging.border_fill(a) is None
    snow = a.copy()
    snow[:, :120] = 65535
    snow[:, 120:124] = 65000                        # saturation fades in: snow, not fill
    assert imaging.border_fill(snow) is None
    dark = a.copy()
    dark[:, :100, :100] = 0
    dark[:, 100:103, :103] = 3
    dark[:, :103, 100:103] = 3
    assert imaging.border_fill(dark) is None


def test_content_inside_an_undeclared_fill_is_measured(pipeline, tmp_path):
    """A pair whose 45 % fill of 0 around the data carries no no-data tag, the target's content
    moved twice by known sub-pixel shifts inside a fill fixed on the map: the fill is found, said
    in one line, and the two estimates differ by the shifts' difference within 0.3 m (measured
    0.04 m; read as data, the fixed edge pulls them 2.4 m apart)."""
    ref, summer = read(REF), read(SUMMER)
    m = outline(ref.shape[1:])
    ref[:, m] = 0
    ref_path = undeclared(tmp_path / "ref.tif", ref, REF)
    s1, s2 = np.array([0.82, -1.13]), np.array([-0.64, 0.47])
    est = []
    for k, s in enumerate((s1, s2)):
        t = moved(summer, *s)
        t[:, m] = 0
        r = coregister.coregister(ref_path, undeclared(tmp_path / f"t{k}.tif", t, SUMMER), pipeline=pipeline,
                                  progress=False)
        assert r["verified"], r["reason"]
        fills = [w for w in r["warnings"] if "not declared as no-data" in w]
        assert len(fills) == 2 and "45% of it is 0" in fills[0] and "--ref-nodata" in fills[0]
        assert "--target-nodata" in fills[1]
        est.append(np.array(r["shift_m"]["shift_px"]))
    assert np.hypot(*((est[1] - est[0]) - (s2 - s1))) * 10 < 0.3


def test_never_verified_on_the_edge_of_an_undeclared_fill(pipeline, tmp_path):
    """Snow inside the same undeclared outline on both dates: the outline is all the two share.
    Refused; read as data (``target_nodata='none'``), the same pair is "verified" at a zero shift
    on the outline's edge — what the detection prevents."""
    shape = read(REF).shape[1:]
    m = outline(shape)
    dates = []
    for k in range(2):
        snow = featureless(shape, k)
        snow[:, m] = 0
        dates.append(undeclared(tmp_path / f"snow{k}.tif", snow, REF))
    r = coregister.coregister(*dates, pipeline=pipeline, progress=False)
    assert not r["verified"] and r["shift_m"] is None
    assert sum("not declared as no-data" in w for w in r["warnings"]) == 2
    blind = coregister.coregister(*dates, pipeline=pipeline, progress=False, ref_nodata="none", target_nodata="none")
    assert blind["verified"] and np.hypot(blind["shift_m"]["dx"], blind["shift_m"]["dy"]) < 0.5


def test_a_declared_value_and_bad_values_of_the_nodata_rule(pipeline, tmp_path, capsys):
    """A value given is the no-data (no warning); a word other than none is one line naming it."""
    ref = read(REF)
    ref[:, outline(ref.shape[1:])] = 0
    ref_path = undeclared(tmp_path / "ref.tif", ref, REF)
    r = coregister.coregister(ref_path, SUMMER, pipeline=pipeline, progress=False, ref_nodata=0)
    assert r["verified"] and not any("no-data" in w for w in r["warnings"])
    code = coregister.main([str(ref_path), str(SUMMER), "--ref-nodata", "zero", "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "ref.tif" in err[0] and "--ref-nodata zero is not a number" in err[0]


def test_one_window_claims_no_rotation_or_scale(pipeline, tmp_path):
    """A small scene is one window: rotated by 3°, its tie points are not one translation, and the
    note says so and that one window cannot tell why — no rotation, no scale, no "windows
    disagree"; unrotated, no note at all."""
    r = coregister.coregister(REF, rotated(SUMMER, tmp_path / "rot.tif", 3.0), pipeline=pipeline, progress=False)
    assert r["verified"] and r["windows"]["used"] == 1
    (note,) = r["warnings"]
    assert "not one translation" in note and "1 window" in note
    assert not any(word in note for word in ("rotation", "scale", "windows disagree", "--correction affine"))
    assert not coregister.coregister(REF, SUMMER, pipeline=pipeline, progress=False)["warnings"]


def test_shift_m_is_the_displacement_at_the_overlaps_centre(pipeline, tmp_path):
    """The reference's own pixels on a grid 0.2 % larger (the displacement grows 0.2 m every 10 px
    from the origin: 3.2 m at the scene's centre), its left third no data, measured in 96 px
    windows: ``shift_m`` is the displacement at the centre of the overlap (``shift_m.at``) within
    0.05 m, not the median of the windows left on the right (their centroid lies 50-60 px off the
    centre: the median is ~1 m off)."""
    from rasterio.transform import Affine

    data = read(REF)
    data[:, :, :120] = 0                                     # declared no data: no window there
    with rasterio.open(REF) as s:
        profile, desc, t = {**s.profile, "nodata": 0}, s.descriptions, s.transform
    k = 1.002
    scaled = Affine(t.a * k, 0, t.c, 0, t.e * k, t.f)
    with rasterio.open(tmp_path / "scaled.tif", "w", **{**profile, "transform": scaled}) as dst:
        dst.write(data)
        dst.descriptions = desc
    cfg = coregister.config.replace(coregister.CoregisterConfig(), window=96, min_window=96)
    r = coregister.coregister(REF, tmp_path / "scaled.tif", pipeline=pipeline, progress=False, cfg=cfg)
    assert r["verified"] and r["windows"]["used"] >= 5
    at = np.array(r["shift_m"]["at"]["map"])
    truth = (np.array([scaled.c, scaled.f]) + (at - [t.c, t.f]) * k) - at     # same pixel index, both grids
    assert np.hypot(r["shift_m"]["dx"] - truth[0], r["shift_m"]["dy"] - truth[1]) < 0.05


def test_windows_say_whether_the_dense_fit_refined_them(pipeline, tmp_path):
    """The output counts the windows the dense fit refined and those that kept the learned
    estimate, with why: none is silently left unrefined."""
    cfg = coregister.config.replace(coregister.CoregisterConfig(), window=128, min_window=128)
    r = coregister.coregister(REF, SUMMER, pipeline=pipeline, progress=False, cfg=cfg)
    w = r["windows"]
    assert w["used"] >= 3 and w["refined"] + w["learned"] == w["used"] and w["refined"] >= 1
    assert sum(w["learned_reasons"].values()) == w["learned"]
    off = coregister.coregister(REF, SUMMER, pipeline=pipeline, progress=False,
                                cfg=coregister.config.replace(cfg, refine=False))
    assert off["windows"]["refined"] == 0 and off["windows"]["learned_reasons"] == {
        "refinement switched off": off["windows"]["used"]}


def test_a_pair_on_a_rotated_grid_measures_the_content(pipeline, tmp_path):
    """Both dates on one grid rotated by 10° (a legal geotransform), the target's content moved by
    (0.37, 0.61) px: the shift is that move through the rotated grid, in metres, within 0.3 m
    (the footprint was once taken from two of its corners, array_bounds's: the windows left the
    data, and a public Landsat pair on such a grid came back 162 m off, "verified")."""
    from rasterio.transform import Affine

    with rasterio.open(REF) as s:
        profile, desc, t = s.profile, s.descriptions, s.transform
    rot = t * Affine.rotation(10)
    paths = []
    for name, data in (("a.tif", read(REF)), ("b.tif", moved(read(REF), 0.37, 0.61))):
        with rasterio.open(tmp_path / name, "w", **{**profile, "transform": rot}) as dst:
            dst.write(data)
            dst.descriptions = desc
        paths.append(tmp_path / name)
    r = coregister.coregister(*paths, pipeline=pipeline, progress=False)
    truth = np.array(rot * (0.37, 0.61)) - np.array(rot * (0, 0))
    assert r["verified"] and np.hypot(r["shift_m"]["dx"] - truth[0], r["shift_m"]["dy"] - truth[1]) < 0.3


def test_a_target_without_crs_or_truncated_is_one_line(tmp_path, capsys):
    """A target that has no CRS, or whose pixels are cut off: one line naming it, exit 2."""
    with rasterio.open(SUMMER) as s:
        profile, data = {k: v for k, v in s.profile.items() if k not in ("crs", "transform")}, s.read()
    with rasterio.open(tmp_path / "nocrs.tif", "w", **profile) as dst:
        dst.write(data)
    (tmp_path / "cut.tif").write_bytes(SUMMER.read_bytes()[:60_000])
    for bad in ("nocrs.tif", "cut.tif"):
        code = coregister.main([str(REF), str(tmp_path / bad), "--output", str(tmp_path / "out")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and bad in err[0], err


def test_a_declared_nodata_the_file_does_not_hold(pipeline, tmp_path):
    """A file declaring 255 as no-data while its fill around the data is 0: the fill is read as
    no-data, and the line says the declared value is not held; the values used are in the output."""
    ref = read(REF)
    ref[:, outline(ref.shape[1:])] = 0
    with rasterio.open(REF) as s:
        profile, desc = {**s.profile, "nodata": None}, s.descriptions
    path = tmp_path / "ref.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(ref)
        dst.descriptions = desc
    with rasterio.open(path, "r+") as dst:
        dst.nodata = 255
    r = coregister.coregister(path, SUMMER, pipeline=pipeline, progress=False)
    (line,) = [w for w in r["warnings"] if "not declared as no-data" in w]
    assert "declares 255" in line and r["nodata"] == {"reference": 0.0, "target": 0.0}


def test_a_declared_nodata_held_only_by_scattered_pixels_does_not_hide_the_fill(pipeline, tmp_path):
    """An 8-bit file declaring 255 (which a few saturated pixels hold) while 0 fills it from the
    edge: the fill is read as no-data, said in one line; 255 is read as data."""
    ref = np.clip(read(REF) / 12, 1, 254).astype(np.uint8)
    ref[:, 100:110, 100:110] = 255                               # saturated, inside the data
    ref[:, outline(ref.shape[1:])] = 0
    with rasterio.open(REF) as s:
        profile, desc = {**s.profile, "dtype": "uint8", "nodata": 255}, s.descriptions
    with rasterio.open(tmp_path / "ref.tif", "w", **profile) as dst:
        dst.write(ref)
        dst.descriptions = desc
    r = coregister.coregister(tmp_path / "ref.tif", SUMMER, pipeline=pipeline, progress=False)
    (line,) = [w for w in r["warnings"] if "not declared as no-data" in w]
    assert "declares 255" in line and r["nodata"]["reference"] == 0.0


def test_nodata_values_a_file_cannot_hold_and_dates_naming_no_input(tmp_path, capsys):
    """--target-nodata 300 or nan for a 16-bit file, and --date naming no input: one line, exit 2."""
    for flags in (["--target-nodata", "70000"], ["--target-nodata", "nan"], ["--ref-nodata", "-1"],
                  ["--date", "20180601=2018-06-01"]):
        code = coregister.main([str(REF), str(SUMMER), "--output", str(tmp_path / "o"), *flags])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, (flags, err)
        assert ("cannot occur" in err[0]) or ("names no input" in err[0]), err
