"""Train SuperGlue from scratch on SuperPoint keypoints of real cross-date Sentinel-2 pairs.

    python train_superglue.py --data ../shared/data --minutes 60

Each step draws cross-date pairs with a random homography and photometric changes
(``dataset.TrainingPairs``, the same pairs as SuperPoint's training), extracts keypoints
with the shipped SuperPoint (frozen), and derives the ground-truth assignment from the
known homography (``geometry.ground_truth_matches``): mutual nearest within 3 px → a match,
nearest beyond 5 px → the dustbin, in between ignored. The loss is the negative
log-likelihood of that assignment under the network's log assignment matrix, dustbins
included. Validation, checkpoints, ``--resume`` and budgets as in ``train_superpoint.py``.
"""
from __future__ import annotations

import s2coreg.config as config  # noqa: I001  first: OpenMP's waiting policy is set there, before torch loads

from pathlib import Path

import numpy as np
import torch

from s2coreg.config import SuperGlueConfig, SuperGlueTrainConfig
from s2coreg.training.dataset import TrainingPairs, load_scenes
from s2coreg.matching.pipeline import SuperPointExtractor
from s2coreg.models.superglue import SuperGlue, pad_batch
from s2coreg.models.superpoint import SuperPoint
from s2coreg.training.loop import (data_fingerprint, fit, output_path, run_training, select_val_samples, stop_after,
                      train_config_from_args, training_parser)
from s2coreg.matching.geometry import ground_truth_matches


def assignment_loss(log_assignment: torch.Tensor, gt0: torch.Tensor, gt1: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of the ground-truth assignment, matches and dustbins balanced.

    The mean over true matches and the mean over unmatched keypoints (their dustbin entries)
    are averaged with equal weight, as glue-factory does: otherwise the ~90 % of keypoints
    without a partner teach the network to send everything to the dustbin.

    Args:
        log_assignment: (B, N0+1, N1+1), the last row / column being the dustbins.
        gt0: (B, N0) index of the match in image 1, -1 unmatched (dustbin), -2 ignored / padding.
        gt1: (B, N1) likewise for image 1.
    """
    b, n0 = log_assignment.shape[0], gt0.shape[1]
    rows = torch.arange(n0, device=gt0.device)[None].expand(b, n0)
    batch = torch.arange(b, device=gt0.device)[:, None].expand(b, n0)
    matched = gt0 >= 0
    pos = log_assignment[batch[matched], rows[matched], gt0[matched]]
    neg = torch.cat([log_assignment[:, :-1, -1][gt0 == -1], log_assignment[:, -1, :-1][gt1 == -1]])
    parts = [-t.mean() for t in (pos, neg) if len(t)]
    return sum(parts) / len(parts) if parts else log_assignment.sum() * 0


class GlueBatches:
    """Batches of SuperPoint features with ground truth, a pure function of the step."""

    def __init__(self, dataset: TrainingPairs, superpoint: SuperPoint, cfg: SuperGlueTrainConfig):
        self.dataset, self.cfg = dataset, cfg
        self.extractor = SuperPointExtractor(superpoint, cfg.max_keypoints)

    def features(self, image: np.ndarray, valid: np.ndarray) -> dict:
        """The one extraction path, on a crop that is already network input (stretched, then
        changed photometrically by the augmentation: no second stretch)."""
        return self.extractor.extract(image, valid, normalized=True)

    def __call__(self, step: int) -> dict:
        cfg = self.cfg
        feats0, feats1, gts0, gts1 = [], [], [], []
        for k in range(cfg.batch_size):
            _, pair = self.dataset.pair(step * cfg.batch_size + k)
            f0 = self.features(pair["image0"], pair["valid0"] & pair["visible0"])
            f1 = self.features(pair["image1"], pair["valid1"] & pair["visible1"])
            g0, g1 = ground_truth_matches(f0["keypoints"], f1["keypoints"], pair["H_0to1"],
                                          cfg.positive_threshold, cfg.negative_threshold)
            feats0.append(f0), feats1.append(f1), gts0.append(g0), gts1.append(g1)
        batch = pad_batch(feats0, feats1)
        for name, gts in (("gt0", gts0), ("gt1", gts1)):
            n = max(len(g) for g in gts)
            batch[name] = torch.tensor(np.stack([np.pad(g, (0, n - len(g)), constant_values=-2) for g in gts]))
        return batch


def training_step(model: SuperGlue, batch: dict) -> dict[str, torch.Tensor]:
    out = model(batch)
    loss = assignment_loss(out["log_assignment"], batch["gt0"], batch["gt1"])
    return {"loss": loss, "positives": (batch["gt0"] >= 0).sum(1).float().mean()}


def validate(superpoint: SuperPoint, superglue: SuperGlue, samples: list[dict]) -> dict:
    """The benchmark's metrics of SuperPoint + this SuperGlue on fixed held-out samples."""
    from s2coreg.training.evaluate import build_method, validation_metrics

    cfg = config.EvalConfig()
    method = build_method("superpoint+superglue", cfg, superpoint=superpoint, superglue=superglue)
    return validation_metrics(method, samples, cfg)


def train(model_cfg: SuperGlueConfig, cfg: SuperGlueTrainConfig, data: Path, superpoint_path: Path, output: Path,
          run_dir: Path, resume: bool = False, seed: int = config.SEED, val_crop: int = 256,
          repeat_batch: bool = False, command: str = "", progress: bool = True, init: Path | None = None,
          stop_after: float = float("inf")) -> dict:
    """Train and return the training record; ``init`` continues from that checkpoint's weights
    and config (fine-tuning, e.g. on larger crops), with a fresh optimiser."""
    torch.manual_seed(seed)
    superpoint = SuperPoint.from_checkpoint(superpoint_path)
    if superpoint.config.descriptor_dim != model_cfg.descriptor_dim:
        model_cfg = config.replace(model_cfg, descriptor_dim=superpoint.config.descriptor_dim)
    scenes = load_scenes(data, "train")
    batches = GlueBatches(TrainingPairs(scenes, cfg, cell=superpoint.config.cell, seed=seed), superpoint, cfg)
    val_samples = select_val_samples(data, val_crop, cfg.val_pairs, seed)
    if init is not None:
        model = SuperGlue.from_checkpoint(init).train()
        origin = {"checkpoint": str(init), "steps": model.training_record.get("steps"),
                  "seconds": model.training_record.get("seconds"), "command": model.training_record.get("command"),
                  "training": model.training_record}     # the whole chain (checkpoints.training_chain)
    else:
        model, origin = SuperGlue(model_cfg), None
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    record = {"command": command, "steps": 0, "seconds": 0.0, "history": [], "best": None,
              "loss_names": ["loss", "positives"], "train_config": config.as_dict(cfg), "data": str(data),
              "seed": seed, "superpoint": str(superpoint_path), "train_scenes": len(scenes), "data_fingerprint": data_fingerprint(scenes),
              "val_pairs": len(val_samples), "parameters": sum(p.numel() for p in model.parameters()),
              "initialised_from": origin}
    fixed = batches(0) if repeat_batch else None
    return fit(model, optimizer, cfg, (lambda s: fixed) if repeat_batch else batches, training_step,
               lambda m: validate(superpoint, m, val_samples), output, run_dir, record, resume,
               "train SuperGlue", progress, stop_after=stop_after)


def main(argv=None) -> int:
    tcfg = SuperGlueTrainConfig()
    parser = training_parser(__doc__, tcfg, "superglue")
    parser.add_argument("--superpoint", type=Path, default=config.CHECKPOINT_DIR / "superpoint.pt",
                        help="frozen SuperPoint checkpoint giving the keypoints")
    parser.add_argument("--arch", choices=["slim", "paper"], default="slim",
                        help="slim: 3 self/cross pairs, 20 Sinkhorn iterations; paper: 9 pairs, 100 iterations")
    parser.add_argument("--max-keypoints", type=int, default=tcfg.max_keypoints, help="per training image")
    parser.add_argument("--init", type=Path, default=None,
                        help="fine-tune: start from this SuperGlue checkpoint's weights and config")
    parser.add_argument("--val-crop", type=int, default=256, help="side of the validation crops, px")
    args = parser.parse_args(argv)
    mcfg = config.SUPERGLUE_PAPER if args.arch == "paper" else SuperGlueConfig()
    tcfg = config.replace(train_config_from_args(tcfg, args), max_keypoints=args.max_keypoints)
    if args.smoke:
        mcfg = config.replace(mcfg, keypoint_encoder=(16, 32), layers=1)
        tcfg = config.replace(tcfg, crop=96, batch_size=2, max_keypoints=64, max_steps=args.max_steps or 12,
                              val_every=10 ** 9, val_pairs=2, lr=1e-3)
    output = output_path(args)
    return run_training(lambda command: train(mcfg, tcfg, args.data, args.superpoint, output, args.run_dir,
                                              args.resume, args.seed, val_crop=128 if args.smoke else args.val_crop,
                                              init=args.init, stop_after=stop_after(args),
                                              repeat_batch=args.smoke, command=command), argv, output)
