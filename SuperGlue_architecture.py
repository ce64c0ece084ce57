"""Stage 3: the SuperGlue network; as a script, data/features/ → data/matches/.

An entry point of the original design, kept: the code lives in ``s2coreg/models/superglue.py``
(``s2coreg.models.superglue``); this file re-exports it, so ``from SuperGlue_architecture import …`` works in a checkout.
``python SuperGlue_architecture.py --help`` is the same command as ``s2coreg-match_features --help``
(installed by ``pip install .``).
"""
import sys

from s2coreg.models.superglue import *  # noqa: F401,F403  re-exported

if __name__ == "__main__":
    from s2coreg import commands

    sys.exit(commands.match_features())
