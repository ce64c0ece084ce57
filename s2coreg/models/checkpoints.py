"""Checkpoints: the file format of every model here, finding and loading them safely.

A checkpoint is a plain dict ``{"kind", "config", "state_dict", "training"}`` saved with
``torch.save`` and read with ``torch.load(weights_only=True)``: a file can never run code, and
a mismatched file fails with one clear line instead of a shape error deep inside torch.

    s2coreg-checkpoints [model_checkpoints/*.pt]

prints how each checkpoint was made: the chain of training commands from scratch (a fine head
on its base SuperPoint, a fine-tuning on the run it started from), with steps, wall and CPU time.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import s2coreg.config as config
from s2coreg.utils import PipelineError, torch_threads

if TYPE_CHECKING:
    import torch


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` checked against this machine (``None`` or ``"auto"``: a CUDA GPU where torch
    can use one, else the CPU).

    A CUDA device on a machine without one is a clear error, not an unreadable checkpoint.
    torch is imported here (and in ``load_checkpoint``), not with this module: finding a
    checkpoint needs no torch (``matching.pipeline``'s learned path loads it on first need).
    """
    import torch

    torch_threads()              # a thread count given before torch was loaded holds
    name = str(device or config.DEVICE)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise PipelineError(f"device={name!r}: not a device name; use 'cpu', 'cuda' or 'auto'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PipelineError(f"device={name!r}: no CUDA GPU is usable on this machine (torch {torch.__version__}); "
                            "use device='cpu'")
    if dev.type not in ("cpu", "cuda"):
        raise PipelineError(f"device={name!r}: only cpu and cuda are supported; use device='cpu' or 'cuda'")
    return dev


def find_checkpoint(path: str | Path, kind: str, required: bool = True) -> Path | None:
    """The ``kind`` checkpoint at ``path``: the file itself, or the first ``<kind>*.pt`` in a
    folder (``None`` when there is none and not ``required``)."""
    path = Path(path)
    if path.is_file():
        return path
    candidates = sorted(path.glob(f"{kind.lower()}*.pt")) if path.is_dir() else []
    if candidates:
        return candidates[0]
    if not required:
        return None
    if not path.exists():
        raise PipelineError(f"{path}: no such checkpoint; train one with train_{kind.lower()}.py or fix the path")
    raise PipelineError(f"{path}: no {kind.lower()}*.pt checkpoint in this folder; "
                        f"train one with train_{kind.lower()}.py or pass the file")


def load_checkpoint(path: str | Path, kind: str, device="cpu") -> dict:
    """Read a checkpoint dict safely (``weights_only``) and check it holds a ``kind`` model."""
    import torch

    path = find_checkpoint(path, kind)
    device = resolve_device(device)
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:
        raise PipelineError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}); "
                            f"restore it (git checkout) or re-train it with train_{kind.lower()}.py") from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "config" not in ckpt:
        raise PipelineError(f"{path}: not a checkpoint of this project (no config/state_dict); "
                            f"use one written by train_{kind.lower()}.py")
    if ckpt.get("kind") != kind:
        raise PipelineError(f"{path}: holds a {ckpt.get('kind', 'unknown')} model, not {kind}; "
                            "pass the matching checkpoint")
    ckpt["path"] = str(path)
    return ckpt


class CheckpointMixin:
    """``checkpoint()`` / ``from_checkpoint()`` for a model built from one config dataclass."""

    kind: str
    config_class: type

    def checkpoint(self, training: dict | None = None) -> dict:
        """A dict holding the config, the weights and the training record."""
        return {"kind": self.kind, "config": config.as_dict(self.config),
                "state_dict": self.state_dict(), "training": training or {}}

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu"):
        """Load a checkpoint written by the model's training script (a file, or a folder
        holding ``<kind>*.pt``)."""
        ckpt = load_checkpoint(path, cls.kind, device)
        model = cls(config.from_dict(cls.config_class, ckpt["config"]))
        try:
            model.load_state_dict(ckpt["state_dict"])
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[-1].strip()
            raise PipelineError(f"{ckpt['path']}: weights do not fit the {cls.kind} config stored in it ({first}); "
                                "re-train or re-export the checkpoint") from exc
        model.training_record = ckpt.get("training", {})
        model.checkpoint_path = ckpt["path"]
        return model.to(resolve_device(device)).eval()


# ----------------------------------------------------------------------------- provenance
def training_chain(record: dict) -> list[dict]:
    """The training runs behind a checkpoint's record, first run first: each ``{"command",
    "resumed_with", "steps", "seconds", "cpu_seconds", "cpu_estimated"}``. Runs on top of another
    (``base_training``: a fine head's SuperPoint; ``initialised_from``: a fine-tuning) come after
    it. Records from before CPU time was kept estimate it as wall time × 2 cores (the training
    scripts' default: all cores of these 2-core machines)."""
    chain = []
    while record:
        cpu = record.get("cpu_seconds")
        chain.append({"command": record.get("command", "?"), "resumed_with": record.get("resumed_with", []),
                      "steps": record.get("steps"), "seconds": float(record.get("seconds") or 0),
                      "cpu_seconds": float(cpu if cpu is not None else 2 * float(record.get("seconds") or 0)),
                      "cpu_estimated": cpu is None})
        parent = record.get("base_training") or record.get("initialised_from") or {}
        record = parent.get("training", parent) if parent else {}
    return chain[::-1]


def describe(path: str | Path) -> str:
    """Markdown lines: the training chain of one checkpoint file and its totals."""
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    chain = training_chain(ckpt.get("training") or {})
    lines = [f"**{Path(path).name}** ({ckpt.get('kind')}):", ""]
    for k, run in enumerate(chain, 1):
        resumed = "".join(f" → `{c}`" for c in run["resumed_with"])
        lines.append(f"{k}. `{run['command']}`{resumed} — {run['steps']} steps, {run['seconds'] / 60:.0f} min wall, "
                     f"{run['cpu_seconds'] / 3600:.2f} CPU h{' (est.)' if run['cpu_estimated'] else ''}")
    wall = sum(r["seconds"] for r in chain) / 60
    cpu = sum(r["cpu_seconds"] for r in chain) / 3600
    lines += ["", f"Total: {wall:.0f} min wall, {cpu:.2f} CPU hours, no GPU."]
    return "\n".join(lines)


def main(argv=None) -> int:
    """``s2coreg-checkpoints [FILE ...]``: how each checkpoint (by default the shipped ones) was
    trained."""
    from s2coreg import cli

    parser = cli.parser("How each checkpoint was trained: its architecture, data, steps and figures "
                        "(by default the shipped ones, " + str(config.CHECKPOINT_DIR) + ").")
    parser.add_argument("paths", nargs="*", type=Path, help="checkpoint files (.pt)")
    args = parser.parse_args(argv)
    for path in args.paths or sorted(config.CHECKPOINT_DIR.glob("*.pt")):
        if not path.is_file():
            print(f"error: {path}: no such checkpoint file", file=sys.stderr)
            return 2
        print(describe(path) + "\n")
    return 0
