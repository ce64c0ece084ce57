"""In a notebook: the pictures show (``_repr_png_``), the results read as compact text and as
tables (``_repr_html_``), a stack's result is still its dict; and examples/s2coreg_tour.ipynb runs
in a fresh kernel (nbclient) with its pictures and tables in the outputs and nothing on stderr but
progress bars."""
import json
import math
import pickle
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from s2coreg.results import CoregistrationResult, MatchResult, ShiftEstimate, StackDate, StackResult

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "examples" / "s2coreg_tour.ipynb"
PNG = b"\x89PNG\r\n\x1a\n"


def big_match() -> MatchResult:
    rng = np.random.default_rng(0)
    k = 500
    return MatchResult(keypoints0=rng.random((2000, 2), np.float32), keypoints1=rng.random((1900, 2), np.float32),
                       descriptors0=rng.random((2000, 256), np.float32), mkpts0=rng.random((k, 2)), mkpts1=rng.random((k, 2)),
                       mconf=rng.random(k), inliers=rng.random(k) > 0.3, num_inliers=350, verified=True,
                       method="superpoint+superglue+refine+correlate", names=("a.tif", "b.tif"), crs="EPSG:32633",
                       map_points0=rng.random((k, 2)) * 100, map_points1=rng.random((k, 2)) * 100 + 1,
                       shift_m=ShiftEstimate(dx=1.23456, dy=-0.5, sigma_m=0.12, metric_crs="EPSG:32633", length=1.3,
                                             sigma_x=2.0, sigma_y=2.1, r68=2.5, r95=5.0, se=0.17, points=350))


def stack_result() -> StackResult:
    rows = [StackDate(path="/d/a.tif", id="a", date="20200101", dx_m=0.0, dy_m=0.0, sigma_m=0.0, tie_points=90,
                      status="reference", reason="most keypoints"),
            StackDate(path="/d/b.tif", id="b", date="20200201", dx_m=1.5, dy_m=-2.0, sigma_m=0.3, tie_points=80,
                      status="ok", warnings=["rotated 0.2°"]),
            StackDate(path="/d/c.tif", id="c", date="20200301", status="excluded", reason="cloud")]
    return StackResult({"reference": "/d/a.tif", "reference_id": "a", "dates": rows,
                        "pairs": [{"date_i": "20200101", "date_j": "20200201", "verified": True, "dx_m": 1.5}],
                        "placed": 2, "excluded": 1, "seconds": 3.2})


def test_match_result_repr_is_compact_shapes_not_arrays():
    r = big_match()
    text = repr(r)
    assert len(text) < 400 and str(r) == text
    assert "array(" not in text and "0." + "0" * 3 not in text
    assert "keypoints=(2000, 1900)" in text and "matches=500" in text and "num_inliers=350" in text
    assert "dx=1.235" in text and "None" not in text
    html = r._repr_html_()
    assert "<table" in html and "shift_m.dx" in html and "array" not in html


def test_shift_estimate_repr_shows_the_numbers_that_are_set():
    text = repr(ShiftEstimate(dx=1.0, dy=2.0, sigma_m=0.25, metric_crs="EPSG:32632", ce90_m=0.54))
    assert text == "ShiftEstimate(dx=1.000, dy=2.000, sigma_m=0.250, ce90_m=0.540, metric_crs='EPSG:32632')"
    assert "<table" in ShiftEstimate(dx=1.0, dy=2.0)._repr_html_()


def test_coregistration_result_shows_its_report_beside_the_numbers(tmp_path):
    from s2coreg.picture import Picture

    report = tmp_path / "report.png"
    fig = Picture(figsize=(2, 1))
    fig.add_subplot().plot([0, 1])
    fig.savefig(report)
    (tmp_path / "coregistration.json").write_text(json.dumps({"provenance": {"time": "2026-12-07T05:00:00"}}))
    c = CoregistrationResult(verified=True, shift_m=ShiftEstimate(dx=1.0, dy=-1.0, sigma_m=0.2, ce90_m=0.43),
                             tie_points=120, windows={"used": 4, "rejected": 1}, target="/x/t.tif", date="20200101",
                             warnings=["a warning"], outputs=[str(report)],
                             provenance={"time": "2026-12-07T05:00:00"})     # the folder's result is this one
    text = repr(c)
    assert "dx_m=1.000" in text and "tie_points=120" in text and "target='t.tif'" in text and "None" not in text
    html = c._repr_html_()
    assert "<table" in html and "data:image/png;base64," in html and "a warning" in html
    assert c.report()._repr_png_().startswith(PNG)
    report.unlink()                       # gone: the table alone
    assert "<img" not in c._repr_html_() and c.report() is None
    assert json.loads(json.dumps(c.to_dict()))["shift_m"]["dx"] == 1.0


def test_picture_displays_without_pyplot_and_saves(tmp_path):
    from s2coreg.picture import Picture

    fig = Picture(figsize=(2, 1))
    fig.add_subplot().plot([0, 1])
    assert fig._repr_png_().startswith(PNG)
    fig.savefig(tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes().startswith(PNG)
    assert pickle.loads(pickle.dumps(fig))._repr_png_().startswith(PNG)


def test_stack_result_is_its_dict_and_a_table():
    s = stack_result()
    assert isinstance(s, dict) and s["dates"][1]["dx_m"] == 1.5 and s["reference"] == "/d/a.tif"
    back = pickle.loads(pickle.dumps(s))
    assert type(back) is StackResult and back["dates"][1].dx_m == 1.5
    assert json.loads(json.dumps({**s, "dates": [r.to_dict() for r in s["dates"]]}))["placed"] == 2
    assert repr(s) == "StackResult(3 dates: 2 placed, 1 excluded; reference='a'; 1 pairs; 3.2 s)"
    html = s._repr_html_()
    assert html.count("<tr>") == 4 and "<table" in html and "rotated 0.2°" in html and "cloud" in html
    assert "data:image/png;base64," in html                        # the report picture
    assert s.report()._repr_png_().startswith(PNG)


def test_stack_result_to_dataframe():
    pytest.importorskip("pandas")
    s = stack_result()
    df = s.to_dataframe()
    assert list(df["status"]) == ["reference", "ok", "excluded"] and math.isnan(df["dx_m"][2])
    assert len(s.to_dataframe("pairs")) == 1


def test_to_dataframe_without_pandas_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="to_dataframe needs pandas.*pip install pandas"):
        stack_result().to_dataframe()


def test_matches_as_a_geodataframe():
    pytest.importorskip("geopandas")
    gdf = big_match().to_geodataframe()
    assert len(gdf) == 500 and gdf.crs.to_epsg() == 32633 and gdf["inlier"].sum() == (big_match().inliers).sum()
    assert np.allclose(gdf["dx"], gdf["x1"] - gdf.geometry.x)


def test_progress_bars_are_text_outside_jupyter():
    from tqdm.std import tqdm as text_bar

    from s2coreg.display import progress_class

    assert progress_class() is text_bar


PROGRESS = re.compile(r"^\s*[\w ]+:\s+\d+%\|")       # a tqdm text bar's line ("pairs:  33%|███▎  | 1/3 …")


def stderr_beyond_progress(text: str) -> list[str]:
    return [part for part in re.split(r"[\r\n]", text) if part.strip() and not PROGRESS.match(part)]


@pytest.mark.shipped          # ~20 s on two cores (the kernel's start, torch's import, a Dask worker's): the default tier
def test_tour_notebook_runs_in_a_fresh_kernel():
    """examples/s2coreg_tour.ipynb in a fresh kernel, in the repository's root: its pictures
    (``image/png``) and tables (``text/html`` with ``<table``) in the outputs; no error, and nothing
    on stderr but progress bars (no warning, no traceback)."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("rioxarray")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code"), \
        "the notebook is committed with its outputs stripped"
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]

    def outputs(marker):                    # the outputs of the cell whose source holds ``marker``
        found = [c for c in code if marker in c.source]
        assert len(found) == 1, marker
        return found[0].outputs

    def data(cell_outputs, mime):
        return [o["data"][mime] for o in cell_outputs if mime in o.get("data", {})]

    for c in code:
        for o in c.outputs:
            assert o.output_type != "error", f"{c.source!r}: {o.get('ename')}: {o.get('evalue')}"
            if o.output_type == "stream" and o.name == "stderr":
                assert not stderr_beyond_progress(o.text), f"{c.source!r} wrote to stderr: {o.text!r}"
    assert data(outputs("m.visualize_matches("), "image/png")                    # the match picture
    match_html = data(outputs("r = m.match_images("), "text/html")
    assert match_html and "<table" in match_html[0]
    pair_html = data(outputs("c = coregister("), "text/html")
    assert pair_html and "<table" in pair_html[0] and "data:image/png;base64," in pair_html[0]   # report.png beside
    stack_html = data(outputs("s = coregister_stack("), "text/html")
    assert stack_html and "<table" in stack_html[0] and "data:image/png;base64," in stack_html[0]
    assert "<table" in data(outputs("s.to_dataframe()"), "text/html")[0]
    assert data(outputs("shifts = coregister_dataarray("), "text/html")
    for o in outputs("s = coregister_stack("):
        assert "8787" not in str(o) and "distributed" not in str(o)


@pytest.mark.shipped
def test_a_result_never_shows_a_later_run_s_picture_or_tie_points(tmp_path):
    """Two pairs co-registered into one folder (a notebook cell run again): the first result no
    longer shows the folder's picture or tie points — they are the second run's — while the
    second shows its own; one warning reads as its text in the repr, not as a count."""
    from s2coreg import coregister

    dates = sorted((ROOT / "tests" / "data" / "t36uya").glob("*.tif"))
    out = tmp_path / "out"
    first = coregister(str(dates[1]), str(dates[2]), out, progress=False)
    assert first.report_path() is not None and first.own_output("tie_points.geojson") is not None
    second = coregister(str(dates[2]), str(dates[3]), out, progress=False)
    assert first.report_path() is None and first.report() is None and "<img" not in first._repr_html_()
    assert first.own_output("tie_points.geojson") is None
    assert second.report_path() is not None and "<img" in second._repr_html_()
    warned = CoregistrationResult(verified=True, warnings=["windows disagree by 34–183 m: the translation is only "
                                                           "an average; use correction='affine' (--correction affine)"])
    assert "warnings=['windows disagree by 34–183 m: the translation is only an average; use c…']" in repr(warned)
    assert "texts>" not in repr(warned)


def test_a_ranking_reads_as_a_list_and_shows_as_a_table():
    """``ImageMatcher.rank``'s answer is the list of dicts it was (sorted, JSON-writable) and shows
    in a notebook as a table of the candidates (their names, not whole paths)."""
    from s2coreg.results import Ranking

    ranked = Ranking([{"candidate": "/data/a/b.tif", "num_inliers": 40, "verified": True, "num_matches": 90,
                       "reason": None, "error": False, "method": "superpoint+superglue", "cascade_path": None},
                      {"candidate": "/data/a/c.tif", "num_inliers": 0, "verified": False, "num_matches": 3,
                       "reason": "0 RANSAC inliers < 15", "error": False, "method": None, "cascade_path": None}])
    assert isinstance(ranked, list) and json.loads(json.dumps(ranked))[0]["num_inliers"] == 40
    html = ranked._repr_html_()
    assert "<table" in html and "2 candidates ranked, 1 verified" in html and "b.tif" in html
    assert "/data/a" not in html and "0 RANSAC inliers" in html
