"""`ImageMatcher`: any two images → verified matches, ranking, georeferenced output.

An entry point of the original design, kept: the code lives in ``s2coreg/matching/matcher.py``
(``s2coreg.matching.matcher``); this file re-exports it, so ``from inference import …`` works in a checkout.
``python inference.py --help`` is the same command as ``s2coreg-match --help``
(installed by ``pip install .``).
"""
import sys

from s2coreg.matching.matcher import *  # noqa: F401,F403  re-exported

if __name__ == "__main__":
    from s2coreg import commands

    sys.exit(commands.match())
