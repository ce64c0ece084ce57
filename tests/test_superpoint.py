"""SuperPoint network, extraction, dataset geometry, benchmark metrics and training."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import s2coreg.config as config
import s2coreg.training.dataset as dataset
import s2coreg.training.evaluate as evaluate
import s2coreg.matching.stages as stages
import s2coreg.models.superpoint as sp
import s2coreg.training.superpoint as train_superpoint
import s2coreg.training.loop as training
import s2coreg.matching.geometry as geometry
import s2coreg.io.imaging as imaging
import s2coreg.utils as utils
import s2coreg.samples as fx
from s2coreg.samples import sample_gray

SLIM = config.SuperPointConfig()
SHIPPED = sp.default_checkpoint()


# ----------------------------------------------------------------------------- network
@pytest.mark.parametrize("cfg", [SLIM, config.SUPERPOINT_PAPER], ids=["slim", "paper"])
def test_dense_output_shapes(cfg):
    model = sp.SuperPoint(cfg).eval()
    out = model(torch.rand(2, cfg.in_channels, 64, 96))
    assert out["logits"].shape == (2, 65, 8, 12)
    assert out["descriptors_dense"].shape == (2, cfg.descriptor_dim, 8, 12)
    assert torch.allclose(out["descriptors_dense"].norm(dim=1), torch.ones(2, 8, 12), atol=1e-5)
    assert sp.SuperPoint.heatmap(out["logits"]).shape == (2, 64, 96)


def test_parameter_counts():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert 1.2e6 < count(sp.SuperPoint(config.SUPERPOINT_PAPER)) < 1.4e6   # the paper's 1.3 M
    assert count(sp.SuperPoint(SLIM)) < 0.5e6


def test_multispectral_input():
    model = sp.SuperPoint(config.replace(SLIM, in_channels=4)).eval()
    feats = model.extract(torch.rand(1, 4, 64, 64))
    assert feats[0]["descriptors"].shape[1] == SLIM.descriptor_dim
    with pytest.raises(utils.PipelineError, match="takes"):
        model.extract(torch.rand(1, 1, 64, 64))


def test_nms_keeps_local_maxima_only():
    scores = torch.zeros(1, 20, 20)
    scores[0, 5, 5], scores[0, 5, 7], scores[0, 15, 15] = 0.9, 0.5, 0.3
    kept = sp.simple_nms(scores, radius=2)
    assert kept[0, 5, 5] == 0.9 and kept[0, 15, 15] == 0.3
    assert kept[0, 5, 7] == 0  # within 2 px of a stronger peak
    assert (kept > 0).sum() == 2


def test_extract_on_any_size_and_border():
    model = sp.SuperPoint(config.replace(SLIM, detection_threshold=0.0, max_keypoints=50)).eval()
    feats = model.extract(torch.rand(1, 1, 70, 83))[0]
    k = feats["keypoints"]
    assert len(k) == 50 and feats["descriptors"].shape == (50, SLIM.descriptor_dim)
    b = SLIM.remove_borders
    assert (k[:, 0] >= b - 1).all() and (k[:, 0] <= 83 - b).all()
    assert (k[:, 1] >= b - 1).all() and (k[:, 1] <= 70 - b).all()
    assert torch.all(feats["scores"][:-1] >= feats["scores"][1:])


def test_descriptor_sampling_at_known_positions():
    cell = 8
    dense = torch.zeros(1, 2, 4, 5)
    dense[0, 0] = torch.arange(5, dtype=torch.float32)            # channel 0 = cell column
    dense[0, 1] = torch.arange(4, dtype=torch.float32)[:, None]   # channel 1 = cell row
    # the centre of cell (row 2, col 3) is pixel (3 * 8 + 3.5, 2 * 8 + 3.5)
    kpts = torch.tensor([[[27.5, 19.5], [31.5, 19.5]]])
    d = sp.sample_descriptors(kpts, dense, cell)[0]
    expected = torch.tensor([[3.0, 2.0], [3.5, 2.0]])
    np.testing.assert_allclose(d.numpy(), (expected / expected.norm(dim=1, keepdim=True)).numpy(), atol=1e-5)


def test_subpixel_refinement_moves_towards_heat():
    heat = torch.zeros(10, 10)
    heat[5, 5], heat[5, 6] = 0.6, 0.3
    refined = sp.SuperPoint._refine(heat, torch.tensor([[5.0, 5.0]]))
    assert refined[0, 0] == pytest.approx(5 + 1 / 3, abs=1e-5) and refined[0, 1] == pytest.approx(5.0)


def test_quadratic_subpixel_fit_finds_a_gaussian_peaks_centre():
    ys, xs = torch.meshgrid(torch.arange(12.0), torch.arange(12.0), indexing="ij")
    heat = torch.exp(-((xs - 5.3) ** 2 + (ys - 6.8) ** 2) / (2 * 1.2 ** 2))      # peak pixel (5, 7)
    fitted = sp.SuperPoint._fit_quadratic(heat, torch.tensor([[5.0, 7.0]]))
    np.testing.assert_allclose(fitted.numpy(), [[5.3, 6.8]], atol=1e-4)
    soft = sp.SuperPoint._refine(heat, torch.tensor([[5.0, 7.0]]))            # the expectation: pulled to the pixel
    assert abs(float(soft[0, 0]) - 5.3) > 0.05
    flat = sp.SuperPoint._fit_quadratic(torch.ones(12, 12), torch.tensor([[5.0, 7.0]]))
    assert flat.tolist() == [[5.0, 7.0]]


def test_subpixel_fit_is_chosen_by_the_config():
    model = sp.SuperPoint(config.replace(SLIM, detection_threshold=0.0, max_keypoints=30)).eval()
    image = torch.rand(1, 1, 64, 64)
    found = {fit: model.extract(image, cfg=config.replace(model.config, subpixel_fit=fit))[0]["keypoints"]
             for fit in ("softargmax", "quadratic")}
    integer = model.extract(image, cfg=config.replace(model.config, subpixel=False))[0]["keypoints"]
    assert torch.equal(integer, integer.round())
    assert not torch.equal(found["softargmax"], found["quadratic"])
    assert (found["quadratic"] - integer).abs().max() <= 0.5
    with pytest.raises(utils.PipelineError, match="subpixel_fit='cubic'"):
        model.extract(image, cfg=config.replace(model.config, subpixel_fit="cubic"))


# ----------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip(tmp_path):
    model = sp.SuperPoint(config.replace(SLIM, descriptor_dim=64)).eval()
    path = tmp_path / "sp.pt"
    torch.save(model.checkpoint(training={"steps": 3}), path)
    loaded = sp.SuperPoint.from_checkpoint(path)
    assert loaded.config == model.config and loaded.training_record == {"steps": 3}
    x = torch.rand(1, 1, 64, 64)
    assert torch.equal(model(x)["logits"], loaded(x)["logits"])


def test_mismatched_checkpoint_is_a_clear_error(tmp_path):
    ckpt = sp.SuperPoint(SLIM).checkpoint()
    ckpt["config"]["descriptor_dim"] = 256          # config says 256, weights are 128
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(utils.PipelineError, match="do not fit the SuperPoint config"):
        sp.SuperPoint.from_checkpoint(tmp_path / "bad.pt")
    ckpt["kind"] = "SuperGlue"
    torch.save(ckpt, tmp_path / "glue.pt")
    with pytest.raises(utils.PipelineError, match="holds a SuperGlue model, not SuperPoint"):
        sp.SuperPoint.from_checkpoint(tmp_path / "glue.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(utils.PipelineError, match="not a readable PyTorch checkpoint"):
        sp.SuperPoint.from_checkpoint(tmp_path / "junk.pt")


@pytest.mark.shipped
def test_shipped_checkpoint_loads_and_is_small():
    assert SHIPPED.stat().st_size < 50e6
    model = sp.SuperPoint.from_checkpoint(SHIPPED)
    assert model.training_record["steps"] > 0 and "command" in model.training_record


# ----------------------------------------------------------------------------- extraction
@pytest.mark.shipped
def test_extraction_script_on_real_crop(tmp_path):
    from PIL import Image

    img = imaging.to_uint8(imaging.percentile_stretch(sample_gray()))
    Image.fromarray(img).save(tmp_path / "pisa.png")
    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(tmp_path / "blank.png")
    assert stages.extract_main(["--input", str(tmp_path), "--output", str(tmp_path / "f"), "--max-keypoints", "500"]) == 0
    f = np.load(tmp_path / "f" / "pisa.npz")
    k = f["keypoints"]
    assert 100 < len(k) <= 500 and f["descriptors"].shape == (len(k), f["descriptors"].shape[1])
    assert list(f["image_size"]) == [512, 512]
    assert (k >= 0).all() and (k <= 511).all()
    np.testing.assert_allclose(np.linalg.norm(f["descriptors"], axis=1), 1, atol=1e-4)
    blank = np.load(tmp_path / "f" / "blank.npz")
    assert len(blank["keypoints"]) == 0 and blank["descriptors"].shape[0] == 0
    # second run skips what exists
    mtime = (tmp_path / "f" / "pisa.npz").stat().st_mtime_ns
    assert stages.extract_main(["--input", str(tmp_path), "--output", str(tmp_path / "f")]) == 0
    assert (tmp_path / "f" / "pisa.npz").stat().st_mtime_ns == mtime


def test_extraction_script_bad_input(tmp_path, capsys):
    assert stages.extract_main(["--input", str(tmp_path / "nope")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    (tmp_path / "x.png").write_bytes(b"\x89PNG broken")
    assert stages.extract_main(["--input", str(tmp_path), "--output", str(tmp_path / "f")]) == 1
    assert "cannot read image" in capsys.readouterr().err
    assert not (tmp_path / "f" / "x.npz").exists()


@pytest.mark.shipped
def test_features_found_again_across_dates():
    """Shipped model on the real summer/winter pair: matches agree with the identity ground truth."""
    method = evaluate.build_method("superpoint+mnn", config.EvalConfig())
    a, b = (imaging.percentile_stretch(sample_gray(d)) for d in ("imgs_1", "imgs_2"))
    ones = np.ones(a.shape, bool)
    f0, f1 = method.extract(a, ones), method.extract(b, ones)
    m, _ = method.match(f0, f1)
    ok = m > -1
    err = np.linalg.norm(f0["keypoints"][ok] - f1["keypoints"][m[ok]], axis=1)
    assert ok.sum() > 50 and (err < 3).mean() > 0.5


# ----------------------------------------------------------------------------- geometry
def test_homography_sampler_ranges():
    rng = np.random.default_rng(0)
    for name in ("easy", "medium", "hard"):
        d = config.DIFFICULTIES[name]
        for _ in range(20):
            H = geometry.sample_homography(rng, (256, 256), name)
            centre = geometry.warp_points([[127.5, 127.5]], H)[0]
            assert np.all(np.abs(centre - 127.5) <= d.translation * 256 + d.perspective * 256)
            assert np.linalg.det(H[:2, :2]) > 0


def test_warped_pair_ground_truth():
    """A point of image 0 and its warp by H show the same ground in image 1."""
    img = sample_gray()
    scene = dataset.Scene("pisa", "test", [img, img.copy()], [np.ones(img.shape, bool)] * 2)
    H = geometry.sample_homography(np.random.default_rng(1), (256, 256), "medium")
    pair = dataset.warp_pair(scene, 0, 1, 100, 120, (256, 256), H)
    pts = np.random.default_rng(2).uniform(40, 215, size=(200, 2))
    warped = geometry.warp_points(pts, H)
    inside = (warped > 1).all(1) & (warped < 254).all(1)
    import cv2

    v0 = cv2.remap(pair["image0"], *np.float32(pts[inside, None].transpose(2, 0, 1)), cv2.INTER_LINEAR)
    v1 = cv2.remap(pair["image1"], *np.float32(warped[inside, None].transpose(2, 0, 1)), cv2.INTER_LINEAR)
    assert inside.sum() > 100
    assert np.median(np.abs(v0 - v1)) < 0.02 * (img.max() - img.min())


@pytest.mark.parametrize("kind", sorted(dataset.SENSOR_VIEWS))
def test_a_landsat_like_view_keeps_the_geometry_and_loses_the_detail(kind):
    """Another sensor's view (training's --sensor-mix, evaluate.py --sensor) stays on the same
    grid — where a feature was, it still is (phase correlation within 0.1 px) — and has that
    sensor's coarser detail: what a 10 m pixel shows beside its neighbour is smoothed away in
    proportion to the pixel size."""
    import cv2

    img = sample_gray().astype(np.float32)[:256, :256]
    valid = np.ones(img.shape, bool)
    valid[:20, :20] = False
    view, v = dataset.sensor_view(np.random.default_rng(0), img, valid, kind)
    assert view.shape == img.shape and view.dtype == np.float32
    (dx, dy), _ = cv2.phaseCorrelate(img.astype(np.float64), view.astype(np.float64))
    assert np.hypot(dx, dy) < 0.1                 # a half-pixel slip would be 0.5
    assert not v[:20, :20].any() and v[40:, 40:].all()          # the invalid corner stays invalid

    def detail(x):     # high-frequency energy relative to the image's spread
        return np.abs(np.diff(x, axis=1)).mean() / x.std()

    assert detail(view) < (0.8 if kind == "landsat15" else 0.5) * detail(img)
    factor = dataset.SENSOR_VIEWS[kind]
    assert factor in (1.5, 3.0)


def test_the_sensor_mix_changes_only_the_pairs_it_draws():
    """The sensor view draws from a stream of its own: ``sensor_mix=0`` leaves every pair as it
    was (earlier runs' pairs, and a resumed run's), a mix of 1 changes image 1 alone."""
    img = sample_gray()
    scene = dataset.Scene("pisa", "test", [img, img.copy()], [np.ones(img.shape, bool)] * 2)
    cfg = config.replace(config.SuperPointTrainConfig(), crop=96, num_desc_points=64, num_labels=30)
    plain = dataset.TrainingPairs([scene], cfg).pair(3)[1]
    again = dataset.TrainingPairs([scene], config.replace(cfg, sensor_mix=0.0)).pair(3)[1]
    mixed = dataset.TrainingPairs([scene], config.replace(cfg, sensor_mix=1.0)).pair(3)[1]
    assert np.array_equal(plain["image1"], again["image1"])
    assert np.array_equal(plain["image0"], mixed["image0"]) and not np.allclose(plain["image1"], mixed["image1"])


@pytest.mark.parametrize("value", ["1.5", "-1", "half"])
def test_a_sensor_mix_outside_0_to_1_is_refused_in_one_line(value, capsys):
    parser = training.training_parser("doc", config.SuperGlueTrainConfig(), "superglue")
    assert parser.parse_args(["--sensor-mix", "0.3"]).sensor_mix == 0.3
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--sensor-mix", value])
    assert exit_.value.code == 2 and "a share from 0 to 1" in capsys.readouterr().err


def test_keypoint_labels():
    valid = np.ones((16, 16), bool)
    valid[8:, 8:] = False
    labels = dataset.keypoint_labels(np.array([[3, 2], [12, 1], [13, 1]], np.float32), valid, 8)
    assert labels[0, 0] == 2 * 8 + 3          # row 2, col 3 within the cell
    assert labels[0, 1] == 1 * 8 + 4          # the first (strongest) keypoint of the cell wins
    assert labels[1, 0] == 64 and labels[1, 1] == -1


# ----------------------------------------------------------------------------- metrics
def test_auc_perfect_and_shifted_matches():
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 512, size=(300, 2))
    H_gt = geometry.sample_homography(rng, (512, 512), "medium")
    H, inl = geometry.estimate_homography(pts, geometry.warp_points(pts, H_gt))
    err = geometry.corner_error(H, H_gt, (512, 512))
    assert err < 1e-3 and inl.all()
    assert geometry.pose_auc([err] * 10, [1, 3, 5, 10]) == pytest.approx([1, 1, 1, 1], abs=1e-3)
    # every match shifted by 4 px: the homography is off by 4 px at every corner
    H4, _ = geometry.estimate_homography(pts, geometry.warp_points(pts, H_gt) + [4, 0])
    err4 = geometry.corner_error(H4, H_gt, (512, 512))
    assert err4 == pytest.approx(4.0, abs=1e-3)
    auc = geometry.pose_auc([err4] * 1000, [1, 3, 5, 10])
    assert auc == pytest.approx([0.0, 0.0, 0.2, 0.6], abs=2e-3)
    assert geometry.pose_auc([float("inf")] * 3, [5]) == [0.0]


def test_benchmark_scores_sift_on_identity_pairs():
    img = imaging.percentile_stretch(sample_gray())
    valid = np.ones((256, 256), bool)
    sample = {"image0": img[:256, :256], "image1": img[:256, :256], "valid0": valid, "valid1": valid,
              "H_0to1": np.eye(3), "name": "id", "category": "test"}
    cfg = config.EvalConfig()
    rec = evaluate.evaluate_sample(evaluate.OpenCVMethod("sift", 1024, 0.8), sample, cfg)
    assert rec["corner_error"] < 0.5 and rec["precision"] > 0.99 and rec["repeatability"] > 0.99
    assert rec["verified"] == 1 and rec["verified_precision"] > 0.99 and rec["verified_wrong"] == 0
    # the truth says identity but image 1 is turned half a turn: SIFT verifies the turn, which is wrong
    turned = evaluate.evaluate_sample(evaluate.OpenCVMethod("sift", 1024, 0.8),
                                      {**sample, "image1": np.ascontiguousarray(img[:256, :256][::-1, ::-1])}, cfg)
    assert turned["verified"] == 1 and turned["verified_wrong"] == 1 and turned["verified_precision"] < 0.1
    # too few inliers for the pair to count as verified: its matches count as none
    strict = evaluate.evaluate_sample(evaluate.OpenCVMethod("sift", 1024, 0.8), sample,
                                      config.replace(cfg, min_inliers=10 ** 6))
    assert strict["verified"] == 0 and strict["verified_precision"] == 0 and strict["precision"] > 0.99
    out = evaluate.summarise([rec, strict], cfg)
    assert out["auc@5px"] > 0.9 and out["verified"] == 0.5 and out["precision_where_verified"] > 0.99
    assert out["verified_precision"] == pytest.approx(rec["verified_precision"] / 2)


def test_benchmark_runs_each_method_with_its_own_settings():
    """``run_benchmark(configs=...)``: a method named there is scored with its own EvalConfig (the
    ablation's inlier thresholds), the others with the run's."""
    img = imaging.percentile_stretch(sample_gray())
    valid = np.ones((256, 256), bool)
    sample = {"image0": img[:256, :256], "image1": img[:256, :256], "valid0": valid, "valid1": valid,
              "H_0to1": np.eye(3), "name": "id", "category": "test"}
    cfg = config.EvalConfig()
    lenient, strict = evaluate.OpenCVMethod("sift", 1024, 0.8), evaluate.OpenCVMethod("sift", 1024, 0.8)
    strict.name = "sift (strict)"
    out = evaluate.run_benchmark([lenient, strict], [sample], cfg, progress=False,
                                 configs={strict.name: config.replace(cfg, min_inliers=10 ** 6)})
    assert out["sift"]["overall"]["verified"] == 1 and out["sift (strict)"]["overall"]["verified"] == 0


# ----------------------------------------------------------------------------- training
def test_smoke_training_loss_decreases(tmp_path):
    (tmp_path / "oscd").mkdir()
    for name in ("pisa", "pisa_copy"):       # pisa is a validation place; the copy trains
        (tmp_path / "oscd" / name).symlink_to(fx.SAMPLE.resolve())
    assert train_superpoint.main(["--smoke", "--data", str(tmp_path), "--output", str(tmp_path / "sp.pt"),
                                  "--run-dir", str(tmp_path / "run")]) == 0
    record = torch.load(tmp_path / "sp.pt", weights_only=True)["training"]
    losses = [loss for _, loss, _, _ in record["losses"]]
    assert len(losses) == 12 and losses[-1] < 0.8 * losses[0]
    assert record["history"] and "auc@5px" in record["history"][-1]
    # resume continues with the same step count
    assert train_superpoint.main(["--smoke", "--max-steps", "14", "--data", str(tmp_path), "--output",
                                  str(tmp_path / "sp.pt"), "--run-dir", str(tmp_path / "run"), "--resume"]) == 0
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["record"]["steps"] == 14


def test_smoke_fine_head_training_leaves_the_rest_untouched(tmp_path):
    (tmp_path / "oscd").mkdir()
    for name in ("pisa", "pisa_copy"):
        (tmp_path / "oscd" / name).symlink_to(fx.SAMPLE.resolve())
    common = ["--smoke", "--data", str(tmp_path)]
    assert train_superpoint.main(common + ["--output", str(tmp_path / "sp.pt"), "--run-dir", str(tmp_path / "r0")]) == 0
    assert train_superpoint.main(common + ["--fine-from", str(tmp_path / "sp.pt"), "--fine-dim", "8", "--lr", "0.01", "--max-steps",
                                           "20", "--output", str(tmp_path / "fine.pt"),
                                           "--run-dir", str(tmp_path / "r1")]) == 0
    base = sp.SuperPoint.from_checkpoint(tmp_path / "sp.pt")
    fine = sp.SuperPoint.from_checkpoint(tmp_path / "fine.pt")
    assert fine.config.fine_dim == 8 and fine.training_record["stage"] == "fine head"
    losses = [loss for _, loss in fine.training_record["losses"]]
    assert losses[-1] < 0.9 * losses[0]
    for key, value in base.state_dict().items():       # frozen: batch-norm statistics included
        assert torch.equal(value, fine.state_dict()[key]), key
    image = torch.rand(1, 1, 64, 64)
    a, b = base.extract(image)[0], fine.extract(image)[0]
    assert torch.equal(a["keypoints"], b["keypoints"]) and torch.equal(a["descriptors"], b["descriptors"])
    assert b["fine_patches"].shape == (len(b["keypoints"]), 49, 8)
    assert b["fine_descriptors"].shape == (len(b["keypoints"]), 8)


def test_refine_matches_moves_to_the_best_fitting_cell():
    refine_matches = sp.refine_matches
    side, c = 7, 4
    fine0 = torch.eye(c)[:2]                                 # keypoint descriptors e0, e1
    patches1 = torch.zeros(2, side * side, c)
    patches1[:, :, 3] = 1.0                                  # background unlike both
    patches1[0, 2 * side + 5] = torch.eye(c)[1]              # image 1 kp 0: e1 at (+2, -1) cells
    patches1[1, 3 * side + 3] = torch.eye(c)[0]              # image 1 kp 1: e0 at its centre
    kpts1 = torch.tensor([[50.0, 60.0], [10.0, 20.0]])       # windows centred on the cells at 50.5 60.5, 10.5 20.5
    refined, conf = refine_matches(fine0, patches1, kpts1, torch.tensor([1, 0]), temperature=0.05)
    torch.testing.assert_close(refined, torch.tensor([[54.5, 58.5], [10.5, 20.5]]), atol=1e-3, rtol=0)
    assert (conf > 0.9).all()
    refined, conf = refine_matches(fine0, patches1, kpts1, torch.tensor([-1, -1]), temperature=0.05)
    assert torch.equal(refined, kpts1) and (conf == 0).all()


def test_fine_patches_gather_the_cells_around_each_point():
    fine = torch.arange(2 * 6 * 8, dtype=torch.float32).reshape(1, 2, 6, 8)   # (B, C, H/2, W/2)
    patches = sp.fine_patches(fine, torch.tensor([[[6.4, 4.6], [0.0, 0.0]]]), radius=1)
    assert patches.shape == (1, 2, 9, 2)
    # (6.4, 4.6) is nearest to cell (3, 2) (centre 6.5, 4.5): its 3×3 neighbourhood, row-major
    expected = torch.stack([fine[0, :, y, x] for y in (1, 2, 3) for x in (2, 3, 4)])
    torch.testing.assert_close(patches[0, 0], expected)
    assert (patches[0, 1, 0] == 0).all() and torch.equal(patches[0, 1, 4], fine[0, :, 0, 0])   # beyond: zero


def test_fine_loss_prefers_the_true_position():
    fine_patches = sp.fine_patches
    from s2coreg.training.superpoint import fine_loss

    torch.manual_seed(0)
    fine = torch.nn.functional.normalize(torch.randn(1, 8, 32, 32), dim=1)
    pts = torch.tensor([[[20.0, 24.0], [30.0, 36.0]]])
    mask = torch.ones(1, 2)
    same = fine_loss(fine, fine, pts, pts, mask, 3, 0.05, 3.0)
    wrong = fine_loss(fine, fine, pts, pts + 4.0, mask, 3, 0.05, 3.0)
    assert same < 0.5 * wrong
    assert fine_patches(fine, pts, 3).shape == (1, 2, 49, 8)


def test_fit_keeps_best_weights_with_the_whole_record(tmp_path):
    cfg = config.replace(config.SuperPointTrainConfig(), max_steps=6, val_every=2)
    model = sp.SuperPoint(config.SuperPointConfig(channels=(4, 4, 8, 8), head_dim=8, descriptor_dim=8))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scores = iter([0.5, 0.2, 0.1])                      # the first validation is the best

    def step_fn(m, batch):
        return {"loss": m(batch)["descriptors_dense"].sum()}

    snapshots = []

    def validate_fn(m):
        snapshots.append({k: v.clone() for k, v in m.state_dict().items()})
        return {"auc@5px": next(scores)}

    record = {"command": "test", "steps": 0, "seconds": 0.0, "history": [], "best": None}
    training.fit(model, optimizer, cfg, lambda step: torch.rand(1, 1, 16, 16), step_fn, validate_fn,
                         tmp_path / "best.pt", tmp_path / "run", record, progress=False)
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["training"]["steps"] == 6 and len(best["training"]["history"]) == 3
    assert best["training"]["best"]["step"] == 2
    for key, value in snapshots[0].items():              # weights of step 2, not of the last step
        assert torch.equal(best["state_dict"][key], value), key


def test_preprocessed_outputs_are_a_training_source(tmp_path):
    from s2coreg.preprocess import preprocess

    assert not preprocess(fx.SAMPLE, tmp_path, size=256).errors
    (scene,) = dataset.load_scenes(tmp_path, "train")
    assert scene.source == "preprocessed" and scene.dates == ["20150704", "20180211"]
    assert scene.images[0].shape == scene.images[1].shape == (256, 256)
    cfg = config.replace(config.SuperPointTrainConfig(), crop=96, num_desc_points=64, num_labels=30)
    item = dataset.TrainingPairs([scene], cfg)[5]
    again = dataset.TrainingPairs([scene], cfg)[5]
    assert torch.equal(item["image1"], again["image1"])          # deterministic under the seed
    assert item["labels0"].shape == (12, 12) and item["point_mask"].sum() > 10


def test_splits_are_disjoint_by_place():
    """Train, val and test share no place: no scene name, no overlapping footprint of a
    georeferenced place, no pixel of T36UYA's held-out quarter in its training crops."""
    from itertools import combinations

    import cv2

    data = config.SHARED_DATA_DIR
    if not (data / "ombria2021").is_dir():
        pytest.skip("the shared data folder is not beside this clone")
    test = dataset.test_pairs(data)
    assert {p.category for p in test} >= {"ombria2021-flood", "bracciano-summer-winter", "bracciano-across-years",
                                          "sen12ms-winter-summer", "sen12ms-partly-cloudy"}
    splits = {"train": dataset.load_scenes(data, "train"), "val": dataset.load_scenes(data, "val"),
              "test": list({p.scene.name: p.scene for p in test}.values())}
    assert {s.source for s in splits["test"]}.isdisjoint({s.source for s in splits["train"] + splits["val"]})
    assert any(s.name.startswith("ombria_train/") for s in splits["train"])     # OMBRIA's training split trains

    def overlap(a, b):
        return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]

    for (na, a), (nb, b) in combinations(splits.items(), 2):
        assert not {s.name for s in a} & {s.name for s in b}, (na, nb)
        for x in (s for s in a if s.bounds):
            for y in (s for s in b if s.bounds):
                assert not overlap(x.bounds, y.bounds), (x.name, y.name)
    assert sum(s.bounds is not None for s in splits["train"] + splits["val"] + splits["test"]) >= 16
    # T36UYA: a textured patch of the held-out quarter is found nowhere in the training crops
    (held_out,) = [s for s in splits["val"] if s.source == "t36uya"]
    image = held_out.images[held_out.dates.index("20190825")]
    patch = np.ascontiguousarray(image[200:264, 200:264])
    for crop in (s for s in splits["train"] if s.source == "t36uya"):
        score = cv2.matchTemplate(crop.images[crop.dates.index("20190825")], patch, cv2.TM_CCOEFF_NORMED).max()
        assert score < 0.9, crop.name
    assert cv2.matchTemplate(image, patch, cv2.TM_CCOEFF_NORMED).max() > 0.99       # the check can find it

def test_a_stopped_run_resumes_with_the_same_steps_batches_and_weights(tmp_path):
    """A campaign stopped after a sitting and resumed (on another machine: only the run folder
    travels) ends exactly where one uninterrupted run does."""
    from s2coreg.training.loop import fit

    cfg = config.replace(config.SuperPointTrainConfig(), max_steps=8, minutes=0, val_every=4, lr=0.05)
    generator = torch.Generator().manual_seed(0)
    data = [(torch.randn(4, 3, generator=generator), torch.randn(4, 1, generator=generator)) for _ in range(8)]

    def run(run_dir, stop_after=float("inf"), resume=False, seen=None):
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 1)
        model.checkpoint = lambda training=None: {"state_dict": model.state_dict(), "training": training}

        def next_batch(step):
            seen.append(step)
            return data[step]

        def step_fn(m, batch):
            return {"loss": ((m(batch[0]) - batch[1]) ** 2).mean() + 0.01 * torch.randn(())}   # uses torch's rng

        record = {"command": "test", "steps": 0, "seconds": 0.0, "history": [], "best": None,
                  "train_config": config.as_dict(cfg), "data_fingerprint": "x", "train_scenes": 1}
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
        record = fit(model, optimizer, cfg, next_batch, step_fn, lambda m: {"auc@5px": -float(m.bias)},
                     run_dir / "best.pt", run_dir, record, resume, progress=False, stop_after=stop_after)
        return model, record

    straight_steps, first, second = [], [], []
    straight, _ = run(tmp_path / "a", seen=straight_steps)
    _, stopped = run(tmp_path / "b", stop_after=0, seen=first)               # stops after its first step
    assert stopped["stopped"] and stopped["steps"] == 1 and first == [0]
    moved = tmp_path / "elsewhere"                                            # a fresh clone of the run folder
    (tmp_path / "b").rename(moved)
    resumed, record = run(moved, resume=True, seen=second)
    assert second == straight_steps[1:] and record["steps"] == 8 and not record.get("stopped")
    assert torch.equal(resumed.weight, straight.weight) and torch.equal(resumed.bias, straight.bias)
    assert len(record["sittings"]) == 2 and (moved / "log.csv").read_text().count("\n") >= 3
    assert (moved / "curve.png").stat().st_size > 1000
    # resumed with other settings: one clear line, nothing changed
    cfg = config.replace(cfg, lr=0.1, max_steps=9)
    with pytest.raises(utils.PipelineError, match="resumed with other settings.*lr"):
        run(moved, resume=True, seen=[])


@pytest.mark.shipped
def test_shipped_checkpoints_reproduce_the_readme_test_figures_on_a_subset():
    """Every 10th test pair of the README's run (``evaluate.py --split test --reference ...``):
    ``ImageMatcher``'s default (``sift-first``, ``MatchingConfig.matcher``), the learned pipeline
    alone and SIFT give the same corner errors again, within 0.1 px. The pairs' images are shipped
    (``tests/data/test_split/``: the test split's files these pairs read, laid out as in the shared
    data folder), so this runs on any clone."""
    import json

    data = Path(__file__).parent / "data" / "test_split"
    reference = json.loads((Path(__file__).parent / "data" / "test_split_reference.json").read_text())
    cfg = config.replace(config.EvalConfig(), difficulty=reference["difficulty"], crop=reference["crop"],
                         max_keypoints=reference["max_keypoints"])
    pairs = {p.name: p for p in dataset.test_pairs(data)}
    assert {n for m in reference["methods"].values() for n in m} <= set(pairs)
    checked = 0
    for name in ("sift", "superpoint+superglue+refine+correlate", config.MatchingConfig.matcher):
        method = evaluate.build_method(name, cfg)
        for pair_name, expected in reference["methods"][name].items():
            sample = dataset.make_eval_sample(pairs[pair_name], cfg.crop, cfg.difficulty, reference["seed"])
            error = evaluate.evaluate_sample(method, sample, cfg)["corner_error"]
            if expected > 10:          # a failed pair stays failed
                assert error > 10, (name, pair_name, error)
            else:
                assert abs(error - expected) < 0.1, (name, pair_name, error, expected)
            checked += 1
    assert checked >= 39
