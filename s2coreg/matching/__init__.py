"""The one matching path: pixels → verified matches (``pipeline``: extractors, the matcher
registry, refinement, verification), ``ImageMatcher`` on files (``matcher``), the extraction and
matching stage scripts (``stages``), the picture of a result (``visualization``), the geometry
they share (``geometry``)."""
