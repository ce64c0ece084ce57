"""The console commands ``pip install`` makes (pyproject.toml's ``[project.scripts]``), and the
top-level scripts of a checkout run the same ones (``python coregister.py`` is ``coregister``).

Each command is its module's ``main`` (its parser is built on ``cli.parser``), run through
``cli.script``: one line and exit 2 for a refused write, 130 on Ctrl-C, 3 with a traceback for a
bug. A module is imported only when its command runs, so ``coregister --help`` loads no training
code."""
from __future__ import annotations

from importlib import import_module

import s2coreg.config as config  # noqa: F401  first: OpenMP's waiting policy, before torch is imported
from s2coreg import cli

COMMANDS = {  # console command → the module whose main() it runs, and the checkout's script for it
    "coregister": ("s2coreg.coregistration.pair", "coregister.py"),
    "s2coreg-preprocess": ("s2coreg.preprocess", "data_preprocess.py"),
    "s2coreg-extract": ("s2coreg.matching.stages:extract_main", "SuperPoint.py"),
    "s2coreg-match-features": ("s2coreg.matching.stages:match_main", "SuperGlue_architecture.py"),
    "s2coreg-match": ("s2coreg.matching.matcher", "inference.py"),
    "s2coreg-evaluate": ("s2coreg.training.evaluate", "evaluate.py"),
    "s2coreg-train-superpoint": ("s2coreg.training.superpoint", "train_superpoint.py"),
    "s2coreg-train-superglue": ("s2coreg.training.superglue", "train_superglue.py"),
    "s2coreg-checkpoints": ("s2coreg.models.checkpoints", None),
}


def run(command: str, argv: list[str] | None = None) -> int:
    """Run one console command (``argv`` None: the process's own arguments)."""
    module, _, function = COMMANDS[command][0].partition(":")
    main = getattr(import_module(module), function or "main")
    return cli.script(main if argv is None else lambda: main(argv))


def coregister() -> int:
    return run("coregister")


def preprocess() -> int:
    return run("s2coreg-preprocess")


def extract() -> int:
    return run("s2coreg-extract")


def match_features() -> int:
    return run("s2coreg-match-features")


def match() -> int:
    return run("s2coreg-match")


def evaluate() -> int:
    return run("s2coreg-evaluate")


def train_superpoint() -> int:
    return run("s2coreg-train-superpoint")


def train_superglue() -> int:
    return run("s2coreg-train-superglue")


def checkpoints() -> int:
    return run("s2coreg-checkpoints")
