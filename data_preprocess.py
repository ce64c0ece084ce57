"""Stage 1: Sentinel-2 products (.SAFE, zip, rasters, STAC) → data/preprocessed/.

An entry point of the original design, kept: the stage lives in ``s2coreg/preprocess.py``
(``s2coreg.preprocess``: ``preprocess``, ``main``) and the reading library it uses in
``s2coreg/io/products.py`` (``s2coreg.io.products``); this file re-exports both, so
``from data_preprocess import …`` works in a checkout.
``python data_preprocess.py --help`` is the same command as ``s2coreg-preprocess --help``
(installed by ``pip install .``).
"""
import sys

from s2coreg.io.products import *  # noqa: F401,F403  re-exported: the reading library
from s2coreg.preprocess import *  # noqa: F401,F403  re-exported: the stage (preprocess, main, ...)

if __name__ == "__main__":
    from s2coreg import commands

    sys.exit(commands.preprocess())
