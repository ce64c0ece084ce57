"""Bad dates, wherever they stand: a stack date that cannot be read (truncated), whose
georeference is no north-up grid (rotated, sheared), that has no CRS or no valid pixel is
excluded with one line in words — first (the grid's date then falls back to the next usable
one), middle or last — and the other dates' shifts are those of the stack without it. A pair
whose target is rotated, sheared or has no CRS is refused in one line. ``--stack FOLDER`` takes
none of this tool's own outputs in the folder as a date."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine

import s2coreg.coregistration.engine as engine
import s2coreg.coregistration.pair as coregister
import s2coreg.coregistration.stack as stack
from s2coreg.utils import PipelineError

pytestmark = pytest.mark.shipped

DATA = Path(__file__).parent / "data" / "t36uya"
GOOD = [p for p in sorted(DATA.glob("*.tif")) if "20160212" not in p.name][:4]   # 4 clear dates, 2016–2019
SOURCE = GOOD[1]                               # what the bad dates are made of
TOLERANCE_M = 0.05                             # the good dates' shifts with and without the bad ones


def rewritten(out: Path, transform=None, crs="keep", data=None) -> Path:
    """``SOURCE`` written again with another geotransform, CRS or pixels."""
    with rasterio.open(SOURCE) as s:
        profile, pixels = s.profile, s.read()
    profile.update({k: v for k, v in (("transform", transform), ("crs", crs)) if v is not None and v != "keep"})
    if crs is None:
        profile["crs"] = None
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(pixels if data is None else data)
    return out


def rotated(out: Path, degrees: float = 10.0) -> Path:
    """North-up pixels under a geotransform rotated about the scene's centre (a broken georeference)."""
    with rasterio.open(SOURCE) as s:
        t, cx, cy = s.transform, *s.transform * (s.width / 2, s.height / 2)
    return rewritten(out, Affine.translation(cx, cy) * Affine.rotation(degrees) * Affine.translation(-cx, -cy) * t)


def sheared(out: Path) -> Path:
    with rasterio.open(SOURCE) as s:
        t = s.transform
    return rewritten(out, Affine(t.a, 0.2 * t.a, t.c, 0.0, t.e, t.f))


def without_crs(out: Path) -> Path:
    return rewritten(out, crs=None)


def truncated(out: Path) -> Path:
    data = SOURCE.read_bytes()
    out.write_bytes(data[: len(data) // 2])
    return out


def no_data(out: Path) -> Path:
    """Every pixel the declared no-data (0)."""
    with rasterio.open(SOURCE) as s:
        return rewritten(out, data=np.zeros((s.count, s.height, s.width), s.dtypes[0]))


def folder_of(path: Path, bad: dict) -> Path:
    """The good dates and ``bad`` ({name: maker}) in one folder."""
    path.mkdir(parents=True)
    for p in GOOD:
        shutil.copy(p, path / p.name)
    for name, make in bad.items():
        make(path / name)
    return path


@pytest.fixture(scope="module")
def client(dask_client):
    """The run's cluster of two worker processes (``tests/conftest.py``) for every stack here."""
    return dask_client


@pytest.fixture(scope="module")
def baseline(client, tmp_path_factory) -> dict:
    """The good dates' rows of the stack without bad dates (its reference chosen as usual)."""
    folder = folder_of(tmp_path_factory.mktemp("good") / "dates", {})
    r = stack.coregister_stack([folder], None, client=client, progress=False)
    assert all(row["status"] != "excluded" for row in r["dates"])
    return {row["date"]: row for row in r["dates"]}


def with_client(monkeypatch, client):
    """``coregister.main --stack`` run on the module's cluster."""
    real = stack.coregister_stack
    monkeypatch.setattr(stack, "coregister_stack", lambda *a, **k: real(*a, **{**k, "client": client}))


def assert_words(reason: str, name: str) -> None:
    """One line in words naming the file: no exception's class or text, no traceback."""
    assert name in reason and "\n" not in reason, reason
    for raw in ("Error", "Traceback", "Exception", "See previous", "non-negative"):
        assert raw not in reason, reason


def assert_unchanged(rows: dict, baseline: dict) -> None:
    """The good dates: the same status and reference, the same shifts within ``TOLERANCE_M``."""
    for date, row in baseline.items():
        assert rows[date]["status"] == row["status"], (date, rows[date]["reason"])
        assert np.hypot(float(rows[date]["dx_m"]) - row["dx_m"], float(rows[date]["dy_m"]) - row["dy_m"]) \
            <= TOLERANCE_M, date


def test_a_truncated_earliest_date_and_a_rotated_one_among_a_pairs_and_a_stacks_outputs(
        baseline, client, monkeypatch, tmp_path, capsys):
    """The acceptance case: a truncated earliest date plus one with a 10° rotated geotransform in
    the middle, in a folder that also holds a pair's output (written there) and, on the second
    run, the stack's own (its output is its input folder): both bad dates excluded with their
    reason in words and their date, no output of ours taken as a date, the good dates' shifts
    unchanged (0.05 m)."""
    folder = folder_of(tmp_path / "dates", {"T36UYA_20150101_B04.tif": truncated,
                                            "T36UYA_20170101_B04.tif": rotated})
    assert coregister.main([str(GOOD[0]), str(GOOD[1]), "--output", str(folder), "--write-corrected"]) == 0
    assert (folder / "shift_field.tif").is_file() and (folder / "coregistration.json").is_file()
    with_client(monkeypatch, client)
    for run in range(2):                       # the second run reads a folder holding the first's result
        code = coregister.main(["--stack", str(folder), "--output", str(folder)])
        err = capsys.readouterr().err
        rows = {r["date"]: r for r in csv.DictReader(open(folder / "shifts.csv"))}
        assert code == 1, err
        assert sorted(rows) == sorted(["20150101", "20170101", *baseline]), run       # no output is a date
        assert_unchanged(rows, baseline)
        cut, turned = rows["20150101"], rows["20170101"]
        assert cut["status"] == turned["status"] == "excluded"
        assert_words(cut["reason"], "T36UYA_20150101_B04.tif")
        assert "corrupt or truncated" in cut["reason"]
        assert_words(turned["reason"], "T36UYA_20170101_B04.tif")
        assert "rotated 10.0°" in turned["reason"] and "north-up" in turned["reason"] and "gdalwarp" in turned["reason"]
        assert "Traceback" not in err and err.count("excluded: ") == 2


def test_sheared_first_no_valid_data_next_and_no_crs_last(baseline, client, tmp_path):
    """A sheared earliest date (refused at the door), a date with no valid pixel next — the first
    candidate for the grid, which falls back from its overview to the next date — and a date
    without a CRS last: all three excluded with their reason and date; the good dates unchanged."""
    folder = folder_of(tmp_path / "dates", {"T36UYA_20150101_B04.tif": sheared,
                                            "T36UYA_20150601_B04.tif": no_data,
                                            "T36UYA_20200101_B04.tif": without_crs})
    r = stack.coregister_stack([folder], None, client=client, progress=False)
    rows = {row["date"]: row for row in r["dates"]}
    assert sorted(rows) == sorted(["20150101", "20150601", "20200101", *baseline])
    assert_unchanged(rows, baseline)
    assert r["grid_date"].endswith(GOOD[0].name)
    for date, says in (("20150101", "sheared"), ("20150601", "no valid pixel"), ("20200101", "no CRS")):
        assert rows[date]["status"] == "excluded" and says in rows[date]["reason"], rows[date]["reason"]
        assert_words(rows[date]["reason"], f"T36UYA_{date}_B04.tif")


def test_a_bad_date_given_as_the_reference_is_one_line(tmp_path, capsys):
    """``--reference`` naming a rotated date: one line naming it, exit 2, nothing written."""
    folder = folder_of(tmp_path / "dates", {"T36UYA_20170101_B04.tif": rotated})
    code = coregister.main(["--stack", str(folder), "--reference", str(folder / "T36UYA_20170101_B04.tif"),
                            "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "rotated 10.0°" in err[0], err
    assert not (tmp_path / "out").exists()


def local_crs(out: Path) -> Path:
    """A local (engineering) CRS: no map projection, nothing to transform to the reference's."""
    from rasterio.crs import CRS

    return rewritten(out, crs=CRS.from_wkt('LOCAL_CS["arbitrary",UNIT["metre",1]]'))


def degrees_crs(out: Path) -> Path:
    """A geographic CRS over the file's UTM coordinates (a CRS assigned wrongly)."""
    return rewritten(out, crs="EPSG:4326")


@pytest.mark.parametrize("make, says", [(sheared, "sheared"), (rotated, "rotated 10.0°"), (local_crs, "local CRS"),
                                        (degrees_crs, "not in degrees")])
def test_a_pair_with_a_target_off_a_north_up_grid_or_without_a_map_crs_is_refused(tmp_path, capsys, make, says):
    """The target rotated or sheared, or without a CRS it can be placed by: one line, exit 2,
    nothing verified or written (a sheared target was "verified" 4.5 km off, its corrected COG
    written; a local CRS ended in a 50-line traceback). A target without any CRS:
    ``test_evidence``."""
    target = make(tmp_path / "target.tif")
    code = coregister.main([str(GOOD[0]), str(target), "--output", str(tmp_path / "out"), "--write-corrected"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and says in err[0] and "target.tif" in err[0], err
    assert not (tmp_path / "out").exists()


def test_a_sheared_reference_is_refused_a_rotated_one_is_not(tmp_path):
    """No map grid is sheared: refused for the reference too; a rotated reference is its own grid
    (``test_a_reference_on_a_rotated_grid``)."""
    with pytest.raises(PipelineError, match="reference.tif: its geotransform is sheared"):
        coregister.Coregistration(sheared(tmp_path / "reference.tif"), GOOD[0])
    product = engine.open_date(rotated(tmp_path / "rotated.tif"), "reference")
    engine.check_georeference(product, engine.date_bands(product, ("B04",)), "reference")


def test_an_exception_of_a_bad_file_reaches_no_reason_raw(tmp_path):
    """What rasterio raises deep in a task for a bad file — a read error, a CRS error, a window
    out of shape — comes back as a ``TaskError`` in words naming the file (no worker traceback,
    no retry); a fault of this tool is raised."""
    import rasterio.errors

    path = tmp_path / "T36UYA_20150101_B04.tif"

    def raising(exc):
        def task(p):
            raise exc
        return stack.reports_bad_input(task)

    for exc in (rasterio.errors.RasterioIOError("Read failed. See previous exception for details."),
                rasterio.errors.CRSError("The WKT could not be parsed. OGR Error code 5")):
        value = raising(exc)(path)
        assert isinstance(value, stack.TaskError)
        assert_words(value.message, path.name)
    value = stack.reports_bad_input(lambda p: rasterio.windows.Window(0, 0, -1, 4))(path)   # out of shape
    assert isinstance(value, stack.TaskError) and "north-up" in value.message
    assert_words(value.message, path.name)
    with pytest.raises(ZeroDivisionError):
        raising(ZeroDivisionError())(path)


def test_a_folder_holding_our_own_outputs_gives_only_its_dates(tmp_path):
    """Every output name of a pair or a stack (``engine.RESULT_NAMES``), ``cache/`` and hidden
    files and folders (a result being built or published, the lock) are not dates."""
    folder = folder_of(tmp_path / "dates", {})
    for name in engine.RESULT_NAMES:
        if "." in name:
            shutil.copy(SOURCE, folder / name) if name.endswith(".tif") else (folder / name).write_text("{}")
        else:
            (folder / name).mkdir()
            shutil.copy(SOURCE, folder / name / "T36UYA_20160830_B04_coregistered.tif")
    for hidden in (".results", ".building.x1", "cache"):
        (folder / hidden).mkdir()
        shutil.copy(SOURCE, folder / hidden / "T36UYA_20160830_B04.tif")
    (folder / ".coregister.lock").write_text("")
    (folder / ".T36UYA_20160830_B04.abc.part.tif").write_bytes(SOURCE.read_bytes())
    assert stack.expand_inputs([folder]) == sorted(folder / p.name for p in GOOD)
    only_folders = tmp_path / "by_date"                       # a folder of date folders beside our outputs
    for p in GOOD[:2]:
        (only_folders / p.stem).mkdir(parents=True)
        shutil.copy(p, only_folders / p.stem / "B04.tif")
    for name in ("corrected", "items", "cache", ".results"):
        (only_folders / name).mkdir()
        shutil.copy(SOURCE, only_folders / name / "B04.tif")
    assert stack.expand_inputs([only_folders]) == [only_folders / p.stem for p in GOOD[:2]]


def test_a_date_of_noise_with_the_most_keypoints_does_not_become_the_reference(baseline, client, tmp_path):
    """A north-up date of the grid whose content is noise (another place, a broken product) has
    more keypoints than any real date: the reference is still chosen among the dates that can be
    placed — not the noise, which joined no date and left every real date excluded ("1 of 5
    placed") — and the good dates' shifts are those of the stack without it."""
    import cv2

    def noise(out: Path) -> Path:
        with rasterio.open(SOURCE) as s:
            shape, dtype = (s.height, s.width), s.dtypes[0]
        n = cv2.GaussianBlur(np.random.default_rng(0).normal(0, 1, shape), (0, 0), 1.5)
        return rewritten(out, data=np.clip(120 + 60 * n / n.std(), 1, 255).astype(dtype)[None])

    folder = folder_of(tmp_path / "dates", {"T36UYA_20170101_B04.tif": noise})
    r = stack.coregister_stack([folder], None, client=client, progress=False)
    rows = {row["date"]: row for row in r["dates"]}
    assert_unchanged(rows, baseline)
    assert rows["20170101"]["status"] == "excluded"
    reference = next(row for row in r["dates"] if row["status"] == "reference")
    assert "T36UYA_20170101_B04.tif had more keypoints" in reference["reason"]


def test_a_date_in_a_parent_folder_does_not_override_the_files_own(tmp_path):
    """A project folder named with a date (``proj_20190101/``) does not override the dates nearer
    the files: each keeps the date of its own name (a regex over the whole path gave every date
    of the stack 2019-01-01, as "product metadata"); a date folder above a band folder
    (``20160718/imgs/B04.tif``) still dates it."""
    folder = tmp_path / "proj_20190101"
    folder.mkdir()
    files = [shutil.copy(p, folder / p.name) for p in GOOD[:2]]
    for f in files:
        want = engine.parse_date(Path(f).stem.split("_")[1])
        assert engine.acquisition_date(engine.open_date(f), f)[0] == want != "20190101"
    bands = folder / "20160718" / "imgs"
    bands.mkdir(parents=True)
    shutil.copy(GOOD[0], bands / "B04.tif")
    assert engine.open_date(bands).sensing_date == "20160718"
