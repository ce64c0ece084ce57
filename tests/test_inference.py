"""ImageMatcher: coordinate frames, inputs, ranking, georeferenced output, bad input."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import rasterio
import torch
from PIL import Image

import s2coreg.config as config
import s2coreg.matching.matcher as inference
import s2coreg.matching.geometry as geometry
import s2coreg.utils as utils
from s2coreg.matching.matcher import ImageMatcher
from s2coreg.preprocess import preprocess
import s2coreg.samples as fx

pytestmark = pytest.mark.shipped


@pytest.fixture(scope="module")
def matcher():
    return ImageMatcher(device="cpu")           # the default: sift-first


@pytest.fixture(scope="module")
def learned():
    return ImageMatcher(device="cpu", matcher="auto")     # the learned pipeline alone (SuperGlue)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """The shipped Pisa pair preprocessed (true colour JPEG + sidecars), 512×512."""
    out = tmp_path_factory.mktemp("pre")
    assert not preprocess(fx.SAMPLE, out, format="png").errors
    return out / "pisa_20150704" / "overview.png", out / "pisa_20180211" / "overview.png"


def rgb(path):
    return np.asarray(Image.open(path).convert("RGB"))


def test_known_warp_recovered_in_each_frame(sample):
    """Images larger than the network size: the returned homography still maps image-0 pixels
    to image-1 pixels in their own frames (here 768 px, the network seeing 512)."""
    m = ImageMatcher(device="cpu", resize=512)
    big0 = cv2.resize(rgb(sample[0]), (768, 768), interpolation=cv2.INTER_CUBIC)
    H = geometry.sample_homography(np.random.default_rng(3), (768, 768), "easy")
    big1 = cv2.warpPerspective(big0, H, (768, 768), flags=cv2.INTER_LINEAR)
    result = m.match_images(big0, big1)
    assert result.num_inliers > 50
    assert geometry.corner_error(result.homography, H, (768, 768)) < 2.0
    assert result.keypoints0[:, 0].max() > 600   # the input's own frame, not the network's


def test_refinement_brings_matches_closer_to_the_truth(sample):
    """Same-date image against a warped copy at twice the network size: the fine head moves the
    matched points of image 1 (in image 1's own frame) closer to where H puts image 0's keypoints."""
    big0 = cv2.resize(rgb(sample[0]), (1024, 1024), interpolation=cv2.INTER_CUBIC)
    H = geometry.sample_homography(np.random.default_rng(4), (1024, 1024), "medium")
    big1 = cv2.warpPerspective(big0, H, (1024, 1024), flags=cv2.INTER_LINEAR)
    refined = ImageMatcher(device="cpu", resize=512, correlate=False, matcher="auto").match_images(big0, big1)
    plain = ImageMatcher(device="cpu", resize=512, refine=False, correlate=False,
                         matcher="auto").match_images(big0, big1)
    assert refined.method.endswith("+refine") and not plain.method.endswith("+refine")
    np.testing.assert_array_equal(refined.matches0, plain.matches0)
    np.testing.assert_allclose(refined.mkpts0, plain.mkpts0)
    truth = geometry.warp_points(refined.mkpts0.astype(np.float64), H)
    err_refined = np.linalg.norm(refined.mkpts1 - truth, axis=1)
    err_plain = np.linalg.norm(plain.mkpts1 - truth, axis=1)
    near = err_plain < 16                     # 16 px of the input = 8 px of what the network saw
    assert near.sum() > 100 and np.median(err_refined[near]) < 0.8 * np.median(err_plain[near])
    # the correlation stage then makes the inliers precise to a fraction of a pixel (full resolution)
    correlated = ImageMatcher(device="cpu", resize=512, matcher="auto").match_images(big0, big1)
    assert correlated.method.endswith("+refine+correlate")
    np.testing.assert_array_equal(correlated.matches0, refined.matches0)
    moved = correlated.correlated1[correlated.matches0[correlated.matches0 > -1]]
    err_correlated = np.linalg.norm(correlated.mkpts1 - truth, axis=1)
    assert moved.mean() > 0.5 and np.median(err_correlated[moved]) < 0.1      # measured: 0.03 px
    assert np.median(err_correlated[moved]) < 0.2 * np.median(err_refined[moved])   # fine head: 1.15 px


def test_arrays_and_paths_give_the_same_result(matcher, sample):
    by_path = matcher.match_images(sample[0], sample[1])
    by_array = matcher.match_images(rgb(sample[0]), rgb(sample[1]))
    np.testing.assert_array_equal(by_path.matches0, by_array.matches0)
    np.testing.assert_allclose(by_path.mkpts0, by_array.mkpts0)
    assert by_path.crs == "EPSG:4326" and by_array.crs is None   # only files carry georeferencing


def test_non_finite_pixels_of_a_float_array_are_no_data(learned, sample):
    """A float array's NaN or ±inf is no data there (as a raster's NaN nodata tag): the pair
    matches as without them, and no keypoint lies in them (one NaN pixel used to make the whole
    stretch NaN: no keypoint anywhere, "blank or cloud-covered?")."""
    a, b = (np.asarray(Image.open(p).convert("L")).astype(np.float32) for p in sample)
    clean = learned.match_images(a, b)
    a[10, 10] = np.nan
    b[100:200, 100:200] = np.inf
    r = learned.match_images(a, b)
    assert r.verified and r.num_inliers > 0.8 * clean.num_inliers
    k1 = r.keypoints1
    assert not ((k1[:, 0] > 100) & (k1[:, 0] < 199) & (k1[:, 1] > 100) & (k1[:, 1] < 199)).any()


def test_different_input_sizes(matcher, sample):
    small = cv2.resize(rgb(sample[1]), (300, 300), interpolation=cv2.INTER_AREA)
    r = matcher.match_images(rgb(sample[0]), small)
    assert r.image_size0 == (512, 512) and r.image_size1 == (300, 300)
    assert r.num_inliers > 20
    # the true mapping is a scale by 300/512 about pixel corners
    s = 300 / 512
    H_true = geometry.translation(-0.5, -0.5) @ np.diag([s, s, 1]) @ geometry.translation(0.5, 0.5)
    assert geometry.corner_error(r.homography, H_true, (512, 512)) < 3.0
    assert set(r) >= {"keypoints0", "keypoints1", "matches0", "matching_scores0", "mkpts0", "mkpts1", "mconf",
                      "homography", "inliers"}
    assert r.mkpts0.shape == r.mkpts1.shape == (len(r.mconf), 2)


def test_rank_puts_the_true_partner_first(matcher, sample, tmp_path):
    query = rgb(sample[0])[:256, :256]
    winter = rgb(sample[1])
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    Image.fromarray(winter[256:, 256:]).save(gallery / "a_other_district.png")
    Image.fromarray(winter[:256, 256:]).save(gallery / "b_other_district.png")
    Image.fromarray(winter[:256, :256]).save(gallery / "c_partner.png")
    Image.fromarray(winter[256:, :256]).save(gallery / "d_other_district.png")
    Image.fromarray(query).save(tmp_path / "query.png")
    ranking = matcher.rank(tmp_path / "query.png", gallery, progress=False)
    assert ranking[0]["candidate"].endswith("c_partner.png")
    assert ranking[0]["num_inliers"] > 2 * ranking[1]["num_inliers"]
    # other districts: a few chance agreements, not verified
    assert ranking[0]["verified"] and not any(r["verified"] for r in ranking[1:])


def test_the_default_is_the_path_validation_chose(matcher, sample, monkeypatch):
    """``ImageMatcher()`` and ``s2coreg-match`` without arguments run ``sift-first``, the path
    docs/matching.md "The default" chose on validation (the benchmark's ``sift-first`` row); ``auto``
    still means the learned pipeline alone."""
    import s2coreg.io.imaging as imaging
    import s2coreg.matching.pipeline as matching
    import s2coreg.training.evaluate as evaluate

    assert config.MatchingConfig.matcher == "sift-first"
    default = ImageMatcher()
    assert default.config.matcher == "sift-first" and isinstance(default.pipeline, matching.CascadePipeline)
    assert default.pipeline.matcher_name == "sift-first"
    assert default.method == "sift+ratio+correlate, else superpoint+superglue+refine+correlate"
    assert ImageMatcher(matcher="auto").method == "superpoint+superglue+refine+correlate"
    # the benchmark's sift-first is this path: the same pair gives the same matches
    r = matcher.match_images(*sample)
    method = evaluate.build_method("sift-first", config.EvalConfig())
    assert method.pipeline.name == matcher.method
    f0, f1 = (method.extract(imaging.load_image(p), imaging.load_valid_mask(p)) for p in sample)
    benchmarked = method.pipeline.match_features(f0, f1)
    assert benchmarked["cascade_path"] == r.cascade_path == "sift" and benchmarked["num_inliers"] == r.num_inliers
    np.testing.assert_allclose(benchmarked["homography"], r.homography)
    # the command line's default is the same value, handed to ImageMatcher
    seen = {}

    class Spy(ImageMatcher):
        def __init__(self, *args, **kwargs):
            seen.update(kwargs)
            raise utils.PipelineError("stop here")

    monkeypatch.setattr(inference, "ImageMatcher", Spy)
    assert inference.main([]) == 2 and seen["matcher"] == config.MatchingConfig.matcher


def test_a_ranking_scores_every_candidate_with_one_path(matcher, sample, tmp_path):
    """The default cascade takes SIFT's path for one candidate (the query's date, moved 16 px) and
    the learned one for another (another district): ranked, every candidate is scored by the
    learned path (``ranking_method``), whose inlier counts compare; ranking.json says which."""
    query = rgb(sample[0])[:256, :256]
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    Image.fromarray(rgb(sample[0])[:256, 16:272]).save(gallery / "a_same_date.png")
    Image.fromarray(rgb(sample[1])[:256, :256]).save(gallery / "b_partner.png")
    Image.fromarray(rgb(sample[1])[256:, 256:]).save(gallery / "c_other_district.png")
    Image.fromarray(query).save(tmp_path / "query.png")
    paths = {matcher.match_images(tmp_path / "query.png", c).cascade_path for c in gallery.iterdir()}
    assert paths == {"sift", "learned"}             # matched one by one, the cascade takes both paths
    assert matcher.ranking_method == "superpoint+superglue+refine+correlate"
    ranking = matcher.rank(tmp_path / "query.png", gallery, progress=False)
    assert len(ranking) == 3 and {r["method"] for r in ranking} == {matcher.ranking_method}
    assert {r["cascade_path"] for r in ranking} == {"learned"}
    assert [Path(r["candidate"]).name for r in ranking][2] == "c_other_district.png"
    assert inference.main(["--query", str(tmp_path / "query.png"), "--gallery", str(gallery),
                           "--output", str(tmp_path / "out")]) == 0
    written = json.loads((tmp_path / "out" / "ranking.json").read_text())
    assert written["method"] == matcher.ranking_method and written["matcher"] == "sift-first"
    assert {r["method"] for r in written["ranking"]} == {written["method"]}


def test_unverified_pair_has_no_homography_nor_shift(sample):
    strict = ImageMatcher(device="cpu", min_inliers=10 ** 6).match_images(sample[0], sample[1])
    assert not strict.verified and strict.homography is None and strict.shift_m is None
    assert strict.num_inliers > 100 and "min_inliers" in strict.reason
    assert len(strict.mkpts0) > 100            # the matches themselves are still returned


def test_geojson_of_a_known_pixel(matcher, learned, sample, tmp_path):
    r = matcher.match_images(sample[0], sample[1])
    paths = matcher.write_geo(r, tmp_path)
    meta = json.loads(sample[0].with_suffix(".json").read_text())
    t = rasterio.Affine(*meta["transform"])
    x, y = map(float, r.mkpts0[0])
    lon, lat = t @ (x + 0.5, y + 0.5)          # EPSG:4326: map coordinates are lon, lat
    feature = json.loads(paths[0].read_text())["features"][0]
    assert feature["geometry"]["coordinates"] == pytest.approx([lon, lat], abs=1e-9)
    assert feature["properties"]["x0"] == pytest.approx(float(x))
    assert paths[1].read_text().splitlines()[0].startswith("x0,y0,x1,y1")
    # the OSCD dates' own residual, as the README states it: the default (SIFT's path here) dx -2.4 m,
    # dy +11.2 m; the learned path alone (--matcher auto) dx -2.6 m, dy +11.8 m
    assert r.verified and r.shift_m["points"] == r.num_inliers and r.cascade_path == "sift"
    np.testing.assert_allclose([r.shift_m["dx"], r.shift_m["dy"]], [-2.4, 11.2], atol=0.3)
    r = learned.match_images(sample[0], sample[1])
    np.testing.assert_allclose([r.shift_m["dx"], r.shift_m["dy"]], [-2.6, 11.8], atol=0.3)


def test_main_job_on_the_sample(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "PREPROCESSED_DIR", tmp_path / "pre")
    assert inference.main(["--output", str(tmp_path / "out")]) == 0
    info = json.loads((tmp_path / "out" / "matches.json").read_text())
    assert info["inliers"] > 50 and (tmp_path / "out" / "matches.png").stat().st_size > 10_000
    # the README's statement of this run: the default (SIFT's path verifies the pair) 94 matches, 82
    # verified, dx -2.4 m, dy +11.2 m; the learned path (--matcher auto) 778, 611, dx -2.6 m, dy +11.8 m
    assert info["cascade_path"] == "sift" and abs(info["matches"] - 94) <= 5 and abs(info["inliers"] - 82) <= 5
    assert info["shift_m"]["dx"] == pytest.approx(-2.4, abs=0.15)
    assert info["shift_m"]["dy"] == pytest.approx(11.2, abs=0.15)
    assert (tmp_path / "out" / "matches.geojson").exists()
    assert inference.main(["--output", str(tmp_path / "auto"), "--matcher", "auto"]) == 0
    info = json.loads((tmp_path / "auto" / "matches.json").read_text())
    assert abs(info["matches"] - 778) <= 15 and abs(info["inliers"] - 611) <= 15
    assert info["shift_m"]["dx"] == pytest.approx(-2.6, abs=0.15) and info["shift_m"]["dy"] == pytest.approx(11.8, abs=0.15)


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs(matcher, sample, tmp_path):
    with pytest.raises(utils.PipelineError, match="no such file"):
        matcher.match_images(tmp_path / "missing.png", sample[1])
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(utils.PipelineError, match="broken.png: cannot read image"):
        matcher.match_images(tmp_path / "broken.png", sample[1])
    with pytest.raises(utils.PipelineError, match="smaller than one 8-px network cell"):
        matcher.match_images(np.zeros((5, 40), np.uint8), sample[1])
    with pytest.raises(utils.PipelineError, match="4-band uint16 image; choose the bands"):
        matcher.match_images(np.zeros((64, 64, 4), np.uint16), sample[1])


def test_band_choice_for_multiband_input(sample):
    """``bands`` are 1-based, as GDAL and rasterio count them (and as coregister.py --bands)."""
    with pytest.raises(utils.PipelineError, match="1-based"):
        ImageMatcher(device="cpu", bands=(0, 1, 2)).match_images(np.zeros((64, 64, 4), np.uint8),
                                                                 np.zeros((64, 64, 4), np.uint8))
    m = ImageMatcher(device="cpu", bands=(3, 2, 1))
    stack = np.concatenate([rgb(sample[0])[..., ::-1], np.zeros((512, 512, 1), np.uint8)], axis=2)  # B, G, R, 0
    r = m.match_images(stack, np.concatenate([rgb(sample[1])[..., ::-1], np.zeros((512, 512, 1), np.uint8)], 2))
    assert r.verified and r.num_inliers > 50          # SIFT's path (the default's) on this pair: 86


def test_blank_image_gives_empty_result_with_reason(matcher, sample):
    r = matcher.match_images(np.full((256, 256, 3), 255, np.uint8), sample[1])
    assert len(r.mkpts0) == 0 and r.homography is None and not r.verified and "blank" in r.reason


def test_mismatched_checkpoint(tmp_path):
    import s2coreg.models.superpoint as sp

    ckpt = sp.SuperPoint(config.SuperPointConfig()).checkpoint()
    ckpt["config"]["channels"] = [8, 8, 8, 8]
    torch.save(ckpt, tmp_path / "superpoint.pt")
    with pytest.raises(utils.PipelineError, match="do not fit the SuperPoint config"):
        ImageMatcher(model_path=tmp_path)
    with pytest.raises(utils.PipelineError, match="no such checkpoint"):
        ImageMatcher(model_path=tmp_path / "empty_dir_that_is_missing")


def test_one_configuration_object_merged_with_overrides(sample):
    """``ImageMatcher(config=MatchingConfig(...), **overrides)``: the config's fields are used,
    a keyword overrides one of them."""
    strict = config.MatchingConfig(min_inliers=100_000, resize=512)
    m = ImageMatcher(device="cpu", config=strict)
    assert m.config.resize == 512 and not m.match_images(*sample).verified          # the config's rule
    m = ImageMatcher(device="cpu", config=strict, min_inliers=15)
    assert m.config.min_inliers == 15 and m.config.resize == 512 and m.match_images(*sample).verified


def test_bands_by_name_from_the_files_descriptions(tmp_path):
    """``ImageMatcher(bands=("B04", "B03", "B02"))`` and ``("red", "green", "blue")`` pick the
    bands a raster's descriptions name — the same as their 1-based indices; without ``bands``
    those three are found by their descriptions."""
    bracciano = Path(__file__).parent / "data" / "bracciano"
    a, b = bracciano / "20160718.tif", bracciano / "20180610.tif"      # described B04, B03, B02
    by_index = ImageMatcher(device="cpu", bands=(1, 2, 3)).match_images(a, b)
    for bands in (("B04", "B03", "B02"), ("red", "green", "blue")):
        r = ImageMatcher(device="cpu", bands=bands).match_images(a, b)
        np.testing.assert_array_equal(r.mkpts0, by_index.mkpts0)
    with pytest.raises(utils.PipelineError, match="no band named B08"):
        ImageMatcher(device="cpu", bands=("B08",)).match_images(a, b)
    # without bands, a raster that describes B04, B03, B02 uses them wherever they are (as
    # coregister.py does): a five-band B08, B04, B03, B02, B11 file gives the same matches
    five = []
    for src_path in (a, b):
        with rasterio.open(src_path) as src:
            profile, rgb3 = src.profile, src.read()
        profile.update(count=5)
        five.append(tmp_path / src_path.name)
        with rasterio.open(five[-1], "w", **profile) as dst:
            dst.write(np.concatenate([rgb3[:1] // 2, rgb3, rgb3[2:] // 3]))
            dst.descriptions = ("B08", "B04", "B03", "B02", "B11")
    np.testing.assert_array_equal(ImageMatcher(device="cpu").match_images(*five).mkpts0, by_index.mkpts0)
    np.testing.assert_array_equal(ImageMatcher(device="cpu").match_images(a, b).mkpts0, by_index.mkpts0)
    # Sentinel-2 names without the leading zero (B4, B3, B2) are the same bands
    for path in five:
        with rasterio.open(path, "r+") as dst:
            dst.descriptions = ("B8", "B4", "B3", "B2", "B11")
    np.testing.assert_array_equal(ImageMatcher(device="cpu").match_images(*five).mkpts0, by_index.mkpts0)
    # described, but not as red, green and blue: the error lists what the file has
    for path in five:
        with rasterio.open(path, "r+") as dst:
            dst.descriptions = ("NIR", "R", "G", "B", "SWIR")
    with pytest.raises(utils.PipelineError, match="bands=.*its bands: NIR, R, G, B, SWIR"):
        ImageMatcher(device="cpu").match_images(*five)
    with pytest.raises(utils.PipelineError, match="no band named B04, B03, B02 .its bands: NIR, R, G, B, SWIR"):
        ImageMatcher(device="cpu", bands=("red", "green", "blue")).match_images(*five)
    # bands as --bands takes them, a string
    np.testing.assert_array_equal(ImageMatcher(device="cpu", bands="2,3,4").match_images(*five).mkpts0,
                                  by_index.mkpts0)


def test_the_fast_mode_and_its_fallback(learned, sample, monkeypatch):
    """``matcher="fast"``: mutual nearest neighbours on SuperPoint's features where they give
    enough inliers (the Pisa pair: the learned path's shift within a metre), SuperGlue on the
    *same* features where they do not (each image extracted once), and a blank image's reason."""
    fast = ImageMatcher(device="cpu", matcher="fast")
    r = fast.match_images(*sample)
    assert r.verified and r["cascade_path"] == "mnn" and r.num_inliers >= fast.config.fast_min_inliers
    learned = learned.match_images(*sample)
    assert np.hypot(r["shift_m"]["dx"] - learned["shift_m"]["dx"], r["shift_m"]["dy"] - learned["shift_m"]["dy"]) < 1.0
    # demanding more inliers than the pair has hands it to SuperGlue, on the features already there
    strict = ImageMatcher(device="cpu", matcher="fast", config=dataclasses.replace(fast.config, fast_min_inliers=10**6))
    calls = []
    extract = strict.pipeline.extractor.extract
    monkeypatch.setattr(strict.pipeline.extractor, "extract", lambda *a, **k: calls.append(1) or extract(*a, **k))
    r = strict.match_images(*sample)
    assert r["cascade_path"] == "superglue" and r.verified and "inliers < 1000000" in r.method and len(calls) == 2
    assert np.hypot(r["shift_m"]["dx"] - learned["shift_m"]["dx"], r["shift_m"]["dy"] - learned["shift_m"]["dy"]) < 0.05
    r = fast.match_images(np.full((256, 256, 3), 200, np.uint8), sample[1])   # nothing for SuperGlue either
    assert r["cascade_path"] == "mnn" and not r.verified and "blank" in r.reason


def test_the_sift_first_cascade_and_its_fallback(learned, sample):
    """``matcher="sift-first"``: SIFT + the ratio test + the correlation stage where that verifies
    (the Pisa pair: the learned path's shift within a metre), the learned path where it does not
    (a blank image: SIFT finds nothing; the learned path then says why)."""
    first = ImageMatcher(device="cpu", matcher="sift-first")
    r = first.match_images(*sample)
    assert r.verified and r["cascade_path"] == "sift" and r.method.startswith("sift")
    learned = learned.match_images(*sample)
    assert np.hypot(r["shift_m"]["dx"] - learned["shift_m"]["dx"], r["shift_m"]["dy"] - learned["shift_m"]["dy"]) < 1.0
    r = first.match_images(np.full((256, 256, 3), 200, np.uint8), sample[1])
    assert r["cascade_path"] == "learned" and not r.verified and "blank" in r.reason


def test_typed_results_still_read_as_dicts(matcher):
    """``match_images`` returns a ``results.MatchResult`` (documented fields) that reads like the
    dict it was: by key, by attribute, ``get``, ``in``, ``{**r}``, JSON; its shift is a
    ``ShiftEstimate`` whose ``sigma_m`` is per axis, as a co-registration's (``se``: of the vector)."""
    import s2coreg.results as results

    bracciano = Path(__file__).parent / "data" / "bracciano"
    m = ImageMatcher(device="cpu", bands=(1, 2, 3))
    r = m.match_images(bracciano / "20160718.tif", bracciano / "20180610.tif")
    assert isinstance(r, results.MatchResult) and isinstance(r.shift_m, results.ShiftEstimate)
    assert r["homography"] is r.homography and r.get("names") == r.names and "mkpts0" in {**r}
    assert r.shift_m.sigma_m == pytest.approx(r["shift_m"]["se"] / np.sqrt(2), rel=1e-6) and r.shift_m.ce90_m is None
    r["something_new"] = 1                                     # a result can grow
    assert r.something_new == 1 and r["something_new"] == 1
    text = json.dumps({"shift_m": r.shift_m}, default=utils._json_default)
    assert "ce90_m" not in text and json.loads(text)["shift_m"]["dx"] == pytest.approx(r.shift_m.dx)
