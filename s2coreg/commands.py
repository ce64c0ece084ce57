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


def _command(command: str, function: str):
    """The console entry point of ``command`` (a function of no arguments, as pyproject's
    ``[project.scripts]`` and the checkout's scripts call it)."""
    def entry() -> int:
        return run(command)

    entry.__name__ = entry.__qualname__ = function
    entry.__doc__ = f"``{command}``: {COMMANDS[command][0]}'s main, through ``cli.script``."
    return entry


coregister = _command("coregister", "coregister")
preprocess = _command("s2coreg-preprocess", "preprocess")
extract = _command("s2coreg-extract", "extract")
match_features = _command("s2coreg-match-features", "match_features")
match = _command("s2coreg-match", "match")
evaluate = _command("s2coreg-evaluate", "evaluate")
train_superpoint = _command("s2coreg-train-superpoint", "train_superpoint")
train_superglue = _command("s2coreg-train-superglue", "train_superglue")
checkpoints = _command("s2coreg-checkpoints", "checkpoints")
