"""Train SuperPoint from scratch on real cross-date Sentinel-2 pairs (CPU-sized recipe).

    python train_superpoint.py --data ../shared/data --minutes 60

Recipe (one stage, no synthetic-shapes pre-training): each step draws pairs of two dates
of one place (identity ground truth), views the second through a random homography and
changes both photometrically (``dataset.TrainingPairs``).
    * Detector: cross-entropy of the 65-way cell softmax against keypoints that are corners
      on *both* dates (``dataset.repeatable_corners``), in both images.
    * Descriptor: dual-softmax (InfoNCE both ways) over points seen in both images; a point's
      positive is its true correspondent, other points closer than ``negative_radius`` px
      are not used as negatives.
Validation every ``--val-every`` steps runs the benchmark of ``evaluate.py`` (mutual NN,
USAC_MAGSAC, AUC of the corner error) on held-out places; the best checkpoint by AUC@5px
is written to ``<run-dir>/best.pt`` (``--output`` elsewhere; a shipped checkpoint in
``model_checkpoints/`` is replaced only when ``--output`` names it). ``--resume`` continues
from ``<run-dir>/last.pt`` with the same step count and the same data.

Second stage, the fine head (sub-pixel match refinement):

    python train_superpoint.py --data ../shared/data --fine-from model_checkpoints/superpoint.pt \
        --minutes 20 --run-dir data/runs/fine

adds a small head on the stride-2 features and trains only it, everything else frozen (so
keypoints, descriptors and the SuperGlue trained on them stay valid): for points of image 0,
cross-entropy of their true position in a ±6 px window of image 1 placed off the truth by up
to ``fine_max_shift`` px, as a coarse match would be (``fine_loss``). Validation refines the
shipped SuperGlue's matches; the best checkpoint is chosen by AUC@3px.
"""
from __future__ import annotations

import s2coreg.config as config  # noqa: I001  first: OpenMP's waiting policy is set there, before torch loads

from pathlib import Path

import torch
import torch.nn.functional as F

from s2coreg.config import SuperPointConfig, SuperPointTrainConfig
from s2coreg.training.dataset import TrainingPairs, load_scenes
from s2coreg.models.superpoint import SuperPoint, fine_patches, sample_descriptors, snap_to_fine_grid
from s2coreg.training.loop import (data_fingerprint, fit, output_path, run_training, select_val_samples, stop_after,
                      train_config_from_args, training_parser)
from s2coreg.utils import PipelineError


def detector_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of (B, cell²+1, Hc, Wc) logits against (B, Hc, Wc) classes (-1 ignored)."""
    return F.cross_entropy(logits, labels, ignore_index=-1)


def descriptor_loss(desc0: torch.Tensor, desc1: torch.Tensor, points1: torch.Tensor, mask: torch.Tensor,
                    temperature: float, negative_radius: float) -> torch.Tensor:
    """Dual-softmax loss of corresponding descriptors.

    Args:
        desc0, desc1: (B, P, D) unit descriptors; ``desc0[b, k]`` corresponds to ``desc1[b, k]``.
        points1: (B, P, 2) positions in image 1, to exclude near neighbours as negatives.
        mask: (B, P) which points take part.
    """
    sim = desc0 @ desc1.transpose(1, 2) / temperature                       # (B, P, P)
    near = torch.cdist(points1, points1) < negative_radius
    eye = torch.eye(sim.shape[1], dtype=torch.bool, device=sim.device)[None]
    pair_ok = mask[:, :, None] & mask[:, None, :] & (~near | eye)
    sim = sim.masked_fill(~pair_ok, -1e4)
    diag = torch.diagonal(sim.log_softmax(2), dim1=1, dim2=2) + torch.diagonal(sim.log_softmax(1), dim1=1, dim2=2)
    return -(diag * mask).sum() / (2 * mask.sum().clamp_min(1))


def fine_loss(fine0: torch.Tensor, fine1: torch.Tensor, points0: torch.Tensor, points1: torch.Tensor,
              mask: torch.Tensor, radius: int, temperature: float, max_shift: float,
              generator: torch.Generator | None = None, stride: int = SuperPointConfig.fine_stride) -> torch.Tensor:
    """Cross-entropy of the true position of each point of image 0 in a window of image 1.

    The window (``fine_patches``) is centred on the true position shifted by up to
    ``max_shift`` px, as a coarse match would be; the target is the true position spread
    bilinearly over its four nearest window cells, so the softmax learns sub-cell position.

    Args:
        fine0, fine1: (B, C, H/stride, W/stride) unit fine maps.
        points0, points1: (B, P, 2) corresponding points; ``mask`` (B, P) which take part.
    """
    side = 2 * radius + 1
    shift = (torch.rand(points1.shape, generator=generator) * 2 - 1).to(points1) * max_shift
    centre = snap_to_fine_grid(points1 + shift, stride)
    d0 = sample_descriptors(points0, fine0, stride)                               # (B, P, C)
    d1 = fine_patches(fine1, points1 + shift, radius, stride)                     # (B, P, side², C)
    logp = (torch.einsum("bpwc,bpc->bpw", d1, d0) / temperature).log_softmax(-1)
    u = (points1 - centre) / stride + radius                                      # truth in window cells
    lo = u.floor().clamp(0, side - 2)
    frac = (u - lo).clamp(0, 1)
    target = torch.zeros_like(logp)
    for dx in (0, 1):
        for dy in (0, 1):
            wx = frac[..., 0] if dx else 1 - frac[..., 0]
            wy = frac[..., 1] if dy else 1 - frac[..., 1]
            idx = ((lo[..., 1] + dy) * side + lo[..., 0] + dx).long()
            target.scatter_add_(2, idx[..., None], (wx * wy)[..., None])
    loss = -(target * logp).sum(-1)
    return (loss * mask).sum() / mask.sum().clamp_min(1)


class FineHeadStage(torch.nn.Module):
    """A trained SuperPoint with everything frozen (eval mode, no gradients) but its fine head.

    Descriptors and keypoints stay exactly those the shipped SuperGlue was trained on.
    """

    def __init__(self, superpoint: SuperPoint):
        super().__init__()
        self.sp = superpoint
        superpoint.requires_grad_(False)
        superpoint.fine.requires_grad_(True)

    def train(self, mode: bool = True):
        super().train(False)
        self.sp.fine.train(mode)
        self.training = mode
        return self

    def checkpoint(self, training: dict | None = None) -> dict:
        return self.sp.checkpoint(training)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            x = self.sp.pool(self.sp.blocks[0](images))
            x = self.sp.blocks[1](x)
        return F.normalize(self.sp.fine(x), dim=1)


def fine_training_step(model: FineHeadStage, batch: dict, cfg: SuperPointTrainConfig) -> dict[str, torch.Tensor]:
    b = batch["image0"].shape[0]
    fine = model(torch.cat([batch["image0"], batch["image1"]]))
    spc = model.sp.config
    loss = fine_loss(fine[:b], fine[b:], batch["points0"], batch["points1"], batch["point_mask"].float(),
                     spc.fine_radius, spc.fine_temperature, cfg.fine_max_shift,
                     torch.Generator().manual_seed(int(batch["step"])))
    return {"loss": loss}


def training_step(model: SuperPoint, batch: dict, cfg: SuperPointTrainConfig) -> dict[str, torch.Tensor]:
    images = torch.cat([batch["image0"], batch["image1"]])
    out = model(images)
    b = batch["image0"].shape[0]
    labels = torch.cat([batch["labels0"], batch["labels1"]])
    det = detector_loss(out["logits"], labels)
    dense = out["descriptors_dense"]
    cell = model.config.cell
    d0 = sample_descriptors(batch["points0"], dense[:b], cell)
    d1 = sample_descriptors(batch["points1"], dense[b:], cell)
    desc = descriptor_loss(d0, d1, batch["points1"], batch["point_mask"], cfg.desc_temperature, cfg.negative_radius)
    return {"loss": det + cfg.desc_weight * desc, "detector": det, "descriptor": desc}


def validate(model: SuperPoint, samples: list[dict]) -> dict:
    """The benchmark's metrics (mutual NN + MAGSAC) on fixed held-out samples."""
    from s2coreg.training.evaluate import build_method, validation_metrics

    cfg = config.EvalConfig()
    return validation_metrics(build_method("superpoint+mnn", cfg, superpoint=model), samples, cfg)


def collate(items: list[dict]) -> dict:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def with_fine_head(path: Path, fine_dim: int, fine_hidden: int, fine_radius: int) -> SuperPoint:
    """The SuperPoint of checkpoint ``path`` with a new, untrained fine head."""
    trained = SuperPoint.from_checkpoint(path)
    model = SuperPoint(config.replace(trained.config, fine_dim=fine_dim, fine_hidden=fine_hidden,
                                      fine_radius=fine_radius))
    missing, unexpected = model.load_state_dict(trained.state_dict(), strict=False)
    if unexpected or any(not k.startswith("fine.") for k in missing):
        raise PipelineError(f"{path}: its weights do not fit a SuperPoint with a fine head; pass the checkpoint "
                            "of a SuperPoint trained by this script")
    model.training_record = trained.training_record
    return model


def validate_fine(superpoint: SuperPoint, superglue, samples: list[dict]) -> dict:
    """The benchmark's metrics with refined matches (``superglue`` if given, else mutual NN)."""
    from s2coreg.training.evaluate import build_method, validation_metrics

    cfg = config.EvalConfig()
    name = "superpoint+superglue+refine" if superglue is not None else "superpoint+mnn+refine"
    return validation_metrics(build_method(name, cfg, superpoint=superpoint, superglue=superglue), samples, cfg)


def train(model_cfg: SuperPointConfig, cfg: SuperPointTrainConfig, data: Path, output: Path, run_dir: Path,
          resume: bool = False, seed: int = config.SEED, val_crop: int = 256, repeat_batch: bool = False,
          command: str = "", progress: bool = True, fine_from: Path | None = None,
          superglue: Path | None = None, stop_after: float = float("inf")) -> dict:
    """Train and return the training record. ``repeat_batch`` overfits one batch (smoke test).

    With ``fine_from`` (a trained SuperPoint checkpoint), only a new fine head is trained on
    top of it (``model_cfg.fine_dim`` wide), everything else frozen; validation then refines
    the matches of ``superglue`` (or mutual NN) and the best checkpoint is chosen by AUC@3px.
    """
    torch.manual_seed(seed)
    scenes = load_scenes(data, "train")
    dataset = TrainingPairs(scenes, cfg, cell=model_cfg.cell, seed=seed)
    val_samples = select_val_samples(data, val_crop, cfg.val_pairs, seed)
    record = {"command": command, "steps": 0, "seconds": 0.0, "history": [], "best": None,
              "loss_names": ["loss", "detector", "descriptor"],
              "train_config": config.as_dict(cfg), "data": str(data), "seed": seed,
              "train_scenes": len(scenes), "data_fingerprint": data_fingerprint(scenes), "val_pairs": len(val_samples)}
    if fine_from is not None:
        superpoint = with_fine_head(fine_from, model_cfg.fine_dim, model_cfg.fine_hidden, model_cfg.fine_radius)
        model = FineHeadStage(superpoint)
        record.update(loss_names=["loss"], stage="fine head", base=str(fine_from), base_training=superpoint.training_record)
        params = list(superpoint.fine.parameters())
        matcher = None
        if superglue is not None:   # loaded once, not at every validation
            from s2coreg.models.superglue import SuperGlue

            matcher = SuperGlue.from_checkpoint(superglue)

        def step_fn(m, b):
            return fine_training_step(m, b, cfg)

        def validate_fn(m):
            return validate_fine(m.sp, matcher, val_samples)
        select_by = "auc@3px"
    else:
        model = SuperPoint(model_cfg)
        params = list(model.parameters())

        def step_fn(m, b):
            return training_step(m, b, cfg)

        def validate_fn(m):
            return validate(m, val_samples)
        select_by = "auc@5px"
    record["parameters"] = sum(p.numel() for p in params)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    fixed = collate([dataset[k] for k in range(cfg.batch_size)]) if repeat_batch else None

    def next_batch(step):
        batch = fixed if repeat_batch else collate([dataset[step * cfg.batch_size + k] for k in range(cfg.batch_size)])
        return {**batch, "step": torch.tensor(0 if repeat_batch else step)}

    return fit(model, optimizer, cfg, next_batch, step_fn, validate_fn, output, run_dir, record, resume,
               "train SuperPoint" + (" fine head" if fine_from else ""), progress, select_by, stop_after)


def main(argv=None) -> int:
    tcfg = SuperPointTrainConfig()
    parser = training_parser(__doc__, tcfg, "superpoint")
    parser.add_argument("--arch", choices=["slim", "paper"], default="slim",
                        help="slim: 16-32-64-64, 128-d; paper: 64-64-128-128, 256-d")
    parser.add_argument("--fine-from", type=Path, default=None,
                        help="train only a fine head (sub-pixel match refinement) on top of this trained "
                             "SuperPoint checkpoint, everything else frozen")
    parser.add_argument("--fine-dim", type=int, default=16, help="fine descriptor size (with --fine-from)")
    parser.add_argument("--fine-hidden", type=int, default=SuperPointConfig.fine_hidden,
                        help="hidden width of the fine head (with --fine-from)")
    parser.add_argument("--fine-radius", type=int, default=SuperPointConfig.fine_radius,
                        help="search window of the refinement: ±radius cells of 2 px (with --fine-from)")
    parser.add_argument("--fine-max-shift", type=float, default=tcfg.fine_max_shift,
                        help="px: training windows are placed off the truth by up to this")
    parser.add_argument("--superglue", type=Path, default=config.CHECKPOINT_DIR / "superglue.pt",
                        help="matcher whose refined matches validate the fine head (mutual NN if missing)")
    args = parser.parse_args(argv)
    mcfg = config.SUPERPOINT_PAPER if args.arch == "paper" else SuperPointConfig()
    if args.fine_from:
        mcfg = config.replace(mcfg, fine_dim=args.fine_dim, fine_hidden=args.fine_hidden, fine_radius=args.fine_radius)
    tcfg = config.replace(train_config_from_args(tcfg, args), fine_max_shift=args.fine_max_shift)
    if args.smoke:
        mcfg = config.replace(mcfg, channels=(8, 8, 16, 16), head_dim=16, descriptor_dim=16)
        tcfg = config.replace(tcfg, crop=64, batch_size=2, max_steps=args.max_steps or 12, val_every=10 ** 9,
                              val_pairs=2, num_labels=40, num_desc_points=64)
    output = output_path(args)
    return run_training(lambda command: train(mcfg, tcfg, args.data, output, args.run_dir, args.resume,
                                              args.seed, val_crop=128 if args.smoke else 256,
                                              repeat_batch=args.smoke, command=command, fine_from=args.fine_from,
                                              superglue=None if args.smoke or not args.superglue.exists()
                                              else args.superglue, stop_after=stop_after(args)),
                        argv, output)
