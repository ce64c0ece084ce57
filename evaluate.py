"""The matching benchmark against SIFT, ORB and AKAZE.

An entry point of the original design, kept: the code lives in ``s2coreg/training/evaluate.py``
(``s2coreg.training.evaluate``); this file re-exports it, so ``from evaluate import …`` works in a checkout.
``python evaluate.py --help`` is the same command as ``s2coreg-evaluate --help``
(installed by ``pip install .``).
"""
import sys

from s2coreg.training.evaluate import *  # noqa: F401,F403  re-exported

if __name__ == "__main__":
    from s2coreg import commands

    sys.exit(commands.evaluate())
