"""SuperGlue network: Sinkhorn, masks, checkpoints, matching script; ground-truth assignment."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import s2coreg.config as config
import s2coreg.matching.geometry as geometry
import s2coreg.io.imaging as imaging
import s2coreg.utils as utils
from s2coreg.matching.stages import match_main as main
from s2coreg.models.superglue import (MASKED, MultiHeadAttention, SuperGlue, _logsumexp, extract_matches,
                                    log_optimal_transport, pad_batch)

SLIM = config.SuperGlueConfig(descriptor_dim=32, keypoint_encoder=(16, 32), layers=2, heads=4)


def test_sinkhorn_marginals_and_permutation():
    torch.manual_seed(0)
    perm = torch.randperm(6)
    scores = torch.full((1, 6, 6), -5.0)
    scores[0, torch.arange(6), perm] = 5.0
    la = log_optimal_transport(scores, torch.tensor(0.0), iters=200)
    p = la.exp()[0]
    # real rows and columns carry mass 1 each, the dustbins N and M
    np.testing.assert_allclose(p.sum(1).numpy(), [1] * 6 + [6], atol=1e-3)
    np.testing.assert_allclose(p.sum(0).numpy(), [1] * 6 + [6], atol=1e-3)
    out = extract_matches(la, threshold=0.01)
    assert torch.equal(out["matches0"][0], perm)
    assert torch.equal(out["matches1"][0][perm], torch.arange(6))


def test_sinkhorn_unmatched_go_to_dustbin():
    scores = torch.full((1, 3, 2), -5.0)
    scores[0, 0, 1] = scores[0, 2, 0] = 5.0
    out = extract_matches(log_optimal_transport(scores, torch.tensor(0.0), iters=100), threshold=0.2)
    assert out["matches0"][0].tolist() == [1, -1, 0]


def test_logsumexp_matches_torch_on_spread_and_masked_scores():
    torch.manual_seed(0)
    x = torch.randn(2, 40, 30) * 80            # differences of hundreds of nats, as trained scores have
    x[0, :, 25:] = MASKED                      # padded columns
    for dim in (1, 2):
        torch.testing.assert_close(_logsumexp(x, dim), torch.logsumexp(x, dim), atol=1e-4, rtol=1e-6)


def test_attention_equals_explicit_softmax_with_padding():
    torch.manual_seed(0)
    attn = MultiHeadAttention(heads=4, dim=32).eval()
    q, kv = torch.randn(2, 32, 7), torch.randn(2, 32, 9)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 5:] = False
    with torch.no_grad():
        out = attn(q, kv, kv, mask)
        # reference: the SuperGlue paper's explicit formulation, head h = channels d * heads + h
        qq, kk, vv = (p(x).view(2, 8, 4, -1) for p, x in zip(attn.proj, (q, kv, kv)))
        logits = torch.einsum("bdhn,bdhm->bhnm", qq, kk) / 8 ** 0.5
        prob = logits.masked_fill(~mask[:, None, None], float("-inf")).softmax(-1)
        ref = attn.merge(torch.einsum("bhnm,bdhm->bdhn", prob, vv).reshape(2, 32, -1))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def random_features(n, dim, seed):
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(n, dim)).astype(np.float32)
    return {"keypoints": rng.uniform(0, 200, (n, 2)).astype(np.float32), "scores": rng.random(n).astype(np.float32),
            "descriptors": d / np.linalg.norm(d, axis=1, keepdims=True), "image_size": np.array([200, 160])}


def test_masked_batch_equals_pairs_one_by_one():
    torch.manual_seed(0)
    model = SuperGlue(SLIM).eval()
    f = [random_features(n, 32, s) for s, n in enumerate([12, 7, 5, 9])]
    with torch.no_grad():
        batch = model(pad_batch([f[0], f[2]], [f[1], f[3]]))
        for b, (a, c) in enumerate([(0, 1), (2, 3)]):
            single = model(pad_batch([f[a]], [f[c]]))
            n0, n1 = len(f[a]["keypoints"]), len(f[c]["keypoints"])
            torch.testing.assert_close(batch["log_assignment"][b, :n0, :n1], single["log_assignment"][0, :n0, :n1],
                                       atol=1e-4, rtol=1e-4)
            for sl in ((-1, slice(0, n1)), (slice(0, n0), -1)):   # dustbin row and column
                torch.testing.assert_close(batch["log_assignment"][b][sl], single["log_assignment"][0][sl],
                                           atol=1e-4, rtol=1e-4)
            assert torch.equal(batch["matches0"][b, :n0], single["matches0"][0])
            assert (batch["matches0"][b, n0:] == -1).all()


def test_no_keypoints_on_one_side():
    model = SuperGlue(SLIM).eval()
    empty = {"keypoints": np.zeros((0, 2), np.float32), "scores": np.zeros(0, np.float32),
             "descriptors": np.zeros((0, 32), np.float32), "image_size": np.array([64, 64])}
    with torch.no_grad():
        out = model(pad_batch([random_features(5, 32, 0)], [empty]))
    assert out["matches0"].shape == (1, 5) and (out["matches0"] == -1).all()


def test_checkpoint_round_trip_and_mismatch(tmp_path):
    model = SuperGlue(SLIM).eval()
    torch.save(model.checkpoint({"steps": 1}), tmp_path / "sg.pt")
    loaded = SuperGlue.from_checkpoint(tmp_path / "sg.pt")
    assert loaded.config == model.config
    data = pad_batch([random_features(6, 32, 1)], [random_features(8, 32, 2)])
    with torch.no_grad():
        torch.testing.assert_close(model(data)["log_assignment"], loaded(data)["log_assignment"])
    ckpt = model.checkpoint()
    ckpt["config"]["layers"] = 3
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(utils.PipelineError, match="do not fit the SuperGlue config"):
        SuperGlue.from_checkpoint(tmp_path / "bad.pt")


def test_matching_script(tmp_path, capsys):
    feats = tmp_path / "features"
    feats.mkdir()
    for i, n in enumerate([10, 0, 7]):
        f = random_features(n, 32, i)
        np.savez(feats / f"img{i}.npz", **f)
    torch.save(SuperGlue(SLIM).checkpoint(), tmp_path / "sg.pt")
    assert main(["--features", str(feats), "--all-pairs", "--output", str(tmp_path / "m"),
                 "--checkpoint", str(tmp_path / "sg.pt")]) == 0
    out = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert out == ["img0__img1.npz", "img0__img2.npz", "img1__img2.npz"]
    r = np.load(tmp_path / "m" / "img0__img1.npz")
    assert r["matches0"].shape == (10,) and (r["matches0"] == -1).all()
    assert r["homography"].shape == (3, 3) and not bool(r["verified"]) and "reason" in r
    # features with fine patches (as SuperPoint.py writes them): each matched keypoint of image 1
    # moves to the cell of its window that holds image 0's fine descriptor, placed at a known offset
    rng = np.random.default_rng(3)
    f = random_features(10, 32, 0)
    offsets = rng.integers(-3, 4, (10, 2))
    patches = np.zeros((10, 49, 8), np.float16)
    patches[:, :, 1] = 1                                                  # background: unlike image 0
    patches[np.arange(10), (offsets[:, 1] + 3) * 7 + offsets[:, 0] + 3] = np.eye(8, dtype=np.float16)[0]
    fine_a = {"fine_descriptors": np.tile(np.eye(8, dtype=np.float16)[0], (10, 1)),
              "fine_patches": patches, "fine_temperature": np.float32(0.1)}
    np.savez(feats / "a.npz", **f, **fine_a)
    np.savez(feats / "b.npz", **f, **fine_a)
    (tmp_path / "ab.txt").write_text("a b  # the same image twice\n")
    assert main(["--features", str(feats), "--pairs", str(tmp_path / "ab.txt"), "--output", str(tmp_path / "r"),
                 "--checkpoint", str(tmp_path / "sg.pt")]) == 0
    r = np.load(tmp_path / "r" / "a__b.npz")
    assert (r["matches0"] == np.arange(10)).all() and r["refined1"].all()
    cell_centre = 2 * np.round((f["keypoints"] - 0.5) / 2) + 0.5          # the fine cell (stride 2) of each keypoint
    np.testing.assert_allclose(r["refined_keypoints1"], cell_centre + 2 * offsets, atol=0.01)
    np.testing.assert_array_equal(r["keypoints1"], f["keypoints"])          # as detected, as in memory
    assert main(["--features", str(feats), "--pairs", str(tmp_path / "ab.txt"), "--output", str(tmp_path / "r2"),
                 "--checkpoint", str(tmp_path / "sg.pt"), "--no-refine"]) == 0
    assert np.array_equal(np.load(tmp_path / "r2" / "a__b.npz")["refined_keypoints1"], f["keypoints"])
    np.savez(feats / "c.npz", **f, **{**fine_a, "fine_patches": rng.normal(size=(10, 49, 4)).astype(np.float16)})
    (tmp_path / "ac.txt").write_text("a c\n")
    assert main(["--features", str(feats), "--pairs", str(tmp_path / "ac.txt"), "--output", str(tmp_path / "r3"),
                 "--checkpoint", str(tmp_path / "sg.pt")]) == 1
    assert "same SuperPoint checkpoint" in capsys.readouterr().err and not (tmp_path / "r3" / "a__c.npz").exists()
    (tmp_path / "pairs.txt").write_text("img0.npz img9.npz\n")
    assert main(["--features", str(feats), "--pairs", str(tmp_path / "pairs.txt"), "--output",
                 str(tmp_path / "m"), "--checkpoint", str(tmp_path / "sg.pt")]) == 1
    assert "img9.npz: no features" in capsys.readouterr().err


def test_ground_truth_assignment():
    H = geometry.translation(10, 0)
    k0 = np.array([[0, 0], [50, 50], [100, 100], [150, 150]], np.float32)
    k1 = np.array([[11, 0],        # 1 px from the warp of k0[0]: positive
                   [64, 50],       # 4 px from the warp of k0[1]: ignored (between 3 and 5)
                   [300, 300]],    # far from everything: dustbin
                  np.float32)
    m0, m1 = geometry.ground_truth_matches(k0, k1, H)
    assert m0.tolist() == [0, -2, -1, -1]
    assert m1.tolist() == [0, -2, -1]


def test_assignment_loss_on_known_case():
    from s2coreg.training.superglue import assignment_loss

    la = torch.log(torch.tensor([[[0.5, 0.1, 0.4], [0.2, 0.2, 0.6], [0.3, 0.7, 0.0]]]))
    gt0 = torch.tensor([[0, -1]])        # keypoint 0 ↔ 0, keypoint 1 → dustbin
    gt1 = torch.tensor([[0, -2]])        # keypoint 1 of image 1 ignored
    expected = -(np.log(0.5) + np.log(0.6)) / 2      # one match, one dustbin: equal weights
    assert float(assignment_loss(la, gt0, gt1)) == pytest.approx(expected, rel=1e-5)
    gt0 = torch.tensor([[-1, -1]])       # no match: the dustbin terms alone
    expected = -(np.log(0.4) + np.log(0.6)) / 2
    assert float(assignment_loss(la, gt0, gt1)) == pytest.approx(expected, rel=1e-5)


def test_smoke_training_loss_decreases(tmp_path):
    import s2coreg.models.superpoint as sp
    import s2coreg.training.superglue as train_superglue
    import s2coreg.samples as fx

    (tmp_path / "oscd").mkdir()
    for name in ("pisa", "pisa_copy"):
        (tmp_path / "oscd" / name).symlink_to(fx.SAMPLE.resolve())
    torch.manual_seed(0)
    spc = config.replace(config.SuperPointConfig(), detection_threshold=0.0)   # random weights: keep all peaks
    torch.save(sp.SuperPoint(spc).checkpoint(), tmp_path / "sp.pt")
    assert train_superglue.main(["--smoke", "--data", str(tmp_path), "--superpoint", str(tmp_path / "sp.pt"),
                                 "--output", str(tmp_path / "sg.pt"), "--run-dir", str(tmp_path / "run")]) == 0
    record = torch.load(tmp_path / "sg.pt", weights_only=True)["training"]
    losses = [entry[1] for entry in record["losses"]]
    assert len(losses) == 12 and losses[-1] < 0.8 * losses[0]
    assert record["history"][-1]["step"] == 12
    # fine-tuning starts from the given weights: its first loss is the first run's last, not the first
    assert train_superglue.main(["--smoke", "--data", str(tmp_path), "--superpoint", str(tmp_path / "sp.pt"),
                                 "--init", str(tmp_path / "sg.pt"), "--max-steps", "2", "--output",
                                 str(tmp_path / "sg2.pt"), "--run-dir", str(tmp_path / "run2")]) == 0
    record2 = torch.load(tmp_path / "sg2.pt", weights_only=True)["training"]
    assert record2["initialised_from"]["steps"] == 12
    assert record2["losses"][0][1] < 0.9 * losses[0]


def matched_warped_pisa(method_name: str, seed: int):
    """The real summer/winter Pisa pair, winter warped by a known medium H, matched by a shipped
    benchmark method: (H, features 0, features 1, matches0, image 1's refined keypoints)."""
    import cv2

    from s2coreg.training.evaluate import build_method
    from s2coreg.samples import sample_gray

    a = imaging.percentile_stretch(sample_gray("imgs_1"))
    H = geometry.sample_homography(np.random.default_rng(seed), (512, 512), "medium")
    b = cv2.warpPerspective(imaging.percentile_stretch(sample_gray("imgs_2")), H, (512, 512))
    valid1 = cv2.warpPerspective(np.ones((512, 512), np.uint8), H, (512, 512)) > 0
    method = build_method(method_name, config.EvalConfig())
    f0, f1 = method.extract(a, np.ones((512, 512), bool)), method.extract(b, valid1)
    return (H, f0, f1, *method.match(f0, f1))


@pytest.mark.shipped
def test_shipped_superglue_matches_real_crops_consistently():
    """Shipped SuperPoint + SuperGlue on the real summer/winter Pisa pair, winter warped by a known H:
    most matches agree with the known transform, and more than mutual nearest neighbours find."""
    H, f0, f1, m, _ = matched_warped_pisa("superpoint+superglue", 5)
    ok = m > -1
    err = np.linalg.norm(geometry.warp_points(f0["keypoints"][ok], H) - f1["keypoints"][m[ok]], axis=1)
    assert ok.sum() > 100 and (err < 3).mean() > 0.5
    mnn = geometry.mutual_nearest_neighbours(f0["descriptors"], f1["descriptors"])
    ok_mnn = mnn > -1
    err_mnn = np.linalg.norm(geometry.warp_points(f0["keypoints"][ok_mnn], H) - f1["keypoints"][mnn[ok_mnn]], axis=1)
    assert (err < 3).sum() > (err_mnn < 3).sum() and (err < 3).mean() > (err_mnn < 3).mean()
    assert SuperGlue.from_checkpoint(config.CHECKPOINT_DIR / "superglue.pt").training_record["steps"] > 0


@pytest.mark.shipped
def test_shipped_fine_head_refines_real_matches():
    """The shipped fine head on the real summer/winter Pisa pair, winter warped by a known H:
    refined matches are closer to the truth than the detected keypoints they replace."""
    H, f0, f1, m, refined1 = matched_warped_pisa("superpoint+superglue+refine", 7)
    ok = m > -1
    truth = geometry.warp_points(f0["keypoints"][ok], H)
    before = np.linalg.norm(truth - f1["keypoints"][m[ok]], axis=1)
    after = np.linalg.norm(truth - refined1[m[ok]], axis=1)
    near = before < 8                      # matches at the right place, give or take the detector
    assert near.sum() > 100
    assert np.median(after[near]) < 0.7 * np.median(before[near])
    assert (after < 3).sum() > 1.2 * (before < 3).sum()


def test_inference_sinkhorn_equals_the_training_one():
    """Without gradients the Sinkhorn runs in scaling form (one matrix-vector product a
    half-iteration); it gives the log-domain form's assignment, padding and dustbins included."""
    import s2coreg.models.superglue as S

    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 300, 200, generator=generator) * 30            # a trained SuperGlue's range
    mask0 = torch.ones(2, 300, dtype=torch.bool)
    mask1 = torch.ones(2, 200, dtype=torch.bool)
    mask0[1, 150:], mask1[1, 70:] = False, False
    alpha = torch.tensor(2.0)
    with torch.enable_grad():
        log_domain = S.log_optimal_transport(scores.requires_grad_(True), alpha, 20, mask0, mask1).detach()
    with torch.no_grad():
        scaling = S.log_optimal_transport(scores, alpha, 20, mask0, mask1)
    real = torch.cat([mask0, torch.ones(2, 1, dtype=torch.bool)], 1)[:, :, None] & \
        torch.cat([mask1, torch.ones(2, 1, dtype=torch.bool)], 1)[:, None, :]
    assert torch.allclose(scaling[real], log_domain[real], atol=1e-3)
    assert (scaling[~real] < -1e8).all()
    a, b = (S.extract_matches(x, 0.2, mask0, mask1) for x in (log_domain, scaling))
    # float32 rounding may flip a near-tie of the mutual check, nothing more
    assert (a["matches0"] > -1).sum() > 50 and (a["matches0"] != b["matches0"]).sum() <= 2
    assert (scaling.exp() - log_domain.exp()).abs().max() < 2e-3


def test_a_checkpoint_tells_its_training_chain():
    """From a fine-tuning's record back to the run from scratch, with wall and CPU time."""
    from s2coreg.models.checkpoints import training_chain

    scratch = {"command": "python train_superglue.py --minutes 50", "steps": 3000, "seconds": 3000.0}
    tuned = {"command": "python train_superglue.py --init a.pt", "resumed_with": ["... --resume"], "steps": 500,
             "seconds": 600.0, "cpu_seconds": 700.0,
             "initialised_from": {"checkpoint": "a.pt", "command": scratch["command"], "training": scratch}}
    chain = training_chain(tuned)
    assert [r["command"] for r in chain] == [scratch["command"], tuned["command"]]
    assert chain[0]["cpu_estimated"] and chain[0]["cpu_seconds"] == 6000.0        # wall × the 2 cores
    assert not chain[1]["cpu_estimated"] and chain[1]["cpu_seconds"] == 700.0
    assert chain[1]["resumed_with"] == ["... --resume"]
