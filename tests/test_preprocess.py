"""data_preprocess.py on realistic .SAFE fixtures (real metadata, real pixels as JP2)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image

import s2coreg.preprocess as stage
import s2coreg.samples as fx

PNG = ["--format", "png", "--no-masks"]


def run(inp, out, *flags):
    return stage.main(["--input", str(inp), "--output", str(out), *map(str, flags)])


def read(path):
    return np.asarray(Image.open(path)).astype(np.int32)


def sidecar(path):
    return json.loads(Path(path).with_suffix(".json").read_text())


@pytest.fixture(scope="module")
def pixels():
    return fx.real_pixels()


@pytest.fixture(scope="module")
def products(tmp_path_factory, pixels):
    """L1C baseline 05.10 (+1000 stored), the same scene as baseline 02.07 (no offset), an L2A,
    and the L1C zipped."""
    root = tmp_path_factory.mktemp("products")
    new = fx.make_l1c(root / "new", pixels)
    old = fx.make_l1c(root / "old", pixels, baseline="02.07", add_offset=False)
    l2a = fx.make_l2a(root / "l2a", pixels)
    zipped = fx.make_l1c(root / "zip", pixels, zip_it=True)
    return {"new": new, "old": old, "l2a": l2a, "zip": zipped}


def overview(out: Path) -> Path:
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    return folder / "overview.png"


def test_offset_applied_from_baseline_04(products, pixels, tmp_path):
    assert run(products["new"], tmp_path / "new", "--size", 320, *PNG) == 0
    assert run(products["old"], tmp_path / "old", "--size", 320, *PNG) == 0
    new, old = read(overview(tmp_path / "new")), read(overview(tmp_path / "old"))
    # the +1000 stored by baseline 05.10 is removed: both give the same image
    np.testing.assert_array_equal(new, old)
    # and the value is the reflectance DN / 10000 mapped from 0..0.3 to 0..255
    expected = np.clip(np.round(pixels["B04"] / 10000 / 0.3 * 255), 0, 255)
    assert np.abs(new[..., 0] - expected).max() <= 1
    assert sidecar(overview(tmp_path / "new"))["offsets"]["B04"] == -1000
    assert sidecar(overview(tmp_path / "old"))["offsets"]["B04"] == 0


def test_20m_band_resampled_to_10m_grid(products, pixels, tmp_path):
    assert run(products["new"], tmp_path, "--bands", "B11", "--size", 0, "--tile", 320, *PNG) == 0
    (tile,) = sorted((overview(tmp_path).parent / "tiles").glob("r*_c?????.png"))
    img = read(tile)
    assert img.shape == (320, 320)
    meta = sidecar(tile)
    assert meta["transform"][0] == 10.0 and meta["transform"][4] == -10.0
    # each 20 m pixel covers 2×2 output pixels: bilinear upsampling keeps the 20 m values
    b11 = np.clip(np.round((pixels["B11"].astype(float)) / 10000 / 0.3 * 255), 0, 255)
    down = img.reshape(160, 2, 160, 2).mean(axis=(1, 3))
    assert np.corrcoef(down[2:-2, 2:-2].ravel(), b11[2:-2, 2:-2].ravel())[0, 1] > 0.97
    assert np.abs(down - b11)[2:-2, 2:-2].mean() < 3


def test_georeference_of_overview_and_tiles(products, tmp_path):
    assert run(products["new"], tmp_path, "--size", 160, "--tile", 128, "--overlap", 16, *PNG) == 0
    folder = overview(tmp_path).parent
    ov = sidecar(folder / "overview.png")
    assert ov["crs"] == "EPSG:32630" and ov["size"] == [160, 160]
    # overview pixel (0, 0) centre: half a 20 m overview pixel from the tile's corner
    t = rasterio.Affine(*ov["transform"])
    assert t @ (0.5, 0.5) == pytest.approx((fx.ULX + 10.0, fx.ULY - 10.0))
    tiles = sorted((folder / "tiles").glob("r*_c?????.png"))
    # 320 px with 128 px tiles and 16 px overlap: origins 0, 112, 192 on each axis
    assert [p.stem for p in tiles[:3]] == ["r00000_c00000", "r00000_c00112", "r00000_c00192"]
    assert len(tiles) == 9
    meta = sidecar(folder / "tiles" / "r00112_c00192.png")
    t = rasterio.Affine(*meta["transform"])
    # pixel (col 5, row 7) of that tile is pixel (197, 119) of the 10 m grid
    assert t @ (5.5, 7.5) == pytest.approx((fx.ULX + 197.5 * 10, fx.ULY - 119.5 * 10))
    # and holds the same value as the full-resolution image there
    assert run(products["new"], tmp_path / "full", "--size", 320, *PNG) == 0
    full = read(overview(tmp_path / "full"))
    np.testing.assert_array_equal(read(folder / "tiles" / "r00112_c00192.png")[7, 5], full[119, 197])


def test_same_normalisation_on_every_date(pixels, tmp_path):
    # date 2: the same ground, but a bright cloud over a corner (changes the image min/max)
    cloudy = {b: v.copy() for b, v in pixels.items()}
    for b in fx.BANDS_10M:
        cloudy[b][:100, :100] = 9000
    fx.make_l1c(tmp_path / "in", pixels, date="20240101")
    fx.make_l1c(tmp_path / "in", cloudy, date="20240301")
    assert run(tmp_path / "in", tmp_path / "out", "--size", 320, *PNG) == 0
    a, b = (read(p / "overview.png") for p in sorted((tmp_path / "out").iterdir()))
    np.testing.assert_array_equal(a[120:, 120:], b[120:, 120:])
    assert (b[:100, :100] == 255).all()


def test_zipped_safe_equals_folder(products, tmp_path):
    assert run(products["zip"], tmp_path / "zip", "--size", 200, *PNG) == 0
    assert run(products["new"], tmp_path / "dir", "--size", 200, *PNG) == 0
    np.testing.assert_array_equal(read(overview(tmp_path / "zip")), read(overview(tmp_path / "dir")))
    assert sidecar(overview(tmp_path / "zip"))["tile_id"] == "T30NWM"


def test_level2a_layout_and_masks(products, tmp_path):
    assert run(products["l2a"], tmp_path, "--size", 160, "--bands", "B08", "--format", "tif") == 0
    folder = overview(tmp_path).parent
    meta = json.loads((folder / "overview.json").read_text())
    assert meta["processing_level"] == "L2A" and meta["tile_id"] == "T21JUK"
    assert meta["sensing_date"] == "20231217" and meta["offsets"]["B08"] == -1000
    with rasterio.open(folder / "overview.tif") as src:  # GeoTIFF keeps the georeferencing
        assert src.crs.to_string() == "EPSG:32630" and src.transform[0] == 20.0
    cloud = read(folder / "overview_cloud.png")   # cloud probability 90 in the top-left quarter
    assert cloud[:30, :30].min() == 90 and cloud[60:, 60:].max() == 0
    scl = read(folder / "overview_scl.png")
    assert scl[5, 5] == 9 and scl[100, 100] == 4


def test_l1c_cloud_mask(products, tmp_path):
    assert run(products["new"], tmp_path, "--size", 160) == 0
    cloud = read(overview(tmp_path).parent / "overview_cloud.png")
    assert cloud[:15, :15].min() == 255 and cloud[60:, 60:].max() == 0


def test_nodata_kept_as_mask(pixels, tmp_path):
    holed = {b: v.copy() for b, v in pixels.items()}
    for b in holed:
        holed[b][: holed[b].shape[0] // 2, : holed[b].shape[1] // 2] = 0   # outside the swath
    fx.make_l1c(tmp_path / "in", holed)
    assert run(tmp_path / "in", tmp_path / "out", "--size", 320, "--format", "png") == 0
    folder = overview(tmp_path / "out").parent
    nodata = read(folder / "overview_nodata.png")
    assert (nodata[:150, :150] == 255).all() and (nodata[170:, 170:] == 0).all()
    assert 0.2 < sidecar(folder / "overview.png")["nodata_fraction"] < 0.3


def test_full_resolution_tiles_read_each_band_once(pixels, tmp_path, monkeypatch):
    """Pixel-for-pixel reads take the nodata mask from the same read; resampled reads need a
    second, nearest-neighbour one. The masks are the same either way."""
    holed = {b: v.copy() for b, v in pixels.items()}
    for b in holed:
        holed[b][: holed[b].shape[0] // 2, : holed[b].shape[1] // 2] = 0
    fx.make_l1c(tmp_path / "in", holed)
    reads = []
    original = rasterio.io.DatasetReader.read

    def counting_read(self, *args, **kwargs):
        reads.append(kwargs.get("resampling"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(rasterio.io.DatasetReader, "read", counting_read)
    # 10 m bands at 10 m: one read each (4 bands, one tile); the 20 m cloud mask is separate
    assert run(tmp_path / "in", tmp_path / "tiles", "--size", 0, "--tile", 640, "--no-masks", *PNG) == 0
    assert len(reads) == 3
    (tile,) = sorted((overview(tmp_path / "tiles").parent / "tiles").glob("r*_c?????.png"))
    full = read(tile.with_name(tile.stem + "_nodata.png"))
    reads.clear()
    assert run(tmp_path / "in", tmp_path / "half", "--size", 160, "--tile", 0, "--no-masks", *PNG) == 0
    assert len(reads) == 6                     # decimated: data + nearest for each band
    half = read(overview(tmp_path / "half").parent / "overview_nodata.png")
    np.testing.assert_array_equal(half, full[::2, ::2])


def test_plain_geotiff_band_files(tmp_path):
    folder = fx.SAMPLE / "imgs_1"
    assert run(folder, tmp_path, "--size", 100, *PNG) == 0
    out = overview(tmp_path)
    assert read(out).shape[:2] == (100, 100)
    meta = sidecar(out)
    assert meta["tile_id"] == "pisa" and meta["sensing_date"] == "20150704" and meta["crs"] == "EPSG:4326"


def test_folder_of_dates_never_upsampled(tmp_path):
    assert run(fx.SAMPLE, tmp_path, "--size", 4096, *PNG) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["pisa_20150704", "pisa_20180211"]
    assert read(tmp_path / names[0] / "overview.png").shape[:2] == (512, 512)


# ----------------------------------------------------------------------------- bad input
def assert_clean(out: Path):
    """Nothing half-written: no temporary files or folders anywhere under ``out``."""
    if out.exists():
        assert not [p for p in out.rglob("*") if ".part" in p.name or p.name.startswith(".")]


def test_not_a_safe(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("hello")
    assert run(tmp_path / "in", tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(tmp_path / "in") in err and "no .SAFE" in err


def test_missing_band(products, tmp_path, capsys):
    broken = tmp_path / products["new"].name
    shutil.copytree(products["new"], broken)
    next(broken.rglob("*_B08.jp2")).unlink()
    assert run(broken, tmp_path / "out", "--bands", "B08") == 1
    err = capsys.readouterr().err
    assert "band B08 not in this product" in err and "--bands" in err
    assert not list((tmp_path / "out").iterdir())


def test_truncated_jp2(products, tmp_path, capsys):
    broken = tmp_path / products["new"].name
    shutil.copytree(products["new"], broken)
    jp2 = next(broken.rglob("*_B04.jp2"))
    data = jp2.read_bytes()
    jp2.write_bytes(data[: len(data) // 3])
    assert run(broken, tmp_path / "out", "--size", 320) == 1
    err = capsys.readouterr().err
    assert "_B04.jp2" in err and "download the product again" in err
    assert not list((tmp_path / "out").iterdir())


def test_unknown_band(products, tmp_path, capsys):
    assert run(products["new"], tmp_path / "out", "--bands", "B04,B13") == 2
    assert "unknown band B13" in capsys.readouterr().err


def test_unwritable_output(products, tmp_path, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("")   # a folder cannot be made under a file, whoever runs the test
    assert run(products["new"], blocker / "out") == 2
    err = capsys.readouterr().err
    assert "cannot write here" in err and "--output" in err


def test_output_is_a_file(products, tmp_path, capsys):
    out = tmp_path / "file"
    out.write_text("")
    assert run(products["new"], out) == 2
    assert str(out) in capsys.readouterr().err


def test_one_bad_product_does_not_stop_the_others(products, pixels, tmp_path, capsys):
    inp = tmp_path / "in"
    good = fx.make_l1c(inp, pixels)
    bad = fx.make_l1c(inp, pixels, date="20240301")
    jp2 = next(bad.rglob("*_B03.jp2"))
    jp2.write_bytes(jp2.read_bytes()[:200])
    assert run(inp, tmp_path / "out", "--size", 64) == 1
    captured = capsys.readouterr()
    assert "1 of 2 products" in captured.out and bad.name in captured.err
    written = [p.name for p in (tmp_path / "out").iterdir()]
    assert written == [good.name[:-5]]
    assert_clean(tmp_path / "out")


def test_corrupt_zip(tmp_path, capsys):
    z = tmp_path / "S2A_MSIL1C_X.zip"
    z.write_bytes(b"PK\x03\x04 not really a zip")
    assert run(z, tmp_path / "out") == 1
    assert "not a readable zip" in capsys.readouterr().err


def test_rerun_replaces_outputs(products, tmp_path):
    assert run(products["new"], tmp_path, "--size", 64, *PNG) == 0
    assert run(products["new"], tmp_path, "--size", 32, *PNG) == 0
    assert read(overview(tmp_path)).shape[:2] == (32, 32)
    assert_clean(tmp_path)


def test_multiband_file_with_band_descriptions(tmp_path):
    """One file holding several bands, named by its band descriptions (as in turb_parana)."""
    bands = {}
    for b in ("B02", "B03", "B04", "B08"):
        with rasterio.open(fx.SAMPLE / "imgs_1" / f"{b}.tif") as src:
            bands[b], profile = src.read(1), src.profile
    order = ["B08", "B02", "B04", "B03"]           # any order: the descriptions decide
    profile.update(count=4, driver="GTiff")
    path = tmp_path / "stack_20150704.tif"
    with rasterio.open(path, "w", **profile) as dst:
        for i, b in enumerate(order, start=1):
            dst.write(bands[b], i)
            dst.set_band_description(i, b)
    assert run(path, tmp_path / "a", "--size", 128, *PNG) == 0
    assert run(fx.SAMPLE / "imgs_1", tmp_path / "b", "--size", 128, *PNG) == 0
    np.testing.assert_array_equal(read(overview(tmp_path / "a")), read(overview(tmp_path / "b")))
    assert sidecar(overview(tmp_path / "a"))["sensing_date"] == "20150704"


# ----------------------------------------------------------------------------- the stage as a function
def test_preprocess_function_returns_what_it_wrote(products, pixels, tmp_path):
    """``preprocess`` is what the command runs: the same files, each product written and each
    that failed in the result (the batch goes on), bad settings refused before anything is written."""
    inp = tmp_path / "in"
    good = fx.make_l1c(inp, pixels)
    bad = fx.make_l1c(inp, pixels, date="20240301")
    jp2 = next(bad.rglob("*_B03.jp2"))
    jp2.write_bytes(jp2.read_bytes()[:200])
    done = stage.preprocess(inp, tmp_path / "lib", size=64, format="png", masks=False, progress=False)
    (written,) = done.written
    assert written.folder == tmp_path / "lib" / good.name[:-5] and written.images == 1 and done.images == 1
    assert len(done) == 2 and done.errors[0][0] == str(bad) and "_B03.jp2" in done.errors[0][1]
    assert run(inp, tmp_path / "cli", "--size", 64, *PNG) == 1
    np.testing.assert_array_equal(read(written.folder / "overview.png"),
                                  read(tmp_path / "cli" / written.folder.name / "overview.png"))
    with pytest.raises(stage.PipelineError, match=r"^overlap=64 must be >= 0 and smaller than tile=64$"):
        stage.preprocess(products["new"], tmp_path / "never", tile=64, overlap=64)
    with pytest.raises(stage.PipelineError, match="unknown band B13"):
        stage.preprocess(products["new"], tmp_path / "never", bands=("B04", "B13"))
    assert not (tmp_path / "never").exists()


def test_a_folder_of_unnamed_band_files_is_named_by_its_folder(tmp_path, capsys):
    """One date's band files that name no band: the error line names their folder, not a Python
    list of paths."""
    folder = tmp_path / "in" / "d1"
    folder.mkdir(parents=True)
    for name in ("blue", "green"):
        with rasterio.open(folder / f"{name}.tif", "w", driver="GTiff", width=32, height=32, count=1, dtype="uint16",
                           crs="EPSG:32632", transform=rasterio.transform.from_origin(5e5, 48e5, 10, 10)) as dst:
            dst.write(np.ones((1, 32, 32), "uint16"))
    assert stage.main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {folder}: no band recognised in ['blue.tif', 'green.tif']; name single-band files by "
                   "band (B04.tif) or set band descriptions"], err
