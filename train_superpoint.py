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
is written to ``--output``. ``--resume`` continues from ``<run-dir>/last.pt`` with the
same step count and the same data.

Second stage, the fine head (sub-pixel match refinement):

    python train_superpoint.py --data ../shared/data --fine-from model_checkpoints/superpoint.pt \
        --minutes 20 --output model_checkpoints/superpoint.pt

adds a small head on the stride-2 features and trains only it, everything else frozen (so
keypoints, descriptors and the SuperGlue trained on them stay valid): for points of image 0,
cross-entropy of their true position in a ±6 px window of image 1 placed off the truth by up
to ``fine_max_shift`` px, as a coarse match would be (``fine_loss``). Validation refines the
shipped SuperGlue's matches; the best checkpoint is chosen by AUC@3px.
"""
from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import config
from config import SuperPointConfig, SuperPointTrainConfig
from dataset import TrainingPairs, evaluation_pairs, load_scenes, make_eval_sample
from SuperPoint import SuperPoint, fine_patches, sample_descriptors, snap_to_fine_grid
from utils import PipelineError, atomic_path


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
    from evaluate import SuperPointMethod, validation_metrics

    return validation_metrics(SuperPointMethod(None, config.EvalConfig().max_keypoints, model=model), samples)


def lr_factor(progress: float, decay_from: float = 0.7, final: float = 0.1) -> float:
    """Constant learning rate, then a linear decay to ``final`` over the last 30% of the budget
    (steps or minutes, whichever runs out first)."""
    if progress <= decay_from:
        return 1.0
    return 1.0 - (1.0 - final) * min((progress - decay_from) / (1.0 - decay_from), 1.0)


def collate(items: list[dict]) -> dict:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def save_state(path: Path, state: dict) -> None:
    """``torch.save`` to a temporary file, renamed when complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def select_val_samples(data: Path, crop: int, count: int, seed: int) -> list[dict]:
    """A fixed, evenly spread subset of the benchmark's held-out pairs (medium warps)."""
    samples = [make_eval_sample(p, crop, "medium", seed) for p in evaluation_pairs(data)]
    if count and len(samples) > count:
        keep = np.linspace(0, len(samples) - 1, count).round().astype(int)
        samples = [samples[k] for k in keep]
    return samples


def fit(model, optimizer, cfg, next_batch, step_fn, validate_fn, output: Path, run_dir: Path, record: dict,
        resume: bool = False, desc: str = "train", progress: bool = True, select_by: str = "auc@5px") -> dict:
    """The training loop shared by SuperPoint and SuperGlue.

    ``next_batch(step)`` gives the batch of a step (a pure function of the step, so a resumed
    run sees the same data), ``step_fn(model, batch)`` the dict of losses (``loss`` first),
    ``validate_fn(model)`` a dict of metrics with ``select_by``. Budgets: ``cfg.max_steps`` and
    ``cfg.minutes`` (counting resumed time too); learning rate by ``lr_factor``. The best
    model by that validation metric goes to ``output``; ``<run_dir>/last.pt`` holds the state
    to resume from. Every file is written atomically.
    """
    from tqdm import tqdm

    last = run_dir / "last.pt"
    if resume:
        if not last.exists():
            raise PipelineError(f"{last}: nothing to resume; start without --resume")
        state = torch.load(last, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        state["record"].setdefault("resumed_with", []).append(record["command"])
        record = state["record"]
        torch.set_rng_state(state["torch_rng"])

    def save_last():
        save_state(last, {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "record": record,
                          "torch_rng": torch.get_rng_state()})

    model.train()
    record["selected_by"] = select_by
    start_step, start_seconds = record["steps"], record["seconds"]
    t_start = last_save = time.time()
    budget = cfg.minutes * 60 if cfg.minutes > 0 else math.inf
    bar = tqdm(total=cfg.max_steps, initial=start_step, desc=desc, unit="step", disable=not progress)
    step = start_step
    log_every = 1 if cfg.max_steps <= 100 else 50
    while step < cfg.max_steps and record["seconds"] < budget:
        batch = next_batch(step)
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * lr_factor(max(step / cfg.max_steps, record["seconds"] / budget))
        losses = step_fn(model, batch)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()
        step += 1
        record["steps"] = step
        record["seconds"] = start_seconds + time.time() - t_start
        entry = {k: round(v.item(), 4) for k, v in losses.items()}
        bar.set_postfix(entry)
        bar.update(1)
        if step % log_every == 0:
            record.setdefault("losses", []).append([step, *entry.values()])
        is_last = step >= cfg.max_steps or record["seconds"] >= budget
        if step % cfg.val_every == 0 or is_last:
            model.eval()
            with torch.no_grad():
                metrics = validate_fn(model)
            model.train()
            metrics.update(step=step, seconds=round(record["seconds"], 1))
            record["history"].append(metrics)
            tqdm.write(f"step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k != "step"))
            if record["best"] is None or metrics[select_by] >= record["best"][select_by]:
                record["best"] = metrics
                save_state(output, model.checkpoint(training=record))
        if time.time() - last_save > cfg.save_every_minutes * 60 or is_last:
            save_last()
            last_save = time.time()
    bar.close()
    save_last()
    if output.exists():   # the best weights, with the whole run's record (not only up to their step)
        best = torch.load(output, map_location="cpu", weights_only=True)
        save_state(output, {**best, "training": record})
    return record


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
    from evaluate import SuperGlueMethod, SuperPointMethod, validation_metrics

    k = config.EvalConfig().max_keypoints
    if superglue is not None:
        method = SuperGlueMethod(None, None, k, superpoint=superpoint, superglue=superglue, refine=True)
    else:
        method = SuperPointMethod(None, k, model=superpoint, refine=True)
    return validation_metrics(method, samples)


def train(model_cfg: SuperPointConfig, cfg: SuperPointTrainConfig, data: Path, output: Path, run_dir: Path,
          resume: bool = False, seed: int = config.SEED, val_crop: int = 256, repeat_batch: bool = False,
          command: str = "", progress: bool = True, fine_from: Path | None = None,
          superglue: Path | None = None) -> dict:
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
              "train_scenes": len(scenes), "val_pairs": len(val_samples)}
    if fine_from is not None:
        superpoint = with_fine_head(fine_from, model_cfg.fine_dim, model_cfg.fine_hidden, model_cfg.fine_radius)
        model = FineHeadStage(superpoint)
        record.update(loss_names=["loss"], stage="fine head", base=str(fine_from), base_training=superpoint.training_record)
        params = list(superpoint.fine.parameters())
        matcher = None
        if superglue is not None:   # loaded once, not at every validation
            from SuperGlue_architecture import SuperGlue

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
               "train SuperPoint" + (" fine head" if fine_from else ""), progress, select_by)


def training_parser(doc: str, tcfg, name: str) -> argparse.ArgumentParser:
    """The flags every training script shares (defaults from its train config)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", type=Path, default=config.SHARED_DATA_DIR,
                        help="training data: folder with oscd/, ombria/, ukraine_T36UYA/ or preprocessed outputs")
    parser.add_argument("--output", type=Path, default=config.CHECKPOINT_DIR / f"{name}.pt",
                        help="best checkpoint (by validation AUC@5px)")
    parser.add_argument("--run-dir", type=Path, default=config.DATA_DIR / "runs" / name,
                        help="resumable state (last.pt)")
    parser.add_argument("--resume", action="store_true", help="continue from <run-dir>/last.pt")
    parser.add_argument("--max-steps", type=int, default=None, help=f"default {tcfg.max_steps} (--smoke: 12)")
    parser.add_argument("--minutes", type=float, default=tcfg.minutes,
                        help="wall-clock budget, resumed time included; 0 = none")
    parser.add_argument("--batch-size", type=int, default=tcfg.batch_size)
    parser.add_argument("--crop", type=int, default=tcfg.crop, help="training crop side, px")
    parser.add_argument("--lr", type=float, default=tcfg.lr)
    parser.add_argument("--val-every", type=int, default=tcfg.val_every, help="steps between validations")
    parser.add_argument("--val-pairs", type=int, default=tcfg.val_pairs, help="held-out pairs for validation")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads, 0 = default")
    parser.add_argument("--seed", type=int, default=config.SEED)
    parser.add_argument("--smoke", action="store_true", help="tiny run that overfits one small batch (tests)")
    return parser


def train_config_from_args(tcfg, args):
    """``tcfg`` with the shared flags applied."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return config.replace(tcfg, max_steps=args.max_steps, minutes=args.minutes, batch_size=args.batch_size,
                          crop=args.crop, lr=args.lr, val_every=args.val_every, val_pairs=args.val_pairs)


def run_training(train_fn, argv, output: Path) -> int:
    """Call ``train_fn(command)``; report the result, or a bad input as one line (exit 2)."""
    command = "python " + " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *(argv or sys.argv[1:])])
    try:
        record = train_fn(command)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    best, key = record["best"] or {}, record.get("selected_by", "auc@5px")
    print(f"done: {record['steps']} steps in {record['seconds'] / 60:.1f} min; best {key.replace('auc', 'AUC')} "
          f"{best.get(key, float('nan')):.3f} at step {best.get('step')} → {output}")
    return 0


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
    return run_training(lambda command: train(mcfg, tcfg, args.data, args.output, args.run_dir, args.resume,
                                              args.seed, val_crop=128 if args.smoke else 256,
                                              repeat_batch=args.smoke, command=command, fine_from=args.fine_from,
                                              superglue=None if args.smoke or not args.superglue.exists()
                                              else args.superglue),
                        argv, args.output)


if __name__ == "__main__":
    sys.exit(main())
