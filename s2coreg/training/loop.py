"""The training loop and command line shared by ``train_superpoint.py`` and ``train_superglue.py``.

``fit`` is model-agnostic: it takes a batch function of the step (so a resumed run sees the same
data), a step function returning losses and a validation function, and keeps the best
checkpoint by a validation metric and a resumable state in the run folder.

Training never writes into ``model_checkpoints/`` unless ``--output`` names a file there
explicitly: by default the best checkpoint goes to ``data/runs/<name>/best.pt``.

A run is a **campaign** that may span sessions and machines: ``--stop-after MINUTES`` ends this
sitting cleanly (``last.pt`` saved), and ``--resume`` continues it from ``<run-dir>/last.pt``
with the same step count, the same next batch (batches are a pure function of the step) and
the same learning-rate schedule (a function of the step when ``--minutes 0``). A run folder
outside ``data/runs/`` (``campaign/<name>/``) can be committed, so a fresh clone resumes it.
The whole curve is in ``<run-dir>/log.csv`` (losses every 50 steps, validations) and
``curve.png``; the record in every checkpoint keeps the commands, wall and CPU seconds.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

import s2coreg.cli as cli
import s2coreg.config as config
from s2coreg.training.dataset import evaluation_pairs, make_eval_sample
from s2coreg.utils import PipelineError, atomic_path, set_threads


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


def data_fingerprint(scenes) -> str:
    """A short hash of the training scenes (names and sizes): a resumed run must see the same data."""
    text = "\n".join(f"{s.name}:{len(s.images)}:{s.images[0].shape}" for s in scenes)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


# train-config fields a resumed run may change: budgets and the validation cadence
RESUMABLE_CHANGES = ("max_steps", "minutes", "val_every", "save_every_minutes")


def check_resumable(stored: dict, current: dict, last: Path) -> None:
    """One clear line when a resumed run would not continue the same run."""
    if stored.get("data_fingerprint") != current.get("data_fingerprint"):
        raise PipelineError(f"{last}: the training data changed since this run started ({stored.get('train_scenes')} "
                            f"scenes then, {current.get('train_scenes')} now); resume with the same data (root=)")
    a, b = stored.get("train_config", {}), current.get("train_config", {})
    # a setting the config no longer has was retired (``workers``, unused; ``synthetic_fraction``,
    # always 0): a run that stored it resumes — its batches after that point differ from an
    # uninterrupted run's, since the retired setting's random draw is gone
    changed = sorted(k for k in set(b) if k not in RESUMABLE_CHANGES and a.get(k) != b.get(k))
    if changed:
        raise PipelineError(f"{last}: resumed with other settings ({', '.join(f'{k} {a.get(k)} → {b.get(k)}' for k in changed)}); "
                            f"resume with the run's own command: {stored.get('command')} --resume")


def write_log(run_dir: Path, record: dict) -> None:
    """``log.csv`` (every logged loss and every validation, by step) and ``curve.png``."""
    names = record.get("loss_names", ["loss"])
    metrics = sorted({k for h in record["history"] for k in h if k.startswith("auc")},
                     key=lambda k: float(k[4:-2]))
    rows = {row[0]: dict(zip(["step", *names], row)) for row in record.get("losses", [])}
    for h in record["history"]:
        rows.setdefault(h["step"], {"step": h["step"]}).update({k: round(h[k], 4) for k in metrics},
                                                              seconds=h.get("seconds"))
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(run_dir / "log.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, ["step", *names, "seconds", *metrics])
        writer.writeheader()
        writer.writerows(rows[k] for k in sorted(rows))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.5))
    losses = np.array([row[:2] for row in record.get("losses", [])], float).reshape(-1, 2)
    ax0.plot(losses[:, 0], losses[:, 1], lw=0.6, alpha=0.4, label="one batch")
    if len(losses) >= 10:     # the logged batches are single samples of a noisy loss: a running mean
        k = max(5, len(losses) // 20)
        ax0.plot(losses[k - 1:, 0], np.convolve(losses[:, 1], np.ones(k) / k, "valid"), lw=1.5,
                 label=f"mean of {k}")
        ax0.legend(fontsize=8)
    ax0.set(xlabel="step", ylabel=names[0], title="training loss")
    for key in metrics:
        pts = [(h["step"], h[key]) for h in record["history"]]
        ax1.plot(*zip(*pts), marker=".", label=key.replace("auc", "AUC")) if pts else None
    ax1.set(xlabel="step", ylabel="validation", title=f"validation (selected by {record.get('selected_by')})")
    if metrics:
        ax1.legend(fontsize=8)
    for ax in (ax0, ax1):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(run_dir / "curve.png") as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def fit(model, optimizer, cfg, next_batch, step_fn, validate_fn, output: Path, run_dir: Path, record: dict,
        resume: bool = False, desc: str = "train", progress: bool = True, select_by: str = "auc@5px",
        stop_after: float = math.inf) -> dict:
    """The training loop shared by SuperPoint and SuperGlue.

    ``next_batch(step)`` gives the batch of a step (a pure function of the step, so a resumed
    run sees the same data), ``step_fn(model, batch)`` the dict of losses (``loss`` first),
    ``validate_fn(model)`` a dict of metrics with ``select_by``. Budgets: ``cfg.max_steps`` and
    ``cfg.minutes`` (counting resumed time too); learning rate by ``lr_factor``. The best
    model by that validation metric goes to ``output``; ``<run_dir>/last.pt`` holds the state
    to resume from. ``stop_after``: seconds of this sitting, after which the state is saved and
    the run stops unfinished (``record["stopped"]``) to be resumed. Every file is written atomically.
    """
    from tqdm import tqdm

    last = run_dir / "last.pt"
    if resume:
        if not last.exists():
            raise PipelineError(f"{last}: nothing to resume; start without resume=True")
        state = torch.load(last, map_location="cpu", weights_only=True)
        check_resumable(state["record"], record, last)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        state["record"].setdefault("resumed_with", []).append(record["command"])
        record = state["record"]
        torch.set_rng_state(state["torch_rng"])
        tqdm.write(f"resuming {last} at step {record['steps']} ({record['seconds'] / 60:.1f} min so far)")

    def save_last():
        save_state(last, {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "record": record,
                          "torch_rng": torch.get_rng_state()})

    model.train()
    record["selected_by"] = select_by
    record.pop("stopped", None)
    record.setdefault("cpu_seconds", 0.0)
    record.setdefault("sittings", []).append({"threads": torch.get_num_threads(), "from_step": record["steps"]})
    start_step, start_seconds, start_cpu = record["steps"], record["seconds"], record["cpu_seconds"]
    t_start = last_save = time.time()
    cpu_start = time.process_time()
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
        record["cpu_seconds"] = start_cpu + time.process_time() - cpu_start
        entry = {k: round(v.item(), 4) for k, v in losses.items()}
        bar.set_postfix(entry)
        bar.update(1)
        if step % log_every == 0:
            record.setdefault("losses", []).append([step, *entry.values()])
        is_last = step >= cfg.max_steps or record["seconds"] >= budget
        stopping = not is_last and time.time() - t_start >= stop_after
        if stopping:
            record["stopped"] = True
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
            write_log(run_dir, record)
        if time.time() - last_save > cfg.save_every_minutes * 60 or is_last or stopping:
            save_last()
            last_save = time.time()
        if stopping:
            break
    bar.close()
    save_last()
    write_log(run_dir, record)
    if output.exists():   # the best weights, with the whole run's record (not only up to their step)
        best = torch.load(output, map_location="cpu", weights_only=True)
        save_state(output, {**best, "training": record})
    return record


def _share(text: str) -> float:
    """An argparse type: a share, 0 to 1 (``--sensor-mix 1.5`` is refused in one line)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a share from 0 to 1") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text}: a share from 0 to 1 (of the training pairs)")
    return value


def training_parser(doc: str, tcfg, name: str) -> argparse.ArgumentParser:
    """The flags every training script shares (defaults from its train config)."""
    parser = cli.parser(doc)
    parser.add_argument("--data", type=Path, default=config.SHARED_DATA_DIR,
                        help="training data: folder with oscd/, ombria/, ukraine_T36UYA/ or preprocessed outputs")
    parser.add_argument("--run-dir", type=Path, default=config.RUNS_DIR / name,
                        help="this run's folder: resumable state (last.pt) and, by default, the best checkpoint")
    parser.add_argument("--output", type=Path, default=None,
                        help="best checkpoint by validation (default <run-dir>/best.pt); naming a file in "
                             "model_checkpoints/ replaces a shipped checkpoint, and only then")
    parser.add_argument("--resume", action="store_true",
                        help="continue from <run-dir>/last.pt: same step count, next batch and schedule")
    parser.add_argument("--stop-after", type=float, default=0,
                        help="minutes of this sitting, then save <run-dir>/last.pt and stop (resume later); 0 = none")
    parser.add_argument("--max-steps", type=int, default=None, help=f"default {tcfg.max_steps} (--smoke: 12)")
    parser.add_argument("--minutes", type=float, default=tcfg.minutes,
                        help="wall-clock budget, resumed time included; 0 = none")
    parser.add_argument("--batch-size", type=int, default=tcfg.batch_size)
    parser.add_argument("--crop", type=int, default=tcfg.crop, help="training crop side, px")
    parser.add_argument("--difficulty", default=tcfg.difficulty, choices=sorted(config.DIFFICULTIES),
                        help="range of the training warps (config.DIFFICULTIES)")
    parser.add_argument("--lr", type=float, default=tcfg.lr)
    parser.add_argument("--sensor-mix", type=_share, default=tcfg.sensor_mix,
                        help="share of training pairs whose second image is a Landsat-like view (30 m or 15 m, "
                             "its noise and tone: dataset.sensor_view); 0 = Sentinel-2 only")
    parser.add_argument("--val-every", type=int, default=tcfg.val_every, help="steps between validations")
    parser.add_argument("--val-pairs", type=int, default=tcfg.val_pairs, help="held-out pairs for validation")
    cli.add_runtime(parser, device=None)
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


def stop_after(args) -> float:
    """Seconds of this sitting from ``--stop-after`` (minutes; 0 = no limit)."""
    return args.stop_after * 60 if args.stop_after > 0 else math.inf


def train_config_from_args(tcfg, args):
    """``tcfg`` with the shared flags applied (and torch's threads set)."""
    set_threads(args.threads or None)
    return config.replace(tcfg, max_steps=args.max_steps, minutes=args.minutes, batch_size=args.batch_size,
                          crop=args.crop, lr=args.lr, val_every=args.val_every, val_pairs=args.val_pairs,
                          difficulty=args.difficulty, sensor_mix=args.sensor_mix)


def run_training(train_fn, argv, output: Path) -> int:
    """Call ``train_fn(command)``; report the result, or a bad input as one line (exit 2)."""
    command = "python " + " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *(argv or sys.argv[1:])])
    try:
        record = train_fn(command)
    except PipelineError as exc:
        return cli.fail(exc)
    best, key = record["best"] or {}, record.get("selected_by", "auc@5px")
    status = "stopped (resume with --resume)" if record.get("stopped") else "done"
    print(f"{status}: {record['steps']} steps in {record['seconds'] / 60:.1f} min "
          f"({record.get('cpu_seconds', 0) / 3600:.2f} CPU h); best {key.replace('auc', 'AUC')} "
          f"{best.get(key, float('nan')):.3f} at step {best.get('step')} → {output}")
    return 0


