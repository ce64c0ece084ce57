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
from SuperPoint import SuperPoint, sample_descriptors
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
        resume: bool = False, desc: str = "train", progress: bool = True) -> dict:
    """The training loop shared by SuperPoint and SuperGlue.

    ``next_batch(step)`` gives the batch of a step (a pure function of the step, so a resumed
    run sees the same data), ``step_fn(model, batch)`` the dict of losses (``loss`` first),
    ``validate_fn(model)`` a dict of metrics with ``auc@5px``. Budgets: ``cfg.max_steps`` and
    ``cfg.minutes`` (counting resumed time too); learning rate by ``lr_factor``. The best
    model by validation AUC@5px goes to ``output``; ``<run_dir>/last.pt`` holds the state
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
            if record["best"] is None or metrics["auc@5px"] >= record["best"]["auc@5px"]:
                record["best"] = metrics
                save_state(output, model.checkpoint(training=record))
        if time.time() - last_save > cfg.save_every_minutes * 60 or is_last:
            save_last()
            last_save = time.time()
    bar.close()
    save_last()
    return record


def train(model_cfg: SuperPointConfig, cfg: SuperPointTrainConfig, data: Path, output: Path, run_dir: Path,
          resume: bool = False, seed: int = config.SEED, val_crop: int = 256, repeat_batch: bool = False,
          command: str = "", progress: bool = True) -> dict:
    """Train and return the training record. ``repeat_batch`` overfits one batch (smoke test)."""
    torch.manual_seed(seed)
    scenes = load_scenes(data, "train")
    dataset = TrainingPairs(scenes, cfg, cell=model_cfg.cell, seed=seed)
    val_samples = select_val_samples(data, val_crop, cfg.val_pairs, seed)
    model = SuperPoint(model_cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    record = {"command": command, "steps": 0, "seconds": 0.0, "history": [], "best": None,
              "loss_names": ["loss", "detector", "descriptor"],
              "train_config": config.as_dict(cfg), "data": str(data), "seed": seed,
              "train_scenes": len(scenes), "val_pairs": len(val_samples),
              "parameters": sum(p.numel() for p in model.parameters())}
    fixed = collate([dataset[k] for k in range(cfg.batch_size)]) if repeat_batch else None

    def next_batch(step):
        return fixed if repeat_batch else collate([dataset[step * cfg.batch_size + k] for k in range(cfg.batch_size)])

    return fit(model, optimizer, cfg, next_batch, lambda m, b: training_step(m, b, cfg),
               lambda m: validate(m, val_samples), output, run_dir, record, resume, "train SuperPoint", progress)


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
    best = record["best"] or {}
    print(f"done: {record['steps']} steps in {record['seconds'] / 60:.1f} min; best AUC@5px "
          f"{best.get('auc@5px', float('nan')):.3f} at step {best.get('step')} → {output}")
    return 0


def main(argv=None) -> int:
    tcfg = SuperPointTrainConfig()
    parser = training_parser(__doc__, tcfg, "superpoint")
    parser.add_argument("--arch", choices=["slim", "paper"], default="slim",
                        help="slim: 16-32-64-64, 128-d; paper: 64-64-128-128, 256-d")
    args = parser.parse_args(argv)
    mcfg = config.SUPERPOINT_PAPER if args.arch == "paper" else SuperPointConfig()
    tcfg = train_config_from_args(tcfg, args)
    if args.smoke:
        mcfg = config.replace(mcfg, channels=(8, 8, 16, 16), head_dim=16, descriptor_dim=16)
        tcfg = config.replace(tcfg, crop=64, batch_size=2, max_steps=args.max_steps or 12, val_every=10 ** 9,
                              val_pairs=2, num_labels=40, num_desc_points=64)
    return run_training(lambda command: train(mcfg, tcfg, args.data, args.output, args.run_dir, args.resume,
                                              args.seed, val_crop=128 if args.smoke else 256,
                                              repeat_batch=args.smoke, command=command), argv, args.output)


if __name__ == "__main__":
    sys.exit(main())
