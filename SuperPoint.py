"""Stage 2: the SuperPoint network; as a script, data/preprocessed/ → data/features/.

An entry point of the original design, kept: the code lives in ``s2coreg/models/superpoint.py``
(``s2coreg.models.superpoint``); this file re-exports it, so ``from SuperPoint import …`` works in a checkout.
``python SuperPoint.py --help`` is the same command as ``s2coreg-extract --help``
(installed by ``pip install .``).
"""
import sys

from s2coreg.models.superpoint import *  # noqa: F401,F403  re-exported

if __name__ == "__main__":
    from s2coreg import commands

    sys.exit(commands.extract())
