"""The training loop and command line shared by ``train_superpoint.py`` and ``train_superglue.py``.

``fit`` is model-agnostic: it takes a batch function of the step (so a resumed run sees the same
data), a step function returning losses and a validation function, and keeps the best
checkpoint by a validation metric and a resumable state in the run folder.

Training never writes into ``model_checkpoints/`` unless ``--output`` names a file there
explicitly: by default the best checkpoint goes to ``data/runs/<name>/best.pt``.
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

import config
from dataset import evaluation_pairs, make_eval_sample
from utils import PipelineError, atomic_path, set_threads


def lr_factor(progress: float, decay_from: float = 0.7, final: float = 0.1) -> float:
    """Constant learning rate, then a linear decay to ``final`` over the last 30% of the budget
    (steps or minutes, whichever runs out first)."""
    if progress <= decay_from:
        return 1.0
    return 1.0 - (1.0 - final) * min((progress - decay_from) / (1.0 - decay_from), 1.0)


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


def training_parser(doc: str, tcfg, name: str) -> argparse.ArgumentParser:
    """The flags every training script shares (defaults from its train config)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", type=Path, default=config.SHARED_DATA_DIR,
                        help="training data: folder with oscd/, ombria/, ukraine_T36UYA/ or preprocessed outputs")
    parser.add_argument("--run-dir", type=Path, default=config.RUNS_DIR / name,
                        help="this run's folder: resumable state (last.pt) and, by default, the best checkpoint")
    parser.add_argument("--output", type=Path, default=None,
                        help="best checkpoint by validation (default <run-dir>/best.pt); naming a file in "
                             "model_checkpoints/ replaces a shipped checkpoint, and only then")
    parser.add_argument("--resume", action="store_true", help="continue from <run-dir>/last.pt")
    parser.add_argument("--max-steps", type=int, default=None, help=f"default {tcfg.max_steps} (--smoke: 12)")
    parser.add_argument("--minutes", type=float, default=tcfg.minutes,
                        help="wall-clock budget, resumed time included; 0 = none")
    parser.add_argument("--batch-size", type=int, default=tcfg.batch_size)
    parser.add_argument("--crop", type=int, default=tcfg.crop, help="training crop side, px")
    parser.add_argument("--lr", type=float, default=tcfg.lr)
    parser.add_argument("--val-every", type=int, default=tcfg.val_every, help="steps between validations")
    parser.add_argument("--val-pairs", type=int, default=tcfg.val_pairs, help="held-out pairs for validation")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads, 0 = all cores")
    parser.add_argument("--seed", type=int, default=config.SEED)
    parser.add_argument("--smoke", action="store_true", help="tiny run that overfits one small batch (tests)")
    return parser


def output_path(args) -> Path:
    """Where the best checkpoint goes: ``--output``, else ``<run-dir>/best.pt``.

    A shipped checkpoint is replaced only when ``--output`` names it; a line says so.
    """
    output = args.output or args.run_dir / "best.pt"
    shipped = config.CHECKPOINT_DIR.resolve()
    if shipped in output.resolve().parents:
        print(f"note: --output {output} is in {config.CHECKPOINT_DIR.name}/: this run's best checkpoint "
              "replaces the shipped one there", file=sys.stderr)
    return output


def train_config_from_args(tcfg, args):
    """``tcfg`` with the shared flags applied (and torch's threads set)."""
    set_threads(args.threads or None)
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


