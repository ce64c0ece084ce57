"""Train SuperGlue on the SuperPoint checkpoint's features.

An entry point of the original design, kept: the code lives in ``s2coreg/training/superglue.py``
(``s2coreg.training.superglue``); this file re-exports it, so ``from train_superglue import …`` works in a checkout.
``python train_superglue.py --help`` is the same command as ``s2coreg-train_superglue --help``
(installed by ``pip install .``).
"""
import sys

from s2coreg.training.superglue import *  # noqa: F401,F403  re-exported

if __name__ == "__main__":
    from s2coreg import commands

    sys.exit(commands.train_superglue())
