"""Co-register two products, or a time series with --stack (on Dask).

An entry point of the original design, kept: the code lives in ``s2coreg/coregistration/pair.py``
(``s2coreg.coregistration.pair``); this file re-exports it, so ``from coregister import …`` works in a checkout.
``python coregister.py --help`` is the same command as ``coregister --help``
(installed by ``pip install .``).
"""
import sys

from s2coreg.coregistration.pair import *  # noqa: F401,F403  re-exported

if __name__ == "__main__":
    from s2coreg import commands

    sys.exit(commands.coregister())
