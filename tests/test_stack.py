"""coregister.py --stack (s2coreg/coregistration/stack.py): joint placement of a real stack with known shifts, the snow
date, a bad file in the stack, and the same results through a separately started Dask cluster."""
from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine

import s2coreg.config as config
import s2coreg.coregistration.pair as coregister
import s2coreg.coregistration.stack as stack
from s2coreg.utils import PipelineError

pytestmark = pytest.mark.shipped

ROOT = Path(__file__).resolve().parents[1]
DATES = sorted((Path(__file__).parent / "data" / "t36uya").glob("*.tif"))   # 7 dates, 2016-02-12 snow
SNOW = "20160212"
CFG = config.CoregisterConfig()


def shifted_stack(folder: Path, seed: int) -> dict[str, np.ndarray]:
    """The T36UYA dates with random known shifts of their georeference (up to ±0.4 px)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    truth = {}
    for path in DATES:
        with rasterio.open(path) as s:
            profile, data = s.profile, s.read()
            d = rng.uniform(-0.4, 0.4, 2) * s.transform.a
            profile["transform"] = Affine.translation(*d) * s.transform
        with rasterio.open(folder / path.name, "w", **profile) as dst:
            dst.write(data)
        truth[coregister.engine.date_of(coregister.engine.open_date(path), str(path))] = d
    return truth


def by_date(rows: list[dict]) -> dict[str, dict]:
    return {r["date"]: r for r in rows}


@pytest.mark.slow
def test_joint_placement_of_known_shifts_and_the_snow_date(tmp_path, dask_client):
    """Two runs with two sets of known shifts: for every placed date the change of its estimate
    equals the change of its shift relative to the reference's (the dates' own residual cancels).
    The snow date is placed within that tolerance or excluded with its reason, never wrongly."""
    t1, t2 = shifted_stack(tmp_path / "a", 1), shifted_stack(tmp_path / "b", 2)
    reference = "20160830"
    r1 = stack.coregister_stack([tmp_path / "a"], tmp_path / "out", str(tmp_path / "a" / f"T36UYA_{reference}_B04.tif"),
                                client=dask_client, progress=False)
    r2 = stack.coregister_stack([tmp_path / "b"], None, str(tmp_path / "b" / f"T36UYA_{reference}_B04.tif"),
                                client=dask_client, progress=False)
    rows1, rows2 = by_date(r1["dates"]), by_date(r2["dates"])
    px = abs(rasterio.open(DATES[0]).transform.a)
    placed = 0
    for date, row in rows1.items():
        if row["status"] == "excluded" or rows2[date]["status"] == "excluded":
            assert row["reason"] or rows2[date]["reason"]
            continue
        change = np.array([rows2[date]["dx_m"] - row["dx_m"], rows2[date]["dy_m"] - row["dy_m"]])
        expected = (t2[date] - t2[reference]) - (t1[date] - t1[reference])
        assert np.hypot(*(change - expected)) < 0.2 * px, date
        placed += date != reference
    assert placed >= 4 and rows1[reference]["status"] == "reference"
    assert rows1[SNOW]["status"] == "excluded" or np.isfinite(rows1[SNOW]["dx_m"])
    shifts = list(csv.DictReader(open(tmp_path / "out" / "shifts.csv")))
    pairs = list(csv.DictReader(open(tmp_path / "out" / "pairs.csv")))
    assert {"path", "id", "date", "dx_m", "dy_m", "sigma_m", "tie_points", "status", "reason", "warnings"} <= set(shifts[0])
    assert all(Path(r["path"]).is_absolute() for r in shifts)
    assert any(p["verified"] == "True" and float(p["residual_m"]) >= 0 for p in pairs)    # loop closure
    assert (tmp_path / "out" / "report.png").stat().st_size > 10_000
    info = json.loads((tmp_path / "out" / "stack.json").read_text())
    assert info["provenance"]["version"] == config.VERSION and info["reference_id"] == f"T36UYA_{reference}_B04"
    settings = info["provenance"]["settings"]
    assert config.CoregisterConfig.matcher is None and settings["matcher"] == "fast"   # a stack's default, recorded
    assert settings["matching"] == "superpoint+mnn+refine+correlate, else superpoint+superglue+refine+correlate"


def test_a_stack_plans_at_most_stack_windows_spread_over_the_overlap(tmp_path, dask_client):
    """A stack's dates are each matched in several pairs: it plans at most ``stack_windows``
    windows (the smaller of it and ``max_windows``), spread evenly over the overlap — the
    same dates on 64 px windows give 16 windows, 4 with ``stack_windows=4``, one in each
    quarter — and places the date with them (a date against its own content, its georeference
    moved by (+3, −2) m)."""
    ref = BRACCIANO / "20160718.tif"
    moved = tmp_path / "moved.tif"
    with rasterio.open(ref) as src:
        profile, data = src.profile, src.read()
        profile["transform"] = Affine.translation(3.0, -2.0) * src.transform
    with rasterio.open(moved, "w", **profile) as dst:
        dst.write(data)
    dates = [str(ref), str(moved)]
    small = config.replace(config.CoregisterConfig(), window=64, min_window=64)
    every = stack.coregister_stack(dates, None, dates[0], cfg=small, client=dask_client, progress=False)
    four = stack.coregister_stack(dates, None, dates[0], cfg=config.replace(small, stack_windows=4),
                                  client=dask_client, progress=False)
    assert every["windows"]["planned"] == 16 and four["windows"]["planned"] == 4
    row, row4 = (next(r for r in res["dates"] if r["status"] == "ok") for res in (every, four))
    for r in (row, row4):
        assert abs(abs(r["dx_m"]) - 3.0) < 0.1 and abs(abs(r["dy_m"]) - 2.0) < 0.1
    assert row4["tie_points"] < row["tie_points"]


def test_a_pair_short_of_verified_windows_is_measured_again_on_more_of_them(tmp_path, dask_client):
    """A date under a bright cloud that no mask declares over every window of the stack's plan
    (``stack_windows`` 4: one in each corner) but the middle of the scene: on those windows its
    pairs verify none and it is excluded. Its pairs short of verified windows
    (``stack_more_windows``) are measured again on the full plan (``max_windows`` 16): it reads
    the 12 windows the plan left out, its partners those where it has texture, and it is placed on
    its true move. The pairs of clear dates are not measured again; stack.json says what each date
    read and why, pairs.csv on how many windows each pair was planned; a rerun into the same folder
    reuses every window read (cached one by one) and gives the same shifts."""
    with rasterio.open(BRACCIANO / "20160718.tif") as src:
        profile, data = src.profile, src.read()
    truth = {"20160718": (0.0, 0.0), "20160728": (3.0, -2.0), "20160807": (-2.0, 4.0), "20160817": (4.0, 3.0)}
    dates = []
    for name, (dx, dy) in truth.items():
        pixels = data.copy()
        if name == "20160817":                  # the cloud: bright, nearly flat, all but the middle
            h, w = pixels.shape[1:]
            yy, xx = np.mgrid[:h, :w]
            cloud = np.hypot(yy / h - 0.5, xx / w - 0.5) > 0.55
            pixels[:, cloud] = 9000 + np.random.default_rng(0).integers(-20, 20, (3, int(cloud.sum())))
        path = tmp_path / f"{name}.tif"
        with rasterio.open(path, "w", **dict(profile, transform=Affine.translation(dx, dy) * profile["transform"])) as dst:
            dst.write(pixels)
        dates.append(str(path))
    cfg = config.replace(config.CoregisterConfig(), window=64, min_window=64, stack_windows=4, max_windows=16)
    before = stack.coregister_stack(dates, None, dates[0], cfg=config.replace(cfg, stack_more_windows=0.0),
                                    client=dask_client, progress=False, neighbours=1)
    assert by_date(before["dates"])["20160817"]["status"] == "excluded"
    assert "its pair with the reference: " in by_date(before["dates"])["20160817"]["reason"]   # why, not a guess
    assert all(d["more"] == 0 for d in before["windows"]["dates"].values())
    out = tmp_path / "out"
    after = stack.coregister_stack(dates, out, dates[0], cfg=cfg, client=dask_client, progress=False, neighbours=1)
    rows = by_date(after["dates"])
    cloudy = rows["20160817"]
    assert cloudy["status"] == "ok" and np.hypot(cloudy["dx_m"] - 4.0, cloudy["dy_m"] - 3.0) < 0.05
    read = after["windows"]["dates"]
    assert after["windows"]["planned"] == 4 and read[cloudy["id"]]["read"] == 16 and read[cloudy["id"]]["more"] == 12
    assert "verified 0 of 4 windows" in read[cloudy["id"]]["why_more"][0]
    for p in after["pairs"]:
        cloud_pair = "20160817" in p["path_i"] + p["path_j"]
        assert p["windows_planned"] == (16 if cloud_pair else 4) and (p["verified"] or not cloud_pair)
    for name, (dx, dy) in truth.items():                   # the clear dates placed as before
        row = rows[name]
        assert np.hypot(row["dx_m"] - dx, row["dy_m"] - dy) < 0.05
        assert read[row["id"]]["more"] <= 12 and (read[row["id"]]["more"] == 0) == (read[row["id"]]["why_more"] is None)
    assert after["computed"]["windows"] > 12
    info = json.loads((out / "stack.json").read_text())
    assert info["windows"]["dates"] == read
    assert {int(r["windows_planned"]) for r in csv.DictReader(open(out / "pairs.csv"))} == {4, 16}
    rerun = stack.coregister_stack(dates, out, dates[0], cfg=cfg, client=dask_client, progress=False, neighbours=1)
    assert rerun["computed"] == {k: 0 for k in rerun["computed"]}
    assert rerun["reused"]["windows"] == after["computed"]["windows"] and rerun["windows"] == after["windows"]
    assert [(r["dx_m"], r["dy_m"], r["status"]) for r in rerun["dates"]] == \
        [(r["dx_m"], r["dy_m"], r["status"]) for r in after["dates"]]


def test_auto_reference_and_a_corrupt_file_in_the_stack(tmp_path, capsys, stack_cli_on_shared_cluster):
    folder = tmp_path / "dates"
    folder.mkdir()
    for path in DATES[1:4]:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "T36UYA_20170101_B04.tif").write_bytes(b"II*\x00 broken")
    assert coregister.main(["--stack", str(folder), "--output", str(tmp_path / "out"), "--workers", "2",
                            "--write-corrected"]) == 1
    rows = list(csv.DictReader(open(tmp_path / "out" / "shifts.csv")))
    status = {Path(r["path"]).name: r for r in rows}
    assert status["T36UYA_20170101_B04.tif"]["status"] == "excluded"
    assert "T36UYA_20170101_B04.tif" in status["T36UYA_20170101_B04.tif"]["reason"]
    assert sum(r["status"] == "ok" for r in rows) == 2 and sum(r["status"] == "reference" for r in rows) == 1
    assert "most keypoints" in next(r["reason"] for r in rows if r["status"] == "reference")
    assert "excluded: " in capsys.readouterr().err
    corrected = sorted((tmp_path / "out" / "corrected").glob("*.tif"))
    assert len(corrected) == 3 and "T36UYA_20170101" not in str(corrected)      # the placed dates only
    catalog = json.loads((tmp_path / "out" / "corrected" / "stack.geojson").read_text())
    assert len(catalog["features"]) == 3 and all("coregistration:dx_m" in f["properties"] for f in catalog["features"])
    for f in catalog["features"]:                    # items users can open: footprint, bbox, projection, links
        assert f["geometry"]["type"] == "Polygon" and len(f["bbox"]) == 4 and f["properties"]["proj:epsg"] == 32636
        assert f["links"] and f["properties"]["datetime"].startswith(f["id"][7:11])
    with rasterio.open(corrected[0]) as c, rasterio.open(folder / corrected[0].name.replace("_coregistered", "")) as o:
        assert c.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        np.testing.assert_array_equal(c.read(), o.read())
        assert c.tags()["SOFTWARE"].startswith(config.PROJECT_NAME) and "COREGISTRATION_SHIFT_M" in c.tags()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_separately_started_dask_cluster_gives_the_same_results(tmp_path, dask_client):
    """``dask scheduler`` + ``dask worker --nworkers 2`` started as processes in another folder,
    importing the installed package (no PYTHONPATH; .ci/run installs it): the same shifts as the
    run's shared LocalCluster, within 0.1 m."""
    dates = [str(p) for p in DATES[1:5]]
    local = stack.coregister_stack(dates, None, dates[0], client=dask_client, progress=False)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    scheduler = subprocess.Popen([sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port",
                                  str(port), "--no-dashboard"], env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, cwd=tmp_path)
    worker = subprocess.Popen([sys.executable, "-m", "dask", "worker", f"tcp://127.0.0.1:{port}", "--nworkers", "2",
                               "--nthreads", "1", "--no-dashboard"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, cwd=tmp_path)
    try:
        from dask.distributed import Client

        with Client(f"tcp://127.0.0.1:{port}", timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        remote = stack.coregister_stack(dates, None, dates[0], scheduler=f"tcp://127.0.0.1:{port}", progress=False)
    finally:
        for proc in (worker, scheduler):
            proc.terminate()
        for proc in (worker, scheduler):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    a, b = by_date(local["dates"]), by_date(remote["dates"])
    assert remote["scheduler"].startswith("tcp://") and a.keys() == b.keys()
    for date in a:
        assert a[date]["status"] == b[date]["status"]
        if a[date]["status"] != "excluded":
            assert abs(a[date]["dx_m"] - b[date]["dx_m"]) < 0.1 and abs(a[date]["dy_m"] - b[date]["dy_m"]) < 0.1


BRACCIANO = Path(__file__).parent / "data" / "bracciano"


@pytest.mark.parametrize("target", ["20180610", "20170404"])     # the second on the other UTM zone
def test_a_pair_is_a_stack_of_two(tmp_path, dask_client, target):
    """The same pair through ``coregister.py A B`` and ``--stack A B``: the same answer (0.05 m), in
    the same shape — the pair's result reads as its target's row (``results.DateShift``: every
    shared field by the same name, of the same type, and agreeing)."""
    import s2coreg.results as results
    from s2coreg.matching.pipeline import MatchingPipeline

    ref, target = BRACCIANO / "20160718.tif", BRACCIANO / f"{target}.tif"
    pair = coregister.coregister(ref, target, pipeline=MatchingPipeline.from_checkpoints(), progress=False)
    st = stack.coregister_stack([ref, target], None, str(ref), client=dask_client, progress=False)
    row = next(r for r in st["dates"] if r["status"] == "ok")
    assert abs(row["dx_m"] - pair["shift_m"]["dx"]) < 0.05 and abs(row["dy_m"] - pair["shift_m"]["dy"]) < 0.05
    assert abs(row["sigma_m"] - pair["shift_m"]["sigma_m"]) < 0.05
    assert isinstance(row, results.StackDate) and [r["status"] for r in st["dates"]] == ["reference", "ok"]
    for name in results.DateShift.declared():
        a, b = pair[name], row[name]
        assert type(a) is type(b), f"{name}: {type(a).__name__} in the pair, {type(b).__name__} in the row"
        if name in ("dx_m", "dy_m", "sigma_m"):
            assert abs(a - b) < 0.05, f"{name}: {a} in the pair, {b} in the row"
        elif name == "tie_points":        # equal on one device; the pair may run on a GPU, the stack's workers on the CPU
            assert abs(a - b) <= 0.1 * a, f"{name}: {a} in the pair, {b} in the row"
        else:
            assert a == b, f"{name}: {a!r} in the pair, {b!r} in the row"


def test_a_stack_of_per_date_band_folders_and_a_date_on_the_other_utm_zone(tmp_path, dask_client):
    """Dates given as folders of band files (B02.tif, B03.tif, B04.tif): one date a folder, their
    corrected files kept apart, ids unique; the date on the neighbouring UTM zone corrected in its
    own CRS: re-registered against the reference, it has moved by exactly the stack's estimate
    (within 0.1 m; a vector applied in the wrong CRS was 0.2–0.5 m off)."""
    dates = {}
    for name in ("20160718", "20180610", "20170404"):           # the last on EPSG:32633
        folder = tmp_path / "in" / name / "imgs"
        folder.mkdir(parents=True)
        with rasterio.open(BRACCIANO / f"{name}.tif") as s:
            for k, band in enumerate(s.descriptions, 1):
                with rasterio.open(folder / f"{band}.tif", "w", **{**s.profile, "count": 1}) as dst:
                    dst.write(s.read(k), 1)
        dates[name] = folder
    out = tmp_path / "out"
    ref = dates["20160718"]
    assert stack.expand_inputs([tmp_path / "in" / "*" / "imgs"]) == sorted(dates.values())
    r = stack.coregister_stack([str(p) for p in dates.values()], out, str(ref), client=dask_client, progress=False,
                               write_corrected=True)
    assert [row["status"] for row in r["dates"]] == ["reference", "ok", "ok"]
    assert len({row["id"] for row in r["dates"]}) == 3
    written = sorted((out / "corrected").rglob("*.tif"))
    assert len(written) == 9                                     # 3 bands × 3 dates, none overwritten
    catalog = json.loads((out / "corrected" / "stack.geojson").read_text())
    assert len(catalog["features"]) == 3 and all(len(f["assets"]) == 3 for f in catalog["features"])
    other = next(f for f in catalog["features"] if f["properties"]["proj:epsg"] == 32633)
    moved = [out / "corrected" / a["href"] for a in other["assets"].values()]
    # the stack's estimate comes from a network of pairs (its loop closes to ~1 m on these dates),
    # so the corrected date re-registers to what the direct pair says beyond the stack: within 0.1 m
    placed = next(row for row in r["dates"] if row["path"].startswith(str(dates["20170404"])))
    direct = coregister.coregister(BRACCIANO / "20160718.tif", BRACCIANO / "20170404.tif", progress=False)
    again = coregister.coregister(BRACCIANO / "20160718.tif", moved, progress=False)
    assert again["verified"] and direct["verified"]
    expected = np.array([direct["shift_m"]["dx"] - placed["dx_m"], direct["shift_m"]["dy"] - placed["dy_m"]])
    assert np.hypot(*(np.array([again["shift_m"]["dx"], again["shift_m"]["dy"]]) - expected)) < 0.1


def test_coregister_stack_from_a_plain_script_without_a_main_guard(tmp_path):
    """A user's script that calls ``coregister_stack`` at module level (no ``if __name__ ==
    "__main__":``) runs: the LocalCluster's workers do not run it again."""
    script = tmp_path / "my_script.py"
    script.write_text(f"import sys\nsys.path.insert(0, {str(ROOT)!r})\nfrom s2coreg.coregistration.stack import coregister_stack\n"
                      f"r = coregister_stack({[str(p) for p in DATES[1:4]]!r}, None, workers=2, progress=False)\n"
                      "print('PLACED', sum(d['status'] != 'excluded' for d in r['dates']))\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "PLACED 3" in done.stdout and done.stdout.count("PLACED") == 1


def test_a_rotated_date_carries_the_rotation_warning_alone(tmp_path, dask_client):
    """Three dates, the third rotated by 2°: its warning (its tie points are not one translation;
    one window each, so no rotation is claimed) is on it alone — not lent to the dates it was
    matched with."""
    import cv2

    with rasterio.open(BRACCIANO / "20180610.tif") as s:
        profile, data, desc = s.profile, s.read(), s.descriptions
    h, w = data.shape[1:]
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), 2.0, 1.0)
    rotated = tmp_path / "20190101.tif"
    with rasterio.open(rotated, "w", **profile) as dst:
        dst.write(np.stack([cv2.warpAffine(b, m, (w, h), flags=cv2.INTER_CUBIC) for b in data]))
        dst.descriptions = desc
    r = stack.coregister_stack([str(BRACCIANO / "20160718.tif"), str(BRACCIANO / "20180610.tif"), str(rotated)],
                               None, str(BRACCIANO / "20160718.tif"), client=dask_client, progress=False)
    rows = {Path(row["path"]).stem: row for row in r["dates"]}
    assert rows["20160718"]["warnings"] == [] and rows["20180610"]["warnings"] == []
    warning = "; ".join(rows["20190101"]["warnings"])   # one window each: not one translation, no rotation claimed
    assert "not one translation" in warning and "1 window" in warning and "rotation" not in warning


def pystac_valid(path: Path, collection: bool) -> list:
    """The Items of a STAC document written, read back through pystac (offline: its JSON-schema
    validation fetches the schemas over the network, so the required fields are checked here)."""
    import pystac

    items = list(pystac.ItemCollection.from_file(str(path))) if collection else [pystac.Item.from_file(str(path))]
    for item in items:
        assert item.datetime is not None or (item.common_metadata.start_datetime and item.common_metadata.end_datetime)
        assert item.geometry and item.bbox and item.id
        pystac.Item.from_dict(item.to_dict())
    return items


@pytest.mark.slow
def test_a_grown_stack_of_iso_dated_single_band_files_reuses_every_unchanged_date(tmp_path, dask_client):
    """10 single-band dates of one grid (nodata 0, ISO-dated names), run as a stack into the output
    of an earlier stack of the first 7; one new date's content moved 3 px (a coarse offset that used
    to shrink the windows, so nothing was reused). Every unchanged date's work and the pairs among
    them are reused, the shifts equal a fresh run's; the dates come from the names; every STAC
    document written passes pystac."""
    sources = [p for p in DATES if SNOW not in p.name]                  # 6 dates; the grid's overview verifies
    folder = tmp_path / "in"
    folder.mkdir()
    files = []
    for k in range(10):
        src = sources[k % len(sources)]
        with rasterio.open(src) as s:
            profile, data = s.profile, s.read()
        if k == 8:
            data = np.pad(data, ((0, 0), (0, 0), (3, 0)))[:, :, :-3]      # content moved 3 px east, fill 0
        name = folder / f"{2016 + k // 6}-{k % 6 + 1:02d}-1{k % 3}-08-40-52_S2_b4.tif"
        with rasterio.open(name, "w", **profile) as dst:
            dst.write(data)
        files.append(name)
    first = stack.coregister_stack(files[:7], tmp_path / "out", client=dask_client, progress=False)
    grown = stack.coregister_stack(files, tmp_path / "out", client=dask_client, progress=False, write_corrected=True)
    fresh = stack.coregister_stack(files, tmp_path / "fresh", reference=first["reference"], client=dask_client,
                                   progress=False)
    assert grown["reused"]["dates"] == 7 and grown["reused"]["locations"] == 7 and grown["computed"]["dates"] == 3
    old = {str(f.resolve()) for f in files[:7]}
    assert grown["reused"]["pairs"] == sum({p["path_i"], p["path_j"]} <= old for p in grown["pairs"]) > 0
    rows, again = by_date(grown["dates"]), by_date(fresh["dates"])
    assert sorted(rows) == sorted(f"{n.name[:4]}{n.name[5:7]}{n.name[8:10]}" for n in files)
    assert {r["date_source"] for r in grown["dates"]} == {"name"}
    for date, row in rows.items():
        assert np.hypot(row["dx_m"] - again[date]["dx_m"], row["dy_m"] - again[date]["dy_m"]) <= 0.05 or \
            row["status"] == again[date]["status"] == "excluded", date
    items = pystac_valid(tmp_path / "out" / "items.geojson", collection=True)
    assert len(items) == sum(r["status"] != "excluded" for r in grown["dates"])
    assert {i.datetime.strftime("%Y%m%d") for i in items} <= set(rows)
    pystac_valid(tmp_path / "out" / "corrected" / "stack.geojson", collection=True)


def test_a_pair_that_raises_is_an_error_not_a_refusal(tmp_path, monkeypatch, capsys):
    """An exception while measuring a pair (after Dask's retries) is recorded as an error with its
    reason — not as an unverified pair — and the command exits 2: the placement rests on it."""
    from dask.distributed import Client, LocalCluster

    real = stack.engine.measure_pair

    def broken(pipeline, i, j, *args, **kwargs):
        if (i, j) == (0, 1):
            raise MemoryError("injected")
        return real(pipeline, i, j, *args, **kwargs)

    monkeypatch.setattr(stack.engine, "measure_pair", broken)
    dates = [str(BRACCIANO / name) for name in ("20160718.tif", "20180610.tif", "20170404.tif")]
    with LocalCluster(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        r = stack.coregister_stack(dates, tmp_path / "lib", dates[0], client=client, progress=False)
        (pair,) = [p for p in r["pairs"] if p["error"]]
        assert "MemoryError: injected" in pair["error"] and not pair["verified"]
        assert r["errors"] and "injected" in r["errors"][0]
        real_stack = stack.coregister_stack
        monkeypatch.setattr(stack, "coregister_stack", lambda *a, **k: real_stack(*a, **{**k, "client": client}))
        code = coregister.main(["--stack", *dates, "--reference", dates[0], "--output", str(tmp_path / "cli")])
    err = capsys.readouterr().err
    assert code == 2 and "1 pair could not be measured" in err and "injected" in err
    rows = list(csv.DictReader(open(tmp_path / "cli" / "pairs.csv")))
    assert any("injected" in (row["error"] or "") for row in rows)


def test_the_readme_stack_command(tmp_path, capsys, stack_cli_on_shared_cluster):
    """The README's second command, as it states it: the shipped T36UYA stack places 6 of its 7
    dates, excludes the snowy 2016-02-12 with its reason in shifts.csv and on stderr, and exits 1.
    (On the run's shared cluster: the command's own LocalCluster is started by
    ``test_coregister_stack_from_a_plain_script_without_a_main_guard`` and ``test_publishing``.)"""
    out = tmp_path / "stack"
    code = coregister.main(["--stack", str(DATES[0].parent), "--output", str(out), "--write-corrected"])
    err = capsys.readouterr().err
    rows = {r["date"]: r for r in csv.DictReader(open(out / "shifts.csv"))}
    assert code == 1 and len(rows) == 7
    assert sum(r["status"] != "excluded" for r in rows.values()) == 6
    assert rows[SNOW]["status"] == "excluded" and rows[SNOW]["reason"] and "excluded: " in err and SNOW in err
    assert len(list((out / "corrected").glob("*.tif"))) == 6


def test_a_client_and_a_cluster_of_its_own_are_refused_together(dask_client):
    """``client=`` runs on that client; ``scheduler=`` / ``workers=`` with it would be ignored:
    refused in one line before any work; the options after ``reference`` are keywords only."""
    for extra in ({"workers": 2}, {"scheduler": "tcp://127.0.0.1:1"}):
        with pytest.raises(PipelineError, match=r"^client= runs the stack on that client.*give one or the other$"):
            stack.coregister_stack([str(p) for p in DATES[:2]], client=dask_client, progress=False, **extra)
    with pytest.raises(TypeError):
        stack.coregister_stack([str(p) for p in DATES[:2]], None, "auto", ("B04",))
