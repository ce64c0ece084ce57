"""Train SuperPoint (resumable, never over a shipped checkpoint unless asked).

An entry point of the original design, kept: the code lives in ``s2coreg/training/superpoint.py``
(``s2coreg.training.superpoint``); this file re-exports it, so ``from train_superpoint import …`` works in a checkout.
``python train_superpoint.py --help`` is the same command as ``s2coreg-train_superpoint --help``
(installed by ``pip install .``).
"""
import sys

from s2coreg.training.superpoint import *  # noqa: F401,F403  re-exported

if __name__ == "__main__":
    from s2coreg import commands

    sys.exit(commands.train_superpoint())
