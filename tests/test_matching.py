"""The one matching path (s2coreg/matching/pipeline.py) and what a new user hit first (issue: one path)."""
from __future__ import annotations

import json
import shutil
from collections import OrderedDict
import tracemalloc

import cv2
import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from rasterio.transform import from_origin

import s2coreg.config as config
import s2coreg.training.evaluate as evaluate
import s2coreg.io.geo as geo
import s2coreg.matching.matcher as inference
import s2coreg.matching.pipeline as matching
import s2coreg.models.superpoint as sp
import s2coreg.matching.stages as stages
import s2coreg.training.superglue as train_superglue
import s2coreg.training.superpoint as train_superpoint
import s2coreg.matching.geometry as geometry
import s2coreg.io.imaging as imaging
import s2coreg.utils as utils
from s2coreg.matching.matcher import ImageMatcher
from s2coreg.preprocess import preprocess
import s2coreg.samples as fx
from s2coreg.samples import sample_gray

shipped = pytest.mark.shipped


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """The shipped Pisa pair preprocessed (true colour PNG + sidecars + nodata masks), 512×512."""
    out = tmp_path_factory.mktemp("pre")
    assert not preprocess(fx.SAMPLE, out, format="png").errors
    return out / "pisa_20150704" / "overview.png", out / "pisa_20180211" / "overview.png"


@pytest.fixture(scope="module")
def matcher():
    return ImageMatcher(device="cpu")


def rgb(path):
    return np.asarray(Image.open(path).convert("RGB"))


def training_data(tmp_path):
    (tmp_path / "oscd").mkdir(parents=True)
    for name in ("pisa", "pisa_copy"):       # pisa is a validation place; the copy trains
        (tmp_path / "oscd" / name).symlink_to(fx.SAMPLE.resolve())
    return tmp_path


# ----------------------------------------------------------------------------- one path
@shipped
def test_image_matcher_benchmark_and_stage_scripts_agree(sample, tmp_path):
    """The same pair through ImageMatcher's learned pipeline (``matcher="auto"``, the default
    cascade's fallback), the benchmark's method and the two stage scripts (which match SuperPoint
    feature files): identical keypoints, matches, refined points and verification."""
    r = ImageMatcher(device="cpu", matcher="auto").match_images(sample[0], sample[1])
    assert r.method == "superpoint+superglue+refine+correlate" and r.verified

    method = evaluate.build_method("superpoint+superglue+refine+correlate", config.EvalConfig())
    f0, f1 = (method.extract(imaging.load_image(p), imaging.load_valid_mask(p)) for p in sample)
    matches0, refined1 = method.match(f0, f1)
    np.testing.assert_array_equal(f0["keypoints"], r.keypoints0)
    np.testing.assert_array_equal(f1["keypoints"], r.keypoints1)
    np.testing.assert_array_equal(matches0, r.matches0)
    np.testing.assert_array_equal(refined1[matches0[matches0 > -1]], r.mkpts1)

    root = sample[0].parent.parent
    assert stages.extract_main(["--input", str(root), "--output", str(tmp_path / "f")]) == 0
    (tmp_path / "pairs.txt").write_text("pisa_20150704/overview pisa_20180211/overview\n")
    assert stages.match_main(["--features", str(tmp_path / "f"), "--pairs", str(tmp_path / "pairs.txt"),
                                        "--output", str(tmp_path / "m")]) == 0
    m = np.load(tmp_path / "m" / "pisa_20150704_overview__pisa_20180211_overview.npz")
    np.testing.assert_array_equal(m["keypoints0"], r.keypoints0)
    np.testing.assert_array_equal(m["matches0"], r.matches0)
    np.testing.assert_array_equal(m["refined_keypoints1"][r.matches0[r.matches0 > -1]], r.mkpts1)
    np.testing.assert_array_equal(m["keypoints1"], r.keypoints1)
    assert bool(m["verified"]) and int(m["num_inliers"]) == r.num_inliers
    np.testing.assert_allclose(m["homography"], r.homography)


@shipped
def test_nodata_padding_leaves_the_valid_part_alone():
    """A crop, and the same crop padded with nodata: the stretch ignores the nodata, so the
    keypoints and descriptors away from the padding are the same (they were not when the
    padding's zeros entered the percentiles)."""
    image = sample_gray()[:256, :256]
    padded = np.zeros((384, 384), np.float32)
    padded[:256, :256] = image
    valid = np.zeros((384, 384), bool)
    valid[:256, :256] = True
    extractor = matching.SuperPointExtractor.from_checkpoint(max_keypoints=-1)
    a, b = extractor.extract(image), extractor.extract(padded, valid)
    inner_a = (a["keypoints"] < 200).all(1)            # 56 px from the padding: beyond its reach
    inner_b = (b["keypoints"] < 200).all(1)
    assert inner_a.sum() > 50 and inner_a.sum() == inner_b.sum()
    np.testing.assert_allclose(a["keypoints"][inner_a], b["keypoints"][inner_b], atol=1e-3)
    np.testing.assert_allclose(a["descriptors"][inner_a], b["descriptors"][inner_b], atol=1e-3)


def test_matcher_registry_names_every_caller():
    @matching.register_matcher
    class Nearest(matching.MutualNearestNeighbours):
        name = "test-nearest"

    try:
        assert "superpoint+test-nearest+refine" in evaluate.method_names()
        assert isinstance(matching.build_matcher("test-nearest"), Nearest)
        assert "test-nearest" in matching.matcher_choices()
    finally:
        del matching.MATCHERS["test-nearest"]
    # the names are the registry's (another test file's own matcher may be registered in this process)
    choices = matching.matcher_choices()
    assert choices[0] == "auto" and {"mnn", "ratio", "superglue"} <= set(choices) and choices[-2:] == ("fast", "sift-first")
    with pytest.raises(utils.PipelineError, match=f"unknown matcher .lightglue.; choose from {', '.join(choices)}"):
        matching.build_matcher("lightglue")


# ----------------------------------------------------------------------------- new-user items
@shipped
def test_no_keypoint_images_give_an_empty_result_with_a_reason(matcher, sample, tmp_path):
    gradient = np.tile(np.linspace(0, 255, 256, dtype=np.float32), (256, 1)).astype(np.uint8)
    tiny = rgb(sample[0])[100:112, 100:112]
    for image in (gradient, tiny):
        r = matcher.match_images(image, sample[1])
        assert len(r.keypoints0) == 0 and len(r.mkpts0) == 0 and not r.verified
        assert "no keypoint found" in r.reason
    # the extraction script writes an empty result for them and goes on with the rest
    Image.fromarray(gradient).save(tmp_path / "a_gradient.png")
    Image.fromarray(tiny).save(tmp_path / "b_tiny.png")
    shutil.copy(sample[0], tmp_path / "c_real.png")
    assert stages.extract_main(["--input", str(tmp_path), "--output", str(tmp_path / "f")]) == 0
    assert len(np.load(tmp_path / "f" / "a_gradient.npz")["keypoints"]) == 0
    assert "no keypoint" in str(np.load(tmp_path / "f" / "b_tiny.npz")["reason"])
    assert len(np.load(tmp_path / "f" / "c_real.npz")["keypoints"]) > 100


def test_training_writes_its_run_folder_not_the_shipped_checkpoint(tmp_path, monkeypatch, capsys):
    shipped_dir = tmp_path / "model_checkpoints"
    shipped_dir.mkdir()
    torch.save(sp.SuperPoint(config.SuperPointConfig(channels=(8, 8, 16, 16), head_dim=16,
                                                     descriptor_dim=16)).checkpoint(), shipped_dir / "superpoint.pt")
    before = (shipped_dir / "superpoint.pt").read_bytes()
    monkeypatch.setattr(config, "CHECKPOINT_DIR", shipped_dir)
    data = training_data(tmp_path / "data")
    assert train_superpoint.main(["--smoke", "--max-steps", "2", "--data", str(data),
                                  "--run-dir", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "best.pt").exists() and (shipped_dir / "superpoint.pt").read_bytes() == before
    assert train_superglue.main(["--smoke", "--max-steps", "2", "--data", str(data), "--superpoint",
                                 str(tmp_path / "run" / "best.pt"), "--run-dir", str(tmp_path / "glue")]) == 0
    assert (tmp_path / "glue" / "best.pt").exists() and not (shipped_dir / "superglue.pt").exists()
    capsys.readouterr()
    # asked explicitly: replaced, and said so
    assert train_superpoint.main(["--smoke", "--max-steps", "2", "--data", str(data), "--run-dir",
                                  str(tmp_path / "run2"), "--output", str(shipped_dir / "superpoint.pt")]) == 0
    assert (shipped_dir / "superpoint.pt").read_bytes() != before
    assert "replaces the shipped one" in capsys.readouterr().err


def test_shift_is_the_median_displacement_vector():
    """Matches scattered by 6 m around a true shift of (-0.2, -0.8) m (B11 against B12 of one
    date): the shift is the median vector, not the median length of the displacements (~7.5 m)."""
    rng = np.random.default_rng(0)
    p0 = rng.uniform(0, 5000, (400, 2)) + [600_000, 4_800_000]
    p1 = p0 + [-0.2, -0.8] + rng.normal(0, 6, (400, 2))
    s = geo.shift_statistics(p0, p1, rasterio.crs.CRS.from_epsg(32632))
    assert s["dx"] == pytest.approx(-0.2, abs=0.7) and s["dy"] == pytest.approx(-0.8, abs=0.7)
    assert s["sigma_x"] == pytest.approx(6, rel=0.2) and s["sigma_y"] == pytest.approx(6, rel=0.2)
    assert 6 * 1.3 < s["r68"] < 6 * 1.8 and s["r95"] > s["r68"] and s["points"] == 400
    assert s["se"] == pytest.approx(1.2533 * 6 * np.sqrt(2) / 20, rel=0.25)


@shipped
def test_shift_between_georeferenced_dates_in_metres(matcher, sample, tmp_path):
    """One image written twice on a UTM grid, the second's origin moved 7 m east and 3 m south:
    its content lies 7 m east and 3 m south of the reference's, and the shift says so."""
    image = np.moveaxis(rgb(sample[0]), -1, 0)
    for name, (x0, y0) in {"a.tif": (600_000, 4_800_000), "b.tif": (600_007, 4_799_997)}.items():
        with rasterio.open(tmp_path / name, "w", driver="GTiff", width=512, height=512, count=3, dtype="uint8",
                           crs="EPSG:32632", transform=from_origin(x0, y0, 10, 10)) as dst:
            dst.write(image)
    r = ImageMatcher(device="cpu", bands=(1, 2, 3)).match_images(tmp_path / "a.tif", tmp_path / "b.tif")
    assert r.verified and r.crs == "EPSG:32632"
    assert r.shift_m["dx"] == pytest.approx(7, abs=0.3) and r.shift_m["dy"] == pytest.approx(-3, abs=0.3)


def test_cuda_on_a_machine_without_it_is_a_clear_error(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(utils.PipelineError, match="device='cuda': no CUDA GPU is usable on this machine.*use device='cpu'"):
        ImageMatcher(device="cuda")
    assert inference.main(["--device", "cuda"]) == 2
    assert "use --device cpu" in capsys.readouterr().err


@shipped
def test_a_superpoint_file_keeps_the_superglue_beside_it():
    assert (ImageMatcher(model_path=config.CHECKPOINT_DIR / "superpoint.pt", matcher="auto").method
            == "superpoint+superglue+refine+correlate")
    assert (ImageMatcher(model_path=config.CHECKPOINT_DIR / "superpoint.pt").method       # the default's fallback
            == "sift+ratio+correlate, else superpoint+superglue+refine+correlate")
    assert ImageMatcher(matcher="mnn", correlate=False).method == "superpoint+mnn+refine"


@shipped
def test_matcher_choices_and_bad_settings_are_one_line(tmp_path, capsys):
    """An unknown matcher lists every name taken (the cascades too); the fast mode without a
    SuperGlue checkpoint, --fast against another --matcher, a negative --threads or --resize and
    max_keypoints=0 are each one line naming the fix."""
    with pytest.raises(utils.PipelineError, match=f"choose from {', '.join(matching.matcher_choices())}"):
        ImageMatcher(matcher="Fast")
    shutil.copy(config.CHECKPOINT_DIR / "superpoint.pt", tmp_path / "superpoint.pt")
    with pytest.raises(utils.PipelineError, match="no superglue.*use matcher='mnn'"):
        ImageMatcher(model_path=tmp_path, matcher="fast")
    assert ImageMatcher(model_path=tmp_path, matcher="sift-first", correlate=False).method == \
        "sift+ratio, else superpoint+mnn+refine"
    with pytest.raises(utils.PipelineError, match="resize=-5"):
        ImageMatcher(resize=-5)
    with pytest.raises(utils.PipelineError, match="max_keypoints=0"):
        ImageMatcher(max_keypoints=0)
    with pytest.raises(utils.PipelineError, match="max_keypoints=1.5"):
        ImageMatcher(max_keypoints=1.5)
    with pytest.raises(utils.PipelineError, match="threads '2'"):
        ImageMatcher(threads="2")
    for argv in (["--threads", "-1"], ["--resize", "-5"]):
        assert inference.main([*argv, "--output", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, (argv, err)
    # --fast is --matcher fast: with any --matcher (the default's value given too) argparse refuses it
    for value in ("sift-first", "auto"):
        with pytest.raises(SystemExit) as exit_:
            inference.main(["--fast", "--matcher", value, "--output", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1 and "not allowed with" in err, err
    # the benchmark's --sources choose validation places only, and only those it has
    for argv in (["--split", "test", "--sources", "oscd"], ["--sources", "ombria,bogus"], ["--max-keypoints", "0"]):
        assert evaluate.main([*argv, "--methods", "sift", "--output", str(tmp_path / "e.json")]) == 2
        assert argv[-2] in capsys.readouterr().err


@shipped
def test_the_checkpoints_match_threshold_holds_unless_overridden(tmp_path):
    shutil.copy(config.CHECKPOINT_DIR / "superpoint.pt", tmp_path / "superpoint.pt")
    ckpt = torch.load(config.CHECKPOINT_DIR / "superglue.pt", weights_only=True)
    ckpt["config"]["match_threshold"] = 0.35
    torch.save(ckpt, tmp_path / "superglue.pt")
    assert ImageMatcher(model_path=tmp_path, matcher="auto").pipeline.matcher.model.config.match_threshold == 0.35
    default = ImageMatcher(model_path=tmp_path, match_threshold=0.5).pipeline      # the cascade's learned path
    assert default.fallback.matcher.model.config.match_threshold == 0.5


@shipped
def test_an_unreadable_gallery_file_is_listed_and_the_ranking_goes_on(sample, tmp_path, capsys):
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    winter = rgb(sample[1])
    Image.fromarray(winter[:256, :256]).save(gallery / "a_partner.png")
    Image.fromarray(winter[256:, 256:]).save(gallery / "b_other.png")
    (gallery / "c_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    Image.fromarray(rgb(sample[0])[:256, :256]).save(tmp_path / "query.png")
    assert inference.main(["--query", str(tmp_path / "query.png"), "--gallery", str(gallery),
                           "--output", str(tmp_path / "out")]) == 0
    ranking = json.loads((tmp_path / "out" / "ranking.json").read_text())["ranking"]
    assert [r["candidate"].split("/")[-1] for r in ranking] == ["a_partner.png", "b_other.png", "c_broken.png"]
    assert ranking[0]["verified"] and ranking[2]["error"] and "c_broken.png: cannot read image" in ranking[2]["reason"]
    assert "error: " in capsys.readouterr().out


@shipped
def test_large_input_is_read_small_with_progress(sample, tmp_path, capsys):
    """A 3000² picture matched at 512²: no full-size float copy (peak memory below 3× the 8-bit
    picture: decoding takes 2×, a float copy 4× more), a progress bar, and coordinates in the
    picture's own frame."""
    big = cv2.resize(rgb(sample[0]), (3000, 3000), interpolation=cv2.INTER_CUBIC)
    Image.fromarray(big).save(tmp_path / "big.png", compress_level=1)
    m = ImageMatcher(device="cpu", resize=512)
    small = rgb(sample[1])
    m.features(small)
    capsys.readouterr()
    tracemalloc.start()
    try:
        r = m.match_images(tmp_path / "big.png", small)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * big.nbytes          # decoding holds it twice; one float32 grey copy alone is 1.3×
    assert "match" in capsys.readouterr().err
    assert r.verified and r.image_size0 == (3000, 3000) and r.keypoints0[:, 0].max() > 2500
    s = 3000 / 512                       # image 0 is image 1's date at 3000/512 times the size
    H_true = geometry.translation(-0.5, -0.5) @ np.diag([1 / s, 1 / s, 1]) @ geometry.translation(0.5, 0.5)
    assert geometry.corner_error(r.homography, H_true, (3000, 3000)) < 3.0


def test_features_cache_is_bounded(monkeypatch):
    m = ImageMatcher.__new__(ImageMatcher)
    m.cache_size, m._cache, m.bands = 2, OrderedDict(), None
    m.pipeline = matching.MatchingPipeline(matching.SuperPointExtractor(sp.SuperPoint(
        config.SuperPointConfig(channels=(4, 4, 8, 8), head_dim=8, descriptor_dim=8))), matching.MutualNearestNeighbours())
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (32, 32), dtype=np.uint8) for _ in range(3)]
    for image in images:
        m.features(image)
    assert len(m._cache) == 2
    assert m._key(images[0]) not in m._cache and m._key(images[2]) in m._cache


@shipped
def test_figure_says_what_it_draws(sample):
    matcher = ImageMatcher(device="cpu", matcher="auto")          # the learned path: many outliers to draw
    r = matcher.match_images(sample[0], sample[1])
    fig = matcher.visualize_matches(sample[0], sample[1], r, max_lines=50)
    text = "\n".join(t.get_text() for t in fig.texts)
    n_in, n_out = int(r.inliers.sum()), int((~r.inliers).sum())
    flat = text.replace("\n", " ")
    assert f"Drawn: 38 of {n_in} (most confident) inliers" in flat and f"12 of {n_out} (most confident) outliers" in flat
    assert all(len(line) <= 150 for line in text.splitlines()) and len(text.splitlines()) >= 2
    assert any(ax.get_ylabel() == "match confidence (inliers)" for ax in fig.axes)
    colours = [line.get_color() for line in fig.axes[0].lines]
    assert len(colours) == 50 and "red" in colours         # outliers drawn, not hidden


@shipped
def test_threads_are_set_deliberately():
    """torch's OpenMP threads wait passively (not spinning on a core another process needs) when
    the project is imported first, unless the user chose otherwise; threads can be set per matcher."""
    import os
    import subprocess
    import sys

    code = "import inference, torch, os; print(os.environ['OMP_WAIT_POLICY'], torch.get_num_threads())"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    root = str(config.ROOT)
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.split()[0] == "PASSIVE"
    out = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"}, cwd=root,
                         capture_output=True, text=True, check=True)
    assert out.stdout.split()[0] == "ACTIVE"
    before = torch.get_num_threads()
    try:
        assert utils.set_threads(1) == 1 and torch.get_num_threads() == 1
        ImageMatcher(device="cpu", threads=2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    # a count set before torch is loaded (a pair's --threads: sift-first loads torch on first need)
    # holds when the learned path loads it, in the process and in a window's thread (pinned to 1)
    code = ("import sys, threading; from s2coreg import utils; from s2coreg.models.checkpoints import resolve_device; "
            "utils.set_threads(1); assert 'torch' not in sys.modules; resolve_device('cpu'); import torch; "
            "print(torch.get_num_threads()); utils.set_threads(2); "
            "t = threading.Thread(target=lambda: (utils.pin_thread(1), print(torch.get_num_threads()))); "
            "t.start(); t.join(); print(torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "1", "2"]


def test_correlation_recovers_a_known_sub_pixel_shift_across_gain_and_offset():
    """Image 1 is image 0 shifted by (0.3, -0.6) px with another gain and offset; matches that are
    a pixel off (as a coarse match is) come back to the truth; the identity is their homography."""
    import cv2

    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur(rng.random((200, 200)).astype(np.float32), (0, 0), 2.0)
    shift = np.array([0.3, -0.6])
    moved = cv2.warpAffine(base, np.float32([[1, 0, shift[0]], [0, 1, shift[1]]]), (200, 200),
                           flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    t0 = imaging.local_contrast(base * 1000 + 50)
    t1 = imaging.local_contrast(moved * 700 + 300)
    assert abs(int(np.median(t0)) - 128) <= 3 and abs(int(np.median(t1)) - 128) <= 3      # gain and offset gone
    f0, f1 = {"texture": t0}, {"texture": t1}
    pts0 = rng.uniform(30, 170, (40, 2))
    start = pts0 + shift + rng.uniform(-1, 1, (40, 2))            # a pixel off
    out, ok = matching.correlate_matches(f0, f1, pts0, start, np.eye(3))
    assert ok.all()
    error = np.linalg.norm(out - (pts0 + shift), axis=1)
    assert error.max() < 0.1 and np.median(error) < 0.06
    # a point that would move further than max_shift from the homography's prediction keeps its position
    off = np.array([[1, 0, 2.5], [0, 1, 0], [0, 0, 1]])
    out, ok = matching.correlate_matches(f0, f1, pts0, start, off, max_shift=1.0)
    assert (~ok).sum() > 20 and np.array_equal(out[~ok], start[~ok].astype(np.float32))
    assert (np.linalg.norm(out[ok] - (pts0[ok] + [2.5, 0]), axis=1) < 1.0).all()


def test_dense_translation_is_exact_through_inverted_contrast_changes_and_nodata():
    """``imaging.dense_translation``: a textured image against itself moved by a known sub-pixel
    shift (band-limited), with its contrast inverted and halved, an offset, noise, a changed
    quarter (new content: what a flood does) and a nodata corner on each: the shift within
    0.02 px (the noise's share) from a start 0.8 px off, the gain's sign found; moving the content by δ moves the
    estimate by δ (0.002 px); a flat image gives None, not a number."""
    import cv2

    rng = np.random.default_rng(3)
    a = cv2.GaussianBlur(rng.normal(0, 1, (240, 240)), (0, 0), 2.0) * 100 + 128
    truth = np.array([0.37, -1.21])
    b = -0.5 * imaging.fourier_shift(a, *truth) + 30 + rng.normal(0, 2, a.shape)
    b[150:, 150:] = cv2.GaussianBlur(rng.normal(0, 1, (90, 90)), (0, 0), 2.0) * 60     # changed content
    valid_a, valid_b = np.ones(a.shape, bool), np.ones(a.shape, bool)
    valid_a[:40, :60] = False
    valid_b[200:, :50] = False
    fit = imaging.dense_translation(a, b, valid_a, valid_b, start=truth + [0.6, -0.55])
    assert fit is not None and fit.converged and fit.gain < 0 and fit.correlation < -0.3
    assert np.hypot(*(fit.shift - truth)) < 0.02 and (fit.se < 0.01).all()
    delta = np.array([-0.43, 0.71])
    moved = imaging.dense_translation(a, imaging.fourier_shift(b, *delta), valid_a, valid_b, start=truth)
    assert np.hypot(*((moved.shift - fit.shift) - delta)) < 0.01
    assert imaging.dense_translation(np.full((64, 64), 7.0), np.full((64, 64), 9.0)) is None


def test_an_array_in_rasterios_band_order_is_named_as_such():
    """A (bands, rows, cols) array — as rasterio reads it — gets one line saying so and how to
    turn it, not a '318-band image' or a 'smaller than one cell' message."""
    with pytest.raises(utils.PipelineError, match=r"looks like \(bands, rows, cols\).*np.moveaxis"):
        matching.select_bands(np.zeros((3, 317, 318), np.uint16), None, "array")
    assert matching.select_bands(np.zeros((317, 318, 3), np.uint8), None, "array").shape == (317, 318, 3)


class _Path:
    """A stand-in matching path: ``match_features`` gives a fixed verified (or not) result."""

    refine = correlate = False
    ransac_threshold, min_inliers = 3.0, 15

    def __init__(self, name: str, homography, inliers: int):
        self.name, self.homography, self.inliers = name, homography, inliers
        self.extractor = self

    def match_features(self, f0, f1):
        verified = self.homography is not None
        return {"verified": verified, "homography": self.homography, "num_inliers": self.inliers,
                "reason": None if verified else "too few inliers"}

    def verify(self, r):
        return r

    def extract(self, image, valid=None, name="image", size=None, normalized=False):
        return {"image_size": np.array([100, 100])}


@pytest.mark.parametrize("sift_inliers, learned_dx, path", [
    (16, 0.0, "learned"),        # few SIFT inliers, 40 px from the learned path's fit: the learned answer
    (16, 39.0, "sift"),          # few SIFT inliers that the learned path confirms (within 5 px): SIFT's, precise
    (60, 0.0, "sift"),           # many SIFT inliers: accepted without the check
])
def test_sift_first_checks_a_few_inlier_sift_fit_against_the_learned_path(sift_inliers, learned_dx, path):
    """sift-first's wrong answers on validation were SIFT fits of 15-22 inliers (39 px, and 459 px
    on a Landsat-like view): below ``sift_first_confirm_inliers`` SIFT's homography is kept only
    where the learned path agrees with it (``sift_first_confirm_px``) or does not verify."""
    from s2coreg.matching.pipeline import CascadePipeline

    off = np.array([[1, 0, 40.0], [0, 1, 0], [0, 0, 1]])
    learned = np.array([[1, 0, learned_dx], [0, 1, 0], [0, 0, 1]])
    cascade = CascadePipeline("sift-first", _Path("sift", off, sift_inliers), _Path("learned", learned, 80),
                              ("sift", "learned"), 15, shared=False)
    cascade.confirm_below = config.MatchingConfig.sift_first_confirm_inliers
    f = cascade.extract(None)
    r = cascade.match_features(f, f)
    assert r["cascade_path"] == path
    if path == "learned":
        assert "40 px from the learned path's" in r["method"]
