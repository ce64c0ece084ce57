"""s2coreg: find, match and co-register the same places in Sentinel-2 images of different dates.

The package, by concept (docs/architecture.md has the whole map):

- ``s2coreg.io``: products found and read (``products``), a raster read onto a grid (``grid``),
  images (``imaging``), georeference (``geo``), data where it lives: URLs, STAC, content keys
  (``remote``); stage 1, which writes the preprocessed images, is ``s2coreg.preprocess``
- ``s2coreg.models``: the SuperPoint and SuperGlue networks and their checkpoints
- ``s2coreg.matching``: the one matching path (``pipeline``: extractors, the matcher registry,
  verification), ``ImageMatcher`` (``matcher``), the stage scripts (``stages``), the picture
- ``s2coreg.coregistration``: the engine (dates, windows, measurement, outputs), a pair
  (``pair``), a time series on Dask (``stack``), what a stack writes and keeps
- ``s2coreg.training``: datasets, the training loop and scripts, the matching benchmark
- ``s2coreg.config``, ``s2coreg.results``, ``s2coreg.cli``: settings, result types, the
  command lines' shared skeleton

The most used names load on first use (``import s2coreg`` imports neither torch nor GDAL):
``s2coreg.ImageMatcher``, ``s2coreg.coregister``, ``s2coreg.coregister_stack``,
``s2coreg.MatchingPipeline``, ``s2coreg.register_matcher``.
"""
from importlib import import_module

import s2coreg.config as _config  # noqa: F401  first: OpenMP waits passively (see config), before anything imports torch

__version__ = "0.8.0"

_LAZY = {
    "ImageMatcher": "s2coreg.matching.matcher",
    "MatchingPipeline": "s2coreg.matching.pipeline",
    "Matcher": "s2coreg.matching.pipeline",
    "register_matcher": "s2coreg.matching.pipeline",
    "coregister": "s2coreg.coregistration.pair",
    "coregister_stack": "s2coreg.coregistration.stack",
}
__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 's2coreg' has no attribute {name!r}")
