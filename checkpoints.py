"""Checkpoints: the file format of every model here, finding and loading them safely.

A checkpoint is a plain dict ``{"kind", "config", "state_dict", "training"}`` saved with
``torch.save`` and read with ``torch.load(weights_only=True)``: a file can never run code, and
a mismatched file fails with one clear line instead of a shape error deep inside torch.
"""
from __future__ import annotations

from pathlib import Path

import torch

import config
from utils import PipelineError


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` checked against this machine (``None``: ``config.DEVICE``).

    A CUDA device on a machine without one is a clear error, not an unreadable checkpoint.
    """
    name = str(device or config.DEVICE)
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise PipelineError(f"--device {name}: not a device name; use cpu or cuda") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PipelineError(f"--device {name}: no CUDA GPU is usable on this machine (torch {torch.__version__}); "
                            "use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise PipelineError(f"--device {name}: only cpu and cuda are supported")
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
